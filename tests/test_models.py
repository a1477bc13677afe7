"""Tests for jaxsep.models: blocks, MobileNetV1/V2, ShuffleNet, the registry."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxsep
from jaxsep import models
from jaxsep.models import make_divisible

from conftest import materialize

MODELS = ("mobilenet_v1", "mobilenet_v2", "shufflenet_v1")
# The newer families (tests/test_zoo.py pins their counts); one name per family runs the
# compiled tests below.
ZOO_MODELS = (
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnet_lite{i}" for i in range(5)),
    "shufflenet_v2",
)
VARIANTS = {"cifar": 32, "imagenet": 224}  # variant -> its input resolution


def abstract(name, **kwargs):
    """The model's structure without allocating its parameters (cached: tracing the
    construction of a model takes about a second). The variant defaults to "imagenet", as in
    the models, spelled out so that equal models share a cache entry."""
    kwargs.setdefault("variant", "imagenet")
    return _abstract(name, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _abstract(name, kwargs):
    return nnx.eval_shape(lambda: models.create(name, **dict(kwargs)))


def n_params(model) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def out_struct(model, shape, dtype=jnp.float32):
    """The abstract eval-mode output on an input of ``shape`` (``model`` is not changed)."""
    graphdef, state = nnx.split(model)

    def apply(state, x):
        copy = nnx.merge(graphdef, state)
        copy.eval()
        return copy(x)

    return jax.eval_shape(apply, state, jax.ShapeDtypeStruct(shape, dtype))


# --------------------------------------------------------------------------- registry


def test_registry():
    assert models.list_models() == sorted(MODELS + ZOO_MODELS)
    assert nnx.eval_shape(lambda: models.create("mobilenet_v1")).variant == "imagenet"
    with pytest.raises(ValueError, match=r"model must be one of \['efficientnet_b0'"):
        models.create("resnet50")
    model = abstract("mobilenet_v1", variant="cifar", width_multiplier=0.25)
    assert isinstance(model, models.MobileNetV1) and model.num_classes == 10
    assert isinstance(abstract("mobilenet_v2"), models.MobileNetV2)
    assert abstract("shufflenet_v1").groups == 3  # the paper's default g


def test_register_model_rejects_a_second_model_of_the_same_name():
    def mobilenet_v1(**kwargs):
        return None

    with pytest.raises(ValueError, match="already registered"):
        models.register_model(mobilenet_v1)


# --------------------------------------------------------------------------- widths


class _Tiny(nnx.Module):
    """Small enough to build eagerly in a test: a depthwise conv, a classifier, dropout."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.depthwise = jaxsep.nn.DepthwiseConv(4, (3, 3), rngs=rngs)
        self.classifier = nnx.Linear(4, 3, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)


def test_create_initializes_in_one_program_with_the_eager_values():
    from jaxsep.models._registry import initialize

    eager_rngs, rngs = nnx.Rngs(params=3, dropout=4), nnx.Rngs(params=3, dropout=4)
    eager, built = _Tiny(rngs=eager_rngs), initialize(_Tiny, rngs)
    want, got = nnx.state(eager), nnx.state(built)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        # The same random bits; the samplers' float transforms (erf_inv, scaling) compiled in one
        # program may round differently from op-by-op ones: float32 ulps, no more.
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
    # The caller's Rngs advanced as eager construction advances it.
    np.testing.assert_array_equal(rngs.params.count[...], eager_rngs.params.count[...])
    # Inside a trace nothing is compiled: the build just runs (abstractly here).
    abstract = nnx.eval_shape(lambda: initialize(_Tiny, nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)


def test_make_divisible_is_the_reference_rounding():
    # (value, divisor) -> the TensorFlow reference's _make_divisible
    cases = {(32 * 0.35, 8): 16, (32 * 0.5, 8): 16, (24 * 0.75, 8): 24, (1280 * 1.4, 8): 1792,
             (96 * 1.4, 8): 136, (160 * 0.35, 8): 56, (12, 3): 12, (100, 8): 104}
    for (value, divisor), want in cases.items():
        assert make_divisible(value, divisor) == want, (value, divisor)


def test_head_widths_follow_each_papers_rule():
    # V1: the last layer and the classifier's input scale with alpha (1024 * alpha).
    for width, want in [(0.25, 256), (0.5, 512), (1.0, 1024)]:
        assert abstract("mobilenet_v1", width_multiplier=width).num_features == want
    # V2: 1280 is kept below alpha 1 and scaled above it.
    for width, want in [(0.5, 1280), (1.0, 1280), (1.4, 1792)]:
        assert abstract("mobilenet_v2", width_multiplier=width).num_features == want
    assert abstract("shufflenet_v1", width_multiplier=0.5).num_features == 480


def test_cifar_variants_keep_resolution_longer():
    """The CIFAR stems have stride 1 (V2 also its 24-channel stage): the last map is 4x4 for
    V2 and ShuffleNet, 2x2 for V1, from 32x32 inputs."""
    for name, last in [("mobilenet_v1", 2), ("mobilenet_v2", 4), ("shufflenet_v1", 4)]:
        model = abstract(name, variant="cifar", width_multiplier=0.5)
        features = model.head if name == "mobilenet_v2" else model.blocks[-1]

        def body(m, x):
            x = m.stem(x)
            for block in m.blocks:
                x = block(x)
            return x if name != "mobilenet_v2" else m.head(x)

        graphdef, state = nnx.split(model)
        shape = jax.eval_shape(
            lambda s, x: body(nnx.merge(graphdef, s), x),
            state,
            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
        ).shape
        assert shape == (1, last, last, features.out_features), name


# --------------------------------------------------------------------------- parameter counts

V1_LAYERS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def v1_params(width=1.0, num_classes=1000, conv="separable", groups=None, shallow=False):
    """By hand: kernels, BatchNorm scale + bias per channel, classifier weights + bias."""
    depth = lambda c: max(int(c * width), 8)  # noqa: E731  TF-slim's rounding
    channels = [depth(c) for i, c in enumerate(V1_LAYERS) if not (shallow and 6 <= i <= 10)]
    c_in = depth(32)
    total = 3 * 3 * 3 * c_in + 2 * c_in
    for c_out in channels:
        if conv == "standard":
            total += 9 * c_in * c_out + 2 * c_out
        elif conv == "factorized":  # depthwise (C*M) + pointwise (C*M -> O), BN on O only
            total += 9 * c_in * groups + c_in * groups * c_out + 2 * c_out
        else:
            g = c_in if conv == "separable" else groups
            total += 9 * (c_in // g) * c_in + 2 * c_in + c_in * c_out + 2 * c_out
        c_in = c_out
    return total + c_in * num_classes + num_classes


V2_STAGES = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))


def v2_params(width=1.0, num_classes=1000):
    c_in = make_divisible(32 * width)
    total = 27 * c_in + 2 * c_in
    for t, c, n in V2_STAGES:
        c_out = make_divisible(c * width)
        for _ in range(n):
            hidden = c_in * t
            if t != 1:
                total += c_in * hidden + 2 * hidden
            total += 9 * hidden + 2 * hidden + hidden * c_out + 2 * c_out
            c_in = c_out
    head = make_divisible(1280 * max(1.0, width))
    return total + c_in * head + 2 * head + head * num_classes + num_classes


SHUFFLE_STAGES = {1: (144, 288, 576), 3: (240, 480, 960), 8: (384, 768, 1536)}


def shufflenet_params(groups=3, width=1.0, num_classes=1000):
    c_in = make_divisible(24 * width, groups)
    total = 27 * c_in + 2 * c_in
    for stage, c in enumerate(SHUFFLE_STAGES[groups]):
        c_out = make_divisible(c * width, 4 * groups)
        mid = c_out // 4
        for i in range((4, 8, 4)[stage]):
            g1 = 1 if stage == 0 and i == 0 else groups
            branch = c_out - c_in if i == 0 else c_out
            total += (c_in // g1) * mid + 2 * mid  # grouped 1x1 + BN
            total += 9 * mid + 2 * mid  # depthwise 3x3 + BN
            total += (mid // groups) * branch + 2 * branch  # grouped 1x1 + BN
            c_in = c_out
    return total + c_in * num_classes + num_classes


# Output shapes: every model, variant and width (abstractly: nothing is allocated or compiled).
FAST_WIDTHS = (0.25, 0.5, 1.0)
SLOW_WIDTHS = (0.75, 1.4)


def _check_output_shape(name, variant, width):
    """Output shape and dtype, and the parameter count by hand (the formulas below)."""
    model = abstract(name, variant=variant, width_multiplier=width)
    res = VARIANTS[variant]
    num_classes = 10 if variant == "cifar" else 1000
    out = out_struct(model, (2, res, res, 3))
    assert out.shape == (2, num_classes)
    assert out.dtype == jnp.float32
    formula = {"mobilenet_v1": v1_params, "mobilenet_v2": v2_params}.get(name)
    want = formula(width, num_classes) if formula else shufflenet_params(3, width, num_classes)
    assert n_params(model) == want


@pytest.mark.parametrize("width", FAST_WIDTHS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name, variant, width):
    _check_output_shape(name, variant, width)


@pytest.mark.slow
@pytest.mark.parametrize("width", SLOW_WIDTHS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", MODELS)
def test_output_shape_more_widths(name, variant, width):
    _check_output_shape(name, variant, width)


PARAM_CASES = [
    # (model, kwargs, exact count, formula)
    ("mobilenet_v1", {}, 4_231_976, v1_params()),  # = Keras' MobileNet (trainable)
    ("mobilenet_v1", {"width_multiplier": 0.5}, 1_331_592, v1_params(0.5)),
    ("mobilenet_v1", {"conv": "standard"}, 29_294_088, v1_params(conv="standard")),
    ("mobilenet_v1", {"shallow": True}, 2_887_976, v1_params(shallow=True)),
    ("mobilenet_v1", {"conv": "grouped", "groups": 4}, None, v1_params(conv="grouped", groups=4)),
    ("mobilenet_v1", {"conv": "factorized", "depth_multiplier": 2}, None,
     v1_params(conv="factorized", groups=2)),
    ("mobilenet_v1", {"variant": "cifar"}, 3_217_226, v1_params(num_classes=10)),
    ("mobilenet_v2", {}, 3_504_872, v2_params()),  # = torchvision's mobilenet_v2
    ("mobilenet_v2", {"width_multiplier": 1.4}, None, v2_params(1.4)),
    ("mobilenet_v2", {"variant": "cifar"}, 2_236_682, v2_params(num_classes=10)),
    ("shufflenet_v1", {}, 1_865_728, shufflenet_params()),
    ("shufflenet_v1", {"groups": 8}, None, shufflenet_params(8)),
    ("shufflenet_v1", {"groups": 1, "width_multiplier": 0.5}, None, shufflenet_params(1, 0.5)),
    ("shufflenet_v1", {"variant": "cifar"}, 914_338, shufflenet_params(num_classes=10)),
]


@pytest.mark.parametrize(
    "name,kwargs,exact,formula",
    PARAM_CASES,
    ids=[
        "-".join([name, *(f"{k}={v}" for k, v in kw.items())]) for name, kw, *_ in PARAM_CASES
    ],
)
def test_parameter_counts_are_pinned(name, kwargs, exact, formula):
    count = n_params(abstract(name, **kwargs))
    assert count == formula
    if exact is not None:
        assert count == exact


def test_parameter_counts_match_the_papers():
    """MobileNet Tables 4, 5 and 6; MobileNetV2's TF reference (3.47 M, the paper's "3.4 M").

    The papers count convolution and fully connected weights, not BatchNorm's scale and bias.
    """
    paper = [
        ("mobilenet_v1", {}, 4.2e6),
        ("mobilenet_v1", {"conv": "standard"}, 29.3e6),
        ("mobilenet_v1", {"width_multiplier": 0.75}, 2.6e6),
        ("mobilenet_v1", {"width_multiplier": 0.5}, 1.3e6),
        ("mobilenet_v1", {"shallow": True}, 2.9e6),
        ("mobilenet_v2", {}, 3.47e6),
        ("mobilenet_v2", {"width_multiplier": 1.4}, 6.06e6),
    ]
    for name, kwargs, want in paper:
        model = abstract(name, **kwargs)
        norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
        weights = n_params(model) - sum(n_params(m) for m in norms)
        assert weights == pytest.approx(want, rel=0.02), (name, kwargs)


# --------------------------------------------------------------------------- jit, grad, modes


# Depthwise impl of the small models: "xla", whose train step compiles in a third of the time
# of the taps lowering's (4 s against 12 s for MobileNetV1 here). The impls are compared
# against each other in the ops tests, and a whole model trains with the default ("auto": the
# taps lowering on CPU) in the harness's reference run (conftest.reference_run).
SMALL_IMPL = {"mobilenet_v1": "xla", "mobilenet_v2": "xla", "shufflenet_v1": "xla"}
# The newer families, one name each, at their smallest CIFAR width. A training step compiles
# in 10-25 s on two cores, so by default only MobileNetV3-Small and EfficientNet-B0 run the
# forward test, the rest with -m slow (tests/test_model_layers.py checks the gradients of
# their blocks quickly).
ZOO_SMALL = {
    "mobilenet_v3_small": {"width_multiplier": 0.5},
    "mobilenet_v3_large": {"width_multiplier": 0.5},
    # drop_path_rate=0: a branch dropped for the whole batch (p ~ 0.2^2 per block) would get a
    # zero gradient; stochastic depth is tested in tests/test_model_layers.py.
    "efficientnet_b0": {"width_multiplier": 0.5, "drop_path_rate": 0.0},
    "efficientnet_lite0": {"width_multiplier": 0.5, "drop_path_rate": 0.0},
    "shufflenet_v2": {"width_multiplier": 0.5},
}


def compiled(*fast):
    """Every model, all but MobileNetV1 and ``fast`` marked slow: a compile of each costs
    10-25 s on two cores, and the fast suite keeps one of each kind (the other old models'
    blocks are covered by the ops, nn and shape tests; CI runs the rest with -m slow)."""
    keep = ("mobilenet_v1", *fast)
    return [
        pytest.param(n, marks=[] if n in keep else [pytest.mark.slow])
        for n in (*MODELS, *ZOO_SMALL)
    ]


@functools.lru_cache(maxsize=None)
def small_model(name):
    """One real, small model per name (CIFAR stem, width 0.25 or the family's smallest),
    built once."""
    if name in ZOO_SMALL:
        kwargs = dict(variant="cifar", impl="xla", **ZOO_SMALL[name])
    else:
        kwargs = dict(variant="cifar", width_multiplier=0.25, impl=SMALL_IMPL[name])
    # materialize: eager construction would compile a sampler per parameter shape.
    return materialize(nnx.eval_shape(lambda: models.create(name, **kwargs)))


def batch():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    return x, jnp.array([3, 7])


@pytest.mark.parametrize("name", compiled("mobilenet_v3_small", "efficientnet_b0"))
def test_jitted_forward_eval_mode_and_vmap(name):
    """Eval mode: a jitted pure function of the split state leaves BatchNorm statistics alone,
    and (for one model, to spare compiles) jax.vmap over a batch of inputs matches the batched
    call."""
    model = nnx.clone(small_model(name))
    model.eval()
    graphdef, state = nnx.split(model)

    def apply(state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m, nnx.BatchStat)

    x, _ = batch()
    logits, stats = jax.jit(apply)(state, x)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    jax.tree.map(np.testing.assert_array_equal, stats, nnx.state(model, nnx.BatchStat))

    if name != "mobilenet_v1":
        return
    per_example, _ = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(state, x[:, None])
    np.testing.assert_allclose(per_example[:, 0], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", compiled())
def test_jitted_gradient_step_train_mode(name):
    """Train mode: finite loss, every parameter gets a nonzero gradient, the step changes the
    parameters and BatchNorm's running statistics."""
    model = nnx.clone(small_model(name))
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    params_before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    loss, grads = train_step(model, optimizer, *batch())
    assert np.isfinite(float(loss))
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == len(jax.tree.leaves(params_before))
    for path, g in flat:
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        assert np.any(g != 0), f"zero gradient for {jax.tree_util.keystr(path)}"
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), params_before, nnx.state(model, nnx.Param)
    )
    assert all(jax.tree.leaves(changed))
    moved = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), stats_before, nnx.state(model, nnx.BatchStat)
    )
    assert all(jax.tree.leaves(moved))


def test_train_and_eval_modes_reach_batchnorm_and_dropout():
    model = nnx.eval_shape(
        lambda: models.create("mobilenet_v2", variant="cifar", width_multiplier=0.25)
    )
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    assert norms and all(n.momentum == 0.9 and n.epsilon == 1e-5 for n in norms)  # PyTorch's
    assert not norms[0].use_running_average and not model.dropout.deterministic  # built in train
    model.eval()
    assert all(n.use_running_average for n in norms) and model.dropout.deterministic
    model.train()
    assert not any(n.use_running_average for n in norms) and not model.dropout.deterministic
    assert model.dropout.rate == 0.2  # torchvision's MobileNetV2


def test_bfloat16_compute_with_float32_params():
    model = abstract("mobilenet_v1", variant="cifar", width_multiplier=0.25, dtype=jnp.bfloat16)
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    assert out_struct(model, (2, 32, 32, 3)).dtype == jnp.bfloat16


def test_blocks():
    def build(cls, *args, **kwargs):
        return nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))

    block = build(models.InvertedResidual, 16, 16, expand_ratio=6)
    assert block.use_residual and block.expand.out_features == 96
    block = build(models.InvertedResidual, 16, 24, strides=2, expand_ratio=1)
    assert not block.use_residual and block.expand is None
    unit = build(models.ShuffleUnit, 24, 240, groups=3, strides=2, first_grouped=False)
    assert unit.gconv1.conv.kernel.shape == (24, 60)  # dense first 1x1 (pointwise layout)
    assert unit.gconv2.conv.kernel.shape == (1, 1, 20, 216)  # grouped: 60 / 3 in, 240 - 24 out
    assert out_struct(unit, (1, 8, 8, 24)).shape == (1, 4, 4, 240)
    block = build(models.DepthwiseSeparableBlock, 32, 64, strides=2)
    assert block.spatial.conv.kernel.shape == (3, 3, 1, 32)
    assert block.pointwise.conv.kernel.shape == (32, 64)
    assert out_struct(block, (1, 8, 8, 32)).shape == (1, 4, 4, 64)
    # The grouped convolutions get blocks.grouped_impl of the model's impl: "xla" stays, the
    # fast ones become "auto" (grouped "taps" forced on wide groups would unroll per channel).
    unit = build(models.ShuffleUnit, 24, 24, groups=3, impl="taps")
    assert (unit.gconv1.conv.impl, unit.gconv2.conv.impl, unit.depthwise.conv.impl) == (
        "auto", "auto", "taps"
    )
    unit = build(models.ShuffleUnit, 24, 24, groups=3, impl="xla")
    assert (unit.gconv1.conv.impl, unit.gconv2.conv.impl) == ("xla", "xla")
    block = build(models.DepthwiseSeparableBlock, 32, 64, groups=4, impl="taps")
    assert block.spatial.conv.groups == 4 and block.spatial.conv.impl == "auto"


# --------------------------------------------------------------------------- common options


def batch_norms(model):
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


@pytest.mark.parametrize("name", MODELS)
def test_layer_options_reach_every_layer(name):
    """padding picks each 3x3 convolution's padding; bn_epsilon/bn_momentum every BatchNorm's;
    the defaults stay TF "SAME" and PyTorch's BatchNorm settings."""
    default = abstract(name, variant="cifar", width_multiplier=0.25)
    model = abstract(
        name, variant="cifar", width_multiplier=0.25, padding="symmetric", bn_epsilon=1e-3,
        bn_momentum=0.99,
    )
    assert all(n.epsilon == 1e-5 and n.momentum == 0.9 for n in batch_norms(default))
    assert all(n.epsilon == 1e-3 and n.momentum == 0.99 for n in batch_norms(model))
    spatial = lambda m: [  # noqa: E731
        c.padding for _, c in nnx.iter_modules(m)
        if hasattr(c, "kernel_size") and max(c.kernel_size) > 1
    ]
    assert set(spatial(default)) == {"SAME"} and set(spatial(model)) == {1}
    assert (model.padding, model.bn_epsilon, model.bn_momentum) == ("symmetric", 1e-3, 0.99)


def test_symmetric_padding_differs_from_same_only_at_stride_2_on_even_inputs():
    """The same weights: equal logits on a 33x33 input (every stride-2 layer sees an odd size:
    33, 17, 9), different ones on 32x32 (TF pads (0, 1) there, PyTorch (1, 1))."""
    kwargs = dict(variant="cifar", width_multiplier=0.25, impl="xla")
    same = materialize(nnx.eval_shape(lambda: models.create("mobilenet_v2", **kwargs)))
    symmetric = nnx.eval_shape(lambda: models.create("mobilenet_v2", padding="symmetric", **kwargs))
    symmetric = nnx.merge(nnx.graphdef(symmetric), nnx.state(same))
    for m in (same, symmetric):
        m.eval()
    def gap(size):  # relative: fresh weights give logits of about 1e-6
        x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
        want = logits(same, x)
        return float(jnp.max(jnp.abs(logits(symmetric, x) - want)) / jnp.max(jnp.abs(want)))

    assert gap(33) < 1e-5
    assert gap(32) > 1e-2


def test_mobilenet_v1_activation_option():
    """ReLU by default (the paper's); "relu6" (timm's mobilenetv1_100) in every layer."""
    assert abstract("mobilenet_v1").stem.activation is jax.nn.relu
    model = abstract("mobilenet_v1", activation="relu6")
    acts = {m.activation for _, m in nnx.iter_modules(model) if isinstance(m, models.ConvNormAct)}
    assert acts == {jax.nn.relu6} and model.activation == "relu6"


# --------------------------------------------------------------------------- factorization


@functools.lru_cache(maxsize=None)
def trained_looking_standard_v1():
    """A width-0.125 CIFAR "standard" MobileNetV1 in eval mode with non-trivial BatchNorm
    statistics and a classifier scaled up, so that its logits are O(1) and differ by input."""
    model = materialize(nnx.eval_shape(lambda: models.create(
        "mobilenet_v1", variant="cifar", width_multiplier=0.125, conv="standard")))
    rng = np.random.default_rng(0)
    for layer in [model.stem, *model.blocks]:
        size = layer.norm.mean.shape[0]
        layer.norm.mean[...] = jnp.asarray(rng.normal(0, 0.1, size), jnp.float32)
        layer.norm.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size), jnp.float32)
        layer.norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, size), jnp.float32)
        layer.norm.bias[...] = jnp.asarray(rng.normal(0, 0.1, size), jnp.float32)
    model.classifier.kernel[...] = model.classifier.kernel[...] * 100
    model.eval()
    return model


@jax.jit
def _logits(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def logits(model, x):
    return _logits(*nnx.split(model), x)


def test_factorize_mobilenet_v1_is_exact_at_full_rank():
    """M >= min(9, O) keeps every 3x3 kernel exactly: the converted model computes the same
    function (eval mode), with the BatchNorm statistics, stem and classifier carried over."""
    model = trained_looking_standard_v1()
    converted, errors = models.factorize_mobilenet_v1(model, 9)
    assert converted.conv == "factorized" and converted.depth_multiplier == 9
    assert len(errors) == 13 and max(errors) < 1e-5
    assert converted.blocks[0].norm.use_running_average  # eval mode, as the source
    block = converted.blocks[1]  # 8 -> 16 channels, stride 2
    assert block.conv.depthwise_kernel.shape == (3, 3, 1, 8 * 9)
    assert block.conv.pointwise_kernel.shape == (8 * 9, 16)
    assert block.conv.strides == (2, 2)
    np.testing.assert_array_equal(block.norm.var[...], model.blocks[1].norm.var[...])
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    want = logits(model, x)
    assert float(jnp.std(want)) > 0.1  # a meaningful comparison
    np.testing.assert_allclose(logits(converted, x), want, rtol=1e-4, atol=1e-4)
    assert n_params(converted) == v1_params(0.125, 10, conv="factorized", groups=9)


def test_factorize_mobilenet_v1_keeps_the_layer_options():
    model = materialize(nnx.eval_shape(lambda: models.create(
        "mobilenet_v1", variant="cifar", width_multiplier=0.125, conv="standard",
        activation="relu6", padding="symmetric", bn_epsilon=1e-3, bn_momentum=0.99,
    )))
    converted, _ = models.factorize_mobilenet_v1(model, 1)
    assert (converted.activation, converted.padding) == ("relu6", "symmetric")
    assert converted.blocks[1].conv.padding == 1 and converted.blocks[1].activation is jax.nn.relu6
    assert all(n.epsilon == 1e-3 and n.momentum == 0.99 for n in batch_norms(converted))


@pytest.mark.slow  # factorizes and runs a standard MobileNetV1 three times (about 12 s)
def test_factorize_mobilenet_v1_error_falls_with_the_depth_multiplier():
    model = trained_looking_standard_v1()
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    want = logits(model, x)
    errors, gaps = [], []
    for m in (1, 2, 4):
        converted, layer_errors = models.factorize_mobilenet_v1(model, m)
        errors.append(np.asarray(layer_errors))
        gaps.append(float(jnp.max(jnp.abs(logits(converted, x) - want))))
    assert np.all(errors[0] > 0.1)  # rank 1 of a random 3x3 kernel is far from it
    assert np.all(np.diff(np.stack(errors), axis=0) < 0)  # every layer, strictly
    assert gaps[0] > gaps[-1] > 0


def test_factorize_mobilenet_v1_needs_a_standard_model():
    separable = abstract("mobilenet_v1", variant="cifar", width_multiplier=0.25)
    with pytest.raises(ValueError, match="conv='standard', but got conv='separable'"):
        models.factorize_mobilenet_v1(separable, 2)
    with pytest.raises(TypeError, match="must be a MobileNetV1, but got MobileNetV2"):
        models.factorize_mobilenet_v1(abstract("mobilenet_v2"), 2)
    with pytest.raises(ValueError, match="depth_multiplier must be >= 1"):
        models.factorize_mobilenet_v1(trained_looking_standard_v1(), 0)


# --------------------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    "name,kwargs,error,match",
    [
        ("mobilenet_v1", {"variant": "svhn"}, ValueError, "variant must be one of"),
        ("mobilenet_v1", {"conv": "dilated"}, ValueError, "conv must be one of"),
        ("mobilenet_v1", {"conv": "grouped"}, ValueError, "conv='grouped' needs groups"),
        ("mobilenet_v1", {"groups": 4}, ValueError, "groups applies only to conv='grouped'"),
        ("mobilenet_v1", {"depth_multiplier": 2}, ValueError,
         "depth_multiplier applies only to conv='factorized'"),
        ("mobilenet_v1", {"conv": "factorized", "depth_multiplier": 0}, ValueError,
         "depth_multiplier must be >= 1"),
        ("mobilenet_v1", {"conv": "grouped", "groups": 64}, ValueError,
         "64 does not divide 32"),
        ("mobilenet_v1", {"width_multiplier": 0}, ValueError, "width_multiplier must be > 0"),
        ("mobilenet_v1", {"width_multiplier": "1"}, TypeError, "width_multiplier must be a number"),
        ("mobilenet_v2", {"dropout_rate": 1.0}, ValueError, r"dropout_rate must be in \[0, 1\)"),
        ("mobilenet_v2", {"num_classes": 0}, ValueError, "num_classes must be >= 1"),
        ("mobilenet_v2", {"conv": "standard"}, TypeError, "unexpected keyword argument 'conv'"),
        ("mobilenet_v2", {"padding": "valid"}, ValueError,
         r"padding must be one of \('same', 'symmetric'\), but got 'valid'"),
        ("shufflenet_v1", {"bn_epsilon": 0}, ValueError, "bn_epsilon must be > 0, but got 0"),
        ("mobilenet_v1", {"bn_momentum": 1.5}, ValueError, "bn_momentum must be <= 1"),
        ("mobilenet_v1", {"activation": "tanh"}, ValueError, "activation must be one of"),
        ("shufflenet_v1", {"groups": 5}, ValueError, r"groups must be one of \[1, 2, 3, 4, 8\]"),
        ("shufflenet_v1", {"in_channels": 0}, ValueError, "in_channels must be >= 1"),
    ],
)
def test_bad_configuration_fails_at_construction(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        abstract(name, **kwargs)


def test_input_rank_mismatch_is_an_error():
    model = abstract("mobilenet_v1", variant="cifar", width_multiplier=0.25)
    with pytest.raises(ValueError, match=r"Conv: x must have rank 4 \(N, H, W, C\)"):
        out_struct(model, (32, 32, 3))
    with pytest.raises(ValueError, match="in_features=3 channels"):
        out_struct(model, (1, 32, 32, 1))
