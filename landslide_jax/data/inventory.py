"""Landslide inventories and area polygons: read (pyogrio), reproject, rasterise onto the scene grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.errors
import rasterio.features
import rasterio.warp
import shapely
import shapely.geometry

from landslide_jax.data import raster_io
from landslide_jax.data.site_inputs import RASTER_SUFFIXES
from landslide_jax.errors import InputError

_POLYGONAL = ("Polygon", "MultiPolygon")


def read_polygons(path: str | os.PathLike, dst_crs, layer: str | None = None) -> list[dict]:
  """Reads polygon features and returns them as GeoJSON-like geometries in `dst_crs`.

  Inventories in another CRS are reprojected, not rejected. Empty and null geometries are skipped.

  Raises:
    InputError: unreadable file, missing CRS, or non-polygon geometries (points or lines).
  """
  try:
    meta, _, wkb, _ = pyogrio.raw.read(path, layer=layer, read_geometry=True)
  except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError,
          pyogrio.errors.GeometryError, pyogrio.errors.FieldError) as err:
    raise InputError(path, f"cannot read vector file ({str(err).splitlines()[0][:160]})",
                     "check the file opens in QGIS; re-export it as GeoPackage") from None
  if not meta.get("crs"):
    raise InputError(path, "vector file has no CRS",
                     "assign one (ogr2ogr -a_srs EPSG:4326 out.gpkg in.shp)")
  geoms = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty]
  kinds = sorted({g.geom_type for g in geoms} - set(_POLYGONAL) - {"GeometryCollection"})
  if kinds:
    raise InputError(path, f"features must be polygons, found {', '.join(kinds)}",
                     "landslide inventories and areas are polygons; buffer points or lines first")
  if not geoms:
    return []
  mapped = [shapely.geometry.mapping(g) for g in geoms]
  return rasterio.warp.transform_geom(meta["crs"], dst_crs, mapped)


def rasterize_polygons(geometries: list[dict], grid: raster_io.Grid) -> np.ndarray:
  """Burns polygons onto the grid: 1 inside (pixel centre inside, all_touched=False), 0 elsewhere."""
  if not geometries:
    return np.zeros(grid.shape, np.uint8)
  return rasterio.features.rasterize(
      ((g, 1) for g in geometries), out_shape=grid.shape, transform=grid.transform, fill=0,
      all_touched=False, dtype=np.uint8)


def read_mask(path: str | os.PathLike, grid: raster_io.Grid, what: str,
              layer: str | None = None, require_features: bool = True) -> np.ndarray:
  """A binary (0/1 uint8) mask on `grid` from polygons or from a raster (non-zero = 1).

  Raster pixels tagged nodata (a GIS export's 255 or -9999 around the features) and pixels the raster
  does not cover are 0: not landslide, not test area.

  Args:
    path: vector (.gpkg, .geojson, .shp, ...) or raster file.
    grid: the scene grid.
    what: what the mask is ("inventory", "test area"), for messages.
    layer: layer of a multi-layer vector file.
    require_features: error if nothing of the mask falls inside the scene.
  """
  path = Path(path)
  if path.suffix.lower() in RASTER_SUFFIXES:
    values = raster_io.read_onto_grid(path, grid, what, fill=0.0)
    mask = (values > 0).astype(np.uint8)
    if require_features and not mask.any():
      raise InputError(path, f"{what} raster has no positive pixel inside the scene",
                       "check it is the right site and lies on the Sentinel-2 footprint")
    return mask
  geometries = read_polygons(path, grid.crs, layer)
  if require_features:
    left, bottom, right, top = grid.bounds
    scene = shapely.box(left, bottom, right, top)
    inside = sum(1 for g in geometries if shapely.geometry.shape(g).intersects(scene))
    if inside == 0:
      raise InputError(path, f"{what} has 0 features inside the scene ({len(geometries)} in the file)",
                       "check it is the right site and that its CRS is set correctly")
  return rasterize_polygons(geometries, grid)
