"""Builders for the data tests: tiny CIFAR-10 copies in each accepted layout (pickle batches,
image folders, tar archives), what the loader should return for them, and shared fixtures.

Test files import the fixtures they use by name (``from data_builders import cache_dir``):
``cache_dir`` is autouse, so importing it gives every test of that file its own empty cache.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from jaxsep import data
from jaxsep.data import load as data_load
from jaxsep.data.decode import _natural_sort_key

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache folder; nothing touches ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("JAXSEP_DATA_DIR", str(folder))
    return folder


def random_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def smooth_images(count: int, seed: int) -> np.ndarray:
    """Gradients, which survive JPEG compression almost unchanged (noise would not)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, 32)
    base = rng.uniform(40, 200, (count, 1, 1, 3))
    slope = rng.uniform(-30, 30, (count, 1, 1, 3))
    images = base + slope * (ramp[None, :, None, None] + ramp[None, None, :, None])
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


class Expected:
    """What a loader should return for a data set written by the helpers below."""

    def __init__(self, train_images, train_labels, test_images, test_labels, class_names):
        self.train_images = train_images
        self.train_labels = np.asarray(train_labels, np.int32)
        self.test_images = test_images
        self.test_labels = np.asarray(test_labels, np.int32)
        self.class_names = tuple(class_names)


def assert_matches(dataset: data.Dataset, expected: Expected, *, exact: bool = True) -> None:
    assert isinstance(dataset, data.Dataset)
    assert dataset.class_names == expected.class_names
    for split in ("train", "test"):
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(labels, getattr(expected, f"{split}_labels"))
        want = getattr(expected, f"{split}_images")
        assert images.shape == want.shape
        if exact:
            np.testing.assert_array_equal(images, want)
        else:
            difference = np.abs(images.astype(int) - want.astype(int))
            assert difference.mean() < 2.0, difference.mean()


def write_pickle_batches(
    folder: Path, *, rows: int = 3, labels_override: dict | None = None, meta_names=None
) -> Expected:
    """An official-format cifar-10-batches-py folder with ``rows`` images per batch."""
    folder.mkdir(parents=True)
    images_by_batch, labels_by_batch = {}, {}
    for index, name in enumerate([*TRAIN_BATCHES, "test_batch"]):
        images = random_images(rows, seed=index)
        labels = [(index * rows + row) % 10 for row in range(rows)]
        labels = (labels_override or {}).get(name, labels)
        batch = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": labels,
            # Official rows are channel-first: 1024 red, then green, then blue values.
            b"data": images.transpose(0, 3, 1, 2).reshape(rows, 3072),
            b"filenames": [f"img_{row}.png".encode() for row in range(rows)],
        }
        # Protocol 2 is what the official (Python 2) files use.
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        images_by_batch[name], labels_by_batch[name] = images, labels
    names = data.CIFAR10_CLASSES if meta_names is None else meta_names
    meta = {b"label_names": [name.encode() for name in names], b"num_cases_per_batch": rows}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Expected(
        np.concatenate([images_by_batch[name] for name in TRAIN_BATCHES]),
        np.concatenate([labels_by_batch[name] for name in TRAIN_BATCHES]),
        images_by_batch["test_batch"],
        labels_by_batch["test_batch"],
        names,
    )


def write_image_folder(
    root: Path,
    class_names=data.CIFAR10_CLASSES,
    *,
    per_class: int = 2,
    extension: str = "png",
    file_names=None,
    expected_order=None,
) -> Expected:
    """train/<class>/<i>.<ext> and test/<class>/<i>.<ext>, plus junk the loader must skip."""
    from PIL import Image  # here: only the image-folder tests need Pillow (they skip without it)

    expected_order = tuple(expected_order or class_names)
    file_names = file_names or [f"{index}.{extension}" for index in range(per_class)]
    make = smooth_images if extension == "jpg" else random_images
    written: dict[tuple[str, str], list[np.ndarray]] = {}
    for split_index, split in enumerate(("train", "test")):
        for class_index, class_name in enumerate(class_names):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            images = make(len(file_names), seed=100 * split_index + class_index)
            for image, file_name in zip(images, file_names):
                Image.fromarray(image).save(folder / file_name, quality=95)
            # macOS metadata and stray files that must be ignored.
            (folder / f"._{file_names[0]}").write_bytes(b"\x00\x05\x16\x07 not an image")
            (folder / ".DS_Store").write_bytes(b"junk")
            (folder / "notes.txt").write_text("not an image")
            order = sorted(
                range(len(file_names)), key=lambda i: _natural_sort_key(file_names[i])
            )
            written[split, class_name] = [images[i] for i in order]
    (root / "README.txt").write_text("tiny test data")

    def split_arrays(split):
        images, labels = [], []
        for label, class_name in enumerate(expected_order):
            images += written[split, class_name]
            labels += [label] * len(written[split, class_name])
        return np.stack(images), labels

    return Expected(*split_arrays("train"), *split_arrays("test"), expected_order)


def make_tar(archive: Path, source: Path, *, wrap_in: str | None = None) -> Path:
    """Archives the contents of ``source``, optionally under one top-level folder."""
    mode = "w" if archive.name.endswith(".tar") else "w:gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode) as tar:
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=f"{wrap_in}/{child.name}" if wrap_in else child.name)
    return archive


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def official_archive(tmp_path: Path) -> tuple[Path, Expected]:
    """A tiny cifar-10-python.tar.gz laid out like the official one."""
    expected = write_pickle_batches(tmp_path / "build" / "cifar-10-batches-py")
    archive = make_tar(tmp_path / "server" / "cifar-10-python.tar.gz", tmp_path / "build")
    return archive, expected


@pytest.fixture
def png_folder(tmp_path: Path) -> tuple[Path, Expected]:
    root = tmp_path / "pngs"
    return root, write_image_folder(root)


def forbid_decoding(monkeypatch):
    def fail(source):
        raise AssertionError(f"decoded {source} again instead of using the cache")

    monkeypatch.setattr(data_load, "_decode_source", fail)
