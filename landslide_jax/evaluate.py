"""Evaluation of a trained run from its orbax checkpoint (`python -m launch.evaluate`).

Loads `<workdir>/config.json` and a checkpoint (best, latest or a step) with no flag repeated by hand,
scores every test set with counts accumulated on device, and writes stitched test-area maps: probability
and binary GeoTIFFs on the site grid and a PNG quicklook of true positives, false positives and false
negatives.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from flax.training import early_stopping
from jax import lax

from landslide_jax import constants, files, input_pipeline, metrics, train
from landslide_jax.data import normalization, patching, raster_io
from landslide_jax.errors import InputError

SWEEP_THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.1), 2))
# Quicklook colours (RGB 0-1): the paper's Figs. 6-9 show hits, false alarms and misses over the image.
COLOURS = {"true positive": (1.0, 0.85, 0.0), "false positive": (0.9, 0.1, 0.1),
           "false negative": (0.1, 0.6, 1.0)}
NOT_SCORED_LABEL = "clouds / nodata (not scored)"


@dataclasses.dataclass
class Run:
  """A trained run, ready to predict: its config, normalisation and restored parameters."""
  workdir: Path
  config: train.TrainConfig
  stats: normalization.ChannelStats
  state: Any
  step: int

  def predict(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
    """Landslide probabilities (N, P, P) of normalised images (N, P, P, C); with `tta` the mean over
    the 8 rotations and flips of each window."""
    return np.asarray(train.probabilities(self.state, jnp.asarray(images, jnp.float32), tta))


def read_run_config(workdir: Path) -> tuple[dict, train.TrainConfig]:
  """(the saved config.json, its options) of a run folder.

  Raises:
    InputError: no config.json, not JSON, or written by another version.
  """
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise InputError(workdir, "no config.json: not a training run folder",
                     "pass the --workdir of a run made by python -m launch.train")
  try:
    saved = json.loads(config_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise InputError(config_path, f"is not valid JSON ({err.__class__.__name__} at byte "
                     f"{getattr(err, 'pos', '?')}; truncated?), so the run cannot be loaded",
                     "restore it from a copy of the run folder, or train the run again") from None
  flags = dict(saved["flags"])
  flags["channels"] = tuple(flags["channels"])
  try:
    return saved, train.TrainConfig(**flags)
  except TypeError:
    raise InputError(config_path, "was written by another version of landslide_jax (its options "
                     "differ from this version's)", "retrain in a new --workdir with this version"
                     ) from None


def load_run(workdir: str | os.PathLike, checkpoint: str = "best") -> Run:
  """Loads a run's config and the checkpoint `best`, `latest` or a step number.

  Raises:
    InputError: not a run folder, or no such checkpoint.
  """
  workdir = Path(workdir)
  saved, config = read_run_config(workdir)
  config_path = workdir / "config.json"
  if config.seeds > 1:
    seeds = ", ".join(f"seed_{config.seed + i}" for i in range(config.seeds))
    raise InputError(workdir, f"holds {config.seeds} seeds trained together ({seeds}), each a run of its own",
                     f"pass --workdir={workdir / f'seed_{config.seed}'} (or another seed's folder); "
                     "metrics.json here has their mean and spread")
  if "normalization" not in saved:
    raise InputError(config_path, "has no normalisation statistics (written by an older version)",
                     "re-run python -m launch.train in that workdir")
  stats = normalization.ChannelStats.from_json(saved["normalization"])
  # The run's own model (compute dtype included), so scores and maps are those training computed.
  model = train.build_model(config)
  template = train.create_train_state(jax.random.key(0), model,
                                      (1, config.patch, config.patch, len(config.channels)), config)
  manager = train.checkpoint_manager(workdir)
  steps = list(manager.all_steps())
  if checkpoint == "best":
    step = manager.best_step()
  elif checkpoint == "latest":
    step = manager.latest_step()
  else:
    try:
      step = int(checkpoint)
    except ValueError:
      raise InputError(None, f"--checkpoint={checkpoint!r} is not valid",
                       "use best, latest or a step number") from None
  if step is None or step not in steps:
    raise InputError(workdir / train.CHECKPOINT_DIR, f"no checkpoint {checkpoint!r} "
                     f"(available steps: {', '.join(map(str, steps)) or 'none'})",
                     "train first (python -m launch.train with the same --workdir) or pick a saved step")
  try:
    restored = train.restore_checkpoint(manager, step, train.checkpoint_item(
        template, 0, early_stopping.EarlyStopping(), 1.0))
  except Exception as err:  # pylint: disable=broad-except  (tensorstore and orbax raise many kinds)
    others = [s for s in steps if s != step]
    raise InputError(workdir / train.CHECKPOINT_DIR / str(step), f"checkpoint {step} cannot be restored "
                     f"({train.short_error(err)})",
                     (f"pass --checkpoint= with another saved step ({', '.join(map(str, others))}), or "
                      if others else "") + "train again in a new --workdir") from None
  finally:
    manager.close()
  return Run(workdir, config, stats, restored["state"], int(step))


def run_threshold(run) -> float:
  """The run's probability threshold: its flag, or with --threshold=auto the one training chose on the
  validation area for its best checkpoint (in `<workdir>/metrics.json`).

  Raises:
    InputError: an "auto" run not finished yet, or scored with another checkpoint than the one loaded.
  """
  if run.config.threshold != train.AUTO_THRESHOLD:
    return float(run.config.threshold)
  path = Path(run.workdir) / "metrics.json"
  try:
    done = json.loads(path.read_text())
    if int(done["best_epoch"]) == run.step:
      return float(done["threshold"])
    problem = f"holds the threshold chosen for checkpoint {done['best_epoch']}, not for {run.step}"
  except (OSError, ValueError, KeyError, TypeError):
    problem = "is missing or unreadable (training has not finished)"
  raise InputError(path, f"the run chooses its threshold on the validation area (--threshold=auto), and "
                   f"its metrics.json {problem}", "pass --threshold=<probability>, or finish training")


def predict_step(state, batch: dict, threshold: float, tta: bool = False
                 ) -> tuple[jax.Array, jax.Array]:
  """Probabilities of a batch and its confusion counts, summed over devices (pmapped)."""
  probs = train.probabilities(state, batch["image"], tta)
  # From probabilities, not logits: TTA averages probabilities.
  counts = metrics.predicted_counts((probs > threshold)[..., None], batch["mask"], batch["valid"])
  return probs, lax.psum(counts, train.AXIS)


def predict_split(run: Run, data: input_pipeline.SplitData, threshold: float, tta: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities (N, P, P), counts [TP, FP, FN, TN]) of a whole split; counts summed on device."""
  p_step = jax.pmap(functools.partial(predict_step, threshold=threshold, tta=tta), axis_name=train.AXIS)
  replicated = jax_utils.replicate(run.state)
  devices = jax.local_device_count()
  batch_size = max(run.config.batch_size, devices)
  batch_size -= batch_size % devices
  probs, counts = [], np.zeros(4)
  for batch in input_pipeline.batches(data, batch_size, devices, shuffle=False):
    p, c = p_step(replicated, batch)
    probs.append(np.asarray(p).reshape(-1, *p.shape[2:]))
    counts += np.asarray(c[0], np.float64)
  return np.concatenate(probs)[:len(data)], counts


def check_dataset(run: Run, name: str, data_dir: str | os.PathLike) -> dict:
  """The test dataset must have the run's channels; its training-scenario statistics must not have
  changed since training (a rebuilt dataset would silently shift every input)."""
  path = input_pipeline.dataset_dir(name, run.config.patch, run.config.channels, data_dir)
  metadata = normalization.read_metadata(path)
  if tuple(metadata["channels"]) != tuple(run.config.channels):
    raise InputError(path, f"dataset channels {metadata['channels']} differ from the run's "
                     f"{list(run.config.channels)}", "evaluate on datasets built with the run's --channels")
  return metadata


def _check_normalization(run: Run, data_dir) -> None:
  current = input_pipeline.scenario_normalization(run.config.scenario, run.config.patch,
                                                  run.config.channels, data_dir)
  if not (np.allclose(current.mean, run.stats.mean, rtol=1e-6)
          and np.allclose(current.std, run.stats.std, rtol=1e-6)):
    raise InputError(data_dir, "the training datasets' normalisation differs from the run's (the "
                     "datasets were rebuilt from other inputs since training)",
                     "evaluate with the --data_dir the run was trained on, or retrain")


def _sweep(probs: np.ndarray, data: input_pipeline.SplitData) -> list[dict]:
  return metrics.threshold_scores(probs, data.mask[..., 0], data.valid[..., 0], SWEEP_THRESHOLDS)


def _objects(probs: np.ndarray, data: input_pipeline.SplitData, threshold: float, test_set: str,
             config: train.TrainConfig, data_dir) -> dict:
  areas = input_pipeline.pixel_areas_m2(test_set, config.patch, config.channels, data_dir)
  return metrics.split_report(probs, data.mask[..., 0], data.valid[..., 0], data.row, data.col, data.site,
                              threshold, areas)["objects"]


def write_site_maps(out_dir: Path, site: str, probs: np.ndarray, data: input_pipeline.SplitData,
                    metadata: dict, threshold: float, raw: input_pipeline.SplitData, suffix: str = "") -> dict:
  """GeoTIFFs (probability float32, binary uint8) and a PNG quicklook of one site's test area, named
  `<site>_probability<suffix>.tif` etc.: the suffix of the evaluation's metrics file, so the maps of
  another checkpoint, threshold or TTA never replace those of the run's own evaluation."""
  area = metadata["areas"]["test"]
  grid = raster_io.Grid.from_json(metadata["grid"])
  r0 = int(round((area["transform"][5] - grid.transform.f) / grid.transform.e))
  c0 = int(round((area["transform"][2] - grid.transform.c) / grid.transform.a))
  shape = tuple(area["shape"])
  test_grid = raster_io.Grid(grid.crs, grid.window_transform(r0, c0), shape)
  rows, cols = data.row - r0, data.col - c0
  valid = patching.stitch(data.valid[..., 0], rows, cols, shape, fill=0).astype(bool)
  prob_map = np.where(valid, patching.stitch(probs.astype(np.float32), rows, cols, shape, fill=0),
                      -1.0).astype(np.float32)
  binary = np.where(valid, prob_map > threshold, 255).astype(np.uint8)
  truth = patching.stitch(data.mask[..., 0], rows, cols, shape, fill=0).astype(bool)
  paths = {
      "probability": raster_io.write_geotiff(out_dir / f"{site}_probability{suffix}.tif", prob_map, test_grid,
                                             nodata=-1.0, cog_resampling="average"),
      "landslides": raster_io.write_geotiff(out_dir / f"{site}_landslides{suffix}.tif", binary, test_grid,
                                            nodata=255, cog_resampling="nearest"),
  }
  channels = metadata["channels"]
  rgb = None
  if all(b in channels for b in ("B4", "B3", "B2")):
    rgb = np.stack([patching.stitch(raw.image[..., channels.index(b)], rows, cols, shape, fill=0)
                    for b in ("B4", "B3", "B2")], axis=-1)
  paths["quicklook"] = quicklook(out_dir / f"{site}_quicklook{suffix}.png", rgb, binary == 1, truth, valid,
                                 title=f"{site} test area")
  return {k: str(v) for k, v in paths.items()}


def quicklook(path: Path, rgb: np.ndarray | None, predicted: np.ndarray, truth: np.ndarray,
              valid: np.ndarray, title: str) -> Path:
  """PNG: the image (2-98% stretch) with TP, FP and FN pixels in three colours and a legend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.patches as mpatches  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  if rgb is None:
    canvas = np.full((*valid.shape, 3), 0.5, np.float32)
  else:
    lo, hi = np.percentile(rgb[valid], (2, 98), axis=0) if valid.any() else (0.0, 1.0)
    canvas = np.clip((rgb - lo) / np.maximum(hi - lo, 1e-6), 0, 1).astype(np.float32)
  canvas[~valid] = 1.0
  for name, colour in COLOURS.items():
    kind = {"true positive": predicted & truth, "false positive": predicted & ~truth,
            "false negative": ~predicted & truth}[name]
    canvas[kind & valid] = colour
  height, width = valid.shape
  scale = 8.0 / max(height, width)
  fig, ax = plt.subplots(figsize=(max(width * scale, 3), max(height * scale, 3) + 0.6), dpi=120)
  ax.imshow(canvas, interpolation="nearest")
  ax.set_title(title)
  ax.set_axis_off()
  # White is not "no landslide": those pixels were never scored, so the legend says so.
  handles = [mpatches.Patch(color=c, label=n) for n, c in COLOURS.items()]
  handles.append(mpatches.Patch(facecolor="white", edgecolor="0.6", label=NOT_SCORED_LABEL))
  ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=4, frameon=False,
            fontsize=8)
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)
  return path


def evaluate_run(workdir: str | os.PathLike, test_sets: tuple[str, ...] | None = None,
                 checkpoint: str = "best", data_dir: str | os.PathLike | None = None,
                 threshold: float | str | None = None, sweep_thresholds: bool = False,
                 write_maps: bool = True, tta: bool = False) -> dict:
  """Scores a run's checkpoint on its test sets (pixel and object scores) and writes
  `<workdir>/eval/metrics.json` (named by `metrics_file_name` for a subset of test sets, another
  checkpoint, threshold or TTA) and the maps.

  `threshold`: a probability, "auto" (the F1-best on the run's validation area with this checkpoint and
  `tta`), or None for the run's own (its "auto" chosen the same way).
  """
  if threshold is not None and threshold != train.AUTO_THRESHOLD and not 0.0 < threshold < 1.0:
    raise InputError(None, f"--threshold={threshold} is not strictly between 0 and 1 (or auto)",
                     "pass e.g. --threshold=0.5")  # the comparison also catches NaN
  experiment = _multi_seed_config(workdir)
  if experiment is not None:
    return _evaluate_seeds(experiment, test_sets, checkpoint, data_dir, threshold, sweep_thresholds,
                           write_maps, tta)
  run = load_run(workdir, checkpoint)
  config = run.config
  data_dir = train.dataset_root(config, data_dir)
  valid_sets = input_pipeline.test_sets(config.scenario)
  test_sets = tuple(test_sets or valid_sets)
  unknown = [t for t in test_sets if t not in valid_sets]
  if unknown:
    raise InputError(None, f"--test_sites {', '.join(unknown)} not valid for scenario {config.scenario}",
                     f"use some of: {', '.join(valid_sets)}")
  _check_normalization(run, data_dir)
  asked = threshold
  threshold = config.threshold if threshold is None else threshold
  choice = None
  if threshold == train.AUTO_THRESHOLD:
    validation = input_pipeline.load_scenario_split(config.scenario, config.patch, "validation",
                                                    config.channels, data_dir, run.stats)
    choice = train.choose_threshold(predict_split(run, validation, 0.5, tta)[0], validation)
    threshold = choice["threshold"]
  out_dir = run.workdir / "eval"
  out_dir.mkdir(parents=True, exist_ok=True)
  metrics_name = metrics_file_name(test_sets, valid_sets, checkpoint,
                                   None if asked in (None, config.threshold) else asked, tta)
  suffix = metrics_name[len("metrics"):-len(".json")]
  sites = [s for s in (constants.SITE_NAMES if "all" in test_sets else ()) if s not in test_sets]
  results, maps, sweeps, per_site = {}, {}, {}, {}
  for name in list(test_sets) + sites:
    if name == "all":
      continue
    metadata = check_dataset(run, name, data_dir)
    raw = input_pipeline.load_test_data(name, config.patch, config.channels, data_dir, stats=None)
    data = raw.normalized(run.stats)
    probs, counts = predict_split(run, data, threshold, tta)
    expected = metadata["areas"]["test"]["valid_pixels"]
    per_site[name] = (counts, probs, data, expected)
    if name in test_sets:
      results[name] = {**metrics.report(counts, expected),
                       "objects": _objects(probs, data, threshold, name, config, data_dir)}
      if sweep_thresholds:
        sweeps[name] = _sweep(probs, data)
      if write_maps and metadata.get("grid"):
        maps[name] = write_site_maps(out_dir, name, probs, data, metadata, threshold, raw, suffix)
  if "all" in test_sets:
    total = sum(per_site[s][0] for s in constants.SITE_NAMES)
    results["all"] = {
        **metrics.report(total, sum(per_site[s][3] for s in constants.SITE_NAMES)),
        "objects": _objects(np.concatenate([per_site[s][1] for s in constants.SITE_NAMES]),
                            input_pipeline.SplitData.concatenate([per_site[s][2] for s in constants.SITE_NAMES]),
                            threshold, "all", config, data_dir)}
    if sweep_thresholds:
      merged = input_pipeline.SplitData.concatenate([per_site[s][2] for s in constants.SITE_NAMES])
      sweeps["all"] = _sweep(np.concatenate([per_site[s][1] for s in constants.SITE_NAMES]), merged)
  result = {"workdir": str(run.workdir), "scenario": config.scenario, "model": config.model,
            "patch": config.patch, "checkpoint_step": run.step, "threshold": threshold, "tta": tta,
            "test": {k: results[k] for k in test_sets}, "maps": maps}
  if choice is not None:
    result["validation_threshold"] = choice
  if sweep_thresholds:
    result["threshold_sweep"] = sweeps
  metrics_path = out_dir / metrics_name
  files.write_text_atomically(metrics_path, json.dumps(result, indent=2) + "\n")
  print(format_table(result), flush=True)
  where = f"wrote {metrics_path}"
  if maps:
    where += (f" and the maps of {', '.join(maps)} in {out_dir} (<site>_probability{suffix}.tif, "
              f"<site>_landslides{suffix}.tif, <site>_quicklook{suffix}.png)")
  print(where, flush=True)
  return result


def _multi_seed_config(workdir: str | os.PathLike) -> train.TrainConfig | None:
  """The options of a `--seeds=K` experiment folder (K > 1), else None (a single run, or not a run:
  load_run then says what is wrong with it)."""
  try:
    _, config = read_run_config(Path(workdir))
  except InputError:
    return None
  return dataclasses.replace(config, workdir=str(workdir)) if config.seeds > 1 else None


def _evaluate_seeds(config: train.TrainConfig, test_sets, checkpoint, data_dir, threshold, sweep_thresholds,
                    write_maps, tta) -> dict:
  """Every seed of a `--seeds=K` experiment scored as its own run (its folder's eval/), then the mean and
  spread over seeds, written to the experiment's eval/ and printed."""
  from landslide_jax import multi_seed  # pylint: disable=import-outside-toplevel  (imports train)
  results = {seed: evaluate_run(multi_seed.seed_config(config, seed).workdir, test_sets, checkpoint, data_dir,
                                threshold, sweep_thresholds, write_maps, tta)
             for seed in multi_seed.seed_values(config)}
  summary = multi_seed.summarize_seeds(config, results)
  first = next(iter(results.values()))
  out_dir = Path(config.workdir) / "eval"
  out_dir.mkdir(parents=True, exist_ok=True)
  valid_sets = input_pipeline.test_sets(config.scenario)
  name = metrics_file_name(tuple(first["test"]), valid_sets, checkpoint,
                           None if threshold in (None, config.threshold) else threshold, tta)
  files.write_text_atomically(out_dir / name, json.dumps(summary, indent=2) + "\n")
  print(multi_seed.format_seed_table(summary), flush=True)
  print(f"wrote {out_dir / name}", flush=True)
  return summary


def metrics_file_name(test_sets: tuple[str, ...], all_sets: tuple[str, ...], checkpoint: str,
                      threshold: float | str | None, tta: bool = False) -> str:
  """`metrics.json` for the run's own evaluation (every test set, best checkpoint, the run's
  threshold, no TTA); otherwise a name saying what differs, e.g. `metrics_china.json`,
  `metrics_latest_t0.3.json`, `metrics_tauto_tta.json`, so a partial or diagnostic evaluation never
  overwrites the full one."""
  parts = [] if checkpoint == "best" else [str(checkpoint)]
  if set(test_sets) != set(all_sets):
    parts.append("-".join(test_sets))
  if threshold is not None:
    parts.append(f"t{threshold}" if isinstance(threshold, str) else f"t{threshold:g}")
  if tta:
    parts.append("tta")
  return "_".join(["metrics", *parts]) + ".json"


def format_table(result: dict) -> str:
  """Scores per test set (and the threshold sweep, if any) as text."""
  how = f"threshold {result['threshold']:g}"
  if "validation_threshold" in result:
    how += (f" (F1-best on validation: F1 {result['validation_threshold']['validation_f1']:.3f} there, "
            f"{result['validation_threshold']['validation_f1_at_0.5']:.3f} at 0.5)")
  if result.get("tta"):
    how += ", test-time augmentation (8 rotations and flips)"
  lines = [metrics.format_scores(f"{result['scenario']}-{result['model']}-p{result['patch']} checkpoint "
                                 f"step {result['checkpoint_step']}, {how}:", result["test"])]
  for name, rows in result.get("threshold_sweep", {}).items():
    lines.append(f"precision-recall sweep on the {name} test set (a diagnostic: a threshold picked here is "
                 "fitted to the test area; --threshold=auto picks one on validation):")
    lines.append(f"  {'threshold':>9} {'precision':>9} {'recall':>7} {'F1':>6}")
    for row in rows:
      lines.append(f"  {row['threshold']:>9.2f} {row['precision']:>9.3f} {row['recall']:>7.3f} "
                   f"{row['f1']:>6.3f}")
  return "\n".join(lines)
