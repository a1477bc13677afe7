"""JAX's persistent compilation cache, kept in the jaxsep cache folder.

Compiling a MobileNet training step takes tens of seconds on a small CPU, and a rerun, a
resume or the next point of a sweep compiles the very same programs again. JAX can keep
compiled executables on disk, keyed by the program, the JAX version and the device, so
``jaxsep train``, ``eval`` and ``sweep`` turn its cache on at start-up, in
``<jaxsep cache folder>/xla`` (``$JAXSEP_DATA_DIR``, else ``~/.cache/jaxsep``).

``JAXSEP_COMPILATION_CACHE=0`` (or ``false``, ``no``, ``off``) turns it off; any other value
is the folder to use. A folder the user already gave JAX (``jax_compilation_cache_dir``, e.g.
through ``JAX_COMPILATION_CACHE_DIR``) is left as it is. An entry JAX cannot read (a
truncated or foreign file) is reported by JAX with a warning and compiled afresh. From
Python, call :func:`enable_compilation_cache` before the first compilation.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxsep._io import cache_dir, env_flag

__all__ = ["ENV_VAR", "compilation_cache_dir", "enable_compilation_cache"]

ENV_VAR = "JAXSEP_COMPILATION_CACHE"


def compilation_cache_dir() -> Path | None:
    """The folder jaxsep would give JAX's cache: ``$JAXSEP_COMPILATION_CACHE`` when it names
    a folder, None when it turns the cache off, else ``xla`` in the jaxsep cache folder."""
    if not env_flag(ENV_VAR):
        return None
    configured = os.environ.get(ENV_VAR, "").strip()
    if configured and configured.lower() not in ("1", "true", "yes", "on"):
        return Path(configured).expanduser()
    return cache_dir() / "xla"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Points JAX's persistent compilation cache at ``path`` (default
    :func:`compilation_cache_dir`) unless JAX already has a cache folder; returns the folder
    in use, or None when the cache is off. Only compilations after the call are cached."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    folder = Path(path).expanduser() if path is not None else compilation_cache_dir()
    if folder is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
