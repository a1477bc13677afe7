"""Slow, obviously-correct NumPy loop versions of every op in :mod:`jaxsep.ops`: the test oracle.

Each function takes the same arguments as its op (same names, keywords and defaults; ``precision``
and ``impl`` are accepted and ignored) and the same shapes (see the legend in ``jaxsep.ops``).
Everything is computed in float64 and returned as float64; tests cast.

The convolutions are the direct sum over output position, window offset and input channel, with
explicit loops over groups (or channels, for the depthwise one). Padding is resolved here, written
apart from ``jaxsep._validation.resolve_padding``, so the two check each other. No ``lax``, no
``np.convolve``; only ``@`` inside one group's channel block, vectorised over the batch.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "channel_shuffle",
    "conv",
    "depthwise_conv",
    "grouped_conv",
    "pointwise_conv",
    "resolve_padding",
    "separable_conv",
]

_CHANNELS_FIRST = ("NCW", "NCHW", "NCDHW")
_NUMPY_PAD_MODE = {
    "zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap",
}


def _channels_last(x, data_format):
    """``x`` as float64 channels-last, and whether to transpose the result back."""
    x = np.asarray(x, dtype=np.float64)
    first = data_format is not None and data_format.upper() in _CHANNELS_FIRST
    return (np.moveaxis(x, 1, -1) if first else x), first


def _restore(out, first):
    return np.moveaxis(out, -1, 1) if first else out


def _per_dim(value, rank):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank


def resolve_padding(padding, spatial, window, strides, dilation):
    """Every padding form -> one ``(low, high)`` pair per spatial dim."""
    rank = len(spatial)
    effective = [d * (k - 1) + 1 for k, d in zip(window, dilation)]
    if isinstance(padding, str):
        name = padding.upper()
        if name == "VALID":
            return [(0, 0)] * rank
        if name == "CAUSAL":
            if rank != 1:
                raise ValueError("CAUSAL padding is 1-D only")
            return [(effective[0] - 1, 0)]
        if name not in ("SAME", "SAME_LOWER"):
            raise ValueError(f"unknown padding {padding!r}")
        pairs = []
        for n, e, s in zip(spatial, effective, strides):
            out = math.ceil(n / s)
            total = max((out - 1) * s + e - n, 0)
            low, high = total // 2, total - total // 2  # the extra pixel at the end
            pairs.append((low, high) if name == "SAME" else (high, low))
        return pairs
    if isinstance(padding, int):
        return [(padding, padding)] * rank
    return [(p, p) if isinstance(p, int) else (p[0], p[1]) for p in padding]


def _pad(x, pairs, padding_mode):
    """Pads the spatial axes of a channels-last ``x`` by ``np.pad``."""
    widths = [(0, 0)] + [tuple(p) for p in pairs] + [(0, 0)]
    return np.pad(x, widths, mode=_NUMPY_PAD_MODE[padding_mode])


def _windows(x, window, strides, padding, dilation, padding_mode):
    """Pads ``x`` (channels-last) and yields ``(output index, window offset, input slice)``.

    Also returns the output spatial shape first. The input slice is ``x[:, position]``, shape
    ``(N, C)``, at ``position = out * stride + offset * dilation`` in the padded input.
    """
    rank = x.ndim - 2
    strides, dilation = _per_dim(strides, rank), _per_dim(dilation, rank)
    pairs = resolve_padding(padding, x.shape[1:-1], window, strides, dilation)
    xp = _pad(x, pairs, padding_mode)
    out_shape = tuple(
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(xp.shape[1:-1], window, strides, dilation)
    )

    def gen():
        for o in itertools.product(*map(range, out_shape)):
            for t in itertools.product(*map(range, window)):
                pos = tuple(oi * s + ti * d for oi, ti, s, d in zip(o, t, strides, dilation))
                yield o, t, xp[(slice(None),) + pos]

    return out_shape, gen()


def conv(x, kernel, *, strides=1, padding="SAME", dilation=1, groups=1, data_format=None,
         padding_mode="zeros", precision=None):
    """``(N, *S, C)`` x ``(*K, C // G, O)`` -> ``(N, *S', O)``; in-group g feeds out-group g."""
    x, first = _channels_last(x, data_format)
    kernel = np.asarray(kernel, dtype=np.float64)
    window, (c_in, c_out) = kernel.shape[:-2], kernel.shape[-2:]
    o_per_group = c_out // groups
    out_shape, windows = _windows(x, window, strides, padding, dilation, padding_mode)
    out = np.zeros((x.shape[0], *out_shape, c_out))
    for o, t, xs in windows:
        for g in range(groups):
            ci = slice(g * c_in, (g + 1) * c_in)
            co = slice(g * o_per_group, (g + 1) * o_per_group)
            out[(slice(None), *o, co)] += xs[:, ci] @ kernel[t][:, co]
    return _restore(out, first)


def grouped_conv(x, kernel, groups, *, strides=1, padding="SAME", dilation=1, data_format=None,
                 padding_mode="zeros", precision=None, impl="auto"):
    """:func:`conv` with ``groups`` given positionally."""
    return conv(x, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups,
                data_format=data_format, padding_mode=padding_mode)


def depthwise_conv(x, kernel, *, strides=1, padding="SAME", dilation=1, data_format=None,
                   padding_mode="zeros", precision=None, impl="auto"):
    """``(N, *S, C)`` x ``(*K, 1, C * M)`` -> ``(N, *S', C * M)``; out ``c*M+m`` reads in ``c``."""
    x, first = _channels_last(x, data_format)
    kernel = np.asarray(kernel, dtype=np.float64)
    window, channels = kernel.shape[:-2], x.shape[-1]
    multiplier = kernel.shape[-1] // channels
    out_shape, windows = _windows(x, window, strides, padding, dilation, padding_mode)
    out = np.zeros((x.shape[0], *out_shape, channels * multiplier))
    for o, t, xs in windows:
        for c in range(channels):
            for m in range(multiplier):
                k = c * multiplier + m
                out[(slice(None), *o, k)] += xs[:, c] * kernel[t][0, k]
    return _restore(out, first)


def pointwise_conv(x, kernel, *, data_format=None, precision=None):
    """``(N, *S, C)`` x ``(C, O)`` or ``(1, ..., 1, C, O)`` -> ``(N, *S, O)``."""
    x, first = _channels_last(x, data_format)
    kernel = np.asarray(kernel, dtype=np.float64)
    kernel = kernel.reshape(kernel.shape[-2:])
    out = np.zeros(x.shape[:-1] + kernel.shape[-1:])
    for c in range(x.shape[-1]):
        out += x[..., c, None] * kernel[c]
    return _restore(out, first)


def separable_conv(x, depthwise_kernel, pointwise_kernel, *, strides=1, padding="SAME",
                   dilation=1, data_format=None, padding_mode="zeros", precision=None,
                   impl="auto"):
    """:func:`depthwise_conv` then :func:`pointwise_conv`."""
    hidden = depthwise_conv(x, depthwise_kernel, strides=strides, padding=padding,
                            dilation=dilation, data_format=data_format, padding_mode=padding_mode)
    return pointwise_conv(hidden, pointwise_kernel, data_format=data_format)


def channel_shuffle(x, groups, *, data_format=None):
    """Output channel ``j * G + g`` is input channel ``g * (C // G) + j``; keeps ``x``'s dtype."""
    x = np.asarray(x)
    first = data_format is not None and data_format.upper() in _CHANNELS_FIRST
    if first:
        x = np.moveaxis(x, 1, -1)
    per_group = x.shape[-1] // groups
    out = np.empty_like(x)
    for j in range(per_group):
        for g in range(groups):
            out[..., j * groups + g] = x[..., g * per_group + j]
    return _restore(out, first)
