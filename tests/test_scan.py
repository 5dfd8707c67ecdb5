"""The scanned multi-step training path (`train.train_steps`, steps_per_dispatch > 1) takes exactly the
steps of the per-step loop: same batches, same parameters after N steps (within float tolerance)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from landslide_jax import input_pipeline, train
from landslide_jax.models import resunet, unet


def _split(n: int, patch: int = 16, channels: int = 5) -> input_pipeline.SplitData:
  rng = np.random.default_rng(0)
  valid = (rng.random((n, patch, patch, 1)) < 0.9).astype(np.uint8)
  return input_pipeline.SplitData(
      rng.normal(size=(n, patch, patch, channels)).astype(np.float32),
      (rng.random((n, patch, patch, 1)) < 0.2).astype(np.uint8), valid,
      np.zeros(n, np.int32), np.zeros(n, np.int32), np.array(["x"] * n))


# Small widths: the arithmetic is the production code's, compiled in seconds.
MODELS = {
    "unet": lambda: unet.UNet(features=(4, 8, 16, 32), bottleneck=32),
    "resunet": lambda: resunet.ResUNet(encoder=(4, 8, 16), bridge=32, axis_name=train.AXIS),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scanned_steps_equal_per_step_loop(name):
  data = _split(10)  # batch 4: 3 steps per epoch, the last one padded
  config = train.TrainConfig(model=name, patch=16, batch_size=4)
  state = train.create_train_state(jax.random.key(0), MODELS[name](), (1, 16, 16, 5), config)
  if name == "resunet":
    # Conv biases in front of BatchNorm have a gradient that is zero up to round-off; Adam divides it by
    # its own root-mean-square and turns that noise into steps of +-lr, so two exact-in-theory orders of
    # float operations drift by ~lr. SGD keeps the comparison about the loop, not about Adam's noise.
    state = state.replace(tx=optax.sgd(0.05), opt_state=optax.sgd(0.05).init(state.params))
  step = jax.pmap(train.train_step, axis_name=train.AXIS)
  steps = jax.pmap(train.train_steps, axis_name=train.AXIS)
  # Landslide pixels weigh 2: the loss weight map travels with the batches on both paths.
  weight = (data.valid * (1.0 + data.mask)).astype(np.float32)
  resident = train.replicate({"image": data.image, "mask": data.mask, "valid": data.valid,
                              "weight": weight})

  looped, scanned = train.replicate(state), train.replicate(state)
  looped_losses, scanned_losses = [], []
  for epoch in (1, 2):  # 6 steps; dispatches of 4 then 2 cross the epoch boundary differently
    indices, keep = input_pipeline.batch_plan(len(data), 4, 1, shuffle=True, seed=3, epoch=epoch)
    for idx, kp in zip(indices, keep):
      looped, out = step(looped, input_pipeline.gather(data, idx, kp, weight))
      looped_losses.append(float(out["loss"][0]))
    indices, keep = indices.transpose(1, 0, 2), keep.transpose(1, 0, 2)
    for first in range(0, indices.shape[1], 2):
      scanned, losses = steps(scanned, resident, indices[:, first:first + 2], keep[:, first:first + 2])
      scanned_losses.extend(np.asarray(losses[0]).tolist())

  np.testing.assert_allclose(scanned_losses, looped_losses, rtol=1e-5, atol=1e-6)
  assert int(scanned.step[0]) == int(looped.step[0]) == 6
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       scanned.params, looped.params)
  assert max(jax.tree.leaves(diffs)) < 1e-5
  if looped.batch_stats is not None:
    stat_diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                              scanned.batch_stats, looped.batch_stats)
    assert max(jax.tree.leaves(stat_diffs)) < 1e-5
  # The parameters did move: equal because the steps are the same, not because nothing happened.
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a)[0] - np.asarray(b)))),
                       looped.params, state.params)
  assert max(jax.tree.leaves(moved)) > 1e-3


def test_batch_plan_covers_every_example_once_and_pads_with_keep_false():
  indices, keep = input_pipeline.batch_plan(10, 4, 2, shuffle=True, seed=1, epoch=5)
  assert indices.shape == keep.shape == (3, 2, 2)
  assert sorted(indices[keep].tolist()) == list(range(10))
  assert keep.sum() == 10 and not keep[-1, -1].any()
  again, _ = input_pipeline.batch_plan(10, 4, 2, shuffle=True, seed=1, epoch=5)
  other, _ = input_pipeline.batch_plan(10, 4, 2, shuffle=True, seed=1, epoch=6)
  assert np.array_equal(indices, again) and not np.array_equal(indices, other)


def test_auto_steps_per_dispatch_is_one_on_cpu_and_explicit_values_win():
  assert train.resolved_steps_per_dispatch(train.TrainConfig()) == (
      1 if jax.default_backend() == "cpu" else 32)
  assert train.resolved_steps_per_dispatch(train.TrainConfig(steps_per_dispatch=8)) == 8
