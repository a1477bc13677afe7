"""Model families built from :mod:`jaxsep.nn`, and their registry.

>>> from jaxsep import models
>>> models.list_models()[:3]
['efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2']
>>> model = models.create("mobilenet_v1", variant="cifar", width_multiplier=0.25)

Families: MobileNetV1, MobileNetV2, ShuffleNet (v1), MobileNetV3 (large, small),
EfficientNet B0-B7 and Lite0-4, ShuffleNetV2. Every model takes ``variant``, ``num_classes``,
``width_multiplier``, ``padding``, ``bn_epsilon`` and ``bn_momentum``; with the right values
they are torchvision's and timm's models layer for layer (``docs/models.md``).

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
from jaxsep.models.mobilenet_v3 import (
    MobileNetV3 as MobileNetV3,
    mobilenet_v3_large as mobilenet_v3_large,
    mobilenet_v3_small as mobilenet_v3_small,
)
from jaxsep.models.efficientnet import (
    EfficientNet as EfficientNet,
    efficientnet_b0 as efficientnet_b0,
    efficientnet_b1 as efficientnet_b1,
    efficientnet_b2 as efficientnet_b2,
    efficientnet_b3 as efficientnet_b3,
    efficientnet_b4 as efficientnet_b4,
    efficientnet_b5 as efficientnet_b5,
    efficientnet_b6 as efficientnet_b6,
    efficientnet_b7 as efficientnet_b7,
    efficientnet_lite0 as efficientnet_lite0,
    efficientnet_lite1 as efficientnet_lite1,
    efficientnet_lite2 as efficientnet_lite2,
    efficientnet_lite3 as efficientnet_lite3,
    efficientnet_lite4 as efficientnet_lite4,
)
from jaxsep.models.shufflenet_v2 import (
    ShuffleNetV2 as ShuffleNetV2,
    ShuffleUnitV2 as ShuffleUnitV2,
    shufflenet_v2 as shufflenet_v2,
)
