"""``load_cifar10``: find the data (or download it), then read its cache or decode it."""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import warnings
import zipfile
from pathlib import Path

from jaxsep._validation import check_bool, fail
from jaxsep.data import dataset as _dataset
from jaxsep.data.cache import (
    _DATA_DIR_ENV_VAR,
    _cache_path,
    _read_cache,
    _write_cache,
    data_cache_dir,
)
from jaxsep.data.dataset import CIFAR10_ARCHIVE_NAME, Dataset
from jaxsep.data.decode import _decode_source
from jaxsep.data.download import ChecksumError, download as _download
from jaxsep.data.sources import _ACCEPTED_FORMS, _find_source_in, _Source

logger = logging.getLogger(__name__)

_WHERE = "load_cifar10"


class DataUnavailableError(RuntimeError):
    """CIFAR-10 is not on this machine and could not be downloaded (no network, a checksum
    mismatch, an unwritable cache folder), or ``download=False``. The message says where the
    loader looked and which copies ``data_dir`` accepts."""


class _NotInCacheError(DataUnavailableError, FileNotFoundError):
    """download=False: a FileNotFoundError, as it was before DataUnavailableError existed."""


def _download_cifar10(cache_dir: Path) -> Path:
    # Read from their module at call time, so tests (and mirrors) can point them elsewhere.
    url, expected_md5 = _dataset.CIFAR10_URL, _dataset.CIFAR10_MD5
    destination = cache_dir / CIFAR10_ARCHIVE_NAME
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataUnavailableError(
            f"cannot create the data cache folder {cache_dir} ({error}). Set "
            f"${_DATA_DIR_ENV_VAR} to a writable folder, or pass data_dir=... / --data-dir."
        ) from error
    try:
        return _download(url, destination, md5=expected_md5)
    except ChecksumError as error:
        raise DataUnavailableError(
            f"{error}. The download is corrupt or the file changed; nothing was kept in "
            f"{cache_dir}. Try again, or download it yourself and pass data_dir=... / "
            f"--data-dir."
        ) from error
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise DataUnavailableError(
            f"could not download CIFAR-10 from {url} ({reason}), and {cache_dir} holds no "
            f"usable copy. Without network access, copy CIFAR-10 to this machine. "
            f"{_ACCEPTED_FORMS}"
        ) from error


def _load_cached(source: _Source, cache_dir: Path) -> Dataset:
    cache_file = _cache_path(source, cache_dir)
    if cache_file.is_file():
        try:
            return _read_cache(cache_file)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            warnings.warn(
                f"ignoring the unreadable dataset cache {cache_file} ({error}); decoding "
                f"{source.path} again.",
                RuntimeWarning,
                stacklevel=3,
            )
    logger.info("Decoding %s (once; the result is cached in %s)", source.path, cache_file)
    dataset = _decode_source(source)
    _write_cache(dataset, cache_file)
    return dataset


def load_cifar10(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Dataset:
    """Loads CIFAR-10 from ``data_dir`` (the accepted layouts are listed in ``docs/data.md``).

    Args:
      data_dir: a file or folder holding CIFAR-10 in one of the accepted layouts, or None to
        use the cache folder (``$JAXSEP_DATA_DIR``, else ``~/.cache/jaxsep``).
      download: with ``data_dir=None`` and no usable data in the cache folder, download the
        official archive into it (MD5-verified). Ignored when ``data_dir`` is given, so a
        mistyped path fails instead of silently downloading 170 MB.

    Returns:
      A Dataset: train_images uint8 (50000, 32, 32, 3), train_labels int32 (50000,),
      test_images uint8 (10000, 32, 32, 3), test_labels int32 (10000,) for the full data set;
      examples ordered by class, then file (shuffle with ``epoch_permutation``).

    Raises:
      DataUnavailableError: with ``data_dir=None``, nothing usable in the cache folder and the
        download failed (a RuntimeError) or ``download=False`` (also a FileNotFoundError).
      FileNotFoundError: nothing usable at ``data_dir``.
      ValueError: corrupt or inconsistent data (the message names the file).
      ImportError: an image-folder source needs Pillow (``pip install "jaxsep[images]"``).
    """
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        fail(_WHERE, "data_dir", "a str, a path or None", data_dir, TypeError)
    download = check_bool(_WHERE, "download", download)
    cache_dir = data_cache_dir()

    if data_dir is None:
        source = _find_source_in(cache_dir) if cache_dir.is_dir() else None
        if source is None:
            if not download:
                raise _NotInCacheError(
                    f"no CIFAR-10 data in the cache folder {cache_dir} and download=False. "
                    f"Allow the download, put the data there (or set ${_DATA_DIR_ENV_VAR}), "
                    f"or point at it directly. {_ACCEPTED_FORMS}"
                )
            source = _Source(_download_cifar10(cache_dir), is_archive=True)
    else:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data_dir {path} does not exist. {_ACCEPTED_FORMS}")
        if path.is_dir():
            source = _find_source_in(path)
            if source is None:
                raise FileNotFoundError(f"found no CIFAR-10 data in {path}. {_ACCEPTED_FORMS}")
        else:
            source = _Source(path, is_archive=True)
    return _load_cached(source, cache_dir)
