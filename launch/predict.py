"""Maps landslides in a new scene with a trained run:
`python -m launch.predict --workdir=runs/china-unet-p128 --scene=s2.tif --dem=dem.tif --out=maps/`."""

from absl import app, flags

from landslide_jax import cli, predict

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder made by launch.train.", required=True)
_SCENE = flags.DEFINE_string(
    "scene", None, "Sentinel-2 GeoTIFF (band descriptions B02...), a SAFE product (S2?_MSIL1C_/MSIL2A_ "
    "folder or .zip) or a site manifest.", required=True)
_DEM = flags.DEFINE_string(
    "dem", None, "DEM covering the scene: a file, or tiles as a folder, a glob or a comma-separated list "
    "(optional with a manifest naming one).")
_AOI = flags.DEFINE_string("aoi", None, "Area-of-interest vector file: map only this part of the scene.")
_CLOUD_MASK = flags.DEFINE_string("cloud_mask", None, "Raster, non-zero = invalid (clouds, shadows).")
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
_OVERLAP = flags.DEFINE_float("overlap", 0.5, "Share of a window overlapping its neighbour.")
_BLEND = flags.DEFINE_enum("blend", "cosine", list(predict.BLENDS), "Window weights.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Probability threshold (default: the run's; for a run "
                                 "trained with --threshold=auto, the one it chose on validation).")
_TTA = flags.DEFINE_bool("tta", False, "Test-time augmentation: each window's probabilities are the mean "
                         "over its 8 rotations and flips (8x the model's work).")
_MIN_AREA = flags.DEFINE_float("min_area_m2", predict.DEFAULT_MIN_AREA_M2,
                               "Minimum mapping unit: polygons smaller than this (m2) are dropped; 0 keeps all.")
_BLOCK = flags.DEFINE_integer("block", 1024, "Block side in pixels read at once (memory, not results).")
_S2_ADD_OFFSET = flags.DEFINE_float(
    "s2_add_offset", None, "DN added to every stored Sentinel-2 band: -1000 for products of processing "
    "baseline 04.00 and later (BOA_ADD_OFFSET / RADIO_ADD_OFFSET). Default: the manifest's, else 0.")

# Checked at parsing, before the run is loaded or anything is written.
cli.check_folder(_WORKDIR, fix="pass the run folder made by launch.train")
cli.check_folder(_OUT)
cli.check_probability(_THRESHOLD)
cli.check_non_negative(_MIN_AREA)
cli.check_finite(_S2_ADD_OFFSET, example=-1000)


def main(argv):
  del argv
  cli.run_reporting_input_errors(lambda: predict.predict_scene(
      _WORKDIR.value, _SCENE.value, _DEM.value, _OUT.value, checkpoint=_CHECKPOINT.value,
      overlap=_OVERLAP.value, blend=_BLEND.value, threshold=_THRESHOLD.value,
      min_area_m2=_MIN_AREA.value, block=_BLOCK.value, s2_add_offset=_S2_ADD_OFFSET.value,
      aoi=_AOI.value, cloud_mask=_CLOUD_MASK.value, tta=_TTA.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
