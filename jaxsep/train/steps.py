"""The jitted train and eval steps: small pure functions of (graphdef, spec, state, ...).

A model is carried as ``nnx.split`` pieces: a ``GraphDef`` (static structure, also the
train/eval mode) and states: ``params`` (``nnx.Param``), ``batch_stats``
(``nnx.BatchStat``) and ``rest`` (anything else, e.g. dropout's RNG streams, which the step
reseeds every step so that all randomness comes from ``batch_key(seed, epoch, step)``).

Both steps gather their batch on device from the whole (uint8) split, held on device once:
the host passes only scalars (epoch, step, learning rate) per step, so no Python work scales
with the batch. Under a mesh the batch is sharded along the ``"data"`` axis and everything
else is replicated; the math is that of one device (BatchNorm statistics are over the
global batch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxsep import data as jdata
from jaxsep.train.optim import direction_transform

__all__ = [
    "DATA_AXIS",
    "StepSpec",
    "eval_step",
    "init_optimizer_state",
    "jit_eval_step",
    "jit_train_step",
    "to_device",
    "train_inputs",
    "train_step",
    "zero_sums",
]

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """The static (hashable) settings of the steps; two runs with equal specs and graphdefs
    share compiled steps.

    Attributes:
      batch_size: global batch of a train step (eval: of an eval step).
      num_classes: classifier outputs.
      seed: of ``batch_key(seed, epoch, step)``.
      augment: random crop + flip of train batches.
      cutout: side of the Cutout square zeroed in each normalized train image (0: none).
      resolution: resize inputs to this size (None: keep).
      compute_dtype: name of the activations' dtype ("float32" or "bfloat16").
      label_smoothing: of the train loss.
      optimizer, weight_decay, momentum, nesterov, adam_b1, adam_b2: of
        :func:`jaxsep.train.optim.direction_transform`.
      decay_mask: the weight-decay mask's leaves (bools, in ``params`` leaf order).
      mesh: the device mesh (one axis, ``"data"``).
    """

    batch_size: int
    num_classes: int
    seed: int
    augment: bool
    cutout: int
    resolution: int | None
    compute_dtype: str
    label_smoothing: float
    optimizer: str
    weight_decay: float
    momentum: float
    nesterov: bool
    adam_b1: float
    adam_b2: float
    decay_mask: tuple[bool, ...]
    mesh: Mesh

    def transform(self, params: Any) -> optax.GradientTransformation:
        mask = jax.tree.unflatten(jax.tree.structure(params), self.decay_mask)
        return direction_transform(
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            nesterov=self.nesterov,
            adam_b1=self.adam_b1,
            adam_b2=self.adam_b2,
            mask=mask,
        )

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())


def init_optimizer_state(spec: StepSpec, params: Any) -> Any:
    """The optimizer state of ``params`` (zeros, replicated over ``spec``'s mesh), for
    :func:`train_step`: one compiled program. Run eagerly, optax's ``init`` compiles one
    small program per parameter shape (24 for MobileNetV1: ~0.6 s of a warm start, the
    programs coming from the persistent compilation cache; docs/performance.md)."""
    return _init_program(spec)(params)


@functools.lru_cache(maxsize=16)
def _init_program(spec: StepSpec):
    return jax.jit(lambda params: spec.transform(params).init(params),
                   out_shardings=spec.replicated)


def _inputs(spec: StepSpec, images_u8: jax.Array) -> jax.Array:
    if spec.resolution is not None:
        images_u8 = jdata.resize(images_u8, spec.resolution)
    return jdata.normalize(images_u8, dtype=jnp.dtype(spec.compute_dtype))


def train_inputs(spec: StepSpec, images_u8: jax.Array, key: jax.Array) -> jax.Array:
    """The network input of a train batch: uint8 (B, H, W, C) images, randomly cropped and
    flipped (``spec.augment``), resized (``spec.resolution``), normalized to
    ``spec.compute_dtype``, then given a Cutout square (``spec.cutout``), which normalization
    has made the dataset mean. ``key`` is the batch's ``batch_key``."""
    augment_key, _ = jax.random.split(key)  # the other half is the dropout key
    if spec.augment:
        images_u8 = jdata.augment(images_u8, augment_key)
    x = _inputs(spec, images_u8)
    if spec.cutout:
        # fold_in rather than a three-way split, which would change the crop, flip and
        # dropout keys of every run without Cutout.
        x = jdata.cutout(x, jax.random.fold_in(key, 1), size=spec.cutout)
    return x


def _gather(spec: StepSpec, arrays: tuple[jax.Array, ...], index: jax.Array) -> tuple:
    index = lax.with_sharding_constraint(index, spec.batch_sharding)
    return tuple(
        lax.with_sharding_constraint(jnp.take(a, index, axis=0), spec.batch_sharding)
        for a in arrays
    )


def _reseeded(graphdef: nnx.GraphDef, state: dict[str, Any], rest: Any, key: jax.Array) -> Any:
    """``rest`` with every RNG stream of the model given a key derived from ``key`` (stream
    tags sorted, so the derivation does not depend on dict order)."""
    tags = sorted(
        {
            variable.tag
            for _, variable in nnx.to_flat_state(rest)
            if isinstance(variable, nnx.RngKey)
        }
    )
    if not tags:
        return rest
    model = nnx.merge(graphdef, state["params"], state["batch_stats"], rest, copy=True)
    nnx.reseed(model, **{tag: jax.random.fold_in(key, i) for i, tag in enumerate(tags)})
    return nnx.split(model, nnx.Param, nnx.BatchStat, ...)[3]


def train_step(
    graphdef: nnx.GraphDef,
    spec: StepSpec,
    state: dict[str, Any],
    rest: Any,
    images: jax.Array,
    labels: jax.Array,
    order: jax.Array,
    epoch: jax.Array,
    step: jax.Array,
    lr: jax.Array,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """One optimizer step on batch ``step`` of ``epoch``.

    Args:
      graphdef: the model's structure in train mode (static).
      spec: static settings.
      state: ``{"params", "batch_stats", "opt_state", "sums"}``; ``sums`` accumulates the
        epoch's ``loss`` (float32 sum of batch means), ``correct`` and ``steps`` (int32).
        Donated.
      rest: the model's other variables (RNG streams), not updated.
      images: uint8 (N, H, W, 3), the whole train split, replicated.
      labels: int32 (N,).
      order: int32 (>= (step + 1) * B,), this epoch's permutation.
      epoch, step: int32 scalars; batch ``step`` is ``order[step * B : (step + 1) * B]``.
      lr: float32 scalar, this step's learning rate.

    Returns:
      ``(new_state, {"loss": float32, "finite": bool})``: ``finite`` is False when the loss
      or any updated parameter is not finite.
    """
    batch = spec.batch_size
    index = lax.dynamic_slice_in_dim(order, step * batch, batch)
    images_u8, labels = _gather(spec, (images, labels), index)
    key = jdata.batch_key(spec.seed, epoch, step)
    _, dropout_key = jax.random.split(key)
    x = train_inputs(spec, images_u8, key)
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, spec.num_classes, dtype=jnp.float32), spec.label_smoothing
    )
    params = state["params"]
    rest = _reseeded(graphdef, state, rest, dropout_key)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        model = nnx.merge(graphdef, params, state["batch_stats"], rest, copy=True)
        logits = model(x).astype(jnp.float32)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    direction, opt_state = spec.transform(params).update(grads, state["opt_state"], params)
    params = jax.tree.map(lambda p, d: p - lr.astype(p.dtype) * d.astype(p.dtype), params, direction)
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])
    )
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == labels, dtype=jnp.int32)
    sums = state["sums"]
    sums = {
        "loss": sums["loss"] + loss,
        "correct": sums["correct"] + correct,
        "steps": sums["steps"] + 1,
    }
    new_state = {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": opt_state,
        "sums": sums,
    }
    return new_state, {"loss": loss, "finite": finite}


def eval_step(
    graphdef: nnx.GraphDef,
    spec: StepSpec,
    params: Any,
    batch_stats: Any,
    rest: Any,
    images: jax.Array,
    labels: jax.Array,
    start: jax.Array,
    num_valid: jax.Array,
) -> dict[str, jax.Array]:
    """Sums over examples ``start .. start + B`` of the (padded) test split, counting only
    indices below ``num_valid``: ``{"loss": float32 sum of cross-entropies (no smoothing),
    "correct": int32}``. ``graphdef`` is the model in eval mode."""
    batch = spec.batch_size
    index = start + jnp.arange(batch, dtype=jnp.int32)
    valid = lax.with_sharding_constraint(index < num_valid, spec.batch_sharding)
    images_u8, labels = _gather(spec, (images, labels), index)
    model = nnx.merge(graphdef, params, batch_stats, rest, copy=True)
    logits = model(_inputs(spec, images_u8)).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels) & valid
    return {
        "loss": jnp.sum(jnp.where(valid, losses, 0.0)),
        "correct": jnp.sum(correct, dtype=jnp.int32),
    }


# Jitted once per process; compiled per (graphdef, spec, shapes). The train state is donated.
jit_train_step = jax.jit(train_step, static_argnums=(0, 1), donate_argnums=(2,))
jit_eval_step = jax.jit(eval_step, static_argnums=(0, 1))


def zero_sums(spec: StepSpec) -> dict[str, jax.Array]:
    """Fresh epoch accumulators, replicated over the mesh."""
    return {
        "loss": to_device(np.zeros((), np.float32), spec.replicated),
        "correct": to_device(np.zeros((), np.int32), spec.replicated),
        "steps": to_device(np.zeros((), np.int32), spec.replicated),
    }


def to_device(array: Any, sharding: NamedSharding) -> jax.Array:
    """A host array (the same in every process) as a global ``jax.Array`` with ``sharding``;
    works when the mesh spans several processes (multi-host)."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
