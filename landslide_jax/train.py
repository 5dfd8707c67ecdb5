"""Training: a pmapped train step (axis 'batch'), early stopping on validation loss, orbax checkpoints.

In the style of flax's `examples/imagenet`: the state is replicated over local devices, gradients and
BatchNorm statistics are averaged with `lax.pmean`, and only process 0 writes logs. A killed run resumes
from the latest checkpoint with the same optimiser state, early-stopping state and data order.

One run at a time per workdir (a lock file, `files.lock_folder`). A damaged run folder is said in one
line naming the file: a damaged latest checkpoint is moved aside and the run falls back to an earlier
usable one; a torn last line of metrics.jsonl (a kill while writing it) is dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import jax_utils
from flax.training import early_stopping, train_state
from jax import lax

from landslide_jax import tta as tta_lib
from landslide_jax import constants, files, input_pipeline, loss_weights, metrics, prepare
from landslide_jax.data import normalization
from landslide_jax.errors import InputError
from landslide_jax.models import create_model

AXIS = "batch"
AUTO_THRESHOLD = "auto"
# Windows per call when predicting probabilities for scoring (one compiled shape; padded at the end).
SCORE_BATCH = 16
CHECKPOINT_DIR = "checkpoints"
# Where damaged checkpoints are moved (not deleted: they may be worth a look), beside CHECKPOINT_DIR.
DAMAGED_CHECKPOINT_DIR = "checkpoints.damaged"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every option of a training run; saved to `<workdir>/config.json`."""
  scenario: str = "china"
  patch: int = 128
  model: str = "unet"
  workdir: str | None = None
  data_dir: str | None = None
  manual_dir: str | None = None
  channels: tuple[str, ...] = constants.DEFAULT_CHANNELS
  batch_size: int = 4
  learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  max_epochs: int = 200
  patience: int = 10
  min_delta: float = 0.0
  seed: int = 0
  # Per-pixel loss weights (loss_weights.py): none, class balancing, or the paper's U-Net weight map.
  # "none" by default: both weighted losses lowered F1 at threshold 0.5 on the China demo and on the
  # Landslide4Sense sample (README 'Loss weights, measured').
  loss_weights: str = "none"
  # Extra weight of landslide pixels, on top of `loss_weights`.
  pos_weight: float = 1.0
  # Probability threshold of the landslide class, or "auto": the F1-best on the validation area with the
  # best checkpoint (metrics.THRESHOLD_GRID), never chosen on test. Validation is monitored at 0.5 then.
  threshold: float | str = 0.5
  demo_scale: float = 1.0
  # Training steps per device dispatch (a lax.scan over batches of device-resident data); 0 = auto:
  # 1 on CPU, where dispatch is cheap next to a step, 32 on GPU/TPU, where batch-4 steps are tiny.
  steps_per_dispatch: int = 0
  # Compute dtype of the model: float32 (default, reproducible) or bfloat16 (mixed precision: params,
  # optimiser state, loss and BatchNorm statistics stay float32).
  compute_dtype: str = "float32"
  # Models trained together in one vmapped program (seeds seed, seed + 1, ...), each with its own
  # initialisation, data order, early stopping and checkpoints (multi_seed.py); 1 = a single run.
  seeds: int = 1

  def resolved_workdir(self) -> Path:
    return Path(self.workdir or f"runs/{self.scenario}-{self.model}-p{self.patch}")


class TrainState(train_state.TrainState):
  batch_stats: Any = None


def create_train_state(rng: jax.Array, model, image_shape: tuple[int, ...],
                       config: TrainConfig) -> TrainState:
  """Initialises parameters (eval mode: no cross-device collective needed) and Adam."""
  variables = jax.jit(functools.partial(model.init, train=False))(rng, jnp.zeros(image_shape))
  tx = optax.adam(config.learning_rate, b1=config.b1, b2=config.b2)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats"))


def weighted_bce_sum(logits: jax.Array, mask: jax.Array, weight: jax.Array) -> jax.Array:
  """Pixel BCE on logits (optax, stable) times the per-pixel loss `weight`, summed.

  `weight` is 0 on invalid pixels (nodata, clouds, padding), so they contribute nothing.
  """
  loss = optax.sigmoid_binary_cross_entropy(logits, mask.astype(jnp.float32))
  return jnp.sum(loss * weight.astype(jnp.float32))


def pixel_weights(data: input_pipeline.SplitData, config: TrainConfig,
                  class_weight: tuple[float, float] | None = None) -> np.ndarray:
  """The loss weight map (N, P, P, 1) of a split: `config.loss_weights`, landslide pixels times
  `config.pos_weight`, 0 where invalid. Precomputed once per run (masks do not change).

  `class_weight` (background, landslide) is the training split's, so validation is weighted alike.
  """
  weight = loss_weights.weight_maps(data.mask, data.valid, config.loss_weights, class_weight)
  if config.pos_weight != 1.0:
    weight = weight * np.where(data.mask != 0, np.float32(config.pos_weight), np.float32(1.0))
  return weight


def apply_model(state: TrainState, params, images, train: bool, mask=None):
  """Model logits; in training mode with BatchNorm also the updated `batch_stats` (else {}).

  `mask` (N, H, W, 1): the pixels BatchNorm may take training statistics over (valid pixels of real
  examples), so padding examples and nodata change no statistic.
  """
  variables = {"params": params}
  if state.batch_stats is not None:
    variables["batch_stats"] = state.batch_stats
  if train and state.batch_stats is not None:
    return state.apply_fn(variables, images, train=True, mask=mask, mutable=["batch_stats"])
  return state.apply_fn(variables, images, train=train), {}


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One Adam step on the global batch; runs under pmap with axis 'batch'.

  The loss is the weighted BCE summed over the *global* batch divided by the global number of valid
  pixels. Each device differentiates its share (its sum divided by the global count, times the device
  count), and `lax.pmean` of those gradients is the gradient of the global mean: one device and N devices
  take the same step on the same global batch.
  """
  global_valid = lax.psum(jnp.sum(batch["valid"].astype(jnp.float32)), AXIS)
  num_devices = lax.psum(1, AXIS)

  def loss_fn(params):
    logits, updates = apply_model(state, params, batch["image"], train=True, mask=batch["valid"])
    loss_sum = weighted_bce_sum(logits, batch["mask"], batch["weight"])
    return loss_sum * num_devices / jnp.maximum(global_valid, 1.0), updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, AXIS)
  new_state = state.apply_gradients(grads=grads)
  if state.batch_stats is not None:
    # BatchNorm already used cross-device statistics (axis_name); averaging keeps replicas identical.
    new_state = new_state.replace(batch_stats=lax.pmean(updates["batch_stats"], AXIS))
  return new_state, {"loss": lax.pmean(loss, AXIS)}


def train_steps(state: TrainState, data: dict, indices: jax.Array, keep: jax.Array
                ) -> tuple[TrainState, jax.Array]:
  """Several `train_step`s in one dispatch: a `lax.scan` over batches gathered on device.

  Args:
    state: the (per-device) train state.
    data: this device's copy of the training split: image, mask, valid, weight (N, P, P, .).
    indices: (steps, per_device) example indices, from `input_pipeline.batch_plan`.
    keep: (steps, per_device) False for padding examples (their pixels count as invalid).

  Returns:
    The state after the steps and each step's loss. Same batches, same arithmetic as calling
    `train_step` once per batch.
  """
  def body(state, step):
    idx, kp = step
    kp = kp[:, None, None, None]
    batch = {"image": data["image"][idx], "mask": data["mask"][idx],
             "valid": data["valid"][idx] * kp.astype(data["valid"].dtype),
             "weight": data["weight"][idx] * kp.astype(data["weight"].dtype)}
    state, out = train_step(state, batch)
    return state, out["loss"]
  return lax.scan(body, state, (indices, keep))


def monitor_threshold(config: TrainConfig) -> float:
  """The threshold of the validation scores logged each epoch: the run's, or 0.5 with "auto" (chosen
  only once training has picked its best checkpoint)."""
  return 0.5 if config.threshold == AUTO_THRESHOLD else float(config.threshold)


@functools.partial(jax.jit, static_argnames=("tta",))
def probabilities(state: TrainState, images: jax.Array, tta: bool = False) -> jax.Array:
  """Landslide probabilities (N, P, P) of normalised images (N, P, P, C); with `tta` the mean over the
  8 rotations and flips of each window (tta.dihedral_mean)."""
  def predict(x):
    logits, _ = apply_model(state, state.params, x, train=False)
    return _landslide_probability(logits)
  return tta_lib.dihedral_mean(predict, images) if tta else predict(images)


def _landslide_probability(logits: jax.Array) -> jax.Array:
  """Per-pixel landslide probability (N, P, P), float32, of the model's logits (N, P, P, 1)."""
  return jax.nn.sigmoid(logits[..., 0].astype(jnp.float32))


@jax.jit
def probabilities_and_bce(state: TrainState, images: jax.Array, mask: jax.Array, valid: jax.Array
                          ) -> tuple[jax.Array, jax.Array]:
  """`probabilities` of a batch and its plain BCE summed over valid pixels, from one forward pass."""
  logits, _ = apply_model(state, state.params, images, train=False)
  return _landslide_probability(logits), weighted_bce_sum(logits, mask, valid)


def _padded_batches(arrays: list[np.ndarray], batch_size: int):
  """Yields (n, arrays[start:start + n] zero-padded to `batch_size`): one shape, one compilation.

  Padding has valid = 0, so it counts in no loss or score.
  """
  for start in range(0, len(arrays[0]), batch_size):
    chunks = [a[start:start + batch_size] for a in arrays]
    n = len(chunks[0])
    yield n, [np.concatenate([c, np.zeros((batch_size - n, *c.shape[1:]), c.dtype)]) for c in chunks]


def split_probabilities(state: TrainState, images: np.ndarray, tta: bool = False,
                        batch_size: int = SCORE_BATCH) -> np.ndarray:
  """`probabilities` of a whole split on this process's first device, in batches of one shape.

  No collective: every process of a multi-host run computes the same values, so scores that need whole
  maps (objects, thresholds) are computed alike everywhere.
  """
  out = [np.zeros((0, *images.shape[1:3]), np.float32)]
  for n, (padded,) in _padded_batches([images], batch_size):
    out.append(np.asarray(probabilities(state, padded, tta))[:n])
  return np.concatenate(out)


def split_probabilities_and_bce(state: TrainState, data: input_pipeline.SplitData,
                                batch_size: int = SCORE_BATCH) -> tuple[np.ndarray, float]:
  """`split_probabilities` of a split and its plain BCE summed over valid pixels (float64), from one
  forward pass of each window (scores need the maps, the test loss the logits)."""
  out, bce_sum = [np.zeros((0, *data.image.shape[1:3]), np.float32)], 0.0
  for n, (images, mask, valid) in _padded_batches([data.image, data.mask, data.valid], batch_size):
    probs, bce = probabilities_and_bce(state, images, mask, valid)
    out.append(np.asarray(probs)[:n])
    bce_sum += float(bce)
  return np.concatenate(out), bce_sum


def choose_threshold(probs: np.ndarray, validation: input_pipeline.SplitData) -> dict:
  """The F1-best threshold on the validation split (metrics.THRESHOLD_GRID), its validation F1 and the
  validation F1 at 0.5."""
  rows = metrics.threshold_scores(probs, validation.mask[..., 0], validation.valid[..., 0])
  best = metrics.best_threshold(rows)
  at_half = metrics.threshold_scores(probs, validation.mask[..., 0], validation.valid[..., 0], (0.5,))[0]
  return {"threshold": best["threshold"], "validation_f1": best["f1"], "validation_f1_at_0.5": at_half["f1"]}


def replicate(tree):
  """Copies a pytree onto every local device, already laid out as pmap over AXIS returns arrays.

  `flax.jax_utils.replicate` alone gives a different sharding from what the pmapped step returns, so the
  step would compile a second time on its own output; passing through an identity pmap over the same
  axis name avoids that (one compilation instead of two).
  """
  return jax.pmap(lambda x: x, axis_name=AXIS)(jax_utils.replicate(tree))


def resolved_steps_per_dispatch(config: TrainConfig) -> int:
  """`steps_per_dispatch`, with 0 (auto) resolved for the current backend."""
  if config.steps_per_dispatch > 0:
    return config.steps_per_dispatch
  return 1 if jax.default_backend() == "cpu" else 32


def eval_step(state: TrainState, batch: dict, threshold: float) -> dict:
  """Loss sum, valid count and confusion counts of a batch, summed over devices (on device)."""
  logits, _ = apply_model(state, state.params, batch["image"], train=False)
  loss_sum = weighted_bce_sum(logits, batch["mask"], batch["weight"])
  count = jnp.sum(batch["valid"].astype(jnp.float32))
  counts = metrics.confusion_counts(logits, batch["mask"], batch["valid"], threshold)
  return lax.psum({"loss_sum": loss_sum, "count": count, "counts": counts}, AXIS)


def evaluate(p_eval_step, state, data: input_pipeline.SplitData, config: TrainConfig,
             weight: np.ndarray | None = None) -> dict:
  """Loss (weighted by `weight`, or plain BCE; mean over valid pixels) and metrics over a whole split."""
  return report_totals(eval_totals(p_eval_step, state, data, config, weight))


def eval_totals(p_eval_step, state, data: input_pipeline.SplitData, config: TrainConfig,
                weight: np.ndarray | None = None) -> dict:
  """`p_eval_step`'s outputs (loss_sum, count, counts) summed over a whole split, float64 on the host."""
  totals = None
  for batch in input_pipeline.batches(data, config.batch_size, jax.local_device_count(),
                                      shuffle=False, process_index=jax.process_index(),
                                      process_count=jax.process_count(), weight=weight):
    out = jax.tree.map(lambda x: np.asarray(x[0], np.float64), p_eval_step(state, batch))
    totals = out if totals is None else jax.tree.map(np.add, totals, out)
  # No cross-process gather: under multi-process pmap the axis spans every process's devices, so the
  # psum in eval_step already holds the global totals (gathering again counted them process_count times).
  return totals


def report_totals(totals: dict) -> dict:
  """Scores (`metrics.report`) and mean loss of one model's `eval_totals`."""
  result = metrics.report(totals["counts"])
  result["loss"] = float(totals["loss_sum"] / max(totals["count"], 1.0))
  return result


def _git_commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                          capture_output=True, text=True, timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _run_config(config: TrainConfig, datasets: dict[str, dict]) -> dict:
  import optax as _optax  # pylint: disable=import-outside-toplevel,reimported
  return {
      "flags": dataclasses.asdict(config),
      "workdir": str(config.resolved_workdir()),
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "flax": flax.__version__, "optax": _optax.__version__,
                   "orbax-checkpoint": ocp.__version__ if hasattr(ocp, "__version__") else None,
                   "numpy": np.__version__},
      "git_commit": _git_commit(),
      "datasets": datasets,
      "devices": {"kind": jax.devices()[0].device_kind, "platform": jax.default_backend(),
                  "local_count": jax.local_device_count(), "global_count": jax.device_count(),
                  "process_count": jax.process_count()},
  }


def build_model(config: TrainConfig):
  """The run's model; ResU-Net's BatchNorm averages statistics over the pmap axis."""
  kwargs = {"dtype": jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32}
  if config.model == "resunet":
    kwargs["axis_name"] = AXIS
  return create_model(config.model, **kwargs)


def check_config(config: TrainConfig) -> None:
  """Rejects unusable options with a one-line InputError listing the valid values."""
  def bad(flag, value, valid):
    raise InputError(None, f"--{flag}={value} is not valid", f"use one of: {', '.join(map(str, valid))}")
  if config.scenario not in input_pipeline.SCENARIOS:
    bad("scenario", config.scenario, input_pipeline.SCENARIOS)
  if config.patch not in constants.PATCH_SIZES:
    bad("patch", config.patch, constants.PATCH_SIZES)
  from landslide_jax.models import MODELS  # pylint: disable=import-outside-toplevel
  if config.model not in MODELS:
    bad("model", config.model, MODELS)
  if config.loss_weights not in loss_weights.LOSS_WEIGHTS:
    bad("loss_weights", config.loss_weights, loss_weights.LOSS_WEIGHTS)
  devices = jax.local_device_count() * jax.process_count()
  if config.batch_size <= 0 or config.batch_size % devices:
    raise InputError(None, f"--batch_size={config.batch_size} does not divide by the {devices} devices",
                     f"pass a positive multiple of {devices}")
  if config.compute_dtype not in ("float32", "bfloat16"):
    bad("compute_dtype", config.compute_dtype, ("float32", "bfloat16"))
  if config.steps_per_dispatch < 0:
    raise InputError(None, f"--steps_per_dispatch={config.steps_per_dispatch} is negative",
                     "pass 0 (auto) or a positive number of steps")
  if config.max_epochs <= 0 or config.patience < 0 or config.learning_rate <= 0:
    raise InputError(None, "--max_epochs and --learning_rate must be positive, --patience >= 0",
                     "check the flag values")
  # NaN passes every comparison above, so finiteness is checked by itself. launch.train stops these at
  # flag parsing already; this guards runs built in code (launch.sweep, notebooks) before the workdir exists.
  if not math.isfinite(config.learning_rate):
    raise InputError(None, f"--learning_rate={config.learning_rate} is not finite",
                     "pass e.g. --learning_rate=0.001")
  if config.threshold != AUTO_THRESHOLD and not (isinstance(config.threshold, (int, float))
                                                 and 0.0 < config.threshold < 1.0):
    raise InputError(None, f"--threshold={config.threshold} is not strictly between 0 and 1 (or auto)",
                     "pass e.g. --threshold=0.5")
  if not (math.isfinite(config.pos_weight) and config.pos_weight > 0):
    raise InputError(None, f"--pos_weight={config.pos_weight} is not a finite number > 0",
                     "pass e.g. --pos_weight=1")
  if not (math.isfinite(config.min_delta) and config.min_delta >= 0):
    raise InputError(None, f"--min_delta={config.min_delta} is not a finite number >= 0",
                     "pass e.g. --min_delta=0")
  if not 0 <= config.seed < 2**63:  # numpy refuses negative seeds, jax.random.key ones beyond int64
    raise InputError(None, f"--seed={config.seed} is outside [0, 2**63)", "pass e.g. --seed=0")
  if not 1 <= config.seeds <= 64 or config.seed + config.seeds > 2**63:
    raise InputError(None, f"--seeds={config.seeds} is not a number of models in 1..64 (with --seed="
                     f"{config.seed} they use seeds {config.seed}..{config.seed + config.seeds - 1})",
                     "pass e.g. --seeds=3")


def dataset_root(config: TrainConfig, data_dir: str | os.PathLike | None = None) -> Path:
  """Where the run's datasets live: `data_dir` (else the run's --data_dir, else TFDS's default), in the
  demo scale's own folder when the run uses the built-in demo scenes (`prepare.datasets_dir`)."""
  base = data_dir or config.data_dir or prepare.default_data_dir()
  return prepare.datasets_dir(base, config.manual_dir, config.demo_scale)


def dataset_names(config: TrainConfig) -> list[str]:
  """Every dataset a run reads: its training scenario's sites and its test sets' sites."""
  names = set(input_pipeline.SCENARIOS[config.scenario])
  for test_set in input_pipeline.test_sets(config.scenario):
    names.update(constants.SITE_NAMES if test_set == "all" else (test_set,))
  return sorted(names)


def _dataset_record(metadata: dict) -> dict:
  """What identifies a dataset a run used (saved in config.json, compared on resume)."""
  return {"source": metadata["source"], "input_hash": metadata["input_hash"],
          "s2_add_offset": metadata.get("s2_add_offset")}


def ensure_datasets(config: TrainConfig) -> dict[str, dict]:
  """Builds missing datasets (demo scenes without --manual_dir); returns each dataset's record
  (source, input hash, Sentinel-2 offset used)."""
  base = Path(config.data_dir) if config.data_dir else prepare.default_data_dir()
  root = dataset_root(config)
  names = dataset_names(config)
  manual_dir = config.manual_dir
  if manual_dir is None and "landslide4sense" in names:
    raise InputError(None, "--scenario=landslide4sense needs --manual_dir",
                     "pass the folder holding TrainData/ (e.g. ../shared/data/landslide4sense_sample)")
  # One process builds; the others wait, then read. Several processes building into one data dir at
  # once could replace a folder another one is reading.
  if jax.process_index() == 0:
    if manual_dir is None:
      manual_dir = prepare.demo_manual_dir(base, tuple(names), config.demo_scale)
    for name in names:
      done = prepare.prepare_site(name, config.patch, root, manual_dir, config.channels)
      if done.rebuilt:
        print(f"prepared dataset {name} p{config.patch} at {done.path}", flush=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("landslide_jax:datasets_ready")
  return {name: _dataset_record(normalization.read_metadata(
      input_pipeline.dataset_dir(name, config.patch, config.channels, root))) for name in names}


# Options that may differ when a run is resumed: the stopping rule may grow. Where the run and its data
# live and how steps are dispatched do not change what is computed (the datasets' identity is checked by
# their input hash instead).
RESUMABLE_OPTIONS = ("max_epochs", "patience")
_LOCATION_OPTIONS = ("workdir", "data_dir", "manual_dir", "steps_per_dispatch")
# Options added after runs were made, with the value those runs had.
ADDED_OPTION_DEFAULTS = {"seeds": 1}


def _as_saved(value):
  return list(value) if isinstance(value, (list, tuple)) else value


def check_run_matches(config: TrainConfig) -> dict | None:
  """The saved config.json of `config`'s workdir, checked to be the same experiment; None if there is
  no run there yet.

  One check for `launch.train` (resuming) and `launch.sweep` (skipping or resuming): a workdir whose
  saved options (all but `RESUMABLE_OPTIONS` and where things live) differ, or whose datasets were since
  rebuilt from other raw inputs, is refused, so a run is never scored or continued under another
  experiment's name.

  Raises:
    InputError: the workdir holds another experiment, or a config.json this version cannot read.
  """
  workdir = config.resolved_workdir()
  path = workdir / "config.json"
  if not path.is_file():
    return None
  fix = "pass another --workdir, or delete that run folder to start over"
  try:
    saved = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    # Written atomically by training, so this is damage from outside (a copy cut short, an editor).
    raise InputError(path, "is not a config.json this version of landslide_jax wrote: not valid JSON "
                     f"({err.__class__.__name__} at byte {getattr(err, 'pos', '?')}; truncated?), so the "
                     "run's options cannot be checked", fix) from None
  try:
    flags, datasets = saved["flags"], saved["datasets"]
    if not isinstance(flags, dict) or not isinstance(datasets, dict):
      raise TypeError
  except (KeyError, TypeError):
    raise InputError(path, "is not a config.json this version of landslide_jax wrote (it lacks 'flags' "
                     "or 'datasets': another version's, or not a run's)", fix) from None
  # Runs made before an option existed were made with its default.
  flags = {**ADDED_OPTION_DEFAULTS, **flags}
  wanted = dataclasses.asdict(config)
  # Options added since that run was made are fine where they change nothing computed (where things
  # live, how steps are dispatched); another version's options unknown here cannot be honoured.
  unknown = sorted(set(flags) - set(wanted))
  missing = sorted(set(wanted) - set(flags) - set(RESUMABLE_OPTIONS + _LOCATION_OPTIONS))
  if unknown or missing:
    raise InputError(path, "is not a config.json this version of landslide_jax wrote (another version's: "
                     + "; ".join(part for part in (
                         f"options unknown here: {', '.join(unknown)}" if unknown else "",
                         f"options it lacks: {', '.join(missing)}" if missing else "") if part) + ")",
                     "resume it with the version that made it, pass another --workdir, or delete that "
                     "run folder to start over")
  differ = [k for k in wanted if k not in RESUMABLE_OPTIONS + _LOCATION_OPTIONS
            and _as_saved(flags.get(k)) != _as_saved(wanted[k])]
  if differ:
    raise InputError(workdir, "holds a run made with other options ("
                     + ", ".join(f"{k}={flags.get(k)!r}, now {wanted[k]!r}" for k in differ) + ")",
                     "pass another --workdir, or delete that run folder to start over")
  root = dataset_root(config)
  for name, record in datasets.items():
    metadata_path = input_pipeline.dataset_dir(name, config.patch, config.channels, root)
    if not (metadata_path / "metadata.json").is_file():
      continue  # not built (yet); ensure_datasets builds it, and this check runs again after
    current = normalization.read_metadata(metadata_path)["input_hash"]
    if current != record.get("input_hash"):
      raise InputError(workdir, f"was trained on a {name} dataset built from other raw inputs than "
                       f"the one in {metadata_path}",
                       "pass another --workdir, or the --data_dir/--manual_dir the run was made with")
  return saved


def update_early_stopping(stopper: early_stopping.EarlyStopping, val_loss: float
                          ) -> early_stopping.EarlyStopping:
  """`flax.training.early_stopping` with two corrections.

  - Stops after `patience` epochs without improvement (Keras's meaning, and the flag's help): flax sets
    `should_stop` one update later, after `patience + 1`.
  - A non-finite validation loss is no improvement: flax would take NaN as the first best value, and
    then nothing could ever compare better.
  """
  if math.isfinite(val_loss):
    stopper = stopper.update(val_loss)
  else:
    stopper = stopper.replace(patience_count=stopper.patience_count + 1, has_improved=False)
  return stopper.replace(should_stop=stopper.should_stop or (
      not stopper.has_improved and stopper.patience_count >= stopper.patience))


def _finite_val_loss(metrics_: dict) -> float:
  # orbax orders checkpoints by this; NaN compares false both ways and breaks the ordering, so a
  # diverged epoch could displace the best checkpoint.
  value = float(metrics_["val_loss"])
  return value if math.isfinite(value) else math.inf


def checkpoint_manager(workdir: Path) -> ocp.CheckpointManager:
  """Keeps the latest checkpoint (to resume) and the one of the lowest finite validation loss (to
  evaluate). best_fn with max_to_keep would delete the latest when it is not among the best, so a
  preservation policy keeps both."""
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=1),
      ocp.checkpoint_managers.BestN(get_metric_fn=_finite_val_loss, reverse=True, n=1),
  ])
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_finite_val_loss,
                                         best_mode="min", create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager((workdir / CHECKPOINT_DIR).resolve(), options=options)


def checkpoint_item(state: TrainState, epoch: int, stopper: early_stopping.EarlyStopping,
                    pos_weight: float) -> dict:
  return {"state": jax.device_get(state), "epoch": epoch, "pos_weight": pos_weight,
          "early_stopping": {"best_metric": stopper.best_metric,
                             "patience_count": stopper.patience_count,
                             "should_stop": stopper.should_stop}}


def short_error(err: BaseException) -> str:
  """An exception as a short phrase for a one-line message (tensorstore appends its whole spec)."""
  text = (str(err).strip().splitlines() or [""])[0].split(" [tensorstore_spec", 1)[0]
  text = text or err.__class__.__name__
  return text if len(text) <= 200 else text[:197] + "..."


def _ignore_late_restore_callbacks(directory: Path) -> None:
  """Silences what a failed orbax restore leaves behind, around our one-line message.

  orbax stops at the first error of a restore and closes its event loop, and tensorstore's reads of the
  other arrays are left behind. Two kinds of report follow, dozens each, at a time set by the garbage
  collector (so also after the failed restore returned, or at exit): reads still in flight report to the
  closed loop ("RuntimeError: Event loop is closed", unraisable exceptions from tensorstore's threads), and
  reads that failed too are futures (or tasks) whose error nobody retrieved (asyncio logs "Future exception
  was never retrieved" with the same kind of error as the one we report). Installed before restoring, for
  the rest of the process. Only those are dropped, and the futures only when their error names a file
  under `directory`; every other report reaches the hook or handlers that were there before.
  """
  previous = sys.unraisablehook
  if not getattr(previous, "_landslide_jax_filter", False):
    def hook(unraisable):
      if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
      previous(unraisable)
    hook._landslide_jax_filter = True  # pylint: disable=protected-access
    sys.unraisablehook = hook
  asyncio_logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _UnretrievedRestoreErrors) and f.directory == str(directory)
             for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_UnretrievedRestoreErrors(str(directory)))


class _UnretrievedRestoreErrors(logging.Filter):
  """Drops asyncio's "Future (or Task) exception was never retrieved" when the error names a file under
  `directory`."""
  UNRETRIEVED = ("Future exception was never retrieved", "Task exception was never retrieved")

  def __init__(self, directory: str):
    super().__init__()
    self.directory = directory

  def filter(self, record: logging.LogRecord) -> bool:
    if not str(record.msg).startswith(self.UNRETRIEVED):
      return True
    error = record.exc_info[1] if record.exc_info else None
    return self.directory not in f"{error}{record.getMessage()}"


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, item: dict) -> dict:
  """Restores checkpoint `step` of `manager` into the structure of `item` (see `checkpoint_item`).

  When it fails, the error is raised as orbax raised it; what the failed restore leaves behind on stderr
  is silenced (`_ignore_late_restore_callbacks`) so that the caller's one-line message stays one line.
  """
  _ignore_late_restore_callbacks(Path(str(manager.directory)))
  return manager.restore(step, args=ocp.args.StandardRestore(item))


def _checkpoint_steps(directory: Path) -> list[tuple[int, Path]]:
  """The step folders of a checkpoint directory, latest first (orbax's unfinished `*-tmp-*` ones aside)."""
  if not directory.is_dir():
    return []
  return sorted(((int(p.name), p) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()),
                reverse=True)


def _checkpoint_problem(step_dir: Path) -> tuple[Path, str] | None:
  """(file, problem) when a step folder is visibly damaged, else None.

  These are what orbax cannot even list: an unreadable metrics file stops the manager from opening, and an
  empty step folder makes every restore fail. Damaged array data shows only when restoring.
  """
  if not any(step_dir.iterdir()):
    return step_dir, "checkpoint folder is empty"
  state = step_dir / "default"
  if not state.is_dir() or not any(state.iterdir()):
    return state, "checkpoint has no saved state (missing or empty)"
  for name in ("_CHECKPOINT_METADATA", "metrics/metrics", "default/_METADATA"):
    path = step_dir / name
    if name != "metrics/metrics" and not path.is_file():
      return path, "checkpoint file is missing"
    if path.is_file():
      try:
        json.loads(path.read_text())
      except (OSError, ValueError):
        return path, "checkpoint file is not valid JSON (truncated?)"
  return None


def _move_aside(workdir: Path, step_dir: Path) -> Path:
  """Moves a damaged step folder out of the checkpoint directory (kept for a look, not deleted)."""
  damaged = workdir / DAMAGED_CHECKPOINT_DIR
  damaged.mkdir(exist_ok=True)
  target, n = damaged / step_dir.name, 1
  while target.exists():
    n += 1
    target = damaged / f"{step_dir.name}-{n}"
  os.replace(step_dir, target)
  return target


def _no_usable_checkpoint(workdir: Path, damaged: list[tuple[int, Path, str]]) -> InputError:
  step, path, problem = damaged[0]
  others = "".join(f"; checkpoint {s} too: {p}: {q}" for s, p, q in damaged[1:])
  return InputError(path, f"{problem} (checkpoint of epoch {step}), and no earlier checkpoint is usable"
                    f"{others}", f"delete {workdir / CHECKPOINT_DIR} to train this run again from epoch 1 "
                    "(config.json and the datasets are kept), or pass another --workdir")


def restore_latest(workdir: Path, template: dict) -> tuple[ocp.CheckpointManager, dict | None]:
  """Opens the run's checkpoint manager and restores the latest usable checkpoint (None: no checkpoint).

  A damaged checkpoint (see `_checkpoint_problem`, or one whose restore fails: truncated or missing array
  files) is moved to `checkpoints.damaged/` with one line saying which file and why, and the run falls
  back to the latest earlier one that restores: training is deterministic, so the epochs after it are
  simply trained again. Damaged checkpoints are moved only once a usable one was found.

  With several processes, the damage seen in the files (`_checkpoint_problem`) is the same for all of
  them (one shared folder): process 0 moves it aside while the others wait, and all fall back together. A
  restore that fails in one process only is not retried with an earlier step: the processes would have to
  leave orbax's collective restore at the same step, so that case stops with the step to move aside.

  Raises:
    InputError: checkpoints exist but none is usable (or, with several processes, a restore failed).
  """
  directory = workdir / CHECKPOINT_DIR
  steps = _checkpoint_steps(directory)
  damaged = [(step, *problem) for step, path in steps if (problem := _checkpoint_problem(path))]
  sound = [step for step, _ in steps if step not in {d[0] for d in damaged}]  # latest first
  if damaged and not sound:
    raise _no_usable_checkpoint(workdir, damaged)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    # All have looked before process 0 moves anything, and move on only once it has.
    multihost_utils.sync_global_devices("landslide_jax:checkpoints_listed")
  if jax.process_index() == 0:
    for step, _, _ in damaged:
      _move_aside(workdir, directory / str(step))  # before orbax opens: they stop it from listing steps
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("landslide_jax:damaged_checkpoints_moved")
  manager, restored, failed = checkpoint_manager(workdir), None, []
  for step in sound:
    try:
      restored = restore_checkpoint(manager, step, template)
      break
    except Exception as err:  # pylint: disable=broad-except  (tensorstore and orbax raise many kinds)
      failed.append((step, directory / str(step), f"checkpoint cannot be restored ({short_error(err)})"))
      if jax.process_count() > 1:
        break
  if jax.process_count() > 1 and sound:
    # Every process made one attempt, at the same step; all stop if any failed, none waits for the rest.
    failures = multihost_utils.process_allgather(np.int32(bool(failed)))
    if np.any(failures):
      manager.close()
      step, where = sound[0], [int(i) for i in np.flatnonzero(failures)]
      path = directory / str(step)
      earlier = [s for s in sound if s < step]
      problem = failed[0][2] if failed else "checkpoint cannot be restored"
      raise InputError(path, f"{problem} in process {', '.join(map(str, where))} of {jax.process_count()}",
                       f"move it into {workdir / DAMAGED_CHECKPOINT_DIR}/ and run the same command: "
                       + (f"it resumes from the checkpoint of epoch {earlier[0]}" if earlier else
                          "it trains again from epoch 1"))
  if failed:
    manager.close()
    if restored is None:
      raise _no_usable_checkpoint(workdir, failed + damaged)
    for step, _, _ in failed:
      _move_aside(workdir, directory / str(step))
    manager = checkpoint_manager(workdir)  # orbax keeps the steps it listed: open it again without them
  resumed = int(restored["epoch"]) if restored is not None else None
  for step, path, problem in sorted(failed + damaged, reverse=True) if jax.process_index() == 0 else ():
    then = (f"resuming from the earlier checkpoint of epoch {resumed}" if resumed < step else
            f"resuming from epoch {resumed} (the best checkpoint is now chosen among those left)")
    files.note(f"{path}: {problem}; moved checkpoint {step} to {workdir / DAMAGED_CHECKPOINT_DIR}, {then}")
  return manager, restored


def read_metrics_log(path: Path, resume_epoch: int) -> list[str]:
  """The lines of `metrics.jsonl` to keep when resuming from `resume_epoch`: those of epochs up to it.

  A torn last line (a kill while writing it, by a version that wrote lines in pieces, or a disk that
  filled up) is dropped with a one-line note: its epoch is after the last checkpoint and is trained and
  logged again.

  Raises:
    InputError: a line other than the last is not a record (damage from outside).
  """
  text = path.read_bytes().decode("utf-8", errors="replace")
  lines = text.split("\n")
  kept, last = [], len(lines) - 1
  # A complete file ends with a newline: its last piece is empty.
  while last >= 0 and not lines[last].strip():
    last -= 1
  for number, line in enumerate(lines[:last + 1], start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      epoch = int(record["epoch"])
    except (ValueError, KeyError, TypeError):
      if number == last + 1:
        files.note(f"{path}: dropped its torn last line (line {number}, cut off when the run was killed)")
        break
      raise InputError(path, f"line {number} is not a metrics record (damaged)",
                       f"delete that line (every epoch after checkpoint {resume_epoch} is logged again), "
                       "or the whole file") from None
    if epoch <= resume_epoch:
      kept.append(line)
  return kept


class _Logger:
  """metrics.jsonl and TensorBoard, written by process 0 only."""

  def __init__(self, workdir: Path, resume_epoch: int):
    self.active = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"
    self.writer = None
    if not self.active:
      return
    if self.path.exists():
      # Drop epochs after the checkpoint we resume from (they will be run again) and a torn last line.
      kept = "".join(ln + "\n" for ln in read_metrics_log(self.path, resume_epoch))
      if kept != self.path.read_text(errors="replace"):
        files.write_text_atomically(self.path, kept)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self.writer = SummaryWriter(str(workdir / "tensorboard"))

  def log(self, record: dict) -> None:
    if not self.active:
      return
    # One write of the whole line, flushed to disk: a kill cannot leave half a line behind.
    files.append_line(self.path, json.dumps(record))
    for key, value in record.items():
      if key != "epoch" and isinstance(value, (int, float)):
        self.writer.add_scalar(key, value, record["epoch"])
    self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _write_json(path: Path, data: dict) -> None:
  if jax.process_index() == 0:
    files.write_text_atomically(path, json.dumps(data, indent=2) + "\n")


class _WorkdirLock:
  """Process 0's hold on the run folder (`files.lock_folder`), taken as soon as the folder exists: a second
  run in it is refused in one line instead of interleaving logs and deleting the other's checkpoints.
  The other processes of a multi-host run share the folder with their process 0 and take no lock."""

  def __init__(self, workdir: Path):
    self.workdir, self.lock = workdir, None

  def take(self) -> None:
    if self.lock is None and jax.process_index() == 0 and self.workdir.is_dir():
      self.lock = files.lock_folder(self.workdir)

  def release(self) -> None:
    if self.lock is not None:
      self.lock.release()
      self.lock = None


def train_and_evaluate(config: TrainConfig) -> dict:
  """Trains to early stopping (resuming if the workdir has checkpoints), then scores the best
  checkpoint on every test set. Returns the contents of `<workdir>/metrics.json`.

  Raises:
    InputError: bad options or inputs, a workdir in use by another run or holding another experiment,
      or damaged beyond what resuming can fall back from.
  """
  check_config(config)
  lock = _WorkdirLock(config.resolved_workdir())
  try:
    if config.seeds > 1:
      from landslide_jax import multi_seed  # pylint: disable=import-outside-toplevel  (imports train)
      return multi_seed.train_seeds(config, lock)
    return _train_and_evaluate(config, lock)
  finally:
    lock.release()  # on success, on an exception, on Ctrl-C; the kernel drops it on a kill


@dataclasses.dataclass
class RunInputs:
  """What a run trains on, read once: datasets (built if missing), their records and normalisation,
  the normalised train and validation splits and their loss weight maps."""
  data_dir: Path
  datasets: dict[str, dict]
  stats: normalization.ChannelStats
  data: dict[str, input_pipeline.SplitData]
  weights: dict[str, np.ndarray]

  def write_config(self, config: TrainConfig) -> None:
    """`<workdir>/config.json`: the options, datasets and the normalisation statistics, which travel
    with the run so that evaluation and prediction normalise exactly as training did."""
    _write_json(config.resolved_workdir() / "config.json",
                {**_run_config(config, self.datasets), "normalization": self.stats.to_json()})


def open_run(config: TrainConfig, lock: _WorkdirLock) -> RunInputs:
  """Checks the workdir holds this experiment (or nothing), builds missing datasets, makes the workdir,
  writes its config.json and reads the training data."""
  workdir = config.resolved_workdir()
  lock.take()  # an existing run folder: before reading or writing anything in it
  check_run_matches(config)  # before building anything: another experiment's folder is refused now
  data_dir = dataset_root(config)
  datasets = ensure_datasets(config)
  check_run_matches(config)  # and against the datasets as built
  # Only now: bad raw inputs must not leave an empty run folder behind.
  workdir.mkdir(parents=True, exist_ok=True)
  lock.take()  # a new run folder: before writing into it
  stats = input_pipeline.scenario_normalization(config.scenario, config.patch, config.channels, data_dir)
  data = input_pipeline.load_training_data(config.scenario, config.patch, config.channels, data_dir,
                                           stats)
  # Loss weight maps, once per run: class weights from the training split, applied to validation too.
  class_weight = loss_weights.class_weights(data["train"].mask, data["train"].valid)
  weights = {split: pixel_weights(data[split], config, class_weight) for split in data}
  inputs = RunInputs(data_dir, datasets, stats, data, weights)
  inputs.write_config(config)
  return inputs


def _train_and_evaluate(config: TrainConfig, lock: _WorkdirLock) -> dict:
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  workdir = config.resolved_workdir()
  inputs = open_run(config, lock)
  data, weights, pos_weight = inputs.data, inputs.weights, config.pos_weight

  template = initial_state(config)
  manager, state, start_epoch, stopper = resume(config, template)

  p_train_step = jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,))
  p_eval_step = jax.pmap(functools.partial(eval_step, threshold=monitor_threshold(config)),
                         axis_name=AXIS)
  per_dispatch = resolved_steps_per_dispatch(config)
  if per_dispatch > 1:
    # The training split stays on the device; each dispatch only sends indices.
    p_train_steps = jax.pmap(train_steps, axis_name=AXIS, donate_argnums=(0,))
    train_split = data["train"]
    resident = replicate({"image": train_split.image, "mask": train_split.mask,
                          "valid": train_split.valid, "weight": weights["train"]})
  logger = _Logger(workdir, start_epoch)
  replicated = replicate(state)
  epoch, diverged, checkpoint_bytes = start_epoch, None, None
  while epoch < config.max_epochs and not stopper.should_stop:
    epoch += 1
    start = time.time()
    indices, keep = input_pipeline.batch_plan(
        len(data["train"]), config.batch_size, jax.local_device_count(), shuffle=True,
        seed=config.seed, epoch=epoch, process_index=jax.process_index(),
        process_count=jax.process_count())
    steps = indices.shape[0]
    bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, disable=jax.process_index() != 0)
    losses = []
    if per_dispatch == 1:
      for step_indices, step_keep in zip(indices, keep):
        replicated, out = p_train_step(replicated, input_pipeline.gather(
            data["train"], step_indices, step_keep, weights["train"]))
        losses.append(out["loss"][0])
        bar.update(1)
    else:
      # (steps, devices, per_device) -> (devices, steps, per_device): pmap maps the leading axis.
      indices, keep = indices.transpose(1, 0, 2), keep.transpose(1, 0, 2)
      for first in range(0, steps, per_dispatch):
        chunk = slice(first, first + per_dispatch)
        replicated, chunk_losses = p_train_steps(replicated, resident, indices[:, chunk], keep[:, chunk])
        losses.extend(np.asarray(chunk_losses[0]))
        bar.update(indices[:, chunk].shape[1])
    bar.close()
    train_loss = float(np.mean([np.asarray(l) for l in losses]))
    if not math.isfinite(train_loss):
      # A diverged model is not saved: the latest checkpoint stays the last sound epoch, and the best
      # one is what gets scored.
      diverged = epoch
      if jax.process_index() == 0:
        print(f"epoch {epoch:3d}  train_loss {train_loss}: training diverged; stopping with the best "
              f"checkpoint (lower --learning_rate to train further)", flush=True)
      break
    val = evaluate(p_eval_step, replicated, data["validation"], config, weights["validation"])
    stopper = update_early_stopping(stopper, val["loss"])
    log_epoch(logger, epoch, train_loss, val, stopper, time.time() - start)
    checkpoint_bytes = save_checkpoint(manager, workdir, jax_utils.unreplicate(replicated), epoch, stopper,
                                       pos_weight, val["loss"], checkpoint_bytes)
  logger.close()
  return finish_run(config, manager, template, stopper, inputs, epoch, diverged)


def initial_state(config: TrainConfig, seed: int | None = None) -> TrainState:
  """The run's model and optimiser, initialised from `seed` (default: the run's)."""
  return create_train_state(jax.random.key(config.seed if seed is None else seed), build_model(config),
                            (1, config.patch, config.patch, len(config.channels)), config)


def resume(config: TrainConfig, template: TrainState, label: str = ""
           ) -> tuple[ocp.CheckpointManager, TrainState, int, early_stopping.EarlyStopping]:
  """Opens the workdir's checkpoints: (manager, state, epochs done, early-stopping state), restored from
  the latest usable checkpoint or fresh (`template`, 0) when there is none."""
  workdir = config.resolved_workdir()
  stopper = early_stopping.EarlyStopping(min_delta=config.min_delta, patience=config.patience)
  manager, restored = restore_latest(workdir, checkpoint_item(template, 0, stopper, config.pos_weight))
  if restored is None:
    return manager, template, 0, stopper
  es = restored["early_stopping"]
  stopper = stopper.replace(best_metric=float(es["best_metric"]), patience_count=int(es["patience_count"]),
                            should_stop=bool(es["should_stop"]))
  print(f"{label}resuming from epoch {int(restored['epoch'])} in {workdir}", flush=True)
  return manager, restored["state"], int(restored["epoch"]), stopper


def log_epoch(logger: "_Logger", epoch: int, train_loss: float, val: dict,
              stopper: early_stopping.EarlyStopping, seconds: float, label: str = "") -> None:
  """One epoch's record into metrics.jsonl and TensorBoard, and its line in the job log."""
  record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
            "val_precision": val["precision"], "val_recall": val["recall"], "val_f1": val["f1"],
            "seconds": round(seconds, 2)}
  logger.log(record)
  if jax.process_index() == 0:
    print(f"{label}epoch {epoch:3d}  train_loss {train_loss:.4f}  val_loss {val['loss']:.4f}  "
          f"val P/R/F1 {val['precision']:.3f}/{val['recall']:.3f}/{val['f1']:.3f}"
          f"{'  *best*' if stopper.has_improved else ''}  ({record['seconds']:.1f} s)", flush=True)


def save_checkpoint(manager: ocp.CheckpointManager, workdir: Path, state: TrainState, epoch: int,
                    stopper: early_stopping.EarlyStopping, pos_weight: float, val_loss: float,
                    checkpoint_bytes: int | None) -> int:
  """Saves an epoch's checkpoint after checking the disk has room for it; returns its size in bytes
  (pass it back: it is the same every epoch)."""
  item = checkpoint_item(state, epoch, stopper, pos_weight)
  if checkpoint_bytes is None:
    checkpoint_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(item))
  # Every epoch: other jobs fill shared disks too. Refused here, the run stops between checkpoints and
  # resumes from the last one once there is room.
  files.require_free_space(workdir, checkpoint_bytes, f"the epoch {epoch} checkpoint", "--workdir")
  manager.save(epoch, args=ocp.args.StandardSave(item), metrics={"val_loss": val_loss})
  return checkpoint_bytes


def finish_run(config: TrainConfig, manager: ocp.CheckpointManager, template: TrainState,
               stopper: early_stopping.EarlyStopping, inputs: RunInputs, epoch: int,
               diverged: int | None, label: str = "") -> dict:
  """After the last epoch: scores the best checkpoint (`evaluate_checkpoint`), writes metrics.json and
  prints the test table; closes `manager`."""
  workdir = config.resolved_workdir()
  manager.wait_until_finished()
  if stopper.should_stop and jax.process_index() == 0:
    print(f"{label}early stopping after epoch {epoch} (best val_loss {stopper.best_metric:.4f})", flush=True)
  if not math.isfinite(stopper.best_metric):
    manager.close()
    raise InputError(workdir, "no epoch reached a finite validation loss"
                     + (f" (training diverged at epoch {diverged})" if diverged else ""),
                     "lower --learning_rate, check the inputs for extreme values, and retrain in a new "
                     "--workdir")
  result = evaluate_checkpoint(config, manager, template, stopper, config.pos_weight, inputs.stats,
                               inputs.data["validation"], inputs.data_dir)
  if diverged is not None:
    result["stopped"] = f"training loss non-finite at epoch {diverged}"
  _write_json(workdir / "metrics.json", result)
  manager.close()
  if jax.process_index() == 0:  # every process has the same scores; one table in the job log
    print(format_test_table(result), flush=True)
  return result


def evaluate_checkpoint(config, manager, template_state, stopper, pos_weight, stats,
                        validation: input_pipeline.SplitData, data_dir) -> dict:
  """Scores the best checkpoint on each test set: pixel scores with each set's coverage of its test
  area, and object scores. The threshold is the run's, or with "auto" the F1-best on `validation`;
  scores at 0.5 and at the validation-chosen threshold are both kept (`test_by_threshold`)."""
  best = manager.best_step()
  try:
    restored = restore_checkpoint(manager, best, checkpoint_item(template_state, 0, stopper, pos_weight))
  except Exception as err:  # pylint: disable=broad-except  (tensorstore and orbax raise many kinds)
    workdir = config.resolved_workdir()
    manager.close()
    raise InputError(workdir / CHECKPOINT_DIR / str(best), f"the best checkpoint (epoch {best}) cannot be "
                     f"restored ({short_error(err)})", f"score another one with python -m launch.evaluate "
                     f"--workdir={workdir} --checkpoint=latest, or delete {workdir / CHECKPOINT_DIR} to "
                     "train again") from None
  state = restored["state"]
  choice = choose_threshold(split_probabilities(state, validation.image), validation)
  threshold = choice["threshold"] if config.threshold == AUTO_THRESHOLD else float(config.threshold)
  tests, by_threshold = {}, {"0.5": {}, "validation": {}}
  probs, bce_sums, parts = {}, {}, {}
  for test_set in input_pipeline.test_sets(config.scenario):
    expected = input_pipeline.area_pixels(test_set, "test", config.patch, config.channels, data_dir)
    if test_set == "all":
      data = input_pipeline.SplitData.concatenate([parts[s] for s in constants.SITE_NAMES])
      test_probs = np.concatenate([probs[s] for s in constants.SITE_NAMES])
      bce_sum = sum(bce_sums[s] for s in constants.SITE_NAMES)
    else:
      data = input_pipeline.load_test_data(test_set, config.patch, config.channels, data_dir, stats)
      test_probs, bce_sum = split_probabilities_and_bce(state, data)
      probs[test_set], bce_sums[test_set], parts[test_set] = test_probs, bce_sum, data
    areas = input_pipeline.pixel_areas_m2(test_set, config.patch, config.channels, data_dir)

    # Once per distinct threshold (the run's, 0.5 and the validation choice are often the same). Every
    # process computes the whole maps (objects need them), so no collective is needed.
    scored = {t: metrics.split_report(test_probs, data.mask[..., 0], data.valid[..., 0], data.row, data.col,
                                      data.site, t, areas, expected)
              for t in {threshold, 0.5, choice["threshold"]}}
    tests[test_set] = {**scored[threshold], "loss": bce_sum / max(float(data.valid.sum()), 1.0)}
    by_threshold["0.5"][test_set] = scored[0.5]
    by_threshold["validation"][test_set] = scored[choice["threshold"]]
  return {"scenario": config.scenario, "model": config.model, "patch": config.patch,
          "best_epoch": int(best), "threshold": threshold,
          "threshold_from": "validation" if config.threshold == AUTO_THRESHOLD else "flag",
          "validation_threshold": choice, "loss_weights": config.loss_weights, "test": tests,
          "test_by_threshold": by_threshold}


def format_test_table(result: dict) -> str:
  """The test scores as a small table, one row per test set."""
  choice = result["validation_threshold"]
  return "\n".join([
      metrics.format_scores(f"test scores of {result['scenario']}-{result['model']}-p{result['patch']} "
                            f"(best epoch {result['best_epoch']}, threshold {result['threshold']:g} from "
                            f"{result['threshold_from']}):", result["test"]),
      f"F1-best threshold on the validation area: {choice['threshold']:g} (validation F1 "
      f"{choice['validation_f1']:.3f}, {choice['validation_f1_at_0.5']:.3f} at 0.5); test scores at 0.5 "
      "and at it are in metrics.json (test_by_threshold)"])


def train_from_flags(channels: str, **kwargs) -> dict:
  """`launch.train`: parses the channel list, initialises multi-host JAX if configured, trains."""
  maybe_initialize_distributed()
  valid = constants.L4S_CHANNELS if kwargs.get("scenario") == "landslide4sense" else constants.SITE_CHANNELS
  try:
    parsed = constants.parse_channels(channels, valid)
  except ValueError as err:
    raise InputError(None, f"--channels: {err}", "pass names from the list above") from None
  return train_and_evaluate(TrainConfig(channels=parsed, **kwargs))


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when several processes are configured.

  On TPU VM pods and SLURM/Open MPI clusters JAX detects the processes itself; elsewhere set
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  configured = (int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1
                or "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1
                or "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"])
  if configured and not jax.distributed.is_initialized():
    # jax reads JAX_COORDINATOR_ADDRESS itself but not JAX_NUM_PROCESSES / JAX_PROCESS_ID (only
    # cluster auto-detection fills those), so pass them on; unset ones are left to that detection.
    env = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
    jax.distributed.initialize(**{arg: int(os.environ[var]) for arg, var in env.items()
                                  if var in os.environ})
