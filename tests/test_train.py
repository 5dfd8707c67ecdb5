"""Tests of training (landslide_jax/train.py, launch/train.py).

Runs are tiny (three 64 x 320 px sites, 32 px patches, U-Net, 1-4 epochs) and share the prepared datasets
and a persistent XLA compilation cache, so the whole file takes a few minutes on 2 CPU cores; most of it
is compiling the first train step. Multi-device and multi-process runs, kills and bad command lines run
in subprocesses. Exact equalities (resume, kill, seeds) assume one deterministic backend (CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from landslide_jax import constants, input_pipeline, loss_weights, prepare, train
from landslide_jax.errors import InputError
from tests import train_fixtures
from tests.conftest import ROOT

MAX_EPOCHS = 4
# With this seed the tiny runs' validation loss is lowest at epoch 1 and not at the last epoch, so the
# best and the latest checkpoints differ (test_checkpoints_keep_best_and_latest checks it still holds).
SEED = 1
FOUR_DEVICES = "--xla_force_host_platform_device_count=4"
SUBPROCESS_TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class Env:
  """Prepared inputs shared by every run of this module."""
  root: Path
  raw: Path
  data_dir: Path
  cache: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Raw sites and their p32 datasets, plus a compilation cache used in-process and by subprocesses.

  Every run compiles the same programs (a new `jax.pmap` per run misses jax's in-memory caches); the
  persistent cache turns ~25 s of compilation per run into a lookup.
  """
  root = tmp_path_factory.mktemp("train")
  raw = train_fixtures.write_sites(root / "raw")
  data_dir = root / "tfds"
  prepare.prepare(constants.SITE_NAMES, (train_fixtures.PATCH,), data_dir, raw,
                  constants.parse_channels(train_fixtures.CHANNELS, constants.SITE_CHANNELS))
  cache = root / "jax_cache"
  saved = {name: getattr(jax.config, name) for name in
           ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  compilation_cache.set_cache_dir(str(cache))
  compilation_cache.reset_cache()  # the cache is looked up once per process; make it look again
  yield Env(root, raw, data_dir, cache)
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _train(env: Env, workdir: Path, **overrides) -> dict:
  """An in-process run on China (scored on all sites and 'all'), as `launch.train` would do it."""
  # loss_weights="unet" (not the default) so the runs exercise the weight maps; SEED was chosen with it.
  kwargs = dict(scenario="china", patch=train_fixtures.PATCH, model="unet", workdir=str(workdir),
                data_dir=str(env.data_dir), manual_dir=str(env.raw), max_epochs=MAX_EPOCHS, patience=10,
                seed=SEED, loss_weights="unet")
  kwargs.update(overrides)
  return train.train_from_flags(channels=train_fixtures.CHANNELS, **kwargs)


def _launch_args(env: Env, workdir: Path, *flags: str) -> list[str]:
  return [sys.executable, "-m", "launch.train", "--scenario=china", f"--patch={train_fixtures.PATCH}",
          "--model=unet", f"--workdir={workdir}", f"--data_dir={env.data_dir}",
          f"--manual_dir={env.raw}", "--patience=10", f"--seed={SEED}", "--loss_weights=unet", *flags]


def _subprocess_env(env: Env | None = None, **extra: str) -> dict[str, str]:
  out = dict(os.environ, **extra)
  if env is not None:
    out.update(JAX_COMPILATION_CACHE_DIR=str(env.cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return out


def _snapshot(workdir: Path) -> dict:
  """What a run leaves to compare: metrics.json and metrics.jsonl without the wall-clock field."""
  epochs = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
  for record in epochs:
    record.pop("seconds")
  return {"metrics": json.loads((workdir / "metrics.json").read_text()), "epochs": epochs}


def _checkpoint_steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / train.CHECKPOINT_DIR).iterdir() if p.name.isdigit())


def _committed(workdir: Path, step: int) -> bool:
  # orbax writes `<step>.orbax-checkpoint-tmp...` and renames it to `<step>` once complete.
  return (workdir / train.CHECKPOINT_DIR / str(step) / "commit_success.txt").is_file()


@pytest.fixture(scope="module")
def reference(env):
  """One uninterrupted run of MAX_EPOCHS epochs."""
  workdir = env.root / "reference"
  _train(env, workdir)
  return workdir


@pytest.fixture(scope="module")
def short_run(env):
  """A fresh run of 2 epochs (the first half of the resume test, and a seed-test baseline)."""
  workdir = env.root / "short"
  _train(env, workdir, max_epochs=2)
  return workdir


# ----------------------------------------------------------------------------------------------------------
# 1. Data parallelism: 4 devices take the same step as 1 device on the same global batch.


def test_pmap_four_devices_equal_one_device():
  proc = subprocess.run([sys.executable, "-m", "tests.train_fixtures", "pmap_equivalence"], cwd=ROOT,
                        env=_subprocess_env(XLA_FLAGS=FOUR_DEVICES, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(report) == {"unet", "resunet"}
  assert report["resunet"]["has_batch_stats"] and not report["unet"]["has_batch_stats"]
  for name, result in report.items():
    assert result["param_change"] > 1e-3, (name, result)  # the step did move the parameters
    for key, diff in result["diff"].items():
      assert diff < 1e-5, (name, key, result)


# ----------------------------------------------------------------------------------------------------------
# 2. Loss: weighted by the pixel weight map (0 where invalid), equal to the log-sigmoid formula.


def _numpy_bce(logits, mask, valid, pos_weight):
  z, y = np.asarray(logits, np.float64), np.asarray(mask, np.float64)
  # -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], with log sigmoid(z) = -log(1 + exp(-z)).
  loss = y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z)
  weight = np.asarray(valid, np.float64) * np.where(y == 1, pos_weight, 1.0)
  return float(np.sum(loss * weight))


def _weight(mask, valid, pos_weight):
  return (valid * np.where(mask == 1, pos_weight, 1.0)).astype(np.float32)


def test_weighted_bce_known_answer():
  logits = np.array([[[[2.0], [-1.0]], [[0.5], [-3.0]]]], np.float32)
  mask = np.array([[[[1], [0]], [[0], [1]]]], np.uint8)
  valid = np.array([[[[1], [1]], [[0], [1]]]], np.uint8)
  loss = train.weighted_bce_sum(logits, mask, _weight(mask, valid, 2.5))
  expected = 2.5 * math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)) + 2.5 * math.log1p(math.exp(3.0))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  np.testing.assert_allclose(float(loss), _numpy_bce(logits, mask, valid, 2.5), rtol=1e-6)


def test_weighted_bce_ignores_invalid_pixels():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (2, 8, 8, 1)).astype(np.float32)
  mask = (rng.random((2, 8, 8, 1)) < 0.3).astype(np.uint8)
  valid = (rng.random((2, 8, 8, 1)) < 0.6).astype(np.uint8)
  base = float(train.weighted_bce_sum(logits, mask, _weight(mask, valid, 3.0)))
  invalid = valid == 0
  logits2 = np.where(invalid, rng.normal(0, 50, logits.shape), logits).astype(np.float32)
  mask2 = np.where(invalid, 1 - mask, mask).astype(np.uint8)
  assert float(train.weighted_bce_sum(logits2, mask2, _weight(mask2, valid, 3.0))) == base
  np.testing.assert_allclose(base, _numpy_bce(logits, mask, valid, 3.0), rtol=1e-5)
  # Sanity of the check itself: the same change on valid pixels does change the loss.
  ones = np.ones_like(valid)
  assert float(train.weighted_bce_sum(logits2, mask2, _weight(mask2, ones, 3.0))) != pytest.approx(
      float(train.weighted_bce_sum(logits, mask, _weight(mask, ones, 3.0))))


def test_test_split_scores_come_from_one_padded_pass():
  # The end-of-training test scores take the probabilities and the plain BCE from one forward pass per
  # window, in zero-padded batches: 7 windows in batches of 4 must give what one call on all 7 gives.
  import optax  # pylint: disable=import-outside-toplevel
  from landslide_jax.models import UNet  # pylint: disable=import-outside-toplevel
  model = UNet(features=(8, 16), bottleneck=16)
  variables = train_fixtures.init_variables(model, (1, 16, 16, 5))
  state = train.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.sgd(0.1),
                                  batch_stats=variables.get("batch_stats"))
  rng = np.random.default_rng(3)
  n = 7
  valid = (rng.random((n, 16, 16, 1)) < 0.7).astype(np.uint8)
  data = input_pipeline.SplitData(
      image=rng.normal(size=(n, 16, 16, 5)).astype(np.float32),
      mask=(rng.random((n, 16, 16, 1)) < 0.3).astype(np.uint8), valid=valid,
      row=np.zeros(n, np.int64), col=np.zeros(n, np.int64), site=np.array(["china"] * n))
  probs, bce_sum = train.split_probabilities_and_bce(state, data, batch_size=4)
  logits, _ = train.apply_model(state, state.params, data.image, train=False)
  np.testing.assert_allclose(bce_sum, _numpy_bce(logits, data.mask, valid, 1.0), rtol=1e-5)
  expected = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)[..., 0]))
  np.testing.assert_allclose(probs, expected, atol=1e-6)
  np.testing.assert_array_equal(probs, train.split_probabilities(state, data.image, batch_size=4))


@pytest.mark.parametrize("kind", ["none", "class", "unet"])
def test_pixel_weights_multiply_landslide_pixels_by_pos_weight(kind):
  rng = np.random.default_rng(2)
  mask = (rng.random((3, 16, 16, 1)) < 0.2).astype(np.uint8)
  valid = (rng.random((3, 16, 16, 1)) < 0.9).astype(np.uint8)
  data = input_pipeline.SplitData(np.zeros((3, 16, 16, 5), np.float32), mask, valid,
                                  np.zeros(3, np.int32), np.zeros(3, np.int32), np.array(["x"] * 3))
  base = train.pixel_weights(data, train.TrainConfig(loss_weights=kind))
  np.testing.assert_array_equal(base, loss_weights.weight_maps(mask, valid, kind))
  heavier = train.pixel_weights(data, train.TrainConfig(loss_weights=kind, pos_weight=4.0))
  np.testing.assert_allclose(heavier, base * np.where(mask == 1, 4.0, 1.0), rtol=1e-6)
  assert not heavier[valid == 0].any()


# ----------------------------------------------------------------------------------------------------------
# 3. Early stopping.


def test_early_stopping_stops_after_patience_epochs_without_improvement(env, tmp_path, capsys):
  # --learning_rate=0 is rejected by check_config, so a stalled validation loss is made with min_delta:
  # no decrease of 1e9 ever counts as an improvement. Epoch 1 improves on +inf; then `patience` epochs
  # without improvement stop the run (Keras's meaning): patience + 1 epochs in all. flax's own
  # EarlyStopping would run one more.
  patience = 2
  workdir = tmp_path / "stalled"
  result = _train(env, workdir, max_epochs=10, patience=patience, min_delta=1e9)
  out = capsys.readouterr().out
  epochs = _snapshot(workdir)["epochs"]
  assert [r["epoch"] for r in epochs] == list(range(1, patience + 2))
  assert f"early stopping after epoch {patience + 1}" in out
  assert _checkpoint_steps(workdir)[-1] == patience + 1
  best = min(epochs, key=lambda r: r["val_loss"])["epoch"]
  assert result["best_epoch"] == best  # the best checkpoint is by val_loss, not by the stopper

  # The stopper's state is checkpointed: running the same command again trains no further epoch.
  again = _train(env, workdir, max_epochs=10, patience=patience, min_delta=1e9)
  assert f"resuming from epoch {patience + 1}" in capsys.readouterr().out
  assert [r["epoch"] for r in _snapshot(workdir)["epochs"]] == list(range(1, patience + 2))
  assert again == result


@pytest.mark.parametrize("patience, losses, stop_after", [
    (2, [1.0, 1.1, 1.2, 0.5], 3),             # two epochs without improvement stop the run
    (2, [1.0, 1.1, 0.9, 1.0, 1.0], 5),        # an improvement resets the count
    (0, [1.0, 1.1], 2),                       # patience 0: the first epoch without improvement
    (2, [float("nan"), 1.0, 1.1, 1.2], 4),    # NaN first: no improvement, and 1.0 still improves after
    (1, [1.0, float("nan")], 2),              # NaN later counts as an epoch without improvement
])
def test_update_early_stopping(patience, losses, stop_after):
  from flax.training import early_stopping  # pylint: disable=import-outside-toplevel
  stopper = early_stopping.EarlyStopping(patience=patience)
  for epoch, loss in enumerate(losses, start=1):
    stopper = train.update_early_stopping(stopper, loss)
    assert stopper.should_stop == (epoch >= stop_after), (epoch, stopper)
    if stopper.should_stop:
      break
  assert math.isfinite(stopper.best_metric)


def test_best_checkpoint_is_the_lowest_finite_validation_loss(tmp_path):
  # orbax orders by the metric; NaN compares false both ways, so before the fix a diverged epoch could
  # displace the best checkpoint. Tiny items: the ordering, not the model, is under test.
  manager = train.checkpoint_manager(tmp_path)
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  for step, loss in enumerate([0.5, float("nan"), 0.7, float("inf"), float("nan")], start=1):
    manager.save(step, args=ocp.args.StandardSave({"x": np.full(2, step)}), metrics={"val_loss": loss})
  manager.wait_until_finished()
  assert manager.best_step() == 1
  assert sorted(manager.all_steps()) == [1, 5]  # the best and the latest, nothing else
  manager.close()


def test_non_finite_training_loss_stops_with_the_best_checkpoint(env, tmp_path, capsys, monkeypatch):
  # Every training batch of epoch 2 holds a NaN pixel; validation and test batches stay clean.
  poison = {"on": False}
  batch_plan, gather = input_pipeline.batch_plan, input_pipeline.gather

  def plan(*args, **kwargs):
    poison["on"] = kwargs["shuffle"] and kwargs["epoch"] >= 2  # training plans shuffle, eval's don't
    return batch_plan(*args, **kwargs)

  def poisoned(*args, **kwargs):
    batch = gather(*args, **kwargs)
    if poison["on"]:
      batch["image"] = batch["image"].copy()
      batch["image"].flat[0] = np.nan
    return batch
  monkeypatch.setattr(input_pipeline, "batch_plan", plan)
  monkeypatch.setattr(input_pipeline, "gather", poisoned)
  workdir = tmp_path / "diverged"
  result = _train(env, workdir, max_epochs=5)
  out = capsys.readouterr().out
  assert "training diverged" in out and "epoch   2" in out
  assert result["stopped"] == "training loss non-finite at epoch 2"
  assert result["best_epoch"] == 1
  assert _checkpoint_steps(workdir) == [1]  # the diverged state was never saved
  assert all(math.isfinite(s["f1"]) for s in result["test"].values())


# ----------------------------------------------------------------------------------------------------------
# 4. Checkpoints: best and latest kept; resuming equals an uninterrupted run.


def test_checkpoints_keep_best_and_latest(reference, short_run):
  bests = []
  for workdir, last in ((reference, MAX_EPOCHS), (short_run, 2)):
    epochs = _snapshot(workdir)["epochs"]
    assert [r["epoch"] for r in epochs] == list(range(1, last + 1))
    best = min(epochs, key=lambda r: r["val_loss"])["epoch"]
    bests.append(best)
    assert _checkpoint_steps(workdir) == sorted({best, last})
    assert all(_committed(workdir, step) for step in {best, last})
    assert not [p for p in (workdir / train.CHECKPOINT_DIR).iterdir() if "tmp" in p.name]
    assert json.loads((workdir / "metrics.json").read_text())["best_epoch"] == best
  # Keeping only the latest would pass the above if the best were always the last epoch.
  assert bests != [MAX_EPOCHS, 2], f"SEED={SEED} no longer gives a best epoch before the last"


def _copy_run(src: Path, dst: Path) -> Path:
  shutil.copytree(src, dst)
  return dst


@pytest.mark.parametrize("override, phrase", [
    (dict(scenario="taiwan"), "scenario='china', now 'taiwan'"),
    (dict(loss_weights="none"), "loss_weights='unet', now 'none'"),
    (dict(seed=SEED + 1), f"seed={SEED}, now {SEED + 1}"),
])
def test_workdir_of_another_experiment_is_refused(env, short_run, tmp_path, override, phrase):
  # Before: --scenario=taiwan in a China run's folder printed "resuming", trained nothing and wrote
  # China's scores under Taiwan's name.
  workdir = _copy_run(short_run, tmp_path / "run")
  before = _snapshot(workdir)
  with pytest.raises(InputError) as err:
    _train(env, workdir, max_epochs=2, **override)
  assert err.value.path == str(workdir)
  assert f"holds a run made with other options ({phrase})" in str(err.value)
  assert "pass another --workdir" in str(err.value)
  assert _snapshot(workdir) == before


def test_workdir_whose_datasets_were_rebuilt_is_refused(env, short_run, tmp_path):
  workdir = _copy_run(short_run, tmp_path / "run")
  config = json.loads((workdir / "config.json").read_text())
  config["datasets"]["china"]["input_hash"] = "0" * 64  # as if trained on china's former raw inputs
  (workdir / "config.json").write_text(json.dumps(config))
  with pytest.raises(InputError, match="was trained on a china dataset built from other raw inputs"):
    _train(env, workdir, max_epochs=2)


def test_workdir_from_an_older_version_is_refused(env, short_run, tmp_path):
  workdir = _copy_run(short_run, tmp_path / "run")
  config = json.loads((workdir / "config.json").read_text())
  del config["datasets"]  # what the previous version wrote
  (workdir / "config.json").write_text(json.dumps(config))
  with pytest.raises(InputError, match="is not a config.json this version of landslide_jax wrote"):
    _train(env, workdir, max_epochs=2)


def test_config_records_each_datasets_identity(short_run, env):
  config = json.loads((short_run / "config.json").read_text())
  assert sorted(config["datasets"]) == ["china", "japan", "taiwan"]
  for name, record in config["datasets"].items():
    channels = constants.parse_channels(train_fixtures.CHANNELS, constants.SITE_CHANNELS)
    metadata = json.loads((input_pipeline.dataset_dir(name, train_fixtures.PATCH, channels,
                                                       env.data_dir) / "metadata.json").read_text())
    assert record == {"source": metadata["source"], "input_hash": metadata["input_hash"],
                      "s2_add_offset": metadata["s2_add_offset"]}
    assert record["s2_add_offset"] == {b: 0.0 for b in ("B2", "B3", "B4", "B8")}


def test_resume_equals_uninterrupted_run(env, reference, short_run, tmp_path, capsys):
  workdir = tmp_path / "resumed"
  shutil.copytree(short_run, workdir)
  # As if the 2-epoch run had gone on and been killed while saving epoch 3: its line is logged and an
  # unfinished orbax directory is left. Both must be dropped, and epoch 3 run again from checkpoint 2.
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"epoch": 3, "train_loss": 9.0, "val_loss": 9.0, "seconds": 1.0}) + "\n")
  checkpoints = workdir / train.CHECKPOINT_DIR
  partial = checkpoints / "3.orbax-checkpoint-tmp"
  shutil.copytree(checkpoints / "2", partial)
  (partial / "commit_success.txt").unlink()
  _train(env, workdir)
  assert "resuming from epoch 2" in capsys.readouterr().out
  assert _snapshot(workdir) == _snapshot(reference)
  assert _checkpoint_steps(workdir) == _checkpoint_steps(reference)
  assert not [p for p in checkpoints.iterdir() if "tmp" in p.name]


# ----------------------------------------------------------------------------------------------------------
# 5. A run killed with SIGKILL in epoch 3 and started again ends as an uninterrupted one.


def test_killed_run_resumes_to_the_same_result(env, reference, tmp_path):
  workdir = tmp_path / "killed"
  args = _launch_args(env, workdir, f"--max_epochs={MAX_EPOCHS}")
  log = tmp_path / "first.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(args, cwd=ROOT, env=_subprocess_env(env), stdout=out,
                            stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    # tqdm writes "epoch 3:" when epoch 3's first batch is requested, after checkpoint 2 is committed.
    while not (_committed(workdir, 2) and "epoch 3:" in log.read_text(errors="replace")):
      assert proc.poll() is None, f"run ended before epoch 3:\n{log.read_text()[-3000:]}"
      assert time.monotonic() < deadline, "no checkpoint 2 in time"
      time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  # Killed mid-epoch 3: nothing of epoch 3 was logged or saved.
  assert [json.loads(ln)["epoch"] for ln in (workdir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
  assert 3 not in _checkpoint_steps(workdir)

  rerun = subprocess.run(args, cwd=ROOT, env=_subprocess_env(env), capture_output=True, text=True,
                         timeout=SUBPROCESS_TIMEOUT, check=False)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming from epoch 2" in rerun.stdout
  assert _snapshot(workdir) == _snapshot(reference)


# ----------------------------------------------------------------------------------------------------------
# 6. Seeds.


def test_same_seed_gives_identical_metrics(env, short_run, tmp_path):
  _train(env, tmp_path / "again", max_epochs=2)
  assert _snapshot(tmp_path / "again") == _snapshot(short_run)


def test_other_seed_gives_other_metrics(env, short_run, tmp_path):
  _train(env, tmp_path / "other", max_epochs=1, seed=SEED + 1)
  first = _snapshot(tmp_path / "other")["epochs"][0]
  baseline = _snapshot(short_run)["epochs"][0]
  assert first["epoch"] == baseline["epoch"] == 1
  assert first["train_loss"] != baseline["train_loss"]
  assert first["val_loss"] != baseline["val_loss"]


# ----------------------------------------------------------------------------------------------------------
# 7. Bad command lines and missing datasets: exit 2, one line, nothing written.

BAD_COMMANDS = {
    "unknown_scenario": (["--scenario=mars"], {}, ["--scenario=mars", *input_pipeline.SCENARIOS]),
    "unknown_patch": (["--patch=48"], {}, ["--patch=48", "32, 64, 128"]),
    "unknown_model": (["--model=vgg"], {}, ["--model=vgg", "unet, resunet"]),
    "l4s_without_manual_dir": (["--scenario=landslide4sense"], {}, ["needs --manual_dir"]),
    "empty_manual_dir": (["--scenario=china", "--patch=32", "--manual_dir={empty}"], {},
                         ["{empty}/china", "site folder does not exist"]),
    "batch_not_divisible": (["--batch_size=3"], {"XLA_FLAGS": FOUR_DEVICES, "JAX_PLATFORMS": "cpu"},
                            ["--batch_size=3", "4 devices"]),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
  """Every bad command of BAD_COMMANDS, started at once (each is mostly interpreter start-up)."""
  root = tmp_path_factory.mktemp("bad")
  (root / "empty").mkdir()
  procs = {}
  for name, (flags, extra_env, _) in BAD_COMMANDS.items():
    flags = [f.format(empty=root / "empty") for f in flags]
    args = [sys.executable, "-m", "launch.train", *flags, f"--workdir={root / name / 'run'}",
            f"--data_dir={root / name / 'tfds'}"]
    procs[name] = subprocess.Popen(args, cwd=ROOT, env=_subprocess_env(**extra_env),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    results = {name: (proc, *proc.communicate(timeout=SUBPROCESS_TIMEOUT))
               for name, proc in procs.items()}
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
  return root, results


@pytest.mark.parametrize("name", list(BAD_COMMANDS))
def test_bad_command_is_one_line(bad_runs, name):
  root, results = bad_runs
  proc, _, stderr = results[name]
  assert proc.returncode == 2, stderr
  assert "Traceback" not in stderr, stderr
  lines = [ln for ln in stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  for phrase in BAD_COMMANDS[name][2]:
    assert phrase.format(empty=root / "empty") in lines[0], (phrase, lines[0])
  assert not (root / name).exists()  # neither a run folder nor a data dir was created


# ----------------------------------------------------------------------------------------------------------
# 8. Two processes (jax.distributed on CPU, gloo collectives) with one device each.


def _scored_pixels(scores: dict) -> int:
  return sum(scores[k] for k in ("tp", "fp", "fn", "tn"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(env: Env, workdir: Path, logs: list[Path], *flags: str, returncode: int = 0) -> list[str]:
  """`launch.train` in two processes on one CPU device each; returns their outputs (both exited with
  `returncode`)."""
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = []
  for process_id, log in enumerate(logs):
    extra = dict(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(process_id))
    sub_env = _subprocess_env(env, **extra)
    sub_env.pop("XLA_FLAGS", None)  # one CPU device per process
    with open(log, "w") as out:
      procs.append(subprocess.Popen(_launch_args(env, workdir, "--batch_size=4", *flags),
                                    cwd=ROOT, env=sub_env, stdout=out, stderr=subprocess.STDOUT))
  try:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    # A process that fails leaves the other waiting at the next collective: stop at the first failure.
    while any(p.poll() is None for p in procs) and not (returncode == 0 and any(p.poll() for p in procs)):
      assert time.monotonic() < deadline, "two-process run did not finish in time"
      time.sleep(0.1)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  outputs = [log.read_text(errors="replace") for log in logs]
  for proc, output in zip(procs, outputs):
    assert proc.returncode == returncode, output[-3000:]
  return outputs


def test_two_processes_train_and_only_process_zero_writes(env, reference, tmp_path):
  # Each process batches its own contiguous shard of the examples (input_pipeline.process_shard) and
  # shuffles within it, so the batches, hence the trained weights, differ from a one-process run and
  # only what does not depend on the weights can be compared exactly: the pixel counts scored.
  workdir = tmp_path / "two_processes"
  outputs = _two_processes(env, workdir, [tmp_path / f"process{i}.log" for i in range(2)], "--max_epochs=1")

  config = json.loads((workdir / "config.json").read_text())
  assert config["devices"]["process_count"] == 2 and config["devices"]["global_count"] == 2
  # One line per epoch (process 1 logging too would double it); process 1 prints no scores.
  epochs = _snapshot(workdir)["epochs"]
  assert [r["epoch"] for r in epochs] == [1]
  assert "epoch   1" in outputs[0] and "test scores" in outputs[0]
  assert "epoch   1" not in outputs[1] and "test scores" not in outputs[1]
  assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1
  assert math.isfinite(epochs[0]["train_loss"]) and math.isfinite(epochs[0]["val_loss"])

  # Every valid test pixel is scored exactly once over both processes: as many as in one process.
  ours = json.loads((workdir / "metrics.json").read_text())["test"]
  theirs = json.loads((reference / "metrics.json").read_text())["test"]
  assert set(ours) == set(theirs)
  for test_set, scores in ours.items():
    assert _scored_pixels(scores) == _scored_pixels(theirs[test_set]) > 0, test_set
    assert 0.0 <= scores["f1"] <= 1.0 and math.isfinite(scores["loss"])


def test_two_processes_fall_back_from_a_damaged_checkpoint_together(env, tmp_path):
  # Damage seen in the files is the same for every process: process 0 moves it aside, both resume from
  # the earlier checkpoint and end as the undamaged run did (CPU training is deterministic).
  workdir = tmp_path / "two_processes"
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  _two_processes(env, workdir, logs, "--max_epochs=2")
  undamaged = _snapshot(workdir)
  (workdir / train.CHECKPOINT_DIR / "2" / "_CHECKPOINT_METADATA").unlink()
  outputs = _two_processes(env, workdir, logs, "--max_epochs=2")
  notes = [ln for ln in outputs[0].splitlines() if ln.startswith("note: ")]
  assert len(notes) == 1 and "checkpoint file is missing" in notes[0], outputs[0][-3000:]
  assert "resuming from the earlier checkpoint of epoch 1" in notes[0]
  assert not any(ln.startswith("note: ") for ln in outputs[1].splitlines()), outputs[1][-3000:]
  assert (workdir / train.DAMAGED_CHECKPOINT_DIR / "2").is_dir()
  assert _checkpoint_steps(workdir)[-1] == 2 and _committed(workdir, 2)
  assert _snapshot(workdir) == undamaged

  # Damaged array data shows only when restoring, maybe in one process only: both stop in one line
  # (neither waits at a collective for the other), saying which checkpoint to move aside.
  largest = max((p for p in (workdir / train.CHECKPOINT_DIR / "2").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])
  outputs = _two_processes(env, workdir, logs, "--max_epochs=2", returncode=2)
  for output in outputs:
    errors = [ln for ln in output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert errors[0].startswith(f"error: {workdir / train.CHECKPOINT_DIR / '2'}: checkpoint cannot be "
                                "restored ("), errors[0]
    assert errors[0].endswith(f"move it into {workdir / train.DAMAGED_CHECKPOINT_DIR}/ and run the same "
                              "command: it resumes from the checkpoint of epoch 1"), errors[0]
