"""Helpers of tests/test_train.py: tiny paper sites, and checks that run in their own process.

Run as `python -m tests.train_fixtures pmap_equivalence` (with 4 emulated CPU devices) to print, as one
JSON line, how far a 4-device train step lands from the same step on 1 device.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np

CHANNELS = "B2,B3,B4,B8,slope"
PATCH = 32
# 64 x 320 px at 10 m: two rows of 32 px patches; the column cut gives 10 train, 2 validation and 8 test
# patches per site (validation is the 32 columns left of the test area, cols 160-192).
SITE_SHAPE = (64, 320)
# (row, col, rows, cols) of landslide boxes: two in training, one in validation, two in test, so every
# split has landslide pixels and the validation loss is not trivially ~0.
BOXES = ((5, 10, 15, 20), (40, 100, 12, 25), (20, 166, 15, 18), (30, 215, 20, 25), (10, 280, 15, 20))


def write_sites(raw: Path) -> Path:
  """Writes taiwan, china and japan site folders (different Sentinel-2 noise each) under `raw`."""
  # Imported here: conftest needs pytest and rasterio, which the pmap subprocess does not.
  from tests import conftest  # pylint: disable=import-outside-toplevel
  polygons = [conftest.pixel_box(*box) for box in BOXES]
  for seed, name in enumerate(("taiwan", "china", "japan")):
    site = raw / name
    site.mkdir(parents=True)
    conftest.write_s2(site / "s2.tif", SITE_SHAPE, seed=seed)
    conftest.write_dem(site / "dem.tif", SITE_SHAPE)
    conftest.write_polygons(site / "inventory.gpkg", polygons)
    (site / "manifest.json").write_text(json.dumps(
        {"sentinel2": "s2.tif", "dem": "dem.tif", "inventory": "inventory.gpkg", "s2_units": "dn"}))
  return raw


def equivalence_batch(num_examples: int = 4, size: int = 16, channels: int = 5) -> dict:
  """A global batch whose examples have very different numbers of valid pixels (one has none), so a
  per-device instead of global loss normalisation would change the gradient."""
  rng = np.random.default_rng(0)
  valid = np.zeros((num_examples, size, size, 1), np.uint8)
  for k, rows in enumerate((size, size // 2, 3, 0)[:num_examples]):
    valid[k, :rows] = 1
  mask = (rng.random((num_examples, size, size, 1)) < 0.3).astype(np.uint8)
  return {
      "image": rng.normal(size=(num_examples, size, size, channels)).astype(np.float32),
      "mask": mask,
      "valid": valid,
      # Landslide pixels weigh 3 in the loss.
      "weight": (valid * np.where(mask == 1, 3.0, 1.0)).astype(np.float32),
  }


def init_variables(model, image_shape: tuple[int, ...], seed: int = 0) -> dict:
  """Model variables drawn with numpy (He-normal kernels, small biases, BatchNorm at identity).

  `model.init` would do, but compiling its threefry draws takes ~1 s per parameter tensor on CPU, which
  is most of this check's time budget; the values only need to be deterministic and well scaled.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros(image_shape))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name == "mean":
      value = np.zeros(leaf.shape)
    else:  # biases: nonzero, so a wrong reduction of their gradients shows
      value = 0.1 * rng.normal(size=leaf.shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def pmap_equivalence() -> dict:
  """Max abs differences between one train step (and an eval step after it) on 4 devices with one
  example each and on 1 device with all 4, for U-Net and ResU-Net (BatchNorm over axis 'batch').

  The state uses plain SGD, not the training's Adam: Adam's first step is lr * g / (|g| + eps), which
  for parameters whose exact gradient is 0 (conv biases in front of BatchNorm) turns float round-off of
  ~1e-9 into steps of +-lr, so comparing Adam-updated parameters would compare round-off. With SGD the
  parameter difference is lr times the gradient difference, which is what the reductions decide.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import jax_utils  # pylint: disable=import-outside-toplevel

  from landslide_jax import train  # pylint: disable=import-outside-toplevel
  from landslide_jax.models import ResUNet, UNet  # pylint: disable=import-outside-toplevel

  devices = jax.devices()
  assert len(devices) == 4, f"needs 4 devices (XLA_FLAGS), got {devices}"
  batch = equivalence_batch()
  # Narrow models compile in seconds; the reductions under test do not depend on the width.
  models = {"unet": UNet(features=(8, 16), bottleneck=16),
            "resunet": ResUNet(encoder=(8, 16), bridge=16, axis_name=train.AXIS)}
  report = {}
  for name, model in models.items():
    variables = init_variables(model, (1, *batch["image"].shape[1:]))
    state = train.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                    tx=optax.sgd(0.1), batch_stats=variables.get("batch_stats"))
    outs = {}
    for n in (4, 1):
      local = devices[:n]
      step = jax.pmap(train.train_step, axis_name=train.AXIS, devices=local)
      evaluate = jax.pmap(functools.partial(train.eval_step, threshold=0.5),
                          axis_name=train.AXIS, devices=local)
      shaped = {k: v.reshape(n, 4 // n, *v.shape[1:]) for k, v in batch.items()}
      new, out = step(jax_utils.replicate(state, local), shaped)
      scores = jax.device_get(jax.tree.map(lambda x: x[0], evaluate(new, shaped)))
      new = jax.device_get(jax_utils.unreplicate(new))
      outs[n] = {"params": new.params, "batch_stats": new.batch_stats, "loss": out["loss"][0],
                 "eval_loss": scores["loss_sum"] / scores["count"], "eval_counts": scores["counts"]}

    def max_diff(a, b):
      diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
      return max(jax.tree.leaves(diffs), default=0.0)

    report[name] = {"diff": {key: max_diff(outs[4][key], outs[1][key]) for key in outs[4]},
                    # How far the step moved the parameters: the differences must be tiny beside it.
                    "param_change": max_diff(outs[1]["params"], state.params),
                    "loss": float(outs[1]["loss"]),
                    "has_batch_stats": outs[1]["batch_stats"] is not None}
  return report


if __name__ == "__main__":
  if sys.argv[1:] != ["pmap_equivalence"]:
    sys.exit("usage: python -m tests.train_fixtures pmap_equivalence")
  print(json.dumps(pmap_equivalence()))
