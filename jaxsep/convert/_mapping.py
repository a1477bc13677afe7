"""The mapping engine: source names -> a jaxsep model's variables, checked before anything is set.

A family's mapping (in :mod:`jaxsep.convert._timm` and :mod:`jaxsep.convert._torchvision`) is
a function from the model to its ``(source prefix, jaxsep module)`` pairs, e.g.
``("features.0.0", model.stem.conv)``.
The module's type says which tensors it takes and in which layout, one rule per type:

======================================  =================================  ======================
jaxsep module                           source tensors (PyTorch layout)     jaxsep layout
======================================  =================================  ======================
``nn.Conv``, ``GroupedConv``            ``weight (O, C/G, kh, kw)``         ``(kh, kw, C/G, O)``
``nn.DepthwiseConv``                    ``weight (C*M, 1, kh, kw)``         ``(kh, kw, 1, C*M)``
``nn.PointwiseConv``                    ``weight (O, C, 1, 1)``             ``(C, O)``
``nnx.Linear``                          ``weight (O, C)``                   ``(C, O)``
``nnx.BatchNorm``                       ``weight, bias, running_mean,``     ``scale, bias,``
                                        ``running_var (C,)``                ``mean, var``
======================================  =================================  ======================

plus ``bias (O,)`` where the module has one. A pair may name the layout as a third item where
the source's layer differs from jaxsep's: a 1x1 ``Conv2d`` feeding on pooled features is an
``nnx.Linear`` in jaxsep (``"pointwise"``). BatchNorm's ``num_batches_tracked`` is accepted
and ignored (it only matters to PyTorch's ``momentum=None``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsep import nn
from jaxsep.convert.files import to_numpy
from jaxsep.models._saved import fill_random_streams

__all__ = ["Pair", "Pairs", "Target", "apply", "export", "targets"]

# (source prefix, module) or (source prefix, module, layout)
Pair = tuple[str, nnx.Module] | tuple[str, nnx.Module, str]
Pairs = Iterable[Pair]
_IGNORED_SUFFIXES = (".num_batches_tracked",)
_MAX_LISTED = 8  # names listed in one error message; the count says how many more


@dataclass(frozen=True)
class Target:
    """One source tensor's place in the model: the variable and the layout rule."""

    module: nnx.Module
    attribute: str  # "kernel", "bias", "scale", "mean", "var"
    layout: str  # "conv" (OIHW), "pointwise" (O, C, 1, 1), "linear" (O, C), "vector"

    @property
    def variable(self) -> nnx.Variable:
        return getattr(self.module, self.attribute)

    @property
    def shape(self) -> tuple[int, ...]:
        """The jaxsep shape."""
        return tuple(self.variable.shape)

    @property
    def source_shape(self) -> tuple[int, ...]:
        """The shape the source stores this tensor in."""
        shape = self.shape
        if self.layout == "conv":
            kh, kw, i, o = shape
            return (o, i, kh, kw)
        if self.layout == "pointwise":
            return (shape[1], shape[0], 1, 1)
        if self.layout == "linear":
            return (shape[1], shape[0])
        return shape

    def to_jaxsep(self, array: np.ndarray) -> np.ndarray:
        if self.layout == "conv":
            return array.transpose(2, 3, 1, 0)
        if self.layout == "pointwise":
            return array[:, :, 0, 0].T
        if self.layout == "linear":
            return array.T
        return array

    def to_source(self, array: np.ndarray) -> np.ndarray:
        if self.layout == "conv":
            return array.transpose(3, 2, 0, 1)
        if self.layout == "pointwise":
            return array.T[:, :, None, None]
        if self.layout == "linear":
            return array.T
        return array


def _module_targets(module: nnx.Module, layout: str | None = None) -> dict[str, Target]:
    """The source suffixes of one module and where each goes; ``layout`` overrides the rule of
    the module's type (a source's 1x1 ``Conv2d`` onto an ``nnx.Linear``: "pointwise")."""
    if isinstance(module, nnx.BatchNorm):
        return {
            "weight": Target(module, "scale", "vector"),
            "bias": Target(module, "bias", "vector"),
            "running_mean": Target(module, "mean", "vector"),
            "running_var": Target(module, "var", "vector"),
        }
    if layout is None:
        if isinstance(module, (nn.Conv, nn.DepthwiseConv)):  # GroupedConv is a Conv
            layout = "conv"
        elif isinstance(module, nn.PointwiseConv):
            layout = "pointwise"
        elif isinstance(module, nnx.Linear):
            layout = "linear"
        else:
            raise TypeError(f"convert: no mapping rule for a {type(module).__name__}")
    found = {"weight": Target(module, "kernel", layout)}
    if getattr(module, "bias", None) is not None:
        found["bias"] = Target(module, "bias", "vector")
    return found


def targets(pairs: Pairs) -> dict[str, Target]:
    """Every source name the pairs expect, with its target."""
    found: dict[str, Target] = {}
    for prefix, module, *layout in pairs:
        for suffix, target in _module_targets(module, *layout).items():
            key = f"{prefix}.{suffix}"
            if key in found:
                raise RuntimeError(f"convert: the mapping names {key!r} twice")
            found[key] = target
    return found


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def check(where: str, expected: Mapping[str, Target], state: Mapping[str, np.ndarray]) -> None:
    """Raises one ValueError listing every missing, unexpected or misshapen tensor."""
    problems = []
    missing = [key for key in expected if key not in state]
    if missing:
        problems.append(
            f"missing {len(missing)} key(s) the model needs: "
            + _listed([f"{k!r} (expected shape {expected[k].source_shape})" for k in missing])
        )
    unexpected = [
        key for key in state if key not in expected and not key.endswith(_IGNORED_SUFFIXES)
    ]
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected key(s): "
            + _listed([f"{k!r} (shape {tuple(np.shape(state[k]))})" for k in unexpected])
        )
    wrong = [
        f"{key!r} must have shape {target.source_shape}, but got {tuple(np.shape(state[key]))}"
        for key, target in expected.items()
        if key in state and tuple(np.shape(state[key])) != target.source_shape
    ]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + _listed(wrong))
    if problems:
        raise ValueError(f"{where}: the state dict does not fit the model: " + "; ".join(problems))


def apply(
    where: str,
    model: nnx.Module,
    pairs: Callable[[nnx.Module], Pairs],
    state: Mapping[str, Any],
) -> nnx.Module:
    """Sets ``model``'s parameters and BatchNorm statistics from ``state``; returns it in eval
    mode.

    ``model`` may be abstract (``nnx.eval_shape``): every parameter and statistic comes from
    ``state``, and the dropout streams get a fixed key. Everything is checked
    (:func:`check`) before the first variable is set.
    """
    state = {key: to_numpy(value) for key, value in state.items()}
    expected = targets(pairs(model))
    check(where, expected, state)
    for key, target in expected.items():
        value = target.to_jaxsep(state[key])
        target.variable.set_value(jnp.asarray(value, dtype=target.variable.dtype))
    fill_random_streams(model)
    leftover = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if leftover:
        raise RuntimeError(f"{where}: the mapping left variables unset: {_listed(leftover)}")
    model.eval()
    return model


def export(model: nnx.Module, pairs: Callable[[nnx.Module], Pairs]) -> dict[str, np.ndarray]:
    """The inverse of :func:`apply`: ``model``'s variables under the source's names and layouts
    (BatchNorm's ``num_batches_tracked`` left out)."""
    return {
        key: np.asarray(target.to_source(np.asarray(target.variable.get_value())))
        for key, target in targets(pairs(model)).items()
    }
