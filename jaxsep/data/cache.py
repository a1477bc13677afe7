"""The cache folder and its ``.npz`` files: one per source, keyed by a fingerprint of the
source's path, size and modification time, so a second load takes a fraction of a second and
editing the source invalidates it (``docs/data.md``)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np

from jaxsep._io import CACHE_DIR_ENV_VAR, atomic_write, cache_dir
from jaxsep.data.dataset import Dataset
from jaxsep.data.sources import _Source, _walk_data_files

_DATA_DIR_ENV_VAR = CACHE_DIR_ENV_VAR
# Bump when decoding changes, so caches written by older code are not reused.
_CACHE_FORMAT_VERSION = 1


def data_cache_dir() -> Path:
    """The folder for downloads and ``.npz`` caches: the jaxsep cache folder,
    ``$JAXSEP_DATA_DIR``, else ``~/.cache/jaxsep``. It is not created here."""
    return cache_dir()


def _source_fingerprint(source: _Source) -> str:
    path = source.path.resolve()
    status = path.stat()
    identity: dict[str, Any] = {
        "cache_format": _CACHE_FORMAT_VERSION,
        "path": str(path),
        "size": status.st_size,
        "mtime_ns": status.st_mtime_ns,
    }
    if not source.is_archive:
        # A folder's own mtime misses edits to files inside it.
        identity["files"] = [
            (relative, stat.st_size, stat.st_mtime_ns) for relative, stat in _walk_data_files(path)
        ]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _cache_path(source: _Source, cache_dir: Path) -> Path:
    return cache_dir / f"cifar10-{_source_fingerprint(source)[:24]}.npz"


def _read_cache(cache_file: Path) -> Dataset:
    with np.load(cache_file, allow_pickle=False) as cached:
        if int(cached["cache_format"]) != _CACHE_FORMAT_VERSION:
            raise ValueError(f"cache format {int(cached['cache_format'])} is outdated")
        return Dataset(
            train_images=cached["train_images"],
            train_labels=cached["train_labels"],
            test_images=cached["test_images"],
            test_labels=cached["test_labels"],
            class_names=tuple(str(name) for name in cached["class_names"]),
            name=str(cached["name"]),
        )


def _write_cache(dataset: Dataset, cache_file: Path) -> None:
    def write(file: IO[bytes]) -> None:
        np.savez(
            file,
            cache_format=np.int64(_CACHE_FORMAT_VERSION),
            train_images=dataset.train_images,
            train_labels=dataset.train_labels,
            test_images=dataset.test_images,
            test_labels=dataset.test_labels,
            class_names=np.array(dataset.class_names, dtype=str),
            name=np.array(dataset.name, dtype=str),
        )

    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file, write)
    except OSError as error:
        # The cache only saves time; failing to write it must not fail the load.
        warnings.warn(
            f"could not write the dataset cache {cache_file} ({error}); the next load will "
            f"decode again. Set ${_DATA_DIR_ENV_VAR} to a writable folder to enable caching.",
            RuntimeWarning,
            stacklevel=3,
        )
