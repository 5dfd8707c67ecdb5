"""TFDS builders of landslide_jax. Importing this package registers them with TFDS."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from tfds_builders.china import China
from tfds_builders.japan import Japan
from tfds_builders.landslide4sense import Landslide4sense
from tfds_builders.site_builder import FILE_FORMAT
from tfds_builders.taiwan import Taiwan

BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "taiwan": Taiwan, "china": China, "japan": Japan, "landslide4sense": Landslide4sense}


def get_builder(name: str, config: tfds.core.BuilderConfig,
                data_dir: str | os.PathLike) -> tfds.core.GeneratorBasedBuilder:
  """The builder `name` (a site or 'landslide4sense') for `config` under `data_dir`."""
  cls = BUILDERS[name]
  # TFDS wants a registered config by name, and a custom (non-default channels) one as an object.
  known = {c.name for c in cls.BUILDER_CONFIGS}
  chosen = config.name if config.name in known else config
  return cls(config=chosen, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
