"""Tests for jaxsep.data: every accepted CIFAR-10 layout (built tiny, inside the tests), the
.npz cache, the download path (through a file:// URL), error messages for bad data, and the
JAX preprocessing functions.

Set JAXSEP_CIFAR10 to a real CIFAR-10 copy to also run test_real_cifar10 (decoding it the
first time takes ~10-20 s; set JAXSEP_DATA_DIR to keep the cache between runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsep import data

Image = pytest.importorskip("PIL.Image")

# Captured before the autouse fixture below replaces it, for the opt-in real-data test.
_USER_DATA_DIR = os.environ.get("JAXSEP_DATA_DIR")
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache folder; nothing touches ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("JAXSEP_DATA_DIR", str(folder))
    return folder


# --------------------------------------------------------------------------------------------
# Building tiny data sets in each accepted layout
# --------------------------------------------------------------------------------------------


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
    for index, name in enumerate([*_TRAIN_BATCHES, "test_batch"]):
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
        np.concatenate([images_by_batch[name] for name in _TRAIN_BATCHES]),
        np.concatenate([labels_by_batch[name] for name in _TRAIN_BATCHES]),
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
                range(len(file_names)), key=lambda i: data._natural_sort_key(file_names[i])
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


# --------------------------------------------------------------------------------------------
# Loading each layout
# --------------------------------------------------------------------------------------------


def test_pickle_folder_round_trips(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    expected = write_pickle_batches(folder)
    for data_dir in (folder, folder.parent, str(folder)):
        dataset = data.load_cifar10(data_dir)
        assert_matches(dataset, expected)
        assert dataset.name == "cifar10"
        assert dataset.num_classes == 10


def test_official_archive_round_trips(tmp_path, official_archive):
    archive, expected = official_archive
    assert_matches(data.load_cifar10(archive), expected)
    assert_matches(data.load_cifar10(archive.parent), expected)  # a folder holding it
    assert data.load_cifar10(archive).name == "cifar10"


def test_pickle_class_names_come_from_batches_meta(tmp_path):
    names = tuple(f"thing{i}" for i in range(10))
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_pickle_batches(folder, meta_names=names)
    dataset = data.load_cifar10(folder)
    assert_matches(dataset, expected)
    assert dataset.class_names == names and dataset.name != "cifar10"


@pytest.mark.parametrize(
    "layout",
    [
        "folder",
        "wrapped folder",
        "tar.gz",
        "wrapped tar.gz",
        "tgz",
        "tar",
        "folder holding tar.gz",
    ],
)
def test_png_image_folder_round_trips_exactly(tmp_path, png_folder, layout):
    root, expected = png_folder
    if layout == "folder":
        data_dir = root
    elif layout == "wrapped folder":
        data_dir = tmp_path / "outer"
        shutil.copytree(root, data_dir / "cifar10-png")
    elif layout == "folder holding tar.gz":
        data_dir = make_tar(tmp_path / "holder" / "cifar.tar.gz", root).parent
    else:
        suffix = layout.split()[-1]
        wrap_in = "cifar10-png" if "wrapped" in layout else None
        data_dir = make_tar(tmp_path / f"cifar-pngs.{suffix}", root, wrap_in=wrap_in)
    dataset = data.load_cifar10(data_dir)
    assert_matches(dataset, expected)
    assert dataset.name == "cifar10 (image-folder copy)"


@pytest.mark.parametrize(
    "folder_name, archived, expected_name",
    [
        ("cifar10-jpeg", False, "cifar10 (JPEG q75 copy)"),
        ("cifar10-jpeg", True, "cifar10 (JPEG q75 copy)"),
        ("photos", False, "cifar10 (JPEG copy)"),
    ],
)
def test_jpg_image_folder(tmp_path, folder_name, archived, expected_name):
    root = tmp_path / "build" / folder_name
    expected = write_image_folder(root, extension="jpg")
    data_dir = root
    if archived:  # laid out like the real copy: <name>.tar.gz holding <name>/train, <name>/test
        data_dir = make_tar(tmp_path / f"{folder_name}.tar.gz", root, wrap_in=folder_name)
    dataset = data.load_cifar10(data_dir)
    assert_matches(dataset, expected, exact=False)
    assert dataset.name == expected_name


def test_non_cifar_class_names_use_sorted_order(tmp_path):
    expected = write_image_folder(
        tmp_path / "fruit", ("zebra", "apple", "mango"), expected_order=("apple", "mango", "zebra")
    )
    dataset = data.load_cifar10(tmp_path / "fruit")
    assert_matches(dataset, expected)
    assert dataset.num_classes == 3


def test_numeric_class_names_sort_numerically_and_files_naturally(tmp_path):
    classes = [str(i) for i in range(12)]
    expected = write_image_folder(
        tmp_path / "digits", classes, file_names=["10.png", "2.png", "1.png"]
    )
    dataset = data.load_cifar10(tmp_path / "digits")
    assert dataset.class_names == tuple(classes)  # "2" before "10"
    assert_matches(dataset, expected)  # files in order 1, 2, 10


def test_non_rgb_images_are_converted(tmp_path, png_folder):
    root, expected = png_folder
    grey = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    Image.fromarray(grey, mode="L").save(root / "train" / "airplane" / "0.png")
    dataset = data.load_cifar10(root)
    np.testing.assert_array_equal(dataset.train_images[0], np.repeat(grey[..., None], 3, axis=-1))


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def forbid_decoding(monkeypatch):
    def fail(source):
        raise AssertionError(f"decoded {source} again instead of using the cache")

    monkeypatch.setattr(data, "_decode_source", fail)


def test_second_load_uses_the_cache(monkeypatch, cache_dir, png_folder):
    root, expected = png_folder
    first = data.load_cifar10(root)
    assert len(list(cache_dir.glob("*.npz"))) == 1
    assert not list(cache_dir.glob(".*"))  # no temporary files left behind

    forbid_decoding(monkeypatch)
    start = time.perf_counter()
    second = data.load_cifar10(root)
    assert time.perf_counter() - start < 1.0
    assert_matches(second, expected)
    assert second.name == first.name and second.class_names == first.class_names


def test_cache_is_per_source_and_invalidated_when_the_source_changes(tmp_path, cache_dir):
    first_expected = write_image_folder(tmp_path / "v1", ("cat", "dog"), per_class=1)
    second_expected = write_image_folder(tmp_path / "v2", ("cat", "dog"), per_class=3)
    archive = make_tar(tmp_path / "pets.tar.gz", tmp_path / "v1")
    assert_matches(data.load_cifar10(archive), first_expected)
    make_tar(archive, tmp_path / "v2")  # new size and mtime
    assert_matches(data.load_cifar10(archive), second_expected)
    assert_matches(data.load_cifar10(tmp_path / "v1"), first_expected)
    assert len(list(cache_dir.glob("*.npz"))) == 3


def test_editing_a_file_inside_a_folder_source_invalidates_the_cache(png_folder):
    root, _ = png_folder
    data.load_cifar10(root)
    replacement = np.full((32, 32, 3), 7, np.uint8)
    target = root / "test" / "truck" / "1.png"
    Image.fromarray(replacement).save(target)
    os.utime(target, ns=(time.time_ns() + 10**9,) * 2)
    np.testing.assert_array_equal(data.load_cifar10(root).test_images[-1], replacement)


def test_unreadable_cache_is_ignored_and_rewritten(cache_dir, png_folder):
    root, expected = png_folder
    data.load_cifar10(root)
    (cache_file,) = cache_dir.glob("*.npz")
    cache_file.write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(RuntimeWarning, match="unreadable dataset cache"):
        assert_matches(data.load_cifar10(root), expected)
    assert_matches(data._read_cache(cache_file), expected)


# --------------------------------------------------------------------------------------------
# Download (through a file:// URL to a tiny archive)
# --------------------------------------------------------------------------------------------


def point_download_at(monkeypatch, archive: Path, md5: str) -> None:
    monkeypatch.setattr(data, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(data, "CIFAR10_MD5", md5)


def test_download_verifies_md5_shows_progress_and_caches(
    monkeypatch, capsys, cache_dir, official_archive
):
    archive, expected = official_archive
    point_download_at(monkeypatch, archive, md5_of(archive))

    dataset = data.load_cifar10()
    assert_matches(dataset, expected)
    downloaded = cache_dir / "cifar-10-python.tar.gz"
    assert downloaded.read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in cache_dir.iterdir() if p.suffix != ".npz") == [downloaded.name]
    assert "Downloading cifar-10-python.tar.gz" in capsys.readouterr().err

    # Later loads neither download nor decode again.
    monkeypatch.setattr(data, "CIFAR10_URL", (archive.parent / "gone.tar.gz").as_uri())
    forbid_decoding(monkeypatch)
    assert_matches(data.load_cifar10(), expected)
    assert_matches(data.load_cifar10(download=False), expected)


def test_download_checksum_mismatch_keeps_nothing(monkeypatch, cache_dir, official_archive):
    archive, _ = official_archive
    point_download_at(monkeypatch, archive, "0" * 32)
    with pytest.raises(RuntimeError, match="checksum mismatch") as error:
        data.load_cifar10()
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message and archive.as_uri() in message
    assert "0" * 32 in message and md5_of(archive) in message
    assert list(cache_dir.iterdir()) == []


def test_download_failure_says_what_to_pass(monkeypatch, cache_dir, tmp_path):
    missing = tmp_path / "nowhere" / "cifar-10-python.tar.gz"
    point_download_at(monkeypatch, missing, "0" * 32)
    with pytest.raises(RuntimeError, match="could not download") as error:
        data.load_cifar10()
    message = str(error.value)
    assert missing.as_uri() in message and str(cache_dir) in message
    assert "data_dir=" in message and "--data-dir" in message and "train/<class>" in message
    assert not [p for p in cache_dir.iterdir()]


def test_no_download_and_no_data(cache_dir):
    with pytest.raises(FileNotFoundError, match="download=False") as error:
        data.load_cifar10(download=False)
    assert str(cache_dir) in str(error.value) and "--data-dir" in str(error.value)


def test_data_dir_does_not_trigger_a_download(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_download_cifar10", lambda *a: pytest.fail("downloaded"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="found no CIFAR-10 data in .*empty") as error:
        data.load_cifar10(tmp_path / "empty")
    assert "--data-dir" in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        data.load_cifar10(tmp_path / "typo")
    assert str(tmp_path / "typo") in str(error.value)


# --------------------------------------------------------------------------------------------
# Bad data: each error names the offending file and says what to do
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_fraction", [0.5, 0.95])
def test_truncated_archive(tmp_path, official_archive, keep_fraction):
    archive, _ = official_archive
    truncated = tmp_path / "truncated.tar.gz"
    content = archive.read_bytes()
    truncated.write_bytes(content[: int(len(content) * keep_fraction)])
    with pytest.raises(ValueError, match="truncated, corrupt") as error:
        data.load_cifar10(truncated)
    assert str(truncated) in str(error.value)


def test_not_a_tar_archive(tmp_path):
    bogus = tmp_path / "cifar.tar.gz"
    bogus.write_text("this is not an archive")
    with pytest.raises(ValueError, match="not a tar archive") as error:
        data.load_cifar10(bogus)
    assert str(bogus) in str(error.value)


def test_archive_without_cifar_layout(tmp_path):
    (tmp_path / "stuff" / "images").mkdir(parents=True)
    Image.fromarray(random_images(1, 0)[0]).save(tmp_path / "stuff" / "images" / "a.png")
    archive = make_tar(tmp_path / "stuff.tar.gz", tmp_path / "stuff")
    with pytest.raises(ValueError, match="does not hold CIFAR-10 in a known layout") as error:
        data.load_cifar10(archive)
    assert str(archive) in str(error.value) and "train/<class>" in str(error.value)


@pytest.mark.parametrize("archived", [False, True])
def test_wrong_image_size(tmp_path, png_folder, archived):
    root, _ = png_folder
    Image.fromarray(np.zeros((32, 31, 3), np.uint8)).save(root / "test" / "cat" / "1.png")
    data_dir = make_tar(tmp_path / "bad.tar.gz", root) if archived else root
    with pytest.raises(ValueError, match=r"31x32 pixels; CIFAR-10 images must be 32x32") as error:
        data.load_cifar10(data_dir)
    assert ("test/cat/1.png in " if archived else str(root / "test" / "cat" / "1.png")) in str(
        error.value
    )


def test_corrupt_image(png_folder):
    root, _ = png_folder
    (root / "train" / "dog" / "0.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="could not decode the image") as error:
        data.load_cifar10(root)
    assert str(root / "train" / "dog" / "0.png") in str(error.value)


def test_unknown_class_folder(png_folder):
    root, _ = png_folder
    for split in ("train", "test"):
        (root / split / "airplane").rename(root / split / "airplanes")
    with pytest.raises(ValueError, match=r"unknown class folder\(s\) \['airplanes'\]") as error:
        data.load_cifar10(root)
    assert str(root / "train") in str(error.value)


def test_train_and_test_classes_differ(tmp_path):
    root = tmp_path / "pets"
    write_image_folder(root, ("cat", "dog", "emu"))
    shutil.rmtree(root / "test" / "emu")
    with pytest.raises(ValueError, match=r"only in train: \['emu'\], only in test: \[\]") as error:
        data.load_cifar10(root)
    assert str(root) in str(error.value)


@pytest.mark.parametrize("how", ["no test folder", "class folders without images"])
def test_empty_split(png_folder, how):
    root, _ = png_folder
    if how == "no test folder":
        shutil.rmtree(root / "test")
    else:
        for image in (root / "test").rglob("*.png"):
            image.unlink()
    with pytest.raises(ValueError, match="empty test split") as error:
        data.load_cifar10(root)
    assert str(root) in str(error.value)


def test_image_outside_a_class_folder(png_folder):
    root, _ = png_folder
    Image.fromarray(random_images(1, 0)[0]).save(root / "train" / "stray.png")
    with pytest.raises(ValueError, match="not directly inside a class folder") as error:
        data.load_cifar10(root)
    assert str(root / "train" / "stray.png") in str(error.value)


def test_labels_out_of_range(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle_batches(folder, labels_override={"data_batch_3": [0, 10, 1]})
    with pytest.raises(ValueError, match="label 10 is out of range for 10 classes") as error:
        data.load_cifar10(folder)
    assert str(folder / "data_batch_3") in str(error.value)


def test_missing_batch(tmp_path):
    folder = tmp_path / "build" / "cifar-10-batches-py"
    write_pickle_batches(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete") as error:
        data.load_cifar10(folder)
    assert str(folder / "data_batch_4") in str(error.value)

    archive = make_tar(tmp_path / "partial.tar.gz", tmp_path / "build")
    with pytest.raises(ValueError, match="has no member cifar-10-batches-py/data_batch_4"):
        data.load_cifar10(archive)


def test_batch_with_wrong_row_size(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle_batches(folder)
    batch = {b"data": np.zeros((3, 3000), np.uint8), b"labels": [0, 1, 2]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    message = r"shape \(rows, 3072\), got uint8 array of shape \(3, 3000\)"
    with pytest.raises(ValueError, match=message) as error:
        data.load_cifar10(folder)
    assert str(folder / "test_batch") in str(error.value)


class _Malicious:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_batches_cannot_run_code(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    write_pickle_batches(folder)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Malicious()}))
    with pytest.raises(ValueError, match="refusing to load builtins.print") as error:
        data.load_cifar10(folder)
    assert str(folder / "data_batch_1") in str(error.value)
    assert "must never run" not in capsys.readouterr().out


def test_several_archives_are_ambiguous(tmp_path, png_folder):
    root, _ = png_folder
    make_tar(tmp_path / "holder" / "one.tar.gz", root)
    make_tar(tmp_path / "holder" / "two.tgz", root)
    with pytest.raises(ValueError, match="several archives") as error:
        data.load_cifar10(tmp_path / "holder")
    assert "one.tar.gz" in str(error.value) and "two.tgz" in str(error.value)


def test_official_archive_preferred_over_other_archives(tmp_path, official_archive, png_folder):
    archive, expected = official_archive
    make_tar(archive.parent / "pngs.tar.gz", png_folder[0])
    assert_matches(data.load_cifar10(archive.parent), expected)


def test_images_need_pillow(monkeypatch, png_folder):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'pip install "jaxsep\[images\]"'):
        data.load_cifar10(png_folder[0])


def test_load_argument_validation(tmp_path):
    with pytest.raises(TypeError, match="data_dir must be a str, a path or None, got int"):
        data.load_cifar10(42)
    with pytest.raises(TypeError, match="download must be a bool"):
        data.load_cifar10(tmp_path, download="yes")


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def tiny_dataset(**changes) -> data.Dataset:
    fields = dict(
        train_images=np.zeros((4, 32, 32, 3), np.uint8),
        train_labels=np.array([0, 1, 2, 1], np.int32),
        test_images=np.zeros((2, 32, 32, 3), np.uint8),
        test_labels=np.array([2, 0], np.int32),
        class_names=("a", "b", "c"),
        name="tiny",
    )
    fields.update(changes)
    return data.Dataset(**fields)


def test_dataset_basics():
    dataset = tiny_dataset(class_names=["a", "b", "c"])
    assert dataset.class_names == ("a", "b", "c") and dataset.num_classes == 3
    assert (dataset.num_train, dataset.num_test) == (4, 2)
    assert "tiny" in repr(dataset) and "train=4" in repr(dataset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset.name = "other"


@pytest.mark.parametrize(
    "changes, error, message",
    [
        (
            dict(train_images=np.zeros((4, 32, 32, 3), np.float32)),
            TypeError,
            "train_images must have dtype uint8, got float32",
        ),
        (
            dict(test_images=np.zeros((2, 32, 32), np.uint8)),
            ValueError,
            r"test_images must have shape \(N, H, W, 3\)",
        ),
        (
            dict(train_labels=np.array([0, 1, 2, 1])),
            TypeError,
            "train_labels must have dtype int32, got int64",
        ),
        (
            dict(train_labels=np.array([0, 1, 2], np.int32)),
            ValueError,
            r"train_labels must have shape \(4,\)",
        ),
        (
            dict(test_labels=np.array([3, 0], np.int32)),
            ValueError,
            r"test_labels must lie in \[0, 3\) for 3 classes, found label 3",
        ),
        (dict(train_labels=np.array([0, -1, 2, 1], np.int32)), ValueError, "found label -1"),
        (
            dict(test_images=np.zeros((0, 32, 32, 3), np.uint8), test_labels=np.zeros(0, np.int32)),
            ValueError,
            "test split is empty",
        ),
        (
            dict(test_images=np.zeros((2, 16, 16, 3), np.uint8)),
            ValueError,
            "train and test images must share",
        ),
        (dict(class_names=("a", "b", "a")), ValueError, r"duplicates \['a'\]"),
        (dict(class_names="abc"), TypeError, "class_names must be a tuple of str"),
        (
            dict(train_images=jnp.zeros((4, 32, 32, 3), jnp.uint8)),
            TypeError,
            "train_images must be a NumPy array",
        ),
        (dict(name=""), TypeError, "name must be a non-empty str"),
    ],
)
def test_dataset_validation(changes, error, message):
    with pytest.raises(error, match=message):
        tiny_dataset(**changes)


# --------------------------------------------------------------------------------------------
# Synthetic data, subset, permutations, batch counts
# --------------------------------------------------------------------------------------------


def test_synthetic_shapes_determinism_and_balance():
    dataset = data.synthetic_cifar10()
    assert dataset.train_images.shape == (512, 32, 32, 3) and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (128, 32, 32, 3) and dataset.test_labels.dtype == np.int32
    assert dataset.name == "synthetic" and dataset.num_classes == 10
    counts = np.bincount(dataset.train_labels)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 512
    again = data.synthetic_cifar10()
    np.testing.assert_array_equal(again.train_images, dataset.train_images)
    np.testing.assert_array_equal(again.test_labels, dataset.test_labels)
    other = data.synthetic_cifar10(seed=1)
    assert not np.array_equal(other.train_images, dataset.train_images)

    small = data.synthetic_cifar10(7, 5, num_classes=3, seed=2)
    assert small.class_names == ("class_0", "class_1", "class_2")
    assert (small.num_train, small.num_test) == (7, 5)


def test_synthetic_is_learnable():
    dataset = data.synthetic_cifar10(num_classes=10)
    train = dataset.train_images.reshape(dataset.num_train, -1).astype(np.float32)
    test = dataset.test_images.reshape(dataset.num_test, -1).astype(np.float32)
    centroids = np.stack([train[dataset.train_labels == k].mean(0) for k in range(10)])
    distances = ((test[:, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == dataset.test_labels).mean()
    assert accuracy > 0.95
    # ...but not trivially: single examples differ from their class pattern.
    assert train[dataset.train_labels == 0].std(0).mean() > 10


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_train=0), ValueError, "num_train must be >= 1, got 0"),
        (dict(num_test=1.5), TypeError, "num_test must be an int, got float 1.5"),
        (dict(num_classes=1), ValueError, "num_classes must be >= 2, got 1"),
        (dict(seed=-1), ValueError, "seed must be >= 0, got -1"),
    ],
)
def test_synthetic_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        data.synthetic_cifar10(**kwargs)


def test_subset_is_seeded_and_fixed():
    dataset = data.synthetic_cifar10()
    first = data.subset(dataset, max_train=100, max_test=20, seed=3)
    again = data.subset(dataset, max_train=100, max_test=20, seed=3)
    other = data.subset(dataset, max_train=100, max_test=20, seed=4)
    assert (first.num_train, first.num_test) == (100, 20)
    np.testing.assert_array_equal(first.train_images, again.train_images)
    np.testing.assert_array_equal(first.test_labels, again.test_labels)
    assert not np.array_equal(first.train_images, other.train_images)
    assert first.class_names == dataset.class_names
    assert first.name == "synthetic [subset 100/20]"
    # Every kept example is an original example with its own label.
    flat = dataset.train_images.reshape(dataset.num_train, -1)
    for image, label in zip(first.train_images[:10], first.train_labels[:10]):
        (index,) = np.flatnonzero((flat == image.reshape(-1)).all(1))
        assert dataset.train_labels[index] == label

    assert data.subset(dataset) is dataset
    assert data.subset(dataset, max_train=10_000) is dataset
    only_train = data.subset(dataset, max_train=10)
    assert (only_train.num_train, only_train.num_test) == (10, 128)


def test_subset_validation():
    dataset = data.synthetic_cifar10(8, 8)
    with pytest.raises(TypeError, match="dataset must be a Dataset, got dict"):
        data.subset({}, max_train=1)
    with pytest.raises(ValueError, match="max_train must be >= 1, got 0"):
        data.subset(dataset, max_train=0)
    with pytest.raises(TypeError, match="max_test must be an int, got str"):
        data.subset(dataset, max_test="5")


def test_epoch_permutation():
    first = data.epoch_permutation(1000, seed=1, epoch=2)
    assert first.shape == (1000,) and first.dtype == np.int64
    np.testing.assert_array_equal(np.sort(first), np.arange(1000))
    np.testing.assert_array_equal(first, data.epoch_permutation(1000, seed=1, epoch=2))
    assert not np.array_equal(first, data.epoch_permutation(1000, seed=1, epoch=3))
    assert not np.array_equal(first, data.epoch_permutation(1000, seed=2, epoch=2))
    reference = np.random.default_rng(np.random.SeedSequence([1, 2])).permutation(1000)
    np.testing.assert_array_equal(first, reference)
    assert data.epoch_permutation(0, seed=0, epoch=0).shape == (0,)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        data.epoch_permutation(10, seed=0, epoch=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        data.epoch_permutation(10, seed=None, epoch=0)


def test_num_batches():
    assert data.num_batches(10, 3) == 3
    assert data.num_batches(10, 3, drop_remainder=False) == 4
    assert data.num_batches(9, 3) == data.num_batches(9, 3, drop_remainder=False) == 3
    assert data.num_batches(2, 3) == 0
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        data.num_batches(10, 0)
    with pytest.raises(TypeError, match="drop_remainder must be a bool"):
        data.num_batches(10, 2, 1)


# --------------------------------------------------------------------------------------------
# JAX preprocessing
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return random_images(32, seed=7)


def find_window(padded: np.ndarray, crop: np.ndarray, *, allow_flip: bool):
    """(dy, dx, flipped) such that crop is that (flipped) window of padded, else None."""
    size = crop.shape[0]
    for flipped in (False, True) if allow_flip else (False,):
        target = crop[:, ::-1] if flipped else crop
        for dy in range(padded.shape[0] - size + 1):
            for dx in range(padded.shape[1] - size + 1):
                if np.array_equal(padded[dy : dy + size, dx : dx + size], target):
                    return dy, dx, flipped
    return None


def test_augment_shape_dtype_and_determinism(batch):
    key = data.batch_key(0, 0, 0)
    out = data.augment(batch, key)
    assert out.shape == batch.shape and out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, data.augment(batch, key))
    np.testing.assert_array_equal(out, data.augment(jnp.asarray(batch), data.batch_key(0, 0, 0)))
    assert not np.array_equal(out, data.augment(batch, data.batch_key(0, 0, 1)))
    assert not np.array_equal(out, data.augment(batch, data.batch_key(0, 1, 0)))


def test_augment_crops_are_shifted_windows_of_the_zero_padded_image(batch):
    out = np.asarray(data.augment(batch, jax.random.key(1), pad=4, flip=False))
    padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = set()
    for image, crop in zip(padded, out):
        window = find_window(image, crop, allow_flip=False)
        assert window is not None
        offsets.add(window[:2])
    assert len(offsets) > 5  # per-example offsets, not one for the whole batch


def test_augment_flips_per_example(batch):
    out = np.asarray(data.augment(batch, jax.random.key(2), pad=0, flip=True))
    flipped = [np.array_equal(o, b[:, ::-1]) for o, b in zip(out, batch)]
    kept = [np.array_equal(o, b) for o, b in zip(out, batch)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < len(batch)
    np.testing.assert_array_equal(data.augment(batch, jax.random.key(2), pad=0, flip=False), batch)


def test_augment_crop_and_flip_together_under_jit(batch):
    @jax.jit
    def step(images, step_index):
        return data.augment(images, data.batch_key(5, 1, step_index))

    out = np.asarray(step(batch, jnp.int32(3)))
    np.testing.assert_array_equal(out, data.augment(batch, data.batch_key(5, 1, 3)))
    padded = np.pad(batch, ((0, 0), (4, 4), (4, 4), (0, 0)))
    windows = [find_window(p, o, allow_flip=True) for p, o in zip(padded[:8], out[:8])]
    assert all(window is not None for window in windows)


def test_augment_accepts_legacy_keys(batch):
    out = data.augment(batch[:4], jax.random.PRNGKey(0))
    assert out.shape == (4, 32, 32, 3)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        (
            (np.zeros((2, 32, 32, 3), np.float32), jax.random.key(0)),
            {},
            TypeError,
            "images_u8 must have dtype uint8, got float32",
        ),
        (
            (np.zeros((32, 32, 3), np.uint8), jax.random.key(0)),
            {},
            ValueError,
            r"4-D NHWC batch .* got shape \(32, 32, 3\)",
        ),
        (([[1]], jax.random.key(0)), {}, TypeError, "images_u8 must be a NumPy or JAX array"),
        ((np.zeros((2, 8, 8, 3), np.uint8), 0), {}, TypeError, "key must be a JAX PRNG key"),
        (
            (np.zeros((2, 8, 8, 3), np.uint8), jax.random.split(jax.random.key(0))),
            {},
            ValueError,
            "single PRNG key",
        ),
        (
            (np.zeros((2, 8, 8, 3), np.uint8), jax.random.key(0)),
            dict(pad=-1),
            ValueError,
            "pad must be >= 0, got -1",
        ),
        (
            (np.zeros((2, 8, 8, 3), np.uint8), jax.random.key(0)),
            dict(flip="no"),
            TypeError,
            "flip must be a bool",
        ),
    ],
)
def test_augment_validation(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        data.augment(*args, **kwargs)


def cutout_squares(before: np.ndarray, after: np.ndarray) -> list[tuple[range, range]]:
    """Per example, the rows and columns that Cutout zeroed (asserting that it zeroed one
    axis-aligned rectangle, the same in every channel, and changed nothing else)."""
    squares = []
    for b, a in zip(before, after):
        changed = np.any(a != b, axis=-1)
        np.testing.assert_array_equal(a[changed], 0)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        rows, cols = range(rows[0], rows[-1] + 1), range(cols[0], cols[-1] + 1)
        expected = np.zeros_like(changed)
        expected[rows.start : rows.stop, cols.start : cols.stop] = True
        np.testing.assert_array_equal(changed, expected)
        squares.append((rows, cols))
    return squares


def test_cutout_zeroes_one_clipped_square_per_example():
    images = jax.random.uniform(jax.random.key(0), (256, 12, 10, 3), minval=1.0, maxval=2.0)
    out = data.cutout(images, jax.random.key(1), size=4)
    assert out.shape == images.shape and out.dtype == images.dtype
    squares = cutout_squares(np.asarray(images), np.asarray(out))
    for rows, cols in squares:
        # Side 4, less where the square is clipped at a border (it then touches that border).
        for span, size in ((rows, 12), (cols, 10)):
            assert 1 <= len(span) <= 4
            assert len(span) == 4 or span.start == 0 or span.stop == size
    # Centres anywhere in the image: squares are clipped at all four borders, and every pixel
    # is covered by some square.
    assert {r.start for r, _ in squares} >= {0} and {r.stop for r, _ in squares} >= {12}
    assert {c.start for _, c in squares} >= {0} and {c.stop for _, c in squares} >= {10}
    assert len({(r.start, c.start) for r, c in squares}) > 40  # per example, not per batch
    covered = np.zeros((12, 10), bool)
    for rows, cols in squares:
        covered[rows.start : rows.stop, cols.start : cols.stop] = True
    assert covered.all()


def test_cutout_centre_is_uniform_and_odd_sizes_are_exact():
    images = np.ones((4000, 4, 4, 1), np.float32)
    # size 1 zeroes exactly the centre pixel: 4000 draws over 16 pixels, 250 expected each
    # (binomial standard deviation 15.3; the bounds are 6 of them).
    out = np.asarray(data.cutout(images, jax.random.key(2), size=1))
    counts = (out[..., 0] == 0).sum(axis=0)
    assert (out[..., 0] == 0).sum(axis=(1, 2)).tolist() == [1] * 4000
    assert counts.min() > 250 - 92 and counts.max() < 250 + 92, counts
    # An odd side is exact: 3 x 3 wherever the centre is at least one pixel from the border.
    squares = cutout_squares(np.ones((200, 9, 9, 1)), np.asarray(
        data.cutout(np.ones((200, 9, 9, 1), np.float32), jax.random.key(3), size=3)))
    assert {len(r) for r, _ in squares} == {2, 3}  # 2: centre on the first or last row


def test_cutout_edge_cases_determinism_and_jit(batch):
    key = data.batch_key(0, 0, 0)
    np.testing.assert_array_equal(data.cutout(batch, key, size=0), batch)
    # A square twice the image covers it from any centre.
    np.testing.assert_array_equal(data.cutout(batch, key, size=64), np.zeros_like(batch))
    out = data.cutout(batch, key, size=16)
    assert out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, data.cutout(batch, data.batch_key(0, 0, 0), size=16))
    assert not np.array_equal(out, data.cutout(batch, data.batch_key(0, 0, 1), size=16))
    jitted = jax.jit(lambda images, step: data.cutout(images, data.batch_key(0, 0, step), size=16))
    np.testing.assert_array_equal(jitted(batch, jnp.int32(0)), out)
    half = data.cutout(jnp.ones((2, 8, 8, 3), jnp.bfloat16), jax.random.key(0), size=4)
    assert half.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((np.zeros((32, 32, 3)), jax.random.key(0)), dict(size=4), ValueError, "4-D NHWC"),
        ((np.zeros((2, 8, 8, 3)), 0), dict(size=4), TypeError, "key must be a JAX PRNG key"),
        ((np.zeros((2, 8, 8, 3)), jax.random.key(0)), dict(size=-1), ValueError,
         "size must be >= 0, got -1"),
        ((np.zeros((2, 8, 8, 3)), jax.random.key(0)), dict(size=4.0), TypeError,
         "size must be an int, got float 4.0"),
    ],
)
def test_cutout_validation(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        data.cutout(*args, **kwargs)


def test_normalize(batch):
    out = data.normalize(batch)
    assert out.shape == batch.shape and out.dtype == jnp.float32
    mean, std = np.array(data.CIFAR10_MEAN), np.array(data.CIFAR10_STD)
    np.testing.assert_allclose(out, (batch / 255.0 - mean) / std, atol=1e-5)
    assert data.normalize(batch, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    np.testing.assert_allclose(
        data.normalize(batch, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        batch / 127.5 - 1,
        atol=1e-5,
    )
    np.testing.assert_allclose(jax.jit(data.normalize)(batch), out, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            dict(images_u8=np.zeros((1, 2, 2, 3), np.float32)),
            TypeError,
            "images_u8 must have dtype uint8",
        ),
        (
            dict(mean=(0.5, 0.5)),
            ValueError,
            r"mean must have one value per channel, i.e. shape \(3,\), got shape \(2,\)",
        ),
        (dict(std=(0.5, 0.0, 0.5)), ValueError, "std must be positive"),
        (dict(dtype=jnp.int32), TypeError, "dtype must be a floating dtype, got int32"),
    ],
)
def test_normalize_validation(kwargs, error, message):
    kwargs.setdefault("images_u8", np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(error, match=message):
        data.normalize(**kwargs)


def test_batch_key():
    key = data.batch_key(1, 2, 3)
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()
    reference = jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 2), 3)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(reference))
    argument_sets = [(1, 2, 3), (1, 2, 4), (1, 3, 3), (2, 2, 3)]
    distinct = {
        tuple(np.asarray(jax.random.key_data(data.batch_key(*args)))) for args in argument_sets
    }
    assert len(distinct) == 4
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        data.batch_key(0, 0, -1)
    with pytest.raises(TypeError, match="epoch must be an int or an integer scalar array"):
        data.batch_key(0, 1.0, 0)
    with pytest.raises(TypeError, match="seed must be an int, got bool"):
        data.batch_key(True, 0, 0)


def test_resize(batch):
    small = data.resize(batch[:4], 16)
    assert small.shape == (4, 16, 16, 3) and small.dtype == jnp.uint8
    constant = np.full((2, 32, 32, 3), 77, np.uint8)
    np.testing.assert_array_equal(data.resize(constant, 20), np.full((2, 20, 20, 3), 77))
    large = data.resize(batch[:4].astype(np.float32) / 255, 48)
    assert large.shape == (4, 48, 48, 3) and large.dtype == jnp.float32
    assert data.resize(jnp.asarray(batch[:2], jnp.bfloat16), 24).dtype == jnp.bfloat16
    np.testing.assert_array_equal(data.resize(batch[:2], 32), batch[:2])
    # Bilinear + antialias shrinking by 2 averages neighbouring pixels.
    expected = batch[:4].astype(np.float32).reshape(4, 16, 2, 16, 2, 3).mean((2, 4))
    assert np.abs(np.asarray(small, np.float32) - expected).mean() < 20


def test_resize_validation(batch):
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        data.resize(batch, 0)
    with pytest.raises(TypeError, match="must have dtype uint8 or a floating dtype, got int32"):
        data.resize(batch.astype(np.int32), 16)
    with pytest.raises(ValueError, match="4-D NHWC"):
        data.resize(batch[0], 16)


# --------------------------------------------------------------------------------------------
# Real data (opt-in)
# --------------------------------------------------------------------------------------------


def test_real_cifar10(monkeypatch):
    path = os.environ.get("JAXSEP_CIFAR10")
    if not path:
        pytest.skip("set JAXSEP_CIFAR10 to a CIFAR-10 copy (any form load_cifar10 accepts) to run")
    if _USER_DATA_DIR:  # keep the user's cache, so only the first run pays for decoding
        monkeypatch.setenv("JAXSEP_DATA_DIR", _USER_DATA_DIR)
    dataset = data.load_cifar10(path)
    assert dataset.train_images.shape == (50_000, 32, 32, 3)
    assert dataset.test_images.shape == (10_000, 32, 32, 3)
    assert dataset.class_names == data.CIFAR10_CLASSES and dataset.num_classes == 10
    train_counts = np.bincount(dataset.train_labels, minlength=10)
    np.testing.assert_array_equal(train_counts, np.full(10, 5000))
    np.testing.assert_array_equal(np.bincount(dataset.test_labels, minlength=10), np.full(10, 1000))
    # The train split's per-channel mean matches CIFAR10_MEAN (to JPEG re-encoding accuracy).
    mean = dataset.train_images[::10].reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, data.CIFAR10_MEAN, atol=0.005)
