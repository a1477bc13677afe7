"""The old import path of :mod:`jaxsep._lowering.channel_matmul`, kept for code that imports it.

Importing it gives that module itself, so every name (and every attribute set) is the same.
"""

import sys

from jaxsep._lowering import channel_matmul as _target

sys.modules[__name__] = _target
