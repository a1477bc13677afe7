"""Argument checking for the whole package: ops, modules, models, data, configs and sweeps.

Every check raises before any compute, with one wording in the ``jax.lax`` style: where (the
op, module or config), the argument, the rule, "but", and the offending value::

    depthwise_conv: strides must be >= 1, but got 0
    TrainConfig: batch_size must be an int, but got str '128'

Checks read only static shapes and dtypes, so they run at trace time under
``jit``/``vmap``/``grad`` and cost nothing at run time. This module imports no JAX at import
time, so the command line can use it before JAX starts.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

# data_format -> (spatial rank, channels_last)
DATA_FORMATS: dict[str, tuple[int, bool]] = {
    "NWC": (1, True),
    "NCW": (1, False),
    "NHWC": (2, True),
    "NCHW": (2, False),
    "NDHWC": (3, True),
    "NCDHW": (3, False),
}
CHANNELS_LAST_FORMAT = {1: "NWC", 2: "NHWC", 3: "NDHWC"}
PADDING_STRINGS = ("SAME", "SAME_LOWER", "VALID", "CAUSAL")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")



def _shape(a: Any) -> tuple[int, ...]:
    return tuple(np.shape(a))


def fail(
    where: str, name: str, rule: str, value: Any, exc: type[Exception] = ValueError
) -> NoReturn:
    """Raises ``exc("{where}: {name} must be {rule}, but got {value!r}")``."""
    raise exc(f"{where}: {name} must be {rule}, but got {value!r}")


def check_bool(where: str, name: str, value: Any) -> bool:
    """``value`` as a bool; NumPy bools are accepted, ints (0/1) are not."""
    if not isinstance(value, (bool, np.bool_)):
        fail(where, name, "a bool", value, TypeError)
    return bool(value)


def check_choice(
    where: str, name: str, value: Any, choices: Sequence[Any], *, optional: bool = False
) -> Any:
    """``value`` if it is one of ``choices`` (or None when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or value not in tuple(choices):
        fail(where, name, f"one of {tuple(choices)}" + (" or None" if optional else ""), value)
    return value


def check_optional_int(where: str, name: str, value: Any, *, minimum: int = 1) -> int | None:
    """``None``, or ``value`` checked by :func:`check_int`."""
    return None if value is None else check_int(where, name, value, minimum=minimum)


def check_number(
    where: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = True,
    optional: bool = False,
) -> float | None:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (each bound
    included unless ``low_open``/``high_open``; the upper bound is excluded by default)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(where, name, "a number" + (" or None" if optional else ""), value, TypeError)
    value = float(value)
    if not math.isfinite(value):
        fail(where, name, "finite", value)
    if low is not None and ((value <= low) if low_open else (value < low)):
        fail(where, name, f"{'>' if low_open else '>='} {low:g}", value)
    if high is not None and ((value >= high) if high_open else (value > high)):
        fail(where, name, f"{'<' if high_open else '<='} {high:g}", value)
    return value


def check_str(where: str, name: str, value: Any, *, optional: bool = False) -> str | None:
    """A non-empty str (a path-like becomes its str), or None when ``optional``."""
    if optional and value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        fail(where, name, "a non-empty str" + (" or None" if optional else ""), value, TypeError)
    return value


def check_int(op: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """Returns ``value`` as an int, or raises if it is not an integer >= ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, but got bool {value!r}")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{op}: {name} must be an int, but got {type(value).__name__} {value!r}"
        ) from None
    if as_int < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, but got {as_int}")
    return as_int


def check_float_dtype(op: str, name: str, a: Any) -> np.dtype:
    """Only real floating dtypes are convolved; integers would silently truncate."""
    dtype = np.dtype(a.dtype) if hasattr(a, "dtype") else np.result_type(a)
    import jax.numpy as jnp  # local: keeps this module importable without initialising jax

    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{op}: {name} must have a floating dtype (float32, bfloat16, float16 or "
            f"float64), but got {dtype}"
        )
    return dtype


def spatial_rank_and_layout(op: str, x: Any, data_format: str | None) -> tuple[int, bool, str]:
    """Resolves ``data_format`` against ``x``; returns (spatial rank, channels_last, format)."""
    shape = _shape(x)
    if data_format is None:
        rank = len(shape) - 2
        if rank not in CHANNELS_LAST_FORMAT:
            raise ValueError(
                f"{op}: x must have rank 3, 4 or 5 (batch, 1-3 spatial dims, channels), "
                f"but got x of shape {shape}"
            )
        return rank, True, CHANNELS_LAST_FORMAT[rank]
    if not isinstance(data_format, str) or data_format.upper() not in DATA_FORMATS:
        raise ValueError(
            f"{op}: data_format must be one of {sorted(DATA_FORMATS)} or None, "
            f"but got {data_format!r}"
        )
    data_format = data_format.upper()
    rank, channels_last = DATA_FORMATS[data_format]
    if len(shape) != rank + 2:
        raise ValueError(
            f"{op}: data_format={data_format!r} needs x of rank {rank + 2}, "
            f"but got x of shape {shape}"
        )
    return rank, channels_last, data_format


def channels_of(x: Any, channels_last: bool) -> int:
    shape = _shape(x)
    return shape[-1] if channels_last else shape[1]


def spatial_shape_of(x: Any, channels_last: bool) -> tuple[int, ...]:
    shape = _shape(x)
    return shape[1:-1] if channels_last else shape[2:]


def per_dim(op: str, name: str, value: Any, rank: int) -> tuple[int, ...]:
    """An int or one positive int per spatial dimension -> a tuple of ``rank`` ints."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != rank:
            raise ValueError(
                f"{op}: {name} must be an int or a sequence of {rank} ints (one per spatial "
                f"dimension), but got {tuple(value)!r}"
            )
        return tuple(check_int(op, name, v) for v in value)
    return (check_int(op, name, value),) * rank


def check_padding_mode(op: str, padding_mode: str) -> str:
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"{op}: padding_mode must be one of {PADDING_MODES}, but got {padding_mode!r}"
        )
    return padding_mode


def resolve_padding(
    op: str,
    padding: Any,
    spatial_shape: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Turns every accepted ``padding`` form into explicit ``(low, high)`` pairs.

    "SAME" follows TensorFlow and lax: output size ceil(in / stride), the odd pixel at the end.
    "SAME_LOWER" puts it at the start; "CAUSAL" (1-D only) puts all of it at the start.
    """
    rank = len(spatial_shape)
    effective = [d * (k - 1) + 1 for k, d in zip(window, dilation)]
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in PADDING_STRINGS:
            raise ValueError(
                f"{op}: padding must be one of {PADDING_STRINGS}, an int, a sequence of "
                f"{rank} ints or of {rank} (low, high) pairs, but got {padding!r}"
            )
        if mode == "VALID":
            pairs = ((0, 0),) * rank
        elif mode == "CAUSAL":
            if rank != 1:
                raise ValueError(
                    f"{op}: padding='CAUSAL' is only defined for 1-D convolutions, "
                    f"but x has {rank} spatial dimensions"
                )
            pairs = ((effective[0] - 1, 0),)
        else:
            pairs = []
            for size, eff, s in zip(spatial_shape, effective, strides):
                out = -(-size // s)
                total = max((out - 1) * s + eff - size, 0)
                small, large = total // 2, total - total // 2
                pairs.append((small, large) if mode == "SAME" else (large, small))
            pairs = tuple(pairs)
    elif isinstance(padding, Sequence):
        if len(padding) != rank:
            raise ValueError(
                f"{op}: padding must have one entry per spatial dimension ({rank}), "
                f"but got {padding!r}"
            )
        pairs = []
        for entry in padding:
            if isinstance(entry, Sequence) and not isinstance(entry, str):
                if len(entry) != 2:
                    raise ValueError(
                        f"{op}: each padding pair must be (low, high), but got {entry!r}"
                    )
                pairs.append(tuple(check_int(op, "padding", e, minimum=0) for e in entry))
            else:
                p = check_int(op, "padding", entry, minimum=0)
                pairs.append((p, p))
        pairs = tuple(pairs)
    else:
        p = check_int(op, "padding", padding, minimum=0)
        pairs = ((p, p),) * rank
    for axis, (size, eff, (lo, hi)) in enumerate(zip(spatial_shape, effective, pairs)):
        if size + lo + hi < eff:
            raise ValueError(
                f"{op}: the dilated window ({eff}) must fit in the padded input, but spatial "
                f"dimension {axis} has size {size} + padding ({lo}, {hi}) = {size + lo + hi} "
                f"with padding={padding!r}"
            )
    return pairs


def check_padding_fits_mode(
    op: str, padding_mode: str, pairs: Sequence[tuple[int, int]], spatial_shape: Sequence[int]
) -> None:
    """Reflect and circular padding can only reuse pixels that exist (as in PyTorch)."""
    if padding_mode not in ("reflect", "circular"):
        return
    for axis, (size, (lo, hi)) in enumerate(zip(spatial_shape, pairs)):
        limit = size - 1 if padding_mode == "reflect" else size
        if max(lo, hi) > limit:
            raise ValueError(
                f"{op}: padding_mode={padding_mode!r} needs padding <= {limit} on spatial "
                f"dimension {axis} of size {size}, but got padding ({lo}, {hi})"
            )


def check_kernel_rank(op: str, name: str, kernel: Any, rank: int, x: Any) -> None:
    if len(_shape(kernel)) != rank + 2:
        raise ValueError(
            f"{op}: {name} must have rank {rank + 2} (window of {rank} dims, in, out) to match "
            f"x of shape {_shape(x)}, but got {name} of shape {_shape(kernel)}"
        )
