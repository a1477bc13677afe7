"""Tests for jaxsep.algebra: exact fusion of separable pairs, optimal factorization."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsep
from jaxsep.algebra import Factorization, factorize_conv, fuse_separable

TOL = dict(rtol=1e-5, atol=1e-5)


def _random(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _fuse_loop(dw, pw, m):
    """The definition, one entry at a time (NumPy, float64)."""
    *window, _, cm = dw.shape
    c, o = cm // m, pw.shape[-1]
    pw = pw.reshape(cm, o)
    dense = np.zeros((*window, c, o))
    for ch in range(c):
        for out in range(o):
            for mm in range(m):
                dense[..., ch, out] += dw[..., 0, ch * m + mm] * pw[ch * m + mm, out]
    return dense


# --------------------------------------------------------------------------- fuse_separable


@pytest.mark.parametrize("window,c,m,o", [((3,), 2, 1, 4), ((3, 3), 5, 2, 3), ((2, 3, 2), 3, 3, 2)])
def test_fuse_matches_definition(window, c, m, o):
    dw, pw = _random(0, *window, 1, c * m), _random(1, c * m, o)
    dense = fuse_separable(dw, pw, m)
    assert dense.shape == (*window, c, o)
    np.testing.assert_allclose(dense, _fuse_loop(dw, pw, m), **TOL)
    pw_nd = pw.reshape((1,) * len(window) + pw.shape)
    np.testing.assert_allclose(fuse_separable(dw, pw_nd, m), dense, rtol=0, atol=0)
    jitted = jax.jit(fuse_separable, static_argnums=2)(dw, pw, m)
    np.testing.assert_allclose(jitted, dense, **TOL)


def test_fuse_multiplier_is_not_guessed():
    dw, pw = _random(0, 3, 3, 1, 10), _random(1, 10, 4)
    assert fuse_separable(dw, pw, 1).shape == (3, 3, 10, 4)
    assert fuse_separable(dw, pw, 2).shape == (3, 3, 5, 4)


# (x shape, window, M, O, conv kwargs): 1-D/2-D/3-D, every padding form, strides, dilation.
FUSE_GRID = [
    ((2, 11, 3), (3,), 1, 4, dict()),
    ((2, 11, 3), (4,), 2, 5, dict(strides=2, padding="VALID")),
    ((1, 12, 2), (3,), 2, 3, dict(padding="CAUSAL", dilation=2)),
    ((1, 9, 3), (2,), 1, 2, dict(padding=((2, 1),), strides=3)),
    ((2, 7, 8, 3), (3, 3), 1, 4, dict()),
    ((1, 9, 8, 2), (3, 2), 2, 5, dict(strides=(2, 1), padding="SAME_LOWER", dilation=(1, 2))),
    ((1, 8, 8, 3), (3, 3), 3, 2, dict(padding=1, strides=2)),
    ((1, 8, 7, 2), (2, 3), 1, 3, dict(padding=((0, 1), (2, 0)), dilation=2)),
    ((1, 8, 8, 2), (3, 3), 2, 3, dict(padding_mode="reflect")),
    ((2, 3, 7, 6), (3, 3), 2, 4, dict(data_format="NCHW", strides=2)),
    ((1, 5, 6, 5, 2), (3, 2, 3), 1, 3, dict()),
    ((1, 6, 5, 7, 2), (2, 3, 3), 2, 2,
     dict(strides=(1, 2, 2), padding="VALID", dilation=(2, 1, 1))),
]


@pytest.mark.parametrize("x_shape,window,m,o,kwargs", FUSE_GRID)
def test_conv_with_fused_kernel_equals_separable_conv(x_shape, window, m, o, kwargs):
    c = x_shape[1] if kwargs.get("data_format") == "NCHW" else x_shape[-1]
    x = _random(0, *x_shape)
    dw, pw = _random(1, *window, 1, c * m), _random(2, c * m, o)

    # Under jit (one compile per case); fuse_separable is traced too.
    @jax.jit
    def both(x, dw, pw):
        separable = jaxsep.separable_conv(x, dw, pw, impl="xla", **kwargs)
        return separable, jaxsep.conv(x, fuse_separable(dw, pw, m), **kwargs)

    separable, fused = both(x, dw, pw)
    assert fused.shape == separable.shape
    np.testing.assert_allclose(fused, separable, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "dw_shape,pw_shape,m,error,match",
    [
        ((3, 3, 2, 4), (4, 5), 1, ValueError, r"depthwise_kernel of shape \(3, 3, 2, 4\) is 2"),
        ((3, 3, 1, 5), (5, 2), 2, ValueError, "positive multiple of depth_multiplier=2"),
        ((1, 4), (4, 2), 1, ValueError, "at least one spatial dim"),
        ((3, 3, 1, 4), (6, 2), 1, ValueError, r"C \* M = 4 \* 1 = 4, but got .* shape \(6, 2\)"),
        ((3, 3, 1, 4), (1, 4, 2), 1, ValueError, "\\(C \\* M, O\\) or \\(1, 1, C \\* M, O\\)"),
        ((3, 3, 1, 4), (2, 1, 4, 2), 1, ValueError, "pointwise_kernel must have shape"),
        ((3, 3, 1, 4), (4, 2), 0, ValueError, "depth_multiplier must be >= 1, but got 0"),
        ((3, 3, 1, 4), (4, 2), 1.0, TypeError, "depth_multiplier must be an int"),
    ],
)
def test_fuse_validation(dw_shape, pw_shape, m, error, match):
    with pytest.raises(error, match=match):
        fuse_separable(np.zeros(dw_shape, np.float32), np.zeros(pw_shape, np.float32), m)


def test_fuse_rejects_integer_kernels():
    with pytest.raises(TypeError, match="depthwise_kernel must have a floating dtype"):
        fuse_separable(np.zeros((3, 1, 2), np.int32), np.zeros((2, 2), np.float32))


# --------------------------------------------------------------------------- factorize_conv


def _eckart_young(dense, m):
    """sqrt(sum_c sum_{i > M} s_{c,i}^2) / ||W||, with NumPy in float64."""
    w = np.asarray(dense, np.float64)
    c, o = w.shape[-2:]
    mats = np.moveaxis(w.reshape(-1, c, o), 1, 0)
    s = np.linalg.svd(mats, compute_uv=False)
    return math.sqrt(float((s[:, m:] ** 2).sum())) / np.linalg.norm(w)


def test_factorization_is_a_three_field_named_tuple():
    result = factorize_conv(_random(0, 3, 3, 4, 5), 2)
    assert isinstance(result, Factorization)
    assert result._fields == ("depthwise_kernel", "pointwise_kernel", "relative_error")
    dw, pw, err = result
    assert dw.shape == (3, 3, 1, 8) and pw.shape == (8, 5) and err.shape == ()
    with pytest.raises(ValueError, match="too many values to unpack"):
        dw, pw = result


@pytest.mark.parametrize(
    "window,c,o,m",
    [
        ((3,), 3, 2, 2),
        ((3,), 2, 5, 3),
        ((3, 3), 4, 6, 6),
        ((2, 2), 3, 7, 4),
        ((2, 1, 2), 2, 3, 3),
        ((3, 3), 2, 4, 5),
    ],
)
def test_factorize_is_exact_when_multiplier_reaches_the_rank(window, c, o, m):
    # M >= min(prod(K), O): every slice is representable; extra components are zero.
    dense = _random(0, *window, c, o)
    dw, pw, err = factorize_conv(dense, m)
    assert dw.shape == (*window, 1, c * m) and pw.shape == (c * m, o)
    assert float(err) < 1e-5
    np.testing.assert_allclose(fuse_separable(dw, pw, m), dense, **TOL)
    rank = min(math.prod(window), o)
    if m > rank:
        assert not np.any(np.asarray(dw).reshape(-1, c, m)[..., rank:])
        assert not np.any(np.asarray(pw).reshape(c, m, o)[:, rank:])


@pytest.mark.parametrize("window,c,o", [((5,), 3, 4), ((3, 3), 4, 6), ((2, 2, 2), 2, 5)])
def test_factorize_error_is_eckart_young_and_non_increasing(window, c, o):
    dense = _random(1, *window, c, o)
    errors = []
    for m in range(1, min(math.prod(window), o) + 2):
        dw, pw, err = factorize_conv(dense, m)
        np.testing.assert_allclose(float(err), _eckart_young(dense, m), rtol=1e-4, atol=1e-6)
        residual = dense - np.asarray(fuse_separable(dw, pw, m))
        direct = np.linalg.norm(residual) / np.linalg.norm(dense)
        np.testing.assert_allclose(float(err), direct, rtol=1e-4, atol=1e-6)
        errors.append(float(err))
    assert errors[0] > 0.1
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-5


@pytest.mark.parametrize("window,c,m,o", [((3, 3), 4, 1, 6), ((5,), 3, 2, 4), ((2, 3, 2), 2, 2, 5)])
def test_factorize_round_trips_a_rank_m_pair(window, c, m, o):
    dense = fuse_separable(_random(0, *window, 1, c * m), _random(1, c * m, o), m)
    dw, pw, err = factorize_conv(dense, m)
    assert float(err) < 1e-5
    np.testing.assert_allclose(fuse_separable(dw, pw, m), dense, rtol=1e-4, atol=1e-4)


def test_factorized_pair_in_separable_conv_equals_conv_with_its_fusion():
    x, dense = _random(0, 2, 9, 8, 3), _random(1, 3, 3, 3, 4)
    kwargs = dict(strides=2, padding="SAME", dilation=1)

    @jax.jit
    def outputs(x, dense):
        dw, pw, err = factorize_conv(dense, 2)
        return (
            jaxsep.separable_conv(x, dw, pw, impl="xla", **kwargs),
            jaxsep.conv(x, fuse_separable(dw, pw, 2), **kwargs),
            jaxsep.conv(x, dense, **kwargs),
            err,
        )

    separable, fused, full, err = outputs(x, dense)
    np.testing.assert_allclose(separable, fused, **TOL)
    # ... and approximates the dense conv (a loose sanity bound).
    assert 0 < float(err) < 1
    assert np.linalg.norm(full - separable) < np.linalg.norm(full)


def test_factorize_jit_dtype_and_zero_kernel():
    dense = _random(2, 3, 3, 2, 3)
    eager = factorize_conv(dense, 1)
    jitted = jax.jit(factorize_conv, static_argnums=1)(dense, 1)
    np.testing.assert_allclose(
        fuse_separable(jitted[0], jitted[1]), fuse_separable(eager[0], eager[1]), **TOL
    )
    np.testing.assert_allclose(jitted.relative_error, eager.relative_error, **TOL)
    half = factorize_conv(jnp.asarray(dense, jnp.bfloat16), 1)
    assert half.depthwise_kernel.dtype == half.pointwise_kernel.dtype == jnp.bfloat16
    zero = factorize_conv(np.zeros((3, 2, 3), np.float32), 1)
    assert float(zero.relative_error) == 0.0
    assert not np.any(zero.depthwise_kernel) and not np.any(zero.pointwise_kernel)


@pytest.mark.parametrize(
    "dense,m,error,match",
    [
        (np.zeros((4, 5), np.float32), 1, ValueError, "at least one spatial dim.*shape \\(4, 5\\)"),
        (np.zeros((3, 0, 5), np.float32), 1, ValueError, "no empty dim"),
        (np.zeros((3, 3, 2, 2), np.float32), 0, ValueError, "depth_multiplier must be >= 1"),
        (np.zeros((3, 3, 2, 2), np.int32), 1, TypeError, "dense_kernel must have a floating dtype"),
    ],
)
def test_factorize_validation(dense, m, error, match):
    with pytest.raises(error, match=match):
        factorize_conv(dense, m)
