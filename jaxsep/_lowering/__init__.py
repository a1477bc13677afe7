"""The lowerings behind :mod:`jaxsep.ops`, and which one ``impl="auto"`` runs.

Each lowering computes one op from jax primitives, given an ``x`` already padded per
``padding_mode`` and the resolved :class:`jaxsep._geometry.Geometry` (its ``padding`` is the
zero padding left):

* :mod:`~jaxsep._lowering.xla`: ``lax.conv_general_dilated`` ("xla", every op).
* :mod:`~jaxsep._lowering.taps`: the depthwise convolution as a sum of shifted slices times
  kernel taps, with its own backward ("taps"; ``docs/design/taps.md``).
* :mod:`~jaxsep._lowering.grouped`: the grouped convolution as ``G`` dense ones ("split") or
  as ``C // G`` depthwise taps calls ("taps").
* :mod:`~jaxsep._lowering.pointwise`: the 1x1 convolution as one matrix product; channels-last
  through :mod:`~jaxsep._lowering.channel_matmul`, a ``dot_general`` primitive whose kernel
  gradient XLA:CPU runs faster.
* :mod:`~jaxsep._lowering.patches`: the dense convolution as im2col patches times the
  flattened kernel ("patches"), for stems with few input channels.

Why each exists and the measurements behind the choices here: ``docs/design/lowerings.md``.
``impl="auto"`` times the candidates once per shape (:mod:`~jaxsep._lowering.autotune`) unless
measuring is switched off, when it follows the fixed rules below.
"""

from __future__ import annotations

import math
from typing import Any

import jax

from jaxsep._lowering import autotune, channel_matmul, grouped, patches, pointwise, taps, xla

__all__ = [
    "autotune",
    "channel_matmul",
    "choose_conv_impl",
    "choose_depthwise_impl",
    "choose_grouped_impl",
    "conv_candidates",
    "depthwise_candidates",
    "grouped",
    "grouped_candidates",
    "patches",
    "pointwise",
    "run_conv",
    "run_depthwise",
    "run_grouped",
    "taps",
    "xla",
]

# Widest channel group (C // G) that grouped_conv's fixed rule runs as "taps" on the CPU; wider
# groups run as "split" (see choose_grouped_impl).
_TAPS_MAX_GROUP_WIDTH = 1
# Deepest patches (prod(K) * C channels) that conv's "patches" lowering is a candidate for: an
# RGB stem has 27 (3x3) to 147 (7x7); the deepest measured, a 3x3 64 -> 128 layer, has 576
# (experiments/bench_conv.py: "patches" 1.6x faster forward+backward there on the CPU).
PATCHES_MAX_DEPTH = 576
# Widest channel group that grouped "taps" is a candidate for at all: its program unrolls one
# depthwise call per channel of a group, so compiling (and timing) it grows with C // G.
GROUPED_TAPS_MAX_WIDTH = 16


def run_conv(impl: str, x: Any, kernel: Any, geometry: Any, groups: int, precision: Any) -> Any:
    """The dense or grouped convolution's lowering ``impl`` ("xla", or "patches" when
    ``groups == 1``), as :func:`run_depthwise`."""
    if impl == "patches":
        return patches.conv(x, kernel, geometry, precision)
    return xla.conv(x, kernel, geometry, groups, precision)


def run_depthwise(impl: str, x: Any, kernel: Any, geometry: Any, precision: Any) -> Any:
    """The depthwise lowering ``impl`` ("xla" or "taps") on an ``x`` already padded per
    ``padding_mode`` (``geometry.padding`` is the zero padding left)."""
    if impl == "taps":
        return taps.apply(x, kernel, geometry, precision)
    return xla.conv(x, kernel, geometry, x.shape[geometry.channel_axis(x.ndim)], precision)


def run_grouped(
    impl: str, x: Any, kernel: Any, geometry: Any, groups: int, precision: Any
) -> Any:
    """The grouped lowering ``impl`` ("xla", "split" or "taps"), as :func:`run_depthwise`."""
    if impl == "xla":
        return xla.conv(x, kernel, geometry, groups, precision)
    if impl == "split":
        return grouped.grouped_split(x, kernel, geometry, groups, precision)
    return grouped.grouped_taps(x, kernel, geometry, groups, precision)


def conv_candidates(channels: int, groups: int, window: Any) -> tuple[str, ...]:
    """What ``impl="auto"`` of :func:`jaxsep.ops.conv` measures: "xla", and "patches" for a
    dense convolution whose patches have at most ``PATCHES_MAX_DEPTH`` channels
    (``prod(K) * C``): they cost ``prod(K)`` times the input's memory, and compiling and timing
    them grows with their depth."""
    narrow = groups == 1 and math.prod(window) * channels <= PATCHES_MAX_DEPTH
    return ("xla", "patches") if narrow else ("xla",)


def depthwise_candidates() -> tuple[str, ...]:
    """What ``impl="auto"`` of the depthwise convolution measures."""
    return ("xla", "taps")


def grouped_candidates(channels: int, groups: int) -> tuple[str, ...]:
    """What ``impl="auto"`` of the grouped convolution measures: "xla" and "split", and
    "taps" up to ``GROUPED_TAPS_MAX_WIDTH`` channels per group."""
    narrow = groups > 1 and channels // groups <= GROUPED_TAPS_MAX_WIDTH
    return ("xla", "split", "taps") if narrow else ("xla", "split")


def choose_conv_impl(
    x: Any, kernel: Any, geometry: Any, groups: int, precision: Any = None
) -> str:
    """The lowering that ``impl="auto"`` of :func:`jaxsep.ops.conv` runs for these arguments.

    The fixed rule: "xla" everywhere (what ``conv`` always ran). When measuring is on
    (:func:`jaxsep.autotune`), the faster of :func:`conv_candidates`, "xla" kept unless
    "patches" is clearly faster. On the CPU "patches" ran every stem measured 1.8-5x faster
    forward+backward, but XLA's dense convolution varies with the shape and other backends have
    tuned ones, so a measurement decides (``docs/design/lowerings.md``, "patches").
    """
    channels = x.shape[geometry.channel_axis(x.ndim)]
    candidates = conv_candidates(channels, groups, kernel.shape[:-2])
    if len(candidates) < 2 or not autotune.enabled():
        return "xla"
    return autotune.choose(
        "conv", x, kernel, geometry, candidates, "xla",
        lambda impl, x, k: run_conv(impl, x, k, geometry, groups, precision),
        groups=groups, precision=precision,
    )


def choose_depthwise_impl(
    x: Any, kernel: Any = None, geometry: Any = None, precision: Any = None
) -> str:
    """The depthwise lowering that ``impl="auto"`` runs for these arguments.

    The fixed rule: "taps" on the CPU, where it was the faster lowering at every shape of
    ``experiments/bench_ops.py`` (forward and backward); "xla" on GPU and TPU, whose vendor
    libraries have tuned depthwise kernels that XLA calls for ``feature_group_count=C``. When
    measuring is on (:func:`jaxsep.autotune`) and ``kernel`` and ``geometry`` are given, the
    faster of "xla" and "taps" on this device, the rule's choice kept unless the other is
    clearly faster (:mod:`jaxsep._lowering.autotune`). ``x`` is padded per ``padding_mode``.
    """
    default = "taps" if jax.default_backend() == "cpu" else "xla"
    if kernel is None or geometry is None or not autotune.enabled():
        return default
    return autotune.choose(
        "depthwise_conv", x, kernel, geometry, depthwise_candidates(), default,
        lambda impl, x, k: run_depthwise(impl, x, k, geometry, precision), precision=precision,
    )


def choose_grouped_impl(
    channels: int,
    groups: int,
    x: Any = None,
    kernel: Any = None,
    geometry: Any = None,
    precision: Any = None,
) -> str:
    """The grouped lowering that ``impl="auto"`` runs for these arguments.

    The fixed rule: off the CPU, "xla" (GPU and TPU libraries have real grouped kernels); on
    the CPU, "taps" when each group has at most ``_TAPS_MAX_GROUP_WIDTH`` (1) input channels,
    i.e. the depthwise convolution with a depth multiplier, else "split":
    ``experiments/bench_grouped.py`` found "split" the fastest at every wider group but one,
    and "taps" at one channel per group (``docs/design/lowerings.md``). When measuring is on
    and ``x``, ``kernel`` and ``geometry`` are given, the fastest of
    :func:`grouped_candidates`, the rule's choice kept unless another is clearly faster.
    """
    if jax.default_backend() != "cpu":
        default = "xla"
    elif groups > 1 and channels // groups <= _TAPS_MAX_GROUP_WIDTH:
        default = "taps"
    else:
        default = "split"
    if x is None or kernel is None or geometry is None or not autotune.enabled():
        return default
    return autotune.choose(
        "grouped_conv", x, kernel, geometry, grouped_candidates(channels, groups), default,
        lambda impl, x, k: run_grouped(impl, x, k, geometry, groups, precision),
        groups=groups, precision=precision,
    )
