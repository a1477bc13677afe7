"""The channel_matmul primitive behind the channels-last pointwise conv: every transformation
must agree with the plain ``dot_general`` it replaces."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from jaxsep._channel_matmul import channel_matmul


def _dot(x, w, preferred_element_type=None):
    return lax.dot_general(
        x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=preferred_element_type
    )


def _inputs(x_shape=(2, 3, 4, 5), w_shape=(5, 6), dtype=jnp.float32):
    kx, kw = jax.random.split(jax.random.key(0))
    return (jax.random.normal(kx, x_shape, dtype), jax.random.normal(kw, w_shape, dtype))


def _loss(matmul):
    return lambda x, w: jnp.sum(jnp.sin(matmul(x, w)))


F32 = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape", [(5,), (7, 5), (2, 3, 4, 5), (1, 2, 2, 2, 5)])
def test_forward_and_jit_equal_dot_general(x_shape):
    x, w = _inputs(x_shape)
    expected = _dot(x, w)
    np.testing.assert_allclose(channel_matmul(x, w), expected, **F32)
    np.testing.assert_allclose(jax.jit(channel_matmul)(x, w), expected, **F32)
    assert channel_matmul(x, w).shape == x_shape[:-1] + (6,)


def test_bfloat16_accumulates_in_the_preferred_type_and_grads_keep_input_dtypes():
    x, w = _inputs(dtype=jnp.bfloat16)
    out = channel_matmul(x, w, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, _dot(x, w, jnp.float32), rtol=1e-6, atol=1e-6)

    def loss(matmul):
        return lambda x, w: jnp.sum(jnp.sin(matmul(x, w, jnp.float32)))

    got = jax.grad(loss(lambda x, w, t: channel_matmul(x, w, preferred_element_type=t)),
                   (0, 1))(x, w)
    want = jax.grad(loss(_dot), (0, 1))(x, w)
    for g, e in zip(got, want):
        assert g.dtype == jnp.bfloat16
        # one bfloat16 rounding of sums of 5 (dx) and 24 (dw) float32 products
        np.testing.assert_allclose(g.astype(np.float32), e.astype(np.float32), rtol=2e-2, atol=2e-2)


def test_reverse_and_forward_mode_equal_dot_general():
    x, w = _inputs()
    for got, want in zip(jax.grad(_loss(channel_matmul), (0, 1))(x, w),
                         jax.grad(_loss(_dot), (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, **F32)
    t_x, t_w = jnp.cos(x), jnp.cos(w)
    _, got = jax.jvp(channel_matmul, (x, w), (t_x, t_w))
    _, want = jax.jvp(_dot, (x, w), (t_x, t_w))
    np.testing.assert_allclose(got, want, **F32)


def test_second_order_forward_over_reverse_and_reverse_over_reverse():
    x, w = _inputs()
    v = jnp.cos(w)
    hvp = lambda loss: jax.jvp(lambda w_: jax.grad(loss, 1)(x, w_), (w,), (v,))[1]
    np.testing.assert_allclose(hvp(_loss(channel_matmul)), hvp(_loss(_dot)), **F32)
    rr = lambda loss: jax.grad(lambda w_: jnp.sum(jax.grad(loss, 0)(x, w_) ** 2))(w)
    np.testing.assert_allclose(rr(_loss(channel_matmul)), rr(_loss(_dot)), **F32)
    check_grads(lambda x, w: jnp.sin(channel_matmul(x, w)), (x, w), order=2,
                modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)


def test_kernel_gradient_transposes_the_activation_not_the_gradient():
    # The point of the primitive: dw = x.T @ g, with g read in its own (M, O) layout.
    x, w = _inputs()
    jaxpr = jax.make_jaxpr(jax.grad(_loss(channel_matmul), 1))(x, w).jaxpr
    (dot,) = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dot.params["dimension_numbers"] == (((1,), (0,)), ((), ()))
    assert dot.invars[0].aval.shape == (5, 24) and dot.invars[1].aval.shape == (24, 6)
    producers = {out: e.primitive.name for e in jaxpr.eqns for out in e.outvars}
    assert producers[dot.invars[0]] == "transpose"
    assert producers[dot.invars[1]] != "transpose"


@pytest.mark.parametrize("in_axes", [(0, None), (2, None), (None, 0), (0, 0)])
def test_vmap_and_vmap_of_grad(in_axes):
    x, w = _inputs()
    xs = jnp.stack([x, 2 * x, -x], axis=in_axes[0]) if in_axes[0] is not None else x
    ws = jnp.stack([w, -w, 3 * w]) if in_axes[1] is not None else w
    np.testing.assert_allclose(jax.vmap(channel_matmul, in_axes)(xs, ws),
                               jax.vmap(_dot, in_axes)(xs, ws), **F32)
    for got, want in zip(jax.vmap(jax.grad(_loss(channel_matmul), (0, 1)), in_axes)(xs, ws),
                         jax.vmap(jax.grad(_loss(_dot), (0, 1)), in_axes)(xs, ws)):
        np.testing.assert_allclose(got, want, **F32)


def test_linear_transpose_and_checkpoint():
    x, w = _inputs()
    g = jnp.cos(_dot(x, w))
    (got,) = jax.linear_transpose(lambda w_: channel_matmul(x, w_), w)(g)
    (want,) = jax.linear_transpose(lambda w_: _dot(x, w_), w)(g)
    np.testing.assert_allclose(got, want, **F32)
    got = jax.grad(jax.checkpoint(_loss(channel_matmul)), (0, 1))(x, w)
    for a, b in zip(got, jax.grad(_loss(_dot), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, **F32)


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from jaxsep._channel_matmul import channel_matmul
x = jnp.arange(4 * 3 * 5, dtype=jnp.float32).reshape(4, 3, 5) / 10
w = jnp.linspace(-1, 1, 30, dtype=jnp.float32).reshape(5, 6)
loss = lambda x, w: jnp.sum(jnp.sin(channel_matmul(x, w)))
want = jax.grad(lambda x, w: jnp.sum(jnp.sin(x @ w)), (0, 1))(x, w)
for kind in (AxisType.Explicit, AxisType.Auto):
    mesh = jax.make_mesh((2,), ("data",), axis_types=(kind,))
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        assert jax.typeof(jax.jit(channel_matmul)(xs, w)).shape == (4, 3, 6)
        got = jax.jit(jax.grad(loss, (0, 1)))(xs, w)
        for g, e in zip(got, want):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
        # inside shard_map: the replicated kernel's gradient is summed over the devices
        summed = lambda x, w: jax.lax.psum(loss(x, w), "data")
        grad_w = jax.jit(jax.shard_map(jax.grad(summed, 1), mesh=mesh,
                                       in_specs=(P("data"), P()), out_specs=P()))(xs, w)
        np.testing.assert_allclose(grad_w, want[1], rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_batch_sharded_over_two_devices_explicit_and_auto_meshes_and_shard_map():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
