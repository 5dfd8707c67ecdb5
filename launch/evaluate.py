"""Scores a trained run from its checkpoint and writes test-area maps:
`python -m launch.evaluate --workdir=runs/china-unet-p128`."""

from absl import app, flags

from landslide_jax import cli, evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder made by launch.train.", required=True)
_TEST_SITES = flags.DEFINE_list("test_sites", None, "Test sets (default: all of the run's): taiwan,china,japan,all.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: the run's).")
_THRESHOLD = flags.DEFINE_string(
    "threshold", None, "Probability threshold (default: the run's), or auto: the F1-best on the run's "
    "validation area for this checkpoint.")
_TTA = flags.DEFINE_bool("tta", False, "Test-time augmentation: the mean over the 8 rotations and flips "
                         "of each window.")
_SWEEP = flags.DEFINE_bool(
    "sweep_thresholds", False, "Also print a precision-recall table over thresholds on test: a diagnostic "
    "(picking a threshold there fits it to the test area; use --threshold=auto).")

# Checked at parsing, before the run is loaded or anything is written.
cli.check_folder(_WORKDIR, fix="pass the run folder made by launch.train")
cli.check_folder(_DATA_DIR)
cli.check_threshold(_THRESHOLD)


def _evaluate() -> None:
  evaluate.evaluate_run(
      _WORKDIR.value, test_sets=tuple(_TEST_SITES.value) if _TEST_SITES.value else None,
      checkpoint=_CHECKPOINT.value, data_dir=_DATA_DIR.value,
      threshold=cli.threshold_value(_THRESHOLD.value), sweep_thresholds=_SWEEP.value, tta=_TTA.value)


def main(argv):
  del argv
  cli.run_reporting_input_errors(_evaluate)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
