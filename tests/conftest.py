"""Shared test helpers: seeded random inputs, the per-dtype tolerance table, strict promotion.

Plain functions (imported as ``from conftest import ...``) for what parametrize needs at
collection time; fixtures for what changes global state.
"""

from __future__ import annotations

import math
import os

# The CLI tests run jaxsep train/sweep in this process; jaxsep.host_memory's single malloc
# arena would then slow every later compile in the suite (XLA compiles with many threads), so
# the suite opts out. tests/test_host_memory.py tests the setting itself.
os.environ.setdefault("JAXSEP_REUSE_HOST_MEMORY", "0")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

# dtype -> base tolerance. Low-precision results are rounded to their dtype once at the end
# (float32 accumulation inside), separable_conv also rounds its depthwise hidden activations;
# bfloat16 keeps 8 significant bits (2^-8 ~ 4e-3), float16 11 (2^-11 ~ 5e-4). The reference
# runs on the same rounded inputs, so only the op's own rounding and summation order count.
BASE_TOLERANCE = {
    jnp.dtype(jnp.float32): 2e-6,
    jnp.dtype(jnp.bfloat16): 2e-2,
    jnp.dtype(jnp.float16): 2e-3,
}
DTYPES = tuple(BASE_TOLERANCE)  # float64 is left out: jax_enable_x64 is off

# impl values of depthwise_conv / separable_conv.
IMPLS = ("xla", "taps", "auto")


def tolerance(dtype, reduction: int = 1) -> dict[str, float]:
    """``rtol``/``atol`` for a result summing ``reduction`` products of unit-scale inputs.

    Rounding errors of a sum of n terms grow like sqrt(n) times a term's size, and an output
    near zero (cancellation) needs that as an absolute floor.
    """
    base = BASE_TOLERANCE[jnp.dtype(dtype)]
    return {"rtol": base, "atol": base * math.sqrt(reduction)}


def rand(shape, dtype=jnp.float32, seed: int = 0) -> jax.Array:
    """Standard-normal values from a fixed seed, rounded to ``dtype``."""
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return jnp.asarray(values, dtype=dtype)


def f64(a) -> np.ndarray:
    """The exact float64 value of a (possibly low-precision) array, for the reference."""
    return np.asarray(a).astype(np.float64)


def assert_matches(got, want, dtype, reduction: int = 1) -> None:
    """``got`` has ``dtype`` and matches the float64 ``want`` within the dtype's tolerance."""
    assert got.dtype == jnp.dtype(dtype), f"result dtype {got.dtype}, expected {dtype}"
    assert got.shape == want.shape, f"shape {got.shape}, reference {want.shape}"
    np.testing.assert_allclose(f64(got), want, **tolerance(dtype, reduction))


def materialize(model, seed: int = 0):
    """A real module from an abstract one (``nnx.eval_shape``): He-normal kernels (variance
    2 / fan_in), BatchNorm at identity, zero biases, fresh "rbg" keys. Eager construction
    compiles one sampler per parameter shape (15 s for EfficientNet-B0 on two cores); tests of
    forward and backward passes need only some finite weights."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(model)

    def fill(path, leaf):
        name = next(str(k.key) for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(int(rng.integers(1 << 30)), impl="rbg")
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean", "count"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@pytest.fixture
def strict_promotion():
    """Implicit rank and dtype promotion are errors while a test runs (as in Equinox's test
    config): ops must broadcast and cast explicitly. Scoped to the tests that request it."""
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield
