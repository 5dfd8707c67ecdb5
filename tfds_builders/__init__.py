"""TFDS builders of landslide_jax. Importing this package registers them with TFDS."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from landslide_jax import constants
from tfds_builders import site_builder
from tfds_builders.china import China
from tfds_builders.japan import Japan
from tfds_builders.landslide4sense import Landslide4sense, landslide4sense
from tfds_builders.site_builder import FILE_FORMAT
from tfds_builders.taiwan import Taiwan

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "taiwan": Taiwan, "china": China, "japan": Japan, "landslide4sense": Landslide4sense}


def config_for(name: str, patch: int, channels: tuple[str, ...] = constants.DEFAULT_CHANNELS,
               max_nodata_fraction: float = constants.MAX_NODATA_FRACTION) -> tfds.core.BuilderConfig:
  """The config of builder `name` for these options (Landslide4Sense drops no nodata windows, so it
  has no `max_nodata_fraction`)."""
  if name == "landslide4sense":
    return landslide4sense.make_config(patch, channels)
  return site_builder.make_config(patch, channels, max_nodata_fraction)


def get_builder(name: str, config: tfds.core.BuilderConfig,
                data_dir: str | os.PathLike) -> tfds.core.GeneratorBasedBuilder:
  """The builder `name` (a site or 'landslide4sense') for `config` under `data_dir`."""
  cls = BUILDERS[name]
  # TFDS wants a registered config by name, and a custom (non-default channels) one as an object.
  known = {c.name for c in cls.BUILDER_CONFIGS}
  chosen = config.name if config.name in known else config
  return cls(config=chosen, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
