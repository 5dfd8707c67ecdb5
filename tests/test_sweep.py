"""Tests of the experiment grid (landslide_jax/sweep.py, launch/sweep.py).

A reduced grid (scenarios China and Japan, 32 px, U-Net, 1 epoch each) on the learnable sites of
tests/run_fixtures.py is run once per module; the other tests skip, resume or refuse its runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from landslide_jax import sweep, train
from landslide_jax.errors import InputError
from tests import run_fixtures
from tests.conftest import ROOT

SCENARIOS = ("china", "japan")
PATCHES = (run_fixtures.PATCH,)
MODELS = ("unet",)
TABLES = {"china": "table6_scenario3", "japan": "table7_scenario4"}
FIGURES = ("fig10_mean_f1_by_scenario.png", "fig11_mean_f1_by_patch.png", "transferability.png")
TEXT_FILES = tuple(f"{stem}.{ext}" for stem in TABLES.values() for ext in ("md", "csv")) + ("summary.md",)
SUBPROCESS_TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class Env:
  root: Path
  raw: Path
  data_dir: Path
  runs: Path
  base: train.TrainConfig


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  with run_fixtures.learnable_module_env(tmp_path_factory, "sweep") as (root, raw, data_dir, _):
    options = {k: v for k, v in run_fixtures.RUN_OPTIONS.items() if k not in ("patch", "model")}
    base = train.TrainConfig(data_dir=str(data_dir), manual_dir=str(raw), max_epochs=1,
                             channels=run_fixtures.CHANNEL_TUPLE, **options)
    yield Env(root, raw, data_dir, root / "runs", base)


def _sweep(env: Env, out: Path, base: train.TrainConfig | None = None) -> list[Path]:
  return sweep.sweep(SCENARIOS, PATCHES, MODELS, out, env.runs, base or env.base)


def _text_files(out: Path) -> dict[str, str]:
  return {name: (out / name).read_text() for name in TEXT_FILES}


@pytest.fixture(scope="module")
def swept(env):
  """The grid run once: (its output folder, its text files, each run's metrics.json by scenario)."""
  out = env.root / "results"
  written = _sweep(env, out)
  assert sorted(written) == sorted([out / n for n in TEXT_FILES + FIGURES])
  metrics = {s: run_fixtures.read_json(_run_dir(env, s) / "metrics.json") for s in SCENARIOS}
  return out, _text_files(out), metrics


def _run_dir(env: Env, scenario: str) -> Path:
  return sweep.run_dir(env.runs, scenario, "unet", run_fixtures.PATCH)


def _epochs(workdir: Path) -> list[int]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(ln)["epoch"] for ln in lines if ln.strip()]


# ----------------------------------------------------------------------------------------------------------
# Tables, figures, summary


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_tables_hold_the_runs_scores(swept, scenario):
  out, texts, metrics = swept
  stem = TABLES[scenario]
  header = ["model", "patch"] + [f"{t} {m}" for t in ("taiwan", "china", "japan", "all")
                                 for m in ("P", "R", "F1", "object F1")]
  expected_row = ["U-Net", "32"]
  for test_set in ("taiwan", "china", "japan", "all"):
    scores = metrics[scenario]["test"][test_set]
    expected_row += [f"{scores[k]:.3f}" for k in ("precision", "recall", "f1")]
    expected_row.append(f"{scores['objects']['f1']:.3f}")
  assert list(csv.reader(io.StringIO(texts[f"{stem}.csv"]))) == [header, expected_row]

  lines = texts[f"{stem}.md"].splitlines()
  number = 6 if scenario == "china" else 7
  assert lines[0] == f"# Table {number}: scenario {number - 3}, trained on {scenario}"
  rows = [[cell.strip() for cell in ln.strip("|").split("|")] for ln in lines if ln.startswith("| ")]
  assert rows == [header, expected_row]
  # Only the scenarios of the grid get a table.
  assert sorted(p.name for p in out.glob("table*")) == sorted(
      f"{s}.{e}" for s in TABLES.values() for e in ("md", "csv"))


def test_figures_are_pngs(swept):
  out, _, _ = swept
  for name in FIGURES:
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    image = matplotlib.image.imread(out / name)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name


def test_summary_holds_the_transferability_matrix(swept):
  _, texts, metrics = swept
  summary = texts["summary.md"].splitlines()
  assert "| trained on \\ tested on | taiwan | china | japan | all |" in summary
  for scenario in SCENARIOS:
    # One run per scenario, so each cell is that run's F1 on the test set.
    f1 = [metrics[scenario]["test"][t]["f1"] for t in ("taiwan", "china", "japan", "all")]
    assert f"| {scenario} | " + " | ".join(f"{v:.3f}" for v in f1) + " |" in summary
    mean = np.mean(f1[:3])  # the winners table averages the three sites
    assert f"| {scenario} | U-Net ({mean:.3f}) | 32 px ({mean:.3f}) |" in summary
  # The scores are not all equal, so a wrong cell would show.
  values = {metrics[s]["test"][t]["f1"] for s in SCENARIOS for t in ("taiwan", "china", "japan")}
  assert len(values) > 1


# ----------------------------------------------------------------------------------------------------------
# Skipping and resuming


def test_second_call_skips_finished_runs(env, swept, monkeypatch, capsys):
  def no_training(config):
    raise AssertionError(f"trained {config.workdir} again")

  monkeypatch.setattr(train, "train_and_evaluate", no_training)
  out = env.root / "results_again"
  _sweep(env, out)
  assert _text_files(out) == swept[1]
  assert capsys.readouterr().out.count("finished, skipped") == len(SCENARIOS)


def test_unfinished_run_resumes_from_its_checkpoint(env, swept, capsys):
  out, texts, metrics = swept
  workdir = _run_dir(env, "china")
  epochs = _epochs(workdir)
  assert epochs == [1]
  (workdir / "metrics.json").unlink()  # as if killed after its last checkpoint, before scoring
  (out / "table6_scenario3.csv").unlink()
  _sweep(env, out)
  printed = capsys.readouterr().out
  assert "china-unet-p32: training" in printed and "japan-unet-p32: finished, skipped" in printed
  assert f"resuming from epoch 1 in {workdir}" in printed
  assert "epoch   1" not in printed  # no epoch trained again
  assert _epochs(workdir) == epochs
  assert run_fixtures.read_json(workdir / "metrics.json") == metrics["china"]
  assert _text_files(out) == texts  # the tables were written again, with the same scores


@pytest.mark.parametrize("option, value, saved", [
    ("compute_dtype", "bfloat16", "compute_dtype='float32', now 'bfloat16'"),
    ("loss_weights", "unet", "loss_weights='class', now 'unet'")])
def test_run_made_with_other_options_is_refused(env, swept, monkeypatch, option, value, saved):
  monkeypatch.setattr(train, "train_and_evaluate", lambda config: pytest.fail("must not train"))
  with pytest.raises(InputError) as err:
    _sweep(env, env.root / "other", dataclasses.replace(env.base, **{option: value}))
  assert err.value.path == str(_run_dir(env, "china"))
  assert f"holds a run made with other options ({saved})" in str(err.value)
  assert "pass another --workdir" in str(err.value)
  assert not (env.root / "other").exists()


def test_finished_run_with_a_longer_stopping_rule_is_resumed_not_refused(env, swept, monkeypatch):
  # max_epochs and patience may grow (the same check as launch.train): the run goes back to training,
  # which resumes it from its checkpoints, instead of being skipped as finished or refused.
  handed = []
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda config: handed.append(config.resolved_workdir()) or
                      run_fixtures.read_json(config.resolved_workdir() / "metrics.json"))
  _sweep(env, env.root / "longer", dataclasses.replace(env.base, max_epochs=2))
  assert sorted(handed) == sorted(_run_dir(env, s) for s in SCENARIOS)


def test_cli_refuses_runs_made_with_other_options(env, swept, tmp_path):
  # launch.sweep's defaults (batch 4, lr 1e-3, U-Net loss weights) differ from these runs' options.
  proc = subprocess.run(
      [sys.executable, "-m", "launch.sweep", "--scenarios=china,japan", "--patches=32", "--models=unet",
       "--max_epochs=1", "--seed=1", f"--workdir={env.runs}", f"--out={tmp_path / 'out'}",
       f"--data_dir={env.data_dir}", f"--manual_dir={env.raw}"],
      cwd=ROOT, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"error: {_run_dir(env, 'china')}: holds a run made with other options "
                             "(batch_size=2, now 4, ")
  assert "pass another --workdir" in lines[0]


def test_bad_grid_values_are_refused(env):
  for scenarios, patches, models, flag in ((("peru",), PATCHES, MODELS, "--scenarios"),
                                           (SCENARIOS, (48,), MODELS, "--patches"),
                                           (SCENARIOS, PATCHES, ("vit",), "--models")):
    with pytest.raises(InputError, match=flag):
      sweep.sweep(scenarios, patches, models, env.root / "bad", env.runs, env.base)
  with pytest.raises(InputError, match="must be integers"):
    sweep.sweep_from_flags(["china"], ["big"], ["unet"], str(env.root / "bad"), str(env.runs), env.base)
  assert not (env.root / "bad").exists()


# ----------------------------------------------------------------------------------------------------------
# Aggregates (no training)


def _result(f1_by_test: dict[str, float]) -> dict:
  return {"test": {t: {"f1": v} for t, v in f1_by_test.items()}}


RESULTS = {
    ("china", "unet", 32): _result({"taiwan": 0.1, "china": 0.8, "japan": 0.3, "all": 0.4}),
    ("china", "resunet", 32): _result({"taiwan": 0.3, "china": 0.6, "japan": 0.0, "all": 0.3}),
    ("china", "unet", 64): _result({"taiwan": 0.2, "china": 0.9, "japan": 0.4, "all": 0.5}),
    ("japan", "unet", 32): _result({"taiwan": 0.0, "china": 0.2, "japan": 0.7, "all": 0.3}),
}


def test_mean_f1_known_answers():
  assert sweep.mean_f1(RESULTS) == pytest.approx(np.mean([0.1, 0.8, 0.3, 0.3, 0.6, 0.0, 0.2, 0.9, 0.4,
                                                          0.0, 0.2, 0.7]))
  assert sweep.mean_f1(RESULTS, scenario="china") == pytest.approx((1.2 + 0.9 + 1.5) / 9)
  assert sweep.mean_f1(RESULTS, scenario="china", model="unet") == pytest.approx((1.2 + 1.5) / 6)
  assert sweep.mean_f1(RESULTS, scenario="china", patch=64) == pytest.approx(1.5 / 3)
  assert sweep.mean_f1(RESULTS, model="resunet", tests=("all",)) == pytest.approx(0.3)
  assert sweep.mean_f1(RESULTS, scenario="japan", tests=("japan",)) == pytest.approx(0.7)
  assert math.isnan(sweep.mean_f1(RESULTS, scenario="taiwan"))


def test_transferability_known_answer():
  matrix = sweep.transferability(RESULTS, ("china", "japan", "taiwan"))
  assert matrix.shape == (3, len(sweep.TEST_SETS))
  assert list(sweep.TEST_SETS) == ["taiwan", "china", "japan", "all"]
  np.testing.assert_allclose(matrix[0], [0.2, 2.3 / 3, 0.7 / 3, 0.4])
  np.testing.assert_allclose(matrix[1], [0.0, 0.2, 0.7, 0.3])
  assert np.isnan(matrix[2]).all()  # no run trained on Taiwan


# ----------------------------------------------------------------------------------------------------------
# Figs. 10 and 11 per model, and the summary (no training)


def _scores(f1: float, **by_test: float) -> dict:
  """A metrics.json of one run: F1 `f1` on every test set unless given in `by_test`."""
  return {"test": {t: {"precision": 0.5, "recall": 0.5, "f1": by_test.get(t, f1)} for t in sweep.TEST_SETS}}


def test_fig10_data_known_answer():
  results = {("china", "unet", 32): _scores(0.2, japan=0.0), ("china", "unet", 64): _scores(0.4, japan=0.1),
             ("china", "resunet", 32): _scores(0.6), ("china", "resunet", 64): _scores(0.8, all=1.0),
             ("japan", "unet", 32): _scores(0.5)}
  data = sweep.fig10_data(results, ("china", "japan"), ("unet", "resunet"))
  assert list(data) == ["china", "japan"] and list(data["china"]) == ["unet", "resunet"]
  assert list(data["china"]["unet"]) == list(sweep.TEST_SETS)
  # Mean over the patch sizes, per model and per test set.
  assert data["china"]["unet"] == pytest.approx({"taiwan": 0.3, "china": 0.3, "japan": 0.05, "all": 0.3})
  assert data["china"]["resunet"] == pytest.approx({"taiwan": 0.7, "china": 0.7, "japan": 0.7, "all": 0.8})
  assert data["japan"]["unet"] == pytest.approx(dict.fromkeys(sweep.TEST_SETS, 0.5))
  # No ResU-Net run trained on Japan: NaN, not 0.
  assert all(math.isnan(v) for v in data["japan"]["resunet"].values())
  # Only the patch sizes asked for count.
  only_64 = sweep.fig10_data(results, ("china",), ("unet",), patches=(64,))
  assert only_64["china"]["unet"] == pytest.approx({"taiwan": 0.4, "china": 0.4, "japan": 0.1, "all": 0.4})


def test_fig11_data_known_answer():
  results = {("china", "unet", 32): _scores(0.2), ("china", "unet", 64): _scores(0.4),
             ("china", "resunet", 32): _scores(0.6), ("china", "resunet", 64): _scores(0.8),
             ("japan", "unet", 32): _scores(0.4, taiwan=0.1, all=0.9),
             ("taiwan", "unet", 32): _scores(0.9)}  # a scenario outside the grid below
  data = sweep.fig11_data(results, ("unet", "resunet"), (32, 64, 128), ("china", "japan"))
  assert list(data) == ["unet", "resunet"] and list(data["unet"]) == [32, 64, 128]
  # Over the scenarios and the three sites' test areas (not the "all" test set).
  assert data["unet"][32] == pytest.approx((0.2 * 3 + 0.1 + 0.4 + 0.4) / 6)
  assert data["unet"][64] == pytest.approx(0.4)
  assert data["resunet"][32] == pytest.approx(0.6)
  assert data["resunet"][64] == pytest.approx(0.8)
  # No run at 128 px: NaN, not 0.
  assert math.isnan(data["unet"][128]) and math.isnan(data["resunet"][128])
  # Without a scenario list every scenario counts.
  assert sweep.fig11_data(results, ("unet",), (32,))["unet"][32] == pytest.approx((0.6 + 0.9 + 0.9 * 3) / 9)


# Two scenarios x three patch sizes x two models, one run missing (china, ResU-Net, 128 px). As in the
# paper, U-Net is best at 128 px and ResU-Net at 64 px.
F1_BY_RUN = {("taiwan", "unet", 32): 0.2, ("taiwan", "unet", 64): 0.4, ("taiwan", "unet", 128): 0.6,
             ("taiwan", "resunet", 32): 0.5, ("taiwan", "resunet", 64): 0.9, ("taiwan", "resunet", 128): 0.7,
             ("china", "unet", 32): 0.1, ("china", "unet", 64): 0.2, ("china", "unet", 128): 0.4,
             ("china", "resunet", 32): 0.3, ("china", "resunet", 64): 0.8}
GRID = (("taiwan", "china"), (32, 64, 128), ("unet", "resunet"))


def test_write_results_draws_per_model_figures_and_names_the_best_patch_per_model(tmp_path):
  results = {run: _scores(f1) for run, f1 in F1_BY_RUN.items()}
  written = sweep.write_results(results, tmp_path, *GRID)
  for name in FIGURES:
    assert tmp_path / name in written
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    image = matplotlib.image.imread(tmp_path / name)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
  lines = (tmp_path / "summary.md").read_text().splitlines()
  # Best patch size per model: per scenario, then over the scenarios (Fig. 11).
  assert "| scenario | best patch for U-Net (mean F1) | best patch for ResU-Net (mean F1) |" in lines
  assert "| taiwan | 128 px (0.600) | 64 px (0.900) |" in lines
  assert "| china | 128 px (0.400) | 64 px (0.800) |" in lines
  assert "| all scenarios | 128 px (0.500) | 64 px (0.850) |" in lines
  # Fig. 11's numbers (model x patch) and Fig. 10's (scenario x model x test set).
  assert "| model \\ patch | 32 px | 64 px | 128 px |" in lines
  assert "| U-Net | 0.150 | 0.300 | 0.500 |" in lines
  assert "| ResU-Net | 0.400 | 0.850 | 0.700 |" in lines
  assert "| trained on | model | taiwan | china | japan | all |" in lines
  assert "| taiwan | U-Net | 0.400 | 0.400 | 0.400 | 0.400 |" in lines
  assert "| china | ResU-Net | 0.550 | 0.550 | 0.550 | 0.550 |" in lines  # the 128 px run is missing
  # The winners table and the transferability section are still there.
  assert "| taiwan | ResU-Net (0.700) | 64 px (0.650) |" in lines
  assert "| trained on \\ tested on | taiwan | china | japan | all |" in lines
  assert f"| china | {(0.7 + 1.1) / 5:.3f} | " in "\n".join(lines)


def test_missing_runs_read_nan_and_do_not_crash(tmp_path):
  results = {run: _scores(f1) for run, f1 in F1_BY_RUN.items() if run[0] == "taiwan" and run[1] == "unet"}
  scenarios, patches, models = GRID
  fig10 = sweep.fig10_data(results, scenarios, models, patches)
  assert all(math.isnan(v) for v in fig10["taiwan"]["resunet"].values())
  assert all(math.isnan(v) for m in models for v in fig10["china"][m].values())
  assert fig10["taiwan"]["unet"]["japan"] == pytest.approx(0.4)
  fig11 = sweep.fig11_data(results, models, patches, scenarios)
  assert all(math.isnan(v) for v in fig11["resunet"].values())
  assert fig11["unet"] == pytest.approx({32: 0.2, 64: 0.4, 128: 0.6})
  sweep.write_results(results, tmp_path, *GRID)
  for name in FIGURES:
    assert matplotlib.image.imread(tmp_path / name).ndim == 3, name
  lines = (tmp_path / "summary.md").read_text().splitlines()
  assert "| china | n/a | n/a |" in lines  # no winner where nothing ran
  assert "| taiwan | 128 px (0.600) | n/a |" in lines
  assert "| ResU-Net | n/a | n/a | n/a |" in lines
  assert "| china | U-Net | n/a | n/a | n/a | n/a |" in lines
  assert "| china | n/a | n/a | n/a | n/a |" in lines  # transferability row
  assert not any("nan" in ln or "0.000" in ln for ln in lines)


# ----------------------------------------------------------------------------------------------------------
# --jobs: concurrent trainings


def test_parallel_jobs_give_the_sequential_grids_scores(env, swept, tmp_path, monkeypatch):
  """The same grid trained by 2 concurrent launch.train processes (1 core each) scores exactly as the
  module's sequential sweep: the processes are independent runs."""
  _, _, sequential = swept
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(env.root.parent / "jax_cache"))
  results = sweep.run_grid(SCENARIOS, PATCHES, MODELS, tmp_path / "runs", env.base, jobs=2)
  for scenario in SCENARIOS:
    got = results[(scenario, "unet", run_fixtures.PATCH)]
    for test_set, scores in got["test"].items():
      for key in ("tp", "fp", "fn", "tn"):
        assert scores[key] == sequential[scenario]["test"][test_set][key], (scenario, test_set, key)
    log = (tmp_path / "runs" / f"{scenario}-unet-p{run_fixtures.PATCH}.log").read_text()
    assert "test scores of" in log


def test_job_slots_share_the_cores_and_refuse_more_jobs_than_cores(monkeypatch):
  monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
  slots = sweep.job_slots(2)
  assert [s["LANDSLIDE_JAX_CORES"] for s in slots] == ["0,1,2", "3,4"]
  with pytest.raises(InputError, match="--jobs=6 is more than the 5 cores"):
    sweep.job_slots(6)


def test_a_job_process_runs_on_its_share_of_the_cores():
  """launch/__init__.py applies the share before jax starts (what XLA sizes its thread pool by)."""
  core = sorted(os.sched_getaffinity(0))[-1]
  # As `python -m launch.<name>` would start it (the share applies to launchers only).
  probe = subprocess.run(
      [sys.executable, "-c", "import os, sys; sys.orig_argv[:] = ['python', '-m', 'launch.x']; "
       "import launch; print(sorted(os.sched_getaffinity(0)))"],
      cwd=ROOT, capture_output=True, text=True, env={**run_fixtures.subprocess_env(),
                                                      "LANDSLIDE_JAX_CORES": str(core)},
      timeout=SUBPROCESS_TIMEOUT, check=False)
  assert probe.stdout.strip() == f"[{core}]", probe.stderr[-2000:]


def test_train_command_carries_every_option(env):
  config = dataclasses.replace(env.base, scenario="japan", patch=32, model="resunet", seeds=2,
                               threshold="auto", workdir="/x/run")
  flags_ = dict(arg[2:].split("=", 1) for arg in sweep._train_command(config)[3:])  # pylint: disable=protected-access
  assert flags_["scenario"] == "japan" and flags_["seeds"] == "2" and flags_["threshold"] == "auto"
  assert flags_["channels"] == ",".join(run_fixtures.CHANNEL_TUPLE)
  # Every option of a run is passed on (the process would otherwise train with launch.train's defaults).
  assert set(flags_) == {f.name for f in dataclasses.fields(train.TrainConfig)} - {"b1", "b2"}
  # Adam's betas have no flag: a grid with other betas cannot go to processes without changing them.
  with pytest.raises(InputError, match="b1"):
    sweep._train_command(dataclasses.replace(config, b1=0.8))  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------------------------------
# Seeds: the paper's conclusions against seed spread


def _seeded(f1_per_seed: list[float]) -> dict:
  """A multi-seed run's metrics.json with the given F1 per seed on every test set."""
  per_seed = {str(i): {"test": {t: {"f1": f} for t in sweep.TEST_SETS}} for i, f in enumerate(f1_per_seed)}
  return {"test": {t: {"f1": float(np.mean(f1_per_seed))} for t in sweep.TEST_SETS}, "per_seed": per_seed}


def test_seed_std_f1_known_answer():
  results = {("china", "unet", 32): _seeded([0.2, 0.4]), ("china", "unet", 64): _seeded([0.6, 0.6]),
             ("china", "resunet", 32): _seeded([0.5, 0.7, 0.9]), ("japan", "unet", 32): _scores(0.5)}
  # Per seed, the mean over the two patch sizes: 0.4 and 0.5 -> std (ddof 1) 0.1 / sqrt(2).
  assert sweep.seed_std_f1(results, scenario="china", model="unet") == pytest.approx(0.1 / math.sqrt(2))
  assert sweep.mean_f1(results, scenario="china", model="unet") == pytest.approx(0.45)  # the seeds' mean
  assert sweep.seed_std_f1(results, scenario="china", model="resunet") == pytest.approx(0.2)
  # A single-seed run, or runs with different seeds, have no spread to show: NaN, not 0.
  assert math.isnan(sweep.seed_std_f1(results, scenario="japan"))
  assert math.isnan(sweep.seed_std_f1(results, scenario="china"))
  data = sweep.fig10_data(results, ("china",), ("unet",), stat=sweep.seed_std_f1)
  assert data["china"]["unet"] == pytest.approx(dict.fromkeys(sweep.TEST_SETS, 0.1 / math.sqrt(2)))


def test_bars_carry_whiskers_of_the_seed_spread():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots()
  sweep._draw_bars(ax, ["a", "b", "c"], {"U-Net": [0.5, float("nan"), 0.7]},
                   {"U-Net": [0.1, 0.2, float("nan")]})
  (whiskers,) = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
  (segments,) = whiskers.lines[2]
  # One whisker: the bar at 0.5 +- 0.1; none on the absent bar, none where the spread is unknown.
  np.testing.assert_allclose([seg[:, 1] for seg in segments.get_segments()], [[0.4, 0.6]])
  plt.close(fig)


def test_paired_difference_known_answer():
  d = sweep.paired_difference([0.8, 0.82, 0.81], [0.7, 0.71, 0.72])
  # differences 0.10, 0.11, 0.09: mean 0.1, std 0.01, t(0.975, 2) = 4.3027
  assert d["mean"] == pytest.approx(0.1) and d["std"] == pytest.approx(0.01)
  assert d["half_width"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
  assert d["verdict"] == "holds beyond seed spread"
  assert sweep.paired_difference([0.75, 0.7, 0.72], [0.7, 0.74, 0.70])["verdict"] == "within seed spread"
  assert sweep.paired_difference([0.6, 0.61, 0.6], [0.7, 0.71, 0.72])["verdict"] == "reversed beyond seed spread"


def test_summary_says_which_conclusions_hold_beyond_seed_spread():
  results = {("china", "resunet", 64): _seeded([0.8, 0.82, 0.81]), ("china", "unet", 64): _seeded([0.7, 0.71, 0.72]),
             ("china", "resunet", 128): _seeded([0.75, 0.7, 0.72]), ("china", "unet", 128): _seeded([0.7, 0.74, 0.70])}
  lines = sweep.seed_conclusions(results, ("china",), (64, 128), ("unet", "resunet"))
  text = "\n".join(lines)
  # In-site: mean over patch sizes of ResU-Net - U-Net per seed: (0.10 + 0.05)/2, (0.11 - 0.04)/2, ...
  d = sweep.paired_difference([(0.8 + 0.75) / 2, (0.82 + 0.7) / 2, (0.81 + 0.72) / 2],
                              [(0.7 + 0.7) / 2, (0.71 + 0.74) / 2, (0.72 + 0.70) / 2])
  assert (f"| ResU-Net beats U-Net in-site (china, mean over patch sizes) | F1 ResU-Net - U-Net "
          f"{d['mean']:+.3f} +- {d['std']:.3f} (3 seeds) | {d['verdict']} |") in lines
  # U-Net's paper patch (128 px) against 64 px; ResU-Net's (64 px) against 128 px.
  assert "| U-Net best at 128 px: vs 64 px" in text and "| ResU-Net best at 64 px: vs 128 px" in text
  u = sweep.paired_difference([0.7, 0.74, 0.70], [0.7, 0.71, 0.72])
  assert f"F1 128 px - 64 px {u['mean']:+.3f} +- {u['std']:.3f} (3 seeds) | {u['verdict']} |" in text
  # Single-seed runs cannot be judged, and the summary says so instead of guessing.
  single = {k: {"test": v["test"]} for k, v in results.items()}
  assert any("Not assessed" in ln for ln in sweep.seed_conclusions(single, ("china",), (64, 128),
                                                                     ("unet", "resunet")))
