"""Several seeds of one experiment in one compiled program (`launch.train --seeds=K`).

The paper trains each cell of its grid once; whether one model beats another by a few F1 points then says
little. Here K models (seeds seed, seed + 1, ..., each with its own initialisation and data order) train
together: their parameters, optimiser and BatchNorm states are stacked on a leading axis and the pmapped
train step is `jax.vmap`ped over it, so an accelerator that idles at batch 4 does K runs for about the
price of one. On CPU, where XLA runs the vmapped convolutions slowly, the K steps are unrolled side by
side in the same program instead (SEED_BATCHING_BY_BACKEND).

Each seed stays an independent run: its own epoch count, early stopping, checkpoints (latest and best),
metrics.jsonl and metrics.json, in `<workdir>/seed_<s>/`, a run folder that `launch.evaluate` and
`launch.predict` open like any other. A seed that has stopped is frozen (its update is masked out) while
the others go on; the program ends when every seed has stopped. Because a seed's data order depends only
on (seed, epoch) and each seed restores its own latest checkpoint, a killed run resumes each seed where it
stood, even when they stood at different epochs. `<workdir>/metrics.json` holds every seed's scores and
their mean and standard deviation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils

from landslide_jax import input_pipeline, train

SEED_DIR = "seed_{}"


def seed_config(config: train.TrainConfig, seed: int) -> train.TrainConfig:
  """The single run of one seed: its own workdir inside the experiment's."""
  return dataclasses.replace(config, seed=seed, seeds=1,
                             workdir=str(config.resolved_workdir() / SEED_DIR.format(seed)))


def seed_values(config: train.TrainConfig) -> list[int]:
  return [config.seed + i for i in range(config.seeds)]


def stack(trees: list):
  """Trees of equal shapes -> one tree (the first's structure) whose leaves have a leading seed axis.

  By leaves, not `jax.tree.map`: each seed's TrainState carries its own optimiser and apply function as
  static metadata, equal in effect but not in identity.
  """
  leaves = zip(*(jax.tree.leaves(t) for t in trees))
  return jax.tree.unflatten(jax.tree.structure(trees[0]), [np.stack([np.asarray(x) for x in xs])
                                                           for xs in leaves])


def _masked(active: jax.Array, new, old):
  """`new` where the seed is active, else `old` (a frozen seed does not move, its Adam step neither)."""
  def pick(n, o):
    return jnp.where(active.reshape((-1,) + (1,) * (n.ndim - 1)), n, o)
  return jax.tree.map(pick, new, old)


# How the seeds' steps (training and validation) are batched in the compiled program, per backend:
# "vmap" (one batched step), or "unroll" (the K steps side by side in one program). XLA:CPU ran the
# vmapped train step at 0.38x of K separate ones (benchmarks/seeds_bench.py, U-Net 64 px, 2 seeds), so
# CPU unrolls.
SEED_BATCHING_BY_BACKEND = {"cpu": "unroll"}


def _per_seed(step, states, *args):
  """`step` applied to every seed (every argument has the leading seed axis): vmapped, or unrolled
  (see SEED_BATCHING_BY_BACKEND)."""
  if SEED_BATCHING_BY_BACKEND.get(jax.default_backend(), "vmap") == "vmap":
    return jax.vmap(step)(states, *args)
  k = jax.tree.leaves(states)[0].shape[0]
  outs = [step(*(jax.tree.map(lambda x, i=i: x[i], t) for t in (states, *args))) for i in range(k)]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def seeds_train_steps(states: train.TrainState, data: dict, indices: jax.Array, keep: jax.Array,
                      active: jax.Array) -> tuple[train.TrainState, jax.Array]:
  """`train.train_steps` for every seed at once (leading seed axis of `states`, `indices` and `keep`; the
  training split `data` is shared); runs under pmap like it.

  Returns:
    The states after the steps (frozen seeds unchanged) and the losses, (seeds, steps).
  """
  new, losses = _per_seed(lambda state, idx, kp: train.train_steps(state, data, idx, kp), states, indices,
                          keep)
  return _masked(active, new, states), losses


def seeds_train_step(states: train.TrainState, batch: dict, active: jax.Array
                     ) -> tuple[train.TrainState, jax.Array]:
  """`train.train_step` for every seed at once, each on its own batch (leading seed axis of `states` and
  of every array of `batch`); runs under pmap like it. Returns the states (frozen seeds unchanged) and
  each seed's loss."""
  new, out = _per_seed(train.train_step, states, batch)
  return _masked(active, new, states), out["loss"]


def seeds_eval_step(states: train.TrainState, batch: dict, threshold: float) -> dict:
  """`train.eval_step` of every seed on one shared batch."""
  return _per_seed(lambda state: train.eval_step(state, batch, threshold), states)


@dataclasses.dataclass
class _Seed:
  """One seed's run: its config, checkpoints, log and early stopping."""
  seed: int
  config: train.TrainConfig
  template: train.TrainState
  manager: object
  epoch: int
  stopper: object
  logger: object
  diverged: int | None = None
  checkpoint_bytes: int | None = None

  @property
  def label(self) -> str:
    return f"seed {self.seed}: "

  def running(self, max_epochs: int) -> bool:
    return self.diverged is None and not self.stopper.should_stop and self.epoch < max_epochs


def train_seeds(config: train.TrainConfig, lock) -> dict:
  """Trains `config.seeds` seeds in one vmapped program (see the module docstring), scores each seed's
  best checkpoint and writes `<workdir>/metrics.json` with their mean and spread. Called by
  `train.train_and_evaluate`, which checked the options and holds `lock`."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  workdir = config.resolved_workdir()
  inputs = train.open_run(config, lock)
  data, weights = inputs.data, inputs.weights
  runs = []
  for seed in seed_values(config):
    one = seed_config(config, seed)
    Path(one.workdir).mkdir(exist_ok=True)
    inputs.write_config(one)  # each seed's folder is a run launch.evaluate and launch.predict can open
    template = train.initial_state(one)
    manager, state, epoch, stopper = train.resume(one, template, label=f"seed {seed}: ")
    runs.append((_Seed(seed, one, template, manager, epoch, stopper,
                       train._Logger(Path(one.workdir), epoch)), state))  # pylint: disable=protected-access
  seeds = [r for r, _ in runs]
  states = stack([s for _, s in runs])
  k = len(seeds)

  per_dispatch = train.resolved_steps_per_dispatch(config)
  # As a single run: one step per dispatch with batches gathered on the host (CPU's default: XLA:CPU ran
  # the scanned step about 4x slower per step), or scans over device-resident data (accelerators).
  p_step = jax.pmap(seeds_train_step if per_dispatch == 1 else seeds_train_steps, axis_name=train.AXIS,
                    donate_argnums=(0,))
  p_eval = jax.pmap(lambda s, b: seeds_eval_step(s, b, train.monitor_threshold(config)),
                    axis_name=train.AXIS)
  split = data["train"]
  if per_dispatch > 1:
    # The training split stays on the device (shared by the seeds); each dispatch sends indices only.
    resident = train.replicate({"image": split.image, "mask": split.mask, "valid": split.valid,
                                "weight": weights["train"]})
  replicated = train.replicate(states)
  while any(s.running(config.max_epochs) for s in seeds):
    start = time.time()
    active = np.array([s.running(config.max_epochs) for s in seeds])
    # Each seed's own next epoch: its data order is that of a single run with its seed at that epoch.
    plans = [input_pipeline.batch_plan(
        len(split), config.batch_size, jax.local_device_count(), shuffle=True, seed=s.seed,
        epoch=s.epoch + 1, process_index=jax.process_index(), process_count=jax.process_count())
        for s in seeds]
    # (steps, devices, per_device) per seed -> (devices, seeds, steps, per_device).
    indices = np.stack([p[0] for p in plans]).transpose(2, 0, 1, 3)
    keep = np.stack([p[1] for p in plans]).transpose(2, 0, 1, 3)
    steps = indices.shape[2]
    device_active = np.broadcast_to(active, (jax.local_device_count(), k))
    epochs = sorted({s.epoch + 1 for s, a in zip(seeds, active) if a})
    bar = tqdm(total=steps, desc=f"epoch {'/'.join(map(str, epochs))} ({int(active.sum())} seeds)",
               leave=False, disable=jax.process_index() != 0)
    losses = []
    for first in range(0, steps, per_dispatch):
      if per_dispatch == 1:
        # (devices, seeds, per_device) examples -> arrays (devices, seeds, per_device, ...).
        batch = input_pipeline.gather(split, indices[:, :, first], keep[:, :, first], weights["train"])
        replicated, step_losses = p_step(replicated, batch, device_active)
        losses.append(np.asarray(step_losses[0])[:, None])
        bar.update(1)
        continue
      chunk = slice(first, first + per_dispatch)
      replicated, chunk_losses = p_step(replicated, resident, indices[:, :, chunk], keep[:, :, chunk],
                                         device_active)
      losses.append(np.asarray(chunk_losses[0]))
      bar.update(indices[:, :, chunk].shape[2])
    bar.close()
    train_losses = np.concatenate(losses, axis=1).mean(axis=1)
    val = _evaluate_seeds(p_eval, replicated, data["validation"], config, weights["validation"], k)
    seconds = time.time() - start
    current = jax.device_get(jax_utils.unreplicate(replicated))
    for i, s in enumerate(seeds):
      if not active[i]:
        continue
      s.epoch += 1
      if not math.isfinite(train_losses[i]):
        # As a single run: not saved, the seed stops with its best checkpoint. Its update is masked from
        # now on, so the others train on exactly as without it.
        s.diverged = s.epoch
        if jax.process_index() == 0:
          print(f"{s.label}epoch {s.epoch:3d}  train_loss {train_losses[i]}: training diverged; stopping "
                "this seed with its best checkpoint", flush=True)
        continue
      s.stopper = train.update_early_stopping(s.stopper, val[i]["loss"])
      train.log_epoch(s.logger, s.epoch, float(train_losses[i]), val[i], s.stopper, seconds, s.label)
      s.checkpoint_bytes = train.save_checkpoint(
          s.manager, Path(s.config.workdir), jax.tree.map(lambda x, i=i: x[i], current), s.epoch, s.stopper,
          config.pos_weight, val[i]["loss"], s.checkpoint_bytes)

  results = {}
  for s in seeds:
    s.logger.close()
    results[s.seed] = train.finish_run(s.config, s.manager, s.template, s.stopper, inputs, s.epoch,
                                       s.diverged, s.label)
  summary = summarize_seeds(config, results)
  train._write_json(workdir / "metrics.json", summary)  # pylint: disable=protected-access
  if jax.process_index() == 0:
    print(format_seed_table(summary), flush=True)
  return summary


def _evaluate_seeds(p_eval, replicated, data: input_pipeline.SplitData, config: train.TrainConfig,
                    weight: np.ndarray, k: int) -> list[dict]:
  """`train.evaluate` for every seed: validation loss and scores, one dict per seed."""
  totals = train.eval_totals(p_eval, replicated, data, config, weight)
  return [train.report_totals(jax.tree.map(lambda x, i=i: x[i], totals)) for i in range(k)]


# Scores summarised over seeds: pixel scores and object scores of each test set.
SUMMARY_SCORES = ("precision", "recall", "f1", "iou")
OBJECT_SUMMARY_SCORES = ("precision", "recall", "f1")


def summarize_seeds(config: train.TrainConfig, results: dict[int, dict]) -> dict:
  """The experiment's metrics.json (from training's or launch.evaluate's results per seed): every seed's
  scores, and per test set the mean and the standard deviation over seeds (ddof=1: the spread of a new
  seed's score, not of these K) of each score.

  `test` holds the means, so tables that read a single run's `test` read the mean of the seeds.
  """
  first = next(iter(results.values()))
  tests = list(first["test"])
  mean, std = {}, {}
  for t in tests:
    mean[t], std[t] = {}, {}
    values = {key: [r["test"][t][key] for r in results.values()] for key in SUMMARY_SCORES}
    objects = {key: [r["test"][t]["objects"][key] for r in results.values()] for key in OBJECT_SUMMARY_SCORES}
    for key, v in values.items():
      mean[t][key], std[t][key] = float(np.mean(v)), _std(v)
    mean[t]["objects"] = {key: float(np.mean(v)) for key, v in objects.items()}
    std[t]["objects"] = {key: _std(v) for key, v in objects.items()}
  return {"scenario": config.scenario, "model": config.model, "patch": config.patch,
          "seeds": list(results), "threshold": config.threshold, "test": mean, "test_std": std,
          "per_seed": {str(seed): {"workdir": seed_config(config, seed).workdir,
                                   # training's result names its best epoch, launch.evaluate's the step
                                   "checkpoint_step": r.get("best_epoch", r.get("checkpoint_step")),
                                   "threshold": r["threshold"], "test": r["test"]}
                       for seed, r in results.items()}}


def _std(values: list[float]) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def format_seed_table(summary: dict) -> str:
  """Per test set: F1 of every seed, then the mean +- std of pixel and object F1."""
  seeds = summary["seeds"]
  lines = [f"test F1 of {summary['scenario']}-{summary['model']}-p{summary['patch']} over {len(seeds)} "
           f"seeds (mean +- std over seeds):",
           f"{'test set':<16} " + " ".join(f"{'seed ' + str(s):>8}" for s in seeds)
           + f" {'F1':>15} {'object F1':>15}"]
  for t, m in summary["test"].items():
    sd = summary["test_std"][t]
    per = " ".join(f"{summary['per_seed'][str(s)]['test'][t]['f1']:>8.3f}" for s in seeds)
    lines.append(f"{t:<16} {per} {m['f1']:>8.3f} +- {sd['f1']:.3f} "
                 f"{m['objects']['f1']:>8.3f} +- {sd['objects']['f1']:.3f}")
  return "\n".join(lines)
