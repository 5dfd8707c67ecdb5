"""Padding examples and nodata pixels change nothing in training (issue 8, item 4).

An epoch's last batch is padded to a whole batch with copies of example 0 (static shapes, one
compilation). Those copies, and nodata pixels, must move no parameter and no BatchNorm statistic: the
loss weights them 0 and `models.layers.BatchNorm` takes its statistics over valid pixels only, summed
over devices.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landslide_jax import input_pipeline, train
from landslide_jax.models import layers, resunet, unet

PATCH = 16
MODELS = {
    "unet": lambda: unet.UNet(features=(4, 8, 16, 32), bottleneck=32),
    "resunet": lambda: resunet.ResUNet(encoder=(4, 8, 16), bridge=32, axis_name=train.AXIS),
}


def _split(n: int, seed: int = 0) -> input_pipeline.SplitData:
  rng = np.random.default_rng(seed)
  valid = (rng.random((n, PATCH, PATCH, 1)) < 0.8).astype(np.uint8)
  return input_pipeline.SplitData(
      rng.normal(size=(n, PATCH, PATCH, 5)).astype(np.float32),
      (rng.random((n, PATCH, PATCH, 1)) < 0.2).astype(np.uint8), valid,
      np.zeros(n, np.int32), np.zeros(n, np.int32), np.array(["x"] * n))


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padding_content_changes_no_parameter_or_statistic(name):
  data = _split(5)  # batch 4: the second batch holds one real example and three padding copies
  indices, keep = input_pipeline.batch_plan(len(data), 4, 1, shuffle=False)
  assert keep[-1].sum() == 1
  config = train.TrainConfig(model=name, patch=PATCH, batch_size=4)
  state = train.create_train_state(jax.random.key(0), MODELS[name](), (1, PATCH, PATCH, 5), config)
  step = jax.pmap(train.train_step, axis_name=train.AXIS)

  batch = input_pipeline.gather(data, indices[-1], keep[-1])
  # The same batch with other padding content: wild images, other masks, other "valid" before zeroing.
  rng = np.random.default_rng(7)
  other = {k: v.copy() for k, v in batch.items()}
  pad = ~keep[-1]
  other["image"][pad] = rng.normal(scale=50.0, size=other["image"][pad].shape)
  other["mask"][pad] = 1 - other["mask"][pad]
  after_a, out_a = step(train.replicate(state), batch)
  after_b, out_b = step(train.replicate(state), other)
  assert float(out_a["loss"][0]) == float(out_b["loss"][0])
  assert _leaves_equal(after_a.params, after_b.params)
  if name == "resunet":
    assert _leaves_equal(after_a.batch_stats, after_b.batch_stats)
    # ... and the statistics did move: equal because padding is ignored, not because nothing happened.
    assert not _leaves_equal(after_a.batch_stats, state.batch_stats)


def test_resunet_statistics_are_over_valid_pixels_only():
  data = _split(4)
  config = train.TrainConfig(model="resunet", patch=PATCH, batch_size=4)
  state = train.create_train_state(jax.random.key(0), MODELS["resunet"](), (1, PATCH, PATCH, 5), config)
  indices, keep = input_pipeline.batch_plan(len(data), 4, 1, shuffle=False)
  batch = input_pipeline.gather(data, indices[0], keep[0])
  after, _ = jax.pmap(train.train_step, axis_name=train.AXIS)(train.replicate(state), batch)
  # The first BatchNorm normalises the stem conv's output: its running mean moves (momentum 0.9, from
  # 0) by a tenth of that output's mean over the valid pixels, recomputed here outside the model.
  stem = nn.Conv(4, (3, 3), padding="SAME")
  conv_out = np.asarray(stem.apply({"params": state.params["ResidualUnit_0"]["Conv_0"]},
                                   jnp.asarray(batch["image"][0])))
  valid = batch["valid"][0, ..., 0].astype(bool)
  assert 0 < valid.mean() < 1
  got = np.asarray(after.batch_stats["ResidualUnit_0"]["BatchNorm_0"]["mean"][0])
  np.testing.assert_allclose(got, 0.1 * conv_out[valid].mean(axis=0), rtol=1e-4, atol=1e-6)
  assert not np.allclose(got, 0.1 * conv_out.reshape(-1, 4).mean(axis=0), rtol=1e-3)


def _stats(x, mask, axis_name=None):
  norm = layers.BatchNorm(use_running_average=False, momentum=0.5, axis_name=axis_name)
  variables = norm.init(jax.random.key(0), x[:1])
  y, updates = norm.apply(variables, x, mask, mutable=["batch_stats"])
  return y, updates["batch_stats"]


def test_batchnorm_without_mask_equals_flax_batchnorm():
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3)) * 3 + 1
  ours, ours_stats = _stats(x, None)
  flax_norm = nn.BatchNorm(use_running_average=False, momentum=0.5, epsilon=1e-5)
  variables = flax_norm.init(jax.random.key(0), x[:1])
  theirs, theirs_stats = flax_norm.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  for key in ("mean", "var"):
    np.testing.assert_allclose(ours_stats[key], theirs_stats["batch_stats"][key], rtol=1e-5, atol=1e-6)


def test_masked_statistics_are_the_valid_pixels_statistics_across_devices():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 8, 8, 2)).astype(np.float32) * 2 + 5
  mask = (rng.random((4, 8, 8, 1)) < 0.6).astype(np.float32)
  mask[3] = 0  # one "device" holds only padding: flax's own mask= would give NaN here
  selected = x[mask[..., 0] == 1]
  mean, var = selected.mean(axis=0), selected.var(axis=0)
  # Four devices of one example each (vmap with the pmap axis name runs the same collectives).
  _, stats = jax.vmap(lambda xi, mi: _stats(xi[None], mi[None], train.AXIS), axis_name=train.AXIS)(
      jnp.asarray(x), jnp.asarray(mask))
  for device in range(4):
    np.testing.assert_allclose(stats["mean"][device], 0.5 * 0 + 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"][device], 0.5 * 1 + 0.5 * var, rtol=1e-4)
  # One device with the whole batch gives the same statistics.
  _, single = _stats(jnp.asarray(x), jnp.asarray(mask))
  np.testing.assert_allclose(single["mean"], stats["mean"][0], rtol=1e-5)


def test_coarse_layers_count_cells_with_any_valid_pixel():
  mask = np.zeros((1, 4, 4, 1), np.float32)
  mask[0, 0, 0] = 1  # one valid pixel in the top-left 2x2 cell
  coarse = np.asarray(layers.downsample_mask(jnp.asarray(mask), (2, 2)))[0, ..., 0]
  assert coarse.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_a_batch_without_valid_pixels_leaves_running_statistics():
  x = jnp.ones((2, 4, 4, 3))
  norm = layers.BatchNorm(use_running_average=False, momentum=0.5)
  variables = norm.init(jax.random.key(0), x)
  y, updates = norm.apply(variables, x, jnp.zeros((2, 4, 4, 1)), mutable=["batch_stats"])
  assert np.isfinite(np.asarray(y)).all()
  np.testing.assert_array_equal(updates["batch_stats"]["mean"], variables["batch_stats"]["mean"])
  np.testing.assert_array_equal(updates["batch_stats"]["var"], variables["batch_stats"]["var"])
