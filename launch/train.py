"""Trains a model: `python -m launch.train --scenario=china --patch=128 [--model=unet]`.

Without --manual_dir the built-in synthetic demo scenes are used (and said so).
"""

import jax
from absl import app, flags

from landslide_jax import cli, constants, input_pipeline, models, train

_SCENARIO = flags.DEFINE_string("scenario", "china", " | ".join(input_pipeline.SCENARIOS))
_PATCH = flags.DEFINE_integer("patch", 128, f"Patch size: {' | '.join(map(str, constants.PATCH_SIZES))}.")
_MODEL = flags.DEFINE_string("model", "unet", " | ".join(models.MODELS))
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default runs/<scenario>-<model>-p<patch>).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Raw inputs: the folder with one raw-input folder per site (see launch.prepare); "
    "for --scenario=landslide4sense, the folder holding TrainData/img/image_N.h5 and "
    "TrainData/mask/mask_N.h5 (or its parent, holding landslide4sense/TrainData). Omit for the demo scenes.")
_CHANNELS = flags.DEFINE_string(
    "channels", ",".join(constants.DEFAULT_CHANNELS),
    f"Comma-separated input channels from: {', '.join(constants.SITE_CHANNELS)}; with "
    f"--scenario=landslide4sense from: {', '.join(constants.L4S_CHANNELS)}.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Global batch size (the paper's: 4).")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
_MAX_EPOCHS = flags.DEFINE_integer("max_epochs", 200, "Upper bound on epochs.")
_PATIENCE = flags.DEFINE_integer("patience", 10, "Epochs without validation-loss improvement before stopping.")
_MIN_DELTA = flags.DEFINE_float("min_delta", 0.0, "Smallest validation-loss decrease counted as improvement.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of initialisation and data order.")
_SEEDS = flags.DEFINE_integer(
    "seeds", 1, "Models trained together in one vmapped program, with seeds --seed, --seed + 1, ...: each "
    "with its own early stopping and checkpoints in <workdir>/seed_<s>/; metrics.json gives every seed "
    "and the mean +- std.")
_LOSS_WEIGHTS = flags.DEFINE_string(
    "loss_weights", "none", "Pixel loss weights: none | class (class balance only) | unet (the paper's: "
    "class balance + border term of Ronneberger et al. 2015). README 'Loss weights, measured' says why "
    "none is the default.")
_POS_WEIGHT = flags.DEFINE_float("pos_weight", 1.0, "Extra loss weight of landslide pixels (x loss_weights).")
_THRESHOLD = flags.DEFINE_string(
    "threshold", "0.5", "Probability threshold for the landslide class, or auto: the F1-best on the "
    "validation area (never on test). Scores at 0.5 and at the validation-best are reported either way.")
_DEMO_SCALE = flags.DEFINE_float("demo_scale", 1.0, "Area of the demo scenes relative to the paper's sites.")
_STEPS_PER_DISPATCH = flags.DEFINE_integer(
    "steps_per_dispatch", 0, "Train steps per device call (lax.scan over device-resident data); "
    "0 = auto (1 on CPU, 32 on GPU/TPU).")
_COMPUTE_DTYPE = flags.DEFINE_string("compute_dtype", "float32", "float32 | bfloat16 (mixed precision).")

# Values that would train something meaningless (or fail late) stop at parsing, before any folder is made.
cli.check_positive(_LR)
cli.check_threshold(_THRESHOLD)
cli.check_positive(_POS_WEIGHT)
cli.check_non_negative(_MIN_DELTA)
cli.check_seed(_SEED)
cli.check_positive(_SEEDS, example=3)
cli.check_positive(_DEMO_SCALE)
for _folder in (_WORKDIR, _DATA_DIR):
  cli.check_folder(_folder)
cli.check_folder(_MANUAL_DIR, fix="pass the folder of raw inputs (--helpshort says what it holds)")


def main(argv):
  del argv
  # Said first, so the user knows where checkpoints, logs and TensorBoard events go (and where to resume).
  workdir = train.TrainConfig(scenario=_SCENARIO.value, patch=_PATCH.value, model=_MODEL.value,
                              workdir=_WORKDIR.value).resolved_workdir()
  print(f"run folder: {workdir}", flush=True)
  cli.run_reporting_input_errors(lambda: train.train_from_flags(
      scenario=_SCENARIO.value, patch=_PATCH.value, model=_MODEL.value, workdir=_WORKDIR.value,
      data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value, channels=_CHANNELS.value,
      batch_size=_BATCH.value, learning_rate=_LR.value, max_epochs=_MAX_EPOCHS.value,
      patience=_PATIENCE.value, min_delta=_MIN_DELTA.value, seed=_SEED.value, seeds=_SEEDS.value,
      pos_weight=_POS_WEIGHT.value, loss_weights=_LOSS_WEIGHTS.value,
      threshold=cli.threshold_value(_THRESHOLD.value),
      demo_scale=_DEMO_SCALE.value, steps_per_dispatch=_STEPS_PER_DISPATCH.value,
      compute_dtype=_COMPUTE_DTYPE.value), resumable=True)


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli.parse_flags)
