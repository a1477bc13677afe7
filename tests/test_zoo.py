"""Tests for the model zoo's newer families (MobileNetV3, EfficientNet(-Lite), ShuffleNetV2):
counts pinned to the sources', structure, options, bad configuration.

The pinned counts need no torch. ``-m parity`` recomputes them from torchvision and timm (on
PyTorch's "meta" device: nothing is allocated or computed).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxsep import cost, models
from jaxsep.models import efficientnet, mobilenet_v3
from jaxsep.models.shufflenet_v2 import STAGE_CHANNELS as SHUFFLENET_V2_CHANNELS

NEW_MODELS = (
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnet_lite{i}" for i in range(5)),
    "shufflenet_v2",
)


@functools.lru_cache(maxsize=None)
def _abstract(name, kwargs):
    return nnx.eval_shape(lambda: models.create(name, **dict(kwargs)))


def abstract(name, **kwargs):
    """The model's structure, nothing allocated (cached: construction traces every
    initializer, about 1 s for B0 and 15 s for B7)."""
    return _abstract(name, tuple(sorted(kwargs.items())))


def n_params(model) -> int:
    return cost.count_params(nnx.state(model, nnx.Param))


def _eval_apply(model):
    graphdef, state = nnx.split(model)

    def apply(state, x):
        copy = nnx.merge(graphdef, state)
        copy.eval()
        return copy(x)

    return apply, state


def eval_macs(model, shape):
    """Multiply-adds of the eval-mode model on an input of ``shape``."""
    apply, state = _eval_apply(model)
    return cost.count_macs(apply, state, jax.ShapeDtypeStruct(shape, jnp.float32)).total


def eval_shape(model, shape):
    """The eval-mode model's output struct on an input of ``shape``."""
    apply, state = _eval_apply(model)
    return jax.eval_shape(apply, state, jax.ShapeDtypeStruct(shape, jnp.float32))


# --------------------------------------------------------------------------- pinned counts

# (name, kwargs, parameters, multiply-adds for one image, resolution, source, source kwargs)
# Sources: "tv:NAME" is torchvision.models.NAME(**source kwargs), "timm:NAME" timm's model.
# The multiply-adds are what torch.utils.flop_counter counts (its FLOPs / 2): every
# convolution and matrix-product MAC, squeeze-excite's 1x1 layers included; torchvision
# documents them as "GFLOPS" (0.217 for mobilenet_v3_large, 0.386 for efficientnet_b0).
_TIMM_V3 = {"scaling": "timm", "bn_epsilon": 1e-5, "bn_momentum": 0.9}
COUNTS = [
    ("mobilenet_v3_large", {}, 5_483_032, 216_589_760, 224, "tv:mobilenet_v3_large", {}),
    ("mobilenet_v3_large", {"width_multiplier": 0.75}, 3_377_576, 140_033_816, 224,
     "tv:mobilenet_v3_large", {"width_mult": 0.75}),
    ("mobilenet_v3_large", {"width_multiplier": 0.75, **_TIMM_V3}, 3_993_528, 154_560_624, 224,
     "timm:mobilenetv3_large_075", {}),
    ("mobilenet_v3_large", _TIMM_V3, 5_483_032, 216_589_760, 224,
     "timm:mobilenetv3_large_100", {}),
    ("mobilenet_v3_small", {}, 2_542_856, 56_510_400, 224, "tv:mobilenet_v3_small", {}),
    ("mobilenet_v3_small", {"width_multiplier": 0.5}, 917_264, 18_970_736, 224,
     "tv:mobilenet_v3_small", {"width_mult": 0.5}),
    ("mobilenet_v3_small", {"width_multiplier": 0.5, **_TIMM_V3}, 1_593_224, 24_188_688, 224,
     "timm:mobilenetv3_small_050", {}),
    ("mobilenet_v3_small", {"width_multiplier": 0.75, **_TIMM_V3}, 2_041_872, 43_399_344, 224,
     "timm:mobilenetv3_small_075", {}),
    ("mobilenet_v3_small", _TIMM_V3, 2_542_856, 56_510_400, 224,
     "timm:mobilenetv3_small_100", {}),
    ("efficientnet_b0", {}, 5_288_548, 385_814_752, 224, "tv:efficientnet_b0", {}),
    ("efficientnet_b1", {}, 7_794_184, 686_802_832, 240, "tv:efficientnet_b1", {}),
    ("efficientnet_b2", {}, 9_109_994, 993_561_872, 260, "tv:efficientnet_b2", {}),
    ("efficientnet_b3", {}, 12_233_232, 1_827_141_392, 300, "tv:efficientnet_b3", {}),
    ("efficientnet_b4", {}, 19_341_616, 4_393_771_024, 380, "tv:efficientnet_b4", {}),
    ("efficientnet_b5", {}, 30_389_784, 10_266_384_752, 456, "tv:efficientnet_b5", {}),
    ("efficientnet_b6", {}, 43_040_704, 19_067_593_536, 528, "tv:efficientnet_b6", {}),
    ("efficientnet_b7", {}, 66_347_960, 37_745_884_192, 600, "tv:efficientnet_b7", {}),
    ("efficientnet_lite0", {}, 4_652_008, 385_187_552, 224, "timm:efficientnet_lite0", {}),
    ("efficientnet_lite1", {}, 5_416_680, 600_185_232, 240, "timm:tf_efficientnet_lite1", {}),
    ("efficientnet_lite2", {}, 6_092_072, 859_736_272, 260, "timm:tf_efficientnet_lite2", {}),
    ("efficientnet_lite3", {}, 8_197_096, 1_383_321_872, 280, "timm:tf_efficientnet_lite3", {}),
    ("efficientnet_lite4", {}, 13_006_568, 2_553_034_336, 300, "timm:tf_efficientnet_lite4", {}),
    ("shufflenet_v2", {"width_multiplier": 0.5}, 1_366_792, 40_476_448, 224,
     "tv:shufflenet_v2_x0_5", {}),
    ("shufflenet_v2", {}, 2_278_604, 144_907_992, 224, "tv:shufflenet_v2_x1_0", {}),
    ("shufflenet_v2", {"width_multiplier": 1.5}, 3_503_624, 295_759_392, 224,
     "tv:shufflenet_v2_x1_5", {}),
    ("shufflenet_v2", {"width_multiplier": 2.0}, 7_393_996, 583_253_464, 224,
     "tv:shufflenet_v2_x2_0", {}),
    # The older families against the same sources.
    ("mobilenet_v2", {}, 3_504_872, 300_774_272, 224, "tv:mobilenet_v2", {}),
    ("mobilenet_v2", {"width_multiplier": 0.5}, 1_968_680, 97_131_840, 224,
     "timm:mobilenetv2_050", {}),
    ("mobilenet_v2", {"width_multiplier": 1.4}, 6_108_776, 582_195_824, 224,
     "timm:mobilenetv2_140", {}),
    ("mobilenet_v2", {"width_multiplier": 0.35}, 1_677_128, 59_285_808, 224,
     "timm:mobilenetv2_035", {}),
    ("mobilenet_v2", {"width_multiplier": 0.75}, 2_636_424, 209_069_792, 224,
     "tv:mobilenet_v2", {"width_mult": 0.75}),
    ("mobilenet_v1", {}, 4_231_976, 568_740_352, 224, "timm:mobilenetv1_100", {}),
    # timm's builds of the same networks, with the options that make them exact (counts do not
    # depend on padding or BatchNorm settings; the layout does).
    ("mobilenet_v3_large", {**_TIMM_V3, "padding": "same", "bn_epsilon": 1e-3,
                            "bn_momentum": 0.99}, 5_483_032, 216_589_760, 224,
     "timm:tf_mobilenetv3_large_100", {}),
    ("efficientnet_b0", {"bn_epsilon": 1e-5}, 5_288_548, 385_814_752, 224,
     "timm:efficientnet_b0", {}),
    ("efficientnet_b0", {"padding": "same", "bn_epsilon": 1e-3, "bn_momentum": 0.99},
     5_288_548, 385_814_752, 224, "timm:tf_efficientnet_b0", {}),
    ("efficientnet_lite0", {"padding": "same", "bn_epsilon": 1e-3, "bn_momentum": 0.99},
     4_652_008, 385_187_552, 224, "timm:tf_efficientnet_lite0", {}),
]
# By default one case per family and width rule; the others (construction takes up to 15 s
# for B7, see abstract()) run with -m slow.
FAST_COUNTS = {
    "mobilenet_v3_large",
    "mobilenet_v3_small-width_multiplier=0.5-scaling=timm-bn_epsilon=1e-05-bn_momentum=0.9",
    "efficientnet_b0",
    "efficientnet_lite0",
    "shufflenet_v2",
    "mobilenet_v2",
}


def _count_case(case):
    name, kwargs, *_ = case
    label = "-".join([name, *(f"{k}={v}" for k, v in kwargs.items())])
    marks = [] if label in FAST_COUNTS else [pytest.mark.slow]
    return pytest.param(*case, id=label, marks=marks)


COUNT_CASES = [_count_case(case) for case in COUNTS]


@pytest.mark.parametrize("name,kwargs,params,macs,resolution,source,source_kwargs", COUNT_CASES)
def test_counts_equal_the_sources(name, kwargs, params, macs, resolution, source, source_kwargs):
    model = abstract(name, **kwargs)
    assert n_params(model) == params
    assert eval_macs(model, (1, resolution, resolution, 3)) == macs


@pytest.mark.parity
@pytest.mark.parametrize("name,kwargs,params,macs,resolution,source,source_kwargs", COUNT_CASES)
def test_pinned_counts_are_the_sources(name, kwargs, params, macs, resolution, source,
                                       source_kwargs):
    """torchvision's and timm's models (random weights, on the meta device) have the pinned
    parameters and, per torch.utils.flop_counter, twice the pinned multiply-adds as FLOPs."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    library, source_name = source.split(":")
    with torch.device("meta"):
        if library == "tv":
            torchvision = pytest.importorskip("torchvision")
            net = getattr(torchvision.models, source_name)(**source_kwargs)
        else:
            timm = pytest.importorskip("timm")
            net = timm.create_model(source_name, **source_kwargs)
        net.eval()
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(1, 3, resolution, resolution))
    assert sum(p.numel() for p in net.parameters()) == params
    assert counter.get_total_flops() == 2 * macs


# --------------------------------------------------------------------------- registry, shapes


def test_every_new_model_is_registered():
    assert set(NEW_MODELS) <= set(models.list_models())


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("mobilenet_v3_large", {"width_multiplier": 0.5}),
        ("mobilenet_v3_small", {"width_multiplier": 0.5}),
        ("efficientnet_b0", {"width_multiplier": 0.5}),
        ("shufflenet_v2", {"width_multiplier": 0.5}),  # Lite: EfficientNet's stem, same rule
    ],
)
def test_cifar_variants_end_at_4x4(name, kwargs):
    """Each family's CIFAR stem keeps 32x32 inputs to a 4x4 last map, as MobileNetV2's and
    ShuffleNetV1's CIFAR ports do (stem at stride 1, and the first stride-2 stage at stride 1,
    or ShuffleNet's max pool dropped)."""
    model = abstract(name, variant="cifar", **kwargs)
    graphdef, state = nnx.split(model)

    def last_map(state, x):
        m = nnx.merge(graphdef, state)
        x = m.stem(x)  # CIFAR: no max pool in between
        for block in m.blocks:
            x = block(x)
        return m.head(x)

    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(last_map, state, x).shape[1:3] == (4, 4)
    assert eval_shape(model, (2, 32, 32, 3)).shape == (2, 10) and model.num_classes == 10


# --------------------------------------------------------------------------- MobileNetV3


def blocks_of(model):
    return list(model.blocks)


def test_mobilenet_v3_large_follows_the_papers_table():
    model = abstract("mobilenet_v3_large")
    blocks = blocks_of(model)
    assert len(blocks) == 15 and model.stem.out_features == 16
    assert [b.depthwise.conv.kernel_size[0] for b in blocks] == [r[0] for r in mobilenet_v3.STAGES["large"]]
    assert [b.hidden_features for b in blocks] == [r[1] for r in mobilenet_v3.STAGES["large"]]
    assert [b.se is not None for b in blocks] == [r[4] for r in mobilenet_v3.STAGES["large"]]
    assert blocks[3].se.squeeze_features == 24  # make_divisible(72 / 4, 8)
    assert blocks[3].se.activation is jax.nn.relu and blocks[3].se.gate is jax.nn.hard_sigmoid
    assert blocks[0].depthwise.activation is jax.nn.relu
    assert blocks[-1].depthwise.activation is jax.nn.hard_swish
    assert blocks[0].expand is None and blocks[0].use_residual  # 16 -> 16, no expansion
    assert model.head.out_features == 960 and model.pre_logits.out_features == 1280
    assert model.stem.activation is jax.nn.hard_swish
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    assert {(n.epsilon, n.momentum) for n in norms} == {(1e-3, 0.99)}  # torchvision's
    assert model.dropout.rate == 0.2 and model.padding == "symmetric"


def test_mobilenet_v3_width_rules_of_torchvision_and_timm():
    """torchvision scales the table's expanded widths, the stem and the 1280 hidden layer;
    timm expands the scaled input by the table's ratio, keeps the 16-channel stem below 0.75
    and the hidden layer at 1280 (1024)."""
    tv = abstract("mobilenet_v3_small", width_multiplier=0.5)
    timm = abstract("mobilenet_v3_small", width_multiplier=0.5, **_TIMM_V3)
    assert (tv.stem.out_features, timm.stem.out_features) == (8, 16)
    assert (tv.num_features, timm.num_features) == (512, 1024)
    assert tv.blocks[2].hidden_features == 48  # make_divisible(88 * 0.5, 8)
    assert timm.blocks[2].hidden_features == 56  # make_divisible(16 * 3.67, 8)
    assert [b.out_features for b in tv.blocks] == [b.out_features for b in timm.blocks]


# --------------------------------------------------------------------------- EfficientNet


def test_efficientnet_compound_depth_scaling():
    """Repeats per stage: ceil(n * d) (torchvision's and timm's rule); Lite keeps its first and
    last stages' single block."""
    base = [n for *_, n in efficientnet.STAGES]
    for scale, (_, depth, _, _) in efficientnet.SCALES.items():
        want = [math.ceil(n * depth) for n in base]
        if scale.startswith("lite"):
            want[0], want[-1] = 1, 1
        assert list(efficientnet.stage_repeats(depth, scale.startswith("lite"))) == want
    assert efficientnet.stage_repeats(3.1, False) == (4, 7, 7, 10, 10, 13, 4)  # B7: 55 blocks
    assert len(abstract("efficientnet_lite1").blocks) == 1 + 3 + 3 + 4 + 4 + 5 + 1


def test_efficientnet_b0_blocks():
    model = abstract("efficientnet_b0")
    blocks = blocks_of(model)
    assert len(blocks) == 16 and model.stem.out_features == 32 and model.num_features == 1280
    assert blocks[0].expand is None and blocks[0].se.squeeze_features == 8  # 32 // 4
    assert blocks[5].hidden_features == 240 and blocks[5].se.squeeze_features == 10  # 40 // 4
    assert blocks[5].depthwise.conv.kernel_size == (3, 3)
    assert blocks[3].depthwise.conv.kernel_size == (5, 5)
    assert blocks[5].se.activation is jax.nn.silu and blocks[5].se.gate is jax.nn.sigmoid
    assert model.stem.activation is jax.nn.silu
    # Stochastic depth: 0.2 * i / 16 on every residual block (torchvision's and timm's rule).
    for i, block in enumerate(blocks):
        if block.use_residual:
            assert block.drop_path.rate == pytest.approx(0.2 * i / 16)
        else:
            assert block.drop_path is None
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    assert {(n.epsilon, n.momentum) for n in norms} == {(1e-5, 0.9)}
    assert model.dropout.rate == 0.2 and model.default_resolution == 224


def test_efficientnet_per_scale_defaults():
    """Dropout and resolution follow the compound table; BatchNorm torchvision's settings
    (eps 1e-3, PyTorch momentum 0.01 for B5-B7); any of them can be overridden."""
    assert [efficientnet.SCALES[f"b{i}"][3] for i in range(8)] == [0.2, 0.2, 0.3, 0.3, 0.4, 0.4,
                                                                  0.5, 0.5]
    assert efficientnet.DEFAULT_BN["b5"] == (1e-3, 0.99) == efficientnet.DEFAULT_BN["b7"]
    assert efficientnet.DEFAULT_BN["b4"] == (1e-5, 0.9) == efficientnet.DEFAULT_BN["lite4"]
    model = abstract("efficientnet_lite2", variant="cifar", width_multiplier=0.5)
    assert model.dropout.rate == 0.3 and model.default_resolution == 32
    model = abstract("efficientnet_lite0", dropout_rate=0.0, bn_epsilon=1e-3, activation="silu")
    assert model.dropout.rate == 0.0 and model.stem.norm.epsilon == 1e-3
    assert model.stem.activation is jax.nn.silu


def test_efficientnet_lite_keeps_stem_head_and_drops_squeeze_excite():
    model = abstract("efficientnet_lite3")  # width 1.2: B3 would have 40 and 1536 channels
    assert model.stem.out_features == 32 and model.num_features == 1280
    assert all(b.se is None for b in model.blocks)
    assert model.stem.activation is jax.nn.relu6
    assert model.blocks[1].out_features == make_divisible_8(24 * 1.2)


def make_divisible_8(value):
    return models.make_divisible(value, 8)


def test_efficientnet_width_multiplier_is_on_top_of_the_coefficient():
    model = abstract("efficientnet_b0", width_multiplier=0.5)
    assert model.stem.out_features == 16 and model.num_features == 640
    assert sorted({b.out_features for b in model.blocks}) == [8, 16, 24, 40, 56, 96, 160]  # make_divisible(c * 0.5, 8)


# --------------------------------------------------------------------------- ShuffleNetV2


def test_shufflenet_v2_widths_pick_the_papers_rows():
    for width in (1.0, 2.0):  # the others: pinned counts
        stem, *stages, last = SHUFFLENET_V2_CHANNELS[width]
        model = abstract("shufflenet_v2", width_multiplier=width)
        assert model.stem.out_features == stem and model.num_features == last
        assert [model.blocks[i].out_features for i in (0, 4, 12)] == stages
    assert len(model.blocks) == 16 and model.use_max_pool
    assert not abstract("shufflenet_v2", variant="cifar").use_max_pool


# --------------------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    "name,kwargs,error,match",
    [
        ("shufflenet_v2", {"width_multiplier": 0.75}, ValueError,
         r"width_multiplier must be one of \(0.5, 1.0, 1.5, 2.0\), but got 0.75"),
        ("mobilenet_v3_large", {"scaling": "keras"}, ValueError,
         r"scaling must be one of \('torchvision', 'timm'\), but got 'keras'"),
        ("mobilenet_v3_small", {"size": "large"}, TypeError, "multiple values"),
        ("efficientnet_b0", {"drop_path_rate": 1.0}, ValueError,
         r"drop_path_rate must be in \[0, 1\), but got 1.0"),
        ("efficientnet_b0", {"activation": "gelu"}, ValueError, "activation must be one of"),
        ("efficientnet_lite0", {"padding": "valid"}, ValueError, "padding must be one of"),
        ("efficientnet_b0", {"bn_momentum": -0.1}, ValueError, "bn_momentum must be >= 0"),
        ("mobilenet_v3_large", {"width_multiplier": 0}, ValueError, "width_multiplier must be > 0"),
    ],
)
def test_bad_configuration_fails_at_construction(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        abstract(name, **kwargs)


def test_efficientnet_class_rejects_an_unknown_scale():
    with pytest.raises(ValueError, match=r"EfficientNet: scale must be one of \('b0'"):
        nnx.eval_shape(lambda: models.EfficientNet(scale="b8", rngs=nnx.Rngs(0)))
