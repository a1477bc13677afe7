"""Sanity of the oracle itself (jaxsep.reference): results small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsep import _validation, reference as ref

# x = 1..5 (one batch, one channel) with the taps [1, 0, -1]: out[i] = xp[i] - xp[i + 2] on the
# padded input xp (a cross-correlation, as in lax: the kernel is not flipped).
X5 = np.arange(1.0, 6.0).reshape(1, 5, 1)
DIFF = np.array([1.0, 0.0, -1.0]).reshape(3, 1, 1)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(padding="VALID"), [-2, -2, -2]),
        (dict(padding="SAME"), [-2, -2, -2, -2, 4]),  # xp = 0 1 2 3 4 5 0
        (dict(padding="CAUSAL"), [-1, -2, -2, -2, -2]),  # xp = 0 0 1 2 3 4 5
        (dict(padding=[(0, 2)]), [-2, -2, -2, 4, 5]),  # xp = 1 2 3 4 5 0 0
        (dict(padding=1, padding_mode="reflect"), [0, -2, -2, -2, 0]),  # xp = 2 1 2 3 4 5 4
        (dict(padding=1, padding_mode="replicate"), [-1, -2, -2, -2, -1]),  # 1 1 2 3 4 5 5
        (dict(padding=1, padding_mode="circular"), [3, -2, -2, -2, 3]),  # 5 1 2 3 4 5 1
        (dict(padding="SAME", strides=2), [-2, -2, 4]),  # xp positions 0, 2, 4
        (dict(padding="VALID", dilation=2), [-4]),  # x[0] - x[4]
        (dict(padding="CAUSAL", dilation=2, strides=2), [-1, -3, -4]),  # 0 0 0 0 1 2 3 4 5
    ],
)
def test_1d_by_hand(kwargs, expected):
    for fn in (ref.conv, ref.depthwise_conv):
        np.testing.assert_array_equal(fn(X5, DIFF, **kwargs)[0, :, 0], expected)


def test_same_and_same_lower_put_the_odd_pixel_at_opposite_ends():
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
    k = np.array([1.0, 10.0]).reshape(2, 1, 1)
    np.testing.assert_array_equal(ref.conv(x, k, padding="SAME")[0, :, 0], [21, 32, 3])
    np.testing.assert_array_equal(ref.conv(x, k, padding="SAME_LOWER")[0, :, 0], [10, 21, 32])


@pytest.mark.parametrize(
    "padding, spatial, window, strides, dilation, expected",
    [
        ("SAME", (5,), (3,), (1,), (1,), [(1, 1)]),
        ("SAME", (6,), (4,), (1,), (1,), [(1, 2)]),
        ("SAME_LOWER", (6,), (4,), (1,), (1,), [(2, 1)]),
        ("SAME", (7, 8), (3, 1), (2, 3), (2, 1), [(2, 2), (0, 0)]),
        ("SAME", (4,), (1,), (3,), (1,), [(0, 0)]),  # never negative
        ("VALID", (7, 8), (3, 3), (1, 1), (1, 1), [(0, 0), (0, 0)]),
        ("CAUSAL", (9,), (3,), (2,), (3,), [(6, 0)]),
        (2, (7, 8), (3, 3), (1, 1), (1, 1), [(2, 2), (2, 2)]),
        ((1, 0), (7, 8), (3, 3), (1, 1), (1, 1), [(1, 1), (0, 0)]),
        ([(0, 3), (2, 1)], (7, 8), (3, 3), (1, 1), (1, 1), [(0, 3), (2, 1)]),
    ],
)
def test_resolve_padding(padding, spatial, window, strides, dilation, expected):
    assert ref.resolve_padding(padding, spatial, window, strides, dilation) == expected


def test_resolve_padding_agrees_with_validation():
    """The oracle's padding and the ops' padding are written apart; they must agree."""
    for name in ("SAME", "SAME_LOWER", "VALID"):
        for size in range(4, 9):
            for k in (1, 2, 3, 4):
                for s in (1, 2, 3):
                    for d in (1, 2):
                        if name == "VALID" and d * (k - 1) + 1 > size:
                            continue
                        args = ((size,), (k,), (s,), (d,))
                        ours = ref.resolve_padding(name, *args)
                        theirs = _validation.resolve_padding("t", name, *args)
                        assert tuple(map(tuple, ours)) == theirs, (name, args)


def test_all_ones_counts_in_bounds_pixels():
    # 4x5 input, 3x3 window, SAME: per-dim counts [2, 3, 3, 2] and [2, 3, 3, 3, 2].
    counts = np.outer([2, 3, 3, 2], [2, 3, 3, 3, 2])
    x = np.ones((2, 4, 5, 6))
    out = ref.conv(x, np.ones((3, 3, 2, 6)), groups=3)  # each output sums C / G = 2 channels
    np.testing.assert_array_equal(out, np.broadcast_to((2 * counts)[None, ..., None], out.shape))
    out = ref.depthwise_conv(x, np.ones((3, 3, 1, 12)))
    np.testing.assert_array_equal(out, np.broadcast_to(counts[None, ..., None], out.shape))


def test_groups_do_not_mix():
    """An impulse in channel c reaches only the outputs of c's group, as the kernel's taps."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 6))  # C = 6, G = 3: 2 channels in, 2 out per group
    for c in range(6):
        x = np.zeros((1, 5, 5, 6))
        x[0, 2, 2, c] = 1.0
        out = ref.conv(x, kernel, groups=3, padding="VALID")  # 3x3: out[i, j] = k[2 - i, 2 - j]
        group = slice(2 * (c // 2), 2 * (c // 2) + 2)
        expected = np.zeros((3, 3, 6))
        expected[..., group] = kernel[::-1, ::-1, c % 2, group]
        np.testing.assert_array_equal(out[0], expected)


def test_depthwise_channel_order():
    """Output channel c * M + m reads input channel c with kernel[..., 0, c * M + m]."""
    channels = 3  # M = 2
    x = np.zeros((1, 1, channels))
    x[0, 0] = [1.0, 10.0, 100.0]
    kernel = np.arange(1.0, 7.0).reshape(1, 1, 6)
    out = ref.depthwise_conv(x, kernel, padding="VALID")
    np.testing.assert_array_equal(out[0, 0], [1, 2, 30, 40, 500, 600])
    np.testing.assert_array_equal(out, ref.conv(x, kernel, groups=channels, padding="VALID"))


def test_depthwise_equals_conv_with_groups_c():
    rng = np.random.default_rng(1)
    x, k = rng.standard_normal((2, 6, 5, 3)), rng.standard_normal((3, 2, 1, 6))
    kw = dict(strides=(2, 1), dilation=(1, 2), padding="SAME_LOWER", padding_mode="reflect")
    np.testing.assert_allclose(ref.depthwise_conv(x, k, **kw), ref.conv(x, k, groups=3, **kw))


def test_pointwise_and_separable():
    rng = np.random.default_rng(2)
    x, pk = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((5, 7))
    want = np.einsum("nhwc,co->nhwo", x, pk)
    np.testing.assert_allclose(ref.pointwise_conv(x, pk), want)
    np.testing.assert_allclose(ref.pointwise_conv(x, pk[None, None]), want)
    dk = rng.standard_normal((3, 3, 1, 5))
    np.testing.assert_allclose(
        ref.separable_conv(x, dk, pk),
        ref.pointwise_conv(ref.depthwise_conv(x, dk), pk),
    )


def test_channel_shuffle_permutation():
    x = np.arange(6).reshape(1, 1, 6)
    np.testing.assert_array_equal(ref.channel_shuffle(x, 2)[0, 0], [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(ref.channel_shuffle(x, 3)[0, 0], [0, 2, 4, 1, 3, 5])
    xt = np.arange(6).reshape(1, 6, 1)
    np.testing.assert_array_equal(
        ref.channel_shuffle(xt, 3, data_format="NCW")[0, :, 0], [0, 2, 4, 1, 3, 5]
    )


def test_channels_first_is_transposed_channels_last():
    rng = np.random.default_rng(3)
    x, k = rng.standard_normal((2, 3, 4, 5, 4)), rng.standard_normal((2, 3, 2, 2, 6))
    last = ref.conv(x, k, groups=2, strides=(1, 2, 1))
    first = ref.conv(np.moveaxis(x, -1, 1), k, groups=2, strides=(1, 2, 1), data_format="NCDHW")
    np.testing.assert_array_equal(first, np.moveaxis(last, -1, 1))


def test_returns_float64():
    x = np.ones((1, 4, 2), np.float16)
    assert ref.conv(x, np.ones((2, 2, 3), np.float32)).dtype == np.float64
    assert ref.depthwise_conv(x, np.ones((2, 1, 2), np.float32)).dtype == np.float64
