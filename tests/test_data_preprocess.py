"""Tests for on-device preprocessing (jaxsep.data.preprocess): augment, cutout, normalize,
batch_key and resize, each against what it should do pixel by pixel, eagerly and under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_builders import random_images
from jaxsep import data


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
            "augment: images_u8 must have dtype uint8, but got float32",
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
            "augment: pad must be >= 0, but got -1",
        ),
        (
            (np.zeros((2, 8, 8, 3), np.uint8), jax.random.key(0)),
            dict(flip="no"),
            TypeError,
            "augment: flip must be a bool",
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
         "cutout: size must be >= 0, but got -1"),
        ((np.zeros((2, 8, 8, 3)), jax.random.key(0)), dict(size=4.0), TypeError,
         "cutout: size must be an int, but got float 4.0"),
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
            r"normalize: mean must have one value per channel, i.e. shape \(3,\), but got shape \(2,\)",
        ),
        (dict(std=(0.5, 0.0, 0.5)), ValueError, "std must be positive"),
        (dict(dtype=jnp.int32), TypeError, "normalize: dtype must be a floating dtype, but got int32"),
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
    with pytest.raises(ValueError, match="batch_key: step must be >= 0, but got -1"):
        data.batch_key(0, 0, -1)
    with pytest.raises(TypeError, match="batch_key: epoch must be an int or an integer scalar array"):
        data.batch_key(0, 1.0, 0)
    with pytest.raises(TypeError, match="batch_key: seed must be an int, but got bool"):
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
    with pytest.raises(ValueError, match="resize: size must be >= 1, but got 0"):
        data.resize(batch, 0)
    with pytest.raises(TypeError, match="resize: images must have dtype uint8 or a floating dtype, but got int32"):
        data.resize(batch.astype(np.int32), 16)
    with pytest.raises(ValueError, match="4-D NHWC"):
        data.resize(batch[0], 16)
