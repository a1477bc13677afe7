"""Tests for the models' small layers (jaxsep.models.layers) and the MobileNetV3/EfficientNet/
ShuffleNetV2 blocks, each on its own: shapes, values against NumPy, train vs eval."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsep import cost, models
from jaxsep.models import layers

from conftest import materialize


def build(cls, *args, **kwargs):
    """A real module with some weights (see conftest.materialize)."""
    return materialize(nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0))))


@nnx.jit
def apply(module, x):
    """One compile per module structure and mode, instead of eager op-by-op dispatch."""
    return module(x)


def numpy_relu6(x):
    return np.minimum(np.maximum(x, 0.0), 6.0)


# --------------------------------------------------------------------------- activations


def test_activations_match_their_closed_forms():
    """PyTorch's definitions: hardswish(x) = x * relu6(x + 3) / 6, hardsigmoid = relu6(x + 3) / 6,
    silu(x) = x * sigmoid(x); checked across every kink (-3, 0, 3, 6)."""
    x = np.linspace(-8.0, 8.0, 161, dtype=np.float32)
    sigmoid = 1.0 / (1.0 + np.exp(-x))
    want = {
        "relu": np.maximum(x, 0.0),
        "relu6": numpy_relu6(x),
        "silu": x * sigmoid,
        "sigmoid": sigmoid,
        "hard_sigmoid": numpy_relu6(x + 3.0) / 6.0,
        "hard_swish": x * numpy_relu6(x + 3.0) / 6.0,
    }
    assert set(layers.ACTIVATIONS) == set(want)
    for name, values in want.items():
        got = layers.activation_fn("test", "activation", name)(jnp.asarray(x))
        np.testing.assert_allclose(got, values, rtol=1e-6, atol=1e-6, err_msg=name)


def test_activation_fn_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"where: act must be one of \('relu'.*but got 'gelu'"):
        layers.activation_fn("where", "act", "gelu")


def test_conv_padding():
    assert layers.conv_padding("same", 3) == "SAME"
    assert layers.conv_padding("symmetric", 3) == 1
    assert layers.conv_padding("symmetric", 5) == 2
    assert layers.conv_padding("symmetric", 1) == 0
    with pytest.raises(ValueError, match="padding must be one of"):
        layers.conv_padding("SAME", 3)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        layers.conv_padding("symmetric", 4)


# --------------------------------------------------------------------------- squeeze-excite


def test_squeeze_excite_values_against_numpy():
    se = build(layers.SqueezeExcite, 6, 4, activation=jax.nn.relu, gate=jax.nn.hard_sigmoid)
    rng = np.random.default_rng(0)
    for conv in (se.reduce, se.expand):  # non-zero biases, so that they are checked too
        conv.bias[...] = jnp.asarray(rng.normal(size=conv.bias.shape), jnp.float32)
    x = rng.normal(size=(2, 5, 3, 6)).astype(np.float32)
    pooled = x.mean(axis=(1, 2))
    hidden = np.maximum(pooled @ np.asarray(se.reduce.kernel) + np.asarray(se.reduce.bias), 0)
    gate = numpy_relu6(hidden @ np.asarray(se.expand.kernel) + np.asarray(se.expand.bias) + 3) / 6
    want = x * gate[:, None, None, :]
    got = se(jnp.asarray(x))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_squeeze_excite_counts():
    """Parameters: two 1x1 layers with bias. Multiply-adds: 2 * C * S per image (the pooling
    and the product are elementwise work, not counted)."""
    se = nnx.eval_shape(lambda: layers.SqueezeExcite(24, 8, rngs=nnx.Rngs(0)))
    assert cost.count_params(nnx.state(se, nnx.Param)) == 24 * 8 + 8 + 8 * 24 + 24
    graphdef, state = nnx.split(se)
    macs = cost.count_macs(
        lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct((3, 7, 7, 24), "float32")
    )
    assert macs.total == 3 * 2 * 24 * 8


# --------------------------------------------------------------------------- DropPath


def test_drop_path_train_and_eval():
    """Train mode: each example's whole branch is kept (scaled by 1 / keep) or zeroed, about
    ``rate`` of them zeroed; eval mode: the identity."""
    drop = build(layers.DropPath, 0.25)
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (4000, 2, 3, 4)), jnp.float32)
    y = np.asarray(drop(x)).reshape(len(x), -1)
    scaled = np.asarray(x).reshape(len(x), -1) / 0.75
    dropped = np.all(y == 0, axis=1)
    kept = np.all(np.isclose(y, scaled, rtol=1e-6, atol=0), axis=1)
    assert np.all(dropped ^ kept)  # one decision per example, for all of its values
    assert abs(float(dropped.mean()) - 0.25) < 0.03  # 4000 draws: sd ~0.007
    y = y.reshape(x.shape)
    assert not np.array_equal(np.asarray(drop(x)), y)  # a fresh mask per call
    drop.eval()
    np.testing.assert_array_equal(drop(x), x)
    drop.train()
    assert np.any(np.asarray(drop(x)) == 0)


def test_drop_path_rate_zero_and_bad_rate():
    drop = build(layers.DropPath, 0.0)
    x = jnp.ones((3, 2, 2, 1))
    np.testing.assert_array_equal(drop(x), x)
    with pytest.raises(ValueError, match=r"DropPath: rate must be < 1, but got 1.0"):
        build(layers.DropPath, 1.0)


# --------------------------------------------------------------------------- blocks


def out_shape(module, shape):
    graphdef, state = nnx.split(module)
    return jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct(shape, "float32")
    ).shape


def test_inverted_residual_mobilenet_v3_and_mbconv_forms():
    abstract = lambda *a, **k: nnx.eval_shape(  # noqa: E731
        lambda: models.InvertedResidual(*a, **k, rngs=nnx.Rngs(0))
    )
    # MobileNetV3: explicit hidden width, 5x5 depthwise, squeeze-excite on the hidden width.
    block = abstract(40, 40, kernel_size=5, hidden_features=120, se_features=32,
                     activation=jax.nn.hard_swish)
    assert block.depthwise.conv.kernel.shape == (5, 5, 1, 120)
    assert block.se.reduce.kernel.shape == (120, 32) and block.use_residual
    assert block.drop_path is None  # rate 0: no layer
    assert out_shape(block, (1, 8, 8, 40)) == (1, 8, 8, 40)
    # hidden == C: no expansion (MobileNetV3's first block, EfficientNet's first stage).
    block = abstract(16, 16, hidden_features=16, se_features=8)
    assert block.expand is None and block.se.squeeze_features == 8
    # Stochastic depth only on a residual branch.
    assert abstract(24, 24, drop_path_rate=0.1).drop_path.rate == 0.1
    assert abstract(24, 40, strides=2, drop_path_rate=0.1).drop_path is None
    # MobileNetV2's form is unchanged: hidden = round(C * t).
    assert abstract(16, 24, expand_ratio=6).hidden_features == 96
    with pytest.raises(ValueError, match="expand_ratio must be >= 1"):
        abstract(16, 24, expand_ratio=0.5)


def test_inverted_residual_drop_path_only_in_train_mode():
    """With a drop rate near 1 nearly every example's branch is dropped in train mode (the
    output is the input), none in eval mode."""
    block = build(models.InvertedResidual, 8, 8, expand_ratio=2, drop_path_rate=0.999, impl="xla")
    x = jax.random.normal(jax.random.key(0), (16, 4, 4, 8))
    block.eval()
    eval_out = apply(block, x)
    assert not np.allclose(eval_out, x)
    block.train()
    train_out = np.asarray(apply(block, x))
    same = np.all(np.isclose(train_out, np.asarray(x)), axis=(1, 2, 3))
    assert same.sum() >= 15


def test_shuffle_unit_v2():
    unit = nnx.eval_shape(lambda: models.ShuffleUnitV2(24, 116, strides=2, rngs=nnx.Rngs(0)))
    assert unit.left_depthwise.conv.kernel.shape == (3, 3, 1, 24)
    assert unit.right_expand.conv.kernel.shape == (24, 58)
    assert out_shape(unit, (1, 8, 8, 24)) == (1, 4, 4, 116)
    unit = nnx.eval_shape(lambda: models.ShuffleUnitV2(116, 116, rngs=nnx.Rngs(0)))
    assert unit.left_depthwise is None and unit.right_expand.conv.kernel.shape == (58, 58)
    assert out_shape(unit, (1, 8, 8, 116)) == (1, 8, 8, 116)
    with pytest.raises(ValueError, match="in_features must equal out_features"):
        build(models.ShuffleUnitV2, 24, 116)
    with pytest.raises(ValueError, match="out_features must be even"):
        build(models.ShuffleUnitV2, 24, 115, strides=2)


def test_shuffle_unit_v2_stride_1_keeps_the_first_half_and_interleaves():
    """The first half of the input passes unchanged to the even output channels (the shuffle
    with 2 groups interleaves the halves: output 2j is left j, 2j + 1 is right j)."""
    unit = build(models.ShuffleUnitV2, 8, 8, impl="xla")
    unit.eval()
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))
    y = apply(unit, x)
    np.testing.assert_array_equal(y[..., 0::2], x[..., :4])
    # The right half depends only on the input's second half.
    x2 = x.at[..., :4].set(0.0)
    np.testing.assert_allclose(apply(unit, x2)[..., 1::2], y[..., 1::2], rtol=1e-6)


def test_blocks_of_the_newer_families_get_every_gradient():
    """A MobileNetV3 block (5x5, squeeze-excite with hard-sigmoid, hard-swish), an MBConv
    (SiLU squeeze-excite, stochastic depth in train mode) and a ShuffleNetV2 unit: every
    parameter gets a finite, nonzero gradient (the whole models' training steps run with
    -m slow in tests/test_models.py)."""
    blocks = [
        build(models.InvertedResidual, 16, 16, kernel_size=5, hidden_features=48, se_features=16,
              activation=jax.nn.hard_swish, se_gate=jax.nn.hard_sigmoid, impl="xla"),
        build(models.InvertedResidual, 16, 16, hidden_features=64, se_features=4,
              activation=jax.nn.silu, se_activation=jax.nn.silu, drop_path_rate=0.1, impl="xla"),
        build(models.ShuffleUnitV2, 16, 32, strides=2, impl="xla"),
    ]
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 16))

    @nnx.jit
    def grads(blocks, x):
        def loss(blocks):
            return sum(jnp.sum(jnp.sin(b(x))) for b in blocks)

        return nnx.grad(loss)(blocks)

    for block in blocks:
        block.train()
    flat = jax.tree_util.tree_flatten_with_path(grads(blocks, x))[0]
    assert len(flat) == sum(len(jax.tree.leaves(nnx.state(b, nnx.Param))) for b in blocks)
    for path, g in flat:
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


@pytest.mark.parametrize("strides", [1, 2])
def test_shuffle_unit_gradients_equal_across_lowerings(strides):
    """A ShuffleNet (v1) unit in train mode: grouped 1x1 convolutions, channel shuffle and a
    depthwise convolution with ``impl="auto"`` (the fixed rules here) give XLA's gradients.
    The BatchNorms make some gradients small differences of large terms, so the tolerance is
    float32 rounding relative to the largest gradient of the unit; the depthwise BatchNorm's
    bias has a true gradient of zero (the second 1x1's BatchNorm removes any per-channel
    shift), and both lowerings give it as rounding noise."""
    out = 24 if strides == 1 else 48
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 24))

    @nnx.jit
    def grads(unit, x):
        return nnx.grad(lambda unit: jnp.sum(jnp.sin(unit(x))))(unit)

    by_impl = {}
    for impl in ("auto", "xla"):
        unit = build(models.ShuffleUnit, 24, out, groups=3, strides=strides, impl=impl)
        unit.train()
        by_impl[impl] = jax.tree_util.tree_flatten_with_path(grads(unit, x))[0]
    scale = max(float(np.abs(g).max()) for _, g in by_impl["xla"])
    for (path, g_auto), (_, g_xla) in zip(by_impl["auto"], by_impl["xla"]):
        name = jax.tree_util.keystr(path)
        np.testing.assert_allclose(g_auto, g_xla, rtol=0, atol=1e-5 * scale, err_msg=name)
        if "depthwise" in name and "norm" in name and "bias" in name:
            assert np.abs(g_xla).max() <= 1e-5 * scale, name
