"""Tests for jaxsep.nn: thin NNX modules over the ops."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rand
from flax import nnx

from jaxsep import nn, ops

TOL = dict(rtol=1e-5, atol=1e-5)


def rngs(seed: int = 0) -> nnx.Rngs:
    """Seeded Rngs on the "rbg" PRNG: its samplers compile ~10x faster than threefry's on CPU,
    and eager initialization compiles one sampler per parameter shape."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def abstract(make):
    """``make(rngs)`` without allocating (or compiling) its parameters."""
    return nnx.eval_shape(lambda: make(nnx.Rngs(0)))


def out_struct(module, shape, dtype=jnp.float32):
    """The abstract output of ``module`` (real or abstract) on an input of ``shape``."""
    graphdef, state = nnx.split(module)
    return jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct(shape, dtype)
    )


def ones_bias(key, shape, dtype):
    return jnp.arange(shape[0], dtype=dtype) + 1.0


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    "make,params",
    [
        (lambda r: nn.Conv(6, 8, (3, 3), rngs=r), {"kernel": (3, 3, 6, 8), "bias": (8,)}),
        (
            lambda r: nn.GroupedConv(6, 9, (3, 3), groups=3, rngs=r),
            {"kernel": (3, 3, 2, 9), "bias": (9,)},
        ),
        (
            lambda r: nn.DepthwiseConv(6, (3, 5), depth_multiplier=2, rngs=r),
            {"kernel": (3, 5, 1, 12), "bias": (12,)},
        ),
        (lambda r: nn.PointwiseConv(6, 4, rngs=r), {"kernel": (6, 4), "bias": (4,)}),
        (
            lambda r: nn.SeparableConv(6, 4, 3, spatial_dims=2, depth_multiplier=2, rngs=r),
            {"depthwise_kernel": (3, 3, 1, 12), "pointwise_kernel": (12, 4), "bias": (4,)},
        ),
        (lambda r: nn.ChannelShuffle(3), {}),
    ],
    ids=["Conv", "GroupedConv", "DepthwiseConv", "PointwiseConv", "SeparableConv", "Shuffle"],
)
def test_parameters_are_params_in_the_op_layout(make, params):
    module = abstract(make)
    state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    assert jax.tree.map(jnp.shape, state) == params
    variables = [v for _, v in nnx.iter_graph(module) if isinstance(v, nnx.Variable)]
    assert all(isinstance(v, nnx.Param) for v in variables)


def test_use_bias_false_has_no_bias():
    for make in [
        lambda r: nn.Conv(4, 4, (3, 3), use_bias=False, rngs=r),
        lambda r: nn.DepthwiseConv(4, (3, 3), use_bias=False, rngs=r),
        lambda r: nn.PointwiseConv(4, 4, use_bias=False, rngs=r),
        lambda r: nn.SeparableConv(4, 4, (3, 3), use_bias=False, rngs=r),
    ]:
        module = abstract(make)
        assert module.bias is None
        assert "bias" not in nnx.to_pure_dict(nnx.state(module, nnx.Param))


# --------------------------------------------------------------------------- thin wrappers


def test_modules_equal_the_pure_ops_on_their_own_parameters():
    """Each module's output is the op of the same name on module.kernel, plus the bias."""
    r = rngs(1)
    kw = dict(strides=2, padding="SAME", bias_init=ones_bias)
    conv = nn.GroupedConv(6, 9, (3, 3), groups=3, impl="split", rngs=r, **kw)
    dense = nn.Conv(6, 4, (3, 3), dilation=2, padding="VALID", rngs=r)
    patched = nn.Conv(6, 4, (3, 3), strides=2, impl="patches", rngs=r)
    dw = nn.DepthwiseConv(6, (3, 3), depth_multiplier=2, impl="xla", rngs=r, **kw)
    pw = nn.PointwiseConv(6, 5, bias_init=ones_bias, rngs=r)
    sep = nn.SeparableConv(6, 5, (3, 3), rngs=r, **kw)
    shuffle = nn.ChannelShuffle(3)

    @jax.jit
    def pairs(x):  # one compile for all of them
        return [
            (
                conv(x),
                ops.grouped_conv(x, conv.kernel[...], 3, strides=2, impl="split") + conv.bias[...],
            ),
            (dense(x), ops.conv(x, dense.kernel[...], dilation=2, padding="VALID")),
            (patched(x), ops.conv(x, patched.kernel[...], strides=2, impl="patches")),
            (dw(x), ops.depthwise_conv(x, dw.kernel[...], strides=2, impl="xla") + dw.bias[...]),
            (pw(x), ops.pointwise_conv(x, pw.kernel[...]) + pw.bias[...]),
            (
                sep(x),
                ops.separable_conv(
                    x, sep.depthwise_kernel[...], sep.pointwise_kernel[...], strides=2
                )
                + sep.bias[...],
            ),
            (shuffle(x), ops.channel_shuffle(x, 3)),
        ]

    for got, want in pairs(rand((2, 9, 7, 6))):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize(
    "impl, marker",
    [("xla", "feature_group_count=3"), ("split", "split["), ("taps", "name=depthwise_taps")],
)
def test_grouped_conv_module_runs_its_impl(impl, marker):
    """GroupedConv hands ``impl`` to ops.grouped_conv: each lowering leaves its mark in the
    jaxpr (traced only, nothing compiled)."""
    layer = nn.GroupedConv(6, 9, (3, 3), groups=3, impl=impl, rngs=rngs())
    assert layer.impl == impl
    assert marker in str(jax.make_jaxpr(lambda x: layer(x))(jnp.ones((1, 5, 5, 6))))


def test_separable_norm_and_activation_between_the_steps():
    norm = functools.partial(nnx.BatchNorm, use_running_average=True)
    sep = nn.SeparableConv(
        4, 3, (3, 3), norm=norm, activation=jax.nn.relu, use_bias=False, rngs=rngs()
    )
    assert isinstance(sep.norm, nnx.BatchNorm) and sep.norm.num_features == 4
    x = rand((2, 6, 6, 4))
    hidden = jax.nn.relu(sep.norm(ops.depthwise_conv(x, sep.depthwise_kernel[...])))
    np.testing.assert_allclose(sep(x), ops.pointwise_conv(hidden, sep.pointwise_kernel[...]), **TOL)


def test_separable_takes_separate_initializers():
    sep = nn.SeparableConv(
        4,
        3,
        (3, 3),
        depthwise_init=nnx.initializers.ones,
        pointwise_init=nnx.initializers.zeros,
        rngs=rngs(),
    )
    assert np.all(sep.depthwise_kernel[...] == 1) and np.all(sep.pointwise_kernel[...] == 0)


def test_one_and_three_spatial_dims():
    dw = abstract(lambda r: nn.DepthwiseConv(3, 5, spatial_dims=1, rngs=r))
    assert dw.kernel.shape == (5, 1, 3)
    assert out_struct(dw, (2, 10, 3)).shape == (2, 10, 3)
    sep = abstract(lambda r: nn.SeparableConv(3, 4, (3, 3, 3), strides=2, rngs=r))
    assert out_struct(sep, (1, 6, 6, 6, 3)).shape == (1, 3, 3, 3, 4)
    conv = abstract(lambda r: nn.Conv(3, 4, 3, spatial_dims=1, padding="CAUSAL", rngs=r))
    assert out_struct(conv, (2, 7, 3)).shape == (2, 7, 4)


def test_channels_first_data_format_with_bias():
    r = rngs()
    x = rand((2, 8, 8, 4))
    last = nn.DepthwiseConv(4, (3, 3), bias_init=ones_bias, rngs=r)
    first = nn.DepthwiseConv(4, (3, 3), data_format="NCHW", bias_init=ones_bias, rngs=r)
    first.kernel[...] = last.kernel[...]
    np.testing.assert_allclose(
        first(jnp.moveaxis(x, -1, 1)), jnp.moveaxis(last(x), -1, 1), **TOL
    )
    pw = abstract(lambda r: nn.PointwiseConv(4, 3, data_format="NCHW", rngs=r))
    assert out_struct(pw, (2, 4, 8, 8)).shape == (2, 3, 8, 8)


# --------------------------------------------------------------------------- dtypes, transforms


def test_bfloat16_compute_with_float32_params():
    conv = abstract(lambda r: nn.SeparableConv(4, 8, (3, 3), dtype=jnp.bfloat16, rngs=r))
    assert conv.depthwise_kernel.dtype == jnp.float32
    assert out_struct(conv, (1, 6, 6, 4)).dtype == jnp.bfloat16
    # dtype=None promotes the input and the parameters, as Flax does.
    plain = abstract(lambda r: nn.PointwiseConv(4, 8, rngs=r))
    assert out_struct(plain, (1, 6, 6, 4), jnp.bfloat16).dtype == jnp.float32
    bf16 = abstract(lambda r: nn.DepthwiseConv(4, (3, 3), param_dtype=jnp.bfloat16, rngs=r))
    assert bf16.kernel.dtype == jnp.bfloat16
    assert out_struct(bf16, (1, 6, 6, 4), jnp.bfloat16).dtype == jnp.bfloat16


def test_split_pure_function_vmap_and_grad():
    module = nn.SeparableConv(3, 4, (3, 3), rngs=rngs())
    graphdef, state = nnx.split(module)

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    xs = rand((3, 2, 5, 5, 3))
    batched = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(state, xs)
    np.testing.assert_allclose(batched, jnp.stack([module(x) for x in xs]), **TOL)

    grads = jax.grad(lambda s: apply(s, xs[0]).sum())(state)
    assert set(nnx.to_pure_dict(grads)) == {"depthwise_kernel", "pointwise_kernel", "bias"}


def test_default_init_is_lecun_normal_over_the_fan_in():
    """Variance 1 / fan_in with fan_in = prod(K) * C // G (prod(K) for depthwise)."""
    r = rngs()
    cases = [
        (nn.DepthwiseConv(4096, (3, 3), rngs=r).kernel, 9),
        (nn.GroupedConv(256, 256, (3, 3), groups=4, rngs=r).kernel, 9 * 64),
    ]
    for kernel, fan_in in cases:
        std = float(jnp.std(kernel[...]))
        assert abs(std * np.sqrt(fan_in) - 1.0) < 0.05, (kernel.shape, std)
    assert np.all(nn.Conv(3, 4, (3, 3), rngs=r).bias[...] == 0)


# --------------------------------------------------------------------------- rank is never guessed


def test_int_kernel_size_needs_spatial_dims():
    with pytest.raises(ValueError, match=r"DepthwiseConv: an int kernel_size needs an explicit"):
        nn.DepthwiseConv(4, 3, rngs=rngs())
    with pytest.raises(ValueError, match=r"spatial_dims must equal len\(kernel_size\)"):
        nn.Conv(4, 4, (3, 3), spatial_dims=1, rngs=rngs())
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
        nn.SeparableConv(4, 4, 3, spatial_dims=4, rngs=rngs())


def test_input_rank_mismatch_names_module_and_shapes():
    conv = nn.DepthwiseConv(4, (3, 3), rngs=rngs())
    message = r"DepthwiseConv: x must have rank 4 \(N, H, W, C\).*\(8, 8, 4\)"
    with pytest.raises(ValueError, match=message):
        conv(jnp.ones((8, 8, 4)))  # unbatched: not silently treated as a batch
    with pytest.raises(ValueError, match=r"rank 3 \(N, W, C\).*\(2, 8, 8, 4\)"):
        nn.Conv(4, 4, 3, spatial_dims=1, rngs=rngs())(jnp.ones((2, 8, 8, 4)))
    with pytest.raises(ValueError, match=r"PointwiseConv: x must have in_features=4 channels"):
        nn.PointwiseConv(4, 4, rngs=rngs())(jnp.ones((2, 3, 3, 5)))
    with pytest.raises(ValueError, match=r"SeparableConv: x must have rank 4"):
        nn.SeparableConv(4, 4, (3, 3), rngs=rngs())(jnp.ones((2, 3, 3, 3, 4)))


# --------------------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda r: nn.GroupedConv(6, 8, (3, 3), groups=4, rngs=r), ValueError,
         r"groups must divide in_features \(6\), but 4 does not divide 6"),
        (lambda r: nn.GroupedConv(6, 8, (3, 3), groups=3, rngs=r), ValueError,
         r"groups must divide out_features \(8\), but 3 does not divide 8"),
        (lambda r: nn.Conv(0, 8, (3, 3), rngs=r), ValueError, "in_features must be >= 1"),
        (lambda r: nn.PointwiseConv(4, -1, rngs=r), ValueError, "out_features must be >= 1"),
        (lambda r: nn.Conv(4, 8, (3, 0), rngs=r), ValueError, "kernel_size must be >= 1"),
        (lambda r: nn.DepthwiseConv(4, (3, 3), depth_multiplier=0, rngs=r), ValueError,
         "depth_multiplier must be >= 1"),
        (lambda r: nn.DepthwiseConv(4, (3, 3), strides=(1, 0), rngs=r), ValueError,
         "strides must be >= 1"),
        (lambda r: nn.DepthwiseConv(4, (3, 3), strides=(1, 2, 1), rngs=r), ValueError,
         "strides must be an int or a sequence of 2 ints"),
        (lambda r: nn.Conv(4, 8, (3, 3), groups=1.5, rngs=r), TypeError, "groups must be an int"),
        (lambda r: nn.DepthwiseConv(4, (3, 3), impl="fast", rngs=r), ValueError,
         "impl must be one of"),
        (lambda r: nn.DepthwiseConv(4, (3, 3), impl="split", rngs=r), ValueError,
         r"DepthwiseConv: impl must be one of \('auto', 'xla', 'taps'\), but got 'split'"),
        (lambda r: nn.GroupedConv(4, 8, (3, 3), groups=2, impl="fast", rngs=r), ValueError,
         r"GroupedConv: impl must be one of \('auto', 'xla', 'split', 'taps'\), but got 'fast'"),
        (lambda r: nn.Conv(4, 8, (3, 3), impl="taps", rngs=r), ValueError,
         r"Conv: impl must be one of \('auto', 'xla', 'patches'\), but got 'taps'"),
        (lambda r: nn.Conv(4, 8, (3, 3), groups=2, impl="patches", rngs=r), ValueError,
         r"Conv: impl='patches' computes dense convolutions only \(groups=1\), but got groups=2"),
        (lambda r: nn.Conv(4, 8, (3, 3), padding="FULL", rngs=r), ValueError,
         "padding must be one of"),
        (lambda r: nn.Conv(4, 8, (3, 3), padding="CAUSAL", rngs=r), ValueError,
         "only defined for 1-D"),
        (lambda r: nn.SeparableConv(4, 8, (3, 3), data_format="NCW", rngs=r), ValueError,
         "data_format must have the module's 2 spatial dims"),
        (lambda r: nn.Conv(4, 8, (3, 3), padding_mode="mirror", rngs=r), ValueError,
         "padding_mode must be one of"),
        (lambda r: nn.ChannelShuffle(0), ValueError, "groups must be >= 1"),
        (lambda r: nn.ChannelShuffle(3, in_features=8), ValueError,
         r"ChannelShuffle: groups must divide in_features \(8\)"),
        (lambda r: nn.SeparableConv(4, 8, (3, 3), activation="relu", rngs=r), TypeError,
         "activation must be callable"),
    ],
)
def test_bad_configuration_fails_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make(nnx.Rngs(0))
