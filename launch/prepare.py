"""Builds the TFDS patch datasets: `python -m launch.prepare --site=china --manual_dir=raw/`.

Without --manual_dir it builds the built-in synthetic demo scenes (and says so).
"""

from absl import app, flags

from landslide_jax import cli, constants, prepare

_SITE = flags.DEFINE_enum("site", "all", ("all",) + prepare.PREPARABLE, "Site to build; all = the paper's three.")
_PATCH = flags.DEFINE_multi_enum("patch", [str(p) for p in constants.PATCH_SIZES],
                                 [str(p) for p in constants.PATCH_SIZES], "Patch size(s); repeat the flag for several.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder with one raw-input folder per site; for --site=landslide4sense, the folder "
    "holding TrainData/img/image_N.h5 and TrainData/mask/mask_N.h5 (or its parent, holding "
    "landslide4sense/TrainData). Omit to use the built-in synthetic demo scenes.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_CHANNELS = flags.DEFINE_string(
    "channels", ",".join(constants.DEFAULT_CHANNELS),
    f"Comma-separated input channels from: {', '.join(constants.SITE_CHANNELS)}; with "
    f"--site=landslide4sense from: {', '.join(constants.L4S_CHANNELS)}.")
_DEMO_SCALE = flags.DEFINE_float("demo_scale", 1.0, "Area of the demo scenes relative to the paper's sites.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild datasets whose raw inputs changed.")
_MAX_NODATA = flags.DEFINE_float("max_nodata_fraction", constants.MAX_NODATA_FRACTION,
                                 "Drop windows with a larger share of nodata pixels.")

# Checked at parsing, before the demo scenes or any dataset are written.
cli.check_positive(_DEMO_SCALE)
cli.check_folder(_DATA_DIR)
cli.check_folder(_MANUAL_DIR, fix="pass the folder of raw inputs (--helpshort says what it holds)")


def main(argv):
  del argv
  cli.run_reporting_input_errors(lambda: prepare.prepare_from_flags(
      site=_SITE.value, patches=_PATCH.value, data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value,
      channels=_CHANNELS.value, demo_scale=_DEMO_SCALE.value, overwrite=_OVERWRITE.value,
      max_nodata_fraction=_MAX_NODATA.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
