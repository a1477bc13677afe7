"""A per-layer table of a model: output shapes, parameters and multiply-adds.

Nothing is computed: shapes come from ``jax.eval_shape`` and multiply-adds from
:func:`jaxsep.cost.count_macs`, which reads them off the jaxpr (so a 224x224 MobileNet
summarises in about a second, and an abstract model from ``nnx.eval_shape`` works as well as
a real one). Multiply-adds follow the MobileNet paper's "Mult-Adds": every
convolution/matrix-product MAC, zero-padding taps included; normalization, activations,
pooling and bias additions are not counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxsep import cost
from jaxsep import nn as jnn

__all__ = ["LayerRow", "ModelSummary", "Totals", "summary"]

NORM_TYPES = jnn.NORM_TYPES  # defined once, in jaxsep.nn

# jaxsep.nn modules are one row each even when they hold a submodule (SeparableConv's norm).
_ATOMIC = (jnn.Conv, jnn.DepthwiseConv, jnn.PointwiseConv, jnn.SeparableConv, jnn.ChannelShuffle)
_PATCH_LOCK = threading.Lock()
# Normalization layers: the papers' parameter counts leave their scale and bias out.


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One called leaf module.

    Attributes:
      name: its path in the model, e.g. ``"blocks.0.spatial.conv"``.
      kind: its class name, e.g. ``"DepthwiseConv"``.
      output_shape: the shape of its output (a tuple of shapes when it returns several).
      params: its ``nnx.Param`` scalars.
      macs: its multiply-adds for the summarised input batch.
    """

    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int


@dataclasses.dataclass(frozen=True)
class Totals:
    """Whole-model counts.

    Attributes:
      params: every ``nnx.Param`` scalar of the model, normalization scale and bias included
        (as PyTorch, Keras and timm count), running statistics not.
      macs: multiply-adds of the whole forward pass for the summarised input batch.
      norm_params: the part of ``params`` held by normalization layers.
    """

    params: int
    macs: int
    norm_params: int = 0

    @property
    def params_without_norm(self) -> int:
        """Convolution and fully connected parameters only: what the MobileNet papers count
        (4.21 M for MobileNetV1, 3.47 M for MobileNetV2)."""
        return self.params - self.norm_params

    @property
    def flops(self) -> int:
        """``2 * macs``."""
        return 2 * self.macs


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """What :func:`summary` returns; ``str()`` gives the plain-text table."""

    model: str
    input_shape: tuple[int, ...]
    output_shape: tuple
    rows: tuple[LayerRow, ...]
    totals: Totals

    def _cells(self) -> tuple[list[str], list[list[str]], list[str]]:
        header = ["name", "kind", "output shape", "params", "multiply-adds"]
        body = [
            [r.name, r.kind, _shape_str(r.output_shape), f"{r.params:,}", f"{r.macs:,}"]
            for r in self.rows
        ]
        footer = [
            "total",
            self.model,
            _shape_str(self.output_shape),
            f"{self.totals.params:,}",
            f"{self.totals.macs:,}",
        ]
        return header, body, footer

    def totals_text(self) -> str:
        """The totals, one per line (what scripts and tests read)."""
        t = self.totals
        return (
            f"Input shape: {_shape_str(self.input_shape)}\n"
            f"Total params: {t.params:,} ({t.params / 1e6:.2f} M)\n"
            f"Params without normalization: {t.params_without_norm:,} "
            f"({t.params_without_norm / 1e6:.2f} M, as the papers count)\n"
            f"Total multiply-adds: {t.macs:,} ({t.macs / 1e6:.1f} M)"
        )

    def __str__(self) -> str:
        header, body, footer = self._cells()
        table = [header, *body, footer]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        right = {3, 4}

        def fmt(line: list[str]) -> str:
            cells = [
                cell.rjust(width) if i in right else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths))
            ]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        lines = [fmt(header), rule, *map(fmt, body), rule, fmt(footer)]
        return "\n".join(lines) + "\n\n" + self.totals_text()

    def rich_table(self) -> Any:
        """The table as a ``rich.table.Table``."""
        from rich.table import Table

        header, body, footer = self._cells()
        table = Table(title=f"{self.model} on {_shape_str(self.input_shape)}", show_footer=True)
        for i, title in enumerate(header):
            table.add_column(title, footer=footer[i], justify="right" if i >= 3 else "left")
        for line in body:
            table.add_row(*line)
        return table

    def print(self, console: Any = None) -> None:
        """Prints with rich on a terminal, as plain text otherwise."""
        from rich.console import Console

        console = console or Console()
        if console.is_terminal:
            console.print(self.rich_table())
            console.print(self.totals_text(), highlight=False)
        else:
            console.file.write(str(self) + "\n")
            console.file.flush()


def _shape_str(shape: tuple) -> str:
    if shape and isinstance(shape[0], tuple):
        return ", ".join(_shape_str(s) for s in shape)
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _abstract(tree: Any) -> Any:
    """Arrays -> ShapeDtypeStructs (already-abstract leaves pass through); others unchanged."""

    def leaf(a: Any) -> Any:
        if isinstance(a, (jax.Array, jax.ShapeDtypeStruct)) or hasattr(a, "__array__"):
            return jax.ShapeDtypeStruct(jnp.shape(a), a.dtype)
        return a

    return jax.tree.map(leaf, tree)


def _output_shape(out: Any) -> tuple:
    leaves = jax.tree.leaves(out)
    if len(leaves) == 1:
        return tuple(leaves[0].shape)
    return tuple(tuple(leaf.shape) for leaf in leaves)


def _leaf_paths(model: nnx.Module) -> dict[int, str]:
    """id -> dotted path of every leaf module (no submodules, or a jaxsep.nn module)."""
    entries = [(tuple(map(str, path)), m) for path, m in nnx.iter_modules(model)]
    atomic = [p for p, m in entries if isinstance(m, _ATOMIC)]
    leaves = {}
    for path, module in entries:
        inside_atomic = any(path[: len(a)] == a and path != a for a in atomic)
        has_children = any(len(p) > len(path) and p[: len(path)] == path for p, _ in entries)
        if not inside_atomic and (isinstance(module, _ATOMIC) or not has_children):
            leaves[id(module)] = ".".join(path) or type(model).__name__
    return leaves


class _Recorder:
    """Wraps the ``__call__`` of the leaf classes; records the outermost leaf calls."""

    def __init__(self, leaves: dict[int, str]):
        self.leaves = leaves
        self.rows: list[LayerRow] = []
        self.depth = 0

    def record(self, module: nnx.Module, args: tuple, kwargs: dict, out: Any) -> None:
        graphdef, state = nnx.split(module)
        abstract_state = _abstract(state)

        def call(state: Any, *args: Any, **kwargs: Any) -> Any:
            return nnx.merge(graphdef, state)(*args, **kwargs)

        macs = cost.count_macs(call, abstract_state, *_abstract(args), **_abstract(kwargs)).total
        self.rows.append(
            LayerRow(
                name=self.leaves[id(module)],
                kind=type(module).__name__,
                output_shape=_output_shape(out),
                params=cost.count_params(nnx.state(module, nnx.Param)),
                macs=macs,
            )
        )

    def wrap(self, original: Any) -> Any:
        def __call__(module: nnx.Module, *args: Any, **kwargs: Any) -> Any:
            if self.depth or id(module) not in self.leaves:
                return original(module, *args, **kwargs)
            self.depth += 1
            try:
                out = original(module, *args, **kwargs)
                self.record(module, args, kwargs, out)
            finally:
                self.depth -= 1
            return out

        return __call__

    @contextlib.contextmanager
    def patched(self, classes: Sequence[type]) -> Iterator[None]:
        saved = []
        with _PATCH_LOCK:
            try:
                for cls in classes:
                    saved.append((cls, cls.__dict__.get("__call__")))
                    cls.__call__ = self.wrap(cls.__call__)
                yield
            finally:
                for cls, original in reversed(saved):
                    if original is None:
                        del cls.__call__
                    else:
                        cls.__call__ = original


def summary(
    model: nnx.Module,
    input_shape: Sequence[int],
    *,
    dtype: Any = jnp.float32,
    show: bool = True,
    console: Any = None,
) -> ModelSummary:
    """Summarises ``model`` on an input of ``input_shape``: one row per called leaf layer.

    The model runs abstractly, in eval mode (running BatchNorm statistics, no dropout), on a
    copy; ``model`` itself (real, or abstract from ``nnx.eval_shape``) is not changed.

    Args:
      model: an ``nnx.Module`` called as ``model(x)``.
      input_shape: the shape of the whole input batch, e.g. ``(1, 224, 224, 3)``;
        multiply-adds are for that batch (use batch 1 for the per-image counts of papers).
      dtype: the input's dtype.
      show: print the table (rich on a terminal, plain text otherwise).
      console: a ``rich.console.Console`` to print to (default: a new one on stdout).

    Returns:
      A :class:`ModelSummary`: ``rows`` (name, kind, output shape, params, multiply-adds) in
      call order and ``totals`` (all of the model's parameters, and those without
      normalization layers; the whole forward pass's multiply-adds -- any not inside a leaf
      layer appear as an "(other)" row).
    """
    input_shape = tuple(int(d) for d in input_shape)
    graphdef, state = nnx.split(model)
    abstract_state = _abstract(state)
    x = jax.ShapeDtypeStruct(input_shape, dtype)
    recorder: _Recorder | None = None

    def forward(state: Any, x: Any) -> Any:
        copy = nnx.merge(graphdef, state)
        copy.eval()
        if recorder is None:
            return copy(x)
        recorder.leaves = _leaf_paths(copy)
        classes = sorted(
            {type(m) for _, m in nnx.iter_modules(copy) if id(m) in recorder.leaves},
            key=lambda c: len(c.__mro__),  # bases first, so subclasses wrap their base's wrapper
        )
        with recorder.patched(classes):
            return copy(x)

    total_macs = cost.count_macs(forward, abstract_state, x).total
    recorder = _Recorder({})
    out = jax.eval_shape(forward, abstract_state, x)
    rows = list(recorder.rows)
    other = total_macs - sum(r.macs for r in rows)
    if other:
        rows.append(LayerRow("(other)", "-", (), 0, other))
    result = ModelSummary(
        model=type(model).__name__,
        input_shape=input_shape,
        output_shape=_output_shape(out),
        rows=tuple(rows),
        totals=Totals(
            params=cost.count_params(nnx.state(model, nnx.Param)),
            macs=total_macs,
            norm_params=sum(
                cost.count_params(nnx.state(m, nnx.Param))
                for _, m in nnx.iter_modules(model)
                if isinstance(m, NORM_TYPES)
            ),
        ),
    )
    if show:
        result.print(console)
    return result
