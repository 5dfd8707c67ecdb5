"""Layers shared by the models: BatchNorm whose batch statistics count only valid pixels."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
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
