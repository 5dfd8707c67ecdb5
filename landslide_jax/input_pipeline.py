"""Input pipeline: prepared TFDS datasets -> normalised numpy arrays -> per-device batches.

The paper's datasets are small (the three sites are ~8 million pixels), so each split is read once through
`tfds` data sources (no TensorFlow) into host memory and batched with numpy. Batch order depends only on
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from landslide_jax import constants
from landslide_jax.data import normalization

SCENARIOS: dict[str, tuple[str, ...]] = {
    "all": constants.SITE_NAMES,
    **{site: (site,) for site in constants.SITE_NAMES},
    "landslide4sense": ("landslide4sense",),
}


def test_sets(scenario: str) -> tuple[str, ...]:
  """Test sets a scenario is scored on: every site's test area and all of them ('all')."""
  if scenario == "landslide4sense":
    return ("landslide4sense",)
  return constants.SITE_NAMES + ("all",)


@dataclasses.dataclass
class SplitData:
  """One split in memory. image (N, P, P, C) float32; mask, valid (N, P, P, 1) uint8; row, col (N,)."""
  image: np.ndarray
  mask: np.ndarray
  valid: np.ndarray
  row: np.ndarray
  col: np.ndarray
  site: np.ndarray  # (N,) str

  def __len__(self) -> int:
    return int(self.image.shape[0])

  @classmethod
  def concatenate(cls, parts: list["SplitData"]) -> "SplitData":
    return cls(*(np.concatenate([getattr(p, f.name) for p in parts])
                 for f in dataclasses.fields(cls)))

  def normalized(self, stats: normalization.ChannelStats) -> "SplitData":
    """A copy with images normalised; invalid pixels are 0 (the training mean), not raw nodata."""
    image = stats.apply(self.image) * self.valid.astype(np.float32)
    return dataclasses.replace(self, image=image)


def dataset_builder(name: str, patch: int, channels: tuple[str, ...], data_dir: str | os.PathLike):
  """The TFDS builder of a prepared dataset (site or 'landslide4sense') with default options."""
  import tfds_builders  # pylint: disable=import-outside-toplevel
  return tfds_builders.get_builder(name, tfds_builders.config_for(name, patch, channels), data_dir)


def read_split(name: str, patch: int, split: str, channels: tuple[str, ...],
               data_dir: str | os.PathLike) -> SplitData:
  """Reads a whole split of a prepared dataset into memory (raw physical units)."""
  source = dataset_builder(name, patch, channels, data_dir).as_data_source(split=split)
  records = source.__getitems__(list(range(len(source)))) if len(source) else []
  if not records:
    p, c = patch, len(channels)
    return SplitData(np.zeros((0, p, p, c), np.float32), np.zeros((0, p, p, 1), np.uint8),
                     np.zeros((0, p, p, 1), np.uint8), np.zeros(0, np.int32), np.zeros(0, np.int32),
                     np.zeros(0, str))
  # TFDS stores examples in hashed-key order; sort by position so the order is the grid's.
  records.sort(key=lambda r: (int(r["row"]), int(r["col"])))
  site = [r["site"].decode() if isinstance(r["site"], bytes) else str(r["site"]) for r in records]
  return SplitData(
      image=np.stack([r["image"] for r in records]).astype(np.float32),
      mask=np.stack([r["mask"] for r in records]).astype(np.uint8),
      valid=np.stack([r["valid"] for r in records]).astype(np.uint8),
      row=np.array([r["row"] for r in records], np.int32),
      col=np.array([r["col"] for r in records], np.int32),
      site=np.array(site))


def dataset_dir(name: str, patch: int, channels: tuple[str, ...], data_dir: str | os.PathLike) -> Path:
  """Folder of a prepared dataset (holds metadata.json)."""
  return Path(dataset_builder(name, patch, channels, data_dir).data_path)


def scenario_normalization(scenario: str, patch: int, channels: tuple[str, ...],
                           data_dir: str | os.PathLike) -> normalization.ChannelStats:
  """Training-window statistics of a scenario: pooled exactly over its sites' training areas."""
  return normalization.pool_stats([
      normalization.read_normalization(dataset_dir(site, patch, channels, data_dir))
      for site in SCENARIOS[scenario]])


def area_pixels(test_set: str, split: str, patch: int, channels: tuple[str, ...],
                data_dir: str | os.PathLike) -> int:
  """Valid pixels of a split's area (a site, or every site for 'all'), from the datasets' metadata: what
  a score over the whole area must have counted."""
  sites = constants.SITE_NAMES if test_set == "all" else (test_set,)
  return sum(int(normalization.read_metadata(dataset_dir(site, patch, channels, data_dir))
                 ["areas"][split]["valid_pixels"]) for site in sites)


def pixel_areas_m2(test_set: str, patch: int, channels: tuple[str, ...],
                   data_dir: str | os.PathLike) -> dict[str, float]:
  """Area of one pixel (m^2) of each site of a test set, from the datasets' grids (Landslide4Sense
  has none: its 10 m)."""
  from landslide_jax.data import raster_io  # pylint: disable=import-outside-toplevel  (rasterio)
  sites = constants.SITE_NAMES if test_set == "all" else (test_set,)
  areas = {}
  for site in sites:
    grid = normalization.read_metadata(dataset_dir(site, patch, channels, data_dir)).get("grid")
    if grid is None:
      areas[site] = constants.L4S_PIXEL_M ** 2
    else:
      grid = raster_io.Grid.from_json(grid)
      areas[site] = raster_io.mean_pixel_metres(grid.crs, grid.transform, grid.shape[0]) ** 2
  return areas


def load_scenario_split(scenario: str, patch: int, split: str, channels: tuple[str, ...],
                        data_dir: str | os.PathLike, stats: normalization.ChannelStats) -> SplitData:
  """One split ("train" or "validation") of a scenario (union over its sites), normalised."""
  return SplitData.concatenate([read_split(site, patch, split, channels, data_dir)
                                for site in SCENARIOS[scenario]]).normalized(stats)


def load_training_data(scenario: str, patch: int, channels: tuple[str, ...],
                       data_dir: str | os.PathLike,
                       stats: normalization.ChannelStats) -> dict[str, SplitData]:
  """The normalised train and validation splits of a scenario (union over its sites)."""
  return {split: load_scenario_split(scenario, patch, split, channels, data_dir, stats)
          for split in ("train", "validation")}


def load_test_data(test_set: str, patch: int, channels: tuple[str, ...], data_dir: str | os.PathLike,
                   stats: normalization.ChannelStats | None) -> SplitData:
  """The test split of a site, or of every site for 'all'; normalised with `stats` unless None."""
  sites = constants.SITE_NAMES if test_set == "all" else (test_set,)
  data = SplitData.concatenate([read_split(site, patch, "test", channels, data_dir) for site in sites])
  return data if stats is None else data.normalized(stats)


def process_shard(n: int, process_index: int, process_count: int) -> np.ndarray:
  """Indices of the examples this process reads: a contiguous, near-equal shard (like
  `tfds.split_for_jax_process`), so hosts never read the same example."""
  bounds = np.linspace(0, n, process_count + 1).round().astype(int)
  return np.arange(bounds[process_index], bounds[process_index + 1])


def num_batches(n: int, global_batch: int, process_count: int = 1) -> int:
  """Batches per epoch: every example once; the last batch is padded (with valid = 0 and weight 0)."""
  local = global_batch // process_count
  largest_shard = -(-n // process_count)
  return max(1, -(-largest_shard // local))


def batch_plan(n: int, global_batch: int, num_devices: int, *, shuffle: bool, seed: int = 0,
               epoch: int = 0, process_index: int = 0, process_count: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
  """This process's example indices for one epoch, shaped (steps, num_devices, per_device), and a
  same-shaped bool `keep` that is False on padding.

  The last batch is padded with example 0 (keep = False), so every example is used once per epoch and
  shapes stay static (one compilation). The order depends only on (seed, epoch): a resumed run sees the
  batches an uninterrupted one would, and the per-step and scanned training loops see the same ones.
  """
  local_batch = global_batch // process_count
  indices = process_shard(n, process_index, process_count)
  if shuffle:
    rng = np.random.default_rng([seed, epoch])
    indices = indices[rng.permutation(len(indices))]
  steps = num_batches(n, global_batch, process_count)
  padded = np.zeros(steps * local_batch, np.int32)
  keep = np.zeros(steps * local_batch, bool)
  padded[:len(indices)] = indices
  keep[:len(indices)] = True
  shape = (steps, num_devices, local_batch // num_devices)
  return padded.reshape(shape), keep.reshape(shape)


def gather(data: SplitData, indices: np.ndarray, keep: np.ndarray,
           weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The examples at `indices` (any leading shape), with their loss weight map.

  `valid` and `weight` are zeroed where `keep` is False: a padding example (a copy of example 0 that only
  keeps shapes static) then counts in no loss, no score and no BatchNorm statistic. `weight` is the
  split's per-pixel loss weight (N, P, P, 1) (`loss_weights.weight_maps`), or None for `valid` itself.
  """
  valid = data.valid[indices]
  valid[~keep] = 0
  pixel_weight = valid.astype(np.float32) if weight is None else weight[indices] * valid
  return {"image": data.image[indices], "mask": data.mask[indices], "valid": valid,
          "weight": pixel_weight}


def batches(data: SplitData, global_batch: int, num_devices: int, *, shuffle: bool, seed: int = 0,
            epoch: int = 0, process_index: int = 0, process_count: int = 1,
            weight: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's batches, shaped (num_devices, per_device, ...) for pmap (see `batch_plan`)."""
  indices, keep = batch_plan(len(data), global_batch, num_devices, shuffle=shuffle, seed=seed,
                             epoch=epoch, process_index=process_index, process_count=process_count)
  for step_indices, step_keep in zip(indices, keep):
    yield gather(data, step_indices, step_keep, weight)
