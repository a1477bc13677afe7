"""jaxsep.ops against the float64 loop oracle (jaxsep.reference); identities, autodiff, errors.

The reference grid is a hand-picked sample of the product of its axes (``test_grid_covers``
checks that every value of every axis appears); shapes are tiny and shared where possible.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import DTYPES, IMPLS, assert_matches, f64, rand, tolerance
from jaxsep import ops, reference as ref

pytestmark = pytest.mark.usefixtures("strict_promotion")

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16
FIRST = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
LAST = {1: "NWC", 2: "NHWC", 3: "NDHWC"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One point of the grid. ``multiplier`` is the depth multiplier M (also the conv's O / C)."""

    name: str
    spatial: tuple[int, ...]
    window: tuple[int, ...]
    strides: int | tuple[int, ...]
    dilation: int | tuple[int, ...]
    padding: object
    padding_mode: str
    channels_first: bool
    batch: int
    channels: int
    groups: int
    multiplier: int
    dtype: object

    @property
    def rank(self):
        return len(self.spatial)

    @property
    def data_format(self):
        return (FIRST if self.channels_first else LAST)[self.rank]

    @property
    def x_shape(self):
        n, c, s = self.batch, self.channels, self.spatial
        return (n, c, *s) if self.channels_first else (n, *s, c)

    def kwargs(self):
        return dict(strides=self.strides, padding=self.padding, dilation=self.dilation,
                    data_format=self.data_format, padding_mode=self.padding_mode)


# fmt: off
# name, spatial, window, strides, dilation, padding, padding_mode, channels_first, N, C, G, M, dtype
CASES = [Case(*row) for row in [
    ("1d-same",            (9,),      (3,),      1,         1,         "SAME",        "zeros",     False, 2, 4, 1, 1, F32),
    ("1d-samelow-reflect", (10,),     (4,),      2,         1,         "SAME_LOWER",  "reflect",   True,  1, 4, 2, 2, BF16),
    ("1d-causal-d2",       (11,),     (3,),      1,         2,         "CAUSAL",      "replicate", False, 2, 3, 3, 3, F16),
    ("1d-valid-s3d2",      (12,),     (2,),      3,         2,         "VALID",       "zeros",     True,  1, 4, 4, 1, F32),
    ("1d-pair-circular",   (8,),      (3,),      2,         1,         [(2, 1)],      "circular",  False, 2, 6, 2, 2, F16),
    ("1d-int-reflect",     (7,),      (5,),      1,         1,         2,             "reflect",   False, 1, 4, 1, 3, BF16),
    ("1d-causal-s2d2",     (10,),     (4,),      2,         2,         "CAUSAL",      "zeros",     True,  2, 4, 2, 1, F32),
    ("2d-same-even",       (7, 6),    (2, 4),    1,         1,         "SAME",        "zeros",     False, 2, 4, 2, 1, F32),
    ("2d-samelow-mixed",   (8, 7),    (3, 3),    (2, 1),    (1, 2),    "SAME_LOWER",  "replicate", True,  1, 3, 1, 2, F16),
    ("2d-valid-s2",        (6, 6),    (2, 2),    2,         1,         "VALID",       "zeros",     False, 1, 4, 4, 3, BF16),
    ("2d-pairs-circular",  (7, 5),    (3, 3),    (3, 2),    (2, 1),    [(0, 2), (1, 0)], "circular", True, 2, 4, 2, 1, F32),
    ("2d-perdim-s2d2",     (8, 7),    (3, 3),    2,         2,         (2, 1),        "reflect",   False, 2, 6, 3, 1, BF16),
    ("2d-int-even",        (5, 6),    (4, 2),    1,         1,         1,             "zeros",     True,  1, 4, 1, 2, F16),
    ("3d-same",            (4, 5, 4), (3, 2, 3), 1,         1,         "SAME",        "zeros",     False, 2, 4, 2, 2, F32),
    ("3d-perdim-reflect",  (5, 4, 5), (2, 3, 2), (2, 1, 3), 1,         (1, 0, 2),     "reflect",   True,  1, 3, 3, 1, BF16),
    ("3d-samelow-circ",    (4, 4, 5), (3, 3, 2), (1, 2, 1), (2, 1, 1), "SAME_LOWER",  "circular",  False, 1, 4, 4, 3, F16),
    ("3d-pairs-replicate", (5, 4, 4), (3, 2, 3), (2, 2, 1), (1, 1, 2), [(1, 0), (0, 1), (2, 3)], "replicate", True, 2, 4, 1, 1, F32),
    ("3d-valid-d2",        (5, 5, 5), (2, 3, 3), 1,         (2, 1, 1), "VALID",       "zeros",     False, 1, 6, 2, 2, BF16),
]]
# fmt: on
CASE_IDS = [c.name for c in CASES]
SEPARABLE_OUT = 5  # pointwise out-channels in separable_conv cases
# float32 geometries for the taps-gradient check (1d-same is check_grads' case; one 3-D is enough)
F32_CASES = [c for c in CASES if c.dtype == F32 and c.name not in ("1d-same", "3d-same")]


def _per_dim(value, rank):
    return value if isinstance(value, tuple) else (value,) * rank


def test_grid_covers_every_axis_value():
    seen = lambda f: {f(c) for c in CASES}  # noqa: E731
    assert seen(lambda c: c.rank) == {1, 2, 3}
    assert seen(lambda c: c.channels_first) == {True, False}
    assert {s for c in CASES for s in _per_dim(c.strides, c.rank)} == {1, 2, 3}
    assert {d for c in CASES for d in _per_dim(c.dilation, c.rank)} == {1, 2}
    assert any(
        s > 1 and d > 1
        for c in CASES
        for s, d in zip(_per_dim(c.strides, c.rank), _per_dim(c.dilation, c.rank))
    )
    forms = {
        c.padding if isinstance(c.padding, str)
        else "int" if isinstance(c.padding, int)
        else "pairs" if isinstance(c.padding, list) else "per-dim"
        for c in CASES
    }
    assert forms == {"SAME", "SAME_LOWER", "VALID", "CAUSAL", "int", "per-dim", "pairs"}
    assert any(lo != hi for c in CASES if isinstance(c.padding, list) for lo, hi in c.padding)
    assert seen(lambda c: c.padding_mode) == {"zeros", "reflect", "replicate", "circular"}
    assert seen(lambda c: c.multiplier) == {1, 2, 3}
    assert seen(lambda c: "1" if c.groups == 1 else "C" if c.groups == c.channels else "2") == {
        "1", "2", "C"
    }
    assert {k % 2 for c in CASES for k in c.window} == {0, 1}
    assert seen(lambda c: c.batch > 1) == {True, False}
    assert seen(lambda c: jnp.dtype(c.dtype)) == set(DTYPES)


# ------------------------------------------------------------------ every op against the oracle


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv_matches_reference(case):
    c_in, groups = case.channels, case.groups
    x = rand(case.x_shape, case.dtype, seed=0)
    kernel = rand((*case.window, c_in // groups, c_in * case.multiplier), case.dtype, seed=1)
    got = ops.conv(x, kernel, groups=groups, **case.kwargs())
    want = ref.conv(f64(x), f64(kernel), groups=groups, **case.kwargs())
    assert_matches(got, want, case.dtype, math.prod(case.window) * c_in // groups)


# conv's "patches" lowering (dense only) on every other geometry of the grid, made dense, and
# 1d-valid-s3d2: every rank, layout, padding form and mode, stride 3, dilation 2, every dtype.
DENSE_CASES = [dataclasses.replace(c, groups=1) for c in CASES]
DENSE_SAMPLE = DENSE_CASES[::2] + [c for c in DENSE_CASES if c.name == "1d-valid-s3d2"]


@pytest.mark.parametrize("case", DENSE_SAMPLE, ids=[c.name for c in DENSE_SAMPLE])
def test_conv_patches_matches_reference(case):
    x = rand(case.x_shape, case.dtype, seed=0)
    kernel = rand((*case.window, case.channels, case.multiplier), case.dtype, seed=1)
    got = ops.conv(x, kernel, impl="patches", **case.kwargs())
    want = ref.conv(f64(x), f64(kernel), **case.kwargs())
    assert_matches(got, want, case.dtype, math.prod(case.window) * case.channels)


# float32, one per rank: strided and dilated channels-first 1-D, uneven pairs and circular
# padding channels-first 2-D, channels-last 3-D.
DENSE_F32 = [c for c in DENSE_CASES if c.name in ("1d-causal-s2d2", "2d-pairs-circular", "3d-same")]


@pytest.mark.parametrize("case", DENSE_F32, ids=[c.name for c in DENSE_F32])
def test_conv_patches_gradients_equal_xla(case):
    """Autodiff of "patches" (x and kernel gradients) against autodiff of lax's conv."""
    x = rand(case.x_shape, seed=0)
    kernel = rand((*case.window, case.channels, case.multiplier), seed=1)
    f = lambda impl: lambda x, k: ops.conv(x, k, impl=impl, **case.kwargs())  # noqa: E731
    out, vjp_xla = jax.vjp(f("xla"), x, kernel)
    cotangent = rand(out.shape, seed=3)
    got, want = jax.vjp(f("patches"), x, kernel)[1](cotangent), vjp_xla(cotangent)
    positions = math.prod(out.shape) // out.shape[1 if case.channels_first else -1]
    for g, w, reduction in zip(got, want, (math.prod(case.window) * case.multiplier, positions)):
        assert g.dtype == w.dtype == F32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, **tolerance(F32, reduction))


def test_conv_auto_candidates():
    """"patches" is measured only for dense convolutions of at most PATCHES_MAX_DEPTH (576)
    patch channels; with measuring off (the suite's setting) "auto" is "xla"."""
    from jaxsep import _validation
    from jaxsep._lowering import choose_conv_impl, conv_candidates

    assert conv_candidates(3, 1, (3, 3)) == ("xla", "patches")  # a stem: 27 channels
    assert conv_candidates(64, 1, (3, 3)) == ("xla", "patches")  # 576
    assert conv_candidates(65, 1, (3, 3)) == ("xla",)  # 585
    assert conv_candidates(6, 2, (1, 1)) == ("xla",)  # grouped
    x, kernel = rand((2, 8, 8, 3)), rand((3, 3, 3, 32), seed=1)
    geometry = _validation.conv_geometry("conv", x, kernel, "kernel", 1, "SAME", 1, None, "zeros")
    assert choose_conv_impl(x, kernel, geometry, 1) == "xla"
    np.testing.assert_array_equal(ops.conv(x, kernel), ops.conv(x, kernel, impl="xla"))


@pytest.mark.parametrize("case", CASES[::3], ids=CASE_IDS[::3])
def test_grouped_conv_matches_reference(case):
    c_in, groups = case.channels, case.groups
    x = rand(case.x_shape, case.dtype, seed=0)
    kernel = rand((*case.window, c_in // groups, c_in * case.multiplier), case.dtype, seed=1)
    got = ops.grouped_conv(x, kernel, groups, **case.kwargs())
    want = ref.grouped_conv(f64(x), f64(kernel), groups, **case.kwargs())
    assert_matches(got, want, case.dtype, math.prod(case.window) * c_in // groups)


# grouped_conv's lowerings on grid points with 1 < G < C (the interesting ones for "split" and
# "taps"), G = C and G = 1, and 1x1 windows (the matrix-product path of "split"): strided,
# on a reflect-padded input, channels-first. "auto" only dispatches to one of them
# (test_grouped_conv_auto_is_its_choice).
GROUPED_IMPLS = ("xla", "split", "taps")
_BY_NAME = {c.name: c for c in CASES}
GROUPED_CASES = [_BY_NAME[name] for name in (
    "1d-causal-s2d2", "1d-pair-circular", "2d-samelow-mixed", "2d-pairs-circular",
    "2d-perdim-s2d2", "3d-samelow-circ", "3d-valid-d2",
)] + [
    dataclasses.replace(_BY_NAME["2d-perdim-s2d2"], name="2d-1x1-s2", window=(1, 1),
                        padding="SAME"),
    dataclasses.replace(_BY_NAME["2d-pairs-circular"], name="2d-1x1-s32-nchw", window=(1, 1),
                        padding="SAME"),
    dataclasses.replace(_BY_NAME["1d-int-reflect"], name="1d-1x1-reflect", window=(1,),
                        groups=2),
]


def _grouped_inputs(case, seed=0):
    c_in, groups = case.channels, case.groups
    x = rand(case.x_shape, case.dtype, seed=seed)
    kernel = rand((*case.window, c_in // groups, c_in * case.multiplier), case.dtype, seed=seed + 1)
    return x, kernel


@pytest.mark.parametrize("impl", GROUPED_IMPLS)
@pytest.mark.parametrize("case", GROUPED_CASES, ids=[c.name for c in GROUPED_CASES])
def test_grouped_conv_impls_match_reference(case, impl):
    x, kernel = _grouped_inputs(case)
    got = ops.grouped_conv(x, kernel, case.groups, impl=impl, **case.kwargs())
    want = ref.grouped_conv(f64(x), f64(kernel), case.groups, **case.kwargs())
    assert_matches(got, want, case.dtype, math.prod(case.window) * case.channels // case.groups)


def test_grouped_conv_auto_is_its_choice():
    """impl="auto" runs exactly the lowering choose_grouped_impl names: "xla" off the CPU;
    on the CPU "taps" for one channel per group and "split" otherwise (bench_grouped.py)."""
    on_cpu = jax.default_backend() == "cpu"
    choices = [(8, 8, "taps"), (8, 4, "split"), (8, 2, "split"), (20, 2, "split"), (4, 1, "split")]
    for channels, groups, want in choices:
        assert ops.choose_grouped_impl(channels, groups) == (want if on_cpu else "xla")
    one_per_group = dataclasses.replace(_BY_NAME["1d-causal-s2d2"], groups=4)  # C = 4: taps
    for case in (one_per_group, _BY_NAME["2d-samelow-mixed"]):  # taps, split
        x, kernel = _grouped_inputs(case)
        chosen = ops.choose_grouped_impl(case.channels, case.groups)
        np.testing.assert_array_equal(
            ops.grouped_conv(x, kernel, case.groups, impl="auto", **case.kwargs()),
            ops.grouped_conv(x, kernel, case.groups, impl=chosen, **case.kwargs()),
        )


# float32 geometries with 1 < G < C, 1x1 included, and one 3-D.
GROUPED_F32 = [
    c for c in GROUPED_CASES + [_BY_NAME["3d-same"]]
    if c.dtype == F32 and c.groups not in (1, c.channels)
]


@pytest.mark.parametrize("impl", ["split", "taps"])
@pytest.mark.parametrize("case", GROUPED_F32, ids=[c.name for c in GROUPED_F32])
def test_grouped_conv_gradients_equal_xla(case, impl):
    """Autodiff of "split" and "taps" (x and kernel gradients) against autodiff of lax's
    grouped conv, float32."""
    x, kernel = _grouped_inputs(case)
    f = lambda impl: lambda x, k: ops.grouped_conv(  # noqa: E731
        x, k, case.groups, impl=impl, **case.kwargs()
    )
    out, vjp_xla = jax.vjp(f("xla"), x, kernel)
    cotangent = rand(out.shape, seed=3)
    got = jax.vjp(f(impl), x, kernel)[1](cotangent)
    want = vjp_xla(cotangent)
    positions = math.prod(out.shape) // out.shape[1 if case.channels_first else -1]
    # an input pixel feeds prod(K) taps of its group's O / G = C * M / G outputs
    per_input = math.prod(case.window) * case.multiplier * case.channels // case.groups
    reductions = (per_input, positions)
    for g, w, reduction in zip(got, want, reductions):
        assert g.dtype == w.dtype == F32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, **tolerance(F32, reduction))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_depthwise_conv_matches_reference(case, impl):
    x = rand(case.x_shape, case.dtype, seed=0)
    kernel = rand((*case.window, 1, case.channels * case.multiplier), case.dtype, seed=2)
    got = ops.depthwise_conv(x, kernel, impl=impl, **case.kwargs())
    want = ref.depthwise_conv(f64(x), f64(kernel), impl=impl, **case.kwargs())
    assert_matches(got, want, case.dtype, math.prod(case.window))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_separable_conv_matches_reference(case, impl):
    hidden = case.channels * case.multiplier
    x = rand(case.x_shape, case.dtype, seed=0)
    dk = rand((*case.window, 1, hidden), case.dtype, seed=2)
    pk = rand((hidden, SEPARABLE_OUT), case.dtype, seed=3)
    got = ops.separable_conv(x, dk, pk, impl=impl, **case.kwargs())
    want = ref.separable_conv(f64(x), f64(dk), f64(pk), impl=impl, **case.kwargs())
    # The hidden activations are rounded to the dtype too: the whole chain is the reduction.
    assert_matches(got, want, case.dtype, math.prod(case.window) * hidden)


@pytest.mark.parametrize("case", CASES[::2], ids=CASE_IDS[::2])
def test_pointwise_conv_matches_reference(case):
    x = rand(case.x_shape, case.dtype, seed=0)
    kernel = rand((case.channels, SEPARABLE_OUT), case.dtype, seed=3)
    got = ops.pointwise_conv(x, kernel, data_format=case.data_format)
    want = ref.pointwise_conv(f64(x), f64(kernel), data_format=case.data_format)
    assert_matches(got, want, case.dtype, case.channels)


@pytest.mark.parametrize("groups", [2, 3])  # G = 1 and G = C are the identity
@pytest.mark.parametrize("case", CASES[::3], ids=CASE_IDS[::3])
def test_channel_shuffle_matches_reference(case, groups):
    case = dataclasses.replace(case, channels=6)
    x = rand(case.x_shape, case.dtype, seed=0)
    got = ops.channel_shuffle(x, groups, data_format=case.data_format)
    assert got.dtype == x.dtype
    want = ref.channel_shuffle(np.asarray(x), groups, data_format=case.data_format)
    np.testing.assert_array_equal(np.asarray(got), want)


# ------------------------------------------------------------------ the seed article's examples


def test_article_examples():
    x = rand((1, 12, 12, 3), seed=4)
    k = rand((5, 5, 3, 1), seed=5)
    out = ops.conv(x, k, padding="VALID")
    assert out.shape == (1, 8, 8, 1)
    assert_matches(out, ref.conv(f64(x), f64(k), padding="VALID"), F32, 75)

    dk = rand((5, 5, 1, 3), seed=6)
    for out_channels in (1, 256):
        pk = rand((3, out_channels), seed=7)
        out = ops.separable_conv(x, dk, pk, padding="VALID")
        assert out.shape == (1, 8, 8, out_channels)
        want = ref.separable_conv(f64(x), f64(dk), f64(pk), padding="VALID")
        assert_matches(out, want, F32, 75)

    big = rand((1, 64, 64, 3), seed=8)
    assert ops.conv(big, rand((3, 3, 3, 4), seed=9), padding="SAME").shape == (1, 64, 64, 4)


# ------------------------------------------------------------------ identities

IDENTITY_CASES = [c for c in CASES if c.name in ("1d-causal-s2d2", "2d-pairs-circular", "3d-same")]
IDENTITY_IDS = [c.name for c in IDENTITY_CASES]
EXACT = dict(rtol=1e-6, atol=1e-6)  # same float32 arithmetic, possibly another summation order


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", IDENTITY_CASES, ids=IDENTITY_IDS)
def test_separable_is_depthwise_then_pointwise(case, impl):
    hidden = case.channels * case.multiplier
    x = rand(case.x_shape, seed=0)
    dk, pk = rand((*case.window, 1, hidden), seed=2), rand((hidden, SEPARABLE_OUT), seed=3)
    got = ops.separable_conv(x, dk, pk, impl=impl, **case.kwargs())
    dw = ops.depthwise_conv(x, dk, impl=impl, **case.kwargs())
    np.testing.assert_allclose(
        got, ops.pointwise_conv(dw, pk, data_format=case.data_format), **EXACT
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", IDENTITY_CASES, ids=IDENTITY_IDS)
def test_depthwise_is_conv_with_groups_c(case, impl):
    x = rand(case.x_shape, seed=0)
    kernel = rand((*case.window, 1, case.channels * case.multiplier), seed=2)
    got = ops.depthwise_conv(x, kernel, impl=impl, **case.kwargs())
    want = ops.conv(x, kernel, groups=case.channels, **case.kwargs())
    np.testing.assert_allclose(got, want, **EXACT)


def _depthwise_vjp(x, kernel, cotangent, impl, **kwargs):
    f = lambda x, k: ops.depthwise_conv(x, k, impl=impl, **kwargs)  # noqa: E731
    return jax.vjp(f, x, kernel)[1](cotangent)


@pytest.mark.parametrize("case", F32_CASES, ids=[c.name for c in F32_CASES])
def test_depthwise_taps_gradients_equal_xla(case):
    """The hand-written taps backward against autodiff of lax's conv, on every float32 geometry."""
    x = rand(case.x_shape, seed=0)
    kernel = rand((*case.window, 1, case.channels * case.multiplier), seed=2)
    out = ops.depthwise_conv(x, kernel, impl="xla", **case.kwargs())
    cotangent = rand(out.shape, seed=3)
    got = _depthwise_vjp(x, kernel, cotangent, "taps", **case.kwargs())
    want = _depthwise_vjp(x, kernel, cotangent, "xla", **case.kwargs())
    positions = math.prod(out.shape) // out.shape[-1 if not case.channels_first else 1]
    reductions = (math.prod(case.window) * case.multiplier, positions)
    for g, w, reduction in zip(got, want, reductions):
        assert g.dtype == w.dtype == F32
        np.testing.assert_allclose(g, w, **tolerance(F32, reduction))


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_depthwise_taps_kernel_gradient_in_batch_chunks(monkeypatch, data_format):
    """The taps kernel gradient scans over batch chunks of _KERNEL_GRAD_CHUNK_BYTES; shrink the
    chunk so this small batch of 5 takes the scan (2 chunks of 2) and the remainder (1)."""
    from jaxsep import _taps

    monkeypatch.setattr(_taps, "_KERNEL_GRAD_CHUNK_BYTES", 2 * 4 * 5 * 3 * 4)  # 2 examples
    shape = (5, 4, 5, 3) if data_format == "NHWC" else (5, 3, 4, 5)  # used by no other test
    x, kernel = rand(shape, seed=0), rand((3, 2, 1, 6), seed=1)
    kw = dict(strides=(2, 1), dilation=(1, 2), data_format=data_format)
    cotangent = rand(ops.depthwise_conv(x, kernel, impl="xla", **kw).shape, seed=2)
    got = _depthwise_vjp(x, kernel, cotangent, "taps", **kw)
    want = _depthwise_vjp(x, kernel, cotangent, "xla", **kw)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tolerance(F32, 5 * 4 * 5))


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=IDENTITY_IDS)
def test_grouped_conv_is_conv(case):
    x = rand(case.x_shape, seed=0)
    for groups in (1, case.groups):
        kernel = rand((*case.window, case.channels // groups, case.channels), seed=1)
        got = ops.grouped_conv(x, kernel, groups, impl="xla", **case.kwargs())
        np.testing.assert_array_equal(got, ops.conv(x, kernel, groups=groups, **case.kwargs()))


@pytest.mark.parametrize("data_format", ["NWC", "NCHW", "NDHWC"])
def test_pointwise_kernel_forms(data_format):
    rank = len(data_format) - 2
    x = rand((2, 4) + (3,) * rank if data_format[1] == "C" else (2,) + (3,) * rank + (4,))
    kernel = rand((4, 5), seed=1)
    flat = ops.pointwise_conv(x, kernel, data_format=data_format)
    np.testing.assert_array_equal(
        ops.pointwise_conv(x, kernel.reshape((1,) * rank + (4, 5)), data_format=data_format), flat
    )
    as_conv = ops.conv(x, kernel.reshape((1,) * rank + (4, 5)), data_format=data_format)
    np.testing.assert_allclose(flat, as_conv, **EXACT)


# ------------------------------------------------------------------ hand-countable and impulses

# (size, window, stride, dilation, padding of one dim) -> in-window, in-bounds pixels per output
COUNTS = [
    (5, 3, 1, 1, "SAME", [2, 3, 3, 3, 2]),
    (7, 3, 2, 2, "SAME", [2, 3, 3, 2]),
    (6, 4, 1, 1, "SAME", [3, 4, 4, 4, 3, 2]),
    (6, 4, 1, 1, "SAME_LOWER", [2, 3, 4, 4, 4, 3]),
    (5, 3, 2, 1, "VALID", [3, 3]),
    (5, 2, 1, 1, (2, 0), [0, 1, 2, 2, 2, 2]),
    (5, 3, 1, 1, "CAUSAL", [1, 2, 3, 3, 3]),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size, window, stride, dilation, padding, counts", COUNTS)
def test_all_ones_counts_in_bounds_pixels(size, window, stride, dilation, padding, counts, impl):
    channels, groups, multiplier = 4, 2, 2
    x = jnp.ones((1, size, channels))
    kw = dict(strides=stride, dilation=dilation,
              padding=[padding] if isinstance(padding, tuple) else padding)
    counts = np.asarray(counts, np.float32)[:, None]
    out = ops.conv(x, jnp.ones((window, channels // groups, 6)), groups=groups, **kw)
    per_output = counts * (channels // groups)  # each output sums C / G input channels
    np.testing.assert_array_equal(out[0], np.broadcast_to(per_output, (len(counts), 6)))
    out = ops.depthwise_conv(x, jnp.ones((window, 1, channels * multiplier)), impl=impl, **kw)
    np.testing.assert_array_equal(out[0], np.broadcast_to(counts, (len(counts), 8)))
    out = ops.separable_conv(x, jnp.ones((window, 1, 8)), jnp.ones((8, 3)), impl=impl, **kw)
    np.testing.assert_array_equal(out[0], np.broadcast_to(counts * 8, (len(counts), 3)))


def test_all_ones_counts_3d():
    x = jnp.ones((1, 4, 5, 4, 3))  # per dim with a 3-wide SAME window: [2,3,3,2], [2,3,3,3,2]
    counts = np.einsum("i,j,k->ijk", [2, 3, 3, 2], [2, 3, 3, 3, 2], [2, 3, 3, 2])[..., None]
    out = ops.depthwise_conv(x, jnp.ones((3, 3, 3, 1, 3)))
    np.testing.assert_array_equal(out[0], np.broadcast_to(counts, (4, 5, 4, 3)))


def test_conv_groups_do_not_mix():
    kernel = rand((3, 3, 2, 6), seed=1)  # C = 6, G = 3: two channels in and out per group
    for c in range(6):
        x = jnp.zeros((1, 5, 5, 6)).at[0, 2, 2, c].set(1.0)
        out = np.asarray(ops.conv(x, kernel, groups=3, padding="VALID"))[0]
        group = slice(2 * (c // 2), 2 * (c // 2) + 2)
        expected = np.zeros((3, 3, 6), np.float32)
        expected[..., group] = np.asarray(kernel)[::-1, ::-1, c % 2, group]
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_depthwise_channels_do_not_mix(impl):
    kernel = rand((3, 3, 1, 6), seed=2)  # C = 3, M = 2
    for c in range(3):
        x = jnp.zeros((1, 5, 5, 3)).at[0, 2, 2, c].set(1.0)
        out = np.asarray(ops.depthwise_conv(x, kernel, padding="VALID", impl=impl))[0]
        expected = np.zeros((3, 3, 6), np.float32)
        expected[..., 2 * c : 2 * c + 2] = np.asarray(kernel)[::-1, ::-1, 0, 2 * c : 2 * c + 2]
        np.testing.assert_array_equal(out, expected)


def test_channel_shuffle_by_hand():
    x = jnp.arange(6.0).reshape(1, 1, 6)
    np.testing.assert_array_equal(ops.channel_shuffle(x, 2)[0, 0], [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(ops.channel_shuffle(x, 3)[0, 0], [0, 2, 4, 1, 3, 5])
    xi = jnp.arange(6).reshape(1, 6, 1, 1)  # any dtype; channels-first
    out = ops.channel_shuffle(xi, 3, data_format="NCHW")
    assert out.dtype == xi.dtype
    np.testing.assert_array_equal(out[0, :, 0, 0], [0, 2, 4, 1, 3, 5])


# ------------------------------------------------------------------ transformations


@dataclasses.dataclass(frozen=True)
class Spec:
    """An op with its static arguments bound: ``fn(x, *kernels, data_format=...)``."""

    fn: Callable
    shapes: tuple[tuple[int, ...], ...]  # x (channels-last) first, then the kernels


# Few input shapes, to share compiled programs. The depthwise specs are 1-D: second-order taps
# derivatives compile slowly in 2-D, and test_depthwise_taps_gradients_equal_xla covers the
# taps backward in 2-D and 3-D.
X1, X2 = (2, 7, 4), (2, 5, 6, 4)
SPECS = {
    "conv": Spec(functools.partial(ops.conv, strides=(2, 1), dilation=(1, 2), groups=2),
                 (X2, (3, 3, 2, 6))),
    **{
        f"grouped_conv-{impl}": Spec(
            functools.partial(ops.grouped_conv, groups=2, padding="CAUSAL", dilation=2, impl=impl),
            (X1, (3, 2, 6)),
        )
        for impl in ("xla", "split", "taps")
    },
    "pointwise_conv": Spec(ops.pointwise_conv, (X2, (4, 3))),
    "channel_shuffle": Spec(functools.partial(ops.channel_shuffle, groups=2), (X2,)),
    **{
        f"depthwise_conv-{impl}": Spec(
            functools.partial(ops.depthwise_conv, padding_mode="reflect", impl=impl),
            (X1, (3, 1, 8)),
        )
        for impl in ("xla", "taps", "auto")
    },
    **{
        f"separable_conv-{impl}": Spec(
            functools.partial(ops.separable_conv, strides=2, dilation=2, padding="VALID",
                              impl=impl),
            (X1, (2, 1, 12), (12, 3)),
        )
        for impl in ("xla", "taps", "auto")
    },
}
SPEC_PARAMS = list(SPECS)
# "auto" only picks "xla" or "taps"; the costly gradient checks run on those two.
GRAD_PARAMS = [name for name in SPECS if not name.endswith("-auto")]
VMAP_PARAMS = [
    (name, batched)
    for name in SPECS
    for batched in ("x", "kernels", "both")
    if batched == "x" or len(SPECS[name].shapes) > 1
]


def _args(spec, seed=0):
    return tuple(rand(shape, seed=seed + i) for i, shape in enumerate(spec.shapes))


@pytest.mark.parametrize("name", SPEC_PARAMS)
def test_jit_equals_eager(name):
    spec = SPECS[name]
    args = _args(spec)
    np.testing.assert_allclose(jax.jit(spec.fn)(*args), spec.fn(*args), **EXACT)


@pytest.mark.parametrize("name", SPEC_PARAMS)
def test_channels_first_is_transposed_channels_last(name):
    spec = SPECS[name]
    x, *kernels = _args(spec)
    rank = x.ndim - 2
    got = spec.fn(jnp.moveaxis(x, -1, 1), *kernels, data_format=FIRST[rank])
    # EXACT, not bit equality: "taps" sums the same products in both layouts, but channels-last
    # runs them block by block (_taps._forward_regions), a different loop from channels-first's,
    # and XLA:CPU's code for the two can round differently in the last bit.
    np.testing.assert_allclose(got, jnp.moveaxis(spec.fn(x, *kernels), -1, 1), **EXACT)


@pytest.mark.parametrize("name", GRAD_PARAMS)
def test_check_grads(name):
    spec = SPECS[name]
    # Every op is linear in x and in each kernel (bilinear jointly), so along check_grads'
    # joint direction f is a polynomial of degree <= 3 and central differences carry no
    # truncation error for orders 1 and 2 beyond a tiny O(eps^2) third-order term; what is
    # left is float32 rounding of f, ~1e-7 * |f| / eps. eps = 1e-2 keeps that < 1e-4 for
    # order 1; order 2 divides by eps once more, hence the looser 2e-2. Under jit, each
    # derivative is compiled once instead of dispatched op by op (eager autodiff is covered
    # by test_jvp_vjp_checkpoint).
    fn = jax.jit(spec.fn)
    check_grads(fn, _args(spec), order=1, modes=("fwd", "rev"), eps=1e-2, atol=1e-2, rtol=1e-2)
    check_grads(fn, _args(spec), order=2, modes=("fwd", "rev"), eps=1e-2, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", SPEC_PARAMS)
def test_jvp_vjp_checkpoint(name):
    spec = SPECS[name]
    args, tangents = _args(spec, seed=0), _args(spec, seed=10)
    out, jvp_out = jax.jvp(spec.fn, args, tangents)
    np.testing.assert_allclose(out, spec.fn(*args), **EXACT)
    # Linear in each argument: the tangent is the sum over arguments of f with that one swapped.
    swapped = sum(spec.fn(*args[:i], t, *args[i + 1 :]) for i, t in enumerate(tangents))
    np.testing.assert_allclose(jvp_out, swapped, rtol=1e-5, atol=1e-4)
    # vjp is the adjoint of jvp: <ct, J t> == <J^T ct, t>.
    _, vjp_fn = jax.vjp(spec.fn, *args)
    cotangent = rand(out.shape, seed=20)
    lhs = jnp.vdot(cotangent, jvp_out)
    rhs = sum(jnp.vdot(g, t) for g, t in zip(vjp_fn(cotangent), tangents))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)
    # jax.checkpoint changes nothing but what is stored.
    loss = lambda *a: jnp.sum(spec.fn(*a) ** 2)  # noqa: E731
    want = jax.grad(loss, argnums=tuple(range(len(args))))(*args)
    got = jax.grad(jax.checkpoint(loss), argnums=tuple(range(len(args))))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name, batched", VMAP_PARAMS)
def test_vmap_equals_loop(name, batched):
    spec = SPECS[name]
    n_kernels = len(spec.shapes) - 1
    in_axes = (0 if batched != "kernels" else None,) + (0 if batched != "x" else None,) * n_kernels
    args = tuple(
        rand(((3,) + shape) if axis == 0 else shape, seed=i)
        for i, (shape, axis) in enumerate(zip(spec.shapes, in_axes))
    )
    got = jax.vmap(spec.fn, in_axes=in_axes)(*args)
    loop = [
        spec.fn(*(a[b] if axis == 0 else a for a, axis in zip(args, in_axes))) for b in range(3)
    ]
    np.testing.assert_allclose(got, jnp.stack(loop), **EXACT)


# ------------------------------------------------------------------ errors: one test per rule

X = jnp.ones((1, 6, 6, 4))
DK = jnp.ones((3, 3, 1, 8))  # depthwise kernel for X, M = 2
PK = jnp.ones((8, 5))
WINDOWED = {  # the three ops that take strides/padding/dilation/padding_mode
    "conv": lambda **kw: ops.conv(X, jnp.ones((3, 3, 4, 5)), **kw),
    "depthwise_conv": lambda **kw: ops.depthwise_conv(X, DK, **kw),
    "separable_conv": lambda **kw: ops.separable_conv(X, DK, PK, **kw),
}
windowed = pytest.mark.parametrize("call", list(WINDOWED.values()), ids=list(WINDOWED))


def test_error_kernel_rank():
    with pytest.raises(ValueError, match=r"conv: kernel must have rank 4 .* shape \(3, 4, 5\)"):
        ops.conv(X, jnp.ones((3, 4, 5)))
    with pytest.raises(ValueError, match=r"depthwise_kernel must have rank 4"):
        ops.separable_conv(X, jnp.ones((3, 3, 3, 1, 8)), PK)


def test_error_kernel_in_channels():
    with pytest.raises(ValueError, match=r"kernel in_channels \(dim -2\) must equal .* 4 // 2 = 2"):
        ops.conv(X, jnp.ones((3, 3, 4, 4)), groups=2)


def test_error_groups_divide_channels():
    with pytest.raises(ValueError, match="groups must divide the input channels, but 3 does not"):
        ops.conv(X, jnp.ones((3, 3, 1, 6)), groups=3)
    with pytest.raises(ValueError, match="groups must divide the kernel's out_channels"):
        ops.conv(X, jnp.ones((3, 3, 2, 5)), groups=2)
    with pytest.raises(ValueError, match="groups must divide the channels, but 3 does not"):
        ops.channel_shuffle(X, 3)


def test_error_depthwise_kernel_shape():
    with pytest.raises(ValueError, match=r"dim -2 of kernel of shape \(3, 3, 2, 8\) is 2"):
        ops.depthwise_conv(X, jnp.ones((3, 3, 2, 8)))
    with pytest.raises(ValueError, match=r"kernel's last dim must be a positive multiple of .*C=4"):
        ops.depthwise_conv(X, jnp.ones((3, 3, 1, 6)))
    with pytest.raises(ValueError, match=r"depthwise_kernel's last dim"):
        ops.separable_conv(X, jnp.ones((3, 3, 1, 6)), jnp.ones((6, 5)))


def test_error_pointwise_kernel_in_channels():
    with pytest.raises(ValueError, match=r"pointwise_kernel in_channels .* \(8\)"):
        ops.separable_conv(X, DK, jnp.ones((4, 5)))
    with pytest.raises(ValueError, match=r"kernel in_channels .* \(4\)"):
        ops.pointwise_conv(X, jnp.ones((8, 5)))
    with pytest.raises(ValueError, match=r"pointwise_kernel must have shape \(C_in, C_out\)"):
        ops.separable_conv(X, DK, jnp.ones((3, 1, 8, 5)))


@windowed
def test_error_data_format(call):
    with pytest.raises(ValueError, match="data_format must be one of .* but got 'NHCW'"):
        call(data_format="NHCW")
    with pytest.raises(ValueError, match="data_format='NCW' needs x of rank 3"):
        call(data_format="NCW")


@windowed
def test_error_padding_string(call):
    with pytest.raises(ValueError, match="padding must be one of .* but got 'FULL'"):
        call(padding="FULL")


def test_error_causal_is_1d_only():
    with pytest.raises(ValueError, match="padding='CAUSAL' is only defined for 1-D"):
        ops.depthwise_conv(X, DK, padding="CAUSAL")
    with pytest.raises(ValueError, match="padding='CAUSAL' is only defined for 1-D"):
        ops.conv(jnp.ones((1, 3, 3, 3, 2)), jnp.ones((2, 2, 2, 2, 2)), padding="CAUSAL")


@windowed
@pytest.mark.parametrize("name", ["strides", "dilation"])
def test_error_non_positive_strides_dilation(call, name):
    with pytest.raises(ValueError, match=f"{name} must be >= 1, but got 0"):
        call(**{name: 0})
    with pytest.raises(ValueError, match=f"{name} must be >= 1, but got -1"):
        call(**{name: (1, -1)})


def test_error_non_positive_groups():
    with pytest.raises(ValueError, match="groups must be >= 1, but got 0"):
        ops.conv(X, jnp.ones((3, 3, 4, 5)), groups=0)
    with pytest.raises(ValueError, match="groups must be >= 1, but got -2"):
        ops.grouped_conv(X, jnp.ones((3, 3, 4, 5)), -2)
    with pytest.raises(ValueError, match="groups must be >= 1, but got 0"):
        ops.channel_shuffle(X, 0)


@windowed
def test_error_window_larger_than_padded_input(call):
    with pytest.raises(ValueError, match=r"dilated window \(7\) must fit .* padding='VALID'"):
        call(padding="VALID", dilation=3)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64])
def test_error_dtype(dtype):
    name = jnp.dtype(dtype).name
    with pytest.raises(TypeError, match=f"x must have a floating dtype .* but got {name}"):
        ops.conv(X.astype(dtype), jnp.ones((3, 3, 4, 5)))
    with pytest.raises(TypeError, match="kernel must have a floating dtype"):
        ops.depthwise_conv(X, DK.astype(dtype))
    with pytest.raises(TypeError, match="pointwise_kernel must have a floating dtype"):
        ops.separable_conv(X, DK, PK.astype(dtype))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        ops.pointwise_conv(X.astype(dtype), jnp.ones((4, 5)))


@windowed
def test_error_padding_mode(call):
    with pytest.raises(ValueError, match="padding_mode must be one of .* but got 'mirror'"):
        call(padding_mode="mirror")


def test_error_impl():
    with pytest.raises(ValueError, match="depthwise_conv: impl must be one of .* but got 'cuda'"):
        ops.depthwise_conv(X, DK, impl="cuda")
    with pytest.raises(ValueError, match="depthwise_conv: impl must be one of .* but got 'split'"):
        ops.depthwise_conv(X, DK, impl="split")  # a grouped_conv lowering only
    with pytest.raises(
        ValueError, match=r"grouped_conv: impl must be one of \('auto', 'xla', 'split', 'taps'\), "
        "but got 'cuda'"
    ):
        ops.grouped_conv(X, jnp.ones((3, 3, 2, 6)), 2, impl="cuda")
    with pytest.raises(ValueError, match="separable_conv: impl must be one of .* but got 'cuda'"):
        ops.separable_conv(X, DK, PK, impl="cuda")
    with pytest.raises(
        ValueError, match=r"conv: impl must be one of \('auto', 'xla', 'patches'\), but got 'taps'"
    ):
        ops.conv(X, jnp.ones((3, 3, 4, 5)), impl="taps")
    with pytest.raises(ValueError, match=r"conv: impl='patches' computes dense .* groups=2"):
        ops.conv(X, jnp.ones((3, 3, 2, 6)), groups=2, impl="patches")


@windowed
@pytest.mark.parametrize("mode, limit", [("reflect", 5), ("circular", 6)])
def test_error_padding_larger_than_input(call, mode, limit):
    call(padding=limit, padding_mode=mode)  # the largest allowed
    with pytest.raises(ValueError, match=f"padding_mode='{mode}' needs padding <= {limit}"):
        call(padding=((0, 0), (limit + 1, 0)), padding_mode=mode)
