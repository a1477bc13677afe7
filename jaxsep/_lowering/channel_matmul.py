"""``channel_matmul``: ``x (..., C) @ w (C, O)``, a primitive with a kernel-gradient rule that
XLA:CPU runs fast.

The pointwise (1x1) convolution is one ``dot_general`` over the channel axis, but JAX's
transpose for its kernel makes XLA:CPU first write the incoming gradient in transposed order;
this primitive computes the kernel gradient as ``transpose(x) @ g`` instead. It is a primitive
with JAX's own bilinear rule (not a ``custom_vjp``), so ``jvp``, every order of derivative,
``vmap``, ``checkpoint`` and sharding keep working; everything but the kernel transpose is
``dot_general``'s. Why and how, with the measurement: ``docs/design/lowerings.md``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

__all__ = ["channel_matmul", "channel_matmul_p"]


def _dot(x: jax.Array, w: jax.Array, *, precision: Any, preferred_element_type: Any) -> jax.Array:
    return lax.dot_general(
        x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
        preferred_element_type=preferred_element_type,
    )


channel_matmul_p = jex_core.Primitive("channel_matmul")
channel_matmul_p.def_impl(_dot)
mlir.register_lowering(channel_matmul_p, mlir.lower_fun(_dot, multiple_results=False))


@channel_matmul_p.def_abstract_eval
def _abstract_eval(x: Any, w: Any, *, precision: Any, preferred_element_type: Any) -> Any:
    # dot_general's own shape, dtype and (under explicit-sharding meshes) sharding rules
    out = jax.eval_shape(
        functools.partial(_dot, precision=precision, preferred_element_type=preferred_element_type),
        x, w,
    )
    # x.update keeps the shard_map axes x varies over (w varies alike: see _vary_alike)
    return x.update(shape=out.shape, dtype=out.dtype, weak_type=False, sharding=out.sharding)


def _sharding_of(aval: Any) -> Any:
    """The cotangent's sharding, spelled out as JAX's own dot_general transpose does (a
    product over a sharded axis needs it under an explicit-sharding mesh): the primal's, or
    replicated over the current mesh; None outside any mesh."""
    sharding = aval.sharding
    if not sharding.mesh.empty:
        return sharding
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*[None] * aval.ndim))


def _transpose_x(g: jax.Array, x: Any, w: jax.Array, *, precision: Any,
                 preferred_element_type: Any) -> jax.Array:
    """``dx (..., C) = g (..., O) @ w.T``."""
    dx = lax.dot_general(
        g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision,
        preferred_element_type=preferred_element_type, out_sharding=_sharding_of(x.aval),
    )
    return dx.astype(x.aval.dtype)


def _transpose_w(g: jax.Array, x: jax.Array, w: Any, *, precision: Any,
                 preferred_element_type: Any) -> jax.Array:
    """``dw (C, O) = x.T (C, M) @ g (M, O)`` over the ``M`` leading positions (the activation,
    not the gradient, is the transposed operand: see the module docstring)."""
    channels, out = w.aval.shape
    rows = x.reshape(-1, channels).T
    dw = lax.dot_general(
        rows, g.reshape(-1, out), (((1,), (0,)), ((), ())), precision=precision,
        preferred_element_type=preferred_element_type, out_sharding=_sharding_of(w.aval),
    )
    return dw.astype(w.aval.dtype)


ad.defbilinear(channel_matmul_p, _transpose_x, _transpose_w)


def _batch_rule(args: Any, dims: Any, **params: Any) -> tuple[jax.Array, int]:
    x, w = args
    x_dim, w_dim = dims
    if w_dim is None:  # one kernel: the mapped axis is one more leading axis of x
        return channel_matmul_p.bind(jnp.moveaxis(x, x_dim, 0), w, **params), 0
    in_axes = (x_dim, w_dim)
    return jax.vmap(functools.partial(_dot, **params), in_axes=in_axes)(x, w), 0


batching.primitive_batchers[channel_matmul_p] = _batch_rule


def channel_matmul(x: jax.Array, w: jax.Array, *, precision: Any = None,
                   preferred_element_type: Any = None) -> jax.Array:
    """``x (..., C) @ w (C, O) -> (..., O)``: ``lax.dot_general`` over the last axis of ``x``,
    with a kernel gradient computed as ``x.T @ g`` (see the module docstring).

    Args:
      x: ``(..., C)``, at least 1-D.
      w: ``(C, O)``, the dtype of ``x``.
      precision, preferred_element_type: as in :func:`jax.lax.dot_general`.

    Returns:
      ``(..., O)`` in ``preferred_element_type`` (default: the dtype of ``x``).
    """
    x, w = _vary_alike(jnp.asarray(x), jnp.asarray(w))
    return channel_matmul_p.bind(
        x, w, precision=precision, preferred_element_type=preferred_element_type
    )


def _varying_axes(a: jax.Array) -> frozenset:
    aval = jax.typeof(a)
    manual = getattr(aval, "mat", None)  # jax >= 0.10; earlier versions call it ``vma``
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _vary_alike(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inside ``shard_map``, casts both operands to vary over the union of the mesh axes they
    vary over, as JAX does for its own binary primitives: a kernel that is the same on every
    device then gets its gradient summed over the devices by the transpose of the cast."""
    x_axes, w_axes = _varying_axes(x), _varying_axes(w)
    if x_axes != w_axes:
        x = lax.pcast(x, tuple(sorted(w_axes - x_axes)), to="varying")
        w = lax.pcast(w, tuple(sorted(x_axes - w_axes)), to="varying")
    return x, w
