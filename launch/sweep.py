"""The paper's grid of trainings with its tables and figures:
`python -m launch.sweep --scenarios=all,taiwan,china,japan --patches=32,64,128 --models=unet,resunet`."""

from absl import app, flags

from landslide_jax import cli, constants, sweep, train

_SCENARIOS = flags.DEFINE_list("scenarios", list(sweep.SCENARIO_ORDER), "Training scenarios.")
_PATCHES = flags.DEFINE_list("patches", [str(p) for p in constants.PATCH_SIZES], "Patch sizes.")
_MODELS = flags.DEFINE_list("models", list(sweep.MODEL_NAMES), "Models.")
_MAX_EPOCHS = flags.DEFINE_integer("max_epochs", 200, "Upper bound on epochs per run.")
_PATIENCE = flags.DEFINE_integer("patience", 10, "Early-stopping patience.")
_OUT = flags.DEFINE_string("out", "results", "Folder for tables and figures.")
_WORKDIR = flags.DEFINE_string("workdir", "runs", "Folder holding one folder per run.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Raw inputs; omit for the demo scenes.")
_DEMO_SCALE = flags.DEFINE_float("demo_scale", 1.0, "Area of the demo scenes relative to the paper's sites.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every run.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Seeds per run, trained together in one vmapped program "
                              "(--seed, --seed + 1, ...); tables give their mean.")
_JOBS = flags.DEFINE_integer("jobs", 1, "Trainings at a time: one per GPU, or processes sharing the CPU "
                             "cores equally.")
_LOSS_WEIGHTS = flags.DEFINE_string("loss_weights", "none", "Pixel loss weights of every run: none | class | unet.")

# Checked at parsing, before any run folder is made.
cli.check_seed(_SEED)
cli.check_positive(_SEEDS, example=3)
cli.check_positive(_JOBS, example=2)
cli.check_positive(_DEMO_SCALE)
for _folder in (_OUT, _WORKDIR, _DATA_DIR):
  cli.check_folder(_folder)
cli.check_folder(_MANUAL_DIR, fix="pass the folder of raw inputs (--helpshort says what it holds)")


def main(argv):
  del argv
  # The runs report their names as they go and the tables their count at the end; say where both live.
  print(f"runs in {sweep.run_dir(_WORKDIR.value, '<scenario>', '<model>', '<patch>')}, "
        f"tables and figures in {_OUT.value}", flush=True)
  cli.run_reporting_input_errors(lambda: sweep.sweep_from_flags(
      scenarios=_SCENARIOS.value, patches=_PATCHES.value, models=_MODELS.value, out=_OUT.value,
      workdir_root=_WORKDIR.value, base=train.TrainConfig(
          max_epochs=_MAX_EPOCHS.value, patience=_PATIENCE.value, data_dir=_DATA_DIR.value,
          manual_dir=_MANUAL_DIR.value, demo_scale=_DEMO_SCALE.value, seed=_SEED.value,
          loss_weights=_LOSS_WEIGHTS.value, seeds=_SEEDS.value), jobs=_JOBS.value), resumable=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
