"""Files and folders shared by the data cache, the autotune cache, the training harness, sweeps
and benchmarks: atomic writes, the jaxsep cache folder, on/off environment variables."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

# The jaxsep cache folder's environment variable (named for the data, its first user).
CACHE_DIR_ENV_VAR = "JAXSEP_DATA_DIR"
_OFF = ("0", "false", "no", "off")


def cache_dir() -> Path:
    """The jaxsep cache folder: ``$JAXSEP_DATA_DIR``, else ``~/.cache/jaxsep``. Not created
    here. Downloads and decoded datasets live in it (``docs/data.md``), and so does the
    autotune cache (``docs/design/lowerings.md``)."""
    configured = os.environ.get(CACHE_DIR_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "jaxsep"


def env_flag(name: str, default: bool = True) -> bool:
    """An on/off environment variable: ``0``, ``false``, ``no`` and ``off`` (any case) are off,
    any other value on, unset or empty ``default``."""
    value = os.environ.get(name, "").strip().lower()
    return default if not value else value not in _OFF


def atomic_write(
    path: str | os.PathLike,
    data: bytes | str | Callable[[IO[bytes]], None],
    *,
    durable: bool = False,
) -> None:
    """Writes ``path`` whole or not at all: a temporary file in the same folder, renamed over it.

    Readers see the old file or the complete new one, never a partial one, and an interrupted
    write leaves only a hidden ``.<name>.*.part`` file that nothing reads. ``data`` is the
    content (``str`` is written as UTF-8) or a function that writes it to the open binary file.
    ``durable`` also fsyncs before the rename (for large downloads worth keeping after a crash).
    The file gets the permissions ``open()`` would give it under the current umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as file:
            if callable(data):
                data(file)
            else:
                file.write(data.encode() if isinstance(data, str) else data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
