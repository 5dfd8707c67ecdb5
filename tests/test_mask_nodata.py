"""Mask rasters with a nodata tag that is not 0: inventory, test area and cloud mask, on the scene grid or
reprojected. Pixels tagged nodata, and pixels the raster does not cover, are "not landslide", "not test
area", "not masked" (a GIS export with 1 = landslide and NoData = 255 elsewhere is not all landslide)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.crs import CRS
from rasterio.transform import from_origin

from landslide_jax import constants
from landslide_jax.data import inventory, raster_io, scene as scene_lib
from landslide_jax.data.site_inputs import find_site_inputs
from tests.conftest import ORIGIN, SITE_CRS

SHAPE = (100, 120)  # 1000 m x 1200 m at 10 m
SLIDES = ((10, 20, 7, 13), (60, 90, 12, 8), (85, 5, 10, 10))  # (row0, col0, rows, cols) on the scene grid


@pytest.fixture(name="grid")
def fixture_grid() -> raster_io.Grid:
  return raster_io.Grid(CRS.from_user_input(SITE_CRS), from_origin(*ORIGIN, 10, 10), SHAPE)


def _boxes(shape: tuple[int, int], boxes, dtype=np.uint8) -> np.ndarray:
  out = np.zeros(shape, dtype)
  for r, c, h, w in boxes:
    out[r:r + h, c:c + w] = 1
  return out


def _write_mask(path: Path, values: np.ndarray, nodata: float | None, transform=None, crs: str = SITE_CRS
                ) -> Path:
  transform = transform or from_origin(*ORIGIN, 10, 10)
  with rasterio.open(path, "w", driver="GTiff", height=values.shape[0], width=values.shape[1], count=1,
                     dtype=values.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
    dst.write(values, 1)
  return path


def _gis_export(inside: np.ndarray, nodata: float, dtype=np.uint8) -> np.ndarray:
  """1 inside the features, the nodata value everywhere else: how GIS tools export a mask."""
  return np.where(inside == 1, 1, nodata).astype(dtype)


# ----------------------------------------------------------------------------------------------------------
# Inventory rasters.


def test_same_grid_inventory_with_nodata_255_is_the_slides(grid, tmp_path):
  expected = _boxes(SHAPE, SLIDES)
  path = _write_mask(tmp_path / "inventory.tif", _gis_export(expected, 255), nodata=255)
  mask = inventory.read_mask(path, grid, "inventory")
  assert mask.dtype == np.uint8 and int(mask.sum()) == 7 * 13 + 12 * 8 + 10 * 10
  np.testing.assert_array_equal(mask, expected)


def test_shifted_inventory_with_nodata_255_is_the_slides_and_nothing_outside(grid, tmp_path):
  # The raster starts 5 columns east and 3 rows south of the scene and covers 60 x 70 px of it: the
  # reprojection path, with most of the scene outside the raster's footprint.
  row0, col0, shape = 3, 5, (60, 70)
  local = ((10, 20, 7, 13), (40, 50, 12, 8))  # slides in the raster's own pixels
  values = _gis_export(_boxes(shape, local), 255)
  transform = from_origin(ORIGIN[0] + col0 * 10, ORIGIN[1] - row0 * 10, 10, 10)
  path = _write_mask(tmp_path / "inventory.tif", values, nodata=255, transform=transform)
  mask = inventory.read_mask(path, grid, "inventory")
  expected = _boxes(SHAPE, [(r + row0, c + col0, h, w) for r, c, h, w in local])
  np.testing.assert_array_equal(mask, expected)
  # Outside the footprint nothing is landslide (nodata there must not leak in as 255 -> 1).
  footprint = np.zeros(SHAPE, bool)
  footprint[row0:row0 + shape[0], col0:col0 + shape[1]] = True
  assert not mask[~footprint].any()


def test_inventory_in_another_crs_with_nodata_255(grid, tmp_path):
  # The same slides drawn on a geographic ~10 m grid over the western half of the scene.
  expected = _boxes(SHAPE, SLIDES)
  left, bottom, right, top = rasterio.warp.transform_bounds(SITE_CRS, "EPSG:4326", *grid.bounds)
  step = 9e-5
  shape = (int((top - bottom) / step) + 1, int((right - left) / step / 2))
  transform = from_origin(left, top, step, step)
  geographic = np.zeros(shape, np.uint8)
  rasterio.warp.reproject(expected, geographic, src_transform=grid.transform, src_crs=grid.crs,
                          dst_transform=transform, dst_crs="EPSG:4326",
                          resampling=rasterio.enums.Resampling.nearest)
  path = _write_mask(tmp_path / "inventory.tif", _gis_export(geographic, 255), nodata=255,
                     transform=transform, crs="EPSG:4326")
  mask = inventory.read_mask(path, grid, "inventory")
  # Footprint of the raster on the scene grid: only there can a landslide be.
  cover = raster_io.read_onto_grid(_write_mask(tmp_path / "ones.tif", np.ones(shape, np.uint8), None,
                                               transform=transform, crs="EPSG:4326"), grid, "cover") > 0
  assert 0.4 < cover.mean() < 0.6
  assert not mask[~cover].any()
  inside = expected & cover
  # Twice resampled with nearest (exact here); a few edge pixels of slack for other GDAL versions.
  assert inside.sum() > 150
  assert (mask & inside).sum() >= 0.95 * inside.sum() and mask.sum() <= 1.05 * inside.sum()


@pytest.mark.parametrize("same_grid", [True, False])
def test_float_mask_with_nodata_minus_9999_reads_as_0(grid, tmp_path, same_grid):
  expected = _boxes(SHAPE, SLIDES).astype(np.float32)
  values = np.where(expected == 1, 1.0, -9999.0).astype(np.float32)
  values[50, 50] = np.nan  # an untagged NaN is no data either
  transform = None if same_grid else from_origin(ORIGIN[0] - 100, ORIGIN[1], 10, 10)
  if not same_grid:  # shifted 10 px west: the raster misses the scene's last 10 columns
    values = np.pad(values, ((0, 0), (10, 0)), constant_values=-9999.0)[:, :SHAPE[1]]
    expected[:, -10:] = 0.0
  path = _write_mask(tmp_path / "mask.tif", values, nodata=-9999.0, transform=transform)
  out = raster_io.read_onto_grid(path, grid, "inventory")
  np.testing.assert_array_equal(out, expected)  # 0 where tagged nodata, NaN or not covered
  np.testing.assert_array_equal(inventory.read_mask(path, grid, "inventory"), expected.astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------
# Test area and cloud mask, through load_scene / load_channels.


def _site_with_masks(make_site, test_area: np.ndarray | None = None, cloud: np.ndarray | None = None,
                     nodata: float = 255) -> Path:
  extra = {}
  site = make_site("china", manifest={})
  if test_area is not None:
    _write_mask(site / "test_area.tif", _gis_export(test_area, nodata), nodata=nodata)
    extra["test_area"] = "test_area.tif"
  if cloud is not None:
    _write_mask(site / "cloud_mask.tif", _gis_export(cloud, nodata), nodata=nodata)
    extra["nodata_mask"] = "cloud_mask.tif"
  spec = json.loads((site / "manifest.json").read_text())
  (site / "manifest.json").write_text(json.dumps({**spec, **extra}))
  return site


def test_test_area_raster_with_nodata_255(make_site):
  area = np.zeros((200, 300), np.uint8)
  area[:, 180:] = 1  # the eastern 40 %
  site = _site_with_masks(make_site, test_area=area)
  scene = scene_lib.load_scene(site, constants.DEFAULT_CHANNELS, "china")
  assert scene.test_area.dtype == bool
  np.testing.assert_array_equal(scene.test_area, area.astype(bool))


def test_cloud_mask_with_nodata_255(make_site):
  cloud = np.zeros((200, 300), np.uint8)
  cloud[50:80, 100:160] = 1
  site = _site_with_masks(make_site, cloud=cloud)
  inputs = find_site_inputs(site)
  _, valid, _ = scene_lib.load_channels(inputs, constants.DEFAULT_CHANNELS)
  # make_site's S2 has no nodata pixel: only the cloud block is invalid.
  np.testing.assert_array_equal(valid, cloud == 0)
