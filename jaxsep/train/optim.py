"""Learning-rate schedules, the weight-decay mask and the optimizer of a training run.

The optimizer is split the way the train step uses it: an optax transformation that turns
gradients into an update *direction* (weight decay, momentum or Adam moments), and a
learning rate computed on the host from the step number and multiplied in by the step
(``params - lr * direction``). This is exactly ``optax.sgd``/``optax.adamw`` with a schedule
(both scale by the learning rate last), but the compiled step does not depend on the
schedule, the peak learning rate or the number of epochs, so extending a run (or a sweep over
learning rates) reuses one compiled step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx

from jaxsep import nn as jnn
from jaxsep.train.config import TrainConfig

__all__ = [
    "PARAM_KINDS",
    "direction_transform",
    "learning_rate_schedule",
    "parameter_kinds",
    "weight_decay_mask",
]

# Kinds of parameters, for the weight-decay mask.
PARAM_KINDS = ("weight", "depthwise", "bias", "norm")
# PyTorch's OneCycleLR defaults: start at peak / 25, end at start / 1e4, rise for 30% of it.
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
ONECYCLE_PCT_START = 0.3
ADAM_EPS = 1e-8


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate of each optimizer step, as a plain Python function of the global
    step ``t`` (0-based: the rate used by the ``t``-th update).

    * ``"cosine"``: linear warm-up over ``warmup_epochs`` (reaching the peak at the end of
      warm-up: ``lr * (t + 1) / W``), then cosine decay to 0 at the end of the run.
    * ``"constant"``: the same warm-up, then ``lr``.
    * ``"onecycle"``: PyTorch's ``OneCycleLR`` (cosine annealing): from ``lr / 25`` up to
      ``lr`` over ``warmup_epochs`` (30% of the run when 0), then down to ``lr / 25 / 1e4``.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"learning_rate_schedule: steps_per_epoch must be >= 1, but got {steps_per_epoch}")
    peak = config.resolved_lr
    total = config.epochs * steps_per_epoch
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)

    if config.schedule == "onecycle":
        rise = warmup if warmup > 0 else int(round(ONECYCLE_PCT_START * total))
        rise = min(max(rise, 1), total - 1) if total > 1 else 1
        start = peak / ONECYCLE_DIV
        end = start / ONECYCLE_FINAL_DIV

        def onecycle(step: int) -> float:
            if step < rise:
                return start + (peak - start) * 0.5 * (1.0 - math.cos(math.pi * step / rise))
            fraction = (step - rise) / max(total - 1 - rise, 1)
            return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))

        return onecycle

    def warmed_up(step: int) -> float | None:
        if step < warmup:
            return peak * (step + 1) / warmup
        return None

    if config.schedule == "constant":
        return lambda step: warmed_up(step) or peak

    def cosine(step: int) -> float:
        rate = warmed_up(step)
        if rate is not None:
            return rate
        fraction = (step - warmup) / max(total - warmup, 1)
        return peak * 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))

    return cosine


def _is_depthwise_conv(module: Any) -> bool:
    """A grouped convolution with one input channel per group, whatever its class."""
    if isinstance(module, jnn.DepthwiseConv):
        return True
    if isinstance(module, jnn.Conv):  # also GroupedConv
        return module.groups > 1 and module.groups == module.in_features
    if isinstance(module, nnx.Conv):
        groups = module.feature_group_count
        return groups > 1 and groups == module.in_features
    return False


def parameter_kinds(model: nnx.Module) -> dict[tuple, str]:
    """Every ``nnx.Param`` of ``model`` by path (as in ``nnx.to_flat_state``), with its kind:

    * ``"depthwise"``: kernels of depthwise convolutions (``jaxsep.nn.DepthwiseConv``, the
      depthwise kernel of ``SeparableConv``, and any grouped convolution with one input channel
      per group, ``nnx.Conv(feature_group_count=C)`` included);
    * ``"norm"``: scales and offsets of BatchNorm / LayerNorm / GroupNorm / RMSNorm;
    * ``"bias"``: any other parameter named ``bias``;
    * ``"weight"``: everything else (dense and pointwise kernels, the classifier's weights).

    Works on an abstract model (``nnx.eval_shape``) too.
    """
    modules = {
        path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)
    }
    kinds = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        owner, name = modules.get(tuple(path[:-1])), path[-1]
        if isinstance(owner, jnn.NORM_TYPES):
            kind = "norm"
        elif isinstance(owner, jnn.SeparableConv) and name == "depthwise_kernel":
            kind = "depthwise"
        elif name == "kernel" and _is_depthwise_conv(owner):
            kind = "depthwise"
        elif name == "bias":
            kind = "bias"
        else:
            kind = "weight"
        kinds[tuple(path)] = kind
    return kinds


def _key_of(entry: Any) -> Any:
    for attribute in ("key", "idx", "name"):
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    raise TypeError(f"unexpected pytree path entry {entry!r}")


def weight_decay_mask(
    model: nnx.Module, *, decay_depthwise: bool = False, decay_norm_and_bias: bool = False
) -> Any:
    """A pytree shaped like ``nnx.state(model, nnx.Param)`` with a bool per parameter: True
    where weight decay applies. "weight" kernels always decay; depthwise kernels only with
    ``decay_depthwise``; biases and normalization parameters only with ``decay_norm_and_bias``
    (timm's and the MobileNet paper's default is to leave all three out)."""
    kinds = parameter_kinds(model)
    decays = {
        "weight": True,
        "depthwise": bool(decay_depthwise),
        "bias": bool(decay_norm_and_bias),
        "norm": bool(decay_norm_and_bias),
    }

    def decide(path: tuple, _: Any) -> bool:
        keys = tuple(_key_of(entry) for entry in path)
        if keys and keys[-1] == "value":  # the Variable's own node
            keys = keys[:-1]
        return decays[kinds[keys]]

    return jax.tree_util.tree_map_with_path(decide, nnx.state(model, nnx.Param))


def direction_transform(
    *,
    optimizer: str,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    mask: Any = None,
) -> optax.GradientTransformation:
    """The optax transformation from gradients to the update direction ``d``; the step then
    applies ``params - lr * d``.

    * ``"sgd"``: PyTorch's ``SGD(momentum, nesterov, weight_decay)``: the decay is added to
      the gradient (L2), then momentum: ``chain(add_decayed_weights, trace)``.
    * ``"adamw"``: ``chain(scale_by_adam, add_decayed_weights)``, i.e. ``optax.adamw``
      (decoupled decay, scaled by the learning rate as in PyTorch's ``AdamW``).

    ``mask`` (from :func:`weight_decay_mask`) selects the parameters that decay.
    """
    decay = [optax.add_decayed_weights(weight_decay, mask)] if weight_decay > 0 else []
    if optimizer == "sgd":
        parts = decay + ([optax.trace(decay=momentum, nesterov=nesterov)] if momentum > 0 else [])
    elif optimizer == "adamw":
        parts = [optax.scale_by_adam(b1=adam_b1, b2=adam_b2, eps=ADAM_EPS)] + decay
    else:
        raise ValueError(f"direction_transform: optimizer must be 'sgd' or 'adamw', but got {optimizer!r}")
    return optax.chain(*parts) if parts else optax.identity()
