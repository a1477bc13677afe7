"""Host-side (NumPy) helpers: a synthetic stand-in for CIFAR-10, fixed random subsets, the
per-epoch example order and the number of batches. All deterministic from their arguments."""

from __future__ import annotations

import numpy as np

from jaxsep._validation import check_bool, check_int, check_optional_int
from jaxsep.data.dataset import IMAGE_SIZE, NUM_CHANNELS, Dataset

def _linear_upsampling_matrix(coarse: int, fine: int) -> np.ndarray:
    """(fine, coarse) matrix that linearly interpolates ``coarse`` samples to ``fine``."""
    positions = np.clip((np.arange(fine) + 0.5) * coarse / fine - 0.5, 0, coarse - 1)
    lower = np.floor(positions).astype(int)
    upper = np.minimum(lower + 1, coarse - 1)
    fraction = positions - lower
    matrix = np.zeros((fine, coarse))
    matrix[np.arange(fine), lower] += 1 - fraction
    matrix[np.arange(fine), upper] += fraction
    return matrix


def synthetic_cifar10(
    num_train: int = 512, num_test: int = 128, *, num_classes: int = 10, seed: int = 0
) -> Dataset:
    """A small, deterministic, learnable stand-in for CIFAR-10.

    Each class has its own fixed random low-frequency colour pattern (a 4x4 grid of random
    colours, smoothly interpolated to 32x32); each example is its class pattern plus Gaussian
    pixel noise, so a small model can learn (or overfit) it quickly. Labels are balanced
    (counts differ by at most one) and shuffled.

    Returns:
      A Dataset named "synthetic": train_images uint8 (num_train, 32, 32, 3), train_labels
      int32 (num_train,), test_images uint8 (num_test, 32, 32, 3), test_labels int32
      (num_test,), class_names ("class_0", ...). Same arguments give the same arrays.
    """
    num_train = check_int("synthetic_cifar10", "num_train", num_train, minimum=1)
    num_test = check_int("synthetic_cifar10", "num_test", num_test, minimum=1)
    num_classes = check_int("synthetic_cifar10", "num_classes", num_classes, minimum=2)
    seed = check_int("synthetic_cifar10", "seed", seed, minimum=0)

    pattern_rng, train_rng, test_rng = (
        np.random.default_rng(np.random.SeedSequence([seed, stream])) for stream in range(3)
    )
    coarse_grid = 4
    coarse = pattern_rng.uniform(0.0, 255.0, size=(num_classes, coarse_grid, coarse_grid, 3))
    upsample = _linear_upsampling_matrix(coarse_grid, IMAGE_SIZE)
    patterns = np.einsum("hi,wj,kijc->khwc", upsample, upsample, coarse).astype(np.float32)
    noise_std = 32.0

    def make_split(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(count) % num_classes).astype(np.int32)
        images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS), np.uint8)
        chunk = 4096  # bounds the float32 noise buffer for large counts
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            noise = rng.standard_normal((stop - start, *images.shape[1:]), dtype=np.float32)
            noisy = patterns[labels[start:stop]] + noise_std * noise
            images[start:stop] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        return images, labels

    train_images, train_labels = make_split(num_train, train_rng)
    test_images, test_labels = make_split(num_test, test_rng)
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=tuple(f"class_{index}" for index in range(num_classes)),
        name="synthetic",
    )


def subset(
    dataset: Dataset, *, max_train: int | None = None, max_test: int | None = None, seed: int = 0
) -> Dataset:
    """A fixed random subset of ``dataset``: the same seed always picks the same examples.

    Args:
      dataset: the Dataset to draw from.
      max_train, max_test: keep at most this many examples of each split (None or a number
        at least the split's size keeps the whole split).
      seed: selects the subset; train and test are drawn independently.

    Returns:
      A Dataset with images uint8 (n, H, W, 3) and labels int32 (n,), examples kept in their
      original relative order. When a split was cut, the name gets a suffix such as
      " [subset 5000/10000]" so reports do not pass a subset off as the full data set.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"subset: dataset must be a Dataset, but got {type(dataset).__name__}")
    max_train = check_optional_int("subset", "max_train", max_train, minimum=1)
    max_test = check_optional_int("subset", "max_test", max_test, minimum=1)
    seed = check_int("subset", "seed", seed, minimum=0)

    def choose(count: int, limit: int | None, stream: int) -> np.ndarray | None:
        if limit is None or limit >= count:
            return None
        rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
        return np.sort(rng.choice(count, size=limit, replace=False))

    train_index = choose(dataset.num_train, max_train, 0)
    test_index = choose(dataset.num_test, max_test, 1)
    if train_index is None and test_index is None:
        return dataset
    train_images, train_labels = dataset.train_images, dataset.train_labels
    test_images, test_labels = dataset.test_images, dataset.test_labels
    if train_index is not None:
        train_images, train_labels = train_images[train_index], train_labels[train_index]
    if test_index is not None:
        test_images, test_labels = test_images[test_index], test_labels[test_index]
    return Dataset(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=dataset.class_names,
        name=f"{dataset.name} [subset {len(train_labels)}/{len(test_labels)}]",
    )


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which to visit examples in ``epoch``: an int64 permutation of
    ``range(num_examples)``, shape (num_examples,), fully determined by (seed, epoch)."""
    num_examples = check_int("epoch_permutation", "num_examples", num_examples, minimum=0)
    seed = check_int("epoch_permutation", "seed", seed, minimum=0)
    epoch = check_int("epoch_permutation", "epoch", epoch, minimum=0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    return rng.permutation(num_examples).astype(np.int64)


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches of ``batch_size`` in ``num_examples`` examples (an int): rounded
    down when ``drop_remainder`` (every batch full, so one compiled shape), else up."""
    num_examples = check_int("num_batches", "num_examples", num_examples, minimum=0)
    batch_size = check_int("num_batches", "batch_size", batch_size, minimum=1)
    drop_remainder = check_bool("num_batches", "drop_remainder", drop_remainder)
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)
