"""Bad raw inputs: each one must fail as one `InputError` line (file, problem, fix), exit non-zero from the
CLI, and leave no half-built dataset behind; a dataset that was already built must survive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import shapely
import shapely.affinity
from rasterio.transform import from_origin

from landslide_jax import constants, prepare
from landslide_jax.data import inventory, landslide4sense, raster_io
from landslide_jax.errors import InputError
from tests.conftest import ORIGIN, ROOT, SITE_CRS, pixel_box, write_dem, write_polygons, write_s2
from tfds_builders import site_builder

SHAPE = (200, 600)  # the smallest scene that yields windows in all three areas at patch 32
PATCH = 32
BANDS = ("B02", "B03", "B04", "B08")


# ----------------------------------------------------------------------------------------------------------
# Helpers.


def _snapshot(data_dir: Path) -> set[str]:
  """Every path under `data_dir` (empty when it does not exist), to compare before and after a failure."""
  if not data_dir.exists():
    return set()
  return {str(p.relative_to(data_dir)) for p in data_dir.rglob("*")}


def _assert_clean(data_dir: Path, before: set[str]) -> None:
  """No staging folder, no half-built dataset: the data dir holds exactly what it held before."""
  after = _snapshot(data_dir)
  assert not [p for p in after if Path(p).name.startswith(".staging-")], after
  assert not [p for p in after - before if p.endswith(str(site_builder.VERSION))], after
  assert after == before, f"left behind: {sorted(after - before)}"


def _expect_input_error(build, data_dir: Path, *phrases: str) -> InputError:
  """Runs `build()`, expecting an InputError whose one-line message holds every phrase and a fix."""
  before = _snapshot(data_dir)
  with pytest.raises(InputError) as info:
    build()
  message = str(info.value)
  assert "\n" not in message and "\r" not in message, message
  assert "Fix: " in message, message
  for phrase in phrases:
    assert phrase in message, f"{phrase!r} not in {message!r}"
  _assert_clean(data_dir, before)
  return info.value


def _build(site_dir: Path, data_dir: Path, patch: int = PATCH, **kwargs):
  return lambda: prepare.prepare_site("china", patch, data_dir, site_dir.parent, **kwargs)


def _write_band(path: Path, shape: tuple[int, int], seed: int, origin=ORIGIN, res: float = 10.0) -> None:
  """One single-band Sentinel-2 file, as the per-band layout (T48_B02.tif, ...) has them."""
  data = np.random.default_rng(seed).integers(200, 3000, size=shape, dtype=np.uint16)
  with rasterio.open(path, "w", driver="GTiff", height=shape[0], width=shape[1], count=1, dtype="uint16",
                     crs=SITE_CRS, transform=from_origin(*origin, res, res), nodata=0) as dst:
    dst.write(data, 1)


def _per_band_site(make_site, bands=BANDS, odd: dict | None = None) -> Path:
  """A site with one file per band and no manifest; `odd` maps a band to (shape, origin) of its file."""
  site = make_site("china", shape=SHAPE)
  (site / "s2.tif").unlink()
  (site / "manifest.json").unlink()  # so that the filename conventions are what finds the bands
  for i, band in enumerate(bands):
    shape, origin = (odd or {}).get(band, (SHAPE, ORIGIN))
    _write_band(site / f"T48_{band}.tif", shape, seed=i, origin=origin)
  return site


def _grid(site: Path) -> raster_io.Grid:
  with raster_io.open_raster(site / "s2.tif", "Sentinel-2") as src:
    return raster_io.grid_of(src)


def _run_cli(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "launch.prepare", *flags], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)


def _error_line(stderr: str) -> str:
  """The one `error:` line, checked to be the last line and the only one (no traceback)."""
  assert "Traceback" not in stderr, stderr
  lines = [ln for ln in stderr.splitlines() if ln.strip()]
  assert lines and lines[-1].startswith("error: "), stderr
  assert sum(ln.startswith("error:") for ln in lines) == 1, stderr
  return lines[-1]


# ----------------------------------------------------------------------------------------------------------
# 1. Missing band.


def test_stack_without_b08(make_site, tmp_path):
  site = make_site("china", shape=SHAPE)
  write_s2(site / "s2.tif", SHAPE, bands=("B02", "B03", "B04"))
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                      "s2.tif", "missing band B8", "B2, B3, B4")


def test_per_band_files_without_b08(make_site, tmp_path):
  site = _per_band_site(make_site, bands=("B02", "B03", "B04"))
  err = _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                            "missing band B8", "found B2, B3, B4", "_B08")
  assert err.path == os.fspath(site.resolve())  # the folder the band file is missing from


def test_per_band_files_build(make_site, tmp_path):
  """The per-band layout itself is fine: otherwise the two tests around this one would prove nothing."""
  site = _per_band_site(make_site)
  result = prepare.prepare_site("china", PATCH, tmp_path / "tfds", site.parent)
  assert result.metadata["areas"]["train"]["patches"] > 0


# ----------------------------------------------------------------------------------------------------------
# 2. Bands on different grids.


@pytest.mark.parametrize("shape, origin, phrase", [
    (SHAPE, (ORIGIN[0] + 20.0, ORIGIN[1]), "origin"),  # shifted by two pixels
    ((SHAPE[0], SHAPE[1] - 1), ORIGIN, f"{(SHAPE[0], SHAPE[1] - 1)}"),  # one column short
])
def test_bands_on_different_grids(make_site, tmp_path, shape, origin, phrase):
  site = _per_band_site(make_site, odd={"B08": (shape, origin)})
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                      "T48_B08.tif", "different grid", "T48_B02.tif", phrase, "gdalwarp")


# ----------------------------------------------------------------------------------------------------------
# 3. DEM that does not cover the scene.


def test_dem_does_not_cover_scene(make_site, tmp_path):
  site = make_site("china", shape=SHAPE)
  write_dem(site / "dem.tif", (SHAPE[0] // 2, SHAPE[1]), margin_px=0)  # the northern half only
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                      "dem.tif", "does not cover the scene")


# ----------------------------------------------------------------------------------------------------------
# 4. Inventory CRS and inventory outside the scene.


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857"])
def test_inventory_in_other_crs_equals_scene_crs(make_site, crs):
  other = make_site("china", shape=SHAPE, inventory_crs=crs)
  same = make_site("japan", shape=SHAPE, inventory_crs=SITE_CRS)
  grid = _grid(same)
  expected = inventory.read_mask(same / "inventory.gpkg", grid, "inventory")
  assert expected.sum() == 12 * 8 + 10 * 20 + 30 * 6  # the three pixel boxes of make_site
  np.testing.assert_array_equal(inventory.read_mask(other / "inventory.gpkg", grid, "inventory"), expected)


def test_inventory_crs_does_not_change_dataset(make_site, tmp_path):
  other = make_site("china", shape=SHAPE, inventory_crs="EPSG:4326")
  same = tmp_path / "raw_utm" / "china"
  same.mkdir(parents=True)
  for name in ("s2.tif", "dem.tif", "manifest.json"):
    (same / name).write_bytes((other / name).read_bytes())
  write_polygons(same / "inventory.gpkg",
                 [pixel_box(20, 30, 12, 8), pixel_box(120, 200, 10, 20), pixel_box(150, 40, 30, 6)])
  a = prepare.prepare_site("china", PATCH, tmp_path / "tfds_4326", other.parent).metadata
  b = prepare.prepare_site("china", PATCH, tmp_path / "tfds_utm", same.parent).metadata
  shares = {k: v["landslide_share"] for k, v in a["areas"].items()}
  assert shares == {k: v["landslide_share"] for k, v in b["areas"].items()}
  assert sum(shares.values()) > 0


def test_inventory_outside_scene(make_site, tmp_path):
  site = make_site("china", shape=SHAPE)
  far = [shapely.affinity.translate(pixel_box(20, 30, 12, 8), xoff=100_000.0),
         shapely.affinity.translate(pixel_box(120, 200, 10, 20), yoff=-100_000.0)]
  write_polygons(site / "inventory.gpkg", far)
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                      "inventory.gpkg", "0 features inside the scene", "2 in the file")


# ----------------------------------------------------------------------------------------------------------
# 5-7. All-nodata scene, NaN in the DEM, patch larger than an area.


def test_all_nodata_scene(make_site, tmp_path):
  site = make_site("china", shape=SHAPE)
  with rasterio.open(site / "s2.tif", "r+") as dst:
    dst.write(np.zeros((4, *SHAPE), np.uint16))
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                      "s2.tif", "every pixel is nodata")


def test_nan_in_dem(make_site, tmp_path):
  site = make_site("china", shape=SHAPE, nan_at=(20, 30))  # 30 m DEM pixel well inside the scene
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                      "dem.tif", "NaN or nodata pixels inside the scene")


def test_nan_in_dem_margin_is_fine(make_site, tmp_path):
  """A void outside the scene footprint is not an error: the scene never sees it."""
  site = make_site("china", shape=SHAPE, nan_at=(0, 0))  # corner of the 3-pixel margin
  assert prepare.prepare_site("china", PATCH, tmp_path / "tfds", site.parent).rebuilt


def test_patch_larger_than_area(make_site, tmp_path):
  site = make_site("china", shape=(100, 150))
  _expect_input_error(_build(site, tmp_path / "tfds", patch=128), tmp_path / "tfds",
                      "china", "validation block needs 128 lines", "smaller --patch")


def test_test_area_over_the_whole_scene_is_not_a_patch_size_problem(make_site, tmp_path):
  site = make_site("china", shape=SHAPE, manifest={"test_area": "test_area.gpkg"})
  write_polygons(site / "test_area.gpkg", [pixel_box(-5, -5, SHAPE[0] + 10, SHAPE[1] + 10)])
  message = str(_expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds", "china",
                                    "area is empty", "test area covers the whole scene"))
  assert "--patch" not in message


def _clouds(site: Path, clouds: np.ndarray) -> None:
  with rasterio.open(site / "clouds.tif", "w", driver="GTiff", height=SHAPE[0], width=SHAPE[1], count=1,
                     dtype="uint8", crs=SITE_CRS, transform=from_origin(*ORIGIN, 10, 10)) as dst:
    dst.write(clouds, 1)


def test_a_mostly_cloudy_scene_names_the_clouds_not_the_patch(make_site, tmp_path):
  site = make_site("china", shape=SHAPE, manifest={"nodata_mask": "clouds.tif"})
  clouds = np.ones(SHAPE, np.uint8)
  clouds[:, :3] = 0  # a 3 px stripe of data
  _clouds(site, clouds)
  message = str(_expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds", "china",
                                    "only 0.5% of the scene has data", "clearer scene"))
  assert "--patch" not in message


def test_windows_dropped_for_nodata_name_the_threshold(make_site, tmp_path):
  site = make_site("china", shape=SHAPE, manifest={"nodata_mask": "clouds.tif"})
  _clouds(site, (np.random.default_rng(0).random(SHAPE) < 0.3).astype(np.uint8))  # scattered clouds
  message = str(_expect_input_error(_build(site, tmp_path / "tfds", max_nodata_fraction=0.1),
                                    tmp_path / "tfds", "china", "window of the train area is more than 10% "
                                    "nodata", "--max_nodata_fraction"))
  assert "smaller --patch" not in message


# ----------------------------------------------------------------------------------------------------------
# 8. Unknown site or channel (CLI).


def test_cli_unknown_site(tmp_path):
  proc = _run_cli("--site=nowhere", f"--data_dir={tmp_path / 'tfds'}")
  assert proc.returncode != 0
  assert "nowhere" in proc.stderr and "china" in proc.stderr  # names the bad value and the choices
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "tfds").exists()


def test_cli_unknown_channel(tmp_path):
  proc = _run_cli("--site=china", "--channels=B2,B99", f"--data_dir={tmp_path / 'tfds'}")
  assert proc.returncode == 2, proc.stderr
  line = _error_line(proc.stderr)
  assert "'B99'" in line and "Fix:" in line
  assert ", ".join(constants.SITE_CHANNELS) in line
  assert not (tmp_path / "tfds").exists()  # checked before anything (even the demo scenes) is written


# ----------------------------------------------------------------------------------------------------------
# 9. Corrupt or truncated files.


def _truncate(path: Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _garble(path: Path) -> None:
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("damage", [_truncate, _garble], ids=["truncated", "garbage"])
@pytest.mark.parametrize("name", ["s2.tif", "dem.tif", "inventory.gpkg"])
def test_corrupt_site_file(make_site, tmp_path, name, damage):
  site = make_site("china", shape=SHAPE)
  damage(site / name)
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds", name, "Fix: ")


def test_truncated_geotiff_data(make_site, tmp_path):
  """Header intact, pixel data cut off (IFD first, as in COGs): the read, not the open, must fail."""
  site = make_site("china", shape=SHAPE)
  rasterio.shutil.copy(site / "s2.tif", site / "s2_cog.tif", driver="GTiff", COPY_SRC_OVERVIEWS="YES")
  os.replace(site / "s2_cog.tif", site / "s2.tif")
  _truncate(site / "s2.tif")
  err = _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                            "s2.tif", "cannot decode Sentinel-2", "corrupt or truncated")
  # The GDAL reason, not rasterio's pointer to an exception the one-line report does not show.
  assert "See previous exception" not in str(err), err


def _write_l4s(root: Path, n: int = 4) -> Path:
  """A tiny official Landslide4Sense layout: TrainData/img/image_N.h5 and TrainData/mask/mask_N.h5."""
  rng = np.random.default_rng(0)
  (root / "TrainData" / "img").mkdir(parents=True)
  (root / "TrainData" / "mask").mkdir(parents=True)
  for i in range(1, n + 1):
    with h5py.File(root / "TrainData" / "img" / f"image_{i}.h5", "w") as f:
      f["img"] = rng.uniform(0.0, 1.0, (128, 128, 14))
    with h5py.File(root / "TrainData" / "mask" / f"mask_{i}.h5", "w") as f:
      f["mask"] = (rng.uniform(size=(128, 128)) > 0.9).astype(np.uint8)
  return root


def test_l4s_layout_builds(tmp_path):
  """The self-made layout is valid: the damaged variants below fail because of the damage only."""
  root = _write_l4s(tmp_path / "l4s")
  result = prepare.prepare_site("landslide4sense", PATCH, tmp_path / "tfds", root)
  assert sum(a["patches"] for a in result.metadata["areas"].values()) == 4 * 16


@pytest.mark.parametrize("damage", [_truncate, _garble], ids=["truncated", "garbage"])
@pytest.mark.parametrize("relpath", ["TrainData/img/image_2.h5", "TrainData/mask/mask_3.h5"])
def test_corrupt_l4s_file(tmp_path, relpath, damage):
  root = _write_l4s(tmp_path / "l4s")
  damage(root / relpath)
  # The reader on its own...
  read = landslide4sense.read_image if "img" in relpath else landslide4sense.read_mask
  with pytest.raises(InputError, match=Path(relpath).name):
    read(root / relpath, *((constants.DEFAULT_CHANNELS,) if "img" in relpath else ()))
  # ...and the whole build.
  _expect_input_error(lambda: prepare.prepare_site("landslide4sense", PATCH, tmp_path / "tfds", root),
                      tmp_path / "tfds", Path(relpath).name, "cannot read HDF5 file", "re-download")


# ----------------------------------------------------------------------------------------------------------
# 10. Manifest with unknown keys or bad syntax.


def test_manifest_unknown_key(make_site, tmp_path):
  site = make_site("china", shape=SHAPE, manifest={"inventroy": "inventory.gpkg"})
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                      "manifest.json", "unknown manifest key(s) inventroy", "sentinel2")


@pytest.mark.parametrize("name, text, phrase", [
    ("manifest.json", '{"sentinel2": "s2.tif", "dem": ', "not valid JSON"),
    ("manifest.toml", 'sentinel2 = "s2.tif"\ndem = \n', "not valid TOML"),
    ("manifest.toml", 'sentinel2 = "s2.tif"\ndem = "dem.tif"\ninventory = "inventory.gpkg"\nbandz = []\n',
     "unknown manifest key(s) bandz"),
])
def test_manifest_bad_syntax(make_site, tmp_path, name, text, phrase):
  site = make_site("china", shape=SHAPE)
  (site / "manifest.json").unlink()
  (site / name).write_text(text)
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds", name, phrase)


def test_manifest_names_missing_file(make_site, tmp_path):
  site = make_site("china", shape=SHAPE, manifest={"dem": "dem_30m.tif"})
  _expect_input_error(_build(site, tmp_path / "tfds"), tmp_path / "tfds",
                      "manifest.json", "'dem_30m.tif' does not exist")


# ----------------------------------------------------------------------------------------------------------
# Nothing already built is lost.


def _train_count(data_dir: Path) -> int:
  import tfds_builders  # pylint: disable=import-outside-toplevel
  from tfds_builders import site_builder  # pylint: disable=import-outside-toplevel
  source = tfds_builders.get_builder("china", site_builder.make_config(PATCH), data_dir).as_data_source()
  assert source["train"][0]["image"].shape == (PATCH, PATCH, len(constants.DEFAULT_CHANNELS))
  return len(source["train"])


def test_existing_dataset_survives(make_site, tmp_path):
  site = make_site("china", shape=SHAPE)
  data_dir = tmp_path / "tfds"
  first = prepare.prepare_site("china", PATCH, data_dir, site.parent)
  n_train = _train_count(data_dir)
  assert n_train > 0

  # Same inputs again: reused, not rebuilt.
  assert not prepare.prepare_site("china", PATCH, data_dir, site.parent).rebuilt

  # Changed inputs without --overwrite: refused, old dataset untouched.
  write_s2(site / "s2.tif", SHAPE, seed=1)
  # The fix is a command that exists: launch.train and launch.sweep, which reach here too, have no
  # --overwrite of their own.
  _expect_input_error(_build(site, data_dir), data_dir, f"china/p32/{site_builder.VERSION}",
                      "python -m launch.prepare --site=china --patch=32 --overwrite")
  assert json.loads((first.path / "metadata.json").read_text())["input_hash"] == first.metadata["input_hash"]

  # --overwrite with broken inputs: the new build fails, the old dataset is still there and readable.
  _truncate(site / "s2.tif")
  _expect_input_error(_build(site, data_dir, overwrite=True), data_dir, "s2.tif", "corrupt or truncated")
  assert _train_count(data_dir) == n_train
  assert json.loads((first.path / "metadata.json").read_text())["input_hash"] == first.metadata["input_hash"]

  # --overwrite with valid new inputs: rebuilt in place.
  (site / "s2.tif").unlink()  # GDAL will not create over a file it cannot parse
  write_s2(site / "s2.tif", SHAPE, seed=1)
  second = prepare.prepare_site("china", PATCH, data_dir, site.parent, overwrite=True)
  assert second.rebuilt and second.path == first.path
  assert second.metadata["input_hash"] != first.metadata["input_hash"]
  assert _train_count(data_dir) == n_train  # same scene size, same windows
  assert sorted(p.name for p in data_dir.iterdir()) == ["china"]  # no staging or backup left behind


# ----------------------------------------------------------------------------------------------------------
# CLI form of a bad input.


def test_cli_nan_dem_is_one_line(make_site, tmp_path):
  site = make_site("china", shape=SHAPE, nan_at=(20, 30))
  data_dir = tmp_path / "tfds"
  proc = _run_cli("--site=china", f"--patch={PATCH}", f"--manual_dir={site.parent}", f"--data_dir={data_dir}")
  assert proc.returncode == 2, proc.stderr
  line = _error_line(proc.stderr)
  assert "dem.tif" in line and "NaN" in line and "Fix:" in line
  _assert_clean(data_dir, set())
