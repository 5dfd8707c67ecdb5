"""Per-channel normalisation statistics: computed on training windows only, stored with the dataset.

The statistics travel in the dataset metadata; `read_normalization` is the one reader, used by the input
pipeline, evaluation and prediction alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from landslide_jax.errors import InputError

METADATA_FILE = "metadata.json"


@dataclasses.dataclass(frozen=True)
class ChannelStats:
  """Mean and standard deviation per channel, and the pixel count they came from (for pooling)."""
  channels: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  count: int

  def to_json(self) -> dict:
    return {"channels": list(self.channels), "mean": list(self.mean), "std": list(self.std),
            "count": self.count}

  @classmethod
  def from_json(cls, data: dict) -> "ChannelStats":
    return cls(tuple(data["channels"]), tuple(map(float, data["mean"])),
               tuple(map(float, data["std"])), int(data["count"]))

  def apply(self, image: np.ndarray) -> np.ndarray:
    """Normalises a channels-last array (..., C): (x - mean) / std, as float32."""
    mean = np.asarray(self.mean, np.float32)
    std = np.asarray(self.std, np.float32)
    return (image.astype(np.float32) - mean) / std


def channel_stats(windows: np.ndarray, valid: np.ndarray, channels: tuple[str, ...]) -> ChannelStats:
  """Statistics over the valid pixels of a stack of training windows.

  Args:
    windows: (N, C, P, P) channel values.
    valid: (N, P, P) bool.
    channels: channel names, len C.
  """
  pixels = np.moveaxis(windows, 1, -1)[valid.astype(bool)].astype(np.float64)  # (M, C)
  if pixels.shape[0] == 0:
    raise ValueError("no valid training pixel to compute normalisation statistics from")
  mean = pixels.mean(axis=0)
  std = pixels.std(axis=0)
  # A constant channel (e.g. slope of a flat test scene) would divide by zero; leave it unscaled.
  std = np.where(std > 1e-6, std, 1.0)
  return ChannelStats(tuple(channels), tuple(mean.tolist()), tuple(std.tolist()), int(pixels.shape[0]))


def pool_stats(parts: list[ChannelStats]) -> ChannelStats:
  """Exact statistics of the union of several pixel sets (e.g. scenario 'all' = three sites)."""
  channels = parts[0].channels
  for part in parts:
    if part.channels != channels:
      raise ValueError(f"cannot pool statistics of channels {part.channels} and {channels}")
  counts = np.array([p.count for p in parts], np.float64)[:, None]
  means = np.array([p.mean for p in parts])
  second = np.array([p.std for p in parts]) ** 2 + means ** 2
  total = counts.sum()
  mean = (counts * means).sum(0) / total
  std = np.sqrt(np.maximum((counts * second).sum(0) / total - mean ** 2, 0.0))
  return ChannelStats(channels, tuple(mean.tolist()), tuple(std.tolist()), int(total))


def read_metadata(dataset_dir: str | os.PathLike) -> dict:
  """The landslide metadata stored next to a prepared dataset (its `metadata.json`)."""
  path = Path(dataset_dir) / METADATA_FILE
  if not path.is_file():
    raise InputError(dataset_dir, "no prepared dataset here (metadata.json missing)",
                     "build it with python -m launch.prepare")
  return json.loads(path.read_text())


def read_normalization(dataset_dir: str | os.PathLike) -> ChannelStats:
  """The normalisation statistics of a prepared dataset (training windows only)."""
  return ChannelStats.from_json(read_metadata(dataset_dir)["normalization"])
