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
from typing import Any, NamedTuple, NoReturn

import numpy as np

from jaxsep._choices import IMPLS
from jaxsep._geometry import CHANNELS_LAST_FORMAT as CHANNELS_LAST_FORMAT
from jaxsep._geometry import DATA_FORMATS as DATA_FORMATS
from jaxsep._geometry import Geometry, effective_window

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
    data_format = check_data_format(op, data_format)
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
    effective = [effective_window(k, d) for k, d in zip(window, dilation)]
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


def check_data_format(where: str, data_format: Any, rank: int | None = None) -> str | None:
    """``data_format`` upper-cased (None stays None); with ``rank``, it must have that many
    spatial dims."""
    if data_format is None:
        return None
    if not isinstance(data_format, str) or data_format.upper() not in DATA_FORMATS:
        raise ValueError(
            f"{where}: data_format must be one of {sorted(DATA_FORMATS)} or None, "
            f"but got {data_format!r}"
        )
    data_format = data_format.upper()
    format_rank = DATA_FORMATS[data_format][0]
    if rank is not None and format_rank != rank:
        raise ValueError(
            f"{where}: data_format must have the module's {rank} spatial dims, but "
            f"data_format={data_format!r} has {format_rank}"
        )
    return data_format


def check_impl(where: str, impl: Any, choices: Sequence[str] = IMPLS) -> str:
    """A lowering name: one of ``jaxsep._choices.IMPLS`` (or of ``choices``)."""
    return check_choice(where, "impl", impl, choices)


def check_divides(where: str, groups: int, what: str, value: int) -> None:
    """``groups`` must divide ``value`` (``what`` names it, e.g. "the input channels")."""
    if value % groups:
        raise ValueError(
            f"{where}: groups must divide {what}, but {groups} does not divide {value}"
        )


def check_groups(op: str, x: Any, kernel: Any, channels_last: bool, groups: Any) -> int:
    """Validates ``groups`` against ``x``'s channels and the ``(*K, C // G, O)`` kernel."""
    groups = check_int(op, "groups", groups)
    channels = channels_of(x, channels_last)
    k_in, k_out = _shape(kernel)[-2:]
    check_divides(op, groups, "the input channels", channels)
    if k_in * groups != channels:
        raise ValueError(
            f"{op}: kernel in_channels (dim -2) must equal channels // groups = "
            f"{channels} // {groups} = {channels // groups}, but got kernel of shape "
            f"{_shape(kernel)}"
        )
    check_divides(op, groups, "the kernel's out_channels (dim -1)", k_out)
    return groups


def _check_depthwise_shape(
    op: str, name: str, shape: tuple[int, ...], divisor: int, what: str
) -> None:
    """A ``(*K, 1, C * M)`` kernel: dim -2 is 1 and the last dim a positive multiple of
    ``divisor`` (``what`` names it: the channels C, or the depth multiplier M)."""
    if shape[-2] != 1:
        raise ValueError(
            f"{op}: {name} must have shape (*K, 1, C * depth_multiplier), but dim -2 of "
            f"{name} of shape {shape} is {shape[-2]}, not 1"
        )
    if shape[-1] == 0 or shape[-1] % divisor:
        raise ValueError(
            f"{op}: {name}'s last dim must be a positive multiple of {what} "
            f"(C * depth_multiplier), but got {name} of shape {shape}"
        )


def check_depthwise_kernel(op: str, name: str, kernel: Any, channels: int) -> int:
    """Returns the depth multiplier ``M`` of a ``(*K, 1, C * M)`` kernel for ``C`` channels."""
    shape = _shape(kernel)
    _check_depthwise_shape(op, name, shape, channels, f"the input channels C={channels}")
    return shape[-1] // channels


def depthwise_window_and_channels(
    op: str, kernel: Any, multiplier: int
) -> tuple[tuple[int, ...], int]:
    """Returns the window ``K`` and the channels ``C`` of a ``(*K, 1, C * M)`` kernel whose
    ``M`` is known (the channels are not: :func:`jaxsep.algebra.fuse_separable`)."""
    shape = _shape(kernel)
    if len(shape) < 3:
        raise ValueError(
            f"{op}: depthwise_kernel must have shape (*K, 1, C * depth_multiplier) with at "
            f"least one spatial dim, but got depthwise_kernel of shape {shape}"
        )
    _check_depthwise_shape(
        op, "depthwise_kernel", shape, multiplier, f"depth_multiplier={multiplier}"
    )
    return shape[:-2], shape[-1] // multiplier


def check_pointwise_kernel(op: str, name: str, kernel: Any, rank: int, channels: int) -> None:
    """A ``(C, O)`` or ``(1, ..., 1, C, O)`` kernel for ``rank`` spatial dims and ``C`` channels."""
    shape = _shape(kernel)
    if len(shape) not in (2, rank + 2) or any(s != 1 for s in shape[:-2]):
        raise ValueError(
            f"{op}: {name} must have shape (C_in, C_out) or ({'1, ' * rank}C_in, C_out) for "
            f"{rank} spatial dims, but got {name} of shape {shape}"
        )
    if shape[-2] != channels:
        raise ValueError(
            f"{op}: {name} in_channels (dim -2) must equal the channels it receives ({channels}), "
            f"but got {name} of shape {shape}"
        )


def conv_geometry(
    op: str,
    x: Any,
    kernel: Any,
    kernel_name: str,
    strides: Any,
    padding: Any,
    dilation: Any,
    data_format: str | None,
    padding_mode: str,
) -> Geometry:
    """Every check of a windowed op's arguments; returns their resolved :class:`Geometry`
    (``padding`` as explicit pairs, before ``padding_mode`` is applied)."""
    rank, channels_last, data_format = spatial_rank_and_layout(op, x, data_format)
    check_float_dtype(op, "x", x)
    check_float_dtype(op, kernel_name, kernel)
    check_kernel_rank(op, kernel_name, kernel, rank, x)
    strides = per_dim(op, "strides", strides, rank)
    dilation = per_dim(op, "dilation", dilation, rank)
    check_padding_mode(op, padding_mode)
    spatial = spatial_shape_of(x, channels_last)
    window = _shape(kernel)[:rank]
    if 0 in window:
        raise ValueError(f"{op}: the {kernel_name} window must be non-empty, but got {window}")
    pads = resolve_padding(op, padding, spatial, window, strides, dilation)
    check_padding_fits_mode(op, padding_mode, pads, spatial)
    return Geometry(channels_last, strides, dilation, pads)


# ---------------------------------------------------------------------------------------------
# The modules of jaxsep.nn: construction-time checks (no input yet) and the call-time one.

# A size large enough that any window fits: used to validate padding before an input exists.
_ANY_SIZE = 1 << 20


def check_spatial_dims(where: str, spatial_dims: Any) -> int | None:
    """None, or 1, 2 or 3."""
    if spatial_dims is None:
        return None
    spatial_dims = check_int(where, "spatial_dims", spatial_dims)
    if spatial_dims not in CHANNELS_LAST_FORMAT:
        raise ValueError(f"{where}: spatial_dims must be 1, 2 or 3, but got {spatial_dims}")
    return spatial_dims


def rank_and_window(
    where: str, kernel_size: int | Sequence[int], spatial_dims: int | None
) -> tuple[int, tuple[int, ...]]:
    """Resolves ``kernel_size`` and ``spatial_dims`` to (rank, window); never guesses a rank."""
    spatial_dims = check_spatial_dims(where, spatial_dims)
    if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, str):
        window = tuple(check_int(where, "kernel_size", k) for k in kernel_size)
        if len(window) not in CHANNELS_LAST_FORMAT:
            raise ValueError(
                f"{where}: kernel_size must have 1, 2 or 3 entries (one per spatial dim), "
                f"but got {tuple(kernel_size)!r}"
            )
        if spatial_dims is not None and spatial_dims != len(window):
            raise ValueError(
                f"{where}: spatial_dims must equal len(kernel_size), but got "
                f"spatial_dims={spatial_dims} and kernel_size={window}"
            )
        return len(window), window
    size = check_int(where, "kernel_size", kernel_size)
    if spatial_dims is None:
        raise ValueError(
            f"{where}: an int kernel_size needs an explicit spatial_dims (1, 2 or 3), but got "
            f"kernel_size={size} and spatial_dims=None; pass kernel_size={(size, size)} or "
            f"spatial_dims=2 for a 2-D kernel"
        )
    return spatial_dims, (size,) * spatial_dims


def _hashable_padding(
    where: str,
    padding: Any,
    window: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
) -> Any:
    """Validates the form of ``padding`` and returns it hashable (tuples, not lists)."""
    resolve_padding(where, padding, (_ANY_SIZE,) * len(window), window, strides, dilation)
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, Sequence):
        return tuple(tuple(p) if isinstance(p, Sequence) else p for p in padding)
    return padding


class WindowSpec(NamedTuple):
    """A module's checked window arguments, as its op takes them."""

    spatial_dims: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Any  # as given, validated and hashable
    padding_mode: str
    data_format: str | None


def window_spec(
    where: str,
    kernel_size: int | Sequence[int],
    spatial_dims: int | None,
    strides: Any,
    padding: Any,
    dilation: Any,
    data_format: str | None,
    padding_mode: str,
) -> WindowSpec:
    """Every construction-time check of a windowed module's window arguments, in one order."""
    rank, window = rank_and_window(where, kernel_size, spatial_dims)
    strides = per_dim(where, "strides", strides, rank)
    dilation = per_dim(where, "dilation", dilation, rank)
    padding = _hashable_padding(where, padding, window, strides, dilation)
    padding_mode = check_padding_mode(where, padding_mode)
    data_format = check_data_format(where, data_format, rank)
    return WindowSpec(rank, window, strides, dilation, padding, padding_mode, data_format)


def check_module_input(
    where: str, x: Any, rank: int | None, channels_last: bool, in_features: int
) -> None:
    """A module's input must have its rank and channel count, named in the error."""
    shape = _shape(x)
    letters = {1: "W", 2: "H, W", 3: "D, H, W"}
    if rank is None:
        if len(shape) - 2 not in letters:
            raise ValueError(
                f"{where}: x must have rank 3, 4 or 5 (N, 1-3 spatial dims, C), "
                f"but got x of shape {shape}"
            )
    elif len(shape) != rank + 2:
        layout = f"(N, {letters[rank]}, C)" if channels_last else f"(N, C, {letters[rank]})"
        raise ValueError(
            f"{where}: x must have rank {rank + 2} {layout} for this {rank}-D module, but got x "
            f"of shape {shape}"
        )
    channels = shape[-1] if channels_last else shape[1]
    if channels != in_features:
        axis = "last" if channels_last else "channel (1)"
        raise ValueError(
            f"{where}: x must have in_features={in_features} channels on its {axis} axis, "
            f"but got x of shape {shape}"
        )
