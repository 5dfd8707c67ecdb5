"""Segmentation models of the paper: U-Net and ResU-Net (Flax Linen), returning one logit per pixel."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from landslide_jax.models.resunet import ResUNet
from landslide_jax.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "resunet": ResUNet}


def create_model(name: str, **kwargs: Any) -> nn.Module:
  """The model called `name` ('unet' or 'resunet')."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
  return MODELS[name](**kwargs)
