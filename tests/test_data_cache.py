"""Tests for the decoded-array cache (jaxsep.data.cache): a second load reads it, each source has
its own entry, editing a source invalidates it, and an unreadable entry is rewritten."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from data_builders import (  # noqa: F401  (cache_dir: autouse)
    assert_matches,
    cache_dir,
    forbid_decoding,
    make_tar,
    png_folder,
    write_image_folder,
)
from jaxsep import data
from jaxsep.data.cache import _read_cache

Image = pytest.importorskip("PIL.Image")


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
    assert_matches(_read_cache(cache_file), expected)
