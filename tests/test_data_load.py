"""Tests for load_cifar10 itself (jaxsep.data.load): its arguments, when it may download, and the
opt-in test on real data.

Set JAXSEP_CIFAR10 to a real CIFAR-10 copy to also run test_real_cifar10 (decoding it the
first time takes ~10-20 s; set JAXSEP_DATA_DIR to keep the cache between runs).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from data_builders import cache_dir  # noqa: F401  (autouse)
from jaxsep import data
from jaxsep.data import load as data_load

# Captured before the autouse fixture replaces it, for the opt-in real-data test.
_USER_DATA_DIR = os.environ.get("JAXSEP_DATA_DIR")


def test_no_download_and_no_data(cache_dir):
    with pytest.raises(FileNotFoundError, match="download=False") as error:
        data.load_cifar10(download=False)
    assert isinstance(error.value, data.DataUnavailableError)
    assert str(cache_dir) in str(error.value) and "--data-dir" in str(error.value)


def test_data_dir_does_not_trigger_a_download(monkeypatch, tmp_path):
    monkeypatch.setattr(data_load, "_download_cifar10", lambda *a: pytest.fail("downloaded"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="found no CIFAR-10 data in .*empty") as error:
        data.load_cifar10(tmp_path / "empty")
    assert "--data-dir" in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        data.load_cifar10(tmp_path / "typo")
    assert str(tmp_path / "typo") in str(error.value)


def test_load_argument_validation(tmp_path):
    with pytest.raises(TypeError, match="load_cifar10: data_dir must be a str, a path or None, but got 42"):
        data.load_cifar10(42)
    with pytest.raises(TypeError, match="load_cifar10: download must be a bool"):
        data.load_cifar10(tmp_path, download="yes")


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
