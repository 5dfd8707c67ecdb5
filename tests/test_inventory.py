"""Tests for landslide_jax.data.inventory: rasterising polygons, reading every input format."""

from __future__ import annotations

import math

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.warp
import shapely
import shapely.geometry
from rasterio.crs import CRS
from rasterio.transform import from_origin

from landslide_jax.data import inventory, raster_io
from landslide_jax.errors import InputError
from tests.conftest import ORIGIN, SITE_CRS, pixel_box, write_polygons

SHAPE = (100, 120)  # 1000 m x 1200 m at 10 m
RADIUS = 200.0
# pi * r^2 / (10 m * 10 m) = pi * 40000 / 100 = 1256.6 pixels.
CIRCLE_PIXELS = math.pi * RADIUS ** 2 / 100.0


@pytest.fixture(name="grid")
def fixture_grid() -> raster_io.Grid:
  return raster_io.Grid(CRS.from_user_input(SITE_CRS), from_origin(*ORIGIN, 10, 10), SHAPE)


def _circle():
  """A 200 m circle centred in the grid, in the scene CRS, as a near-exact polygon."""
  centre = shapely.Point(ORIGIN[0] + 600.0, ORIGIN[1] - 500.0)
  return centre.buffer(RADIUS, quad_segs=256)


def _to_4326(polygons):
  mapped = [shapely.geometry.mapping(p) for p in polygons]
  return [shapely.geometry.shape(g) for g in rasterio.warp.transform_geom(SITE_CRS, "EPSG:4326", mapped)]


def test_circle_area(grid):
  mask = inventory.rasterize_polygons([shapely.geometry.mapping(_circle())], grid)
  assert mask.dtype == np.uint8 and mask.shape == SHAPE and set(np.unique(mask)) == {0, 1}
  assert abs(mask.sum() - CIRCLE_PIXELS) <= 0.01 * CIRCLE_PIXELS
  # Centred where the circle is: pixel (50, 60) is the one whose corner is the centre.
  rows, cols = np.nonzero(mask)
  assert rows.mean() == pytest.approx(49.5, abs=0.1) and cols.mean() == pytest.approx(59.5, abs=0.1)


@pytest.mark.parametrize("suffix, driver", [(".gpkg", "GPKG"), (".geojson", "GeoJSON")])
def test_circle_in_wgs84_is_reprojected(grid, tmp_path, suffix, driver):
  direct = inventory.rasterize_polygons([shapely.geometry.mapping(_circle())], grid)
  path = tmp_path / f"circle{suffix}"
  write_polygons(path, _to_4326([_circle()]), crs="EPSG:4326", driver=driver)
  mask = inventory.read_mask(path, grid, "inventory")
  assert abs(int(mask.sum()) - int(direct.sum())) <= 0.01 * direct.sum()
  assert abs(mask.sum() - CIRCLE_PIXELS) <= 0.01 * CIRCLE_PIXELS
  # And in the same place, not merely of the same size.
  assert (mask & direct).sum() >= 0.99 * direct.sum()


def test_box_on_pixel_edges_is_exact(grid, tmp_path):
  expected = np.zeros(SHAPE, np.uint8)
  expected[10:17, 20:33] = 1
  mask = inventory.rasterize_polygons([shapely.geometry.mapping(pixel_box(10, 20, 7, 13))], grid)
  np.testing.assert_array_equal(mask, expected)
  assert mask.sum() == 7 * 13
  # Through a file in another CRS too: pixel centres are half a pixel from every edge.
  path = tmp_path / "box.gpkg"
  write_polygons(path, _to_4326([pixel_box(10, 20, 7, 13)]), crs="EPSG:4326")
  np.testing.assert_array_equal(inventory.read_mask(path, grid, "inventory"), expected)


def test_vector_formats_agree(grid, tmp_path):
  polygons = _to_4326([pixel_box(5, 5, 10, 20), pixel_box(70, 90, 12, 8), _circle()])
  masks = {}
  for name, driver in (("inv.geojson", "GeoJSON"), ("inv.gpkg", "GPKG"), ("inv.shp", "ESRI Shapefile")):
    write_polygons(tmp_path / name, polygons, crs="EPSG:4326", driver=driver)
    masks[name] = inventory.read_mask(tmp_path / name, grid, "inventory")
  reference = masks["inv.gpkg"]
  assert reference[5:15, 5:25].all() and reference[70:82, 90:98].all()
  for name, mask in masks.items():
    np.testing.assert_array_equal(mask, reference, err_msg=name)


def test_raster_inventory_is_read_as_is(grid, tmp_path):
  rng = np.random.default_rng(3)
  values = (rng.random(SHAPE) < 0.1).astype(np.uint8)
  path = tmp_path / "inventory.tif"
  with rasterio.open(path, "w", driver="GTiff", height=SHAPE[0], width=SHAPE[1], count=1, dtype="uint8",
                     crs=SITE_CRS, transform=grid.transform) as dst:
    dst.write(values, 1)
  mask = inventory.read_mask(path, grid, "inventory")
  assert mask.dtype == np.uint8
  np.testing.assert_array_equal(mask, values)


def test_empty_raster_inventory_is_an_error(grid, tmp_path):
  path = tmp_path / "inventory.tif"
  with rasterio.open(path, "w", driver="GTiff", height=SHAPE[0], width=SHAPE[1], count=1, dtype="uint8",
                     crs=SITE_CRS, transform=grid.transform) as dst:
    dst.write(np.zeros(SHAPE, np.uint8), 1)
  with pytest.raises(InputError, match="no positive pixel"):
    inventory.read_mask(path, grid, "inventory")


@pytest.mark.parametrize("geometry_type, geometries", [
    ("Point", [shapely.Point(ORIGIN[0] + 100, ORIGIN[1] - 100)]),
    ("LineString", [shapely.LineString([(ORIGIN[0] + 100, ORIGIN[1] - 100),
                                        (ORIGIN[0] + 300, ORIGIN[1] - 300)])]),
])
def test_points_and_lines_are_rejected(grid, tmp_path, geometry_type, geometries):
  path = tmp_path / "inventory.gpkg"
  pyogrio.raw.write(path, geometry=shapely.to_wkb(np.array(geometries, dtype=object)),
                    field_data=[np.arange(len(geometries), dtype=np.int32)], fields=["id"],
                    crs=SITE_CRS, driver="GPKG", geometry_type=geometry_type)
  with pytest.raises(InputError, match=f"must be polygons, found {geometry_type}"):
    inventory.read_mask(path, grid, "inventory")


def test_polygons_outside_the_scene_are_an_error(grid, tmp_path):
  path = tmp_path / "inventory.gpkg"
  write_polygons(path, [pixel_box(500, 500, 5, 5)])
  with pytest.raises(InputError, match="0 features inside the scene"):
    inventory.read_mask(path, grid, "inventory")
  # Unless an empty mask is acceptable (e.g. a scene without landslides).
  assert not inventory.read_mask(path, grid, "inventory", require_features=False).any()
