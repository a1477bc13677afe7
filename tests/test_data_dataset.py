"""Tests for the Dataset container (jaxsep.data.dataset): its properties and field checks."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsep import data


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
            "Dataset: train_images must have dtype uint8, but got float32",
        ),
        (
            dict(test_images=np.zeros((2, 32, 32), np.uint8)),
            ValueError,
            r"test_images must have shape \(N, H, W, 3\)",
        ),
        (
            dict(train_labels=np.array([0, 1, 2, 1])),
            TypeError,
            "Dataset: train_labels must have dtype int32, but got int64",
        ),
        (
            dict(train_labels=np.array([0, 1, 2], np.int32)),
            ValueError,
            r"train_labels must have shape \(4,\)",
        ),
        (
            dict(test_labels=np.array([3, 0], np.int32)),
            ValueError,
            r"Dataset: test_labels must lie in \[0, 3\) for 3 classes, but found label 3",
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
