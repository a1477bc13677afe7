"""The "taps" lowering of the depthwise convolution, with a backward pass of its own.

XLA:CPU runs ``lax.conv_general_dilated(feature_group_count=C)`` at well under 1 GB/s (see
``../shared/PERF-NOTES.md``); written as a sum over window taps of a strided input slice times
one kernel tap, the same convolution is a handful of fused elementwise loops that run near
memory speed. Every term is a "pad of a slice": for tap ``t`` along one spatial dim, the
outputs ``o`` that read a real (not padding) input pixel form a contiguous range
``[o_lo, o_hi]``, so the term is ``pad(x[start : : s] * k[t], (o_lo, out - 1 - o_hi))`` and no
padded copy of ``x`` is ever made.

The derivative is a ``jax.custom_jvp`` (so ``jax.jvp`` and higher orders keep working)
whose tangent, ``op(dx, k) + op(x, dk)``, is written so that reverse mode's transposes are fast:
  * ``op(dx, k)`` is the pad-of-slice forward; its transpose, the input gradient, is again one
    fused sum of padded slices of ``dy`` times kernel taps;
  * ``op(x, dk)`` runs over batch chunks of about 1 MiB (a ``lax.map`` under ``jax.checkpoint``);
    its transpose, the kernel gradient, reduces one cache-sized chunk per scan step, where
    autodiff of the plain forward would write one shifted copy of the whole batch per tap to
    fresh memory (2-4x slower on CPU).

Layouts follow :mod:`jaxsep.ops`; shapes are those of ``depthwise_conv``.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

# Batch chunk of the kernel-gradient scan: about this many bytes of x per step.
_KERNEL_GRAD_CHUNK_BYTES = 1 << 20


class _Tap(NamedTuple):
    """Where one window tap reads along one spatial dim (all Python ints)."""

    start: int  # first input index read
    count: int  # number of outputs that read a real input pixel
    before: int  # outputs before them (they read padding)
    after: int  # outputs after them


class _Geometry(NamedTuple):
    """Static description of one depthwise convolution (hashable: it keys the jit cache)."""

    channels_last: bool
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]


def _tap_ranges(size: int, out: int, window: int, stride: int, dilation: int, low: int):
    """One :class:`_Tap` per window offset along a spatial dim (count 0: reads only padding)."""
    taps = []
    for t in range(window):
        offset = t * dilation - low  # input index read by output 0
        o_lo = max(0, -(offset // stride))
        o_hi = min(out - 1, (size - 1 - offset) // stride)
        count = max(o_hi - o_lo + 1, 0)
        taps.append(_Tap(o_lo * stride + offset, count, o_lo, out - 1 - o_hi))
    return taps


def _layout(x_shape, geometry: _Geometry):
    rank = len(geometry.strides)
    channel_axis = len(x_shape) - 1 if geometry.channels_last else 1
    spatial_axes = tuple(range(1, rank + 1)) if geometry.channels_last else tuple(range(2, rank + 2))
    return rank, channel_axis, spatial_axes


def _out_spatial(x_shape, window, geometry: _Geometry):
    rank, _, spatial_axes = _layout(x_shape, geometry)
    out = []
    for axis, k, s, d, (lo, hi) in zip(
        spatial_axes, window, geometry.strides, geometry.dilation, geometry.padding
    ):
        out.append((x_shape[axis] + lo + hi - d * (k - 1) - 1) // s + 1)
    return tuple(out)


def _all_taps(x_shape, window, geometry: _Geometry):
    """Yields (tap index, per-dim _Tap) for every window offset that reads a real pixel."""
    _, _, spatial_axes = _layout(x_shape, geometry)
    out = _out_spatial(x_shape, window, geometry)
    per_dim = [
        _tap_ranges(x_shape[axis], o, k, s, d, lo)
        for axis, o, k, s, d, (lo, _) in zip(
            spatial_axes, out, window, geometry.strides, geometry.dilation, geometry.padding
        )
    ]
    for index in itertools.product(*(range(k) for k in window)):
        taps = tuple(per_dim[dim][t] for dim, t in enumerate(index))
        if all(tap.count for tap in taps):
            yield index, taps


def _input_slice(x, taps, spatial_axes, strides):
    start = [0] * x.ndim
    limit = list(x.shape)
    step = [1] * x.ndim
    for axis, tap, s in zip(spatial_axes, taps, strides):
        start[axis] = tap.start
        limit[axis] = tap.start + (tap.count - 1) * s + 1
        step[axis] = s
    return lax.slice(x, start, limit, step)


def _pad_to_output(term, taps, spatial_axes):
    config = [(0, 0, 0)] * term.ndim
    for axis, tap in zip(spatial_axes, taps):
        config[axis] = (tap.before, tap.after, 0)
    return lax.pad(term, jnp.zeros((), term.dtype), config)


def _merge_channels(a, channel_axis):
    shape = a.shape
    return a.reshape(shape[:channel_axis] + (shape[channel_axis] * shape[channel_axis + 1],) + shape[channel_axis + 2 :])


def _tap_weights(kernel_tap, channel_axis, ndim, channels, multiplier):
    """A kernel tap ``(C * M,)`` shaped to broadcast against a split ``(..., C, M, ...)``."""
    shape = [1] * (ndim + 1)
    shape[channel_axis] = channels
    shape[channel_axis + 1] = multiplier
    return kernel_tap.reshape(shape)


def _split_spatial_axes(spatial_axes, geometry: _Geometry):
    """Spatial axes once the channel axis is split in two (channels-first: shifted by one)."""
    return spatial_axes if geometry.channels_last else tuple(a + 1 for a in spatial_axes)


def _compute_dtype(dtype):
    """float16/bfloat16 products accumulate in float32; wider types in their own."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def _forward(x, kernel, geometry: _Geometry):
    rank, channel_axis, spatial_axes = _layout(x.shape, geometry)
    window = kernel.shape[:rank]
    channels = x.shape[channel_axis]
    multiplier = kernel.shape[-1] // channels
    out_spatial = _out_spatial(x.shape, window, geometry)
    dtype = _compute_dtype(x.dtype)
    out_shape = list(x.shape)
    out_shape.insert(channel_axis + 1, multiplier)
    for axis, size in zip(spatial_axes, out_spatial):
        out_shape[axis if axis < channel_axis else axis + 1] = size
    split_spatial = _split_spatial_axes(spatial_axes, geometry)
    acc = jnp.zeros(out_shape, dtype)
    for index, taps in _all_taps(x.shape, window, geometry):
        xs = _input_slice(x, taps, spatial_axes, geometry.strides).astype(dtype)
        xs = jnp.expand_dims(xs, channel_axis + 1)
        w = _tap_weights(kernel[index].astype(dtype), channel_axis, x.ndim, channels, multiplier)
        acc = acc + _pad_to_output(xs * w, taps, split_spatial)
    return _merge_channels(acc, channel_axis).astype(x.dtype)


def _forward_from_padded(x, kernel, geometry: _Geometry):
    """The forward as slices of a zero-padded ``x``, each over the full output range.

    Slower than :func:`_forward` (the padded copy crosses memory once more) but its transpose
    with respect to the kernel is one plain reduction of ``x`` slice times ``dy`` per tap,
    with no padding of ``dy``.
    """
    rank, channel_axis, spatial_axes = _layout(x.shape, geometry)
    window = kernel.shape[:rank]
    channels = x.shape[channel_axis]
    multiplier = kernel.shape[-1] // channels
    dtype = _compute_dtype(x.dtype)
    config = [(0, 0, 0)] * x.ndim
    for axis, (lo, hi) in zip(spatial_axes, geometry.padding):
        config[axis] = (lo, hi, 0)
    padded = lax.pad(x, jnp.zeros((), x.dtype), config)
    out_spatial = _out_spatial(x.shape, window, geometry)
    acc = None
    for index in itertools.product(*(range(k) for k in window)):
        start = [0] * x.ndim
        limit = list(padded.shape)
        step = [1] * x.ndim
        for axis, t, o, s, d in zip(spatial_axes, index, out_spatial, geometry.strides, geometry.dilation):
            start[axis] = t * d
            limit[axis] = t * d + (o - 1) * s + 1
            step[axis] = s
        xs = lax.slice(padded, start, limit, step).astype(dtype)
        if multiplier > 1:
            xs = jnp.expand_dims(xs, channel_axis + 1)
            w = _tap_weights(kernel[index].astype(dtype), channel_axis, x.ndim, channels, multiplier)
        else:
            w = kernel[index].astype(dtype).reshape([channels if a == channel_axis else 1 for a in range(x.ndim)])
        term = xs * w
        acc = term if acc is None else acc + term
    if multiplier > 1:
        acc = _merge_channels(acc, channel_axis)
    return acc.astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _depthwise_taps(x, kernel, geometry):
    return _forward(x, kernel, geometry)


def _kernel_tangent(x, dkernel, geometry: _Geometry):
    """``_forward(x, dkernel)`` mapped over batch chunks of about 1 MiB of ``x``.

    Only its transpose matters for speed: reverse mode turns the map into a scan that adds one
    cache-sized chunk's per-tap reductions per step, instead of writing one shifted copy of
    the whole batch per tap to fresh memory.
    """
    batch = x.shape[0]
    example_bytes = max(int(np.prod(x.shape[1:])) * x.dtype.itemsize, 1)
    chunk = max(1, min(batch, _KERNEL_GRAD_CHUNK_BYTES // example_bytes))
    steps, rest = divmod(batch, chunk)
    if steps <= 1:
        return _forward_from_padded(x, dkernel, geometry)
    main = steps * chunk
    chunks = x[:main].reshape((steps, chunk) + x.shape[1:])
    # checkpoint: the transposed scan recomputes each chunk's padded slices instead of saving
    # them, stacked over the whole batch, as residuals of the forward scan.
    body = jax.checkpoint(lambda x_chunk: _forward_from_padded(x_chunk, dkernel, geometry))
    out = lax.map(body, chunks)
    out = out.reshape((main,) + out.shape[2:])
    if rest:
        out = jnp.concatenate([out, _forward_from_padded(x[main:], dkernel, geometry)])
    return out


@functools.partial(_depthwise_taps.defjvp, symbolic_zeros=True)
def _depthwise_taps_jvp(geometry, primals, tangents):
    # The op is bilinear: its tangent is op(dx, k) + op(x, dk), each written so that reverse
    # mode's transpose of it is fast (see _forward and _kernel_tangent). Plain jax ops all the
    # way down, so jvp, vmap and higher-order derivatives work unchanged.
    x, kernel = primals
    dx, dkernel = tangents
    out = _forward(x, kernel, geometry)
    tangent = jnp.zeros_like(out)
    if not isinstance(dx, SymbolicZero):
        tangent = tangent + _forward(dx, kernel, geometry)
    if not isinstance(dkernel, SymbolicZero):
        tangent = tangent + _kernel_tangent(x, dkernel, geometry)
    return out, tangent


@functools.partial(jax.jit, static_argnums=(2,))
def depthwise_taps(x, kernel, geometry: _Geometry):
    # A named jit: jaxsep.cost.count_macs finds this op in a jaxpr by the name "depthwise_taps".
    return _depthwise_taps(x, kernel, geometry)


def apply(x, kernel, p, padding, precision):
    """Runs the taps lowering; ``p`` is ops._Prepared, ``padding`` the zero padding left.

    ``precision`` has no effect: every product here is an elementwise multiply in float32
    (or float64), which is already exact to the dtype.
    """
    del precision
    geometry = _Geometry(p.channels_last, p.strides, p.dilation, tuple(padding))
    return depthwise_taps(x, kernel.astype(x.dtype), geometry)


def choose_impl(x, kernel, p) -> str:
    """The depthwise lowering that ``impl="auto"`` runs on the current default backend.

    On CPU the taps lowering wins at every shape measured by ``experiments/bench_ops.py``
    (forward and backward). On GPU and TPU the vendor libraries have tuned depthwise kernels
    that XLA calls for ``feature_group_count=C``, so "xla" is kept there until a benchmark on
    that backend shows otherwise.
    """
    del x, kernel, p
    return "taps" if jax.default_backend() == "cpu" else "xla"
