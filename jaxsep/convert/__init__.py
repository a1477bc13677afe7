"""Weights from timm and torchvision, in jaxsep's models: see ``docs/convert.md``."""

from jaxsep.convert.files import load_state_dict as load_state_dict
