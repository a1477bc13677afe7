import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsep
from jaxsep import xla_options


def test_cpu_asks_for_wide_vectors_and_other_backends_for_nothing():
    assert xla_options.compiler_options("cpu") == {"xla_cpu_prefer_vector_width": 512}
    assert xla_options.compiler_options("CPU") == xla_options.compiler_options("cpu")
    assert xla_options.compiler_options("gpu") == {}
    assert xla_options.compiler_options("tpu") == {}
    assert jaxsep.compiler_options() == xla_options.compiler_options(jax.default_backend())


def test_returns_a_fresh_dict():
    options = xla_options.compiler_options("cpu")
    options["xla_cpu_prefer_vector_width"] = 128
    assert xla_options.compiler_options("cpu")["xla_cpu_prefer_vector_width"] == 512


def test_bad_backend_type_names_the_argument():
    with pytest.raises(TypeError, match="backend must be a str"):
        xla_options.compiler_options(3)


def test_options_compile_and_keep_the_depthwise_gradients():
    # XLA rejects unknown option names at compile time, so this also checks the name.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 1, 4)), jnp.float32)

    def loss(x, k):
        return jnp.sum(jnp.sin(jaxsep.depthwise_conv(x, k)))

    grads = jax.grad(loss, argnums=(0, 1))
    plain = jax.jit(grads)(x, k)
    tuned = jax.jit(grads, compiler_options=jaxsep.compiler_options())(x, k)
    for a, b in zip(plain, tuned):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
