"""Model families built from :mod:`jaxsep.nn`, and their registry.

>>> from jaxsep import models
>>> models.list_models()
['mobilenet_v1', 'mobilenet_v2', 'shufflenet_v1']
>>> model = models.create("mobilenet_v1", variant="cifar", width_multiplier=0.25)

Train/eval mode is NNX's: ``model.train()`` (BatchNorm uses and updates batch statistics,
dropout is active; the state after construction) and ``model.eval()`` (running statistics,
no dropout).
"""

from jaxsep.models._saved import load as load, save as save
from jaxsep.models._registry import (
    create as create,
    list_models as list_models,
    register_model as register_model,
)
from jaxsep.models.blocks import (
    ConvNormAct as ConvNormAct,
    DepthwiseSeparableBlock as DepthwiseSeparableBlock,
    InvertedResidual as InvertedResidual,
    ShuffleUnit as ShuffleUnit,
    make_divisible as make_divisible,
)
from jaxsep.models.mobilenet_v1 import (
    MobileNetV1 as MobileNetV1,
    factorize_mobilenet_v1 as factorize_mobilenet_v1,
    mobilenet_v1 as mobilenet_v1,
)
from jaxsep.models.mobilenet_v2 import MobileNetV2 as MobileNetV2, mobilenet_v2 as mobilenet_v2
from jaxsep.models.shufflenet import ShuffleNetV1 as ShuffleNetV1, shufflenet_v1 as shufflenet_v1
