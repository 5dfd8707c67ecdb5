"""Helpers of tests/test_evaluate.py, test_predict.py and test_sweep.py: tiny learnable sites and runs.

`train_fixtures.write_sites` draws every band as independent noise, so a model can learn nothing but the
landslide prior and predicts no landslide at 0.5: evaluation and prediction would then be compared on
all-zero maps. Here the landslide boxes are also brighter in B04 (red, as fresh scars are), so a few
epochs give a model whose maps have true and false positives and negatives.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import jax
import numpy as np
import pyogrio.raw
import rasterio
import rasterio.crs
import rasterio.features
import shapely
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from landslide_jax import constants, prepare, train
from tests import train_fixtures

CHANNELS = train_fixtures.CHANNELS
CHANNEL_TUPLE = constants.parse_channels(CHANNELS, constants.SITE_CHANNELS)
PATCH = train_fixtures.PATCH
SITE_SHAPE = train_fixtures.SITE_SHAPE
# Added to B04 (digital numbers, noise is 200-3000) inside the landslide boxes: learnable, not trivial.
SIGNAL_DN = 3000
# Options of every run of these tests. Batch 2 and a class-balanced loss at lr 3e-4 learn the boxes in
# about 12 epochs on 10 training patches (F1 ~0.9); lr 1e-3 diverges, and an unweighted loss collapses
# to "no landslide". Keeping them equal in all three files lets the compilation cache serve every run.
RUN_OPTIONS = dict(patch=PATCH, model="unet", batch_size=2, learning_rate=3e-4, loss_weights="class",
                   patience=10, seed=1)


def write_learnable_sites(raw: Path) -> Path:
  """`train_fixtures.write_sites`, with the landslide boxes made brighter in B04."""
  train_fixtures.write_sites(raw)
  for site in ("taiwan", "china", "japan"):
    with rasterio.open(raw / site / "s2.tif", "r+") as dst:
      data = dst.read()
      red = list(dst.descriptions).index("B04")
      for row, col, rows, cols in train_fixtures.BOXES:
        data[red, row:row + rows, col:col + cols] += SIGNAL_DN
      dst.write(data)
  return raw


def inventory_mask(site_dir: Path) -> np.ndarray:
  """The site's inventory polygons burnt onto its S2 grid (pixel centres), read without landslide_jax."""
  meta, _, wkb, _ = pyogrio.raw.read(site_dir / "inventory.gpkg")
  with rasterio.open(site_dir / "s2.tif") as src:
    assert rasterio.crs.CRS.from_user_input(meta["crs"]) == src.crs, "inventory is in the site CRS"
    return rasterio.features.rasterize(((g, 1) for g in shapely.from_wkb(wkb)), out_shape=src.shape,
                                       transform=src.transform, fill=0, dtype=np.uint8).astype(bool)


def prepare_sites(raw: Path, data_dir: Path, sites=constants.SITE_NAMES) -> Path:
  prepare.prepare(tuple(sites), (PATCH,), data_dir, raw, CHANNEL_TUPLE)
  return data_dir


def train_run(raw: Path, data_dir: Path, workdir: Path, max_epochs: int, scenario: str = "china",
              **overrides) -> dict:
  """An in-process `launch.train` run with RUN_OPTIONS; returns its metrics.json."""
  kwargs = dict(RUN_OPTIONS, scenario=scenario, workdir=str(workdir), data_dir=str(data_dir),
                manual_dir=str(raw), max_epochs=max_epochs)
  kwargs.update(overrides)
  return train.train_from_flags(channels=CHANNELS, **kwargs)


def read_json(path: Path) -> dict:
  return json.loads(Path(path).read_text())


@contextlib.contextmanager
def compilation_cache(path: Path):
  """A persistent XLA compilation cache for the block (and for subprocesses, via `subprocess_env`).

  Every run and every loaded checkpoint builds new `jax.pmap`/`jax.jit` objects, which miss jax's
  in-memory caches; without this each recompiles the U-Net (~25 s of a ~45 s run on 2 cores). Sharing one
  folder under pytest's base temp lets the three test files reuse each other's programs.
  """
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  saved = {name: getattr(jax.config, name) for name in names}
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax_cache.set_cache_dir(str(path))
  jax_cache.reset_cache()  # the cache is looked up once per process; make it look again
  try:
    yield path
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    jax_cache.reset_cache()


def subprocess_env(cache: Path | None = None) -> dict[str, str]:
  env = dict(os.environ)
  if cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return env


@contextlib.contextmanager
def learnable_module_env(tmp_path_factory, name: str):
  """For a module-scoped fixture: within the shared compilation cache, a fresh folder `name` holding
  learnable sites (`raw/`) and their prepared datasets (`tfds/`). Yields (root, raw, data_dir, cache)."""
  cache = tmp_path_factory.getbasetemp() / "jax_cache"
  with compilation_cache(cache):
    root = tmp_path_factory.mktemp(name)
    raw = write_learnable_sites(root / "raw")
    yield root, raw, prepare_sites(raw, root / "tfds"), cache
