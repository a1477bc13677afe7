"""Tests for decoding (jaxsep.data.decode): pickle batches and image folders round-trip, class
names and their order, and each error for bad data names the offending file and says what to
do."""

from __future__ import annotations

import pickle
import shutil
import sys

import numpy as np
import pytest

from data_builders import (  # noqa: F401  (cache_dir: autouse)
    assert_matches,
    cache_dir,
    make_tar,
    png_folder,
    random_images,
    write_image_folder,
    write_pickle_batches,
)
from jaxsep import data

Image = pytest.importorskip("PIL.Image")


def test_pickle_class_names_come_from_batches_meta(tmp_path):
    names = tuple(f"thing{i}" for i in range(10))
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_pickle_batches(folder, meta_names=names)
    dataset = data.load_cifar10(folder)
    assert_matches(dataset, expected)
    assert dataset.class_names == names and dataset.name != "cifar10"


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


def test_images_need_pillow(monkeypatch, png_folder):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'pip install "jaxsep\[images\]"'):
        data.load_cifar10(png_folder[0])
