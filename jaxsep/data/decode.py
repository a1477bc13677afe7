"""Decoding a found source into a ``Dataset``: the official pickle batches (through an
unpickler that loads only NumPy arrays) and image-folder trees (through Pillow, an optional
extra)."""

from __future__ import annotations

import codecs
import io
import pickle
import posixpath
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxsep.data.dataset import (
    _SPLITS,
    CIFAR10_CLASSES,
    IMAGE_SIZE,
    NUM_CHANNELS,
    Dataset,
)
from jaxsep.data.sources import (
    _META_FILE,
    _PICKLE_FILES,
    _TEST_BATCH,
    _TRAIN_BATCHES,
    _ArchiveFiles,
    _detect_layout,
    _Files,
    _FolderFiles,
    _Source,
)

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
