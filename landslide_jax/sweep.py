"""The paper's experiment grid (`python -m launch.sweep`): 4 scenarios x 3 patch sizes x 2 models.

Each run lives in `<workdir>/<scenario>-<model>-p<patch>` (the naming of `launch.train`). Finished runs
(with `metrics.json`) are skipped and unfinished ones resume from their checkpoints, so a killed sweep
continues where it stopped. The results are written in the paper's layout: Tables 4-7 (one per
scenario), Figs. 10 and 11, and a summary with the transferability matrix.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np

from landslide_jax import constants, files, train
from landslide_jax.errors import InputError

# The paper's scenarios, in table order: Table 4 = scenario 1 (all sites), ..., Table 7 = Japan.
SCENARIO_ORDER = ("all", "taiwan", "china", "japan")
MODEL_NAMES = {"unet": "U-Net", "resunet": "ResU-Net"}
TEST_SETS = constants.SITE_NAMES + ("all",)
# Options that make two runs different experiments; a finished run made with others is not reused.
_RUN_OPTIONS = ("scenario", "patch", "model", "channels", "batch_size", "learning_rate", "max_epochs",
                "patience", "min_delta", "seed", "pos_weight", "class_balanced", "threshold",
                "demo_scale", "manual_dir", "compute_dtype")


def run_dir(workdir_root: str | os.PathLike, scenario: str, model: str, patch: int) -> Path:
  return Path(workdir_root) / f"{scenario}-{model}-p{patch}"


def _finished(config: train.TrainConfig) -> dict | None:
  """metrics.json of a run already done with the same options, else None (raises if options differ)."""
  workdir = config.resolved_workdir()
  metrics_path, config_path = workdir / "metrics.json", workdir / "config.json"
  if not config_path.is_file():
    return None
  saved = json.loads(config_path.read_text())["flags"]
  wanted = dataclasses.asdict(config)
  differ = [k for k in _RUN_OPTIONS if k in saved and _norm(saved[k]) != _norm(wanted[k])]
  if differ:
    raise InputError(workdir, f"was made with other options ({', '.join(f'{k}={saved[k]}' for k in differ)})",
                     "use another --workdir for this sweep, or delete that run folder")
  return json.loads(metrics_path.read_text()) if metrics_path.is_file() else None


def _norm(value):
  return list(value) if isinstance(value, (list, tuple)) else value


def run_grid(scenarios: tuple[str, ...], patches: tuple[int, ...], models: tuple[str, ...],
             workdir_root: str | os.PathLike, base: train.TrainConfig) -> dict[tuple[str, str, int], dict]:
  """Trains (or resumes, or skips) every run of the grid; returns each run's metrics.json."""
  results = {}
  total = len(scenarios) * len(patches) * len(models)
  for i, (scenario, patch, model) in enumerate(
      (s, p, m) for s in scenarios for p in patches for m in models):
    config = dataclasses.replace(base, scenario=scenario, patch=patch, model=model,
                                 workdir=str(run_dir(workdir_root, scenario, model, patch)))
    done = _finished(config)
    label = f"[{i + 1}/{total}] {scenario}-{model}-p{patch}"
    if done is not None:
      print(f"{label}: finished, skipped", flush=True)
      results[(scenario, model, patch)] = done
      continue
    print(f"{label}: training", flush=True)
    results[(scenario, model, patch)] = train.train_and_evaluate(config)
  return results


def scenario_table(results: dict, scenario: str, patches, models) -> tuple[str, str]:
  """(markdown, csv) of one scenario: rows model x patch, columns test set x P/R/F1."""
  header = ["model", "patch"] + [f"{t} {m}" for t in TEST_SETS for m in ("P", "R", "F1")]
  rows = []
  for model in models:
    for patch in patches:
      scores = results.get((scenario, model, patch))
      if scores is None:
        continue
      row = [MODEL_NAMES[model], str(patch)]
      for test in TEST_SETS:
        s = scores["test"][test]
        row += [f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}"]
      rows.append(row)
  md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  md += ["| " + " | ".join(r) + " |" for r in rows]
  buffer = io.StringIO()
  csv.writer(buffer).writerows([header] + rows)
  return "\n".join(md) + "\n", buffer.getvalue()


def mean_f1(results: dict, scenario=None, model=None, patch=None, tests=constants.SITE_NAMES) -> float:
  """Mean F1 over the runs matching the filters and the given test sets (NaN when none)."""
  values = [r["test"][t]["f1"] for (s, m, p), r in results.items()
            if (scenario is None or s == scenario) and (model is None or m == model)
            and (patch is None or p == patch) for t in tests]
  return float(np.mean(values)) if values else float("nan")


def _bar_chart(path: Path, groups: list[str], series: dict[str, list[float]], title: str,
               xlabel: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
  width = 0.8 / max(len(series), 1)
  for i, (name, values) in enumerate(series.items()):
    ax.bar(np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width, values, width, label=name)
  ax.set_xticks(np.arange(len(groups)), groups)
  ax.set_ylim(0, 1)
  ax.set_ylabel("mean F1")
  ax.set_xlabel(xlabel)
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def transferability(results: dict, scenarios) -> np.ndarray:
  """Train scenario x test site mean F1 (over models and patch sizes)."""
  return np.array([[mean_f1(results, scenario=s, tests=(t,)) for t in TEST_SETS] for s in scenarios])


def _heat_map(path: Path, matrix: np.ndarray, scenarios) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5, 3.8), dpi=110)
  image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
  ax.set_xticks(range(len(TEST_SETS)), TEST_SETS)
  ax.set_yticks(range(len(scenarios)), scenarios)
  ax.set_xlabel("tested on")
  ax.set_ylabel("trained on")
  for i in range(matrix.shape[0]):
    for j in range(matrix.shape[1]):
      ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
              color="white" if matrix[i, j] < 0.5 else "black", fontsize=9)
  fig.colorbar(image, ax=ax, label="mean F1")
  ax.set_title("Transferability (mean F1 over models and patch sizes)")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_results(results: dict, out: str | os.PathLike, scenarios, patches, models) -> list[Path]:
  """Tables 4-7 (md, csv), Figs. 10-11, the transferability heat map and summary.md."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  written = []
  for number, scenario in enumerate(SCENARIO_ORDER, start=1):
    if scenario not in scenarios:
      continue
    md, text = scenario_table(results, scenario, patches, models)
    stem = f"table{number + 3}_scenario{number}"
    title = f"# Table {number + 3}: scenario {number}, trained on {scenario}\n\n"
    files.write_text_atomically(out / f"{stem}.md", title + md)
    files.write_text_atomically(out / f"{stem}.csv", text)
    written += [out / f"{stem}.md", out / f"{stem}.csv"]
  ordered = [s for s in SCENARIO_ORDER if s in scenarios]
  _bar_chart(out / "fig10_mean_f1_by_scenario.png", ordered,
             {MODEL_NAMES[m]: [mean_f1(results, scenario=s, model=m) for s in ordered] for m in models},
             "Mean F1 per scenario (Fig. 10)", "training scenario")
  _bar_chart(out / "fig11_mean_f1_by_patch.png", [str(p) for p in patches],
             {s: [mean_f1(results, scenario=s, patch=p) for p in patches] for s in ordered},
             "Mean F1 per patch size (Fig. 11)", "patch size (px)")
  matrix = transferability(results, ordered)
  _heat_map(out / "transferability.png", matrix, ordered)
  written += [out / "fig10_mean_f1_by_scenario.png", out / "fig11_mean_f1_by_patch.png",
              out / "transferability.png"]
  files.write_text_atomically(out / "summary.md", summary(results, ordered, patches, models, matrix))
  written.append(out / "summary.md")
  return written


def summary(results: dict, scenarios, patches, models, matrix: np.ndarray) -> str:
  """Which model and which patch size win in each scenario, and the transferability matrix."""
  lines = ["# Sweep summary", "",
           "Mean F1 over the three sites' test areas. Winners per scenario:", "",
           "| scenario | best model (mean F1) | best patch size (mean F1) |", "|---|---|---|"]
  for s in scenarios:
    by_model = {m: mean_f1(results, scenario=s, model=m) for m in models}
    by_patch = {p: mean_f1(results, scenario=s, patch=p) for p in patches}
    bm = max(by_model, key=lambda k: np.nan_to_num(by_model[k], nan=-1))
    bp = max(by_patch, key=lambda k: np.nan_to_num(by_patch[k], nan=-1))
    lines.append(f"| {s} | {MODEL_NAMES[bm]} ({by_model[bm]:.3f}) | {bp} px ({by_patch[bp]:.3f}) |")
  lines += ["", "Transferability: mean F1 (over models and patch sizes), trained on rows, tested on "
            "columns. Diagonal cells are in-site; off-diagonal cells measure transfer.", "",
            "| trained on \\ tested on | " + " | ".join(TEST_SETS) + " |",
            "|---|" + "---|" * len(TEST_SETS)]
  for s, row in zip(scenarios, matrix):
    lines.append(f"| {s} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
  lines += ["", "![transferability](transferability.png)", "",
            "![Fig. 10](fig10_mean_f1_by_scenario.png) ![Fig. 11](fig11_mean_f1_by_patch.png)", ""]
  return "\n".join(lines)


def sweep(scenarios: tuple[str, ...], patches: tuple[int, ...], models: tuple[str, ...],
          out: str | os.PathLike, workdir_root: str | os.PathLike, base: train.TrainConfig) -> list[Path]:
  """Runs the grid and writes the paper's tables and figures."""
  for scenario in scenarios:
    if scenario not in SCENARIO_ORDER:
      raise InputError(None, f"--scenarios: {scenario!r} is not valid", f"use some of: {', '.join(SCENARIO_ORDER)}")
  for patch in patches:
    if patch not in constants.PATCH_SIZES:
      raise InputError(None, f"--patches: {patch} is not valid", f"use some of: {constants.PATCH_SIZES}")
  for model in models:
    if model not in MODEL_NAMES:
      raise InputError(None, f"--models: {model!r} is not valid", f"use some of: {', '.join(MODEL_NAMES)}")
  results = run_grid(scenarios, patches, models, workdir_root, base)
  written = write_results(results, out, scenarios, patches, models)
  print(f"wrote {len(written)} files to {out}", flush=True)
  return written


def sweep_from_flags(scenarios: list[str], patches: list[str], models: list[str], out: str,
                     workdir_root: str, base: train.TrainConfig) -> list[Path]:
  """`launch.sweep`: checks the lists, then runs `sweep`."""
  try:
    patch_sizes = tuple(int(p) for p in patches)
  except ValueError:
    raise InputError(None, f"--patches={','.join(patches)} must be integers",
                     f"use some of: {constants.PATCH_SIZES}") from None
  train.maybe_initialize_distributed()
  return sweep(tuple(scenarios), patch_sizes, tuple(models), out, workdir_root, base)
