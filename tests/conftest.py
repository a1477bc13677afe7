"""Shared test helpers: seeded random inputs, the per-dtype tolerance table, strict promotion.

Plain functions (imported as ``from conftest import ...``) for what parametrize needs at
collection time; fixtures for what changes global state.
"""

from __future__ import annotations

import math
import os
import signal

# The CLI tests run jaxsep train/sweep in this process; jaxsep.host_memory's single malloc
# arena would then slow every later compile in the suite (XLA compiles with many threads), so
# the suite opts out. tests/test_host_memory.py tests the setting itself.
os.environ.setdefault("JAXSEP_REUSE_HOST_MEMORY", "0")
# impl="auto" follows the fixed rules (no timing): deterministic and fast; test_autotune.py turns it on.
os.environ.setdefault("JAXSEP_AUTOTUNE", "0")
# The CLI tests would otherwise keep compiled programs in the home cache folder for later runs
# (tests/test_compilation_cache.py turns it on in a temporary folder).
os.environ.setdefault("JAXSEP_COMPILATION_CACHE", "0")

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


# --------------------------------------------------------------------------------------------
# The training harness: one tiny configuration, trained once per session.
#
# Every harness test (train, eval, sweep, command line) that trains uses tiny_config() or a
# config that differs from it only in fields that the compiled steps do not depend on (the
# learning rate and its schedule, epochs, seed, run folder, ...), so the whole suite compiles
# one train step and one eval step (JAX caches them in the process). Changing the model, the
# batch, the data size, dropout, augmentation or the dtype compiles another (15-30 s on a
# 2-core CPU): such tests belong in `-m slow`.


# The modules whose tests compile tiny_config's steps or read reference_run. pytest-xdist
# (`--dist loadgroup` in pyproject.toml) runs one xdist_group on one worker, so those steps
# and the reference run are compiled once per suite instead of once per worker.
HARNESS_MODULES = frozenset(
    {"test_train", "test_cli", "test_sweep", "test_sweep_zoo", "test_init_from"}
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marker into a group
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__ in HARNESS_MODULES:
            item.add_marker(pytest.mark.xdist_group("harness"))


def tiny_config(out=None, **changes):
    """MobileNetV1 at width 0.25 on 256 synthetic 32x32 images (8 steps of 32), 40 test
    images, two epochs; ``out`` the run folder (None: write nothing)."""
    from jaxsep.train import TrainConfig

    values = dict(
        model="mobilenet_v1",
        width=0.25,
        dataset="synthetic",
        max_train_examples=256,  # 8 steps per epoch
        max_test_examples=40,  # not a multiple of the eval batch: the last batch is padded
        batch_size=32,
        epochs=2,
        lr=0.05,
        schedule="constant",  # so that a 1-epoch run is the first epoch of a 2-epoch run
        warmup_epochs=0.5,
        dropout=0.1,  # resume must reproduce dropout's randomness
        augment=False,  # (augmentation's determinism is tested in test_data.py)
        out=None if out is None else str(out),
        quiet=True,
    )
    values.update(changes)
    return TrainConfig(**values)


def metric_lines(out) -> list[dict]:
    """metrics.jsonl without its timing fields."""
    import json
    from pathlib import Path

    from jaxsep.train import TIMING_FIELDS

    lines = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING_FIELDS} for line in lines]


def assert_same_state(out_a, out_b) -> None:
    """The last checkpoints of two runs hold the same arrays, bit for bit, at the same step."""
    from jaxsep import train

    tree_a, meta_a = train.load_checkpoint(out_a)
    tree_b, meta_b = train.load_checkpoint(out_b)
    leaves_a = jax.tree_util.tree_flatten_with_path(tree_a)[0]
    leaves_b = jax.tree_util.tree_flatten_with_path(tree_b)[0]
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
    for (path, a), (_, b) in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert meta_a["global_step"] == meta_b["global_step"]


def config_argv(config) -> list[str]:
    """``jaxsep train`` flags for ``config`` (fields at their defaults are left out)."""
    import dataclasses

    from jaxsep.train import TrainConfig

    argv = []
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def cli_main(argv: list[str]) -> int:
    """``jaxsep ARGV`` in this process (so it reuses the compiled steps)."""
    from jaxsep import cli

    return cli.main(argv)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """``(run folder, summary)`` of tiny_config trained two epochs, uninterrupted: what
    every resumed run must reproduce exactly, and the trained run that eval, sweep and
    command-line tests read. Read it, never write into it."""
    from jaxsep import train

    out = tmp_path_factory.mktemp("reference") / "run"
    summary = train.train_and_evaluate(tiny_config(out))
    return out, summary


def add_hooks(monkeypatch, *extra) -> None:
    """Makes every ``train_and_evaluate`` call while ``monkeypatch`` is active (the command
    line's, a sweep's) also run the hooks ``extra``."""
    from jaxsep import train
    from jaxsep.train import loop

    original = loop.train_and_evaluate

    def with_hooks(config, *, hooks=(), **kwargs):
        return original(config, hooks=[*hooks, *extra], **kwargs)

    monkeypatch.setattr(loop, "train_and_evaluate", with_hooks)
    monkeypatch.setattr(train, "train_and_evaluate", with_hooks)


class SendSignal:
    """A training hook that sends this process a real signal right after global step
    ``global_step`` (as ``kill`` from outside would, between two steps)."""

    def __init__(self, global_step: int, signum: int = signal.SIGTERM):
        self.global_step, self.signum = global_step, signum

    def __call__(self, step, loop) -> None:
        if step.global_step == self.global_step:
            os.kill(os.getpid(), self.signum)
