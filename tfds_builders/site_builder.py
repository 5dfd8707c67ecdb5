"""Shared base of the paper-site builders (`taiwan`, `china`, `japan`) and the common feature spec.

A site dataset is the site's scene split into training / validation / testing areas and cut into
non-overlapping windows of one patch size (configs `p32`, `p64`, `p128`): training windows on the paper's
grid (whole windows inside the area), validation and test windows covering their whole area, padded where
they leave it, so that scores count every valid pixel of the area exactly once at every patch size. Images are stored in physical
units (S2 digital numbers, slope in degrees, DEM in metres); normalisation statistics computed on the
training windows are stored in the dataset's `metadata.json` and applied when reading.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from landslide_jax import constants
from landslide_jax.data import normalization, patching, scene as scene_lib, site_inputs, split
from landslide_jax.errors import InputError

VERSION = tfds.core.Version("1.2.0")
RELEASE_NOTES = {
    "1.0.0": "First release: paper channels, 3:2 split, validation block.",
    "1.1.0": "Validation and test windows cover their whole area (zero-padded at its edges, valid = 0 "
             "outside it), so every valid pixel is scored once; metadata: valid_pixels per area, "
             "s2_add_offset.",
    "1.2.0": "DEM resampled exactly onto the Sentinel-2 grid (GDAL's warper approximated the transformation "
             "per chunk: slope differed by up to ~0.1 degree on geographic DEMs); inputs may be SAFE "
             "products, DEM tiles and an area of interest.",
}
FILE_FORMAT = "array_record"


def patch_features(patch: int, num_channels: int) -> tfds.features.FeaturesDict:
  """The feature spec every landslide builder writes, so one input pipeline reads them all."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(patch, patch, num_channels), dtype=np.float32),
      "mask": tfds.features.Tensor(shape=(patch, patch, 1), dtype=np.uint8),
      "valid": tfds.features.Tensor(shape=(patch, patch, 1), dtype=np.uint8),
      "row": np.int32,   # top-left pixel of the window on the site grid (stitching)
      "col": np.int32,
      "site": tfds.features.Text(),
  })


@dataclasses.dataclass(eq=False)
class SitePatchConfig(tfds.core.BuilderConfig):
  """One patch size and channel choice. The name encodes every non-default option, so that datasets
  built with different options never share a directory."""
  patch: int = 128
  channels: tuple[str, ...] = constants.DEFAULT_CHANNELS
  test_fraction: float = constants.TEST_FRACTION
  validation_fraction: float = constants.VALIDATION_FRACTION
  max_nodata_fraction: float = constants.MAX_NODATA_FRACTION


def config_name(patch: int, channels: tuple[str, ...]) -> str:
  """`p128` for the paper's channels, e.g. `p128-B2-B3-B4-B8-slope-dem` otherwise."""
  if patch not in constants.PATCH_SIZES:
    raise ValueError(f"patch size {patch} is not one of {constants.PATCH_SIZES}")
  name = f"p{patch}"
  if tuple(channels) != constants.DEFAULT_CHANNELS:
    name += "-" + "-".join(channels)
  return name


def make_config(patch: int, channels: tuple[str, ...] = constants.DEFAULT_CHANNELS,
                max_nodata_fraction: float = constants.MAX_NODATA_FRACTION) -> SitePatchConfig:
  """Config for a patch size, channel list and nodata threshold."""
  name = config_name(patch, channels)
  if max_nodata_fraction != constants.MAX_NODATA_FRACTION:
    name += f"-nodata{max_nodata_fraction:g}"
  return SitePatchConfig(name=name, patch=patch, channels=tuple(channels),
                         max_nodata_fraction=max_nodata_fraction,
                         description=f"{patch} px windows of channels {', '.join(channels)}")


@functools.lru_cache(maxsize=1)
def _load_scene(site_dir: str, channels: tuple[str, ...], name: str, input_hash: str) -> scene_lib.Scene:
  # Keyed on the input hash: building p32, p64 and p128 in one process reads the rasters once, and a
  # changed input is never served from the cache.
  return scene_lib.load_scene(site_dir, channels, name, input_hash)


def _share(values: np.ndarray, valid: np.ndarray) -> float:
  n = int(valid.sum())
  return float(values[valid.astype(bool)].sum() / n) if n else 0.0


class QuietBuild:
  """Mixin for our builders: TFDS's own "Downloading and preparing dataset Unknown size ..." and
  "downloaded and prepared" lines say nothing true here (nothing is downloaded, they name the staging
  folder); launch.prepare prints one line of its own per dataset instead."""

  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


class SiteBuilder(QuietBuild, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: reads `<manual_dir>/<SITE>/`, splits, patches and writes array_record shards."""

  SITE: ClassVar[str]
  VERSION = VERSION
  RELEASE_NOTES = RELEASE_NOTES
  BUILDER_CONFIGS = [make_config(p) for p in constants.PATCH_SIZES]
  DEFAULT_CONFIG_NAME = "p128"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the site's raw inputs in <manual_dir>/<site>/ (Sentinel-2, DEM, inventory; see README.md), "
      "then run: python -m launch.prepare --site=<site> --manual_dir=<manual_dir>")

  def _info(self) -> tfds.core.DatasetInfo:
    site = constants.SITES[self.SITE]
    return tfds.core.DatasetInfo(
        builder=self,
        description=(f"Landslide patches of {site.title}: Sentinel-2 and DEM channels with landslide "
                     "masks, after Ghorbanzadeh et al. 2021 (Sci. Rep.)."),
        features=patch_features(self.builder_config.patch, len(self.builder_config.channels)),
        metadata=tfds.core.MetadataDict(),
        citation="Ghorbanzadeh, O. et al. (2021) Sci. Rep. 11, 14629.",
    )

  def _split_generators(self, dl_manager):
    config: SitePatchConfig = self.builder_config
    site_dir = Path(dl_manager.manual_dir) / self.SITE
    input_hash = site_inputs.find_site_inputs(site_dir).content_hash()
    scene = _load_scene(str(site_dir), config.channels, self.SITE, input_hash)
    labels = split.split_train_test(scene.valid, scene.test_area, config.test_fraction,
                                    config.validation_fraction, min_validation_lines=config.patch)
    grids = {
        name: (patching.patch_grid(labels, scene.valid, code, config.patch, config.max_nodata_fraction)
               if code == split.TRAIN else patching.cover_grid(labels, scene.valid, code, config.patch))
        for code, name in split.AREA_NAMES.items()
    }
    for code, name in split.AREA_NAMES.items():
      if len(grids[name]) == 0:
        raise _no_window_error(site_dir, scene, labels == code, name, grids[name], config)
    train_valid = grids["train"].windows(scene.valid)
    stats = normalization.channel_stats(grids["train"].windows(scene.image), train_valid,
                                        scene.channels)
    self.info.metadata.update(self._metadata(scene, labels, grids, stats))
    return {name: self._generate_examples(scene, grid, labels == code)
            for code, name in split.AREA_NAMES.items() for grid in (grids[name],)}

  def _metadata(self, scene, labels, grids, stats) -> dict:
    config: SitePatchConfig = self.builder_config
    areas = {}
    for code, name in split.AREA_NAMES.items():
      grid = grids[name]
      area_valid = scene.valid & (labels == code)
      valid = grid.windows(area_valid)
      masks = grid.windows(scene.landslides)
      rows, cols = np.nonzero(labels == code)
      r0, c0 = int(rows.min()), int(cols.min())
      areas[name] = {
          "patches": len(grid),
          # Valid pixels of the area; the windows hold all of them for validation and test.
          "valid_pixels": int(area_valid.sum()),
          "windows": "paper grid" if code == split.TRAIN else "area cover",
          "dropped_nodata": grid.dropped_nodata,
          "dropped_boundary": grid.dropped_boundary,
          "landslide_share": _share(masks, valid),
          "transform": list(scene.grid.window_transform(r0, c0))[:6],
          "shape": [int(rows.max()) + 1 - r0, int(cols.max()) + 1 - c0],
      }
    return {
        "site": self.SITE,
        "title": constants.SITES[self.SITE].title,
        "source": scene.source,
        "input_hash": scene.input_hash,
        "s2_add_offset": scene.s2_add_offset,
        "patch": config.patch,
        "channels": list(scene.channels),
        "normalization": stats.to_json(),
        "grid": scene.grid.to_json(),
        "split": {
            "method": "test-area file" if scene.test_area is not None else
                      f"cut across axis {split.long_axis(labels.shape)}",
            "area_fractions": split.area_fractions(labels, scene.valid),
            "test_fraction": config.test_fraction,
            "validation_fraction": config.validation_fraction,
            "max_nodata_fraction": config.max_nodata_fraction,
        },
        "areas": areas,
    }

  def _generate_examples(self, scene: scene_lib.Scene, grid: patching.PatchGrid,
                         in_area: np.ndarray):
    # Pixels outside the area (and past the scene edge) are blanked and invalid: a test window carries
    # neither the image nor the labels of the training area next to it.
    p = grid.patch
    for r, c in zip(grid.rows.tolist(), grid.cols.tolist()):
      keep = patching.cut_window(scene.valid & in_area, r, c, p)
      yield f"{r}_{c}", {
          "image": np.ascontiguousarray(np.moveaxis(patching.cut_window(scene.image, r, c, p) * keep,
                                                    0, -1)),
          "mask": (patching.cut_window(scene.landslides, r, c, p) * keep)[..., None].astype(np.uint8),
          "valid": keep[..., None].astype(np.uint8),
          "row": r,
          "col": c,
          "site": self.SITE,
      }


def _no_window_error(site_dir: Path, scene, area: np.ndarray, name: str, grid: patching.PatchGrid,
                     config: "SitePatchConfig") -> InputError:
  """The error for an area without a single window, with the fix for its actual cause."""
  where = f"(scene {scene.grid.shape[0]}x{scene.grid.shape[1]} px)"
  valid_share = float(scene.valid.mean())
  if not area.any():
    if scene.test_area is not None and (scene.test_area.astype(bool) | ~scene.valid).all():
      return InputError(site_dir, f"the {name} area is empty {where}: the test area covers the whole "
                        "scene", "draw test_area over part of the scene (the paper keeps 3/5 for training)")
    if valid_share < 0.5:
      return InputError(site_dir, f"the {name} area is empty {where}: only {valid_share:.1%} of the scene "
                        "has data (clouds, nodata, outside the AOI)",
                        "use a clearer scene, or check the nodata mask's polarity (non-zero = invalid)")
    return InputError(site_dir, f"the {name} area is empty {where}: at {config.patch} px the validation "
                      f"block needs {config.patch} lines of the training area",
                      "choose a smaller --patch or a larger scene")
  valid = int((area & scene.valid).sum())
  if valid == 0:
    return InputError(site_dir, f"the {name} area has no valid pixel {where}: all of it is nodata or "
                      "masked (clouds, nodata_mask, outside the AOI)",
                      "check the scene and masks cover that area, or move test_area")
  if grid.dropped_nodata:
    return InputError(site_dir, f"every {config.patch} px window of the {name} area is more than "
                      f"{config.max_nodata_fraction:.0%} nodata ({grid.dropped_nodata} windows dropped; "
                      f"{valid / area.sum():.0%} of the area is valid)",
                      "use a clearer scene, or raise launch.prepare --max_nodata_fraction")
  return InputError(site_dir, f"no {config.patch} px window fits in the {name} area {where}",
                    "choose a smaller --patch or a larger scene")
