"""Shared fixtures: a small self-made site folder, and the path of the real sample data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.warp
import shapely
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The real samples: ../shared/data beside the checkout, or wherever LANDSLIDE_JAX_SAMPLE_DATA points.
SHARED_DATA = Path(os.environ.get("LANDSLIDE_JAX_SAMPLE_DATA") or ROOT.parent / "shared" / "data")

SITE_CRS = "EPSG:32648"
ORIGIN = (500_000.0, 3_700_000.0)  # UTM 48N, near the China site


def shared_path(*parts: str) -> Path:
  """A path under ../shared/data, or skip the test with the reason when it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"real sample data not available: {path} does not exist (../shared/data is optional; "
                "LANDSLIDE_JAX_SAMPLE_DATA=<folder> points elsewhere)")
  return path


def write_s2(path: Path, shape: tuple[int, int], seed: int = 0, bands=("B02", "B03", "B04", "B08"),
             crs: str = SITE_CRS, nodata_block: bool = False) -> np.ndarray:
  rng = np.random.default_rng(seed)
  data = rng.integers(200, 3000, size=(len(bands), *shape), dtype=np.uint16)
  if nodata_block:
    data[:, : shape[0] // 4, : shape[1] // 4] = 0
  with rasterio.open(path, "w", driver="GTiff", height=shape[0], width=shape[1], count=len(bands),
                     dtype="uint16", crs=crs, transform=from_origin(*ORIGIN, 10, 10), nodata=0) as dst:
    dst.write(data)
    for i, name in enumerate(bands, start=1):
      dst.set_band_description(i, name)
  return data


def write_dem(path: Path, shape: tuple[int, int], gradient=(0.1, 0.05), margin_px: int = 3,
              nan_at: tuple[int, int] | None = None) -> None:
  """A planar DEM z = 1000 + gx * easting_offset + gy * northing_offset on a 30 m grid with a margin."""
  res = 30.0
  rows = int(np.ceil(shape[0] * 10 / res)) + 2 * margin_px
  cols = int(np.ceil(shape[1] * 10 / res)) + 2 * margin_px
  west, north = ORIGIN[0] - margin_px * res, ORIGIN[1] + margin_px * res
  x = west + (np.arange(cols) + 0.5) * res - ORIGIN[0]
  y = north - (np.arange(rows) + 0.5) * res - ORIGIN[1]
  dem = (1000 + gradient[0] * x[None, :] + gradient[1] * y[:, None]).astype(np.float32)
  if nan_at is not None:
    dem[nan_at] = np.nan
  with rasterio.open(path, "w", driver="GTiff", height=rows, width=cols, count=1, dtype="float32",
                     crs=SITE_CRS, transform=from_origin(west, north, res, res)) as dst:
    dst.write(dem, 1)


def write_polygons(path: Path, polygons: list, crs: str = SITE_CRS, driver: str = "GPKG") -> None:
  geoms = shapely.to_wkb(np.array(polygons, dtype=object))
  pyogrio.raw.write(path, geometry=geoms, field_data=[np.arange(len(polygons), dtype=np.int32)],
                    fields=["id"], crs=crs, driver=driver, geometry_type="Polygon")


def pixel_box(row0: int, col0: int, rows: int, cols: int):
  """A UTM polygon covering exactly pixels [row0, row0+rows) x [col0, col0+cols) of the site grid."""
  x0, y0 = ORIGIN[0] + col0 * 10, ORIGIN[1] - row0 * 10
  return shapely.box(x0, y0 - rows * 10, x0 + cols * 10, y0)


@pytest.fixture
def make_site(tmp_path):
  """Writes a small, valid site folder `<tmp>/raw/<name>/`; keyword options break it on purpose."""

  def _make(name: str = "china", shape=(200, 300), seed: int = 0, inventory_crs: str = "EPSG:4326",
            manifest: dict | None = None, nodata_block: bool = False, **dem_kwargs) -> Path:
    site = tmp_path / "raw" / name
    site.mkdir(parents=True)
    write_s2(site / "s2.tif", shape, seed, nodata_block=nodata_block)
    write_dem(site / "dem.tif", shape, **dem_kwargs)
    boxes = [pixel_box(20, 30, 12, 8), pixel_box(120, 200, 10, 20), pixel_box(150, 40, 30, 6)]
    if inventory_crs != SITE_CRS:
      boxes = [shapely.geometry.shape(g) for g in rasterio.warp.transform_geom(
          SITE_CRS, inventory_crs, [shapely.geometry.mapping(b) for b in boxes])]
    write_polygons(site / "inventory.gpkg", boxes, crs=inventory_crs)
    spec = {"sentinel2": "s2.tif", "dem": "dem.tif", "inventory": "inventory.gpkg", "s2_units": "dn"}
    spec.update(manifest or {})
    (site / "manifest.json").write_text(json.dumps(spec))
    return site

  return _make
