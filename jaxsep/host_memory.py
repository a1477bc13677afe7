"""Host-memory reuse for XLA:CPU: keep freed memory in the process instead of the OS.

An XLA:CPU executable allocates its temporaries on every call (over a gigabyte for a
MobileNetV1 training step at width 1.0, batch 128). glibc's malloc serves such blocks with a
fresh ``mmap`` (worker threads' arenas are capped at 64 MiB) and unmaps them on free, so every
step pays a page fault and a zeroed page per 4 KiB it touches.

:func:`reuse_host_memory` makes glibc serve every thread from the main arena, take every block
from the heap rather than ``mmap``, and never trim the heap: the next step reuses what
the last one freed, at the price of a resident set that stays at its high-water mark (as
PyTorch's caching allocators do on GPU). Measured gains: ``docs/performance.md``.

``import jaxsep`` calls it (so a user's own ``jax.jit`` loop gets it too), and so do ``jaxsep
train``, ``sweep`` and ``eval``; ``JAXSEP_REUSE_HOST_MEMORY=0`` in the environment before the
import opts out. Imported after the first JAX computation, it still keeps blocks off ``mmap``
and the heap untrimmed, but threads that already allocated keep their arenas; starting the
process with ``GLIBC_TUNABLES=`` :data:`GLIBC_TUNABLES` covers every thread from the first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys

from jaxsep._io import env_flag

__all__ = ["GLIBC_TUNABLES", "reuse_host_memory", "reuse_host_memory_from_env"]

# mallopt parameters (malloc.h). Values are C ints, so a threshold can be at most 2 GiB - 1,
# below the 3.45 GiB that EfficientNet-B0's training step at batch 128 allocates at once:
# instead of thresholds, no mmap at all (every block from the heap) and a trim threshold of
# -1, which glibc reads as the largest size_t (never trim; mallopt(3)).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_SETTINGS = (
    ("arena_max", _M_ARENA_MAX, 1),
    ("mmap_max", _M_MMAP_MAX, 0),
    ("trim_threshold", _M_TRIM_THRESHOLD, -1),
)

GLIBC_TUNABLES = ":".join(
    f"glibc.malloc.{name}={value % 2**64}" for name, _, value in _SETTINGS)  # -1 as size_t
"""The same settings as an environment variable value, read by glibc at process start."""

ENV_VAR = "JAXSEP_REUSE_HOST_MEMORY"


def _glibc():
    """The C library as a ``ctypes.CDLL`` when it is glibc on Linux, else ``None``."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def reuse_host_memory() -> bool:
    """Makes glibc's malloc keep freed host memory for reuse (see the module docstring).

    Process-wide and not undone. Call it before the first JAX computation: a thread that has
    already allocated keeps its own arena. Repeated calls are harmless.

    Returns:
      ``True`` when every setting was applied; ``False`` where the C library is not glibc
      (macOS, Windows, musl) or refused a setting, in which case nothing else changes.
    """
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all([mallopt(param, value) == 1 for _, param, value in _SETTINGS])


def reuse_host_memory_from_env() -> bool:
    """:func:`reuse_host_memory` unless ``$JAXSEP_REUSE_HOST_MEMORY`` is ``0`` (or ``false``,
    ``no``, ``off``); returns whether it was applied. The command line calls this."""
    if not env_flag(ENV_VAR):
        return False
    return reuse_host_memory()
