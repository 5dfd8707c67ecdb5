"""Layers shared by the models: BatchNorm whose batch statistics count only valid pixels, and two forms
XLA:CPU runs fast of what flax computes: the decoders' 2x2 stride-2 transposed convolution as a matmul
(`UpConv2x2`), and 3x3 convolutions whose kernel gradient is taken as matmuls (`conv_general_dilated`,
passed to `nn.Conv`)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
from flax.linen import dtypes
from flax.linen.linear import default_kernel_init
import jax
import jax.numpy as jnp
from jax import lax


def downsample_mask(mask: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """A (N, H, W, 1) 0/1 mask brought to (N, h, w, 1) with h = H / k: a coarse cell counts when any pixel
  of its k x k footprint is valid (it then carries signal from valid input)."""
  factor = mask.shape[1] // shape[0]
  if factor == 1:
    return mask
  return nn.max_pool(mask, (factor, factor), strides=(factor, factor))


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` (same variables: params scale/bias, batch_stats mean/var, same defaults and
  update rule) whose training statistics are taken over the pixels where `mask` is 1 only.

  Why not flax's own `mask=`: under `axis_name` it averages per-device masked means with `pmean`, which is
  wrong when devices hold different numbers of valid pixels and NaN on a device that holds none (the
  padding of an epoch's last batch). Here the masked sums and counts are summed over devices first, so
  the statistics are exactly those of the valid pixels of the global batch: padding examples and nodata
  pixels change neither the normalisation nor the running averages.
  """
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Normalises `x` (N, H, W, C). `mask`: (N, H0, W0, 1) 0/1 at the input's resolution or a multiple of
    it (reduced with `downsample_mask`); None counts every pixel."""
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
    scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(jnp.float32)  # statistics in float32 even for bfloat16 compute, as flax does
      if mask is None:
        weight = jnp.ones((*x.shape[:-1], 1), jnp.float32)
      else:
        weight = downsample_mask(mask.astype(jnp.float32), x.shape[1:3])
      count = jnp.sum(weight)
      first = jnp.sum(xf * weight, axis=(0, 1, 2))
      second = jnp.sum(xf * xf * weight, axis=(0, 1, 2))
      if self.axis_name is not None and not self.is_initializing():
        # One collective per BatchNorm: count, sum and sum of squares travel together.
        packed = lax.psum(jnp.concatenate([count[None], first, second]), self.axis_name)
        count, first, second = packed[0], packed[1:1 + features], packed[1 + features:]
      safe = jnp.maximum(count, 1.0)
      mean = first / safe
      # E[x^2] - E[x]^2, as flax's default (use_fast_variance), clipped at 0 against round-off.
      var = jnp.maximum(second / safe - mean * mean, 0.0)
      if not self.is_initializing():
        # A step whose batch holds no valid pixel leaves the running statistics as they are.
        seen = count > 0
        ra_mean.value = jnp.where(seen, self.momentum * ra_mean.value + (1 - self.momentum) * mean,
                                  ra_mean.value)
        ra_var.value = jnp.where(seen, self.momentum * ra_var.value + (1 - self.momentum) * var,
                                 ra_var.value)
    y = (x.astype(jnp.float32) - mean) * lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype or x.dtype)


# How `UpConv2x2` computes on each backend when `impl="auto"`. XLA:CPU lowers `lax.conv_transpose` with
# stride 2 to a slow generic convolution (jax issue #23783): 15-44x slower than the matmul form for one
# decoder layer, 1.4-1.75x on the whole U-Net and ResU-Net train steps (benchmarks/RESULTS.md). Elsewhere
# the transposed convolution stays as it was, since the matmul form has not been measured on an
# accelerator (GPU/TPU libraries have fast transposed convolutions of their own).
UPCONV_IMPL_BY_BACKEND = {"cpu": "matmul"}
UPCONV_IMPLS = ("matmul", "conv")


def up_conv_2x2_matmul(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """`lax.conv_transpose(x, kernel, (2, 2), 'SAME')` (x (N, H, W, C), kernel (2, 2, C, F) HWIO, not
  transposed) as one matmul.

  With stride equal to the kernel size every output pixel receives exactly one kernel tap: output pixel
  (2i + a, 2j + b) is x[i, j] @ kernel[1 - a, 1 - b] (lax.conv_transpose without `transpose_kernel`
  correlates the stride-dilated input, so the taps land mirrored). That is a 1x1 conv to 4F channels,
  then depth-to-space.
  """
  n, h, w, c = x.shape
  f = kernel.shape[-1]
  # (C, 4F) with the taps mirrored, ordered (a, b, f). A plain 2-D matmul followed by an explicit
  # transpose ran 15-40% faster on XLA:CPU than one einsum straight to (n, h, a, w, b, f).
  matrix = jnp.transpose(kernel[::-1, ::-1], (2, 0, 1, 3)).reshape(c, 4 * f)
  y = jnp.dot(x.reshape(n * h * w, c), matrix, precision=precision).reshape(n, h, w, 2, 2, f)
  return jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(n, 2 * h, 2 * w, f)


class UpConv2x2(nn.Module):
  """`nn.ConvTranspose(features, (2, 2), strides=(2, 2))` (padding 'SAME', flax's default): the same
  function, parameters (`kernel` (2, 2, C, F) lecun-normal, `bias` (F,) zeros, created in that order)
  and dtype promotion, so checkpoints of either load into the other. Output (..., 2H, 2W, F).

  `impl`: "matmul" (`up_conv_2x2_matmul`), "conv" (`lax.conv_transpose`, what flax runs) or "auto",
  chosen at trace time from `jax.default_backend()` by `UPCONV_IMPL_BY_BACKEND` (matmul on CPU). Both
  compute the same function up to float round-off (the sum over C runs in another order).

  Give it `name="ConvTranspose_<i>"` where it replaces an auto-named `nn.ConvTranspose`, so the
  parameter tree keeps its paths.
  """
  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = default_kernel_init  # nn.ConvTranspose's (lecun normal)
  bias_init: Any = nn.initializers.zeros_init()
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Upsamples `x` (..., H, W, C) by 2 in H and W."""
    impl = UPCONV_IMPL_BY_BACKEND.get(jax.default_backend(), "conv") if self.impl == "auto" else self.impl
    if impl not in UPCONV_IMPLS:
      raise ValueError(f"UpConv2x2 impl {self.impl!r}; valid: 'auto', "
                       f"{', '.join(map(repr, UPCONV_IMPLS))}")
    kernel = self.param("kernel", self.kernel_init, (2, 2, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    # One leading batch axis, as flax's ConvTranspose: unbatched (H, W, C) and (B1, B2, H, W, C) work too.
    lead = x.shape[:-3]
    x = x.reshape((-1, *x.shape[-3:]))
    if impl == "matmul":
      y = up_conv_2x2_matmul(x, kernel, self.precision)
    else:
      y = lax.conv_transpose(x, kernel, (2, 2), "SAME", precision=self.precision)
    y = y + bias
    return y.reshape((*lead, *y.shape[1:]))


# Input channels from which `conv_general_dilated` computes a convolution's kernel gradient as matmuls,
# per backend. XLA lowers a kernel gradient to a convolution whose window is the whole feature map:
# XLA:CPU runs it 1.2-6x slower than one matmul per kernel tap for most layers of both models, but up to
# 1.35x faster for some of U-Net's shallow 32-channel ones. Of the thresholds 1, 64, 128 and 256, 64 gave
# the fastest whole train step in 5 of 6 configurations (benchmarks/kernel_grad_bench.py, RESULTS.md).
# Other backends: not measured (no accelerator was lent), so they keep XLA's gradient.
KERNEL_GRAD_MATMUL_MIN_CHANNELS = {"cpu": 64}
_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, strides, pads, precision):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC, precision=precision)


def kernel_grad_matmul(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...],
                       strides: tuple[int, int], pads: tuple[tuple[int, int], ...],
                       precision: Any = None) -> jax.Array:
  """The gradient w.r.t. the kernel (kh, kw, C, F) of `_conv(x, kernel, strides, pads)` at output
  gradient `dy`, as one (C, N*h*w) x (N*h*w, F) matmul per kernel tap: tap (i, j) sees the input pixels
  at (s*p + i, s*q + j) of the padded input, for every output pixel (p, q)."""
  kh, kw, c, f = kernel_shape
  (pt, pb), (pl, pr) = pads
  _, oh, ow, _ = dy.shape
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  g = dy.reshape(-1, f)
  taps = [jnp.dot(xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :].reshape(-1, c).T, g,
                  precision=precision) for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_kernel_grad(x, kernel, strides, pads, precision):
  return _conv(x, kernel, strides, pads, precision)


def _conv_matmul_kernel_grad_fwd(x, kernel, strides, pads, precision):
  return _conv(x, kernel, strides, pads, precision), (x, kernel)


def _conv_matmul_kernel_grad_bwd(strides, pads, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda lhs: _conv(lhs, kernel, strides, pads, precision), x)
  dk = kernel_grad_matmul(x, dy, kernel.shape, strides, pads, precision)
  return input_vjp(dy)[0], dk.astype(kernel.dtype)


_conv_matmul_kernel_grad.defvjp(_conv_matmul_kernel_grad_fwd, _conv_matmul_kernel_grad_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` for `nn.Conv(..., conv_general_dilated=conv_general_dilated)`: the same
  forward computation and input gradient, and for layers with at least
  `KERNEL_GRAD_MATMUL_MIN_CHANNELS[backend]` input channels the kernel gradient as matmuls
  (`kernel_grad_matmul`; equal up to float round-off: the sum over pixels runs in another order). The
  module, its parameters and checkpoints are those of a plain `nn.Conv`."""
  plain = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                            lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                            precision=precision, **kwargs)
  min_channels = KERNEL_GRAD_MATMUL_MIN_CHANNELS.get(jax.default_backend())
  simple = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs and dimension_numbers is not None
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
            and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))))
  if min_channels is None or not simple or rhs.shape[2] < min_channels:
    return plain(lhs, rhs)
  strides = tuple(int(s) for s in window_strides)
  pads = (tuple(lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding))
          if isinstance(padding, str) else tuple(padding))
  return _conv_matmul_kernel_grad(lhs, rhs, strides, tuple(tuple(int(v) for v in p) for p in pads),
                                  precision)
