"""Weights from timm and torchvision in jaxsep's models, checked to the logit.

>>> from jaxsep import convert
>>> state = convert.load_state_dict("model.safetensors")  # doctest: +SKIP
>>> model = convert.from_timm("mobilenetv2_100", state)   # doctest: +SKIP

How to convert, which names, what differs between the sources and how parity is tested:
``docs/convert.md``.
"""

from jaxsep.convert.api import (
    Converted as Converted,
    convert_source as convert_source,
    from_timm as from_timm,
    from_torchvision as from_torchvision,
    save as save,
    source_names as source_names,
)
from jaxsep.convert.files import load_state_dict as load_state_dict
