"""Tests for the host-side helpers (jaxsep.data.synthetic): synthetic data, subsets, epoch
permutations and batch counts."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsep import data


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
        (dict(num_train=0), ValueError, "synthetic_cifar10: num_train must be >= 1, but got 0"),
        (dict(num_test=1.5), TypeError, "synthetic_cifar10: num_test must be an int, but got float 1.5"),
        (dict(num_classes=1), ValueError, "synthetic_cifar10: num_classes must be >= 2, but got 1"),
        (dict(seed=-1), ValueError, "synthetic_cifar10: seed must be >= 0, but got -1"),
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
    with pytest.raises(TypeError, match="subset: dataset must be a Dataset, but got dict"):
        data.subset({}, max_train=1)
    with pytest.raises(ValueError, match="subset: max_train must be >= 1, but got 0"):
        data.subset(dataset, max_train=0)
    with pytest.raises(TypeError, match="subset: max_test must be an int, but got str"):
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
    with pytest.raises(ValueError, match="epoch_permutation: epoch must be >= 0, but got -1"):
        data.epoch_permutation(10, seed=0, epoch=-1)
    with pytest.raises(TypeError, match="epoch_permutation: seed must be an int"):
        data.epoch_permutation(10, seed=None, epoch=0)


def test_num_batches():
    assert data.num_batches(10, 3) == 3
    assert data.num_batches(10, 3, drop_remainder=False) == 4
    assert data.num_batches(9, 3) == data.num_batches(9, 3, drop_remainder=False) == 3
    assert data.num_batches(2, 3) == 0
    with pytest.raises(ValueError, match="num_batches: batch_size must be >= 1, but got 0"):
        data.num_batches(10, 0)
    with pytest.raises(TypeError, match="num_batches: drop_remainder must be a bool"):
        data.num_batches(10, 2, 1)
