"""U-Net as in Ghorbanzadeh et al. 2021, Table 2 (after Ronneberger et al. 2015).

Four encoder blocks (two 3x3 conv + ReLU, then 2x2 max-pool) with 32, 64, 128, 256 filters, a 512-filter
bottleneck, four decoder blocks (2x2 stride-2 transposed conv, concatenation with the encoder output, two
3x3 convs) and a 1x1 conv to one logit: 23 conv layers (18 3x3, 4 transposed, one 1x1). No batch norm, as
in the paper's table. 'SAME' padding keeps the output the size of the input.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from landslide_jax.models.layers import UpConv2x2, conv_general_dilated


class UNet(nn.Module):
  """U-Net returning (N, H, W, 1) logits for (N, H, W, C) inputs; H and W divisible by 16."""
  features: Sequence[int] = (32, 64, 128, 256)
  bottleneck: int = 512
  dtype: Any = jnp.float32

  def _double_conv(self, x, features: int):
    for _ in range(2):
      # layers.conv_general_dilated: flax's conv with a faster kernel gradient on CPU (same parameters).
      x = nn.relu(nn.Conv(features, (3, 3), padding="SAME", dtype=self.dtype,
                          conv_general_dilated=conv_general_dilated)(x))
    return x

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    del train, mask  # no batch norm or dropout: same function in training and evaluation
    skips = []
    for features in self.features:
      x = self._double_conv(x, features)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = self._double_conv(x, self.bottleneck)
    for i, (features, skip) in enumerate(zip(reversed(self.features), reversed(skips))):
      # nn.ConvTranspose(features, (2, 2), strides=(2, 2)) as a matmul on CPU; named as flax named
      # the ConvTranspose it replaces, so the parameter tree and checkpoints are unchanged.
      x = UpConv2x2(features, dtype=self.dtype, name=f"ConvTranspose_{i}")(x)
      x = jnp.concatenate([x, skip], axis=-1)
      x = self._double_conv(x, features)
    x = nn.Conv(1, (1, 1), dtype=self.dtype)(x)
    return x.astype(jnp.float32)
