"""Pure convolution ops: standard, grouped, depthwise, pointwise, separable, channel shuffle.

Shape letters used in every docstring of this module:

  N   batch size
  S   the spatial dims: ``W`` (1-D), ``H, W`` (2-D) or ``D, H, W`` (3-D)
  C   input channels
  M   depth multiplier of a depthwise convolution
  G   groups
  O   output channels
  K   the window, one size per spatial dim (``*K``)

Layouts
  ``x`` and the result share ``data_format``: ``"NWC"``, ``"NHWC"``, ``"NDHWC"`` (channels-last,
  the default) or ``"NCW"``, ``"NCHW"``, ``"NCDHW"`` (channels-first). ``None`` means
  channels-last for the spatial rank ``x.ndim - 2``.

  Kernels are always ``(*K, C // G, O)`` ("HWIO"), as in ``lax`` and Flax; a depthwise kernel
  is ``(*K, 1, C * M)`` where output channel ``c * M + m`` reads input channel ``c`` (the lax
  and TensorFlow order).

Output size along each spatial dim, with effective window ``d * (k - 1) + 1`` and explicit
padding ``(lo, hi)``: ``(size + lo + hi - d * (k - 1) - 1) // s + 1``. "SAME" gives
``ceil(size / s)``.

Dtypes
  Results keep ``x``'s dtype; kernels are cast to it. float16 and bfloat16 inputs accumulate in
  float32. ``precision`` passes through to ``lax``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsep import _validation as v
from jaxsep._channel_matmul import channel_matmul
from jaxsep._choices import GROUPED_IMPLS as GROUPED_IMPLS, IMPLS as IMPLS

__all__ = [
    "channel_shuffle",
    "conv",
    "depthwise_conv",
    "grouped_conv",
    "pointwise_conv",
    "separable_conv",
]

Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]
IntOrSeq = int | Sequence[int]
Impl = Literal["auto", "xla", "taps"]
GroupedImpl = Literal["auto", "xla", "split", "taps"]
# Widest channel group (C // G) that grouped_conv's impl="auto" runs as "taps" on the CPU; wider
# groups run as "split" (measured: see choose_grouped_impl).
_TAPS_MAX_GROUP_WIDTH = 1

# Spatial rank -> lax dimension numbers for (x, kernel, out), channels-last and -first.
DIMENSION_NUMBERS: dict[tuple[int, bool], tuple[str, str, str]] = {
    (1, True): ("NWC", "WIO", "NWC"),
    (1, False): ("NCW", "WIO", "NCW"),
    (2, True): ("NHWC", "HWIO", "NHWC"),
    (2, False): ("NCHW", "HWIO", "NCHW"),
    (3, True): ("NDHWC", "DHWIO", "NDHWC"),
    (3, False): ("NCDHW", "DHWIO", "NCDHW"),
}

_NUMPY_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _accumulation_dtype(dtype: Any) -> Any:
    """float16/bfloat16 sum in float32; float32/float64 sum in their own type."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else None


def _spatial_axes(rank: int, channels_last: bool) -> tuple[int, ...]:
    return tuple(range(1, rank + 1)) if channels_last else tuple(range(2, rank + 2))


class _Prepared:
    """The validated, resolved form of a windowed op's arguments (static Python values)."""

    __slots__ = ("rank", "channels_last", "data_format", "strides", "dilation", "padding")

    def __init__(self, rank, channels_last, data_format, strides, dilation, padding):
        self.rank = rank
        self.channels_last = channels_last
        self.data_format = data_format
        self.strides = strides
        self.dilation = dilation
        self.padding = padding


def _prepare(
    op: str,
    x: Any,
    kernel: Any,
    kernel_name: str,
    strides: IntOrSeq,
    padding: Padding,
    dilation: IntOrSeq,
    data_format: str | None,
    padding_mode: str,
) -> _Prepared:
    rank, channels_last, data_format = v.spatial_rank_and_layout(op, x, data_format)
    v.check_float_dtype(op, "x", x)
    v.check_float_dtype(op, kernel_name, kernel)
    v.check_kernel_rank(op, kernel_name, kernel, rank, x)
    strides = v.per_dim(op, "strides", strides, rank)
    dilation = v.per_dim(op, "dilation", dilation, rank)
    v.check_padding_mode(op, padding_mode)
    spatial = v.spatial_shape_of(x, channels_last)
    window = tuple(np.shape(kernel)[:rank])
    if 0 in window:
        raise ValueError(f"{op}: the {kernel_name} window must be non-empty, but got {window}")
    pads = v.resolve_padding(op, padding, spatial, window, strides, dilation)
    v.check_padding_fits_mode(op, padding_mode, pads, spatial)
    return _Prepared(rank, channels_last, data_format, strides, dilation, pads)


def _pad_input(x: jax.Array, p: _Prepared, padding_mode: str) -> tuple[jax.Array, tuple]:
    """Applies non-zero padding modes to ``x`` itself; zero padding stays inside the conv."""
    if padding_mode == "zeros" or not any(lo or hi for lo, hi in p.padding):
        return x, p.padding
    widths = [(0, 0)] * x.ndim
    for axis, pair in zip(_spatial_axes(p.rank, p.channels_last), p.padding):
        widths[axis] = pair
    x = jnp.pad(x, widths, mode=_NUMPY_PAD_MODE[padding_mode])
    return x, ((0, 0),) * p.rank


def _lax_conv(
    x: jax.Array,
    kernel: jax.Array,
    p: _Prepared,
    groups: int,
    padding_mode: str,
    precision: Any,
) -> jax.Array:
    x, pads = _pad_input(x, p, padding_mode)
    return _conv_padded(x, kernel, p, pads, groups, precision)


def _conv_padded(
    x: jax.Array,
    kernel: jax.Array,
    p: _Prepared,
    pads: tuple,
    groups: int,
    precision: Any,
) -> jax.Array:
    """``lax.conv_general_dilated`` on an ``x`` already padded per ``padding_mode``; ``pads`` is
    the zero padding left (from :func:`_pad_input`)."""
    out = lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=p.strides,
        padding=pads,
        rhs_dilation=p.dilation,
        dimension_numbers=DIMENSION_NUMBERS[(p.rank, p.channels_last)],
        feature_group_count=groups,
        precision=precision,
        preferred_element_type=_accumulation_dtype(x.dtype),
    )
    return out.astype(x.dtype)


def _check_groups(op: str, x: Any, kernel: Any, p: _Prepared, groups: Any) -> int:
    """Validates ``groups`` against ``x``'s channels and the ``(*K, C // G, O)`` kernel."""
    groups = v.check_int(op, "groups", groups)
    channels = v.channels_of(x, p.channels_last)
    k_in, k_out = np.shape(kernel)[-2:]
    if channels % groups:
        raise ValueError(
            f"{op}: groups must divide the input channels, but {groups} does not divide {channels}"
        )
    if k_in * groups != channels:
        raise ValueError(
            f"{op}: kernel in_channels (dim -2) must equal channels // groups = "
            f"{channels} // {groups} = {channels // groups}, but got kernel of shape "
            f"{np.shape(kernel)}"
        )
    if k_out % groups:
        raise ValueError(
            f"{op}: groups must divide the kernel's out_channels (dim -1), but {groups} "
            f"does not divide {k_out}"
        )
    return groups


def conv(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: IntOrSeq = 1,
    padding: Padding = "SAME",
    dilation: IntOrSeq = 1,
    groups: int = 1,
    data_format: str | None = None,
    padding_mode: str = "zeros",
    precision: Any = None,
) -> jax.Array:
    """The standard (dense, or grouped when ``groups > 1``) N-D convolution.

    Always ``lax.conv_general_dilated`` (with ``feature_group_count=groups``); for grouped
    convolutions on the CPU, :func:`grouped_conv` has faster lowerings.

    Args:
      x: ``(N, *S, C)`` channels-last or ``(N, C, *S)`` channels-first, per ``data_format``.
      kernel: ``(*K, C // G, O)``; ``O`` must be divisible by ``G``.
      strides: an int or one int per spatial dim.
      padding: "SAME", "SAME_LOWER", "VALID", "CAUSAL" (1-D only), an int, one int per spatial
        dim, or one ``(low, high)`` pair per spatial dim.
      dilation: the kernel (atrous) dilation, an int or one int per spatial dim.
      groups: ``G``; input channel group ``g`` feeds output channels ``g * O/G ... (g+1) * O/G - 1``.
      data_format: layout of ``x`` and the result (see the module docstring).
      padding_mode: "zeros", "reflect", "replicate" or "circular" (as in PyTorch).
      precision: passed to ``lax.conv_general_dilated``.

    Returns:
      ``(N, *S', O)`` (or ``(N, O, *S')``) in ``x.dtype``.
    """
    op = "conv"
    p = _prepare(op, x, kernel, "kernel", strides, padding, dilation, data_format, padding_mode)
    groups = _check_groups(op, x, kernel, p, groups)
    return _lax_conv(jnp.asarray(x), jnp.asarray(kernel), p, groups, padding_mode, precision)


def grouped_conv(
    x: jax.Array,
    kernel: jax.Array,
    groups: int,
    *,
    strides: IntOrSeq = 1,
    padding: Padding = "SAME",
    dilation: IntOrSeq = 1,
    data_format: str | None = None,
    padding_mode: str = "zeros",
    precision: Any = None,
    impl: GroupedImpl = "auto",
) -> jax.Array:
    """A grouped convolution: :func:`conv` with ``groups`` given positionally, and a choice of
    lowering.

    ``G = 1`` is the dense convolution and ``G = C`` with ``O = C * M`` is the depthwise one.
    XLA:CPU runs ``conv_general_dilated(feature_group_count=G)`` far slower than its dense
    convolutions and matrix products (about 40x in the depthwise case; see
    ``../shared/PERF-NOTES.md``), hence two lowerings that avoid it. Both are built from jax
    ops, so ``jit``, ``vmap`` and derivatives of any order work; "split"'s backward is plain
    autodiff (dense convolutions again), "taps" has the depthwise taps lowering's own fast
    backward.

    * "split": ``G`` dense convolutions (``C // G -> O // G``), one per channel slice of ``x``
      and of the kernel's last dim, concatenated on the channel axis. A 1x1 window with no
      padding left runs as a (strided) slice and one matrix product per group, like
      :func:`pointwise_conv`. ``G`` library calls, each with the grouped convolution's own
      multiply-adds: fast when every group has many channels; its program grows with ``G``.
    * "taps": the sum over the ``C // G`` input channels of a group of depthwise taps
      convolutions (:func:`depthwise_conv`'s "taps"): input channel ``j`` of every group,
      ``x[..., j::C // G]``, convolved with ``kernel[..., j : j + 1, :]`` as a depthwise kernel
      ``(*K, 1, O)`` of multiplier ``O // G`` (output ``g * O // G + o`` reads group ``g``).
      Elementwise fused loops near memory speed, with the taps kernel gradient; work and
      program grow with ``C // G``, so it suits narrow groups (``G = C`` is one depthwise
      call). float16/bfloat16 terms are summed in float32.

    Args:
      x: ``(N, *S, C)`` (or ``(N, C, *S)``).
      kernel: ``(*K, C // G, O)``; ``O`` must be divisible by ``G``.
      groups: ``G``, which must divide ``C``.
      strides, padding, dilation, data_format, padding_mode, precision: as in :func:`conv`
        ("taps" ignores ``precision``: its products are exact elementwise multiplies).
      impl: "xla" (``lax.conv_general_dilated`` with ``feature_group_count=G``, as
        :func:`conv`), "split", "taps", or "auto", which picks per backend and group width
        (:func:`choose_grouped_impl`).

    Returns:
      ``(N, *S', O)`` (or ``(N, O, *S')``) in ``x.dtype``; equals
      ``conv(x, kernel, groups=groups)`` up to float rounding.
    """
    op = "grouped_conv"
    p = _prepare(op, x, kernel, "kernel", strides, padding, dilation, data_format, padding_mode)
    groups = _check_groups(op, x, kernel, p, groups)
    _check_impl(op, impl, GROUPED_IMPLS)
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    if impl == "auto":
        impl = choose_grouped_impl(v.channels_of(x, p.channels_last), groups)
    if impl == "xla":
        return _lax_conv(x, kernel, p, groups, padding_mode, precision)
    x, pads = _pad_input(x, p, padding_mode)
    if impl == "split":
        return _grouped_split(x, kernel, p, pads, groups, precision)
    return _grouped_taps(x, kernel, p, pads, groups, precision)


def choose_grouped_impl(channels: int, groups: int) -> str:
    """The grouped lowering that ``impl="auto"`` runs on the current default backend.

    Off the CPU, "xla": GPU and TPU libraries have real grouped kernels. On the CPU, "taps"
    when each group has at most ``_TAPS_MAX_GROUP_WIDTH`` (1) input channels, i.e. the
    depthwise convolution with a depth multiplier, else "split". Measured by
    ``experiments/bench_grouped.py`` (batch 128, the grouped MobileNetV1 and ShuffleNet layer
    shapes, forward+backward): "split" was the fastest lowering at every group width from 4 to
    128 but one (a 4x4 stride-2 layer with G = 2, where "xla" was 1.9x faster), 4-14x faster
    than "taps" at 4 to 16 channels per group (each taps call then has a depth multiplier of
    ``O // G``, whose backward is slow) and 4-220x faster than "xla"; "taps" wins at one channel
    per group (4.9 against 80 ms at 32x32x16, G = 16).
    """
    if jax.default_backend() != "cpu":
        return "xla"
    return "taps" if groups > 1 and channels // groups <= _TAPS_MAX_GROUP_WIDTH else "split"


def _channel_axis(x: jax.Array, p: _Prepared) -> int:
    return x.ndim - 1 if p.channels_last else 1


def _dense_padded(
    x: jax.Array, kernel: jax.Array, p: _Prepared, pads: tuple, precision: Any
) -> jax.Array:
    """One dense convolution of an already padded ``x``: a matrix product for a 1x1 window
    with no padding left (a 1x1 ``conv_general_dilated`` is 1.2-6x slower on XLA:CPU)."""
    if all(k == 1 for k in kernel.shape[:-2]) and not any(lo or hi for lo, hi in pads):
        if any(s > 1 for s in p.strides):  # a 1x1 window reads every s-th pixel
            step = [1] * x.ndim
            for axis, s in zip(_spatial_axes(p.rank, p.channels_last), p.strides):
                step[axis] = s
            x = lax.slice(x, (0,) * x.ndim, x.shape, step)
        return _pointwise(x, kernel, p.channels_last, precision)
    return _conv_padded(x, kernel, p, pads, 1, precision)


def _grouped_split(
    x: jax.Array, kernel: jax.Array, p: _Prepared, pads: tuple, groups: int, precision: Any
) -> jax.Array:
    """``impl="split"`` of :func:`grouped_conv` (``x`` padded per ``padding_mode``).

    ``jnp.split`` (not ``G`` slices): its transpose is one concatenate, so the input and
    kernel gradients are assembled in one pass instead of a sum of ``G`` zero-padded copies.
    """
    if groups == 1:
        return _dense_padded(x, kernel, p, pads, precision)
    axis = _channel_axis(x, p)
    outs = [
        _dense_padded(x_g, k_g, p, pads, precision)
        for x_g, k_g in zip(jnp.split(x, groups, axis=axis), jnp.split(kernel, groups, axis=-1))
    ]
    return jnp.concatenate(outs, axis=axis)


def _grouped_taps(
    x: jax.Array, kernel: jax.Array, p: _Prepared, pads: tuple, groups: int, precision: Any
) -> jax.Array:
    """``impl="taps"`` of :func:`grouped_conv` (``x`` padded per ``padding_mode``).

    Channel axis ``C`` viewed as ``(G, C // G)`` and split on the ``C // G`` axis; each piece
    ``(..., G, ...)`` meets one input row of the kernel, ``(*K, 1, O)``, in one depthwise taps
    call (a named jit, so :func:`jaxsep.cost.count_macs` counts ``prod(K)`` multiply-adds per
    output element of each: the grouped convolution's own total).
    """
    from jaxsep import _taps  # the taps lowering imports this module's helpers

    axis = _channel_axis(x, p)
    width = x.shape[axis] // groups
    if width == 1:  # G = C: the depthwise convolution itself
        return _taps.apply(x, kernel, p, pads, precision)
    # Low-precision terms are summed in float32 and rounded once, as a conv accumulates.
    dtype = _accumulation_dtype(x.dtype) or x.dtype
    split = x.reshape(x.shape[:axis] + (groups, width) + x.shape[axis + 1 :])
    piece_shape = x.shape[:axis] + (groups,) + x.shape[axis + 1 :]
    out = None
    for x_j, k_j in zip(jnp.split(split, width, axis=axis + 1), jnp.split(kernel, width, axis=-2)):
        term = _taps.apply(x_j.reshape(piece_shape).astype(dtype), k_j, p, pads, precision)
        out = term if out is None else out + term
    return out.astype(x.dtype)


def _check_depthwise_kernel(op: str, name: str, kernel: Any, channels: int) -> int:
    """Returns the depth multiplier ``M`` of a ``(*K, 1, C * M)`` kernel."""
    shape = np.shape(kernel)
    if shape[-2] != 1:
        raise ValueError(
            f"{op}: {name} must have shape (*window, 1, C * depth_multiplier), but dim -2 of "
            f"{name} of shape {shape} is {shape[-2]}, not 1"
        )
    if shape[-1] == 0 or shape[-1] % channels:
        raise ValueError(
            f"{op}: {name}'s last dim must be a positive multiple of the input channels "
            f"C={channels} (C * depth_multiplier), but got {name} of shape {shape}"
        )
    return shape[-1] // channels


def _check_impl(op: str, impl: str, choices: tuple[str, ...] = IMPLS) -> str:
    if impl not in choices:
        raise ValueError(f"{op}: impl must be one of {choices}, but got {impl!r}")
    return impl


def _depthwise(
    op: str,
    x: jax.Array,
    kernel: jax.Array,
    p: _Prepared,
    padding_mode: str,
    precision: Any,
    impl: str,
) -> jax.Array:
    from jaxsep import _taps  # the taps lowering imports this module's helpers

    channels = v.channels_of(x, p.channels_last)
    if impl == "auto":
        impl = _taps.choose_impl(x, kernel, p)
    if impl == "taps":
        x, pads = _pad_input(x, p, padding_mode)
        return _taps.apply(x, kernel, p, pads, precision)
    return _lax_conv(x, kernel, p, channels, padding_mode, precision)


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    *,
    strides: IntOrSeq = 1,
    padding: Padding = "SAME",
    dilation: IntOrSeq = 1,
    data_format: str | None = None,
    padding_mode: str = "zeros",
    precision: Any = None,
    impl: Impl = "auto",
) -> jax.Array:
    """The depthwise convolution: each input channel convolved with its own ``M`` filters.

    Args:
      x: ``(N, *S, C)`` (or ``(N, C, *S)``).
      kernel: ``(*K, 1, C * M)``; output channel ``c * M + m`` reads input channel ``c``.
      strides, padding, dilation, data_format, padding_mode, precision: as in :func:`conv`.
      impl: "xla" (``lax.conv_general_dilated`` with ``feature_group_count=C``), "taps" (a sum
        of shifted input slices times the kernel taps, with a taps backward), or "auto", which
        picks the faster per backend and shape.

    Returns:
      ``(N, *S', C * M)`` (or ``(N, C * M, *S')``) in ``x.dtype``. Equals
      ``conv(x, kernel, groups=C)``.
    """
    op = "depthwise_conv"
    p = _prepare(op, x, kernel, "kernel", strides, padding, dilation, data_format, padding_mode)
    _check_depthwise_kernel(op, "kernel", kernel, v.channels_of(x, p.channels_last))
    _check_impl(op, impl)
    return _depthwise(op, jnp.asarray(x), jnp.asarray(kernel), p, padding_mode, precision, impl)


def _pointwise(x: jax.Array, kernel: jax.Array, channels_last: bool, precision: Any) -> jax.Array:
    """A 1x1 convolution as one matrix product over the channel axis (no conv primitive)."""
    kernel = kernel.reshape(kernel.shape[-2:]).astype(x.dtype)
    accumulate = _accumulation_dtype(x.dtype)
    if channels_last:
        # channel_matmul is this dot_general with a kernel gradient (x.T @ g) that XLA:CPU
        # runs much faster than autodiff's (see jaxsep._channel_matmul).
        out = channel_matmul(x, kernel, precision=precision, preferred_element_type=accumulate)
        return out.astype(x.dtype)
    out = lax.dot_general(
        x, kernel, (((1,), (0,)), ((), ())), precision=precision,
        preferred_element_type=accumulate,
    )
    return jnp.moveaxis(out, -1, 1).astype(x.dtype)


def _check_pointwise_kernel(op: str, name: str, kernel: Any, rank: int, channels: int) -> None:
    shape = np.shape(kernel)
    if len(shape) not in (2, rank + 2) or any(s != 1 for s in shape[:-2]):
        raise ValueError(
            f"{op}: {name} must have shape (C_in, C_out) or ({'1, ' * rank}C_in, C_out) for "
            f"{rank} spatial dims, but got {name} of shape {shape}"
        )
    if shape[-2] != channels:
        raise ValueError(
            f"{op}: {name} in_channels (dim -2) must equal the channels it receives ({channels}), "
            f"but got {name} of shape {shape}"
        )


def pointwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    *,
    data_format: str | None = None,
    precision: Any = None,
) -> jax.Array:
    """The 1x1 convolution, computed as a matrix product over the channel axis.

    Channels-last inputs go through ``channel_matmul``, a ``dot_general`` whose kernel
    gradient is computed as ``x.T @ g`` (faster on XLA:CPU than autodiff's form, and still
    differentiable to any order, forward and reverse); channels-first through ``dot_general``.

    Args:
      x: ``(N, *S, C)`` (or ``(N, C, *S)``).
      kernel: ``(C, O)`` or ``(1, ..., 1, C, O)`` with one 1 per spatial dim.

    Returns:
      ``(N, *S, O)`` (or ``(N, O, *S)``) in ``x.dtype``.
    """
    op = "pointwise_conv"
    rank, channels_last, _ = v.spatial_rank_and_layout(op, x, data_format)
    v.check_float_dtype(op, "x", x)
    v.check_float_dtype(op, "kernel", kernel)
    _check_pointwise_kernel(op, "kernel", kernel, rank, v.channels_of(x, channels_last))
    return _pointwise(jnp.asarray(x), jnp.asarray(kernel), channels_last, precision)


def separable_conv(
    x: jax.Array,
    depthwise_kernel: jax.Array,
    pointwise_kernel: jax.Array,
    *,
    strides: IntOrSeq = 1,
    padding: Padding = "SAME",
    dilation: IntOrSeq = 1,
    data_format: str | None = None,
    padding_mode: str = "zeros",
    precision: Any = None,
    impl: Impl = "auto",
) -> jax.Array:
    """The depthwise-separable convolution of MobileNet: depthwise, then pointwise (1x1).

    Args:
      x: ``(N, *S, C)`` (or ``(N, C, *S)``).
      depthwise_kernel: ``(*K, 1, C * M)``.
      pointwise_kernel: ``(C * M, O)`` or ``(1, ..., 1, C * M, O)``.
      strides, padding, dilation, padding_mode: of the depthwise step, as in :func:`conv`.
      impl: of the depthwise step, as in :func:`depthwise_conv`.

    Returns:
      ``(N, *S', O)`` (or ``(N, O, *S')``) in ``x.dtype``; equals
      ``pointwise_conv(depthwise_conv(x, depthwise_kernel, ...), pointwise_kernel)``.
    """
    op = "separable_conv"
    p = _prepare(
        op, x, depthwise_kernel, "depthwise_kernel", strides, padding, dilation, data_format,
        padding_mode,
    )
    channels = v.channels_of(x, p.channels_last)
    multiplier = _check_depthwise_kernel(op, "depthwise_kernel", depthwise_kernel, channels)
    v.check_float_dtype(op, "pointwise_kernel", pointwise_kernel)
    _check_pointwise_kernel(op, "pointwise_kernel", pointwise_kernel, p.rank, channels * multiplier)
    _check_impl(op, impl)
    x = jnp.asarray(x)
    hidden = _depthwise(op, x, jnp.asarray(depthwise_kernel), p, padding_mode, precision, impl)
    return _pointwise(hidden, jnp.asarray(pointwise_kernel), p.channels_last, precision)


def channel_shuffle(x: jax.Array, groups: int, *, data_format: str | None = None) -> jax.Array:
    """ShuffleNet's channel shuffle: view channels as ``(G, C // G)``, transpose, flatten.

    Output channel ``j * G + g`` is input channel ``g * (C // G) + j``, so each group of the
    next grouped convolution sees one channel from every group of the previous one.

    Args:
      x: ``(N, *S, C)`` (or ``(N, C, *S)``); works for any dtype.
      groups: ``G``, which must divide ``C``.

    Returns:
      An array of the shape and dtype of ``x``.
    """
    op = "channel_shuffle"
    rank, channels_last, _ = v.spatial_rank_and_layout(op, x, data_format)
    groups = v.check_int(op, "groups", groups)
    channels = v.channels_of(x, channels_last)
    if channels % groups:
        raise ValueError(
            f"{op}: groups must divide the channels, but {groups} does not divide {channels}"
        )
    x = jnp.asarray(x)
    axis = x.ndim - 1 if channels_last else 1
    split = x.shape[:axis] + (groups, channels // groups) + x.shape[axis + 1 :]
    return jnp.swapaxes(x.reshape(split), axis, axis + 1).reshape(x.shape)
