"""Tests of evaluation from checkpoints (landslide_jax/evaluate.py, launch/evaluate.py).

One tiny run (China, 32 px, U-Net, 3 epochs on the learnable sites of tests/run_fixtures.py) is shared by
the module; its best checkpoint (epoch 2) is not its latest (epoch 3). Scores are recomputed with
scikit-learn from the restored model's own predictions, and the maps are checked pixel by pixel against
them on the site grid.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import affine
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from sklearn import metrics as skm

from landslide_jax import constants, evaluate, input_pipeline, metrics, train
from landslide_jax.data import normalization
from landslide_jax.errors import InputError
from tests import conftest, run_fixtures
from tests.conftest import ROOT

MAX_EPOCHS = 3
# With run_fixtures.RUN_OPTIONS the validation loss rises in epoch 3, so best (2) != latest (3) and a
# restore of the wrong one shows; test_load_run_restores_best_latest_and_step checks this still holds.
BEST_EPOCH = 2
SITES = constants.SITE_NAMES
SUBPROCESS_TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class Env:
  root: Path
  raw: Path
  data_dir: Path
  workdir: Path
  cache: Path
  train_metrics: dict


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  with run_fixtures.learnable_module_env(tmp_path_factory, "evaluate") as (root, raw, data_dir, cache):
    workdir = root / "run"
    train_metrics = run_fixtures.train_run(raw, data_dir, workdir, MAX_EPOCHS)
    yield Env(root, raw, data_dir, workdir, cache, train_metrics)


@pytest.fixture(scope="module")
def evaluated(env):
  """`evaluate_run` with the defaults (best checkpoint, threshold 0.5) and the threshold sweep."""
  result = evaluate.evaluate_run(env.workdir, sweep_thresholds=True)
  return result, run_fixtures.read_json(env.workdir / "eval" / "metrics.json")


@pytest.fixture(scope="module")
def predicted(env):
  """{site: (raw test split, probabilities)}: the best checkpoint's `predict` on the normalised windows."""
  run = evaluate.load_run(env.workdir, "best")
  out = {}
  for site in SITES:
    split = input_pipeline.read_split(site, run_fixtures.PATCH, "test", run_fixtures.CHANNEL_TUPLE,
                                      env.data_dir)
    out[site] = (split, run.predict(split.normalized(run.stats).image))
  return out


def _sklearn_scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
  tn, fp, fn, tp = skm.confusion_matrix(truth, predicted, labels=[0, 1]).ravel()
  kwargs = dict(zero_division=0)
  return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "tn": int(tn),
          "precision": skm.precision_score(truth, predicted, **kwargs),
          "recall": skm.recall_score(truth, predicted, **kwargs),
          "f1": skm.f1_score(truth, predicted, **kwargs),
          "iou": skm.jaccard_score(truth, predicted, **kwargs)}


def _expected_scores(predicted: dict, threshold: float) -> dict:
  """scikit-learn scores per site on valid pixels, and of all sites' pixels pooled ('all')."""
  pooled_truth, pooled_pred, out = [], [], {}
  for site in SITES:
    split, probs = predicted[site]
    valid = split.valid[..., 0].astype(bool)
    truth, pred = split.mask[..., 0][valid].astype(int), (probs[valid] > threshold).astype(int)
    out[site] = _sklearn_scores(truth, pred)
    pooled_truth.append(truth)
    pooled_pred.append(pred)
  out["all"] = _sklearn_scores(np.concatenate(pooled_truth), np.concatenate(pooled_pred))
  return out


def _assert_scores_equal(actual: dict, expected: dict) -> None:
  for key in ("tp", "fp", "fn", "tn"):
    assert actual[key] == expected[key], (key, actual, expected)
  for key in ("precision", "recall", "f1", "iou"):
    assert actual[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), (key, actual, expected)


def _linked_run(workdir: Path, dest: Path) -> Path:
  """A second view of a run (its config, its checkpoints linked), so that an evaluation with other flags
  writes its own eval/ folder and leaves the module's shared one alone."""
  dest.mkdir(parents=True)
  shutil.copy(workdir / "config.json", dest / "config.json")
  (dest / "checkpoints").symlink_to(workdir / "checkpoints", target_is_directory=True)
  return dest


# ----------------------------------------------------------------------------------------------------------
# load_run


def test_load_run_names_a_config_json_that_is_not_json(tmp_path):
  (tmp_path / "config.json").write_text('{"flags": {"scenario": "chi')  # cut short by a copy
  with pytest.raises(InputError, match="config.json: is not valid JSON .*truncated"):
    evaluate.load_run(tmp_path)


def test_load_run_rejects_a_folder_without_config(tmp_path):
  with pytest.raises(InputError) as err:
    evaluate.load_run(tmp_path)
  assert err.value.path == str(tmp_path)
  assert "config.json" in str(err.value) and "\n" not in str(err.value)


def test_load_run_restores_best_latest_and_step(env):
  best = evaluate.load_run(env.workdir, "best")
  latest = evaluate.load_run(env.workdir, "latest")
  by_step = evaluate.load_run(env.workdir, str(BEST_EPOCH))
  assert env.train_metrics["best_epoch"] == BEST_EPOCH, "the run's best epoch moved: update BEST_EPOCH"
  assert (best.step, latest.step, by_step.step) == (BEST_EPOCH, MAX_EPOCHS, BEST_EPOCH)

  def same(a, b):
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, a.state.params, b.state.params)))

  assert same(best, by_step)
  assert not same(best, latest)  # different checkpoints really were restored
  # Config and normalisation come from config.json, not from flags repeated by hand.
  saved = run_fixtures.read_json(env.workdir / "config.json")
  assert dataclasses.asdict(best.config) == {**saved["flags"], "channels": tuple(saved["flags"]["channels"])}
  assert best.stats == normalization.ChannelStats.from_json(saved["normalization"])


def test_load_run_builds_the_runs_model(env, tmp_path):
  # A run trained in bfloat16 must be evaluated in bfloat16, as its own test scoring was (the stored
  # parameters are float32 either way, so a float32 model would restore and silently score otherwise).
  view = _linked_run(env.workdir, tmp_path / "bf16")
  saved = run_fixtures.read_json(view / "config.json")
  saved["flags"]["compute_dtype"] = "bfloat16"
  (view / "config.json").write_text(json.dumps(saved))
  for workdir, dtype in ((env.workdir, jnp.float32), (view, jnp.bfloat16)):
    run = evaluate.load_run(workdir)
    model = run.state.apply_fn.__self__
    assert model == train.build_model(run.config) and model.dtype == dtype


def test_load_run_lists_available_steps_for_a_missing_one(env):
  with pytest.raises(InputError) as err:
    evaluate.load_run(env.workdir, "7")
  message = str(err.value)
  assert "no checkpoint '7'" in message
  assert f"available steps: {BEST_EPOCH}, {MAX_EPOCHS}" in message
  with pytest.raises(InputError, match="best, latest or a step number"):
    evaluate.load_run(env.workdir, "newest")


# ----------------------------------------------------------------------------------------------------------
# Scores


def test_scores_equal_sklearn_and_the_training_run(env, evaluated, predicted):
  result, written = evaluated
  assert written == json.loads(json.dumps(result))  # metrics.json holds what was returned
  assert written["checkpoint_step"] == env.train_metrics["best_epoch"] == BEST_EPOCH
  assert written["threshold"] == 0.5
  assert list(written["test"]) == list(SITES) + ["all"]
  expected = _expected_scores(predicted, 0.5)
  for name, scores in written["test"].items():
    _assert_scores_equal(scores, expected[name])
    trained = env.train_metrics["test"][name]
    assert [scores[k] for k in ("tp", "fp", "fn", "tn")] == [trained[k] for k in ("tp", "fp", "fn", "tn")]
  total = {k: sum(written["test"][s][k] for s in SITES) for k in ("tp", "fp", "fn", "tn")}
  assert {k: written["test"]["all"][k] for k in total} == total
  # Every valid test-area pixel was scored exactly once, by evaluate and by the training run.
  area_pixels = {site: normalization.read_metadata(input_pipeline.dataset_dir(
      site, run_fixtures.PATCH, run_fixtures.CHANNEL_TUPLE, env.data_dir))["areas"]["test"]["valid_pixels"]
                 for site in SITES}
  area_pixels["all"] = sum(area_pixels.values())
  for name, scores in written["test"].items():
    assert sum(scores[k] for k in ("tp", "fp", "fn", "tn")) == area_pixels[name]
    assert scores["coverage"] == env.train_metrics["test"][name]["coverage"] == 1.0
  # The comparison means something only if the model makes every kind of pixel call.
  assert min(expected["all"][k] for k in ("tp", "fp", "fn", "tn")) > 0, expected["all"]


def test_threshold_sweep_is_monotone_and_matches_the_main_result(evaluated):
  result, _ = evaluated
  assert set(result["threshold_sweep"]) == set(SITES) | {"all"}
  for name, rows in result["threshold_sweep"].items():
    assert [r["threshold"] for r in rows] == pytest.approx(list(evaluate.SWEEP_THRESHOLDS))
    recalls = [r["recall"] for r in rows]
    assert all(a >= b for a, b in zip(recalls, recalls[1:])), (name, recalls)
    at_half = next(r for r in rows if r["threshold"] == pytest.approx(0.5))
    for key in ("precision", "recall", "f1"):
      assert at_half[key] == pytest.approx(result["test"][name][key], abs=1e-12), (name, key)
  recalls = [r["recall"] for r in result["threshold_sweep"]["all"]]
  assert recalls[0] > recalls[-1]  # the sweep does move: monotone is not just constant


def test_cli_threshold_and_sweep_flags(env, evaluated, predicted, tmp_path):
  view = _linked_run(env.workdir, tmp_path / "view")
  proc = subprocess.run(
      [sys.executable, "-m", "launch.evaluate", f"--workdir={view}", "--threshold=0.3",
       "--sweep_thresholds", "--test_sites=china,all"],
      cwd=ROOT, env=run_fixtures.subprocess_env(env.cache), capture_output=True, text=True,
      timeout=SUBPROCESS_TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "precision-recall sweep on the china test set (a diagnostic" in proc.stdout
  # A subset at another threshold gets its own file, named by what differs, and says where it went.
  written = run_fixtures.read_json(view / "eval" / "metrics_china-all_t0.3.json")
  assert f"wrote {view / 'eval' / 'metrics_china-all_t0.3.json'} and the maps of china" in proc.stdout
  assert not (view / "eval" / "metrics.json").exists()
  assert written["threshold"] == 0.3 and list(written["test"]) == ["china", "all"]
  assert set(written["threshold_sweep"]) == {"china", "all"}
  expected = _expected_scores(predicted, 0.3)
  main, _ = evaluated
  for name, scores in written["test"].items():
    _assert_scores_equal(scores, expected[name])
    # The same threshold, once scored on device and once from the stored probabilities of the 0.5 run.
    row = next(r for r in main["threshold_sweep"][name] if r["threshold"] == pytest.approx(0.3))
    for key in ("precision", "recall", "f1"):
      assert scores[key] == pytest.approx(row[key], abs=1e-12), (name, key)
  assert written["test"]["china"] != main["test"]["china"]  # 0.3 is not 0.5 in disguise
  # Its maps are named like its metrics file, beside (never over) those of the full evaluation.
  with rasterio.open(view / "eval" / "china_probability_china-all_t0.3.tif") as p, \
       rasterio.open(view / "eval" / "china_landslides_china-all_t0.3.tif") as m:
    prob, binary = p.read(1), m.read(1)
  np.testing.assert_array_equal(binary, np.where(prob >= 0, prob > 0.3, 255))
  assert (view / "eval" / "china_quicklook_china-all_t0.3.png").is_file()
  assert not (view / "eval" / "china_probability.tif").exists()
  # The module's own evaluation (threshold 0.5) was left alone.
  assert run_fixtures.read_json(env.workdir / "eval" / "metrics.json")["threshold"] == 0.5


# ----------------------------------------------------------------------------------------------------------
# Maps


@pytest.mark.parametrize("site", SITES)
def test_maps_are_georeferenced_and_stitch_the_windows(env, evaluated, predicted, site):
  result, _ = evaluated
  metadata = normalization.read_metadata(
      input_pipeline.dataset_dir(site, run_fixtures.PATCH, run_fixtures.CHANNEL_TUPLE, env.data_dir))
  area = metadata["areas"]["test"]
  area_transform = affine.Affine(*area["transform"])
  site_transform = affine.Affine(*metadata["grid"]["transform"])
  # Where the test area starts on the site grid, from the two transforms.
  r0 = round((area_transform.f - site_transform.f) / site_transform.e)
  c0 = round((area_transform.c - site_transform.c) / site_transform.a)
  maps = result["maps"][site]
  out = env.workdir / "eval"
  assert Path(maps["probability"]) == out / f"{site}_probability.tif"
  with rasterio.open(maps["probability"]) as src:
    assert src.dtypes == ("float32",) and src.nodata == -1.0 and src.count == 1
    assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # opens at once in QGIS
    assert src.crs == CRS.from_user_input(conftest.SITE_CRS)
    assert src.transform == area_transform and src.shape == tuple(area["shape"])
    prob = src.read(1)
  with rasterio.open(out / f"{site}_landslides.tif") as src:
    assert src.dtypes == ("uint8",) and src.nodata == 255
    assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert src.crs == CRS.from_user_input(conftest.SITE_CRS)
    assert src.transform == area_transform and src.shape == tuple(area["shape"])
    binary = src.read(1)

  split, probs = predicted[site]
  p = run_fixtures.PATCH
  covered = np.zeros(prob.shape, bool)
  for window, r, c, valid in zip(probs, split.row, split.col, split.valid[..., 0]):
    r, c = int(r) - r0, int(c) - c0
    # Every window's pixels, back where they came from (tolerance: batch of 2 here vs 8 in pmap).
    np.testing.assert_allclose(prob[r:r + p, c:c + p][valid == 1], window[valid == 1], atol=1e-6)
    covered[r:r + p, c:c + p] |= valid == 1
  assert covered.all()  # the fixture's test area is tiled exactly by its windows
  np.testing.assert_array_equal(binary, np.where(covered, prob > 0.5, 255).astype(np.uint8))
  assert 0 < binary.sum() < binary.size  # the map is not trivially empty or full

  quicklook = Path(maps["quicklook"])
  assert quicklook == out / f"{site}_quicklook.png"
  assert quicklook.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  image = matplotlib.image.imread(quicklook)
  assert image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 100


# ----------------------------------------------------------------------------------------------------------
# Object scores, thresholds chosen on validation, test-time augmentation


@pytest.mark.parametrize("site", SITES)
def test_object_scores_equal_a_count_on_the_written_maps(env, evaluated, site):
  """Objects counted from what a user opens in QGIS: the binary GeoTIFF and the inventory polygons
  burnt onto the site grid, cropped to the test area; neither path goes through the windows."""
  result, _ = evaluated
  metadata = normalization.read_metadata(
      input_pipeline.dataset_dir(site, run_fixtures.PATCH, run_fixtures.CHANNEL_TUPLE, env.data_dir))
  area = metadata["areas"]["test"]
  site_transform = affine.Affine(*metadata["grid"]["transform"])
  r0 = round((area["transform"][5] - site_transform.f) / site_transform.e)
  c0 = round((area["transform"][2] - site_transform.c) / site_transform.a)
  h, w = area["shape"]
  truth = run_fixtures.inventory_mask(env.raw / site)[r0:r0 + h, c0:c0 + w]
  with rasterio.open(result["maps"][site]["landslides"]) as src:
    binary = src.read(1)
  pixel_area = abs(site_transform.a * site_transform.e)
  expected = metrics.object_counts(binary == 1, truth, binary != 255, pixel_area)
  objects = result["test"][site]["objects"]
  assert {k: objects[k] for k in expected} == expected
  assert objects["counted_within"] == "map" and objects["min_cover"] == metrics.DEFAULT_MIN_COVER
  assert expected["landslides"] > 0  # the fixture's test areas hold landslide boxes
  # The training run scored the same checkpoint at the same threshold: the same objects.
  assert env.train_metrics["test"][site]["objects"] == objects


def test_all_objects_add_the_sites_objects(evaluated):
  result, _ = evaluated
  total = metrics.add_object_counts([result["test"][s]["objects"] for s in SITES])
  assert {k: result["test"]["all"]["objects"][k] for k in total} == total


def _validation(env, run):
  return input_pipeline.load_scenario_split(run.config.scenario, run.config.patch, "validation",
                                            run.config.channels, env.data_dir, run.stats)


def test_auto_threshold_is_the_f1_best_on_validation_only(env, evaluated, tmp_path):
  view = _linked_run(env.workdir, tmp_path / "view")
  result = evaluate.evaluate_run(view, threshold="auto", write_maps=False)
  run = evaluate.load_run(env.workdir, "best")
  validation = _validation(env, run)
  probs = run.predict(validation.image)
  valid = validation.valid[..., 0].astype(bool)
  truth = validation.mask[..., 0][valid]
  # scikit-learn F1 at every threshold of the grid, on validation pixels only.
  f1 = {t: skm.f1_score(truth, probs[valid] > t, zero_division=0) for t in metrics.THRESHOLD_GRID}
  best = max(f1.values())
  chosen = result["validation_threshold"]["threshold"]
  assert result["threshold"] == chosen and f1[chosen] == pytest.approx(best, abs=1e-12)
  assert result["validation_threshold"]["validation_f1"] == pytest.approx(best, abs=1e-12)
  assert result["validation_threshold"]["validation_f1_at_0.5"] == pytest.approx(
      skm.f1_score(truth, probs[valid] > 0.5, zero_division=0), abs=1e-12)
  assert (view / "eval" / "metrics_tauto.json").is_file()
  # The training run chose the same one for the same checkpoint and kept the test scores at both.
  trained = env.train_metrics
  assert trained["validation_threshold"] == result["validation_threshold"]
  assert trained["threshold"] == 0.5 and trained["threshold_from"] == "flag"
  for name in list(SITES) + ["all"]:
    for key in ("tp", "fp", "fn", "tn"):
      assert trained["test_by_threshold"]["0.5"][name][key] == trained["test"][name][key]
      assert trained["test_by_threshold"]["validation"][name][key] == result["test"][name][key]


def test_auto_threshold_ignores_the_test_area(env, tmp_path, monkeypatch):
  """Test images replaced by noise change the test scores, never the threshold."""
  view = _linked_run(env.workdir, tmp_path / "view")
  honest = evaluate.evaluate_run(view, ("china",), threshold="auto", write_maps=False)
  real_load = input_pipeline.load_test_data

  def noisy(*args, **kwargs):
    data = real_load(*args, **kwargs)
    noise = np.random.default_rng(0).normal(0, 3000, data.image.shape).astype(np.float32)
    return dataclasses.replace(data, image=data.image + noise)
  monkeypatch.setattr(input_pipeline, "load_test_data", noisy)
  other = evaluate.evaluate_run(view, ("china",), threshold="auto", write_maps=False)
  assert other["validation_threshold"] == honest["validation_threshold"]
  assert other["test"]["china"]["f1"] != honest["test"]["china"]["f1"]


def test_training_with_auto_threshold_scores_test_at_the_validation_choice(env, tmp_path):
  workdir = tmp_path / "auto"
  # Same options and seed as the module's run: the same checkpoints, so the same validation choice.
  trained = run_fixtures.train_run(env.raw, env.data_dir, workdir, MAX_EPOCHS, threshold="auto")
  chosen = env.train_metrics["validation_threshold"]["threshold"]
  assert trained["threshold_from"] == "validation" and trained["threshold"] == chosen
  for name in list(SITES) + ["all"]:
    for key in ("tp", "fp", "fn", "tn"):
      assert trained["test"][name][key] == env.train_metrics["test_by_threshold"]["validation"][name][key]
  assert run_fixtures.read_json(workdir / "config.json")["flags"]["threshold"] == "auto"
  run = evaluate.load_run(workdir, "best")
  assert evaluate.run_threshold(run) == chosen  # what launch.predict maps with
  latest = evaluate.load_run(workdir, "latest")
  with pytest.raises(InputError, match="not for 3") as err:
    evaluate.run_threshold(latest)  # chosen for the best checkpoint, not this one
  assert "--threshold=<probability>" in str(err.value)
  # launch.evaluate of an auto run chooses again for the checkpoint it scores: the same here.
  again = evaluate.evaluate_run(workdir, write_maps=False)
  assert again["threshold"] == chosen and again["validation_threshold"] == trained["validation_threshold"]


def test_tta_scores_the_mean_of_the_eight_views(env, evaluated, tmp_path):
  view = _linked_run(env.workdir, tmp_path / "view")
  result = evaluate.evaluate_run(view, ("china",), tta=True, write_maps=False)
  run = evaluate.load_run(env.workdir, "best")
  split = input_pipeline.read_split("china", run_fixtures.PATCH, "test", run_fixtures.CHANNEL_TUPLE,
                                    env.data_dir).normalized(run.stats)
  views = []
  for flip in (False, True):
    for k in range(4):
      image = np.rot90(split.image, k, axes=(1, 2))
      image = np.ascontiguousarray(image[:, :, ::-1] if flip else image)
      out = run.predict(image)
      views.append(np.rot90(out[:, :, ::-1] if flip else out, -k, axes=(1, 2)))
  probs = np.mean(views, axis=0)
  valid = split.valid[..., 0].astype(bool)
  # Probabilities within float32 round-off of the reference: count only pixels clear of the threshold.
  clear = valid & (np.abs(probs - 0.5) > 1e-5)
  expected = _sklearn_scores(split.mask[..., 0][clear].astype(int), (probs[clear] > 0.5).astype(int))
  got = result["test"]["china"]
  assert got["tp"] + got["fp"] + got["fn"] + got["tn"] == valid.sum()
  for key in ("tp", "fp", "fn", "tn"):
    assert abs(got[key] - expected[key]) <= int((valid & ~clear).sum()), key
  assert result["tta"] is True and (view / "eval" / "metrics_china_tta.json").is_file()
  assert got != evaluated[0]["test"]["china"]  # TTA changed the model's calls


# ----------------------------------------------------------------------------------------------------------
# Datasets that do not match the run


def test_rebuilt_datasets_with_other_normalisation_are_rejected(env, tmp_path):
  raw = tmp_path / "raw"
  shutil.copytree(env.raw, raw)
  with rasterio.open(raw / "china" / "s2.tif", "r+") as dst:
    dst.write(dst.read() + 500)  # other raw inputs: brighter scene, so other training statistics
  data_dir = run_fixtures.prepare_sites(raw, tmp_path / "tfds")
  with pytest.raises(InputError) as err:
    evaluate.evaluate_run(env.workdir, data_dir=data_dir)
  assert "normalisation differs from the run's" in str(err.value)
  assert err.value.path == str(data_dir)


def test_dataset_with_other_channels_is_rejected(env, tmp_path):
  data_dir = tmp_path / "tfds"
  shutil.copytree(env.data_dir, data_dir)
  path = input_pipeline.dataset_dir("taiwan", run_fixtures.PATCH, run_fixtures.CHANNEL_TUPLE, data_dir)
  metadata = json.loads((path / "metadata.json").read_text())
  metadata["channels"] = ["B2", "B3", "B4", "B8", "dem"]
  (path / "metadata.json").write_text(json.dumps(metadata))
  with pytest.raises(InputError) as err:
    evaluate.evaluate_run(env.workdir, data_dir=data_dir)
  assert err.value.path == str(path)
  assert "dataset channels ['B2', 'B3', 'B4', 'B8', 'dem'] differ" in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# Command line


def test_cli_missing_workdir_is_one_line(tmp_path):
  missing = tmp_path / "no_such_run"
  proc = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={missing}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {missing}: no config.json"), proc.stderr
  assert "Traceback" not in proc.stdout + proc.stderr
