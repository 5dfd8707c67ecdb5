"""`landslide4sense`: the Landslide4Sense benchmark patches, re-tiled to 32, 64 or 128 px.

Reads the official layout from `manual_dir` (see `landslide_jax.data.landslide4sense`), selects channels
by band name, undoes the published per-channel scaling and writes the same features as the site builders.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from landslide_jax import constants
from landslide_jax.data import landslide4sense as l4s
from landslide_jax.data import normalization
from tfds_builders import site_builder

SITE = "landslide4sense"


@dataclasses.dataclass(eq=False)
class L4SConfig(tfds.core.BuilderConfig):
  """One patch size (a divisor of 128) and channel choice."""
  patch: int = 128
  channels: tuple[str, ...] = constants.DEFAULT_CHANNELS


def make_config(patch: int, channels: tuple[str, ...] = constants.DEFAULT_CHANNELS) -> L4SConfig:
  """Config named like the site builders' (`p32`, or `p32-B2-...` for other channels)."""
  return L4SConfig(name=site_builder.config_name(patch, channels), patch=patch, channels=tuple(channels),
                   description=f"{patch} px tiles of channels {', '.join(channels)}")


class Landslide4sense(site_builder.QuietBuild, tfds.core.GeneratorBasedBuilder):
  """Landslide4Sense (Ghorbanzadeh et al. 2022) in the landslide_jax feature layout."""

  VERSION = site_builder.VERSION
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "metadata: valid_pixels per split (scores cover every valid pixel)."}
  BUILDER_CONFIGS = [make_config(p) for p in constants.PATCH_SIZES]
  DEFAULT_CONFIG_NAME = "p128"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download Landslide4Sense (doi:10.5281/zenodo.10463239) and pass the folder holding TrainData/ "
      "as --manual_dir to python -m launch.prepare --site=landslide4sense.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Landslide4Sense 128 px Sentinel-2/ALOS patches, unscaled to physical units.",
        features=site_builder.patch_features(self.builder_config.patch, len(self.builder_config.channels)),
        metadata=tfds.core.MetadataDict(),
        citation="Ghorbanzadeh, O. et al. (2022) IEEE TGRS 60, 4414017.",
    )

  def _split_generators(self, dl_manager):
    config: L4SConfig = self.builder_config
    root = l4s.find_root(dl_manager.manual_dir)
    splits, origin = l4s.plan_splits(root)
    areas, train_images, train_valid = {}, [], []
    for name, images in splits.items():
      slide_pixels = labelled_pixels = valid_pixels = 0
      for im in images:
        image, valid = l4s.read_image(im.image, config.channels)
        valid_pixels += int(valid.sum())
        if im.mask is not None:
          slide_pixels += int(l4s.read_mask(im.mask)[valid].sum())
          labelled_pixels += int(valid.sum())
        if name == "train":
          train_images.append(np.moveaxis(image, -1, 0))
          train_valid.append(valid)
      areas[name] = {"patches": len(images) * len(l4s.tiles(config.patch)), "origin": origin[name],
                     "images": [im.image_id for im in images], "dropped_nodata": 0,
                     "valid_pixels": valid_pixels,
                     "landslide_share": slide_pixels / max(labelled_pixels, 1)}
    # Normalisation from the training images only, over their valid pixels.
    stats = normalization.channel_stats(np.stack(train_images), np.stack(train_valid), config.channels)
    self.info.metadata.update({
        "site": SITE, "title": "Landslide4Sense", "source": constants.SOURCE_REAL,
        "input_hash": l4s.content_hash(splits), "patch": config.patch, "channels": list(config.channels),
        "normalization": stats.to_json(), "grid": None, "areas": areas,
    })
    return {name: self._generate_examples(images) for name, images in splits.items()}

  def _generate_examples(self, images: list[l4s.L4SImage]):
    config: L4SConfig = self.builder_config
    p = config.patch
    for im in images:
      image, valid = l4s.read_image(im.image, config.channels)
      mask = l4s.read_mask(im.mask) if im.mask is not None else np.zeros(valid.shape, np.uint8)
      for r, c in l4s.tiles(p):
        yield f"{im.image_id}_{r}_{c}", {
            "image": image[r:r + p, c:c + p],
            "mask": mask[r:r + p, c:c + p, None],
            "valid": valid[r:r + p, c:c + p, None].astype(np.uint8),
            "row": r,
            "col": c,
            "site": SITE,
        }
