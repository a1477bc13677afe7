"""Flax NNX modules over the pure ops of :mod:`jaxsep.ops`.

Every module here holds its parameters as ``nnx.Param`` laid out exactly as the op of the same
name expects them, and its ``__call__`` is that op plus an optional bias: no convolution math
of its own. A user can therefore hand ``module.kernel[...]`` to the pure function.

Shape letters are those of :mod:`jaxsep.ops` (N batch, S spatial dims, C in-channels,
M depth multiplier, G groups, O out-channels, K window):

===================  =======================  ==========================
module               parameters               ``x`` -> result
===================  =======================  ==========================
``Conv``             kernel ``(*K, C//G, O)``  ``(N, *S, C) -> (N, *S', O)``
``GroupedConv``      kernel ``(*K, C//G, O)``  ``(N, *S, C) -> (N, *S', O)``
``DepthwiseConv``    kernel ``(*K, 1, C*M)``   ``(N, *S, C) -> (N, *S', C*M)``
``PointwiseConv``    kernel ``(C, O)``         ``(N, *S, C) -> (N, *S, O)``
``SeparableConv``    depthwise_kernel          ``(N, *S, C) -> (N, *S', O)``
                     ``(*K, 1, C*M)``,
                     pointwise_kernel
                     ``(C*M, O)``
``ChannelShuffle``   none                      ``(N, *S, C) -> (N, *S, C)``
===================  =======================  ==========================

Biases are ``(O,)`` (``(C*M,)`` for ``DepthwiseConv``). The pointwise kernel is stored 2-D,
``(C, O)``, the form the op computes with (one matrix product over the channel axis).

The spatial rank is never guessed. Unlike ``nnx.Conv``, where an int ``kernel_size`` means a
1-D kernel and extra leading axes are folded into the batch, a module here takes its rank from
a tuple ``kernel_size`` or from an explicit ``spatial_dims=`` next to an int ``kernel_size``;
it then accepts only inputs of rank ``spatial_dims + 2`` (batch, spatial dims, channels) and
raises ``ValueError`` otherwise. Use ``jax.vmap`` for extra batch axes.

Default initializers follow Flax's ``nnx.Conv`` (and Haiku's convolutions): LeCun normal,
variance ``1 / fan_in``, with ``fan_in`` read from the op's HWIO kernel as
``prod(K) * C // G``. So a depthwise kernel's fan-in is ``prod(K)`` (one input channel per
filter, as PyTorch and Haiku count it), a pointwise kernel's is ``C``. Biases start at zero.

Bad configuration (non-positive sizes, channels not divisible by groups, a padding or
``data_format`` that cannot match the rank, an unknown ``impl``) raises at construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from jaxsep import _validation as v
from jaxsep import ops

__all__ = [
    "ChannelShuffle",
    "Conv",
    "DepthwiseConv",
    "GroupedConv",
    "PointwiseConv",
    "SeparableConv",
]

Initializer = Callable[..., jax.Array]
Dtype = Any

default_kernel_init: Initializer = nnx.initializers.lecun_normal()
default_bias_init: Initializer = nnx.initializers.zeros_init()

# Normalization layers: their scale and bias are not decayed (train.optim) and their
# parameters are reported apart (summary).
NORM_TYPES = (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm, nnx.InstanceNorm)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the modules (argument checks live in jaxsep._validation).


def _set_window(module: nnx.Module, spec: v.WindowSpec) -> None:
    """Stores a module's checked window arguments (:func:`jaxsep._validation.window_spec`)."""
    module.spatial_dims, module.kernel_size = spec.spatial_dims, spec.kernel_size
    module.strides, module.dilation, module.padding = spec.strides, spec.dilation, spec.padding
    module.padding_mode, module.data_format = spec.padding_mode, spec.data_format


def _window_kwargs(module: nnx.Module) -> dict[str, Any]:
    """The keyword arguments of a windowed module's op, as stored by :func:`_set_window`."""
    return dict(
        strides=module.strides,
        padding=module.padding,
        dilation=module.dilation,
        data_format=module.data_format,
        padding_mode=module.padding_mode,
        precision=module.precision,
    )


def _prepare_call(module: nnx.Module, x: jax.Array, *params: jax.Array) -> tuple[bool, tuple]:
    """Checks ``x`` against the module and promotes ``(x, *params, bias)`` to one dtype
    (``module.dtype``, or the promoted one when None); returns channels_last and them."""
    channels_last = _channels_last(module.data_format)
    v.check_module_input(
        type(module).__name__, x, module.spatial_dims, channels_last, module.in_features
    )
    bias = module.bias[...] if module.bias is not None else None
    return channels_last, nnx_dtypes.promote_dtype((x, *params, bias), dtype=module.dtype)


def _add_bias(y: jax.Array, bias: jax.Array | None, channels_last: bool) -> jax.Array:
    if bias is None:
        return y
    shape = [1] * y.ndim
    shape[-1 if channels_last else 1] = bias.shape[0]
    return y + bias.astype(y.dtype).reshape(shape)


def _channels_last(data_format: str | None) -> bool:
    return data_format is None or v.DATA_FORMATS[data_format][1]


def _param(init: Initializer, rngs: nnx.Rngs, shape: tuple[int, ...], dtype: Dtype) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype))


def _bias(use_bias: bool, init: Initializer, rngs: nnx.Rngs, features: int, dtype: Dtype):
    return _param(init, rngs, (features,), dtype) if use_bias else nnx.data(None)


# ---------------------------------------------------------------------------------------------
# Modules.


class Conv(nnx.Module):
    """The standard (dense, or grouped) N-D convolution over :func:`jaxsep.ops.conv`.

    Args:
      in_features: ``C``.
      out_features: ``O``.
      kernel_size: ``K``: a tuple (its length is the spatial rank) or an int together with
        ``spatial_dims``.
      spatial_dims: 1, 2 or 3; required with an int ``kernel_size``.
      groups: ``G``, which must divide ``C`` and ``O``. Kernel ``(*K, C // G, O)``.
      strides, padding, dilation, data_format, padding_mode, precision, impl: as in
        :func:`jaxsep.ops.conv` (``impl`` "auto", "xla" or "patches").
      use_bias: add a ``(O,)`` bias.
      kernel_init, bias_init: initializers (LeCun normal over ``prod(K) * C // G``; zeros).
      dtype: the computation dtype; ``None`` promotes the input and the parameters.
      param_dtype: the parameters' dtype.
      rngs: the ``params`` stream draws the initial parameters.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> layer = Conv(3, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
      >>> layer.kernel.shape
      (3, 3, 3, 8)
      >>> layer(jnp.ones((2, 32, 32, 3))).shape
      (2, 16, 16, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        spatial_dims: int | None = None,
        groups: int = 1,
        strides: int | Sequence[int] = 1,
        padding: ops.Padding = "SAME",
        dilation: int | Sequence[int] = 1,
        data_format: str | None = None,
        padding_mode: str = "zeros",
        use_bias: bool = True,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        impl: ops.ConvImpl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        self.in_features = v.check_int(name, "in_features", in_features)
        self.out_features = v.check_int(name, "out_features", out_features)
        self.groups = v.check_int(name, "groups", groups)
        self.impl = v.check_impl(name, impl, ops.CONV_IMPLS)
        if self.impl == "patches" and self.groups != 1:
            raise ValueError(
                f"{name}: impl='patches' computes dense convolutions only (groups=1), but got "
                f"groups={self.groups}"
            )
        v.check_divides(name, self.groups, f"in_features ({self.in_features})", self.in_features)
        v.check_divides(name, self.groups, f"out_features ({self.out_features})", self.out_features)
        _set_window(self, v.window_spec(
            name, kernel_size, spatial_dims, strides, padding, dilation, data_format, padding_mode
        ))
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        shape = self.kernel_size + (self.in_features // self.groups, self.out_features)
        self.kernel = _param(kernel_init, rngs, shape, param_dtype)
        self.bias = _bias(use_bias, bias_init, rngs, self.out_features, param_dtype)

    def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return ops.conv(x, kernel, groups=self.groups, impl=self.impl, **_window_kwargs(self))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, *S, C) -> (N, *S', O)`` (channels-first per ``data_format``)."""
        channels_last, (x, kernel, bias) = _prepare_call(self, x, self.kernel[...])
        return _add_bias(self._conv(x, kernel), bias, channels_last)


class GroupedConv(Conv):
    """A grouped convolution over :func:`jaxsep.ops.grouped_conv`; ``groups`` is required.

    Takes the arguments of :class:`Conv`, plus ``impl``: the lowering, "auto" (default),
    "xla", "split" or "taps", as in :func:`jaxsep.ops.grouped_conv` (:class:`Conv` itself runs
    ``lax``'s grouped convolution when ``groups > 1``). Kernel ``(*K, C // G, O)``; ``G = 1`` is
    the dense convolution, ``G = C = O`` the depthwise one.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> layer = GroupedConv(12, 24, (1, 1), groups=3, rngs=nnx.Rngs(0))
      >>> layer.kernel.shape
      (1, 1, 4, 24)
      >>> layer(jnp.ones((2, 8, 8, 12))).shape
      (2, 8, 8, 24)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        groups: int,
        impl: ops.GroupedImpl = "auto",
        **kwargs: Any,
    ):
        super().__init__(in_features, out_features, kernel_size, groups=groups, **kwargs)
        self.impl = v.check_impl(type(self).__name__, impl, ops.GROUPED_IMPLS)

    def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return ops.grouped_conv(x, kernel, self.groups, impl=self.impl, **_window_kwargs(self))


class DepthwiseConv(nnx.Module):
    """The depthwise convolution over :func:`jaxsep.ops.depthwise_conv`.

    Args:
      in_features: ``C``.
      kernel_size: ``K``: a tuple, or an int together with ``spatial_dims``.
      spatial_dims: 1, 2 or 3; required with an int ``kernel_size``.
      depth_multiplier: ``M``; the result has ``C * M`` channels (``out_features``).
        Kernel ``(*K, 1, C * M)``; output channel ``c * M + m`` reads input channel ``c``.
      strides, padding, dilation, data_format, padding_mode, precision, impl: as in
        :func:`jaxsep.ops.depthwise_conv`.
      use_bias: add a ``(C * M,)`` bias.
      kernel_init, bias_init: initializers (LeCun normal over ``prod(K)``; zeros).
      dtype, param_dtype, rngs: as in :class:`Conv`.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> layer = DepthwiseConv(8, 3, spatial_dims=2, depth_multiplier=2, rngs=nnx.Rngs(0))
      >>> layer.kernel.shape
      (3, 3, 1, 16)
      >>> layer(jnp.ones((2, 16, 16, 8))).shape
      (2, 16, 16, 16)
    """

    def __init__(
        self,
        in_features: int,
        kernel_size: int | Sequence[int],
        *,
        spatial_dims: int | None = None,
        depth_multiplier: int = 1,
        strides: int | Sequence[int] = 1,
        padding: ops.Padding = "SAME",
        dilation: int | Sequence[int] = 1,
        data_format: str | None = None,
        padding_mode: str = "zeros",
        use_bias: bool = True,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        self.in_features = v.check_int(name, "in_features", in_features)
        self.depth_multiplier = v.check_int(name, "depth_multiplier", depth_multiplier)
        self.out_features = self.in_features * self.depth_multiplier
        _set_window(self, v.window_spec(
            name, kernel_size, spatial_dims, strides, padding, dilation, data_format, padding_mode
        ))
        self.impl = v.check_impl(name, impl)
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        shape = self.kernel_size + (1, self.out_features)
        self.kernel = _param(kernel_init, rngs, shape, param_dtype)
        self.bias = _bias(use_bias, bias_init, rngs, self.out_features, param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, *S, C) -> (N, *S', C * M)`` (channels-first per ``data_format``)."""
        channels_last, (x, kernel, bias) = _prepare_call(self, x, self.kernel[...])
        y = ops.depthwise_conv(x, kernel, impl=self.impl, **_window_kwargs(self))
        return _add_bias(y, bias, channels_last)


class PointwiseConv(nnx.Module):
    """The 1x1 convolution over :func:`jaxsep.ops.pointwise_conv` (a matrix product).

    Args:
      in_features: ``C``.
      out_features: ``O``. Kernel ``(C, O)``, stored 2-D; the op also accepts it as
        ``(1, ..., 1, C, O)``, so ``kernel[...].reshape((1, 1, C, O))`` is the HWIO form.
      spatial_dims: optional; when given, inputs must have exactly this many spatial dims.
        A 1x1 kernel has no window, so without it any rank 3-5 input is accepted.
      data_format, precision: as in :func:`jaxsep.ops.pointwise_conv`.
      use_bias, kernel_init, bias_init, dtype, param_dtype, rngs: as in :class:`Conv`
        (LeCun normal over ``C``).

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> layer = PointwiseConv(8, 16, rngs=nnx.Rngs(0))
      >>> layer.kernel.shape
      (8, 16)
      >>> layer(jnp.ones((2, 4, 4, 8))).shape
      (2, 4, 4, 16)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        spatial_dims: int | None = None,
        data_format: str | None = None,
        use_bias: bool = True,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        self.in_features = v.check_int(name, "in_features", in_features)
        self.out_features = v.check_int(name, "out_features", out_features)
        spatial_dims = v.check_spatial_dims(name, spatial_dims)
        self.data_format = v.check_data_format(name, data_format, spatial_dims)
        if spatial_dims is None and self.data_format is not None:
            spatial_dims = v.DATA_FORMATS[self.data_format][0]
        self.spatial_dims = spatial_dims
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        shape = (self.in_features, self.out_features)
        self.kernel = _param(kernel_init, rngs, shape, param_dtype)
        self.bias = _bias(use_bias, bias_init, rngs, self.out_features, param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, *S, C) -> (N, *S, O)`` (channels-first per ``data_format``)."""
        channels_last, (x, kernel, bias) = _prepare_call(self, x, self.kernel[...])
        y = ops.pointwise_conv(x, kernel, data_format=self.data_format, precision=self.precision)
        return _add_bias(y, bias, channels_last)


class SeparableConv(nnx.Module):
    """The depthwise-separable convolution over :func:`jaxsep.ops.separable_conv`.

    Depthwise ``K`` window then pointwise 1x1, as Keras' ``SeparableConv2D``, with an optional
    normalization and activation between the two steps (MobileNet puts BatchNorm and ReLU
    there). Without them the call is one :func:`jaxsep.ops.separable_conv`; with them it is
    :func:`jaxsep.ops.depthwise_conv`, ``norm``, ``activation``, :func:`jaxsep.ops.pointwise_conv`.

    Args:
      in_features: ``C``.
      out_features: ``O``.
      kernel_size: the depthwise window ``K``: a tuple, or an int together with
        ``spatial_dims``.
      spatial_dims: 1, 2 or 3; required with an int ``kernel_size``.
      depth_multiplier: ``M``. Parameters ``depthwise_kernel`` ``(*K, 1, C * M)`` and
        ``pointwise_kernel`` ``(C * M, O)``.
      strides, padding, dilation, padding_mode, impl: of the depthwise step, as in
        :func:`jaxsep.ops.depthwise_conv`.
      data_format, precision: of both steps.
      use_bias: add a ``(O,)`` bias after the pointwise step (Keras' single bias).
      depthwise_init: LeCun normal over ``prod(K)`` by default.
      pointwise_init: LeCun normal over ``C * M`` by default.
      bias_init: zeros by default.
      norm: ``None``, or a factory called as ``norm(C * M, rngs=rngs)`` returning the
        module applied between the steps, e.g. ``functools.partial(nnx.BatchNorm,
        momentum=0.9)``; it is stored as ``self.norm``.
      activation: ``None`` or a function applied between the steps (after ``norm``).
      dtype, param_dtype, rngs: as in :class:`Conv`.

    Example:
      >>> from flax import nnx
      >>> import jax.numpy as jnp
      >>> layer = SeparableConv(8, 16, (3, 3), strides=2, rngs=nnx.Rngs(0))
      >>> layer.depthwise_kernel.shape, layer.pointwise_kernel.shape
      ((3, 3, 1, 8), (8, 16))
      >>> layer(jnp.ones((2, 16, 16, 8))).shape
      (2, 8, 8, 16)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        spatial_dims: int | None = None,
        depth_multiplier: int = 1,
        strides: int | Sequence[int] = 1,
        padding: ops.Padding = "SAME",
        dilation: int | Sequence[int] = 1,
        data_format: str | None = None,
        padding_mode: str = "zeros",
        use_bias: bool = True,
        depthwise_init: Initializer = default_kernel_init,
        pointwise_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        norm: Callable[..., nnx.Module] | None = None,
        activation: Callable[[jax.Array], jax.Array] | None = None,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: Any = None,
        impl: ops.Impl = "auto",
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        self.in_features = v.check_int(name, "in_features", in_features)
        self.out_features = v.check_int(name, "out_features", out_features)
        self.depth_multiplier = v.check_int(name, "depth_multiplier", depth_multiplier)
        _set_window(self, v.window_spec(
            name, kernel_size, spatial_dims, strides, padding, dilation, data_format, padding_mode
        ))
        self.impl = v.check_impl(name, impl)
        if activation is not None and not callable(activation):
            raise TypeError(f"{name}: activation must be callable or None, but got {activation!r}")
        self.activation = activation
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        hidden = self.in_features * self.depth_multiplier
        self.depthwise_kernel = _param(
            depthwise_init, rngs, self.kernel_size + (1, hidden), param_dtype
        )
        self.pointwise_kernel = _param(
            pointwise_init, rngs, (hidden, self.out_features), param_dtype
        )
        self.bias = _bias(use_bias, bias_init, rngs, self.out_features, param_dtype)
        self.norm = norm(hidden, rngs=rngs) if norm is not None else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, *S, C) -> (N, *S', O)`` (channels-first per ``data_format``)."""
        channels_last, (x, dw, pw, bias) = _prepare_call(
            self, x, self.depthwise_kernel[...], self.pointwise_kernel[...]
        )
        window = dict(_window_kwargs(self), impl=self.impl)
        if self.norm is None and self.activation is None:
            y = ops.separable_conv(x, dw, pw, **window)
        else:
            y = ops.depthwise_conv(x, dw, **window)
            if self.norm is not None:
                y = self.norm(y)
            if self.activation is not None:
                y = self.activation(y)
            y = ops.pointwise_conv(
                y.astype(x.dtype), pw, data_format=self.data_format, precision=self.precision
            )
        return _add_bias(y, bias, channels_last)


class ChannelShuffle(nnx.Module):
    """ShuffleNet's channel shuffle over :func:`jaxsep.ops.channel_shuffle`; no parameters.

    Args:
      groups: ``G``, which must divide the input channels.
      in_features: optional ``C``; when given, checked against ``groups`` at construction
        and against the input at call time.
      data_format: as in :func:`jaxsep.ops.channel_shuffle`.

    Example:
      >>> import jax.numpy as jnp
      >>> ChannelShuffle(2)(jnp.arange(4.0).reshape(1, 1, 4))
      Array([[[0., 2., 1., 3.]]], dtype=float32)
    """

    def __init__(
        self, groups: int, *, in_features: int | None = None, data_format: str | None = None
    ):
        name = type(self).__name__
        self.groups = v.check_int(name, "groups", groups)
        if in_features is not None:
            in_features = v.check_int(name, "in_features", in_features)
            v.check_divides(name, self.groups, f"in_features ({in_features})", in_features)
        self.in_features = in_features
        self.data_format = v.check_data_format(name, data_format)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(N, *S, C) -> (N, *S, C)``, channels permuted."""
        if self.in_features is not None:
            rank = v.DATA_FORMATS[self.data_format][0] if self.data_format else None
            v.check_module_input(
                type(self).__name__, x, rank, _channels_last(self.data_format), self.in_features
            )
        return ops.channel_shuffle(x, self.groups, data_format=self.data_format)
