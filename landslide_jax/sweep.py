"""The paper's experiment grid (`python -m launch.sweep`): 4 scenarios x 3 patch sizes x 2 models.

Each run lives in `<workdir>/<scenario>-<model>-p<patch>` (the naming of `launch.train`). Finished runs
(with `metrics.json`) are skipped and unfinished ones resume from their checkpoints, so a killed sweep
continues where it stopped. The results are written in the paper's layout: Tables 4-7 (one per
scenario), Figs. 10 and 11, and a summary with the transferability matrix. One sweep at a time writes
into an output folder (a lock file in it); each run is locked by training itself.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import queue
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from landslide_jax import constants, files, train
from landslide_jax.errors import InputError

# The paper's scenarios, in table order: Table 4 = scenario 1 (all sites), ..., Table 7 = Japan.
SCENARIO_ORDER = ("all", "taiwan", "china", "japan")
MODEL_NAMES = {"unet": "U-Net", "resunet": "ResU-Net"}
TEST_SETS = constants.SITE_NAMES + ("all",)
# Cores a --jobs process may use; set by the sweep, applied by launch/__init__.py before jax starts.
_CORES_ENV = "LANDSLIDE_JAX_CORES"


def run_dir(workdir_root: str | os.PathLike, scenario: str, model: str, patch: int) -> Path:
  return Path(workdir_root) / f"{scenario}-{model}-p{patch}"


def _finished(config: train.TrainConfig) -> dict | None:
  """metrics.json of a run already done with these options, else None (to train or resume it).

  The same check as `launch.train` refuses a folder made with other options (`train.check_run_matches`);
  a finished run whose stopping rule (max_epochs, patience) differs is resumed, not skipped.
  """
  saved = train.check_run_matches(config)
  metrics_path = config.resolved_workdir() / "metrics.json"
  if saved is None or not metrics_path.is_file():
    return None
  wanted = dataclasses.asdict(config)
  if any(saved["flags"].get(k) != wanted[k] for k in train.RESUMABLE_OPTIONS):
    return None
  try:
    done = json.loads(metrics_path.read_text())
    if not isinstance(done, dict) or not isinstance(done.get("test"), dict):
      raise ValueError("no test scores")
  except (OSError, ValueError) as err:
    # Written atomically, so damaged from outside; scoring again (a resume past its last epoch) rewrites it.
    files.note(f"{metrics_path}: unreadable ({err.__class__.__name__}); scoring the run again")
    return None
  return done


def run_grid(scenarios: tuple[str, ...], patches: tuple[int, ...], models: tuple[str, ...],
             workdir_root: str | os.PathLike, base: train.TrainConfig, jobs: int = 1
             ) -> dict[tuple[str, str, int], dict]:
  """Trains (or resumes, or skips) every run of the grid; returns each run's metrics.json.

  With `jobs` > 1 the runs to train go to that many `launch.train` processes at a time (`_run_parallel`).
  """
  results, todo = {}, []
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
    elif jobs > 1:
      todo.append((label, config))
    else:
      print(f"{label}: training", flush=True)
      results[(scenario, model, patch)] = train.train_and_evaluate(config)
  if todo:
    results.update(_run_parallel(todo, jobs))
  return results


def job_slots(jobs: int) -> list[dict[str, str]]:
  """What each of `jobs` concurrent trainings may use, as environment variables for its process.

  On GPUs: one device each (CUDA_VISIBLE_DEVICES), so `jobs` may not exceed the device count. On CPU: an
  equal share of this process's cores each (`taskset`-like affinity, read back by XLA to size its thread
  pool), so N processes do not each start a thread per core and fight over them.
  """
  backend = jax.default_backend()
  if backend == "gpu":
    count = jax.local_device_count()
    if jobs > count:
      raise InputError(None, f"--jobs={jobs} is more than the {count} GPUs", f"pass --jobs={count} or fewer")
    return [{"CUDA_VISIBLE_DEVICES": str(d.local_hardware_id)} for d in jax.local_devices()[:jobs]]
  if backend != "cpu":
    raise InputError(None, f"--jobs={jobs} is for CPUs and GPUs, not {backend}",
                     "pass --jobs=1 (one run uses every TPU core)")
  cores = sorted(os.sched_getaffinity(0))
  if jobs > len(cores):
    raise InputError(None, f"--jobs={jobs} is more than the {len(cores)} cores",
                     f"pass --jobs={len(cores)} or fewer")
  shares = np.array_split(np.array(cores), jobs)
  return [{_CORES_ENV: ",".join(map(str, share))} for share in shares]


def _train_command(config: train.TrainConfig) -> list[str]:
  """`python -m launch.train` with every option of `config` as a flag.

  Raises:
    InputError: an option launch.train has no flag for (Adam's b1, b2) differs from its default.
  """
  fixed = [f.name for f in dataclasses.fields(config) if f.name in ("b1", "b2")
           and getattr(config, f.name) != f.default]
  if fixed:
    raise InputError(None, f"options {', '.join(fixed)} have no launch.train flag, so --jobs processes "
                     "would train without them", "pass --jobs=1")
  flags_ = {"scenario": config.scenario, "patch": config.patch, "model": config.model,
            "workdir": config.workdir, "channels": ",".join(config.channels),
            "batch_size": config.batch_size, "learning_rate": config.learning_rate,
            "max_epochs": config.max_epochs, "patience": config.patience, "min_delta": config.min_delta,
            "seed": config.seed, "seeds": config.seeds, "loss_weights": config.loss_weights,
            "pos_weight": config.pos_weight, "threshold": config.threshold,
            "demo_scale": config.demo_scale, "steps_per_dispatch": config.steps_per_dispatch,
            "compute_dtype": config.compute_dtype, "data_dir": config.data_dir,
            "manual_dir": config.manual_dir}
  return [sys.executable, "-m", "launch.train"] + [f"--{k}={v}" for k, v in flags_.items() if v is not None]


def _run_parallel(todo: list[tuple[str, train.TrainConfig]], jobs: int) -> dict:
  """Trains the runs of `todo` in `jobs` concurrent `launch.train` processes, each with its slot
  (`job_slots`) and its log in `<run workdir>.log`; returns each run's metrics.json.

  The datasets are built first, here, so that no two processes build the same one at once.

  Raises:
    InputError: a run failed (after the others finished): its log's last line and where the log is.
  """
  if jax.process_count() > 1:
    raise InputError(None, f"--jobs={jobs} with several processes", "pass --jobs=1 on multi-host runs")
  for key in dict.fromkeys((c.patch, c.data_dir, c.manual_dir, c.demo_scale, c.channels) for _, c in todo):
    train.ensure_datasets(dataclasses.replace(todo[0][1], scenario="all", patch=key[0]))
  slots = queue.Queue()
  for slot in job_slots(jobs):
    slot_env = dict(os.environ, **slot)
    slots.put(slot_env)

  def one(label: str, config: train.TrainConfig) -> tuple[train.TrainConfig, str | None]:
    slot_env = slots.get()
    try:
      log = Path(f"{config.workdir}.log")
      log.parent.mkdir(parents=True, exist_ok=True)
      print(f"{label}: training ({log})", flush=True)
      with open(log, "w", encoding="utf-8") as out:
        code = subprocess.run(_train_command(config), stdout=out, stderr=subprocess.STDOUT, env=slot_env,
                              cwd=Path(__file__).resolve().parents[1], check=False).returncode
      if code == 0:
        print(f"{label}: done", flush=True)
        return config, None
      lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
      return config, f"{label} exited {code} ({lines[-1].strip() if lines else 'no output'}; log: {log})"
    finally:
      slots.put(slot_env)

  with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    outcomes = list(pool.map(lambda item: one(*item), todo))
  failed = [problem for _, problem in outcomes if problem]
  if failed:
    raise InputError(None, f"{len(failed)} of {len(todo)} runs failed: " + "; ".join(failed),
                     "fix what the log says and run the same command: finished runs are skipped")
  return {(c.scenario, c.model, c.patch): json.loads((Path(c.workdir) / "metrics.json").read_text())
          for c, _ in outcomes}


def scenario_table(results: dict, scenario: str, patches, models) -> tuple[str, str]:
  """(markdown, csv) of one scenario: rows model x patch, columns test set x pixel P/R/F1 and object F1
  (landslides counted as regions, metrics.py; "n/a" for runs scored before object scores existed). Runs
  of several seeds give the mean over seeds, and an "F1 std" column per test set says their spread."""
  runs = [results.get((scenario, m, p)) for m in models for p in patches]
  seeded = any(r is not None and "test_std" in r for r in runs)
  kinds = ("P", "R", "F1") + (("F1 std",) if seeded else ()) + ("object F1",)
  header = ["model", "patch"] + [f"{t} {k}" for t in TEST_SETS for k in kinds]
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
        if seeded:
          row.append(f"{scores['test_std'][test]['f1']:.3f}" if "test_std" in scores else "n/a")
        row.append(f"{s['objects']['f1']:.3f}" if "objects" in s else "n/a")
      rows.append(row)
  md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  md += ["| " + " | ".join(r) + " |" for r in rows]
  buffer = io.StringIO()
  csv.writer(buffer).writerows([header] + rows)
  return "\n".join(md) + "\n", buffer.getvalue()


def mean_f1(results: dict, scenario=None, model=None, patch=None, tests=constants.SITE_NAMES) -> float:
  """Mean F1 over the runs matching the filters and the given test sets.

  A run not in `results` simply does not count: the mean is over the runs present, and NaN (never 0)
  when no run matches. Figures draw a NaN as an absent bar marked "n/a"; tables print it as "n/a".
  """
  values = [r["test"][t]["f1"] for r in _matching(results, scenario, model, patch) for t in tests]
  return float(np.mean(values)) if values else float("nan")


def _matching(results: dict, scenario=None, model=None, patch=None) -> list[dict]:
  """The runs of one scenario, model and patch size (None: any)."""
  def one(value):
    return None if value is None else (value,)
  return list(_subset(results, scenarios=one(scenario), patches=one(patch), models=one(model)).values())


def seed_std_f1(results: dict, scenario=None, model=None, patch=None, tests=constants.SITE_NAMES) -> float:
  """Standard deviation over seeds (ddof=1) of `mean_f1`: each seed's F1 averaged over the matching runs
  and `tests` (their mean over seeds is `mean_f1`). NaN unless every matching run has the same 2 or more
  seeds (a spread over other seeds would not be that of the mean)."""
  runs = _matching(results, scenario, model, patch)
  if len({tuple(sorted(r.get("per_seed") or {}, key=int)) for r in runs}) != 1:
    return float("nan")
  per_run = [_seed_f1(r, tests) for r in runs]  # runs x seeds; every run has as many tests
  if per_run[0] is None:
    return float("nan")
  return float(np.std(np.mean(per_run, axis=0), ddof=1))


def _subset(results: dict, scenarios=None, patches=None, models=None) -> dict:
  """The runs of `results` inside the grid (None: any scenario / patch / model)."""
  return {(s, m, p): r for (s, m, p), r in results.items()
          if (scenarios is None or s in scenarios) and (patches is None or p in patches)
          and (models is None or m in models)}


def fig10_data(results: dict, scenarios, models, patches=None, stat=mean_f1
               ) -> dict[str, dict[str, dict[str, float]]]:
  """Fig. 10 of the paper: scenario -> model -> test set (TEST_SETS) -> F1, the mean over patch sizes
  (or with `stat=seed_std_f1`, its spread over seeds).

  Only the runs with a patch size in `patches` count (all when None). A cell without any run is NaN.
  """
  runs = _subset(results, patches=patches)
  return {s: {m: {t: stat(runs, scenario=s, model=m, tests=(t,)) for t in TEST_SETS} for m in models}
          for s in scenarios}


def fig11_data(results: dict, models, patches, scenarios=None, stat=mean_f1) -> dict[str, dict[int, float]]:
  """Fig. 11 of the paper: model -> patch size -> F1, the mean over the training scenarios (those in
  `scenarios`; all when None) and the three sites' test areas (or with `stat=seed_std_f1`, its spread
  over seeds). A cell without any run is NaN."""
  runs = _subset(results, scenarios=scenarios)
  return {m: {p: stat(runs, model=m, patch=p) for p in patches} for m in models}


def _draw_bars(ax, groups: list[str], series: dict[str, list[float]],
               errors: dict[str, list[float]] | None = None) -> None:
  """Grouped bars with their values on top; a NaN is no bar, marked "n/a" (not a bar of height 0).
  `errors` (same layout as `series`): whiskers of +- that much, where not NaN."""
  width = 0.8 / max(len(series), 1)
  for i, (name, values) in enumerate(series.items()):
    x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
    heights = np.asarray(values, dtype=float)
    present = ~np.isnan(heights)
    ax.bar(x[present], heights[present], width, label=name, color=f"C{i}")
    spread = np.full(len(groups), np.nan) if errors is None else np.asarray(errors[name], dtype=float)
    shown = present & ~np.isnan(spread)
    if shown.any():
      ax.errorbar(x[shown], heights[shown], yerr=spread[shown], fmt="none", ecolor="black",
                  elinewidth=0.8, capsize=2)
    # Each value above its bar, or above its whisker.
    tops = heights + np.where(shown, spread, 0.0)
    for xi, top, value in zip(x[present], tops[present], heights[present]):
      ax.annotate(f"{value:.2f}", (xi, top), xytext=(0, 1), textcoords="offset points", ha="center",
                  va="bottom", fontsize=7)
    for xi in x[~present]:
      ax.text(xi, 0.01, "n/a", ha="center", va="bottom", fontsize=8, color=f"C{i}")
  ax.set_xticks(np.arange(len(groups)), groups)
  ax.set_xlim(-0.5, len(groups) - 0.5)  # the same groups, whichever bars are absent
  ax.set_ylim(0, 1.05)
  ax.grid(axis="y", alpha=0.3)
  ax.set_axisbelow(True)


def _bar_chart(path: Path, groups: list[str], panels: dict[str, dict[str, list[float]]], title: str,
               xlabel: str, errors: dict[str, dict[str, list[float]]] | None = None) -> None:
  """One bar-chart panel per item of `panels` (panel title -> series name -> one value per group), with
  whiskers from `errors` (the same layout) when given."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  ncols = 1 if len(panels) == 1 else 2
  nrows = -(-len(panels) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 3.6 * nrows + 0.6), dpi=110,
                           sharey=True, squeeze=False)
  for ax, (panel, series) in zip(axes.flat, panels.items()):
    _draw_bars(ax, groups, series, None if errors is None else errors[panel])
    ax.set_title(panel, fontsize=10)
    ax.set_xlabel(xlabel)
  for ax in axes[:, 0]:
    ax.set_ylabel("mean F1")
  for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
  handles, labels = axes.flat[0].get_legend_handles_labels()
  if not handles:  # the first panel may have no bar at all
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(next(iter(panels.values()))))]
    labels = list(next(iter(panels.values())))
  fig.suptitle(title, fontsize=11)
  fig.legend(handles, labels, loc="lower center", fontsize=9, ncols=len(labels), frameon=False)
  fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
  fig.savefig(path)
  plt.close(fig)


def transferability(results: dict, scenarios) -> np.ndarray:
  """Train scenario x test site mean F1 (over models and patch sizes); NaN where no run was trained."""
  return np.array([[mean_f1(results, scenario=s, tests=(t,)) for t in TEST_SETS] for s in scenarios])


def _heat_map(path: Path, matrix: np.ndarray, scenarios) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  # Height follows the rows and the layout is constrained, so one scenario's single row keeps its colour
  # bar beside it, below the title (a fixed 5 x 3.8 figure put the bar over the title).
  fig, ax = plt.subplots(figsize=(5.5, 1.6 + 0.55 * len(scenarios)), dpi=110, layout="constrained")
  image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")  # a NaN cell is left blank
  ax.set_xticks(range(len(TEST_SETS)), TEST_SETS)
  ax.set_yticks(range(len(scenarios)), scenarios)
  ax.set_xlabel("tested on")
  ax.set_ylabel("trained on")
  for i in range(matrix.shape[0]):
    for j in range(matrix.shape[1]):
      ax.text(j, i, _fmt(matrix[i, j], 2), ha="center", va="center",
              color="white" if matrix[i, j] < 0.5 else "black", fontsize=9)
  fig.colorbar(image, ax=ax, label="mean F1", shrink=0.9)
  ax.set_title("Transferability (mean F1 over models\nand patch sizes)", fontsize=10)
  fig.savefig(path)
  plt.close(fig)


def _scenario_label(scenario: str) -> str:
  return f"scenario {SCENARIO_ORDER.index(scenario) + 1}: trained on {scenario}"


def write_results(results: dict, out: str | os.PathLike, scenarios, patches, models) -> list[Path]:
  """Tables 4-7 (md, csv), Figs. 10-11, the transferability heat map and summary.md.

  Figs. 10 and 11 keep the models apart, as in the paper. A run missing from `results` leaves its
  cells NaN: an absent bar marked "n/a" in the figures, "n/a" in the summary, never a 0.
  """
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
  runs = _subset(results, scenarios=ordered, patches=patches, models=models)
  # With several seeds, whiskers show the spread over seeds of each bar's mean.
  seeded = any(len(r.get("per_seed") or {}) >= 2 for r in runs.values())
  whiskers = "whiskers: \u00b1 1 std over seeds"

  def fig10_panels(stat):
    data = fig10_data(runs, ordered, models, patches, stat)
    return {_scenario_label(s): {MODEL_NAMES[m]: [data[s][m][t] for t in TEST_SETS] for m in models}
            for s in ordered}

  def fig11_panels(stat):
    data = fig11_data(runs, models, patches, ordered, stat)
    return {"": {MODEL_NAMES[m]: [data[m][p] for p in patches] for m in models}}

  _bar_chart(out / "fig10_mean_f1_by_scenario.png", list(TEST_SETS), fig10_panels(mean_f1),
             "Fig. 10 (Ghorbanzadeh et al. 2021): F1 per model, training scenario and test area "
             f"(mean over patch sizes{'; ' + whiskers if seeded else ''})", "tested on",
             fig10_panels(seed_std_f1) if seeded else None)
  _bar_chart(out / "fig11_mean_f1_by_patch.png", [f"{p} px" for p in patches], fig11_panels(mean_f1),
             "Fig. 11 (Ghorbanzadeh et al. 2021): mean F1 per model and patch size\n"
             "(over the training scenarios and the three sites' test areas)"
             + ("\n" + whiskers if seeded else ""), "patch size",
             fig11_panels(seed_std_f1) if seeded else None)
  matrix = transferability(runs, ordered)
  _heat_map(out / "transferability.png", matrix, ordered)
  written += [out / "fig10_mean_f1_by_scenario.png", out / "fig11_mean_f1_by_patch.png",
              out / "transferability.png"]
  files.write_text_atomically(out / "summary.md", summary(runs, ordered, patches, models, matrix))
  written.append(out / "summary.md")
  return written


def _fmt(value: float, digits: int = 3) -> str:
  return "n/a" if np.isnan(value) else f"{value:.{digits}f}"


def _best(scores: dict) -> tuple:
  """(key, score) of the highest score, NaNs ignored; (None, NaN) when all are NaN."""
  present = {k: v for k, v in scores.items() if not np.isnan(v)}
  if not present:
    return None, float("nan")
  key = max(present, key=present.get)
  return key, present[key]


def summary(results: dict, scenarios, patches, models, matrix: np.ndarray) -> str:
  """Which model and which patch size win in each scenario (best patch size also per model), the
  numbers of Figs. 10 and 11, and the transferability matrix. Missing runs read "n/a"."""
  lines = ["# Sweep summary", "",
           "Mean F1 over the three sites' test areas. Winners per scenario:", "",
           "| scenario | best model (mean F1) | best patch size (mean F1) |", "|---|---|---|"]
  for s in scenarios:
    bm, bm_f1 = _best({m: mean_f1(results, scenario=s, model=m) for m in models})
    bp, bp_f1 = _best({p: mean_f1(results, scenario=s, patch=p) for p in patches})
    model_cell = "n/a" if bm is None else f"{MODEL_NAMES[bm]} ({bm_f1:.3f})"
    patch_cell = "n/a" if bp is None else f"{bp} px ({bp_f1:.3f})"
    lines.append(f"| {s} | {model_cell} | {patch_cell} |")

  fig11 = fig11_data(results, models, patches, scenarios)
  lines += ["", "Best patch size per model (mean F1 over the three sites' test areas; the last row is "
            "over all training scenarios, as Fig. 11):", "",
            "| scenario | " + " | ".join(f"best patch for {MODEL_NAMES[m]} (mean F1)" for m in models) + " |",
            "|---|" + "---|" * len(models)]
  rows = [(s, {m: {p: mean_f1(results, scenario=s, model=m, patch=p) for p in patches} for m in models})
          for s in scenarios] + [("all scenarios", fig11)]
  for label, by_model in rows:
    cells = []
    for m in models:
      bp, bp_f1 = _best(by_model[m])
      cells.append("n/a" if bp is None else f"{bp} px ({bp_f1:.3f})")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")

  lines += ["", "Fig. 11: mean F1 per model and patch size (over the training scenarios and the three "
            "sites' test areas):", "",
            "| model \\ patch | " + " | ".join(f"{p} px" for p in patches) + " |",
            "|---|" + "---|" * len(patches)]
  for m in models:
    lines.append(f"| {MODEL_NAMES[m]} | " + " | ".join(_fmt(fig11[m][p]) for p in patches) + " |")

  fig10 = fig10_data(results, scenarios, models, patches)
  lines += ["", "Fig. 10: F1 per training scenario, model and test area (mean over patch sizes):", "",
            "| trained on | model | " + " | ".join(TEST_SETS) + " |", "|---|---|" + "---|" * len(TEST_SETS)]
  for s in scenarios:
    for m in models:
      lines.append(f"| {s} | {MODEL_NAMES[m]} | " + " | ".join(_fmt(fig10[s][m][t]) for t in TEST_SETS) + " |")

  lines += ["", "Transferability: mean F1 (over models and patch sizes), trained on rows, tested on "
            "columns. Diagonal cells are in-site; off-diagonal cells measure transfer.", "",
            "| trained on \\ tested on | " + " | ".join(TEST_SETS) + " |",
            "|---|" + "---|" * len(TEST_SETS)]
  for s, row in zip(scenarios, matrix):
    lines.append(f"| {s} | " + " | ".join(_fmt(v) for v in row) + " |")
  lines += seed_conclusions(results, scenarios, patches, models)  # ends with a blank line
  lines += ["Each mean is over the runs present: a cell without any run reads n/a (not 0).", "",
            "![transferability](transferability.png)", "",
            "![Fig. 10](fig10_mean_f1_by_scenario.png) ![Fig. 11](fig11_mean_f1_by_patch.png)", ""]
  return "\n".join(lines)


# The paper's conclusions the summary checks against seed spread: the in-site comparison of the models,
# and each model's best patch size.
PAPER_BEST_PATCH = {"unet": 128, "resunet": 64}


def _seed_f1(result: dict, tests=constants.SITE_NAMES) -> list[float] | None:
  """Per seed (in seed order), the F1 averaged over `tests`; None for a run without several seeds."""
  per_seed = result.get("per_seed")
  if not per_seed or len(per_seed) < 2:
    return None
  return [float(np.mean([r["test"][t]["f1"] for t in tests])) for _, r in sorted(per_seed.items(),
                                                                                key=lambda x: int(x[0]))]


def paired_difference(a: list[float], b: list[float]) -> dict:
  """Mean and standard deviation (ddof=1) over seeds of a - b, paired by seed, and the half-width of
  its 95% t-interval; `verdict` says whether the interval excludes 0."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  d = np.asarray(a) - np.asarray(b)
  k = len(d)
  mean, std = float(d.mean()), float(d.std(ddof=1))
  half = float(stats.t.ppf(0.975, k - 1) * std / np.sqrt(k))
  if mean - half > 0:
    verdict = "holds beyond seed spread"
  elif mean + half < 0:
    verdict = "reversed beyond seed spread"
  else:
    verdict = "within seed spread"
  return {"mean": mean, "std": std, "half_width": half, "seeds": k, "verdict": verdict}


def seed_conclusions(results: dict, scenarios, patches, models) -> list[str]:
  """Markdown lines: for each of the paper's conclusions, the paired difference over seeds and whether
  it holds beyond seed spread (95% t-interval of the mean difference excludes 0)."""
  lines = ["", "The paper's conclusions against seed spread (paired by seed; mean +- std over seeds, and "
           "whether the 95% t-interval of the mean difference excludes 0):", ""]
  rows = []
  if "unet" in models and "resunet" in models:
    for s in (x for x in scenarios if x in constants.SITE_NAMES):
      per = [(_seed_f1(results.get((s, "resunet", p), {}), (s,)), _seed_f1(results.get((s, "unet", p), {}), (s,)))
             for p in patches]
      per = [(a, b) for a, b in per if a is not None and b is not None and len(a) == len(b)]
      if per:
        d = paired_difference(np.mean([a for a, _ in per], axis=0), np.mean([b for _, b in per], axis=0))
        rows.append(f"| ResU-Net beats U-Net in-site ({s}, mean over patch sizes) | F1 ResU-Net - U-Net "
                    f"{d['mean']:+.3f} +- {d['std']:.3f} ({d['seeds']} seeds) | {d['verdict']} |")
  for m in models:
    best = PAPER_BEST_PATCH.get(m)
    if best not in patches:
      continue
    def f1(p, m=m):
      runs = [_seed_f1(results.get((s, m, p), {})) for s in scenarios]
      runs = [r for r in runs if r is not None]
      return np.mean(runs, axis=0) if runs and len({len(r) for r in runs}) == 1 else None
    at_best = f1(best)
    for q in patches:
      other = f1(q) if q != best else None
      if at_best is None or other is None or len(other) != len(at_best):
        continue
      d = paired_difference(at_best, other)
      rows.append(f"| {MODEL_NAMES[m]} best at {best} px: vs {q} px (mean over scenarios and sites) | "
                  f"F1 {best} px - {q} px {d['mean']:+.3f} +- {d['std']:.3f} ({d['seeds']} seeds) | "
                  f"{d['verdict']} |")
  if not rows:
    return lines[:2] + ["Not assessed: it needs runs of several seeds (--seeds=2 or more) of both models "
                        "(or of a model's paper patch size and another).", ""]
  return lines + ["| conclusion | paired difference | verdict |", "|---|---|---|"] + rows + [""]


def sweep(scenarios: tuple[str, ...], patches: tuple[int, ...], models: tuple[str, ...],
          out: str | os.PathLike, workdir_root: str | os.PathLike, base: train.TrainConfig,
          jobs: int = 1) -> list[Path]:
  """Runs the grid (`jobs` trainings at a time) and writes the paper's tables and figures."""
  if jobs < 1:
    raise InputError(None, f"--jobs={jobs} is not a positive number", "pass e.g. --jobs=2")
  for scenario in scenarios:
    if scenario not in SCENARIO_ORDER:
      raise InputError(None, f"--scenarios: {scenario!r} is not valid", f"use some of: {', '.join(SCENARIO_ORDER)}")
  for patch in patches:
    if patch not in constants.PATCH_SIZES:
      raise InputError(None, f"--patches: {patch} is not valid", f"use some of: {constants.PATCH_SIZES}")
  for model in models:
    if model not in MODEL_NAMES:
      raise InputError(None, f"--models: {model!r} is not valid", f"use some of: {', '.join(MODEL_NAMES)}")
  out = Path(out)
  created = not out.exists()
  lock = None
  if jax.process_index() == 0:
    # One sweep at a time writes these tables; a second one is refused in one line (its runs are
    # guarded each by its own workdir lock, taken by launch.train's code).
    out.mkdir(parents=True, exist_ok=True)
    lock = files.lock_folder(out, noun="output folder", flag="--out")
  try:
    results = run_grid(scenarios, patches, models, workdir_root, base, jobs)
    written = write_results(results, out, scenarios, patches, models)
  finally:
    if lock is not None:
      lock.release()
    if created and out.is_dir() and not any(out.iterdir()):
      out.rmdir()  # a sweep refused before writing anything leaves no empty output folder
  print(f"wrote {len(written)} files to {out}", flush=True)
  return written


def sweep_from_flags(scenarios: list[str], patches: list[str], models: list[str], out: str,
                     workdir_root: str, base: train.TrainConfig, jobs: int = 1) -> list[Path]:
  """`launch.sweep`: checks the lists, then runs `sweep`."""
  try:
    patch_sizes = tuple(int(p) for p in patches)
  except ValueError:
    raise InputError(None, f"--patches={','.join(patches)} must be integers",
                     f"use some of: {constants.PATCH_SIZES}") from None
  train.maybe_initialize_distributed()
  return sweep(tuple(scenarios), patch_sizes, tuple(models), out, workdir_root, base, jobs)
