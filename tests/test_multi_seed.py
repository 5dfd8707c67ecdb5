"""Several seeds in one vmapped program (landslide_jax/multi_seed.py) against separate runs.

A 2-seed run (seeds 1 and 2) on the learnable sites of tests/run_fixtures.py, stopped after 2 epochs and
resumed, is compared with two uninterrupted single runs of seed 1 and seed 2: same epochs, losses,
stopping and best checkpoints, within float32 round-off. On CPU the seeds' steps are unrolled
(multi_seed.SEED_BATCHING_BY_BACKEND), training and validation steps alike, and parameters and
validation losses came out bit-identical (measured 0.0). With the vmapped train step XLA batches the convolutions into other kernels and sums are ordered differently; Adam divides
each gradient by its running magnitude, which can amplify that for parameters whose gradients are near
0 (measured 2.5e-6 over 4 epochs). Tolerances, for either form: parameters 1e-4 absolute, losses 1e-5
relative, pixel counts 0.1% of the test pixels (a pixel whose probability sits at the threshold may flip).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from landslide_jax import evaluate, multi_seed, sweep, train
from landslide_jax.errors import InputError
from tests import run_fixtures

MAX_EPOCHS = 4
RESUMED_AT = 2
# Patience 1 makes the seeds stop at different epochs (pinned below, so the test shows a frozen seed).
OPTIONS = dict(patience=1)
SEEDS = (1, 2)


@dataclasses.dataclass(frozen=True)
class Env:
  root: Path
  raw: Path
  data_dir: Path
  together: dict
  separate: dict


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  with run_fixtures.learnable_module_env(tmp_path_factory, "multi_seed") as (root, raw, data_dir, _):
    # Stopped after 2 epochs and resumed (a larger --max_epochs resumes a finished run): the comparison
    # with the uninterrupted separate runs covers resuming too.
    run_fixtures.train_run(raw, data_dir, root / "together", RESUMED_AT, seed=SEEDS[0], seeds=len(SEEDS),
                           **OPTIONS)
    together = run_fixtures.train_run(raw, data_dir, root / "together", MAX_EPOCHS, seed=SEEDS[0],
                                      seeds=len(SEEDS), **OPTIONS)
    separate = {seed: run_fixtures.train_run(raw, data_dir, root / f"seed{seed}", MAX_EPOCHS, seed=seed,
                                             **OPTIONS) for seed in SEEDS}
    yield Env(root, raw, data_dir, together, separate)


def _log(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(workdir: Path) -> dict:
  return jax.device_get(evaluate.load_run(workdir, "best").state.params)


def test_each_seed_trains_as_a_separate_run_would(env):
  for seed in SEEDS:
    folder = env.root / "together" / f"seed_{seed}"
    alone = env.root / f"seed{seed}"
    together_log, alone_log = _log(folder), _log(alone)
    assert [r["epoch"] for r in together_log] == [r["epoch"] for r in alone_log]
    for key in ("train_loss", "val_loss"):
      np.testing.assert_allclose([r[key] for r in together_log], [r[key] for r in alone_log], rtol=1e-5)
    per_seed = env.together["per_seed"][str(seed)]
    assert per_seed["checkpoint_step"] == env.separate[seed]["best_epoch"]
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), _params(folder), _params(alone))
    loss_gap = max(abs(a["val_loss"] / b["val_loss"] - 1) for a, b in zip(together_log, alone_log))
    print(f"seed {seed}: largest parameter difference {max(jax.tree.leaves(diffs)):.2e}, "
          f"largest relative val_loss difference {loss_gap:.2e}")
    assert max(jax.tree.leaves(diffs)) < 1e-4, seed
    for test_set, scores in per_seed["test"].items():
      expected = env.separate[seed]["test"][test_set]
      pixels = sum(expected[k] for k in ("tp", "fp", "fn", "tn"))
      for key in ("tp", "fp", "fn", "tn"):
        assert abs(scores[key] - expected[key]) <= 0.001 * pixels, (seed, test_set, key)


def test_seeds_stop_on_their_own_and_a_stopped_seed_is_frozen(env):
  epochs = {seed: len(_log(env.root / "together" / f"seed_{seed}")) for seed in SEEDS}
  # The fixture makes the seeds stop at different epochs: one went on while the other was frozen.
  assert len(set(epochs.values())) == 2, epochs
  for seed in SEEDS:
    assert epochs[seed] == len(_log(env.root / f"seed{seed}"))  # where the separate run stopped
  # The frozen seed's latest checkpoint is its stopping epoch, with its separate run's parameters.
  first = min(epochs, key=epochs.get)
  run = evaluate.load_run(env.root / "together" / f"seed_{first}", "latest")
  assert run.step == epochs[first]
  alone = evaluate.load_run(env.root / f"seed{first}", "latest")
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), jax.device_get(run.state.params),
                       jax.device_get(alone.state.params))
  assert max(jax.tree.leaves(diffs)) < 1e-4
  assert int(run.state.step) == int(alone.state.step)  # no Adam step taken while frozen


def test_metrics_give_every_seed_and_their_mean_and_spread(env):
  summary = run_fixtures.read_json(env.root / "together" / "metrics.json")
  assert summary == json.loads(json.dumps(env.together))
  assert summary["seeds"] == list(SEEDS)
  for test_set, mean in summary["test"].items():
    for key in ("precision", "recall", "f1", "iou"):
      values = [summary["per_seed"][str(s)]["test"][test_set][key] for s in SEEDS]
      assert mean[key] == pytest.approx(np.mean(values), abs=1e-12)
      assert summary["test_std"][test_set][key] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    values = [summary["per_seed"][str(s)]["test"][test_set]["objects"]["f1"] for s in SEEDS]
    assert mean["objects"]["f1"] == pytest.approx(np.mean(values), abs=1e-12)
  # Each seed's folder is a complete run: its own metrics.json, loadable by launch.evaluate.
  for seed in SEEDS:
    folder = env.root / "together" / f"seed_{seed}"
    assert run_fixtures.read_json(folder / "metrics.json")["test"] == summary["per_seed"][str(seed)]["test"]
    assert evaluate.load_run(folder, "best").config.seed == seed
  # Loading the experiment's own folder as one run names the seed folders instead.
  with pytest.raises(InputError, match="2 seeds trained together") as err:
    evaluate.load_run(env.root / "together")
  assert f"--workdir={env.root / 'together' / 'seed_1'}" in str(err.value)


def test_evaluate_scores_every_seed_and_their_spread(env, capsys):
  result = evaluate.evaluate_run(env.root / "together", write_maps=False)
  for seed in SEEDS:
    # The same checkpoints, threshold and data as training's scoring: the same pixel counts.
    trained = env.together["per_seed"][str(seed)]["test"]
    for test_set, scores in result["per_seed"][str(seed)]["test"].items():
      assert [scores[k] for k in ("tp", "fp", "fn", "tn")] == [trained[test_set][k] for k in ("tp", "fp", "fn", "tn")]
    assert (env.root / "together" / f"seed_{seed}" / "eval" / "metrics.json").is_file()
  assert result["test"]["all"]["f1"] == pytest.approx(env.together["test"]["all"]["f1"], abs=1e-12)
  assert run_fixtures.read_json(env.root / "together" / "eval" / "metrics.json") == json.loads(json.dumps(result))
  printed = capsys.readouterr().out
  assert "over 2 seeds (mean +- std over seeds)" in printed and "seed 1" in printed


def test_sweep_tables_read_the_mean_of_the_seeds(env):
  md, _ = sweep.scenario_table({("china", "unet", run_fixtures.PATCH): env.together}, "china",
                               (run_fixtures.PATCH,), ("unet",))
  header, row = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
  cells = dict(zip(header, row))
  assert cells["china F1"] == f"{env.together['test']['china']['f1']:.3f}"
  assert cells["china F1 std"] == f"{env.together['test_std']['china']['f1']:.3f}"
  assert cells["china object F1"] == f"{env.together['test']['china']['objects']['f1']:.3f}"


def test_bad_seed_counts_are_refused_in_one_line():
  for seeds in (0, 65):
    with pytest.raises(InputError, match="--seeds"):
      train.check_config(train.TrainConfig(seeds=seeds))


def test_seed_folders_are_named_by_seed(tmp_path):
  config = train.TrainConfig(workdir=str(tmp_path / "run"), seed=5, seeds=3)
  assert multi_seed.seed_values(config) == [5, 6, 7]
  one = multi_seed.seed_config(config, 6)
  assert (one.seed, one.seeds, Path(one.workdir)) == (6, 1, tmp_path / "run" / "seed_6")


def test_vmapped_and_unrolled_seed_steps_agree(monkeypatch):
  """The accelerators' form (vmap) against CPU's (unrolled), one step of two seeds on their own batches."""
  config = train.TrainConfig(patch=32, batch_size=2)
  states = multi_seed.stack([train.initial_state(config, seed) for seed in SEEDS])
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(1, 2, 2, 32, 32, 5)).astype(np.float32),
           "mask": (rng.random((1, 2, 2, 32, 32, 1)) < 0.2).astype(np.uint8),
           "valid": np.ones((1, 2, 2, 32, 32, 1), np.uint8), "weight": np.ones((1, 2, 2, 32, 32, 1), np.float32)}
  active = np.array([[True, False]])  # the second seed frozen
  outs = {}
  for form in ("vmap", "unroll"):
    monkeypatch.setitem(multi_seed.SEED_BATCHING_BY_BACKEND, jax.default_backend(), form)
    step = jax.pmap(multi_seed.seeds_train_step, axis_name=train.AXIS, devices=jax.local_devices()[:1])
    outs[form] = jax.device_get(step(jax.tree.map(lambda x: x[None], states), batch, active))
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), outs["vmap"], outs["unroll"])
  assert max(jax.tree.leaves(diffs)) < 1e-4
  new_states = outs["unroll"][0]
  frozen = jax.tree.map(lambda a, b: np.array_equal(a[0][1], np.asarray(b)[1]), new_states.params, states.params)
  moved = jax.tree.map(lambda a, b: not np.array_equal(a[0][0], np.asarray(b)[0]), new_states.params, states.params)
  assert all(jax.tree.leaves(frozen)) and any(jax.tree.leaves(moved))
