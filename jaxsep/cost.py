"""Cost model: parameters and multiply-adds, analytic and traced.

Words, as in the MobileNet paper:

  MACs    multiply-accumulates, the paper's "Mult-Adds": one ``a * b + c`` is one MAC.
  FLOPs   floating-point operations; one MAC is two FLOPs (``flops == 2 * macs``). XLA's
          ``cost_analysis()["flops"]`` counts FLOPs.

Every count here is a MAC count; ``.flops`` is always derived, never stored. Bias additions,
activations and normalisation are not counted (as in the paper's tables).

Shape letters are those of :mod:`jaxsep.ops`: C input channels, M depth multiplier, G groups,
O output channels, K the window (``*K``), S' the output spatial size (``*S'``).

* :func:`conv_cost` — the analytic count of one convolution layer for one example.
* :func:`count_params` — the number of array elements in a pytree (arrays, ShapeDtypeStructs,
  Flax NNX state or modules).
* :func:`count_macs` — MACs of any JAX function, read off its jaxpr without running it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxsep import _validation as v
from jaxsep._lowering.channel_matmul import channel_matmul_p
from jaxsep._lowering.taps import TAPS_NAME as TAPS_NAME

__all__ = ["ConvCost", "MacCount", "conv_cost", "count_macs", "count_params"]

# Call-like primitives whose ``name`` param names the wrapped function (``pjit`` before jax 0.7).
_JIT_PRIMITIVES = ("jit", "pjit")


@dataclasses.dataclass(frozen=True)
class ConvCost:
    """Parameters and multiply-adds of one layer (or, summed with ``+``, of several).

    Attributes:
      params: number of trainable scalars (kernels, plus biases when requested).
      macs: multiply-accumulates for one example (the paper's "Mult-Adds").
    """

    params: int
    macs: int

    @property
    def flops(self) -> int:
        """Floating-point operations: ``2 * macs``."""
        return 2 * self.macs

    def __add__(self, other: ConvCost) -> ConvCost:
        if not isinstance(other, ConvCost):
            return NotImplemented
        return ConvCost(self.params + other.params, self.macs + other.macs)


def _spatial(
    op: str, name: str, value: Any, rank: int | None
) -> tuple[int, ...] | int:
    """An int stays an int (rank decided later); a sequence becomes a tuple of positive ints."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) == 0:
            raise ValueError(f"{op}: {name} must have at least one spatial dim, but got ()")
        if rank is not None and len(value) != rank:
            raise ValueError(
                f"{op}: {name} must be an int or a sequence of spatial_dims={rank} ints, "
                f"but got {tuple(value)!r}"
            )
        return tuple(v.check_int(op, name, s) for s in value)
    return v.check_int(op, name, value)


def conv_cost(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    out_size: int | Sequence[int],
    *,
    groups: int = 1,
    depth_multiplier: int | None = None,
    separable: bool = False,
    bias: bool = False,
    spatial_dims: int | None = None,
) -> ConvCost:
    """The analytic parameter and multiply-add count of one convolution, for one example.

    The three kinds, with ``P = prod(K)`` taps and ``Q = prod(S')`` output positions (bias
    excluded):

    * dense / grouped (the default): params ``P * C/G * O``; MACs ``Q * P * C/G * O``.
    * depthwise (``depth_multiplier`` alone; needs ``O == C * M``): params ``P * C*M``; MACs
      ``Q * P * C*M``.
    * separable (``separable=True``): params ``P * C*M + C*M * O``; MACs
      ``Q * (P * C*M + C*M * O)``.

    ``separable`` is MobileNet's depthwise (multiplier ``M``, default 1) then pointwise
    ``C*M -> O``; both steps have output size ``S'`` (the stride is in the depthwise step). The
    ratio of its MACs to the dense conv's is ``M/O + M/P`` (the paper's ``1/N + 1/D_K^2``).

    Args:
      in_channels: ``C``.
      out_channels: ``O``.
      kernel_size: ``K``: an int (the same size on every spatial dim) or one int per dim.
      out_size: ``S'``, the output spatial size: an int or one int per dim.
      groups: ``G`` of a dense/grouped conv; must divide ``C`` and ``O``. Must stay 1 for the
        depthwise and separable kinds.
      depth_multiplier: ``M``. Alone, selects the depthwise kind; with ``separable=True``, the
        multiplier of its depthwise step.
      separable: count depthwise + pointwise instead of one conv.
      bias: add ``O`` parameters: one bias per output channel of the layer. For ``separable``
        that is one bias after the pointwise step, as in Keras' ``SeparableConv2D`` (a bias on
        the depthwise step is redundant: it folds into the pointwise bias). Bias additions are
        not counted as MACs.
      spatial_dims: the spatial rank. If None, the length of whichever of ``kernel_size`` and
        ``out_size`` is a sequence; if both are ints, 2 (an image).

    Returns:
      A :class:`ConvCost` with ``params``, ``macs`` and ``flops``.
    """
    op = "conv_cost"
    c = v.check_int(op, "in_channels", in_channels)
    o = v.check_int(op, "out_channels", out_channels)
    g = v.check_int(op, "groups", groups)
    if not isinstance(separable, bool):
        raise TypeError(f"{op}: separable must be a bool, but got {separable!r}")
    if not isinstance(bias, bool):
        raise TypeError(f"{op}: bias must be a bool, but got {bias!r}")
    if spatial_dims is not None:
        spatial_dims = v.check_int(op, "spatial_dims", spatial_dims)
    kernel = _spatial(op, "kernel_size", kernel_size, spatial_dims)
    out = _spatial(op, "out_size", out_size, spatial_dims)
    if isinstance(kernel, tuple) and isinstance(out, tuple) and len(kernel) != len(out):
        raise ValueError(
            f"{op}: kernel_size and out_size must have the same number of spatial dims, but "
            f"got kernel_size={kernel} and out_size={out}"
        )
    rank = spatial_dims or next((len(t) for t in (kernel, out) if isinstance(t, tuple)), 2)
    kernel = kernel if isinstance(kernel, tuple) else (kernel,) * rank
    out = out if isinstance(out, tuple) else (out,) * rank
    taps, positions = math.prod(kernel), math.prod(out)

    if separable or depth_multiplier is not None:
        kind = "separable=True" if separable else f"depth_multiplier={depth_multiplier}"
        if g != 1:
            raise ValueError(
                f"{op}: groups must be 1 with {kind} (the depthwise step has groups=C by "
                f"definition), but got groups={g}"
            )
        m = 1 if depth_multiplier is None else v.check_int(op, "depth_multiplier", depth_multiplier)
        hidden = c * m
        if separable:
            params = taps * hidden + hidden * o
        else:
            if o != hidden:
                raise ValueError(
                    f"{op}: a depthwise conv (depth_multiplier without separable) must have "
                    f"out_channels == in_channels * depth_multiplier = {c} * {m} = {hidden}, "
                    f"but got out_channels={o}"
                )
            params = taps * hidden
    else:
        if c % g or o % g:
            raise ValueError(
                f"{op}: groups must divide in_channels and out_channels, but groups={g} with "
                f"in_channels={c} and out_channels={o}"
            )
        params = taps * (c // g) * o
    # Every kernel scalar is used once per output position.
    macs = positions * params
    return ConvCost(params=params + (o if bias else 0), macs=macs)


def count_params(tree: Any) -> int:
    """The total number of array elements in a pytree.

    Args:
      tree: any pytree whose leaves have a ``shape``: ``jax.Array``, ``np.ndarray``,
        ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``, nothing allocated), Flax NNX
        ``nnx.State`` or ``nnx.Variable`` leaves. An ``nnx.Module`` counts only its
        ``nnx.Param`` variables (not batch statistics or RNG state).

    Returns:
      An int (0 for an empty tree).

    Raises:
      TypeError: a leaf has no ``shape`` (e.g. a Python number or string).
    """
    from flax import nnx  # local: the cost model itself needs only jax

    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)

    def is_leaf(x: Any) -> bool:
        return isinstance(x, nnx.Variable)

    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
        shape = getattr(leaf, "shape", None)
        if shape is None:
            raise TypeError(
                f"count_params: every leaf must be an array-like with a shape, but the leaf at "
                f"{jax.tree_util.keystr(path) or 'the root'} is {type(leaf).__name__} {leaf!r}"
            )
        total += math.prod(shape)
    return int(total)


@dataclasses.dataclass(frozen=True)
class MacCount:
    """The multiply-adds of a traced function.

    Attributes:
      total: all MACs, for the whole batch the function was traced with.
      by_primitive: MACs per counted primitive (``"conv_general_dilated"``, ``"dot_general"``,
        ``"channel_matmul"``, ``"depthwise_taps"``), for each one that occurs; the values sum
        to ``total``.
    """

    total: int
    by_primitive: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def flops(self) -> int:
        """Floating-point operations: ``2 * total``."""
        return 2 * self.total


def _size(aval: Any) -> int:
    return math.prod(aval.shape)


def _conv_macs(eqn: Any) -> int:
    """Output elements x window taps x input channels per group.

    The kernel's in-feature dim is already ``C / feature_group_count`` (and, with
    ``batch_group_count``, each output reads the full kernel in-feature dim of one batch group),
    so the rule is the same for dense, grouped, depthwise and batch-grouped convs.
    """
    lhs, rhs = (var.aval for var in eqn.invars[:2])
    (out,) = (var.aval for var in eqn.outvars)
    dn = eqn.params["dimension_numbers"]
    rhs_spec = dn.rhs_spec  # (out-feature dim, in-feature dim, *spatial dims)
    in_per_group = rhs.shape[rhs_spec[1]]
    groups = eqn.params["feature_group_count"]
    if in_per_group * groups != lhs.shape[dn.lhs_spec[1]]:  # pragma: no cover - lax checks this
        raise ValueError(
            f"count_macs: conv_general_dilated kernel in-features ({in_per_group}) times "
            f"feature_group_count ({groups}) must equal the input features "
            f"({lhs.shape[dn.lhs_spec[1]]})"
        )
    window = math.prod(rhs.shape[d] for d in rhs_spec[2:])
    return _size(out) * window * in_per_group


def _dot_macs(eqn: Any) -> int:
    """Batch dims x free dims (= output elements) x contracting dims."""
    lhs = eqn.invars[0].aval
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return _size(eqn.outvars[0].aval) * math.prod(lhs.shape[d] for d in lhs_contract)


def _channel_matmul_macs(eqn: Any) -> int:
    """Output elements x C: ``x (..., C) @ w (C, O)``."""
    return _size(eqn.outvars[0].aval) * eqn.invars[1].aval.shape[0]


def _taps_macs(eqn: Any) -> int:
    """Output elements x taps: each output of a depthwise conv reads ``prod(K)`` inputs."""
    kernel = eqn.invars[1].aval  # (*K, 1, C * M)
    return _size(eqn.outvars[0].aval) * math.prod(kernel.shape[:-2])


def _subjaxprs(value: Any) -> list[Any]:
    """The jaxprs inside one eqn param (a jaxpr, a closed jaxpr, or a tuple of them)."""
    if isinstance(value, jex_core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, jex_core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for item in value for j in _subjaxprs(item)]
    return []


def _add(into: dict[str, int], counts: dict[str, int], times: int = 1) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n * times


def _walk(jaxpr: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _JIT_PRIMITIVES and eqn.params.get("name") == TAPS_NAME:
            _add(counts, {TAPS_NAME: _taps_macs(eqn)})
        elif name == "conv_general_dilated":
            _add(counts, {name: _conv_macs(eqn)})
        elif name == "dot_general":
            _add(counts, {name: _dot_macs(eqn)})
        elif name == channel_matmul_p.name:
            _add(counts, {name: _channel_matmul_macs(eqn)})
        elif name == "scan":
            _add(counts, _walk(eqn.params["jaxpr"].jaxpr), eqn.params["length"])
        elif name == "while":
            # The trip count is a run-time value: body (and condition) are counted once.
            _add(counts, _walk(eqn.params["cond_jaxpr"].jaxpr))
            _add(counts, _walk(eqn.params["body_jaxpr"].jaxpr))
        elif name == "cond":
            # Only one branch runs: the most expensive one is counted.
            branches = [_walk(b.jaxpr) for b in eqn.params["branches"]]
            _add(counts, max(branches, key=lambda c: sum(c.values())))
        else:
            # Call-like primitives (jit, remat/checkpoint, custom_jvp_call and custom_vjp_call
            # via ``call_jaxpr``, closed_call, ...): every jaxpr in the params runs once.
            for key in sorted(eqn.params):
                for sub in _subjaxprs(eqn.params[key]):
                    _add(counts, _walk(sub))
    return counts


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> MacCount:
    """The multiply-adds of ``fn(*args, **kwargs)``, read off its jaxpr (nothing is computed).

    Array leaves of ``args``/``kwargs`` (``jax.Array``, ``np.ndarray`` or
    ``jax.ShapeDtypeStruct``) are traced abstractly; every other leaf (ints, strings, ...) is
    passed through as a static Python value.

    Counted primitives:
      * ``conv_general_dilated``: output elements x window taps x input channels per group,
        so grouped and depthwise convs count ``C/G`` (not ``C``) inputs per output. Taps that
        fall on zero padding are counted, as in the analytic :func:`conv_cost` (XLA's
        ``cost_analysis`` leaves them out, so it reports fewer FLOPs for "SAME" padding).
      * ``dot_general``: batch x free x contracting sizes (``@``, einsum, the channels-first
        pointwise conv).
      * ``channel_matmul``: output elements x input channels (the channels-last pointwise
        conv; a ``dot_general`` with its own kernel-gradient rule,
        ``jaxsep._lowering.channel_matmul``).
      * the taps lowering of the depthwise conv (a ``jit`` eqn named :data:`TAPS_NAME`,
        ``"depthwise_taps"``, whose inputs are the padded ``x`` and the ``(*K, 1, C * M)``
        kernel): output elements x ``prod(K)``, without looking inside it. ``grouped_conv``'s "taps" lowering is
        ``C // G`` such calls (its "split" lowering is ``G`` dense convs or channel matmuls), so a
        grouped conv counts ``C // G`` inputs per output under every lowering.

    Control flow: ``scan`` bodies count ``length`` times; ``while`` bodies count once (the trip
    count is not known when tracing); ``cond``/``switch`` counts its most expensive branch.
    Elementwise ops, reductions and bias additions are not counted.

    Args:
      fn: the function; called as ``fn(*args, **kwargs)``.
      *args, **kwargs: its arguments.

    Returns:
      A :class:`MacCount` (``total``, ``by_primitive``, ``flops``), for the whole batch.
    """
    if not callable(fn):
        raise TypeError(f"count_macs: fn must be callable, but got {type(fn).__name__} {fn!r}")
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = [_is_array(leaf) for leaf in leaves]

    def flat_fn(*traced: Any) -> Any:
        it = iter(traced)
        full = [next(it) if d else leaf for leaf, d in zip(leaves, dynamic)]
        call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, full)
        return fn(*call_args, **call_kwargs)

    closed = jax.make_jaxpr(flat_fn)(*(leaf for leaf, d in zip(leaves, dynamic) if d))
    counts = {key: int(n) for key, n in _walk(closed.jaxpr).items()}
    return MacCount(total=sum(counts.values()), by_primitive=counts)

