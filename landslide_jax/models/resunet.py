"""ResU-Net (Zhang, Liu & Wang 2018, IEEE GRSL), as used in Ghorbanzadeh et al. 2021, Table 3.

Pre-activation residual units (BN -> ReLU -> 3x3 conv, twice), 64-128-256 encoder, 512 bridge, 256-128-64
decoder and a 1x1 head: 15 main-path conv layers. Downsampling is the first conv of a unit with stride 2
(no pooling); each shortcut is a 1x1 conv + BN projection. Each decoder unit is preceded by a 2x2 stride-2
transposed conv and concatenation with the matching encoder output. The head returns logits; the sigmoid
is part of the loss (numerically stable) and of prediction.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from landslide_jax.models.layers import BatchNorm, UpConv2x2, conv_general_dilated


class ResidualUnit(nn.Module):
  """BN -> ReLU -> conv(stride) -> BN -> ReLU -> conv, plus a 1x1 conv + BN projection shortcut.

  `first=True` is the network's first unit, which starts with the conv (no BN/ReLU on the raw input).
  """
  features: int
  strides: int = 1
  first: bool = False
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, mask: jax.Array | None = None):
    # BatchNorm statistics are summed over devices under pmap (axis_name), so a model trained on N
    # devices sees the same statistics as on one device with the same global batch; `mask` keeps
    # padding examples and nodata pixels out of them.
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, axis_name=self.axis_name, dtype=self.dtype)
    # layers.conv_general_dilated: flax's conv with a faster kernel gradient on CPU (same parameters).
    conv = functools.partial(nn.Conv, self.features, (3, 3), padding="SAME", dtype=self.dtype,
                             conv_general_dilated=conv_general_dilated)
    y = x if self.first else nn.relu(norm()(x, mask))
    y = conv(strides=(self.strides, self.strides))(y)
    y = conv()(nn.relu(norm()(y, mask)))
    shortcut = nn.Conv(self.features, (1, 1), strides=(self.strides, self.strides),
                       dtype=self.dtype)(x)
    return y + norm()(shortcut, mask)


class ResUNet(nn.Module):
  """ResU-Net returning (N, H, W, 1) logits for (N, H, W, C) inputs; H and W divisible by 8."""
  encoder: Sequence[int] = (64, 128, 256)
  bridge: int = 512
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, mask: jax.Array | None = None):
    """Logits of `x`. `mask` (N, H, W, 1), 0/1: the pixels BatchNorm takes training statistics over
    (valid pixels of real examples); None counts every pixel."""
    unit = functools.partial(ResidualUnit, axis_name=self.axis_name, dtype=self.dtype)
    skips = []
    for i, features in enumerate(self.encoder):
      x = unit(features, strides=1 if i == 0 else 2, first=i == 0)(x, train, mask)
      skips.append(x)
    x = unit(self.bridge, strides=2)(x, train, mask)
    for i, (features, skip) in enumerate(zip(reversed(self.encoder), reversed(skips))):
      # nn.ConvTranspose(features, (2, 2), strides=(2, 2)) as a matmul on CPU; named as flax named
      # the ConvTranspose it replaces, so the parameter tree and checkpoints are unchanged.
      x = UpConv2x2(features, dtype=self.dtype, name=f"ConvTranspose_{i}")(x)
      x = jnp.concatenate([x, skip], axis=-1)
      x = unit(features)(x, train, mask)
    x = nn.Conv(1, (1, 1), dtype=self.dtype)(x)
    return x.astype(jnp.float32)
