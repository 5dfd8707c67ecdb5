"""DEM voids stored as a fill value without a nodata tag (0, -32768...): refused with one line naming the
file, the value, the pixel count and the fix, because they would make 90-degree slope cliffs. Flat real
terrain (a lake at one level with gentle shores) passes; so do the built-in demo DEMs."""

from __future__ import annotations

from pathlib import Path

import affine
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from landslide_jax import constants
from landslide_jax.data import demo, raster_io, scene as scene_lib
from landslide_jax.data.site_inputs import find_site_inputs
from landslide_jax.data.slope import slope_degrees
from landslide_jax.errors import InputError
from tests.conftest import ORIGIN, SITE_CRS, shared_path

SCENE_SHAPE = (200, 300)  # 10 m scene pixels: 2 km x 3 km
DEM_RES = 30.0
DEM_MARGIN = 5  # DEM pixels beyond the scene on every side


def _scene_grid() -> raster_io.Grid:
  return raster_io.Grid(CRS.from_user_input(SITE_CRS), from_origin(*ORIGIN, 10, 10), SCENE_SHAPE)


def _dem_grid(extra: int = 0) -> tuple[affine.Affine, tuple[int, int], np.ndarray, np.ndarray]:
  """30 m DEM grid over the scene with a margin (plus `extra` pixels east): transform, shape and the
  eastings/northings of pixel centres relative to the scene origin."""
  rows = int(np.ceil(SCENE_SHAPE[0] * 10 / DEM_RES)) + 2 * DEM_MARGIN
  cols = int(np.ceil(SCENE_SHAPE[1] * 10 / DEM_RES)) + 2 * DEM_MARGIN + extra
  west, north = ORIGIN[0] - DEM_MARGIN * DEM_RES, ORIGIN[1] + DEM_MARGIN * DEM_RES
  x = west + (np.arange(cols) + 0.5) * DEM_RES - ORIGIN[0]
  y = north - (np.arange(rows) + 0.5) * DEM_RES - ORIGIN[1]
  return from_origin(west, north, DEM_RES, DEM_RES), (rows, cols), x[None, :], y[:, None]


def _hills(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Smooth terrain of 2000-2800 m, slopes up to ~30 degrees."""
  return 2400.0 + 300.0 * np.sin(x / 400.0) * np.cos(y / 300.0) + 0.05 * x


def _write(path: Path, dem: np.ndarray, transform, nodata=None, crs: str = SITE_CRS) -> Path:
  with rasterio.open(path, "w", driver="GTiff", height=dem.shape[0], width=dem.shape[1], count=1,
                     dtype=dem.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
    dst.write(dem, 1)
  return path


def _expect_fill_error(path: Path, grid: raster_io.Grid, value: str, pixels: int | None = None
                       ) -> InputError:
  with pytest.raises(InputError) as info:
    raster_io.read_dem_on_grid(path, grid)
  message = str(info.value)
  assert "\n" not in message and "Fix: " in message, message
  assert info.value.path == str(path)
  for phrase in (f"constant value {value}", f"gdal_edit.py -a_nodata {value} {path.name}",
                 "gdal_fillnodata.py", "void-filled DEM"):
    assert phrase in message, f"{phrase!r} not in {message!r}"
  if pixels is not None:
    assert f"holds {pixels} pixels" in message, message
  return info.value


# ----------------------------------------------------------------------------------------------------------
# Self-made DEMs.


@pytest.mark.parametrize("dtype, value", [("float32", 0), ("int16", 0), ("int16", -32768),
                                          ("float32", 1500)])
def test_block_of_fill_inside_the_scene_is_refused(tmp_path, dtype, value):
  transform, shape, x, y = _dem_grid()
  dem = _hills(x, y).astype(dtype)
  dem[20:40, 30:50] = value  # a 600 m x 600 m void, well inside the scene
  path = _write(tmp_path / "dem.tif", dem, transform)
  _expect_fill_error(path, _scene_grid(), f"{value:g}", pixels=20 * 20)
  # The same file with the fill tagged as nodata: the voids are NaN, the usual error.
  tagged = _write(tmp_path / "dem_tagged.tif", dem, transform, nodata=value)
  with pytest.raises(InputError, match="NaN or nodata pixels inside the scene"):
    raster_io.read_dem_on_grid(tagged, _scene_grid())


def test_fill_outside_the_area_of_the_scene_is_not_looked_at(tmp_path):
  # The DEM reaches 60 px (1.8 km) east of the scene; its void there does not touch the scene.
  transform, shape, x, y = _dem_grid(extra=60)
  dem = _hills(x, y).astype(np.float32)
  dem[10:60, -40:-5] = 0.0
  out = raster_io.read_dem_on_grid(_write(tmp_path / "dem.tif", dem, transform), _scene_grid())
  assert np.isfinite(out).all() and out.min() > 1900.0


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_flat_lake_with_gentle_shores_passes(tmp_path, dtype):
  transform, shape, x, y = _dem_grid()
  # A bowl whose floor lies below 1200 m, filled by a lake at exactly 1200 m: ~700 DEM pixels of one value,
  # with shores rising ~3 m per 30 m pixel (about 6 degrees).
  r2 = ((x - 1500.0) / 900.0) ** 2 + ((y + 1000.0) / 700.0) ** 2
  dem = np.maximum(1180.0 + 80.0 * r2, 1200.0).astype(dtype)
  lake = dem == 1200
  assert lake.sum() > 300
  out = raster_io.read_dem_on_grid(_write(tmp_path / "dem.tif", dem, transform), _scene_grid())
  assert np.isfinite(out).all() and out.min() == 1200.0
  # And the lake is flat in the slope channel, its shore no cliff.
  grid = _scene_grid().expanded(1)
  slope = slope_degrees(out, grid.transform, grid.crs)
  lake = out == 1200.0
  flat = ndimage.minimum_filter(lake, 3, mode="nearest")  # the whole 3x3 neighbourhood is lake
  shore = ndimage.binary_dilation(lake, iterations=3) & ~flat
  assert flat.sum() > 1000 and shore.sum() > 500
  assert slope[flat].max() == 0.0 and slope[shore].max() < 10.0


def test_fill_through_load_channels_names_the_dem(make_site):
  site = make_site("china")
  transform, shape, x, y = _dem_grid()
  dem = _hills(x, y).astype(np.float32)
  dem[:, :25] = 0.0  # the western third: out-of-footprint area stored as 0
  _write(site / "dem.tif", dem, transform)
  with pytest.raises(InputError) as info:
    scene_lib.load_channels(find_site_inputs(site), constants.DEFAULT_CHANNELS)
  assert info.value.path == str(site / "dem.tif") and "constant value 0" in str(info.value)


def test_demo_dems_pass(tmp_path):
  for site in constants.SITE_NAMES:
    folder = demo.write_demo_site(site, tmp_path, scale=0.05, seed=0)
    inputs = find_site_inputs(folder)
    grid = raster_io.scene_grid(inputs, constants.PAPER_BANDS)
    dem = raster_io.read_dem_on_grid(inputs.dem, grid)
    assert np.isfinite(dem).all(), site


# ----------------------------------------------------------------------------------------------------------
# The real Jiuzhaigou DEM: about a third of it is 0 m outside the data footprint, tagged -9999.


def _real_dem() -> Path:
  return shared_path("jiuzhaigou_dem", "DEM_030.tif")


def _test_area_grid(shape: tuple[int, int] | None = None, row0: int = 0, col0: int = 0) -> raster_io.Grid:
  """Test_010.tif's 10 m grid (one column short: the full grid reaches 10 m past the DEM), or a part."""
  with rasterio.open(shared_path("jiuzhaigou_dem", "Test_010.tif")) as src:
    grid = raster_io.grid_of(src)
  shape = shape or (grid.shape[0], grid.shape[1] - 1)
  return raster_io.Grid(grid.crs, grid.window_transform(row0, col0), shape)


def _tagged_copy(path: Path, out: Path) -> Path:
  with rasterio.open(path) as src:
    profile, dem = src.profile, src.read(1)
  assert profile["nodata"] == -9999 and 0.3 < (dem == 0).mean() < 0.35
  with rasterio.open(out, "w", **dict(profile, nodata=0)) as dst:
    dst.write(dem, 1)
  return out


@pytest.mark.parametrize("on", ["own 30 m grid", "Test_010 10 m grid"])
def test_real_dem_is_refused(on):
  path = _real_dem()
  if on == "own 30 m grid":
    with rasterio.open(path) as src:
      grid = raster_io.grid_of(src)
  else:
    grid = _test_area_grid()
  err = _expect_fill_error(path, grid, "0")
  count = int(str(err).split("holds ")[1].split(" pixels")[0])
  with rasterio.open(path) as src:
    zeros = int((src.read(1) == 0).sum())
  assert 0.95 * zeros <= count <= zeros  # the three out-of-footprint zero regions, in DEM pixels


def test_real_dem_with_zero_tagged_as_nodata(tmp_path):
  tagged = _tagged_copy(_real_dem(), tmp_path / "DEM_030_nodata0.tif")
  # Over the whole test-area grid the zeros are voids inside the scene: the usual error.
  with pytest.raises(InputError, match="NaN or nodata pixels inside the scene"):
    raster_io.read_dem_on_grid(tagged, _test_area_grid())
  # A 4.5 km x 4.5 km scene inside the data footprint (DEM rows/cols 300-450, 150-300) passes, and so does
  # the untagged file there: its zeros are outside the window that covers the scene.
  inner = _test_area_grid((450, 450), row0=900, col0=450)
  for path in (tagged, _real_dem()):
    dem = raster_io.read_dem_on_grid(path, inner)
    assert np.isfinite(dem).all() and 2000.0 < dem.min() and dem.max() < 4400.0
