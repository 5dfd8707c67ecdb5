"""DEM tiles as users download them: one file, a list, a folder or a glob, mosaicked through a VRT.

Tile names of ALOS AW3D30 (`ALPSMLC30_N042E141_DSM.tif`) and Copernicus GLO-30
(`Copernicus_DSM_COG_10_N42_00_E141_00_DEM.tif`) are recognised, so a gap in a tile set is reported by
the name of the missing tile.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import escape

import rasterio

from landslide_jax.errors import InputError

DEM_SUFFIXES = (".tif", ".tiff", ".vrt", ".hgt", ".dt2")
_AW3D30 = re.compile(r"ALPSMLC30_([NS])(\d{3})([EW])(\d{3})_DSM", re.I)
_GLO30 = re.compile(r"Copernicus_DSM_(?:COG_)?10_([NS])(\d{2})_00_([EW])(\d{3})_00_DEM", re.I)


def find_dem_files(spec: str | list[str] | tuple[str, ...], base_dir: Path, where: Path | None
                   ) -> tuple[Path, ...]:
  """The DEM files a spec names, relative to `base_dir`: a file, a folder (its rasters), a glob, or a
  list of those; sorted within a folder or glob, deduplicated, in the order given.

  Raises:
    InputError: a named file or folder is missing, a folder holds no raster, a glob matches nothing.
  """
  specs = [spec] if isinstance(spec, str) else list(spec)
  if not specs:
    raise InputError(where, "no DEM named", "name a DEM file, a folder of tiles or a glob")
  found: list[Path] = []
  for item in specs:
    path = Path(base_dir) / item
    if any(c in item for c in "*?["):
      hits = sorted(Path(p).resolve() for p in glob.glob(str(path))
                    if Path(p).suffix.lower() in DEM_SUFFIXES and Path(p).is_file())
      if not hits:
        raise InputError(where or path, f"the DEM pattern {item!r} matches no raster file",
                         "check the pattern, or name the DEM tiles' folder")
    elif path.is_dir():
      hits = sorted(p.resolve() for p in path.iterdir()
                    if p.is_file() and p.suffix.lower() in DEM_SUFFIXES)
      if not hits:
        raise InputError(path, "the DEM folder holds no raster (.tif, .vrt, .hgt, .dt2)",
                         "put the DEM tiles in it, or name the DEM file")
    elif path.is_file():
      hits = [path.resolve()]
    else:
      raise InputError(where or path, f"DEM {item!r} does not exist",
                       f"put it in {base_dir} or correct the dem entry (a file, a folder or a glob)")
    found.extend(h for h in hits if h not in found)
  return tuple(found)


def tile_of_name(name: str) -> tuple[str, int, int] | None:
  """("aw3d30" | "glo30", south edge latitude, west edge longitude) of a tile name, else None."""
  for kind, pattern in (("aw3d30", _AW3D30), ("glo30", _GLO30)):
    match = pattern.search(Path(name).name)
    if match:
      ns, lat, ew, lon = match.groups()
      return (kind, int(lat) * (1 if ns.upper() == "N" else -1),
              int(lon) * (1 if ew.upper() == "E" else -1))
  return None


def tile_name(kind: str, lat: int, lon: int) -> str:
  """The file name of the 1-degree tile whose south-west corner is (lat, lon)."""
  ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
  if kind == "aw3d30":
    return f"ALPSMLC30_{ns}{abs(lat):03d}{ew}{abs(lon):03d}_DSM.tif"
  if kind == "glo30":
    return f"Copernicus_DSM_COG_10_{ns}{abs(lat):02d}_00_{ew}{abs(lon):03d}_00_DEM.tif"
  raise ValueError(f"unknown tile kind {kind!r}")


def missing_tiles(paths: tuple[Path, ...], lonlat_bounds: tuple[float, float, float, float]
                  ) -> list[str]:
  """Names of the 1-degree tiles the bounds (west, south, east, north) need but `paths` lack, when
  every path follows one recognised naming; [] otherwise (nothing to say about unnamed tiles)."""
  tiles = [tile_of_name(p.name) for p in paths]
  kinds = {t[0] for t in tiles if t is not None}
  if not tiles or None in tiles or len(kinds) != 1:
    return []
  kind = kinds.pop()
  have = {(t[1], t[2]) for t in tiles}
  west, south, east, north = lonlat_bounds
  # Tile (lat, lon) spans [lat, lat + 1) x [lon, lon + 1): a bound on a whole degree needs no tile
  # beyond it, so the ranges end at the ceiling.
  need = [(lat, lon) for lat in range(math.floor(south), math.ceil(north))
          for lon in range(math.floor(west), math.ceil(east))]
  return [tile_name(kind, lat, lon) for lat, lon in need if (lat, lon) not in have]


def check_tiles_cover(paths: tuple[Path, ...], lonlat_bounds: tuple[float, float, float, float],
                      where: Path | None) -> None:
  """Raises InputError naming the first missing tile of a recognised tile set, if any."""
  missing = missing_tiles(paths, lonlat_bounds)
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise InputError(where, f"the scene needs DEM tile {missing[0]}{more}, which is missing",
                     "download it into the DEM folder (or list it in the manifest's dem entry); Copernicus has "
                     "no tiles over open sea, so cut the scene to land with an AOI")


@contextlib.contextmanager
def dem_source(paths: tuple[Path, ...]) -> Iterator[str]:
  """A path rasterio can open for the DEM: the file itself, or a VRT mosaic of several tiles.

  The tiles must share CRS, pixel size and data type; each tile's nodata stays nodata. Where tiles
  overlap (1-degree tiles share their border row and column), the first tile wins. The VRT is a
  temporary file, removed on exit; it references the tiles, so only what is read is decoded.

  Raises:
    InputError: tiles on different CRS, pixel sizes or data types.
  """
  if len(paths) == 1:
    yield str(paths[0])
    return
  infos = []
  for path in paths:
    try:
      with rasterio.open(path) as src:
        infos.append((path, src.crs, src.transform, src.width, src.height, src.dtypes[0], src.nodata))
    except rasterio.errors.RasterioIOError as err:
      raise InputError(path, f"cannot read DEM tile ({str(err).splitlines()[0][:160]})",
                       "the file is missing, corrupt or truncated: re-download it") from None
  for path, crs, *_ in infos:
    if crs is None:
      # A truncated download often keeps its header but loses the georeferencing tags.
      raise InputError(path, "DEM tile has no CRS or georeferencing (truncated or not a DEM tile?)",
                       "re-download it, or assign its CRS and extent (gdal_translate -a_srs -a_ullr)")
  first = infos[0]
  for path, crs, transform, _, _, dtype, _ in infos[1:]:
    if crs != first[1] or abs(transform.a - first[2].a) > 1e-9 * abs(first[2].a) \
        or abs(transform.e - first[2].e) > 1e-9 * abs(first[2].e) or dtype != first[5]:
      raise InputError(path, f"DEM tile differs from {first[0].name} in CRS, pixel size or data type "
                       f"({crs}, {transform.a:g} x {transform.e:g}, {dtype} vs {first[1]}, "
                       f"{first[2].a:g} x {first[2].e:g}, {first[5]})",
                       "warp all tiles onto one grid first (gdalwarp -t_srs ... -tr ...)")
  res_x, res_y = first[2].a, first[2].e
  west = min(t.c for _, _, t, *_ in infos)
  north = max(t.f for _, _, t, *_ in infos)
  east = max(t.c + w * t.a for _, _, t, w, *_ in infos)
  south = min(t.f + h * t.e for _, _, t, _, h, *_ in infos)
  width, height = round((east - west) / res_x), round((south - north) / res_y)
  # Gaps between tiles must read as voids, not as 0 m: without a tile nodata, NaN (or the type's
  # minimum for integer tiles) marks them.
  nodata = next((n for *_, n in infos if n is not None), None)
  if nodata is None:
    nodata = float("nan") if first[5].startswith("float") else -32768
  sources = []
  # A VRT draws its sources in order, later ones over earlier ones: reversed, the first tile wins.
  for path, _, t, w, h, _, tile_nodata in reversed(infos):
    x_off, y_off = (t.c - west) / res_x, (t.f - north) / res_y
    nd = "" if tile_nodata is None or tile_nodata != tile_nodata else f"<NODATA>{tile_nodata!r}</NODATA>"
    sources.append(
        f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>'
        f'<SourceBand>1</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f'<DstRect xOff="{x_off!r}" yOff="{y_off!r}" xSize="{w}" ySize="{h}"/>{nd}</ComplexSource>')
  gdal_type = {"float32": "Float32", "float64": "Float64", "int16": "Int16", "uint16": "UInt16",
               "int32": "Int32", "uint8": "Byte"}[first[5]]
  band_nodata = f"<NoDataValue>{'nan' if nodata != nodata else repr(nodata)}</NoDataValue>"
  xml = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
         f"<SRS>{escape(first[1].to_wkt())}</SRS>"
         f"<GeoTransform>{west!r}, {res_x!r}, 0.0, {north!r}, 0.0, {res_y!r}</GeoTransform>"
         f'<VRTRasterBand dataType="{gdal_type}" band="1">{band_nodata}{"".join(sources)}</VRTRasterBand>'
         "</VRTDataset>")
  fd, tmp = tempfile.mkstemp(suffix=".vrt", prefix="landslide_jax_dem_")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(xml)
    yield tmp
  finally:
    os.remove(tmp)
