"""On-device (JAX) preprocessing, meant to run inside a jitted training step: random crop and
flip (``augment``), ``cutout``, ``normalize``, ``resize``, and the per-batch PRNG key
(``batch_key``). Images are NHWC batches (B, H, W, C)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsep._validation import check_bool, check_int, fail
from jaxsep.data.dataset import CIFAR10_MEAN, CIFAR10_STD


def _check_image_batch(where: str, name: str, images: Any) -> tuple[int, int, int, int]:
    shape = getattr(images, "shape", None)
    if shape is None or getattr(images, "dtype", None) is None:
        raise TypeError(
            f"{where}: {name} must be a NumPy or JAX array of shape (B, H, W, C), but got "
            f"{type(images).__name__}"
        )
    if len(shape) != 4:
        raise ValueError(
            f"{where}: {name} must be a 4-D NHWC batch of shape (B, H, W, C), but got shape "
            f"{tuple(shape)}"
        )
    return tuple(shape)  # type: ignore[return-value]


def _check_uint8(where: str, name: str, images: Any) -> None:
    if images.dtype != np.uint8:
        raise TypeError(f"{where}: {name} must have dtype uint8, but got {images.dtype}")


def _check_scalar_int_like(where: str, name: str, value: Any) -> None:
    """Accepts a non-negative Python/NumPy int, or an integer scalar array (possibly traced)."""
    if isinstance(value, (bool, int, np.integer)):
        check_int(where, name, value, minimum=0)
        return
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer) or shape != ():
        raise TypeError(
            f"{where}: {name} must be an int or an integer scalar array, but got "
            f"{type(value).__name__}"
            + (f" of dtype {dtype} and shape {shape}" if dtype is not None else f" {value!r}")
        )


def _check_prng_key(where: str, name: str, key: Any) -> None:
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(
                f"{where}: {name} must be a single PRNG key (shape ()), but got shape {shape}"
            )
        return
    if dtype == np.uint32 and shape == (2,):  # legacy raw key from jax.random.PRNGKey
        return
    raise TypeError(
        f"{where}: {name} must be a JAX PRNG key such as jax.random.key(0) or batch_key(...), "
        f"but got {type(key).__name__}"
        + (f" of dtype {dtype} and shape {shape}" if dtype is not None else "")
    )


@functools.partial(jax.jit, static_argnames=("pad", "flip"))
def _augment(images: jax.Array, key: jax.Array, *, pad: int, flip: bool) -> jax.Array:
    batch, height, width, channels = images.shape
    crop_key, flip_key = jax.random.split(key)
    if pad > 0:
        # Pad once for the whole batch; each example then takes its own window of the padded
        # batch, which XLA lowers to a single gather.
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)

        def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
            return lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        flipped = jax.random.bernoulli(flip_key, 0.5, (batch,))
        images = jnp.where(flipped[:, None, None, None], images[:, :, ::-1, :], images)
    return images


def augment(images_u8: Any, key: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
    """Standard CIFAR augmentation on device: random crop with zero padding, random flip.

    Each example independently takes a random H x W window of itself zero-padded by ``pad``
    pixels on every side (i.e. shifts of -pad..pad pixels in each direction, filling with
    black), then with probability 1/2 is mirrored left-right. Jittable (``pad`` and ``flip``
    are static); the output depends only on the inputs and ``key``.

    Args:
      images_u8: uint8 array (B, H, W, C), NHWC.
      key: a JAX PRNG key (e.g. from ``batch_key``).
      pad: crop padding in pixels, >= 0 (0 disables cropping).
      flip: whether to apply random horizontal flips.

    Returns:
      uint8 jax.Array (B, H, W, C).
    """
    _check_image_batch("augment", "images_u8", images_u8)
    _check_uint8("augment", "images_u8", images_u8)
    _check_prng_key("augment", "key", key)
    pad = check_int("augment", "pad", pad, minimum=0)
    flip = check_bool("augment", "flip", flip)
    return _augment(images_u8, key, pad=pad, flip=flip)


@functools.partial(jax.jit, static_argnames=("size",))
def _cutout(images: jax.Array, key: jax.Array, *, size: int) -> jax.Array:
    batch, height, width, _ = images.shape
    centres = jax.random.randint(key, (batch, 2), 0, jnp.array([height, width]))
    start = centres - size // 2  # may be negative: the square is clipped at the border
    rows = jnp.arange(height)[None, :]
    cols = jnp.arange(width)[None, :]
    in_rows = (rows >= start[:, :1]) & (rows < start[:, :1] + size)  # (B, H)
    in_cols = (cols >= start[:, 1:]) & (cols < start[:, 1:] + size)  # (B, W)
    inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    return jnp.where(inside, jnp.zeros((), images.dtype), images)


def cutout(images: Any, key: jax.Array, *, size: int) -> jax.Array:
    """Cutout (DeVries & Taylor, 2017) on device: zeroes one ``size`` x ``size`` square per
    example.

    Each example independently draws a centre pixel uniformly from its H x W pixels; the
    square covers rows ``cy - size // 2 .. cy - size // 2 + size - 1`` (columns likewise),
    clipped at the border, so a square near an edge or corner covers fewer pixels, as in the
    paper's code (which also lets the centre fall anywhere). Apply it to normalized images,
    where zero is the dataset mean (the paper's choice); on uint8 images zero is black.
    Jittable (``size`` is static); the output depends only on the inputs and ``key``.

    Args:
      images: array (B, H, W, C), NHWC, any dtype.
      key: a JAX PRNG key (e.g. derived from ``batch_key``).
      size: side of the square in pixels, >= 0 (0 returns ``images`` unchanged); 16 is the
        paper's CIFAR-10 setting.

    Returns:
      jax.Array (B, H, W, C) of the input dtype.
    """
    _check_image_batch("cutout", "images", images)
    _check_prng_key("cutout", "key", key)
    size = check_int("cutout", "size", size, minimum=0)
    if size == 0:
        return jnp.asarray(images)
    return _cutout(images, key, size=size)


def _channel_constants(where: str, name: str, values: Any, num_channels: int) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{where}: {name} must be a sequence of {num_channels} numbers, but got {values!r}"
        ) from error
    if array.shape != (num_channels,):
        raise ValueError(
            f"{where}: {name} must have one value per channel, i.e. shape ({num_channels},), "
            f"but got shape {array.shape}"
        )
    return array


def normalize(
    images_u8: Any,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """Converts uint8 images to normalized floats: ``(images / 255 - mean) / std``.

    Args:
      images_u8: uint8 array (..., C) (typically (B, H, W, C)).
      mean, std: per-channel constants of length C in 0..1 units (default: CIFAR-10's).
      dtype: a floating output dtype, e.g. jnp.float32 or jnp.bfloat16. The arithmetic is
        done in float32 and only the result is cast.

    Returns:
      jax.Array of the same shape as ``images_u8`` and dtype ``dtype``.
    """
    shape = getattr(images_u8, "shape", None)
    if shape is None or getattr(images_u8, "dtype", None) is None or len(shape) == 0:
        raise TypeError(
            f"normalize: images_u8 must be a uint8 array of shape (..., C), but got "
            f"{type(images_u8).__name__}"
        )
    _check_uint8("normalize", "images_u8", images_u8)
    num_channels = shape[-1]
    mean_array = _channel_constants("normalize", "mean", mean, num_channels)
    std_array = _channel_constants("normalize", "std", std, num_channels)
    if np.any(std_array <= 0):
        fail("normalize", "std", "positive", tuple(std_array.tolist()))
    try:
        output_dtype = jnp.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"normalize: dtype must be a floating dtype, but got {dtype!r}") from error
    if not jnp.issubdtype(output_dtype, jnp.floating):
        raise TypeError(f"normalize: dtype must be a floating dtype, but got {output_dtype}")
    # One multiply-add per element instead of divide, subtract, divide.
    # Explicit per-channel shape, so this also runs under jax_numpy_rank_promotion="raise".
    channel_shape = (1,) * (len(shape) - 1) + (num_channels,)
    scale = jnp.asarray(1.0 / (255.0 * std_array), jnp.float32).reshape(channel_shape)
    offset = jnp.asarray(-mean_array / std_array, jnp.float32).reshape(channel_shape)
    return (jnp.asarray(images_u8).astype(jnp.float32) * scale + offset).astype(output_dtype)


def batch_key(seed: Any, epoch: Any, step: Any) -> jax.Array:
    """The PRNG key for batch ``step`` of ``epoch``: a typed JAX key (shape ()), equal to
    ``fold_in(fold_in(key(seed), epoch), step)``, so augmentation is reproducible from
    (seed, epoch, step) alone, e.g. when resuming mid-epoch. Each argument is a non-negative
    int or an integer scalar array (which may be traced inside jit)."""
    _check_scalar_int_like("batch_key", "seed", seed)
    _check_scalar_int_like("batch_key", "epoch", epoch)
    _check_scalar_int_like("batch_key", "step", step)
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)


@functools.partial(jax.jit, static_argnames=("size",))
def _resize(images: jax.Array, size: int) -> jax.Array:
    batch, _, _, channels = images.shape
    is_uint8 = images.dtype == jnp.uint8
    # At least float32, without implicit promotion (which strict promotion mode rejects).
    compute_dtype = (
        jnp.float32 if is_uint8 or jnp.finfo(images.dtype).bits < 32 else images.dtype
    )
    resized = jax.image.resize(
        images.astype(compute_dtype),
        (batch, size, size, channels),
        method="bilinear",
        antialias=True,
    )
    if is_uint8:
        return jnp.clip(jnp.round(resized), 0, 255).astype(jnp.uint8)
    return resized.astype(images.dtype)


def resize(images: Any, size: int) -> jax.Array:
    """Resizes a batch of images to ``size`` x ``size`` (bilinear, antialiased when
    shrinking), e.g. for resolution-multiplier experiments.

    Args:
      images: uint8 or floating array (B, H, W, C), NHWC.
      size: output height and width, >= 1.

    Returns:
      jax.Array (B, size, size, C) of the input dtype; uint8 results are rounded and clipped
      to 0..255. Floating inputs are resized in at least float32 precision.
    """
    shape = _check_image_batch("resize", "images", images)
    if images.dtype != np.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"resize: images must have dtype uint8 or a floating dtype, but got {images.dtype}"
        )
    size = check_int("resize", "size", size, minimum=1)
    if shape[1:3] == (size, size):
        return jnp.asarray(images)
    return _resize(images, size)
