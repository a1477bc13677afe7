"""jaxsep: depthwise-separable, grouped and pointwise convolutions for JAX.

Importing jaxsep makes glibc's malloc keep freed host memory for reuse
(:func:`jaxsep.host_memory.reuse_host_memory`): XLA:CPU allocates a training step's temporaries
afresh on every call, and without it a plain ``jax.jit`` loop pays a page fault per 4 KiB
touched. It costs a resident set that stays at its peak and slower compiles (one malloc arena
for XLA's compiler threads; docs/performance.md). Set ``JAXSEP_REUSE_HOST_MEMORY=0`` before
the import to leave malloc alone.
"""

from jaxsep import host_memory as _host_memory

# Before any JAX computation of this package: threads that have already allocated keep their
# own arenas. Process-wide, as the docstring above says; see docs/performance.md.
_host_memory.reuse_host_memory_from_env()

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
