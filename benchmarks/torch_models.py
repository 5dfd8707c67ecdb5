"""PyTorch twins of landslide_jax's U-Net and ResU-Net, for speed comparisons only (not used by the
product). Same layers, same parameter counts (the benchmark asserts it), channels-last inputs."""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(cin: int, cout: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UNet(nn.Module):
  """Paper Table 2: 32-64-128-256 encoder, 512 bottleneck, transposed-conv decoder, 1x1 head."""

  def __init__(self, in_channels: int = 5, features=(32, 64, 128, 256), bottleneck: int = 512):
    super().__init__()
    self.down = nn.ModuleList()
    cin = in_channels
    for f in features:
      self.down.append(_double_conv(cin, f))
      cin = f
    self.bottleneck = _double_conv(cin, bottleneck)
    self.up = nn.ModuleList()
    self.dec = nn.ModuleList()
    cin = bottleneck
    for f in reversed(features):
      self.up.append(nn.ConvTranspose2d(cin, f, 2, stride=2))
      self.dec.append(_double_conv(2 * f, f))
      cin = f
    self.head = nn.Conv2d(cin, 1, 1)

  def forward(self, x):
    skips = []
    for block in self.down:
      x = block(x)
      skips.append(x)
      x = nn.functional.max_pool2d(x, 2)
    x = self.bottleneck(x)
    for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
      x = dec(torch.cat([up(x), skip], dim=1))
    return self.head(x)


class ResidualUnit(nn.Module):
  """BN -> ReLU -> conv(stride) -> BN -> ReLU -> conv, plus a 1x1 conv + BN projection shortcut."""

  def __init__(self, cin: int, cout: int, stride: int = 1, first: bool = False):
    super().__init__()
    self.first = first
    self.bn_in = None if first else nn.BatchNorm2d(cin, momentum=0.1, eps=1e-5)
    self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
    self.bn_mid = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
    self.proj = nn.Conv2d(cin, cout, 1, stride=stride)
    self.bn_proj = nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5)

  def forward(self, x):
    y = x if self.first else torch.relu(self.bn_in(x))
    y = self.conv1(y)
    y = self.conv2(torch.relu(self.bn_mid(y)))
    return y + self.bn_proj(self.proj(x))


class ResUNet(nn.Module):
  """Zhang et al. 2018 / paper Table 3: 64-128-256 encoder, 512 bridge, 256-128-64 decoder."""

  def __init__(self, in_channels: int = 5, encoder=(64, 128, 256), bridge: int = 512):
    super().__init__()
    self.enc = nn.ModuleList()
    cin = in_channels
    for i, f in enumerate(encoder):
      self.enc.append(ResidualUnit(cin, f, stride=1 if i == 0 else 2, first=i == 0))
      cin = f
    self.bridge = ResidualUnit(cin, bridge, stride=2)
    cin = bridge
    self.up = nn.ModuleList()
    self.dec = nn.ModuleList()
    for f in reversed(encoder):
      self.up.append(nn.ConvTranspose2d(cin, f, 2, stride=2))
      self.dec.append(ResidualUnit(2 * f, f))
      cin = f
    self.head = nn.Conv2d(cin, 1, 1)

  def forward(self, x):
    skips = []
    for unit in self.enc:
      x = unit(x)
      skips.append(x)
    x = self.bridge(x)
    for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
      x = dec(torch.cat([up(x), skip], dim=1))
    return self.head(x)


MODELS = {"unet": UNet, "resunet": ResUNet}


def parameter_count(model: nn.Module) -> int:
  """Trainable parameters (BatchNorm running statistics excluded, as in Flax's `params`)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)
