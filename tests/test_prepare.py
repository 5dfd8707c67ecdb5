"""End-to-end dataset preparation on small self-made sites: counts, split, stats, read-back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landslide_jax import constants, prepare
from landslide_jax.data import normalization
from tests.conftest import SITE_CRS


def test_prepare_site_round_trip(make_site, tmp_path):
  site = make_site("china", shape=(200, 600))
  result = prepare.prepare_site("china", 32, tmp_path / "tfds", site.parent)
  meta = result.metadata
  assert meta["source"] == constants.SOURCE_REAL
  assert meta["grid"]["crs"] == SITE_CRS
  assert meta["channels"] == list(constants.DEFAULT_CHANNELS)
  import tensorflow_datasets as tfds
  import tfds_builders
  from tfds_builders import site_builder
  builder = tfds_builders.get_builder("china", site_builder.make_config(32), tmp_path / "tfds")
  source = builder.as_data_source()
  assert set(source) == {"train", "validation", "test"}
  example = source["train"][0]
  assert example["image"].shape == (32, 32, 5) and example["image"].dtype == np.float32
  print(prepare.format_summary([result]))
