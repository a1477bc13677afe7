"""The ``Dataset`` container and CIFAR-10's constants (class names, URL, checksum, statistics)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxsep._validation import fail

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
_SPLITS = ("train", "test")

_WHERE = "Dataset"


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
            fail(_WHERE, "class_names", "a tuple of str", class_names, TypeError)
        class_names = tuple(class_names)
        object.__setattr__(self, "class_names", class_names)
        if not class_names:
            raise ValueError(f"{_WHERE}: class_names must name at least one class, but got ()")
        for class_name in class_names:
            if not isinstance(class_name, str) or not class_name:
                fail(_WHERE, "class_names", "non-empty str", class_name, TypeError)
        if len(set(class_names)) != len(class_names):
            duplicates = sorted({c for c in class_names if class_names.count(c) > 1})
            raise ValueError(
                f"{_WHERE}: class_names must be unique, but got duplicates {duplicates}"
            )
        if not isinstance(self.name, str) or not self.name:
            fail(_WHERE, "name", "a non-empty str", self.name, TypeError)

        for split in _SPLITS:
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            for field, array in ((f"{split}_images", images), (f"{split}_labels", labels)):
                if not isinstance(array, np.ndarray):
                    raise TypeError(
                        f"{_WHERE}: {field} must be a NumPy array, but got "
                        f"{type(array).__name__}"
                    )
            if images.dtype != np.uint8:
                raise TypeError(
                    f"{_WHERE}: {split}_images must have dtype uint8, but got {images.dtype}"
                )
            if images.ndim != 4 or images.shape[-1] != NUM_CHANNELS:
                raise ValueError(
                    f"{_WHERE}: {split}_images must have shape (N, H, W, 3), but got shape "
                    f"{images.shape}"
                )
            if labels.dtype != np.int32:
                raise TypeError(
                    f"{_WHERE}: {split}_labels must have dtype int32, but got {labels.dtype}"
                )
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{_WHERE}: {split}_labels must have shape ({images.shape[0]},) to match "
                    f"{split}_images {images.shape}, but got shape {labels.shape}"
                )
            if images.shape[0] == 0:
                raise ValueError(
                    f"{_WHERE}: the {split} split is empty: {split}_images has 0 examples"
                )
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= len(class_names):
                bad = low if low < 0 else high
                raise ValueError(
                    f"{_WHERE}: {split}_labels must lie in [0, {len(class_names)}) for "
                    f"{len(class_names)} classes, but found label {bad}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{_WHERE}: train and test images must share (H, W, C), but got "
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
