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

Why each exists and the measurements behind the choices here: ``docs/design/lowerings.md``.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxsep._lowering import channel_matmul, grouped, pointwise, taps, xla

__all__ = [
    "channel_matmul",
    "choose_depthwise_impl",
    "choose_grouped_impl",
    "grouped",
    "pointwise",
    "taps",
    "xla",
]

# Widest channel group (C // G) that grouped_conv's impl="auto" runs as "taps" on the CPU; wider
# groups run as "split" (see choose_grouped_impl).
_TAPS_MAX_GROUP_WIDTH = 1


def choose_depthwise_impl(x: Any, kernel: Any, geometry: Any) -> str:
    """The depthwise lowering that ``impl="auto"`` runs on the current default backend.

    "taps" on the CPU, where it was the faster lowering at every shape of
    ``experiments/bench_ops.py`` (forward and backward); "xla" on GPU and TPU, whose vendor
    libraries have tuned depthwise kernels that XLA calls for ``feature_group_count=C``, until
    a benchmark on that backend shows otherwise. The arguments are not read (yet).
    """
    del x, kernel, geometry
    return "taps" if jax.default_backend() == "cpu" else "xla"


def choose_grouped_impl(channels: int, groups: int) -> str:
    """The grouped lowering that ``impl="auto"`` runs on the current default backend.

    Off the CPU, "xla": GPU and TPU libraries have real grouped kernels. On the CPU, "taps"
    when each group has at most ``_TAPS_MAX_GROUP_WIDTH`` (1) input channels, i.e. the
    depthwise convolution with a depth multiplier, else "split": ``experiments/bench_grouped.py``
    found "split" the fastest at every wider group but one, and "taps" at one channel per group
    (``docs/design/lowerings.md``).
    """
    if jax.default_backend() != "cpu":
        return "xla"
    return "taps" if groups > 1 and channels // groups <= _TAPS_MAX_GROUP_WIDTH else "split"
