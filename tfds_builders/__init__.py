"""TFDS builders of landslide_jax. Importing this package registers them with TFDS."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from tfds_builders.china import China
from tfds_builders.japan import Japan
from tfds_builders.taiwan import Taiwan

SITE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "taiwan": Taiwan, "china": China, "japan": Japan}


def get_site_builder(site: str, config: tfds.core.BuilderConfig,
                 data_dir: str | os.PathLike) -> tfds.core.GeneratorBasedBuilder:
  """The builder of `site` for `config` (see `site_builder.make_config`) under `data_dir`."""
  from tfds_builders.site_builder import FILE_FORMAT  # pylint: disable=import-outside-toplevel
  cls = SITE_BUILDERS[site]
  # TFDS wants the registered config by name, and a custom (non-default channels) one as an object.
  known = {c.name for c in cls.BUILDER_CONFIGS}
  chosen = config.name if config.name in known else config
  return cls(config=chosen, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
