"""Argument checks shared by the model constructors (messages in the jax.lax style)."""

from __future__ import annotations

import numbers

from jaxsep import _validation as v

from jaxsep._choices import MODEL_PADDINGS, VARIANT_NUM_CLASSES as NUM_CLASSES, VARIANTS


def check_variant(name: str, variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"{name}: variant must be one of {VARIANTS}, but got {variant!r}")
    return variant


def resolve_num_classes(name: str, num_classes: int | None, variant: str) -> int:
    """``None`` means the variant's dataset: 10 for "cifar", 1000 for "imagenet"."""
    if num_classes is None:
        return NUM_CLASSES[variant]
    return v.check_int(name, "num_classes", num_classes)


def check_width(name: str, width_multiplier: float) -> float:
    if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, numbers.Real):
        raise TypeError(
            f"{name}: width_multiplier must be a number, but got "
            f"{type(width_multiplier).__name__} {width_multiplier!r}"
        )
    if not width_multiplier > 0:
        raise ValueError(f"{name}: width_multiplier must be > 0, but got {width_multiplier}")
    return float(width_multiplier)


def check_rate(name: str, rate: float, arg: str = "dropout_rate") -> float:
    """A drop probability in ``[0, 1)`` (``arg`` names the argument)."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(
            f"{name}: {arg} must be a number, but got {type(rate).__name__} {rate!r}"
        )
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name}: {arg} must be in [0, 1), but got {rate}")
    return float(rate)


def layer_options(
    name: str, *, padding: str, bn_epsilon: float, bn_momentum: float
) -> dict[str, str | float]:
    """The checked ``padding``, ``bn_epsilon`` and ``bn_momentum`` of a model, as the keyword
    arguments every block of :mod:`jaxsep.models.blocks` takes.

    ``bn_epsilon > 0``; ``bn_momentum`` (Flax's: the weight of the old running value,
    ``1 -`` PyTorch's momentum) in ``[0, 1]``.
    """
    return dict(
        padding=v.check_choice(name, "padding", padding, MODEL_PADDINGS),
        bn_epsilon=v.check_number(name, "bn_epsilon", bn_epsilon, low=0.0, low_open=True),
        bn_momentum=v.check_number(
            name, "bn_momentum", bn_momentum, low=0.0, high=1.0, high_open=False
        ),
    )


def model_options(
    model: object,
    *,
    variant: str,
    num_classes: int | None,
    width_multiplier: float,
    dropout_rate: float,
    padding: str,
    bn_epsilon: float,
    bn_momentum: float,
    in_channels: int,
) -> tuple[dict[str, str | float], int]:
    """Checks the options every model takes and stores them on ``model`` (as ``variant``,
    ``num_classes`` -- resolved per variant --, ``width_multiplier``, ``dropout_rate``,
    ``padding``, ``bn_epsilon``, ``bn_momentum``).

    Returns ``(layer, in_channels)``: :func:`layer_options`' keyword arguments for the blocks
    and the checked ``in_channels``.
    """
    name = type(model).__name__
    model.variant = check_variant(name, variant)
    model.num_classes = resolve_num_classes(name, num_classes, variant)
    model.width_multiplier = check_width(name, width_multiplier)
    model.dropout_rate = check_rate(name, dropout_rate)
    layer = layer_options(name, padding=padding, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
    model.padding = layer["padding"]
    model.bn_epsilon, model.bn_momentum = layer["bn_epsilon"], layer["bn_momentum"]
    return layer, v.check_int(name, "in_channels", in_channels)
