"""Exact fusion of a separable pair into a dense kernel, and the best separable approximation.

Shape letters and layouts are those of :mod:`jaxsep.ops`: a dense kernel is ``(*K, C, O)``, a
depthwise kernel ``(*K, 1, C * M)`` (output channel ``c * M + m`` reads input channel ``c``), a
pointwise kernel ``(C * M, O)`` or ``(1, ..., 1, C * M, O)``.

Because depthwise and pointwise steps are both linear and the pointwise step has no window,
``separable_conv(x, dw, pw, ...) == conv(x, fuse_separable(dw, pw, M), ...)`` for every stride,
padding and dilation. Conversely, for each input channel ``c`` the dense kernel's slice
``W[..., c, :]`` is a ``prod(K) x O`` matrix, and a separable pair with multiplier ``M`` can
express exactly the slices of rank ``<= M``; :func:`factorize_conv` returns the closest such
pair (truncated SVD, Eckart–Young).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsep import _validation as v

__all__ = ["Factorization", "factorize_conv", "fuse_separable"]


def fuse_separable(
    depthwise_kernel: jax.Array,
    pointwise_kernel: jax.Array,
    depth_multiplier: int = 1,
) -> jax.Array:
    """The dense kernel that computes the same map as a depthwise-separable pair.

    With ``dw = depthwise_kernel`` and ``pw = pointwise_kernel``:
    ``dense[..., c, o] = sum_m dw[..., 0, c * M + m] * pw[c * M + m, o]``, so
    ``conv(x, dense, ...) == separable_conv(x, dw, pw, ...)`` for the same ``strides``,
    ``padding``, ``dilation``, ``data_format`` and ``padding_mode``.

    Args:
      depthwise_kernel: ``(*K, 1, C * M)``.
      pointwise_kernel: ``(C * M, O)`` or ``(1, ..., 1, C * M, O)`` (one 1 per spatial dim).
      depth_multiplier: ``M``. It cannot be read off the shapes: ``(3, 3, 1, 10)`` is ``C=10,
        M=1`` or ``C=5, M=2``.

    Returns:
      The dense kernel ``(*K, C, O)``, in the promoted dtype of the two kernels. Pure ``jnp``;
      jittable with ``depth_multiplier`` static.
    """
    op = "fuse_separable"
    m = v.check_int(op, "depth_multiplier", depth_multiplier)
    v.check_float_dtype(op, "depthwise_kernel", depthwise_kernel)
    v.check_float_dtype(op, "pointwise_kernel", pointwise_kernel)
    window, c = v.depthwise_window_and_channels(op, depthwise_kernel, m)
    rank = len(window)
    pw_shape = tuple(np.shape(pointwise_kernel))
    if len(pw_shape) not in (2, rank + 2) or any(s != 1 for s in pw_shape[:-2]):
        raise ValueError(
            f"{op}: pointwise_kernel must have shape (C * M, O) or ({'1, ' * rank}C * M, O) for "
            f"a depthwise_kernel with {rank} spatial dims, but got pointwise_kernel of shape "
            f"{pw_shape}"
        )
    if pw_shape[-2] != c * m:
        raise ValueError(
            f"{op}: pointwise_kernel in_channels (dim -2) must equal the depthwise kernel's "
            f"outputs C * M = {c} * {m} = {c * m}, but got pointwise_kernel of shape {pw_shape}"
        )
    o = pw_shape[-1]
    dw = jnp.asarray(depthwise_kernel).reshape(*window, c, m)
    pw = jnp.asarray(pointwise_kernel).reshape(c, m, o)
    return jnp.einsum("...cm,cmo->...co", dw, pw, precision=lax.Precision.HIGHEST)


class Factorization(NamedTuple):
    """The result of :func:`factorize_conv`; unpack all three: ``dw, pw, err = ...``.

    Attributes:
      depthwise_kernel: ``(*K, 1, C * M)``.
      pointwise_kernel: ``(C * M, O)``.
      relative_error: ``||W - fuse_separable(dw, pw, M)||_F / ||W||_F`` as a scalar array
        (0 for an all-zero ``W``).
    """

    depthwise_kernel: jax.Array
    pointwise_kernel: jax.Array
    relative_error: jax.Array


def factorize_conv(dense_kernel: jax.Array, depth_multiplier: int = 1) -> Factorization:
    """The depthwise-separable pair closest to a dense kernel in Frobenius norm.

    For each input channel ``c``, the slice ``W[..., c, :]`` reshaped to a ``prod(K) x O`` matrix
    is replaced by its rank-``M`` truncated SVD ``U_M S_M V_M^T`` (the best rank-``M``
    approximation, Eckart–Young), split evenly between the two kernels:
    ``depthwise_kernel[..., 0, c * M + m] = sqrt(s_m) * u_m`` and
    ``pointwise_kernel[c * M + m, :] = sqrt(s_m) * v_m``. Components beyond
    ``min(prod(K), O)`` are zero. The error is therefore
    ``sqrt(sum_c sum_{i > M} s_{c,i}^2) / ||W||_F``, and 0 once ``M >= min(prod(K), O)``.
    Singular vectors are determined only up to sign (and rotation for equal singular values),
    so the pair is not unique; its fusion is, when ``s_M > s_{M+1}``.

    Args:
      dense_kernel: ``W``, ``(*K, C, O)`` with at least one spatial dim (groups = 1).
      depth_multiplier: ``M``, the rank kept per input channel.

    Returns:
      A :class:`Factorization` ``(depthwise_kernel, pointwise_kernel, relative_error)`` with
      kernels ``(*K, 1, C * M)`` and ``(C * M, O)`` in ``W``'s dtype. It always has three
      fields, so ``dw, pw = factorize_conv(W)`` fails loudly; write ``dw, pw, err = ...`` or
      use the field names. The SVD runs in float32 (float64 for float64 input). Jittable with
      ``depth_multiplier`` static.
    """
    op = "factorize_conv"
    m = v.check_int(op, "depth_multiplier", depth_multiplier)
    v.check_float_dtype(op, "dense_kernel", dense_kernel)
    shape = tuple(np.shape(dense_kernel))
    if len(shape) < 3 or 0 in shape:
        raise ValueError(
            f"{op}: dense_kernel must have shape (*K, C, O) with at least one spatial dim and "
            f"no empty dim, but got dense_kernel of shape {shape}"
        )
    return _factorize(jnp.asarray(dense_kernel), m)


@functools.partial(jax.jit, static_argnums=1)
def _factorize(dense_kernel: jax.Array, m: int) -> Factorization:
    """The validated core of :func:`factorize_conv`, one compiled program per shape and M."""
    dtype = dense_kernel.dtype
    shape = dense_kernel.shape
    window, (c, o) = shape[:-2], shape[-2:]
    taps = math.prod(window)
    work = jnp.promote_types(dtype, jnp.float32)
    w = dense_kernel.astype(work)
    mats = jnp.moveaxis(w.reshape(taps, c, o), 1, 0)  # (C, prod(K), O)
    u, s, vt = jnp.linalg.svd(mats, full_matrices=False)  # (C,P,r), (C,r), (C,r,O)
    keep = min(m, s.shape[-1])
    root = jnp.sqrt(s[:, :keep])
    dw = u[:, :, :keep] * root[:, None, :]  # (C, P, keep)
    pw = vt[:, :keep, :] * root[:, :, None]  # (C, keep, O)
    if keep < m:  # more components than the slice has rank: pad with zeros
        dw = jnp.pad(dw, ((0, 0), (0, 0), (0, m - keep)))
        pw = jnp.pad(pw, ((0, 0), (0, m - keep), (0, 0)))
    depthwise = jnp.moveaxis(dw, 0, 1).reshape(*window, 1, c * m)
    pointwise = pw.reshape(c * m, o)
    residual = jnp.linalg.norm((w - fuse_separable(depthwise, pointwise, m)).ravel())
    norm = jnp.linalg.norm(w.ravel())
    error = jnp.where(norm > 0, residual / jnp.where(norm > 0, norm, 1), 0)
    return Factorization(depthwise.astype(dtype), pointwise.astype(dtype), error)
