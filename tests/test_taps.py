"""The taps lowering's own machinery: chunked kernel gradient, dead taps, transforms, cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsep
from jaxsep import _taps, reference

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _inputs(x_shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
    return x, kernel


def _grads(impl, x, kernel, ct, **kwargs):
    def loss(x, kernel):
        return jnp.vdot(jaxsep.depthwise_conv(x, kernel, impl=impl, **kwargs), ct)

    return jax.grad(loss, argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize("batch", [7, 8])  # 7: scan over 3 chunks of 2 plus a remainder of 1
def test_chunked_kernel_gradient_matches_xla(monkeypatch, batch):
    x, kernel = _inputs((batch, 6, 5, 3), (3, 3, 1, 6))
    monkeypatch.setattr(_taps, "_KERNEL_GRAD_CHUNK_BYTES", 2 * 6 * 5 * 3 * 4)
    kwargs = dict(strides=(2, 1), padding="SAME")
    out_shape = jaxsep.depthwise_conv(x, kernel, impl="xla", **kwargs).shape
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x, k: _grads("taps", x, k, ct, **kwargs))(x, kernel)
    assert "scan" in str(jaxpr)  # the chunked path really ran
    for got, want in zip(_grads("taps", x, kernel, ct, **kwargs), _grads("xla", x, kernel, ct, **kwargs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the kernel alone: the scan then carries no input-path tangent
    def kernel_grad(impl):
        return jax.grad(lambda k: jnp.vdot(jaxsep.depthwise_conv(x, k, impl=impl, **kwargs), ct))(kernel)

    np.testing.assert_allclose(kernel_grad("taps"), kernel_grad("xla"), rtol=1e-5, atol=1e-5)


def test_taps_that_read_only_padding_are_skipped():
    # dilation 4 with a 3-tap window on a width-3 input: with padding (8, 0) the first tap of
    # every output lies in the padding, so the lowering must skip it without an empty slice.
    x, kernel = _inputs((2, 3, 2), (3, 1, 4))
    kwargs = dict(padding=((8, 0),), dilation=4)
    got = jaxsep.depthwise_conv(x, kernel, impl="taps", **kwargs)
    want = reference.depthwise_conv(np.asarray(x), np.asarray(kernel), **kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    check_grads(lambda x, k: jaxsep.depthwise_conv(x, k, impl="taps", **kwargs), (x, kernel), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


# One layout: a second derivative differentiates the jvp rule's plain JAX ops, so what it
# checks beyond first order (the rule's wiring, its symbolic zeros) is the same in every
# layout; test_ops.py's check_grads covers channels-last (1-D) to second order, and the rule's
# pieces are compared with XLA per layout at first order.
@pytest.mark.parametrize("data_format", ["NCHW"])
def test_second_order_and_forward_mode(data_format):
    x_shape = (2, 5, 4, 2) if data_format == "NHWC" else (2, 2, 5, 4)
    x, kernel = _inputs(x_shape, (3, 2, 1, 4))

    def f(x, k):
        return jaxsep.depthwise_conv(x, k, strides=2, data_format=data_format, impl="taps")

    # float32 central differences with eps 1e-2 on a bilinear op: errors are rounding only.
    check_grads(f, (x, kernel), order=2, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2)
    _, tangent = jax.jvp(f, (x, kernel), (x, kernel))
    np.testing.assert_allclose(tangent, 2 * f(x, kernel), rtol=1e-5, atol=1e-5)


def test_count_macs_sees_the_taps_lowering():
    x, kernel = _inputs((2, 8, 8, 4), (3, 3, 1, 8))
    taps = jaxsep.cost.count_macs(lambda x, k: jaxsep.depthwise_conv(x, k, impl="taps"), x, kernel)
    xla = jaxsep.cost.count_macs(lambda x, k: jaxsep.depthwise_conv(x, k, impl="xla"), x, kernel)
    assert taps.total == xla.total == 2 * 8 * 8 * 8 * 9


def test_low_precision_accumulates_in_float32():
    x = jnp.ones((1, 64, 1), jnp.bfloat16)
    # 64 taps of 1 + 2**-7 sum to 64.5, which bfloat16 holds; summed in bfloat16 each small
    # part would round away above 32 and give 64.
    kernel = jnp.full((64, 1, 1), 1 + 2.0**-7, jnp.bfloat16)
    for impl in ("taps", "xla"):
        out = jaxsep.depthwise_conv(x, kernel, padding="VALID", impl=impl)
        assert out.dtype == jnp.bfloat16
        assert float(out[0, 0, 0]) == 64.5


def test_auto_picks_taps_on_cpu():
    x, kernel = _inputs((1, 4, 4, 2), (3, 3, 1, 2))
    if jax.default_backend() != "cpu":
        pytest.skip("auto's choice is only measured on the CPU")
    jaxpr = str(jax.make_jaxpr(lambda x, k: jaxsep.depthwise_conv(x, k))(x, kernel))
    assert "depthwise_taps" in jaxpr and "conv_general_dilated" not in jaxpr


@pytest.mark.parametrize(
    "batch, spatial, data_format, multiplier",
    [
        (6, (4, 5), "NHWC", 1),  # 4 output rows, examples summed in groups of 3
        (2, (20, 3), "NCHW", 2),  # 20 output rows summed 10 at a time
        (5, (17, 3), "NHWC", 2),  # a prime row count: one row per piece, all 5 examples
    ],
)
def test_kernel_gradient_row_pieces_match_xla(batch, spatial, data_format, multiplier):
    # _kernel_rows_forward interleaves examples and output rows into pieces whose sizes are
    # divisors of the batch and of the first spatial output size; every split must add up.
    channels = 3
    x_shape = (batch, *spatial, channels) if data_format == "NHWC" else (batch, channels, *spatial)
    x, kernel = _inputs(x_shape, (3, 2, 1, channels * multiplier))
    kwargs = dict(strides=(1, 2), dilation=(1, 1), padding="SAME", data_format=data_format)
    out_shape = jaxsep.depthwise_conv(x, kernel, impl="xla", **kwargs).shape
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape), jnp.float32)
    for got, want in zip(_grads("taps", x, kernel, ct, **kwargs), _grads("xla", x, kernel, ct, **kwargs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_strided_taps_read_a_phase_view(data_format):
    # Height 8 splits into a (4, 2) phase view; width 7 is not divisible by its stride 2 and
    # keeps strided slices; both kinds of axis in one call, forward and both gradients.
    x_shape = (3, 8, 7, 2) if data_format == "NHWC" else (3, 2, 8, 7)
    x, kernel = _inputs(x_shape, (3, 2, 1, 4))
    spatial_axes = (1, 2) if data_format == "NHWC" else (2, 3)
    view, split = _taps._phase_view(x, spatial_axes, (2, 2))
    assert split[spatial_axes[0]] == 2 and split[spatial_axes[1]] == 1
    assert view.ndim == x.ndim + 1
    kwargs = dict(strides=2, padding=((2, 1), (0, 1)), dilation=(1, 2), data_format=data_format)
    np.testing.assert_allclose(
        jaxsep.depthwise_conv(x, kernel, impl="taps", **kwargs),
        reference.depthwise_conv(np.asarray(x), np.asarray(kernel), **kwargs),
        rtol=1e-5, atol=1e-5,
    )
    out_shape = jaxsep.depthwise_conv(x, kernel, impl="xla", **kwargs).shape
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape), jnp.float32)
    for got, want in zip(_grads("taps", x, kernel, ct, **kwargs), _grads("xla", x, kernel, ct, **kwargs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_chunked_tangent_carries_both_paths_in_forward_mode(monkeypatch):
    # With chunking forced (3 chunks of 2 plus 1), the input path's tangent rides through the
    # kernel-gradient scan as a carry (see _kernel_tangent); forward mode must still give the bilinear
    # tangent op(dx, k) + op(x, dk), including the remainder chunk.
    x, kernel = _inputs((7, 6, 5, 3), (3, 3, 1, 3))
    dx, dkernel = _inputs((7, 6, 5, 3), (3, 3, 1, 3), seed=1)
    monkeypatch.setattr(_taps, "_KERNEL_GRAD_CHUNK_BYTES", 2 * 6 * 5 * 3 * 4)

    def f(x, k):
        return jaxsep.depthwise_conv(x, k, strides=(2, 1), impl="taps")

    jaxpr = str(jax.make_jaxpr(lambda *a: jax.jvp(f, a[:2], a[2:]))(x, kernel, dx, dkernel))
    assert "scan" in jaxpr
    _, tangent = jax.jvp(f, (x, kernel), (dx, dkernel))
    want = jaxsep.depthwise_conv(dx, kernel, strides=(2, 1), impl="xla") + jaxsep.depthwise_conv(
        x, dkernel, strides=(2, 1), impl="xla"
    )
    np.testing.assert_allclose(tangent, want, rtol=1e-5, atol=1e-5)


REGION_CASES = [
    # (x shape NHWC-style, kernel shape, strides, dilation, padding)
    ((2, 4, 4, 3), (3, 3, 1, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),  # 3 x 3 blocks
    ((2, 7, 6, 2), (3, 3, 1, 4), (2, 1), (1, 2), ((2, 0), (1, 3))),  # strided, dilated, multiplier 2
    ((1, 3, 5, 2), (3, 2, 1, 2), (1, 1), (1, 1), ((5, 4), (0, 0))),  # blocks that read only padding
    ((2, 9, 3), (5, 1, 3), (3,), (1,), ((2, 2),)),  # 1-D, stride 3
    ((1, 4, 3, 5, 2), (3, 3, 3, 1, 2), (1, 2, 1), (1, 1, 2), ((1, 1), (1, 1), (2, 2))),  # 3-D
]


@pytest.mark.parametrize("x_shape, kernel_shape, strides, dilation, padding", REGION_CASES)
def test_block_forward_matches_reference(x_shape, kernel_shape, strides, dilation, padding):
    # _forward_regions runs where _use_regions says so; here it runs on every geometry, the
    # ones auto does not send to it included.
    x, kernel = _inputs(x_shape, kernel_shape)
    geometry = _taps._Geometry(True, strides, dilation, padding)
    got = jax.jit(_taps._forward_regions, static_argnums=2)(x, kernel, geometry)
    want = reference.depthwise_conv(np.asarray(x), np.asarray(kernel), strides=strides, dilation=dilation, padding=padding)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_block_forward_is_used_where_it_was_measured_faster():
    def uses(x_shape, kernel_shape, strides, padding, channels_last=True):
        geometry = _taps._Geometry(channels_last, strides, (1,) * len(strides), padding)
        return _taps._use_regions(x_shape, kernel_shape[: len(strides)], geometry)

    same, stride2 = ((1, 1), (1, 1)), ((0, 1), (0, 1))
    assert uses((128, 32, 32, 32), (3, 3, 1, 32), (1, 1), same)  # stride 1
    assert not uses((128, 32, 32, 64), (3, 3, 1, 64), (2, 2), stride2)  # stride 2, few border outputs
    assert uses((128, 4, 4, 512), (3, 3, 1, 512), (2, 2), stride2)  # stride 2, mostly border
    assert not uses((128, 32, 32, 32), (3, 3, 1, 32), (1, 1), same, channels_last=False)
    assert not uses((1, 9, 9, 9, 2), (5, 5, 5, 1, 2), (1, 1, 1), ((2, 2),) * 3)  # 19**3 terms
    # and depthwise_conv really runs it: its blocks are concatenated
    x, kernel = _inputs((2, 4, 4, 3), (3, 3, 1, 3))
    assert "concatenate" in str(jax.make_jaxpr(lambda x, k: jaxsep.depthwise_conv(x, k, impl="taps"))(x, kernel))
