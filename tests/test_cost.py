"""Tests for jaxsep.cost: the analytic model, parameter counts and traced MAC counts."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import jaxsep
from jaxsep.cost import TAPS_NAME, ConvCost, MacCount, conv_cost, count_macs, count_params

F32 = jnp.float32


def sds(*shape):
    return jax.ShapeDtypeStruct(shape, F32)


# --------------------------------------------------------------------------- conv_cost


# MobileNet (Howard et al. 2017), Table 3: one 14x14x512 -> 14x14x512 layer with a 3x3 kernel.
# (description, conv_cost kwargs, paper Mult-Adds in millions, paper params in millions)
TABLE_3 = [
    ("full convolution", dict(in_channels=512, out_channels=512), "462", "2.36"),
    ("separable", dict(in_channels=512, out_channels=512, separable=True), "52.3", "0.27"),
    ("alpha = 0.75", dict(in_channels=384, out_channels=384, separable=True), "29.6", "0.15"),
]


@pytest.mark.parametrize(
    "name,kwargs,paper_macs,paper_params", TABLE_3, ids=[r[0] for r in TABLE_3]
)
def test_mobilenet_table_3(name, kwargs, paper_macs, paper_params):
    cost = conv_cost(kernel_size=3, out_size=14, **kwargs)
    decimals = lambda s: len(s.split(".")[1]) if "." in s else 0  # noqa: E731
    assert f"{cost.macs / 1e6:.{decimals(paper_macs)}f}" == paper_macs
    assert f"{cost.params / 1e6:.{decimals(paper_params)}f}" == paper_params


def test_mobilenet_table_3_resolution():
    # alpha = 0.75, rho = 0.714: the 14x14 map becomes 10x10.
    cost = conv_cost(384, 384, 3, 10, separable=True)
    assert f"{cost.macs / 1e6:.1f}" == "15.1"
    assert f"{cost.params / 1e6:.2f}" == "0.15"
    assert cost.params == conv_cost(384, 384, 3, 14, separable=True).params


def test_mobilenet_table_3_exact_values():
    assert conv_cost(512, 512, 3, 14) == ConvCost(params=2_359_296, macs=462_422_016)
    assert conv_cost(512, 512, 3, 14, separable=True) == ConvCost(266_752, 52_283_392)
    assert conv_cost(512, 512, 3, 14).flops == 2 * 462_422_016


@pytest.mark.parametrize(
    "c,o,k,out",
    [(512, 512, 3, 14), (32, 64, 3, 112), (7, 13, 5, 9), (3, 1000, 1, 1), (16, 24, (3, 5), (4, 6))],
)
def test_separable_ratio_is_one_over_out_plus_one_over_k2(c, o, k, out):
    dense = conv_cost(c, o, k, out)
    separable = conv_cost(c, o, k, out, separable=True)
    taps = math.prod(k) if isinstance(k, tuple) else k * k
    assert Fraction(separable.macs, dense.macs) == Fraction(1, o) + Fraction(1, taps)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_separable_ratio_with_depth_multiplier(m):
    dense = conv_cost(8, 24, 3, 5)
    separable = conv_cost(8, 24, 3, 5, separable=True, depth_multiplier=m)
    assert Fraction(separable.macs, dense.macs) == Fraction(m, 24) + Fraction(m, 9)


def test_separable_has_fewer_params_exactly_when_out_channels_exceeds_bound():
    # Separable C*K^2 + C*O < dense K^2*C*O  <=>  K^2 + O < K^2*O  <=>  O > K^2 / (K^2 - 1)
    # (for K > 1; never for K = 1). K^2/(K^2-1) is in (1, 4/3], so out_channels >= 2 suffices
    # for every K >= 2, and out_channels = 1 never saves (it costs C parameters more).
    for k in (1, 2, 3, 5, 7):
        for c in (1, 3, 16):
            for o in range(1, 40):
                dense = conv_cost(c, o, k, 1).params
                separable = conv_cost(c, o, k, 1, separable=True).params
                fewer = k > 1 and Fraction(o) > Fraction(k * k, k * k - 1)
                assert (separable < dense) == fewer, (k, c, o)
                if k > 1:
                    assert (separable < dense) == (o >= 2)


def test_separable_param_saving_grows_with_out_channels():
    # saving = K^2*C*O - (C*K^2 + C*O) = C*(O*(K^2 - 1) - K^2): slope C*(K^2 - 1) per channel.
    for k, c in [(3, 1), (3, 32), (5, 7), ((3, 3, 3), 4)]:
        savings = [
            conv_cost(c, o, k, 1).params - conv_cost(c, o, k, 1, separable=True).params
            for o in range(1, 64)
        ]
        taps = math.prod(k) if isinstance(k, tuple) else k * k
        assert all(b - a == c * (taps - 1) > 0 for a, b in zip(savings, savings[1:]))


def test_conv_cost_kinds_and_bias():
    # 1-D, grouped, depthwise, 3-D, bias.
    assert conv_cost(6, 4, (5,), (10,)) == ConvCost(5 * 6 * 4, 10 * 5 * 6 * 4)
    assert conv_cost(8, 12, 3, 7, groups=4) == ConvCost(9 * 2 * 12, 49 * 9 * 2 * 12)
    assert conv_cost(8, 16, 3, 7, depth_multiplier=2) == ConvCost(9 * 16, 49 * 9 * 16)
    assert conv_cost(2, 3, (3, 3, 3), 4) == ConvCost(27 * 6, 64 * 27 * 6)
    assert conv_cost(2, 3, 3, 4, spatial_dims=1) == ConvCost(3 * 6, 4 * 3 * 6)
    assert conv_cost(8, 5, 3, 7, bias=True).params == 9 * 8 * 5 + 5
    sep = conv_cost(8, 5, 3, 7, separable=True, depth_multiplier=2, bias=True)
    assert sep == ConvCost(9 * 16 + 16 * 5 + 5, 49 * (9 * 16 + 16 * 5))
    assert conv_cost(8, 5, 3, 7) + sep == ConvCost(9 * 40 + sep.params, 49 * 9 * 40 + sep.macs)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(in_channels=0), ValueError, "in_channels must be >= 1, but got 0"),
        (dict(in_channels=2.0), TypeError, "in_channels must be an int, but got float"),
        (dict(out_channels=True), TypeError, "out_channels must be an int, but got bool"),
        (dict(groups=3), ValueError, "groups must divide in_channels and out_channels"),
        (dict(kernel_size=(3, 3), out_size=(5,)), ValueError, "same number of spatial dims"),
        (dict(kernel_size=(3, 0)), ValueError, "kernel_size must be >= 1, but got 0"),
        (dict(out_size=(2, 2), spatial_dims=3), ValueError, "spatial_dims=3"),
        (dict(depth_multiplier=2), ValueError, "out_channels == in_channels \\* depth_multiplier"),
        (dict(separable=True, groups=2), ValueError, "groups must be 1 with separable=True"),
        (dict(separable=1), TypeError, "separable must be a bool"),
        (dict(separable=True, depth_multiplier=0), ValueError, "depth_multiplier must be >= 1"),
    ],
)
def test_conv_cost_validation(kwargs, error, match):
    args = dict(in_channels=4, out_channels=6, kernel_size=3, out_size=5) | kwargs
    with pytest.raises(error, match=match):
        conv_cost(**args)


# --------------------------------------------------------------------------- count_params


def test_count_params_arrays_and_shape_structs():
    tree = {"a": np.zeros((3, 4)), "b": [jnp.ones(5), jax.ShapeDtypeStruct((2, 2, 2), F32)]}
    assert count_params(tree) == 12 + 5 + 8
    assert count_params({}) == 0
    abstract = jax.eval_shape(lambda: {"w": jnp.zeros((3, 3, 8, 16)), "b": jnp.zeros(16)})
    assert count_params(abstract) == 9 * 8 * 16 + 16
    with pytest.raises(TypeError, match=r"leaf at \['lr'\] is float"):
        count_params({"w": np.zeros(2), "lr": 0.1})


def test_count_params_nnx_counts_only_params():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(4, 8, (3, 3), use_bias=False, rngs=rngs)
            self.norm = nnx.BatchNorm(8, rngs=rngs)  # 16 params + 16 batch statistics

    block = Block(nnx.Rngs(0))
    expected = conv_cost(4, 8, 3, 1).params + 2 * 8
    assert count_params(block) == expected
    assert count_params(nnx.state(block, nnx.Param)) == expected
    assert count_params(nnx.state(block, nnx.BatchStat)) == 2 * 8


# --------------------------------------------------------------------------- count_macs


def _out_size(out_shape, channels_last=True):
    return out_shape[1:-1] if channels_last else out_shape[2:]


# (id, x shape, kernel shape(s), fn, conv_cost kwargs, channels_last)
MAC_CASES = [
    ("dense_2d_same", (2, 9, 9, 4), [(3, 3, 4, 6)], lambda x, k: jaxsep.conv(x, k), {}, True),
    (
        "dense_2d_stride2_valid_dilated",
        (1, 12, 11, 3),
        [(3, 2, 3, 5)],
        lambda x, k: jaxsep.conv(x, k, strides=2, padding="VALID", dilation=(2, 1)),
        {},
        True,
    ),
    (
        "grouped_2d",
        (2, 8, 8, 6),
        [(3, 3, 2, 9)],
        lambda x, k: jaxsep.conv(x, k, groups=3),
        dict(groups=3),
        True,
    ),
    (
        "depthwise_m1",
        (2, 7, 7, 5),
        [(3, 3, 1, 5)],
        lambda x, k: jaxsep.depthwise_conv(x, k, impl="xla"),
        dict(depth_multiplier=1),
        True,
    ),
    (
        "depthwise_m2_1d",
        (3, 10, 4),
        [(5, 1, 8)],
        lambda x, k: jaxsep.depthwise_conv(x, k, strides=2, impl="xla"),
        dict(depth_multiplier=2),
        True,
    ),
    ("pointwise_2d", (2, 5, 6, 7), [(7, 3)], lambda x, k: jaxsep.pointwise_conv(x, k), {}, True),
    (
        "separable_2d",
        (2, 8, 8, 4),
        [(3, 3, 1, 4), (4, 10)],
        lambda x, d, p: jaxsep.separable_conv(x, d, p, impl="xla"),
        dict(separable=True),
        True,
    ),
    (
        "separable_m2_1d",
        (1, 16, 3),
        [(3, 1, 6), (6, 5)],
        lambda x, d, p: jaxsep.separable_conv(x, d, p, strides=2, impl="xla"),
        dict(separable=True, depth_multiplier=2),
        True,
    ),
    (
        "dense_nchw",
        (2, 4, 9, 7),
        [(3, 3, 4, 5)],
        lambda x, k: jaxsep.conv(x, k, data_format="NCHW"),
        {},
        False,
    ),
    (
        "separable_nchw",
        (2, 4, 6, 6),
        [(3, 3, 1, 8), (1, 1, 8, 3)],
        lambda x, d, p: jaxsep.separable_conv(x, d, p, data_format="NCHW", impl="xla"),
        dict(separable=True, depth_multiplier=2),
        False,
    ),
    ("dense_3d", (1, 4, 5, 6, 2), [(2, 3, 3, 2, 3)], lambda x, k: jaxsep.conv(x, k), {}, True),
]


@pytest.mark.parametrize("case", MAC_CASES, ids=[c[0] for c in MAC_CASES])
def test_count_macs_matches_conv_cost(case):
    _, x_shape, kernel_shapes, fn, kwargs, channels_last = case
    args = [sds(*x_shape)] + [sds(*s) for s in kernel_shapes]
    out_shape = jax.eval_shape(fn, *args).shape
    c = x_shape[-1] if channels_last else x_shape[1]
    o = out_shape[-1] if channels_last else out_shape[1]
    k = kernel_shapes[0][:-2] or (1,) * (len(x_shape) - 2)  # a (C, O) pointwise kernel is 1x1
    expected = conv_cost(c, o, k, _out_size(out_shape, channels_last), **kwargs)
    counted = count_macs(fn, *args)
    assert counted.total == x_shape[0] * expected.macs
    assert sum(counted.by_primitive.values()) == counted.total
    assert counted.flops == 2 * counted.total
    if "pointwise" in case[0]:
        primitive = "channel_matmul" if channels_last else "dot_general"
        assert counted.by_primitive == {primitive: counted.total}


@pytest.mark.parametrize(
    "impl, window, primitive",
    [
        ("xla", 3, "conv_general_dilated"),
        ("split", 3, "conv_general_dilated"),  # G dense convs
        ("split", 1, "channel_matmul"),  # G matrix products
        ("taps", 3, TAPS_NAME),  # C / G depthwise taps calls
        ("taps", 1, TAPS_NAME),
    ],
)
def test_count_macs_grouped_conv_every_impl(impl, window, primitive):
    # C = 6, G = 3: every output reads C / G = 2 inputs per tap, whatever the lowering.
    x, k = sds(2, 8, 7, 6), sds(window, window, 2, 9)
    counted = count_macs(lambda a, b: jaxsep.grouped_conv(a, b, 3, strides=2, impl=impl), x, k)
    macs = 2 * conv_cost(6, 9, window, (4, 4), groups=3).macs
    assert counted == MacCount(macs, {primitive: macs})


def test_count_macs_concrete_arrays_and_static_kwargs():
    x, k = jnp.ones((1, 8, 8, 3)), np.ones((3, 3, 3, 4), np.float32)
    counted = count_macs(jaxsep.conv, x, k, strides=2, padding="VALID")
    macs = 3 * 3 * 9 * 3 * 4  # 3x3 outputs, 9 taps, 3 in, 4 out
    assert counted == MacCount(macs, {"conv_general_dilated": macs})


@pytest.mark.parametrize("depthwise", [False, True])
def test_count_macs_of_gradient_is_three_forwards(depthwise):
    # The backward pass has an input-gradient conv and a kernel-gradient conv, each with the
    # forward's MACs (stride 1, "SAME"); the depthwise kernel gradient uses batch_group_count.
    x = sds(2, 6, 6, 4)
    k = sds(3, 3, 1, 8) if depthwise else sds(3, 3, 4, 5)
    op = (lambda a, b: jaxsep.depthwise_conv(a, b, impl="xla")) if depthwise else jaxsep.conv
    forward = count_macs(op, x, k).total
    grad = jax.grad(lambda a, b: op(a, b).sum(), argnums=(0, 1))
    assert count_macs(grad, x, k).total == 3 * forward


def _taps_stand_in():
    """A stand-in for jaxsep._taps: a jit-wrapped function named "depthwise_taps" taking the
    padded x and a (*K, 1, C*M) kernel (here a VALID grouped lax conv inside)."""

    def depthwise_taps(x, kernel):
        return lax.conv_general_dilated(
            x, kernel, (1,) * (x.ndim - 2), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
        )

    return jax.jit(depthwise_taps)


def test_taps_stand_in_is_a_jit_eqn_with_the_expected_name():
    taps = _taps_stand_in()
    (eqn,) = jax.make_jaxpr(taps)(sds(1, 6, 6, 3), sds(3, 3, 1, 6)).jaxpr.eqns
    assert eqn.params["name"] == TAPS_NAME


def test_count_macs_depthwise_taps_counted_without_recursion():
    taps = _taps_stand_in()
    x, dw, pw = sds(2, 9, 8, 3), sds(3, 3, 1, 6), sds(6, 5)

    def separable_taps(x, dw, pw):
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return jaxsep.pointwise_conv(taps(padded, dw), pw)

    counted = count_macs(separable_taps, x, dw, pw)
    hidden = 2 * 9 * 8 * 6
    assert counted.by_primitive == {TAPS_NAME: hidden * 9, "channel_matmul": hidden * 5}
    xla = count_macs(lambda *a: jaxsep.separable_conv(*a, impl="xla"), x, dw, pw)
    analytic = conv_cost(3, 5, 3, (9, 8), separable=True, depth_multiplier=2)
    assert counted.total == xla.total == 2 * analytic.macs


def test_count_macs_control_flow_and_call_primitives():
    a = sds(4, 6)
    b = sds(6, 5)
    one = 4 * 6 * 5  # MACs of a @ b

    @jax.checkpoint
    def remat(a, b):
        return a @ b

    @jax.custom_jvp
    def cjvp(a, b):
        return a @ b

    cjvp.defjvp(lambda p, t: (cjvp(*p), t[0] @ p[1]))

    @jax.custom_vjp
    def cvjp(a, b):
        return a @ b

    cvjp.defvjp(lambda a, b: (cvjp(a, b), (a, b)), lambda r, g: (g @ r[1].T, r[0].T @ g))

    def calls(a, b):
        return jax.jit(lambda u, v: u @ v)(a, b) + remat(a, b) + cjvp(a, b) + cvjp(a, b)

    assert count_macs(calls, a, b).total == 4 * one

    def scan(a, b):
        return lax.scan(lambda c, _: (c, c @ b), a, None, length=7)[1]

    assert count_macs(scan, a, b).total == 7 * one

    def while_loop(a, w):  # the body counts once: the trip count is a run-time value
        return lax.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, s[1] @ w), (0, a))[1]

    assert count_macs(while_loop, a, sds(6, 6)).total == 4 * 6 * 6

    def cond(p, a, b):
        return lax.cond(p, lambda: (a @ b) @ b.T, lambda: a)

    assert count_macs(cond, jax.ShapeDtypeStruct((), jnp.bool_), a, b).total == 2 * one


def test_count_macs_rejects_non_callable():
    with pytest.raises(TypeError, match="fn must be callable"):
        count_macs(3, sds(2))


# --------------------------------------------------------------------------- XLA's own count


def _xla_flops(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        pytest.skip("this backend's cost_analysis does not report flops")
    return analysis["flops"]


# "VALID" padding only: with "SAME" padding XLA's CPU cost_analysis counts only the taps that
# land on real input pixels (e.g. 46464 instead of 55296 FLOPs for an 8x8 3x3 conv), while
# conv_cost/count_macs (and the papers) count every tap. With VALID padding the CPU backend
# agrees exactly for dense, grouped and depthwise convs and for dot products (jax 0.10.2).
XLA_CASES = [
    ("dense", lambda x, k: jaxsep.conv(x, k, padding="VALID"), (2, 8, 8, 4), (3, 3, 4, 6)),
    (
        "grouped",
        lambda x, k: jaxsep.conv(x, k, padding="VALID", groups=2),
        (2, 8, 8, 4),
        (3, 3, 2, 6),
    ),
    (
        "depthwise_m2",
        lambda x, k: jaxsep.depthwise_conv(x, k, padding="VALID", impl="xla"),
        (2, 8, 8, 4),
        (3, 3, 1, 8),
    ),
    ("pointwise_dot", lambda x, k: jaxsep.pointwise_conv(x, k), (2, 5, 5, 7), (7, 3)),
]


@pytest.mark.parametrize("name,fn,x_shape,k_shape", XLA_CASES, ids=[c[0] for c in XLA_CASES])
def test_count_macs_matches_xla_cost_analysis(name, fn, x_shape, k_shape):
    x, k = jnp.ones(x_shape, F32), jnp.ones(k_shape, F32)
    assert _xla_flops(fn, x, k) == count_macs(fn, x, k).flops
