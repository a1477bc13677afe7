"""Tests for finding CIFAR-10 (jaxsep.data.sources): every place and container a copy may be in
(a folder, a wrapping folder, tar archives, a folder holding an archive), which candidate wins,
and what a broken or unknown archive says."""

from __future__ import annotations

import shutil

import pytest

from data_builders import (  # noqa: F401  (cache_dir: autouse)
    assert_matches,
    cache_dir,
    make_tar,
    official_archive,
    png_folder,
    random_images,
    write_pickle_batches,
)
from jaxsep import data

Image = pytest.importorskip("PIL.Image")


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
