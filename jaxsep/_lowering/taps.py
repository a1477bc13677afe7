"""The "taps" lowering of the depthwise convolution, with a backward pass of its own.

XLA:CPU runs ``lax.conv_general_dilated(feature_group_count=C)`` far below memory speed; the
same convolution written as a sum over window taps of a strided input slice times one kernel
tap is a handful of fused elementwise loops. The forward value is built from blocks of
outputs that read no padding where that is faster; the derivative is a ``jax.custom_jvp``
(so ``jvp`` and higher orders keep working) whose two halves are written so that reverse
mode's transposes are fast: the input gradient is one fused sum of padded slices, the kernel
gradient runs over cache-sized batch chunks. How and why, with the measurements behind each
choice: ``docs/design/taps.md``.

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

from jaxsep._geometry import Geometry, compute_dtype

# Batch chunk of the kernel-gradient scan: about this many bytes of x per step.
_KERNEL_GRAD_CHUNK_BYTES = 1 << 20
# Output rows summed elementwise per kernel tap before the kernel gradient's reduction (see
# _kernel_rows_forward); the fastest of 8, 16 and 32 (docs/design/taps.md).
_ROW_TERMS = 16
# The old name of the geometry (the tests build it positionally).
_Geometry = Geometry


class _Tap(NamedTuple):
    """Where one window tap reads along one spatial dim (all Python ints)."""

    start: int  # first input index read
    count: int  # number of outputs that read a real input pixel
    before: int  # outputs before them (they read padding)
    after: int  # outputs after them


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


def _layout(x_shape, geometry: Geometry):
    return geometry.rank, geometry.channel_axis(len(x_shape)), geometry.spatial_axes


def _taps_per_dim(x_shape, window, geometry: Geometry):
    """The output size and the :class:`_Tap` of every window offset, per spatial dim."""
    _, _, spatial_axes = _layout(x_shape, geometry)
    out = geometry.out_spatial(x_shape, window)
    per_dim = [
        _tap_ranges(x_shape[axis], o, k, s, d, lo)
        for axis, o, k, s, d, (lo, _) in zip(
            spatial_axes, out, window, geometry.strides, geometry.dilation, geometry.padding
        )
    ]
    return out, per_dim


def _all_taps(x_shape, window, geometry: Geometry):
    """Yields (tap index, per-dim _Tap) for every window offset that reads a real pixel."""
    _, per_dim = _taps_per_dim(x_shape, window, geometry)
    for index in itertools.product(*(range(k) for k in window)):
        taps = tuple(per_dim[dim][t] for dim, t in enumerate(index))
        if all(tap.count for tap in taps):
            yield index, taps


def _phase_view(x, spatial_axes, strides):
    """``x`` with each strided spatial axis that its stride divides split into (size // s, s).

    A tap's strided slice of ``x`` is then a plain slice of this view at one phase, and its
    transpose (the input gradient) a plain pad, where the transpose of a strided slice is a pad
    with interior padding (faster: ``docs/design/taps.md``).
    Returns the view and, per axis of ``x``, the stride it was split by (1: not split).
    """
    stride_of = dict(zip(spatial_axes, strides))
    split = [1] * x.ndim
    shape = []
    for axis, size in enumerate(x.shape):
        s = stride_of.get(axis, 1)
        if s > 1 and size % s == 0:
            split[axis] = s
            shape += [size // s, s]
        else:
            shape.append(size)
    return x.reshape(shape), tuple(split)


def _phase_slice(view, split, taps, spatial_axes, strides):
    """The input slice that kernel tap ``taps`` (one :class:`_Tap` per spatial dim) reads, taken
    from ``view`` (see :func:`_phase_view`) and shaped as ``x`` with the tap's output counts:
    a plain slice at one phase along split axes, a strided slice along the others."""
    tap_of = dict(zip(spatial_axes, zip(taps, strides)))
    start, limit, step, shape = [], [], [], []
    for axis, s in enumerate(split):
        size = view.shape[len(start)]
        if axis in tap_of:
            tap, stride = tap_of[axis]
            if s > 1:
                q, r = divmod(tap.start, s)
                start += [q, r]
                limit += [q + tap.count, r + 1]
                step += [1, 1]
            else:
                start.append(tap.start)
                limit.append(tap.start + (tap.count - 1) * stride + 1)
                step.append(stride)
            shape.append(tap.count)
        else:
            start.append(0)
            limit.append(size)
            step.append(1)
            shape.append(size)
    return lax.slice(view, start, limit, step).reshape(shape)


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


def _split_spatial_axes(spatial_axes, geometry: Geometry):
    """Spatial axes once the channel axis is split in two (channels-first: shifted by one)."""
    return spatial_axes if geometry.channels_last else tuple(a + 1 for a in spatial_axes)


def _forward(x, kernel, geometry: Geometry):
    rank, channel_axis, spatial_axes = _layout(x.shape, geometry)
    window = kernel.shape[:rank]
    channels = x.shape[channel_axis]
    multiplier = kernel.shape[-1] // channels
    out_spatial = geometry.out_spatial(x.shape, window)
    dtype = compute_dtype(x.dtype)
    out_shape = list(x.shape)
    out_shape.insert(channel_axis + 1, multiplier)
    for axis, size in zip(spatial_axes, out_spatial):
        out_shape[axis if axis < channel_axis else axis + 1] = size
    split_spatial = _split_spatial_axes(spatial_axes, geometry)
    acc = jnp.zeros(out_shape, dtype)
    view, split = _phase_view(x, spatial_axes, geometry.strides)
    for index, taps in _all_taps(x.shape, window, geometry):
        xs = _phase_slice(view, split, taps, spatial_axes, geometry.strides).astype(dtype)
        xs = jnp.expand_dims(xs, channel_axis + 1)
        w = _tap_weights(kernel[index].astype(dtype), channel_axis, x.ndim, channels, multiplier)
        acc = acc + _pad_to_output(xs * w, taps, split_spatial)
    return _merge_channels(acc, channel_axis).astype(x.dtype)


def _segments(taps_1d, out: int):
    """Splits the outputs ``[0, out)`` of one spatial dim into ranges ``(a, b)`` such that
    every tap reads a real pixel for all of a range's outputs or for none of them."""
    cuts = {0, out}
    for tap in taps_1d:
        if tap.count:
            cuts.update((tap.before, out - tap.after))
    cuts = sorted(cuts)
    return list(zip(cuts, cuts[1:]))


@functools.lru_cache(maxsize=256)
def _region_plan(x_shape, window, geometry: Geometry):
    """The blocks of :func:`_forward_regions`: per spatial dim its output ranges, and per
    block (a tuple of range indices) the taps that read real pixels for all of its outputs,
    each as ``(tap index, per-dim _Tap restricted to the block)``. Cached (all tuples): both
    :func:`_use_regions` and :func:`_forward_regions` need it when a program is traced."""
    out, per_dim = _taps_per_dim(x_shape, window, geometry)
    ranges = tuple(tuple(_segments(taps, o)) for taps, o in zip(per_dim, out))
    blocks = []
    for block in itertools.product(*(range(len(r)) for r in ranges)):
        terms = []
        for index in itertools.product(*(range(k) for k in window)):
            restricted = []
            for dim, (t, r) in enumerate(zip(index, block)):
                tap, (a, b) = per_dim[dim][t], ranges[dim][r]
                if not (tap.count and tap.before <= a and b <= out[dim] - tap.after):
                    break
                start = tap.start + (a - tap.before) * geometry.strides[dim]
                restricted.append(_Tap(start, b - a, 0, 0))
            else:
                terms.append((index, tuple(restricted)))
        blocks.append((block, tuple(terms)))
    return ranges, tuple(blocks)


# _forward_regions writes one term per (block, tap) pair, _forward one per tap. A cap on the
# program's size: 3x3 in 2-D has 49 terms; 5x5 in 2-D (361) and 3x3x3 in 3-D (343) keep
# _forward, whose speed against blocks was not measured.
_MAX_REGION_TERMS = 128


def _use_regions(x_shape, window, geometry: Geometry) -> bool:
    """Whether :func:`_forward_regions` is the faster forward for this convolution.

    Channels-last only (channels-first border blocks are a few elements wide along the minor,
    vectorised axis); at stride 1 always, at larger strides, where the phase view leaves fewer
    taps reading padding, only when at most half of the outputs lie in blocks that read every
    tap. The measurements behind this rule: ``docs/design/taps.md``.
    """
    out = geometry.out_spatial(x_shape, window)
    if not geometry.channels_last or 0 in out:
        return False
    ranges, blocks = _region_plan(tuple(x_shape), tuple(window), geometry)
    if sum(len(terms) for _, terms in blocks) > _MAX_REGION_TERMS:
        return False
    if all(s == 1 for s in geometry.strides):
        return True
    full = max(len(terms) for _, terms in blocks)
    interior = sum(
        int(np.prod([b - a for a, b in (ranges[d][i] for d, i in enumerate(block))]))
        for block, terms in blocks
        if len(terms) == full
    )
    return interior <= int(np.prod(out)) // 2


def _forward_fast(x, kernel, geometry: Geometry):
    """The forward value: :func:`_forward_regions` where it is faster, else :func:`_forward`."""
    rank = len(geometry.strides)
    if _use_regions(x.shape, kernel.shape[:rank], geometry):
        return _forward_regions(x, kernel, geometry)
    return _forward(x, kernel, geometry)


def _forward_regions(x, kernel, geometry: Geometry):
    """``_forward`` assembled from blocks of outputs that read no padding.

    The outputs are split, along every spatial dim, at the places where some tap starts or
    stops reading padding; within a block each tap reads real pixels everywhere or nowhere, so
    the block is a plain sum of slices times taps, and the blocks are concatenated. XLA:CPU
    fuses it all into one loop that it vectorises without masks, where the pads of
    :func:`_forward` become a masked load per tap and element (when that is faster: see
    :func:`_use_regions`).
    """
    rank, channel_axis, spatial_axes = _layout(x.shape, geometry)
    window = kernel.shape[:rank]
    channels = x.shape[channel_axis]
    multiplier = kernel.shape[-1] // channels
    dtype = compute_dtype(x.dtype)
    split_spatial = _split_spatial_axes(spatial_axes, geometry)
    view, split = _phase_view(x, spatial_axes, geometry.strides)
    ranges, plan = _region_plan(tuple(x.shape), tuple(window), geometry)
    blocks = {}
    for block, terms in plan:
        shape = list(x.shape)
        shape.insert(channel_axis + 1, multiplier)
        for axis, (a, b) in zip(split_spatial, (ranges[d][i] for d, i in enumerate(block))):
            shape[axis] = b - a
        acc = None
        for index, taps in terms:
            xs = _phase_slice(view, split, taps, spatial_axes, geometry.strides).astype(dtype)
            xs = jnp.expand_dims(xs, channel_axis + 1)
            w = _tap_weights(kernel[index].astype(dtype), channel_axis, x.ndim, channels, multiplier)
            acc = xs * w if acc is None else acc + xs * w
        # A block that only padding reaches (padding wider than the window's reach) is zeros.
        blocks[block] = jnp.zeros(shape, dtype) if acc is None else acc
    # Concatenate along the last spatial dim first, then outwards.
    for dim in reversed(range(rank)):
        merged = {}
        for block in blocks:
            key = block[:dim]
            merged.setdefault(key, []).append(blocks[block])
        blocks = {key: jnp.concatenate(parts, axis=split_spatial[dim]) for key, parts in merged.items()}
    return _merge_channels(blocks[()], channel_axis).astype(x.dtype)


def _largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def _row_pieces(x_shape, kernel_shape, geometry: Geometry):
    """``(rows, group, piece_shape)`` of :func:`_kernel_rows_forward` for an input shape."""
    rank, channel_axis, spatial_axes = _layout(x_shape, geometry)
    multiplier = kernel_shape[-1] // x_shape[channel_axis]
    out_spatial = geometry.out_spatial(x_shape, kernel_shape[:rank])
    batch, first = x_shape[0], spatial_axes[0]
    rows = _largest_divisor(out_spatial[0], _ROW_TERMS)
    group = _largest_divisor(batch, _ROW_TERMS // rows)
    piece_shape = [batch // group] + list(x_shape[1:])
    for axis, o in zip(spatial_axes, out_spatial):
        piece_shape[axis] = o
    piece_shape[first] = out_spatial[0] // rows
    if multiplier > 1:
        piece_shape.insert(channel_axis + 1, multiplier)
    return rows, group, tuple(piece_shape)


def _broadcast_taps(kernel, x_shape, geometry: Geometry):
    """The kernel's taps, each broadcast to the piece shape of :func:`_kernel_rows_forward`
    for an input of shape ``x_shape``: a list of arrays, taps in row-major window order."""
    rank, channel_axis, _ = _layout(x_shape, geometry)
    channels = x_shape[channel_axis]
    multiplier = kernel.shape[-1] // channels
    _, _, piece_shape = _row_pieces(x_shape, kernel.shape, geometry)
    taps = int(np.prod(kernel.shape[:rank]))
    w_shape = [1] * len(piece_shape)
    w_shape[channel_axis] = channels
    if multiplier > 1:
        w_shape[channel_axis + 1] = multiplier
    # All taps broadcast at once, then split: reverse mode turns the split into a concatenate
    # of the per-tap elementwise sums, which XLA writes out before the one reduction (the
    # transpose of the broadcast). Per-tap broadcasts would instead let XLA:CPU hand each
    # tap's whole multiply-add chain to a YNNPACK reduction that copies out every slice.
    flat = kernel.astype(compute_dtype(kernel.dtype)).reshape((taps, *w_shape))
    every = jnp.broadcast_to(flat, (taps, *piece_shape))
    return [part[0] for part in lax.split(every, [1] * taps, axis=0)]


def _kernel_rows_forward(x, kernel_shape, taps, geometry: Geometry):
    """The forward as a function of the kernel, shaped so that its transpose is fast.

    Mathematically ``_forward(x, kernel)``, given the kernel's shape and its ``taps``
    broadcast by :func:`_broadcast_taps` (for ``x.shape``). The output is assembled from
    ``group * rows`` interleaved pieces: piece ``(g, r)`` holds the examples
    ``g, g + group, ...`` and the outputs ``r, r + rows, ...`` of the first spatial axis, and
    equals ``sum_t slice_t(g, r) * B_t``, where ``slice_t(g, r)`` is one strided slice of the
    padded input and ``B_t`` is broadcast tap ``t``. Reverse mode then turns the kernel
    gradient into, per tap, one fused elementwise sum over the pieces of
    ``slice_t(g, r) * dy(g, r)`` followed by a reduction over an array ``group * rows`` times
    smaller than ``x`` (the transpose of the broadcast). The transpose of the plain forward is
    one full-size reduction per tap, which XLA:CPU runs at a fraction of the speed of its
    vectorised elementwise loops.

    ``rows`` and ``group`` are divisors of the first spatial output size and of the batch,
    with ``rows * group`` at most ``_ROW_TERMS``.
    """
    rank, channel_axis, spatial_axes = _layout(x.shape, geometry)
    window = kernel_shape[:rank]
    multiplier = kernel_shape[-1] // x.shape[channel_axis]
    dtype = compute_dtype(x.dtype)
    config = [(0, 0, 0)] * x.ndim
    for axis, (lo, hi) in zip(spatial_axes, geometry.padding):
        config[axis] = (lo, hi, 0)
    # The barrier keeps every tap reading the padded copy. Otherwise XLA rewrites the taps
    # that read no padding into slices of x itself, which inside the kernel-gradient scan is a
    # dynamic slice of the scan input; XLA:CPU compiles a loop that reads a dynamic slice to
    # scalar code (it reloads the index per element), which is several times slower.
    padded = lax.optimization_barrier(lax.pad(x, jnp.zeros((), x.dtype), config))
    out_spatial = geometry.out_spatial(x.shape, window)
    batch, first = x.shape[0], spatial_axes[0]
    rows, group, piece_shape = _row_pieces(x.shape, kernel_shape, geometry)
    indexed = list(zip(itertools.product(*(range(k) for k in window)), taps))

    def piece(g, r):
        acc = None
        for index, b in indexed:
            start, limit, step = [g] + [0] * (x.ndim - 1), list(padded.shape), [group] + [1] * (x.ndim - 1)
            for axis, t, o, s, d in zip(spatial_axes, index, out_spatial, geometry.strides, geometry.dilation):
                start[axis], step[axis] = t * d, s
            start[first] += r * geometry.strides[0]
            step[first] *= rows
            for axis in range(x.ndim):
                size = piece_shape[axis] if axis <= channel_axis else piece_shape[axis + (multiplier > 1)]
                limit[axis] = start[axis] + (size - 1) * step[axis] + 1
            xs = lax.slice(padded, start, limit, step).astype(dtype)
            if multiplier > 1:
                xs = jnp.expand_dims(xs, channel_axis + 1)
            acc = xs * b if acc is None else acc + xs * b
        return acc

    first_out = first + (multiplier > 1 and not geometry.channels_last)
    out = jnp.stack(
        [jnp.stack([piece(g, r) for r in range(rows)], axis=first_out + 1) for g in range(group)],
        axis=1,
    )
    # (N / group, group, ..., O / rows, rows, ...) -> (N, ..., O, ...)
    shape = list(out.shape)
    shape[first_out + 1 : first_out + 3] = [out_spatial[0]]
    shape[0:2] = [batch]
    out = out.reshape(shape)
    if multiplier > 1:
        out = _merge_channels(out, channel_axis)
    return out.astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _depthwise_taps(x, kernel, geometry):
    return _forward_fast(x, kernel, geometry)


def _kernel_tangent(x, dkernel, geometry: Geometry, plus=None):
    """``_forward(x, dkernel) + plus`` computed over batch chunks of about 1 MiB of ``x``.

    Only its transpose matters for speed: reverse mode turns the scan over chunks into one
    that adds a cache-sized chunk's per-tap products per step, instead of writing one shifted
    copy of the whole batch per tap to fresh memory. The kernel taps are broadcast before the
    scan, so it carries each tap's elementwise sum and reduces it once after the loop, not
    once per chunk. ``plus`` (the input-gradient path's tangent, or None) rides through the
    scan as an unchanged carry: in reverse mode its cotangent, the ``dy`` that the input
    gradient reads, is then the loop's output, a buffer XLA cannot fuse ``dy``'s producers
    into (see ``docs/design/taps.md``); a loop carry is updated in place, so it costs nothing.
    """
    def rows_forward(a):
        return _kernel_rows_forward(a, dkernel.shape, _broadcast_taps(dkernel, a.shape, geometry), geometry)

    batch = x.shape[0]
    example_bytes = max(int(np.prod(x.shape[1:])) * x.dtype.itemsize, 1)
    chunk = max(1, min(batch, _KERNEL_GRAD_CHUNK_BYTES // example_bytes))
    steps, rest = divmod(batch, chunk)
    if steps <= 1:
        out = rows_forward(x)
        return out if plus is None else out + plus
    main = steps * chunk
    taps = _broadcast_taps(dkernel, (chunk,) + x.shape[1:], geometry)
    # checkpoint: the transposed scan recomputes each chunk's padded slices instead of saving
    # them, stacked over the whole batch, as residuals of the forward scan.
    body = jax.checkpoint(
        lambda carry, a: (carry, _kernel_rows_forward(a, dkernel.shape, taps, geometry))
    )
    plus, out = lax.scan(body, plus, x[:main].reshape((steps, chunk) + x.shape[1:]))
    out = out.reshape((main,) + out.shape[2:])
    if rest:
        out = jnp.concatenate([out, rows_forward(x[main:])])
    return out if plus is None else out + plus


@functools.partial(_depthwise_taps.defjvp, symbolic_zeros=True)
def _depthwise_taps_jvp(geometry, primals, tangents):
    # The op is bilinear: its tangent is op(dx, k) + op(x, dk), each written so that reverse
    # mode's transpose of it is fast (see _forward and _kernel_tangent). Plain jax ops all the
    # way down, so jvp, vmap and higher-order derivatives work unchanged.
    x, kernel = primals
    dx, dkernel = tangents
    # The value comes from the faster forward; the input path keeps _forward, whose transpose
    # is one fused sum of padded slices of dy (that of _forward_regions has a term per block).
    out = _forward_fast(x, kernel, geometry)
    input_path = None if isinstance(dx, SymbolicZero) else _forward(dx, kernel, geometry)
    if isinstance(dkernel, SymbolicZero):
        return out, jnp.zeros_like(out) if input_path is None else input_path
    return out, _kernel_tangent(x, dkernel, geometry, plus=input_path)


@functools.partial(jax.jit, static_argnums=(2,))
def depthwise_taps(x, kernel, geometry: Geometry):
    # A named jit: jaxsep.cost.count_macs finds this op in a jaxpr by its name, TAPS_NAME.
    return _depthwise_taps(x, kernel, geometry)


# The ``name`` of the jit eqn that wraps the lowering; jaxsep.cost.count_macs counts that call
# analytically (output elements x taps) instead of looking inside it.
TAPS_NAME = depthwise_taps.__name__


def apply(x, kernel, geometry: Geometry, precision):
    """Runs the taps lowering on an ``x`` already padded per ``padding_mode``; ``geometry``
    holds the zero padding left (see :func:`jaxsep._geometry.pad_input`).

    ``precision`` has no effect: every product here is an elementwise multiply in float32
    (or float64), which is already exact to the dtype.
    """
    del precision
    return depthwise_taps(x, kernel.astype(x.dtype), geometry)
