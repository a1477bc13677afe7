"""CIFAR-10 data pipeline: loading and caching, synthetic data, subsets, batching helpers and
on-device augmentation.

Loading: ``load_cifar10(data_dir)``
-----------------------------------
``data_dir`` (a ``str`` or ``Path``; ``--data-dir`` on the command line) may *be* or *contain*
any of these layouts:

1. The official archive ``cifar-10-python.tar.gz`` (from ``CIFAR10_URL``).
2. Its extracted folder ``cifar-10-batches-py/``: Python pickles ``data_batch_1`` ...
   ``data_batch_5`` (train), ``test_batch`` and ``batches.meta`` (class names). Each batch holds
   ``data``, a (rows, 3072) uint8 array of images stored channel-first (CHW), and ``labels``.
3. An image-folder tree ``train/<class>/*.png|jpg`` and ``test/<class>/*.png|jpg`` of 32x32
   images, either as a folder or inside a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive (also
   ``.tar.bz2`` / ``.tar.xz``). Archives are read member by member, never extracted to disk.

One wrapping folder level is found automatically: an archive or a folder whose single
top-level folder holds ``train/`` and ``test/`` (or the pickle batches) works as is, e.g.
``cifar10-jpeg.tar.gz`` containing ``cifar10-jpeg/train/...``. When a folder holds several
candidates, an extracted folder is preferred over an archive and ``cifar-10-python.tar.gz``
over other archives; several other archives are ambiguous and raise an error.

Labels of an image-folder tree follow CIFAR-10's label order when its class folders are
exactly CIFAR-10's ten class names, and sorted folder-name order otherwise (numeric order when
every name is a number). A mix of CIFAR-10 names and other names is rejected as a probable
typo. Decoding images needs Pillow, the optional extra ``pip install "jaxsep[images]"``.

With ``data_dir=None`` the loader looks in the cache folder (``$JAXSEP_DATA_DIR``, else
``~/.cache/jaxsep``) and, if nothing usable is there and ``download=True``, downloads the
official archive there, showing a progress bar and verifying its MD5 checksum.

Caching
-------
Decoded arrays are cached as one ``.npz`` per source in the cache folder, keyed by a hash of
the source's absolute path, size and modification time (for a folder: of every data file in
it), so loading the same source again takes a fraction of a second and editing the source
invalidates the cache. Every file this module writes is written to a temporary file in the
same folder and then renamed into place, so an interrupted download or decode never leaves
anything a later run would mistake for data.

Arrays
------
``Dataset`` holds host (NumPy) arrays: images uint8 NHWC (N, 32, 32, 3), labels int32 (N,).
``augment``, ``cutout``, ``normalize``, ``batch_key`` and ``resize`` are JAX functions meant
to run on the accelerator inside a jitted training step; ``epoch_permutation``, ``subset``
and ``num_batches`` are deterministic host-side helpers.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import functools
import hashlib
import http.client
import io
import json
import logging
import lzma
import os
import pickle
import posixpath
import re
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsep._io import atomic_write

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "Dataset",
    "augment",
    "batch_key",
    "cutout",
    "data_cache_dir",
    "epoch_permutation",
    "load_cifar10",
    "normalize",
    "num_batches",
    "resize",
    "subset",
    "synthetic_cifar10",
]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
#: Per-channel (R, G, B) mean and standard deviation of the CIFAR-10 train split, in 0..1 units.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

CIFAR10_ARCHIVE_NAME = "cifar-10-python.tar.gz"
IMAGE_SIZE = 32
NUM_CHANNELS = 3

_DATA_DIR_ENV_VAR = "JAXSEP_DATA_DIR"
_PICKLE_FOLDER = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META_FILE = "batches.meta"
_PICKLE_FILES = frozenset((*_TRAIN_BATCHES, _TEST_BATCH, _META_FILE))
_IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".bmp"))
_JPEG_SUFFIXES = frozenset((".jpg", ".jpeg"))
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_SPLITS = ("train", "test")
# Bump when decoding changes, so caches written by older code are not reused.
_CACHE_FORMAT_VERSION = 1

_ACCEPTED_FORMS = (
    "Pass the data's location as data_dir=... (Python) or --data-dir (command line). "
    "Accepted forms: the official cifar-10-python.tar.gz or a folder holding it; its "
    "extracted cifar-10-batches-py/ folder or a folder holding it; an image-folder tree "
    "train/<class>/*.png|jpg + test/<class>/*.png|jpg, as a folder or a .tar.gz/.tgz/.tar "
    "archive, optionally inside one top-level folder."
)


# --------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_optional_int(name: str, value: Any, *, minimum: int) -> int | None:
    return None if value is None else _check_int(name, value, minimum=minimum)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_image_batch(name: str, images: Any) -> tuple[int, int, int, int]:
    shape = getattr(images, "shape", None)
    if shape is None or getattr(images, "dtype", None) is None:
        raise TypeError(
            f"{name} must be a NumPy or JAX array of shape (B, H, W, C), "
            f"got {type(images).__name__}"
        )
    if len(shape) != 4:
        raise ValueError(
            f"{name} must be a 4-D NHWC batch of shape (B, H, W, C), got shape {tuple(shape)}"
        )
    return tuple(shape)  # type: ignore[return-value]


def _check_uint8(name: str, images: Any) -> None:
    if images.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8, got {images.dtype}")


def _check_scalar_int_like(name: str, value: Any) -> None:
    """Accepts a non-negative Python/NumPy int, or an integer scalar array (possibly traced)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        return
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or shape != ():
        raise TypeError(
            f"{name} must be an int or an integer scalar array, got {type(value).__name__}"
            + (f" of dtype {dtype} and shape {shape}" if dtype is not None else f" {value!r}")
        )


def _check_prng_key(name: str, key: Any) -> None:
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"{name} must be a single PRNG key (shape ()), got shape {shape}")
        return
    if dtype == np.uint32 and shape == (2,):  # legacy raw key from jax.random.PRNGKey
        return
    raise TypeError(
        f"{name} must be a JAX PRNG key such as jax.random.key(0) or batch_key(...), "
        f"got {type(key).__name__}"
        + (f" of dtype {dtype} and shape {shape}" if dtype is not None else "")
    )


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled image-classification dataset held in host memory.

    Attributes:
      train_images: uint8 array (N_train, H, W, 3), NHWC; (N, 32, 32, 3) for CIFAR-10.
      train_labels: int32 array (N_train,), values in [0, num_classes).
      test_images: uint8 array (N_test, H, W, 3), same H and W as the train images.
      test_labels: int32 array (N_test,), values in [0, num_classes).
      class_names: tuple of unique class names; label i is class_names[i]. A list is
        accepted and stored as a tuple.
      name: what to call the data in reports, e.g. "cifar10", "cifar10 (JPEG q75 copy)",
        "synthetic".

    Equality is identity (arrays have no single truth value); compare fields explicitly.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        class_names = self.class_names
        if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence):
            raise TypeError(
                f"class_names must be a tuple of str, got {type(class_names).__name__}"
            )
        class_names = tuple(class_names)
        object.__setattr__(self, "class_names", class_names)
        if not class_names:
            raise ValueError("class_names must name at least one class, got ()")
        for class_name in class_names:
            if not isinstance(class_name, str) or not class_name:
                raise TypeError(f"class_names must be non-empty str, got {class_name!r}")
        if len(set(class_names)) != len(class_names):
            duplicates = sorted({c for c in class_names if class_names.count(c) > 1})
            raise ValueError(f"class_names must be unique, got duplicates {duplicates}")
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str, got {self.name!r}")

        for split in _SPLITS:
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            for field, array in ((f"{split}_images", images), (f"{split}_labels", labels)):
                if not isinstance(array, np.ndarray):
                    raise TypeError(
                        f"{field} must be a NumPy array, got {type(array).__name__}"
                    )
            if images.dtype != np.uint8:
                raise TypeError(f"{split}_images must have dtype uint8, got {images.dtype}")
            if images.ndim != 4 or images.shape[-1] != NUM_CHANNELS:
                raise ValueError(
                    f"{split}_images must have shape (N, H, W, 3), got {images.shape}"
                )
            if labels.dtype != np.int32:
                raise TypeError(f"{split}_labels must have dtype int32, got {labels.dtype}")
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{split}_labels must have shape ({images.shape[0]},) to match "
                    f"{split}_images {images.shape}, got {labels.shape}"
                )
            if images.shape[0] == 0:
                raise ValueError(f"the {split} split is empty: {split}_images has 0 examples")
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= len(class_names):
                bad = low if low < 0 else high
                raise ValueError(
                    f"{split}_labels must lie in [0, {len(class_names)}) for "
                    f"{len(class_names)} classes, found label {bad}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"train and test images must share (H, W, C), got "
                f"{self.train_images.shape[1:]} and {self.test_images.shape[1:]}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes, len(class_names)."""
        return len(self.class_names)

    @property
    def num_train(self) -> int:
        """Number of train examples."""
        return int(self.train_images.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.test_images.shape[0])

    def __repr__(self) -> str:
        height, width = self.train_images.shape[1:3]
        return (
            f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"image={height}x{width}x{NUM_CHANNELS}, classes={self.num_classes})"
        )


# --------------------------------------------------------------------------------------------
# Finding the data
# --------------------------------------------------------------------------------------------


def data_cache_dir() -> Path:
    """The folder for downloads and ``.npz`` caches: ``$JAXSEP_DATA_DIR``, else
    ``~/.cache/jaxsep``. It is not created here."""
    configured = os.environ.get(_DATA_DIR_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "jaxsep"


@dataclasses.dataclass(frozen=True)
class _Source:
    path: Path
    is_archive: bool


def _is_archive_name(name: str) -> bool:
    return name.lower().endswith(_ARCHIVE_SUFFIXES)


def _is_hidden(name: str) -> bool:
    # "._x.jpg" AppleDouble files and "__MACOSX/" folders are metadata that macOS tar/zip add.
    return name.startswith(".") or name == "__MACOSX"


def _is_data_file(relative_path: str) -> bool:
    basename = posixpath.basename(relative_path)
    return basename in _PICKLE_FILES or posixpath.splitext(basename)[1].lower() in _IMAGE_SUFFIXES


def _looks_like_dataset_folder(folder: Path) -> bool:
    return (
        any((folder / name).is_file() for name in _PICKLE_FILES)
        or (folder / "train").is_dir()
        or (folder / "test").is_dir()
    )


def _find_source_in(folder: Path) -> _Source | None:
    """The data source in ``folder`` (itself, one subfolder or one archive), or None."""
    if _looks_like_dataset_folder(folder):
        return _Source(folder, is_archive=False)
    entries = sorted(entry for entry in folder.iterdir() if not _is_hidden(entry.name))
    subfolders = [entry for entry in entries if entry.is_dir()]
    pickle_folder = folder / _PICKLE_FOLDER
    if pickle_folder in subfolders and _looks_like_dataset_folder(pickle_folder):
        return _Source(pickle_folder, is_archive=False)
    if len(subfolders) == 1 and _looks_like_dataset_folder(subfolders[0]):
        return _Source(subfolders[0], is_archive=False)
    archives = [entry for entry in entries if entry.is_file() and _is_archive_name(entry.name)]
    if (folder / CIFAR10_ARCHIVE_NAME) in archives:
        return _Source(folder / CIFAR10_ARCHIVE_NAME, is_archive=True)
    if len(archives) == 1:
        return _Source(archives[0], is_archive=True)
    if len(archives) > 1:
        names = ", ".join(archive.name for archive in archives)
        raise ValueError(
            f"{folder} holds several archives ({names}) and none is {CIFAR10_ARCHIVE_NAME}; "
            f"pass the one to use as data_dir=... / --data-dir."
        )
    return None


# --------------------------------------------------------------------------------------------
# Reading files from a folder or straight from an archive
# --------------------------------------------------------------------------------------------


def _walk_data_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """(relative posix path, stat) of every data file under ``root``, sorted by path."""
    found = []
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if not _is_hidden(name)]
        relative_directory = Path(directory).relative_to(root).as_posix()
        for filename in filenames:
            if _is_hidden(filename):
                continue
            relative = filename if relative_directory == "." else f"{relative_directory}/{filename}"
            if _is_data_file(relative):
                found.append((relative, os.stat(os.path.join(directory, filename))))
    found.sort(key=lambda item: item[0])
    return found


class _FolderFiles:
    """Data files of a folder, read from disk on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = [relative for relative, _ in _walk_data_files(root)]
        self._path_set = set(self.paths)

    def __contains__(self, path: str) -> bool:
        return path in self._path_set

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def describe(self, path: str = "") -> str:
        return str(self.root / path) if path else str(self.root)

    def missing(self, path: str) -> Exception:
        return FileNotFoundError(
            f"{self.describe(path)} is missing: the folder {self.root} looks like CIFAR-10 "
            f"but is incomplete. Extract or copy it again."
        )


class _ArchiveFiles:
    """Data files of a tar archive, read into memory in one sequential pass.

    A single streaming pass is much faster than random access into a compressed tar (each
    backwards seek would restart decompression) and never writes extracted files to disk.
    """

    def __init__(self, archive: Path):
        self.archive = archive
        self._contents: dict[str, bytes] = {}
        try:
            with tarfile.open(archive, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    path = posixpath.normpath(member.name.lstrip("/"))
                    parts = path.split("/")
                    if ".." in parts or any(_is_hidden(part) for part in parts):
                        continue
                    if not _is_data_file(path):
                        continue
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        self._contents[path] = extracted.read()
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
            raise ValueError(
                f"could not read the archive {archive}: {error}. It is truncated, corrupt or "
                f"not a tar archive; delete it and download or copy it again."
            ) from error
        self.paths = sorted(self._contents)

    def __contains__(self, path: str) -> bool:
        return path in self._contents

    def read(self, path: str) -> bytes:
        return self._contents[path]

    def describe(self, path: str = "") -> str:
        return f"{path} in {self.archive}" if path else str(self.archive)

    def missing(self, path: str) -> Exception:
        return ValueError(
            f"{self.archive} has no member {path}: the archive looks like CIFAR-10 but is "
            f"incomplete. Download or copy it again."
        )


_Files = _FolderFiles | _ArchiveFiles


def _detect_layout(files: _Files) -> tuple[str, str]:
    """("pickle" | "image_folder", path prefix of the dataset root inside ``files``)."""
    top_folders = {path.split("/", 1)[0] for path in files.paths if "/" in path}
    prefixes = [""] + ([f"{top_folders.pop()}/"] if len(top_folders) == 1 else [])
    for prefix in prefixes:
        relative = [path[len(prefix) :] for path in files.paths if path.startswith(prefix)]
        if any(path in _PICKLE_FILES for path in relative):
            return "pickle", prefix
        if any(path.startswith(("train/", "test/")) for path in relative):
            return "image_folder", prefix
    raise ValueError(
        f"{files.describe()} does not hold CIFAR-10 in a known layout (found "
        f"{len(files.paths)} image/batch files, none at train/<class>/..., test/<class>/... or "
        f"data_batch_1...). {_ACCEPTED_FORMS}"
    )


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

# The official batches are pickles; loading arbitrary pickles can run arbitrary code, so only
# the few globals that NumPy arrays need are allowed.
_ALLOWED_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(1))[0],
    ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # Python 3 writes bytes this way at protocol 2
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: CIFAR-10 batches hold only NumPy arrays, "
                f"lists, numbers and bytes"
            ) from None


def _decode_pickle_batches(files: _Files, prefix: str) -> tuple[dict, tuple[str, ...]]:
    def unpickle(name: str) -> dict:
        path = prefix + name
        if path not in files:
            raise files.missing(path)
        try:
            content = _BatchUnpickler(io.BytesIO(files.read(path)), encoding="bytes").load()
        except Exception as error:
            raise ValueError(
                f"could not unpickle {files.describe(path)}: {error}. The file is corrupt; "
                f"extract or download CIFAR-10 again."
            ) from error
        if not isinstance(content, dict):
            raise ValueError(
                f"{files.describe(path)} should hold a dict, got {type(content).__name__}"
            )
        return content

    class_names = CIFAR10_CLASSES
    if prefix + _META_FILE in files:
        raw_names = unpickle(_META_FILE).get(b"label_names")
        if not isinstance(raw_names, list) or not raw_names:
            raise ValueError(
                f"{files.describe(prefix + _META_FILE)} should hold a non-empty list "
                f"'label_names', got {raw_names!r}"
            )
        class_names = tuple(
            name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in raw_names
        )

    arrays = {}
    for split, batch_names in (("train", _TRAIN_BATCHES), ("test", (_TEST_BATCH,))):
        split_images, split_labels = [], []
        for batch_name in batch_names:
            batch = unpickle(batch_name)
            where = files.describe(prefix + batch_name)
            data, labels = batch.get(b"data"), batch.get(b"labels")
            pixels = IMAGE_SIZE * IMAGE_SIZE * NUM_CHANNELS
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
                data.shape[1] != pixels
            ):
                got = (
                    f"{data.dtype} array of shape {data.shape}"
                    if isinstance(data, np.ndarray)
                    else type(data).__name__
                )
                raise ValueError(
                    f"{where}: 'data' should be a uint8 array of shape (rows, {pixels}), got {got}"
                )
            labels = np.asarray(labels) if isinstance(labels, list) else labels
            if (
                not isinstance(labels, np.ndarray)
                or labels.shape != (data.shape[0],)
                or (labels.size and not np.issubdtype(labels.dtype, np.integer))
            ):
                raise ValueError(
                    f"{where}: 'labels' should be {data.shape[0]} integers (one per row of "
                    f"'data'), got {labels!r:.200}"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
                bad = int(labels.min() if labels.min() < 0 else labels.max())
                raise ValueError(
                    f"{where}: label {bad} is out of range for {len(class_names)} classes "
                    f"(valid labels are 0..{len(class_names) - 1})."
                )
            # Rows are stored channel-first (3 planes of 32x32); convert to NHWC.
            split_images.append(
                data.reshape(-1, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
            )
            split_labels.append(labels.astype(np.int32))
        images = np.ascontiguousarray(np.concatenate(split_images))
        if images.shape[0] == 0:
            raise ValueError(
                f"empty {split} split: {', '.join(batch_names)} in {files.describe(prefix)} "
                f"hold no images."
            )
        arrays[split] = (images, np.concatenate(split_labels))
    return arrays, class_names


def _import_pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            'Decoding image-folder copies of CIFAR-10 needs Pillow: pip install "jaxsep[images]" '
            "(or pass the official cifar-10-python.tar.gz, which needs no image decoder)."
        ) from error
    return Image


def _natural_sort_key(path: str) -> list:
    # "2.png" before "10.png", whether or not the numbers are zero-padded.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _order_class_names(names: set[str], where: str) -> tuple[str, ...]:
    cifar = set(CIFAR10_CLASSES)
    if names == cifar:
        return CIFAR10_CLASSES
    known, unknown = names & cifar, names - cifar
    if known and unknown:
        raise ValueError(
            f"unknown class folder(s) {sorted(unknown)} in {where}: the other folders are "
            f"CIFAR-10 classes ({', '.join(sorted(known))}), so these look misnamed. CIFAR-10's "
            f"classes are {', '.join(CIFAR10_CLASSES)}. Rename the folders to CIFAR-10 class "
            f"names, or use only non-CIFAR-10 names for a dataset of your own."
        )
    if all(name.isdigit() for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _decode_image_folder(
    files: _Files, prefix: str
) -> tuple[dict, tuple[str, ...], bool]:
    Image = _import_pillow()
    paths_by_split: dict[str, dict[str, list[str]]] = {}
    for split in _SPLITS:
        split_prefix = f"{prefix}{split}/"
        by_class: dict[str, list[str]] = {}
        for path in files.paths:
            if not path.startswith(split_prefix) or posixpath.basename(path) in _PICKLE_FILES:
                continue
            parts = path[len(split_prefix) :].split("/")
            if len(parts) != 2:
                raise ValueError(
                    f"{files.describe(path)} is not directly inside a class folder: expected "
                    f"images at {split}/<class>/<image>."
                )
            by_class.setdefault(parts[0], []).append(path)
        if not by_class:
            raise ValueError(
                f"empty {split} split: no images found at {split}/<class>/*.png|jpg in "
                f"{files.describe(prefix.rstrip('/'))}."
            )
        paths_by_split[split] = by_class

    train_classes, test_classes = (set(paths_by_split[split]) for split in _SPLITS)
    if train_classes != test_classes:
        raise ValueError(
            f"train and test class folders differ in {files.describe(prefix.rstrip('/'))}: "
            f"only in train: {sorted(train_classes - test_classes)}, only in test: "
            f"{sorted(test_classes - train_classes)}. Both splits need the same classes."
        )
    class_names = _order_class_names(train_classes, files.describe(f"{prefix}train"))

    arrays = {}
    saw_jpeg = False
    for split in _SPLITS:
        ordered: list[tuple[str, int]] = []
        for label, class_name in enumerate(class_names):
            class_paths = sorted(paths_by_split[split][class_name], key=_natural_sort_key)
            ordered.extend((path, label) for path in class_paths)
        images = np.empty((len(ordered), IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS), np.uint8)
        labels = np.fromiter((label for _, label in ordered), np.int32, len(ordered))
        for index, (path, _) in enumerate(ordered):
            try:
                image = Image.open(io.BytesIO(files.read(path)))
            except Exception as error:
                raise ValueError(
                    f"could not decode the image {files.describe(path)}: {error}. Replace or "
                    f"remove it."
                ) from error
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                width, height = image.size
                raise ValueError(
                    f"{files.describe(path)} is {width}x{height} pixels; CIFAR-10 images must "
                    f"be {IMAGE_SIZE}x{IMAGE_SIZE}. Resize or remove it."
                )
            saw_jpeg = saw_jpeg or image.format == "JPEG"
            try:
                if image.mode != "RGB":
                    image = image.convert("RGB")
                images[index] = np.asarray(image)
            except Exception as error:
                raise ValueError(
                    f"could not decode the image {files.describe(path)}: {error}. Replace or "
                    f"remove it."
                ) from error
        arrays[split] = (images, labels)
    return arrays, class_names, saw_jpeg


def _image_folder_dataset_name(
    source_path: Path, class_names: tuple[str, ...], saw_jpeg: bool
) -> str:
    if set(class_names) != set(CIFAR10_CLASSES):
        return f"image folder {source_path.name}"
    # Accuracy on re-encoded pixels is not accuracy on the official release: say so in reports.
    if "jpeg" in str(source_path).lower():
        return "cifar10 (JPEG q75 copy)"
    if saw_jpeg:
        return "cifar10 (JPEG copy)"
    return "cifar10 (image-folder copy)"


def _decode_source(source: _Source) -> Dataset:
    """Decodes ``source`` into a Dataset (slow path; ``_load_cached`` caches the result)."""
    files: _Files = _ArchiveFiles(source.path) if source.is_archive else _FolderFiles(source.path)
    layout, prefix = _detect_layout(files)
    if layout == "pickle":
        arrays, class_names = _decode_pickle_batches(files, prefix)
        name = "cifar10" if class_names == CIFAR10_CLASSES else f"cifar-style {source.path.name}"
    else:
        arrays, class_names, saw_jpeg = _decode_image_folder(files, prefix)
        name = _image_folder_dataset_name(source.path.absolute(), class_names, saw_jpeg)
    return Dataset(
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        class_names=class_names,
        name=name,
    )


# --------------------------------------------------------------------------------------------
# Atomic writes, caching and downloading
# --------------------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _download_progress(
    description: str, total_bytes: int | None
) -> Iterator[Callable[[int], None]]:
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
    except ImportError:  # rich is a nicety; without it, say what is happening and carry on
        print(f"{description} ...", file=sys.stderr)
        yield lambda _: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task(description, total=total_bytes)
        yield lambda num_bytes: progress.advance(task, num_bytes)


def _download_cifar10(cache_dir: Path) -> Path:
    # Read at call time, so tests (and mirrors) can point these elsewhere.
    url, expected_md5 = CIFAR10_URL, CIFAR10_MD5
    destination = cache_dir / CIFAR10_ARCHIVE_NAME
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RuntimeError(
            f"cannot create the data cache folder {cache_dir} ({error}). Set "
            f"${_DATA_DIR_ENV_VAR} to a writable folder, or pass data_dir=... / --data-dir."
        ) from error

    def download(file: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _download_progress(f"Downloading {CIFAR10_ARCHIVE_NAME}", total) as advance:
                while chunk := response.read(1 << 20):
                    file.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
        if digest.hexdigest() != expected_md5:
            raise RuntimeError(
                f"checksum mismatch for {CIFAR10_ARCHIVE_NAME} downloaded from {url}: expected "
                f"md5 {expected_md5}, got {digest.hexdigest()}. The download is corrupt or the "
                f"file changed; nothing was kept in {cache_dir}. Try again, or download it "
                f"yourself and pass data_dir=... / --data-dir."
            )

    try:
        atomic_write(destination, download, durable=True)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise RuntimeError(
            f"could not download CIFAR-10 from {url} ({reason}), and {cache_dir} holds no "
            f"usable copy. Without network access, copy CIFAR-10 to this machine. "
            f"{_ACCEPTED_FORMS}"
        ) from error
    return destination


def load_cifar10(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Dataset:
    """Loads CIFAR-10 from ``data_dir`` (see the module docstring for accepted layouts).

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
      FileNotFoundError: nothing usable at ``data_dir`` (or in the cache with download=False).
      RuntimeError: the download failed or its checksum did not match.
      ValueError: corrupt or inconsistent data (the message names the file).
      ImportError: an image-folder source needs Pillow (``pip install "jaxsep[images]"``).
    """
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(
            f"data_dir must be a str, a path or None, got {type(data_dir).__name__} {data_dir!r}"
        )
    download = _check_bool("download", download)
    cache_dir = data_cache_dir()

    if data_dir is None:
        source = _find_source_in(cache_dir) if cache_dir.is_dir() else None
        if source is None:
            if not download:
                raise FileNotFoundError(
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


# --------------------------------------------------------------------------------------------
# Synthetic data, subsets and batching
# --------------------------------------------------------------------------------------------


def _linear_upsampling_matrix(coarse: int, fine: int) -> np.ndarray:
    """(fine, coarse) matrix that linearly interpolates ``coarse`` samples to ``fine``."""
    positions = np.clip((np.arange(fine) + 0.5) * coarse / fine - 0.5, 0, coarse - 1)
    lower = np.floor(positions).astype(int)
    upper = np.minimum(lower + 1, coarse - 1)
    fraction = positions - lower
    matrix = np.zeros((fine, coarse))
    matrix[np.arange(fine), lower] += 1 - fraction
    matrix[np.arange(fine), upper] += fraction
    return matrix


def synthetic_cifar10(
    num_train: int = 512, num_test: int = 128, *, num_classes: int = 10, seed: int = 0
) -> Dataset:
    """A small, deterministic, learnable stand-in for CIFAR-10.

    Each class has its own fixed random low-frequency colour pattern (a 4x4 grid of random
    colours, smoothly interpolated to 32x32); each example is its class pattern plus Gaussian
    pixel noise, so a small model can learn (or overfit) it quickly. Labels are balanced
    (counts differ by at most one) and shuffled.

    Returns:
      A Dataset named "synthetic": train_images uint8 (num_train, 32, 32, 3), train_labels
      int32 (num_train,), test_images uint8 (num_test, 32, 32, 3), test_labels int32
      (num_test,), class_names ("class_0", ...). Same arguments give the same arrays.
    """
    num_train = _check_int("num_train", num_train, minimum=1)
    num_test = _check_int("num_test", num_test, minimum=1)
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    seed = _check_int("seed", seed, minimum=0)

    pattern_rng, train_rng, test_rng = (
        np.random.default_rng(np.random.SeedSequence([seed, stream])) for stream in range(3)
    )
    coarse_grid = 4
    coarse = pattern_rng.uniform(0.0, 255.0, size=(num_classes, coarse_grid, coarse_grid, 3))
    upsample = _linear_upsampling_matrix(coarse_grid, IMAGE_SIZE)
    patterns = np.einsum("hi,wj,kijc->khwc", upsample, upsample, coarse).astype(np.float32)
    noise_std = 32.0

    def make_split(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(count) % num_classes).astype(np.int32)
        images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS), np.uint8)
        chunk = 4096  # bounds the float32 noise buffer for large counts
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            noise = rng.standard_normal((stop - start, *images.shape[1:]), dtype=np.float32)
            noisy = patterns[labels[start:stop]] + noise_std * noise
            images[start:stop] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        return images, labels

    train_images, train_labels = make_split(num_train, train_rng)
    test_images, test_labels = make_split(num_test, test_rng)
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=tuple(f"class_{index}" for index in range(num_classes)),
        name="synthetic",
    )


def subset(
    dataset: Dataset, *, max_train: int | None = None, max_test: int | None = None, seed: int = 0
) -> Dataset:
    """A fixed random subset of ``dataset``: the same seed always picks the same examples.

    Args:
      dataset: the Dataset to draw from.
      max_train, max_test: keep at most this many examples of each split (None or a number
        at least the split's size keeps the whole split).
      seed: selects the subset; train and test are drawn independently.

    Returns:
      A Dataset with images uint8 (n, H, W, 3) and labels int32 (n,), examples kept in their
      original relative order. When a split was cut, the name gets a suffix such as
      " [subset 5000/10000]" so reports do not pass a subset off as the full data set.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a Dataset, got {type(dataset).__name__}")
    max_train = _check_optional_int("max_train", max_train, minimum=1)
    max_test = _check_optional_int("max_test", max_test, minimum=1)
    seed = _check_int("seed", seed, minimum=0)

    def choose(count: int, limit: int | None, stream: int) -> np.ndarray | None:
        if limit is None or limit >= count:
            return None
        rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
        return np.sort(rng.choice(count, size=limit, replace=False))

    train_index = choose(dataset.num_train, max_train, 0)
    test_index = choose(dataset.num_test, max_test, 1)
    if train_index is None and test_index is None:
        return dataset
    train_images, train_labels = dataset.train_images, dataset.train_labels
    test_images, test_labels = dataset.test_images, dataset.test_labels
    if train_index is not None:
        train_images, train_labels = train_images[train_index], train_labels[train_index]
    if test_index is not None:
        test_images, test_labels = test_images[test_index], test_labels[test_index]
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=dataset.class_names,
        name=f"{dataset.name} [subset {len(train_labels)}/{len(test_labels)}]",
    )


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which to visit examples in ``epoch``: an int64 permutation of
    ``range(num_examples)``, shape (num_examples,), fully determined by (seed, epoch)."""
    num_examples = _check_int("num_examples", num_examples, minimum=0)
    seed = _check_int("seed", seed, minimum=0)
    epoch = _check_int("epoch", epoch, minimum=0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return rng.permutation(num_examples).astype(np.int64)


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches of ``batch_size`` in ``num_examples`` examples (an int): rounded
    down when ``drop_remainder`` (every batch full, so one compiled shape), else up."""
    num_examples = _check_int("num_examples", num_examples, minimum=0)
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    drop_remainder = _check_bool("drop_remainder", drop_remainder)
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


# --------------------------------------------------------------------------------------------
# On-device (JAX) preprocessing
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("pad", "flip"))
def _augment(images: jax.Array, key: jax.Array, *, pad: int, flip: bool) -> jax.Array:
    batch, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    if pad > 0:
        # Pad once for the whole batch; each example then takes its own window of the padded
        # batch, which XLA lowers to a single gather.
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)

        def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
            return lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        flipped = jax.random.bernoulli(flip_key, 0.5, (batch,))
        images = jnp.where(flipped[:, None, None, None], images[:, :, ::-1, :], images)
    return images


def augment(images_u8: Any, key: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
    """Standard CIFAR augmentation on device: random crop with zero padding, random flip.

    Each example independently takes a random H x W window of itself zero-padded by ``pad``
    pixels on every side (i.e. shifts of -pad..pad pixels in each direction, filling with
    black), then with probability 1/2 is mirrored left-right. Jittable (``pad`` and ``flip``
    are static); the output depends only on the inputs and ``key``.

    Args:
      images_u8: uint8 array (B, H, W, C), NHWC.
      key: a JAX PRNG key (e.g. from ``batch_key``).
      pad: crop padding in pixels, >= 0 (0 disables cropping).
      flip: whether to apply random horizontal flips.

    Returns:
      uint8 jax.Array (B, H, W, C).
    """
    _check_image_batch("images_u8", images_u8)
    _check_uint8("images_u8", images_u8)
    _check_prng_key("key", key)
    pad = _check_int("pad", pad, minimum=0)
    flip = _check_bool("flip", flip)
    return _augment(images_u8, key, pad=pad, flip=flip)


@functools.partial(jax.jit, static_argnames=("size",))
def _cutout(images: jax.Array, key: jax.Array, *, size: int) -> jax.Array:
    batch, height, width, _ = images.shape
    centres = jax.random.randint(key, (batch, 2), 0, jnp.array([height, width]))
    start = centres - size // 2  # may be negative: the square is clipped at the border
    rows = jnp.arange(height)[None, :]
    cols = jnp.arange(width)[None, :]
    in_rows = (rows >= start[:, :1]) & (rows < start[:, :1] + size)  # (B, H)
    in_cols = (cols >= start[:, 1:]) & (cols < start[:, 1:] + size)  # (B, W)
    inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    return jnp.where(inside, jnp.zeros((), images.dtype), images)


def cutout(images: Any, key: jax.Array, *, size: int) -> jax.Array:
    """Cutout (DeVries & Taylor, 2017) on device: zeroes one ``size`` x ``size`` square per
    example.

    Each example independently draws a centre pixel uniformly from its H x W pixels; the
    square covers rows ``cy - size // 2 .. cy - size // 2 + size - 1`` (columns likewise),
    clipped at the border, so a square near an edge or corner covers fewer pixels, as in the
    paper's code (which also lets the centre fall anywhere). Apply it to normalized images,
    where zero is the dataset mean (the paper's choice); on uint8 images zero is black.
    Jittable (``size`` is static); the output depends only on the inputs and ``key``.

    Args:
      images: array (B, H, W, C), NHWC, any dtype.
      key: a JAX PRNG key (e.g. derived from ``batch_key``).
      size: side of the square in pixels, >= 0 (0 returns ``images`` unchanged); 16 is the
        paper's CIFAR-10 setting.

    Returns:
      jax.Array (B, H, W, C) of the input dtype.
    """
    _check_image_batch("images", images)
    _check_prng_key("key", key)
    size = _check_int("size", size, minimum=0)
    if size == 0:
        return jnp.asarray(images)
    return _cutout(images, key, size=size)


def _channel_constants(name: str, values: Any, num_channels: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a sequence of {num_channels} numbers, got {values!r}"
        ) from error
    if array.shape != (num_channels,):
        raise ValueError(
            f"{name} must have one value per channel, i.e. shape ({num_channels},), got "
            f"shape {array.shape}"
        )
    return array


def normalize(
    images_u8: Any,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Converts uint8 images to normalized floats: ``(images / 255 - mean) / std``.

    Args:
      images_u8: uint8 array (..., C) (typically (B, H, W, C)).
      mean, std: per-channel constants of length C in 0..1 units (default: CIFAR-10's).
      dtype: a floating output dtype, e.g. jnp.float32 or jnp.bfloat16. The arithmetic is
        done in float32 and only the result is cast.

    Returns:
      jax.Array of the same shape as ``images_u8`` and dtype ``dtype``.
    """
    shape = getattr(images_u8, "shape", None)
    if shape is None or getattr(images_u8, "dtype", None) is None or len(shape) == 0:
        raise TypeError(
            f"images_u8 must be a uint8 array of shape (..., C), got {type(images_u8).__name__}"
        )
    _check_uint8("images_u8", images_u8)
    num_channels = shape[-1]
    mean_array = _channel_constants("mean", mean, num_channels)
    std_array = _channel_constants("std", std, num_channels)
    if np.any(std_array <= 0):
        raise ValueError(f"std must be positive, got {tuple(std_array.tolist())}")
    try:
        output_dtype = jnp.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}") from error
    if not jnp.issubdtype(output_dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {output_dtype}")
    # One multiply-add per element instead of divide, subtract, divide.
    # Explicit per-channel shape, so this also runs under jax_numpy_rank_promotion="raise".
    channel_shape = (1,) * (len(shape) - 1) + (num_channels,)
    scale = jnp.asarray(1.0 / (255.0 * std_array), jnp.float32).reshape(channel_shape)
    offset = jnp.asarray(-mean_array / std_array, jnp.float32).reshape(channel_shape)
    return (jnp.asarray(images_u8).astype(jnp.float32) * scale + offset).astype(output_dtype)


def batch_key(seed: Any, epoch: Any, step: Any) -> jax.Array:
    """The PRNG key for batch ``step`` of ``epoch``: a typed JAX key (shape ()), equal to
    ``fold_in(fold_in(key(seed), epoch), step)``, so augmentation is reproducible from
    (seed, epoch, step) alone, e.g. when resuming mid-epoch. Each argument is a non-negative
    int or an integer scalar array (which may be traced inside jit)."""
    _check_scalar_int_like("seed", seed)
    _check_scalar_int_like("epoch", epoch)
    _check_scalar_int_like("step", step)
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)


@functools.partial(jax.jit, static_argnames=("size",))
def _resize(images: jax.Array, size: int) -> jax.Array:
    batch, _, _, channels = images.shape
    is_uint8 = images.dtype == jnp.uint8
    # At least float32, without implicit promotion (which strict promotion mode rejects).
    compute_dtype = (
        jnp.float32 if is_uint8 or jnp.finfo(images.dtype).bits < 32 else images.dtype
    )
    resized = jax.image.resize(
        images.astype(compute_dtype),
        (batch, size, size, channels),
        method="bilinear",
        antialias=True,
    )
    if is_uint8:
        return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)
    return resized.astype(images.dtype)


def resize(images: Any, size: int) -> jax.Array:
    """Resizes a batch of images to ``size`` x ``size`` (bilinear, antialiased when
    shrinking), e.g. for resolution-multiplier experiments.

    Args:
      images: uint8 or floating array (B, H, W, C), NHWC.
      size: output height and width, >= 1.

    Returns:
      jax.Array (B, size, size, C) of the input dtype; uint8 results are rounded and clipped
      to 0..255. Floating inputs are resized in at least float32 precision.
    """
    shape = _check_image_batch("images", images)
    if images.dtype != np.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"images must have dtype uint8 or a floating dtype, got {images.dtype}")
    size = _check_int("size", size, minimum=1)
    if shape[1:3] == (size, size):
        return jnp.asarray(images)
    return _resize(images, size)
