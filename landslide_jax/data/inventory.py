"""Landslide inventories and area polygons: read (pyogrio), reproject, rasterise onto the scene grid."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.errors
import rasterio.errors
import rasterio.features
import rasterio.warp
import shapely
import shapely.geometry
from rasterio._err import CPLE_BaseError  # GDAL/PROJ errors; rasterio exports no public base

from landslide_jax.data import raster_io
from landslide_jax.data.site_inputs import RASTER_SUFFIXES
from landslide_jax.errors import InputError

_POLYGONAL = ("Polygon", "MultiPolygon")
# Files already warned about: launch.predict reads an AOI once per block, and one line per file is enough.
_WARNED: set[tuple[str, int, int]] = set()


def _leaves(geom) -> list:
  """The members of a geometry, nested GeometryCollections opened (multi-geometries stay whole)."""
  if geom.geom_type != "GeometryCollection":
    return [geom]
  return [leaf for part in geom.geoms for leaf in _leaves(part)]


def _check_polygonal(path: str | os.PathLike, geoms: list) -> None:
  """Refuses points and lines, also inside GeometryCollections: rasterize burns a line's pixels too."""
  counts: dict[str, int] = {}
  in_collections = 0
  for geom in geoms:
    bad = [g for g in _leaves(geom) if not g.is_empty and g.geom_type not in _POLYGONAL]
    for g in bad:
      counts[g.geom_type] = counts.get(g.geom_type, 0) + 1
    if geom.geom_type == "GeometryCollection":
      in_collections += len(bad)
  if not counts:
    return
  kinds = sorted(counts)
  detail = ", ".join(f"{counts[k]} {k}" for k in kinds)
  if in_collections:
    detail += f"; {in_collections} of them inside GeometryCollection features"
  raise InputError(path, f"features must be polygons, found {', '.join(kinds)} ({detail})",
                   "landslide inventories and areas are polygons: delete the points and lines or buffer "
                   "them into polygons (ogr2ogr -explodecollections splits collections into single "
                   "features)")


def _repair(path: str | os.PathLike, geoms: list) -> list:
  """Invalid polygons (self-intersections, duplicated or stray rings) repaired with shapely.make_valid.

  GDAL burns an invalid ring by the even-odd rule, so a duplicated hole fills back in; the repair gives
  the area a GIS user drew. The "structure" method unions overlapping parts (two overlapping polygons
  of one MultiPolygon stay one landslide; the default "linework" method would cut their overlap out).
  Only the polygonal parts of a repair are kept: a polygon collapsed to a line would be burnt as one.
  """
  invalid = ~shapely.is_valid(np.asarray(geoms, dtype=object))
  if not invalid.any():
    return geoms
  reason = shapely.is_valid_reason(geoms[int(np.argmax(invalid))])
  out = []
  for geom, bad in zip(geoms, invalid):
    if bad:
      fixed = shapely.make_valid(geom, method="structure")
      geom = shapely.union_all([g for g in _leaves(fixed) if g.geom_type in _POLYGONAL and not g.is_empty])
    if not geom.is_empty:
      out.append(geom)
  try:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)  # an edited file is warned about again
  except OSError:  # a GDAL virtual path (/vsizip/...)
    key = (os.fspath(path), 0, 0)
  if key not in _WARNED:
    _WARNED.add(key)
    print(f"warning: {path}: repaired {int(invalid.sum())} invalid polygon feature(s) of {len(geoms)} "
          f"(first: {reason}) with shapely.make_valid; check them in QGIS (Vector > Geometry Tools > "
          "Check Validity) if the mask looks wrong", file=sys.stderr, flush=True)
  return out


def read_polygons(path: str | os.PathLike, dst_crs, layer: str | None = None) -> list[dict]:
  """Reads polygon features and returns them as GeoJSON-like geometries in `dst_crs`.

  Inventories in another CRS are reprojected, not rejected. Empty and null geometries are skipped.
  GeometryCollections holding only polygons are accepted. Invalid (self-intersecting) polygons are
  repaired with `shapely.make_valid`, with one warning line on stderr.

  Raises:
    InputError: unreadable file, missing CRS, coordinates that do not fit the CRS, or non-polygon
      geometries (points or lines), also inside GeometryCollections.
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
  _check_polygonal(path, geoms)
  geoms = _repair(path, geoms)
  if not geoms:
    return []
  raster_io.check_vector_coordinates(path, meta["crs"], shapely.total_bounds(geoms), "feature")
  mapped = [shapely.geometry.mapping(g) for g in geoms]
  try:
    return rasterio.warp.transform_geom(meta["crs"], dst_crs, mapped)
  except CPLE_BaseError as err:  # e.g. a polygon over a pole that the scene's UTM zone cannot hold
    raise InputError(path, f"cannot reproject the features from {meta['crs']} to the scene's {dst_crs} "
                     f"({str(err).splitlines()[0][:120]})",
                     "clip the file to the study area (QGIS: Vector > Geoprocessing Tools > Clip)") from None


def rasterize_polygons(geometries: list[dict], grid: raster_io.Grid) -> np.ndarray:
  """Burns polygons onto the grid: 1 inside (pixel centre inside, all_touched=False), 0 elsewhere."""
  if not geometries:
    return np.zeros(grid.shape, np.uint8)
  return rasterio.features.rasterize(
      ((g, 1) for g in geometries), out_shape=grid.shape, transform=grid.transform, fill=0,
      all_touched=False, dtype=np.uint8)


def _bounds_text(bounds, crs) -> str:
  digits = 5 if crs.is_geographic else 0
  return f"({', '.join(f'{v:.{digits}f}' for v in bounds)}, {crs})"


def check_raster_overlap(path: str | os.PathLike, grid: raster_io.Grid, what: str) -> None:
  """Raises InputError when a mask raster's footprint does not overlap `grid` at all.

  Pixels a mask does not cover read as 0 ("not landslide", "not masked"), so a mask in the wrong CRS
  or place would otherwise read as a valid, empty mask: a silent 0 px instead of thousands.

  Args:
    path: the raster.
    grid: the whole scene grid (not a block of it: a mask may cover only part of the scene).
    what: what the raster is ("inventory", "nodata mask"), for messages.
  """
  with raster_io.open_raster(path, what) as src:
    raster_io.grid_of(src)  # no CRS or a rotated grid: its own one-line error
    # The scene's bounds in the raster's CRS, as the reader computes the part it needs: the scene is
    # small and valid in its own CRS, while a wrong raster's bounds may not transform at all.
    try:
      left, bottom, right, top = rasterio.warp.transform_bounds(grid.crs, src.crs, *grid.bounds,
                                                                densify_pts=21)
    except (rasterio.errors.RasterioError, rasterio.errors.CRSError, ValueError):
      left = bottom = right = top = np.nan
    s_left, s_bottom, s_right, s_top = src.bounds
    overlap = (np.all(np.isfinite((left, bottom, right, top)))
               and left < s_right and right > s_left and bottom < s_top and top > s_bottom)
    if not overlap:
      raise InputError(path, f"{what} raster does not overlap the scene: it covers "
                       f"{_bounds_text(src.bounds, src.crs)}, the scene is "
                       f"{_bounds_text(grid.bounds, grid.crs)}",
                       "check it is the right site's file and that its CRS is set correctly "
                       "(gdalinfo; gdal_edit.py -a_srs fixes a wrong CRS tag)")


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
    if require_features:
      check_raster_overlap(path, grid, what)
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
