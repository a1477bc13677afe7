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

from jaxsep import _validation as v
from jaxsep._choices import CONV_IMPLS as CONV_IMPLS
from jaxsep._choices import GROUPED_IMPLS as GROUPED_IMPLS, IMPLS as IMPLS
from jaxsep._geometry import DIMENSION_NUMBERS as DIMENSION_NUMBERS
from jaxsep._geometry import Geometry, channel_axis, pad_input
from jaxsep._lowering import _TAPS_MAX_GROUP_WIDTH as _TAPS_MAX_GROUP_WIDTH
from jaxsep._lowering import choose_conv_impl, choose_depthwise_impl
from jaxsep._lowering import choose_grouped_impl as choose_grouped_impl
from jaxsep._lowering import run_conv, run_depthwise, run_grouped
from jaxsep._lowering.channel_matmul import channel_matmul as channel_matmul
from jaxsep._lowering.pointwise import pointwise

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
ConvImpl = Literal["auto", "xla", "patches"]
GroupedImpl = Literal["auto", "xla", "split", "taps"]


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
    impl: ConvImpl = "auto",
) -> jax.Array:
    """The standard (dense, or grouped when ``groups > 1``) N-D convolution.

    ``lax.conv_general_dilated`` (with ``feature_group_count=groups``), or for a dense
    convolution im2col patches times the flattened kernel, which XLA:CPU runs several times
    faster for few input channels (a stem); for grouped convolutions on the CPU,
    :func:`grouped_conv` has faster lowerings.

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
      precision: passed to ``lax.conv_general_dilated`` (or ``lax.dot_general``).
      impl: "xla" (``lax.conv_general_dilated``), "patches" (``groups == 1`` only: the
        ``(N, *S', prod(K) * C)`` im2col of ``x`` times the kernel as a ``(prod(K) * C, O)``
        matrix; ``prod(K)`` times the input's memory), or "auto": "xla", unless measuring
        (:func:`jaxsep.autotune`) finds "patches" faster for this shape on this device, which
        it tries up to 576 patch channels (``docs/design/lowerings.md``, "patches").

    Returns:
      ``(N, *S', O)`` (or ``(N, O, *S')``) in ``x.dtype``.
    """
    op = "conv"
    v.check_impl(op, impl, CONV_IMPLS)
    g = v.conv_geometry(
        op, x, kernel, "kernel", strides, padding, dilation, data_format, padding_mode
    )
    groups = v.check_groups(op, x, kernel, g.channels_last, groups)
    if impl == "patches" and groups != 1:
        raise ValueError(
            f"{op}: impl='patches' computes dense convolutions only (groups=1), but got "
            f"groups={groups}; use impl='xla' or grouped_conv"
        )
    x, g = pad_input(jnp.asarray(x), g, padding_mode)
    kernel = jnp.asarray(kernel)
    if impl == "auto":
        impl = choose_conv_impl(x, kernel, g, groups, precision)
    return run_conv(impl, x, kernel, g, groups, precision)


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
    convolutions and matrix products, hence two lowerings that avoid it
    (``docs/design/lowerings.md``). Both are built from jax ops, so ``jit``, ``vmap`` and
    derivatives of any order work; "split"'s backward is plain autodiff (dense convolutions
    again), "taps" has the depthwise taps lowering's own fast backward.

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
        :func:`conv`), "split", "taps", or "auto", which times the candidates once per shape
        on this device and keeps the fastest, or follows a fixed rule per backend and group
        width when measuring is off (:func:`choose_grouped_impl`; ``docs/design/lowerings.md``).

    Returns:
      ``(N, *S', O)`` (or ``(N, O, *S')``) in ``x.dtype``; equals
      ``conv(x, kernel, groups=groups)`` up to float rounding.
    """
    op = "grouped_conv"
    g = v.conv_geometry(
        op, x, kernel, "kernel", strides, padding, dilation, data_format, padding_mode
    )
    groups = v.check_groups(op, x, kernel, g.channels_last, groups)
    v.check_impl(op, impl, GROUPED_IMPLS)
    x, g = pad_input(jnp.asarray(x), g, padding_mode)
    kernel = jnp.asarray(kernel)
    if impl == "auto":
        channels = v.channels_of(x, g.channels_last)
        impl = choose_grouped_impl(channels, groups, x, kernel, g, precision)
    return run_grouped(impl, x, kernel, g, groups, precision)


def _depthwise(
    x: jax.Array,
    kernel: jax.Array,
    g: Geometry,
    padding_mode: str,
    precision: Any,
    impl: str,
) -> jax.Array:
    """The depthwise step of :func:`depthwise_conv` and :func:`separable_conv`, by ``impl``."""
    x, g = pad_input(x, g, padding_mode)
    if impl == "auto":
        impl = choose_depthwise_impl(x, kernel, g, precision)
    return run_depthwise(impl, x, kernel, g, precision)


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
        times both once per shape on this device and keeps the faster, or follows a fixed rule
        per backend when measuring is off (``docs/design/lowerings.md``).

    Returns:
      ``(N, *S', C * M)`` (or ``(N, C * M, *S')``) in ``x.dtype``. Equals
      ``conv(x, kernel, groups=C)``.
    """
    op = "depthwise_conv"
    g = v.conv_geometry(
        op, x, kernel, "kernel", strides, padding, dilation, data_format, padding_mode
    )
    v.check_depthwise_kernel(op, "kernel", kernel, v.channels_of(x, g.channels_last))
    v.check_impl(op, impl)
    return _depthwise(jnp.asarray(x), jnp.asarray(kernel), g, padding_mode, precision, impl)


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
    v.check_pointwise_kernel(op, "kernel", kernel, rank, v.channels_of(x, channels_last))
    return pointwise(jnp.asarray(x), jnp.asarray(kernel), channels_last, precision)


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
    g = v.conv_geometry(
        op, x, depthwise_kernel, "depthwise_kernel", strides, padding, dilation, data_format,
        padding_mode,
    )
    channels = v.channels_of(x, g.channels_last)
    multiplier = v.check_depthwise_kernel(op, "depthwise_kernel", depthwise_kernel, channels)
    v.check_float_dtype(op, "pointwise_kernel", pointwise_kernel)
    v.check_pointwise_kernel(op, "pointwise_kernel", pointwise_kernel, g.rank, channels * multiplier)
    v.check_impl(op, impl)
    x = jnp.asarray(x)
    hidden = _depthwise(x, jnp.asarray(depthwise_kernel), g, padding_mode, precision, impl)
    return pointwise(hidden, jnp.asarray(pointwise_kernel), g.channels_last, precision)


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
    v.check_divides(op, groups, "the channels", channels)
    x = jnp.asarray(x)
    axis = channel_axis(x.ndim, channels_last)
    split = x.shape[:axis] + (groups, channels // groups) + x.shape[axis + 1 :]
    return jnp.swapaxes(x.reshape(split), axis, axis + 1).reshape(x.shape)
