"""Raster I/O: the scene grid, Sentinel-2 reading, resampling onto the grid, GeoTIFF writing.

Every read goes through `open_raster`, so a missing, corrupt or truncated file becomes one `InputError`
naming the file instead of a GDAL traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Iterator

import affine
import numpy as np
import rasterio
import rasterio.errors
import rasterio.warp
import rasterio.windows
from rasterio.crs import CRS
from rasterio.enums import Resampling

from landslide_jax import constants
from landslide_jax.errors import InputError

# Auto unit detection: Sentinel-2 reflectance rarely exceeds 1.0 (bright clouds ~1.5); DNs are ~0-10000.
_REFLECTANCE_MAX = 2.0


@dataclasses.dataclass(frozen=True)
class Grid:
  """A north-up raster grid: CRS, affine transform and (height, width)."""
  crs: CRS
  transform: affine.Affine
  shape: tuple[int, int]

  @property
  def bounds(self) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) in grid CRS units."""
    return rasterio.transform.array_bounds(*self.shape, self.transform)

  def expanded(self, margin: int) -> "Grid":
    """The same grid grown by `margin` pixels on every side."""
    transform = self.transform @ affine.Affine.translation(-margin, -margin)
    return Grid(self.crs, transform, (self.shape[0] + 2 * margin, self.shape[1] + 2 * margin))

  def window_transform(self, row: int, col: int) -> affine.Affine:
    """Transform of a window whose top-left pixel is (row, col)."""
    return self.transform @ affine.Affine.translation(col, row)

  def to_json(self) -> dict:
    return {"crs": self.crs.to_string(), "transform": list(self.transform)[:6],
            "shape": list(self.shape)}

  @classmethod
  def from_json(cls, data: dict) -> "Grid":
    return cls(CRS.from_user_input(data["crs"]), affine.Affine(*data["transform"]),
               tuple(data["shape"]))


@contextlib.contextmanager
def open_raster(path: str | os.PathLike, what: str) -> Iterator[rasterio.io.DatasetReader]:
  """Opens a raster for reading; GDAL failures become an InputError naming `path` and `what` it is."""
  try:
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):  # never write .aux.xml sidecars next to user data
      with rasterio.open(path) as src:
        yield src
  except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
    raise InputError(path, f"cannot read {what} raster ({str(err).splitlines()[0][:160]})",
                     "the file is missing, corrupt or truncated: re-export or re-download it") from None


def read_band(src: rasterio.io.DatasetReader, index: int, what: str, **kwargs) -> np.ndarray:
  """Reads one band, turning GDAL decode errors (truncated tiles) into an InputError."""
  try:
    return src.read(index, **kwargs)
  except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
    # rasterio's own text is "Read failed. See previous exception for details."; the GDAL reason is in
    # the cause, which the one-line message would otherwise hide.
    detail = str(err.__cause__ or err).splitlines()[0][:160]
    raise InputError(src.name, f"cannot decode {what} band {index} ({detail})",
                     "the file is corrupt or truncated: re-export or re-download it") from None


def grid_of(src: rasterio.io.DatasetReader) -> Grid:
  """The grid of an open raster, checked to be georeferenced and north-up."""
  if src.crs is None:
    raise InputError(src.name, "raster has no CRS", "assign one, e.g. gdal_edit.py -a_srs EPSG:32651")
  if src.transform.b != 0 or src.transform.d != 0:
    raise InputError(src.name, "raster grid is rotated", "warp it north-up with gdalwarp")
  return Grid(src.crs, src.transform, (src.height, src.width))


def _same_grid(a: Grid, b: Grid) -> bool:
  return (a.crs == b.crs and a.shape == b.shape
          and a.transform.almost_equals(b.transform, precision=1e-6 * abs(a.transform.a)))


def _describe(grid: Grid) -> str:
  # Shape, CRS, origin and pixel size: two grids can differ in any one of them alone (a shifted origin
  # is the usual one), so the message must show all four or it can read "(200, 600) vs (200, 600)".
  t = grid.transform
  return f"shape {grid.shape}, {grid.crs}, origin ({t.c:.2f}, {t.f:.2f}), pixel ({t.a:g}, {t.e:g})"


def stack_band_names(src: rasterio.io.DatasetReader, declared: tuple[str, ...] | None) -> list[str]:
  if declared is not None:
    if len(declared) != src.count:
      raise InputError(src.name, f"manifest lists {len(declared)} bands but the file has {src.count}",
                       "make 'bands' list every band of the file in order")
    return list(declared)
  names = []
  for i, desc in enumerate(src.descriptions, start=1):
    try:
      names.append(constants.canonical_band(desc or ""))
    except KeyError:
      raise InputError(src.name, f"band {i} has no Sentinel-2 band description ({desc!r})",
                       "list the band order in manifest.json, e.g. \"bands\": [\"B2\", \"B3\", \"B4\", \"B8\"]"
                       ) from None
  return names


def read_sentinel2(inputs, bands: tuple[str, ...], window: rasterio.windows.Window | None = None
                   ) -> tuple[np.ndarray, np.ndarray, Grid]:
  """Reads the requested Sentinel-2 bands of a site, or of one window of it.

  Args:
    inputs: the site's `SiteInputs`.
    bands: canonical band names to read, in output order.
    window: a window of the scene (prediction reads scenes larger than memory block by block), or None
      for the whole scene. With a window, an all-nodata result is allowed, and `s2_units: auto` is
      decided on a decimated read of the whole scene, so every block is scaled alike.

  Returns:
    (image, valid, grid): image float32 (len(bands), H, W) in digital numbers (reflectance x 10000);
    valid bool (H, W), False where every band is nodata or any band is not finite; the grid of what was
    read.
  """
  if window is not None:
    image, valid, grid = _read_s2_pixels(inputs, bands, window)
    return _to_dn(image, valid, resolve_s2_units(inputs, bands)), valid, grid
  image, valid, grid = _read_s2_pixels(inputs, bands, None)
  source = inputs.s2_stack or inputs.s2_band_files[bands[0]]
  if not valid.any():
    raise InputError(source, "every pixel is nodata",
                     "check the file, or set the right s2_nodata in manifest.json")
  units = inputs.s2_units
  if units == "auto":
    units = _units_of(image, valid)
  return _to_dn(image, valid, units), valid, grid


def _units_of(image: np.ndarray, valid: np.ndarray) -> str:
  if not valid.any():
    return "dn"
  return "reflectance" if np.percentile(image[:, valid], 99) <= _REFLECTANCE_MAX else "dn"


def _to_dn(image: np.ndarray, valid: np.ndarray, units: str) -> np.ndarray:
  if units == "reflectance":
    image *= constants.S2_DN_PER_REFLECTANCE
  image[:, ~valid] = 0.0
  return image


def resolve_s2_units(inputs, bands: tuple[str, ...]) -> str:
  """'dn' or 'reflectance': the manifest's `s2_units`, or for 'auto' the answer of a ~1000 px overview
  read of the whole scene (cheap, and the same for every block). Block-wise readers resolve it once and
  pass inputs with it set, so the overview is not read again for each block."""
  if inputs.s2_units != "auto":
    return inputs.s2_units
  grid = scene_grid(inputs, bands)
  step = max(1, max(grid.shape) // 1000)
  image, valid, _ = _read_s2_pixels(inputs, bands, None, step=step)
  return _units_of(image, valid)


def scene_grid(inputs, bands: tuple[str, ...]) -> Grid:
  """The Sentinel-2 grid of a site without reading its pixels."""
  path = inputs.s2_stack or inputs.s2_band_files.get(bands[0])
  if path is None:
    raise InputError(inputs.site_dir, f"missing band {bands[0]}", "add its file or name it in manifest.json")
  with open_raster(path, "Sentinel-2") as src:
    return grid_of(src)


def _read_s2_pixels(inputs, bands: tuple[str, ...], window, step: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, Grid]:
  """Band values as stored (no unit scaling), their validity and the grid read."""
  def read(src, index, what):
    if step > 1:
      shape = (max(1, src.height // step), max(1, src.width // step))
      return read_band(src, index, what, out_shape=shape).astype(np.float32)
    return read_band(src, index, what, window=window).astype(np.float32)

  def window_grid(full: Grid) -> Grid:
    if window is None:
      return full
    w = rasterio.windows.Window(*map(int, (window.col_off, window.row_off, window.width, window.height)))
    return Grid(full.crs, rasterio.windows.transform(w, full.transform), (int(w.height), int(w.width)))

  layers, grid, nodata_values = [], None, []
  if inputs.s2_stack is not None:
    with open_raster(inputs.s2_stack, "Sentinel-2") as src:
      grid = grid_of(src)
      names = stack_band_names(src, inputs.bands)
      for band in bands:
        if band not in names:
          raise InputError(src.name, f"missing band {band} (file has {', '.join(names)})",
                           f"add {band} to the stack or choose other --channels")
        index = names.index(band) + 1
        layers.append(read(src, index, "Sentinel-2"))
        nodata_values.append(src.nodatavals[index - 1])
  else:
    for band in bands:
      path = inputs.s2_band_files.get(band)
      if path is None:
        have = ", ".join(sorted(inputs.s2_band_files)) or "none"
        raise InputError(inputs.site_dir, f"missing band {band} (found {have})",
                         f"add a file named like *_{band[0]}{band[1:].zfill(2)}.tif or name it in manifest.json")
      with open_raster(path, f"Sentinel-2 {band}") as src:
        band_grid = grid_of(src)
        if grid is None:
          grid, first = band_grid, path
        elif not _same_grid(grid, band_grid):
          raise InputError(path, f"band {band} is on a different grid than {first.name} "
                           f"({_describe(band_grid)} vs {_describe(grid)})",
                           "resample all bands onto one 10 m grid (gdalwarp -tr 10 10 -tap)")
        layers.append(read(src, 1, f"Sentinel-2 {band}"))
        nodata_values.append(src.nodatavals[0])
  image = np.stack(layers)
  nodata = inputs.s2_nodata
  if nodata is None:
    tagged = {v for v in nodata_values if v is not None}
    nodata = tagged.pop() if len(tagged) == 1 else 0.0
  finite = np.isfinite(image).all(axis=0)
  valid = finite & ~(image == np.float32(nodata)).all(axis=0)
  return image, valid, window_grid(grid)


def _covering_window(src: rasterio.io.DatasetReader, grid: Grid, pad: int = 2
                     ) -> rasterio.windows.Window | None:
  """The part of `src` that `grid` needs (its bounds in the source CRS, grown by `pad` source pixels for
  the resampling kernel), clipped to the file; None when they do not overlap. Reading only this part
  keeps block-wise prediction from reading a whole DEM or mask once per block."""
  left, bottom, right, top = rasterio.warp.transform_bounds(grid.crs, src.crs, *grid.bounds,
                                                            densify_pts=21)
  w = rasterio.windows.from_bounds(left, bottom, right, top, src.transform)
  col0 = max(int(np.floor(w.col_off)) - pad, 0)
  row0 = max(int(np.floor(w.row_off)) - pad, 0)
  col1 = min(int(np.ceil(w.col_off + w.width)) + pad, src.width)
  row1 = min(int(np.ceil(w.row_off + w.height)) + pad, src.height)
  if col1 <= col0 or row1 <= row0:
    return None
  return rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)


def read_onto_grid(path: str | os.PathLike, grid: Grid, what: str,
                   resampling: Resampling = Resampling.nearest,
                   dst_nodata: float = 0.0) -> np.ndarray:
  """Reads band 1 of a raster resampled onto `grid` (float32); pixels it does not cover get `dst_nodata`.

  A raster already on the grid is read as is (resampling then changes nothing).
  """
  with open_raster(path, what) as src:
    src_grid = grid_of(src)
    if _same_grid(src_grid, grid):
      return read_band(src, 1, what).astype(np.float32)
    out = np.full(grid.shape, dst_nodata, np.float32)
    window = _covering_window(src, grid)
    if window is None:
      return out
    source = read_band(src, 1, what, window=window).astype(np.float32)
    rasterio.warp.reproject(
        source, out, src_transform=src.window_transform(window), src_crs=src.crs,
        src_nodata=src.nodata,
        dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=dst_nodata,
        resampling=resampling)
    return out


def read_dem_on_grid(path: str | os.PathLike, grid: Grid, margin: int = 1) -> np.ndarray:
  """Reprojects a DEM (any CRS, any resolution) bilinearly onto `grid` grown by `margin` pixels.

  The margin lets slope use true neighbours at the scene edge; where the DEM does not reach into the
  margin, the margin repeats the edge row/column.

  Raises:
    InputError: the DEM does not cover the scene, or has NaN/nodata pixels inside it.
  """
  with open_raster(path, "DEM") as src:
    src_grid = grid_of(src)
    # Coverage: the DEM's footprint in the scene CRS must contain the scene (half a DEM pixel slack).
    left, bottom, right, top = rasterio.warp.transform_bounds(
        src_grid.crs, grid.crs, *src.bounds, densify_pts=21)
    s_left, s_bottom, s_right, s_top = grid.bounds
    slack = 0.5 * max(abs(grid.transform.a), abs(grid.transform.e))
    if (left > s_left + slack or right < s_right - slack
        or bottom > s_bottom + slack or top < s_top - slack):
      raise InputError(path, f"DEM does not cover the scene (DEM bounds {left:.0f}, {bottom:.0f}, "
                       f"{right:.0f}, {top:.0f}; scene {s_left:.0f}, {s_bottom:.0f}, {s_right:.0f}, "
                       f"{s_top:.0f} in {grid.crs})", "provide a DEM mosaic that covers the whole scene")
    big = grid.expanded(margin)
    window = _covering_window(src, big)
    dem = read_band(src, 1, "DEM", window=window).astype(np.float32)
    if src.nodata is not None and not np.isnan(src.nodata):
      dem[dem == np.float32(src.nodata)] = np.nan
    out = np.full(big.shape, np.nan, np.float32)
    rasterio.warp.reproject(
        dem, out, src_transform=src.window_transform(window), src_crs=src.crs, src_nodata=np.nan,
        dst_transform=big.transform, dst_crs=big.crs, dst_nodata=np.nan,
        resampling=Resampling.bilinear)
  inner = out[margin:out.shape[0] - margin, margin:out.shape[1] - margin]
  holes = int(np.isnan(inner).sum())
  if holes:
    raise InputError(path, f"DEM has {holes} NaN or nodata pixels inside the scene",
                     "fill the voids first (gdal_fillnodata.py) or use a void-filled DEM")
  if margin and np.isnan(out).any():
    out = np.pad(inner, margin, mode="edge")
  return out


def write_geotiff(path: str | os.PathLike, array: np.ndarray, grid: Grid,
                  nodata: float | None = None, descriptions: tuple[str, ...] | None = None) -> Path:
  """Writes a (H, W) or (C, H, W) array as a tiled, compressed GeoTIFF, atomically.

  The file appears only when complete, so a crash never leaves a truncated map for QGIS to choke on.
  """
  path = Path(path)
  data = array[None] if array.ndim == 2 else array
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".tif", dir=path.parent, prefix=f".{path.stem}.")
  os.close(fd)
  try:
    profile = dict(driver="GTiff", height=grid.shape[0], width=grid.shape[1], count=data.shape[0],
                   dtype=data.dtype, crs=grid.crs, transform=grid.transform, nodata=nodata,
                   compress="deflate", tiled=True, blockxsize=256, blockysize=256)
    if grid.shape[0] < 256 or grid.shape[1] < 256:
      profile.update(tiled=False, blockxsize=None, blockysize=None)
      profile = {k: v for k, v in profile.items() if v is not None or k == "nodata"}
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(tmp, "w", **profile) as dst:
      dst.write(data)
      for i, name in enumerate(descriptions or (), start=1):
        dst.set_band_description(i, name)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a map is meant to be shared
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
