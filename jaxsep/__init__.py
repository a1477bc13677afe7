"""jaxsep: depthwise-separable, grouped and pointwise convolutions for JAX."""

from jaxsep.ops import (
    channel_shuffle as channel_shuffle,
    conv as conv,
    depthwise_conv as depthwise_conv,
    grouped_conv as grouped_conv,
    pointwise_conv as pointwise_conv,
    separable_conv as separable_conv,
)
from jaxsep.algebra import (
    factorize_conv as factorize_conv,
    fuse_separable as fuse_separable,
)
from jaxsep import cost as cost
from jaxsep import nn as nn, models as models
from jaxsep.summary import summary as summary
from jaxsep.xla_options import compiler_options as compiler_options
from jaxsep._lowering.autotune import autotune as autotune, set_autotune as set_autotune

__version__ = "0.1.0"
