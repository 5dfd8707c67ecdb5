"""Raster I/O: the scene grid, Sentinel-2 reading, resampling onto the grid, GeoTIFF writing.

Every read goes through `open_raster`, so a missing, corrupt or truncated file becomes one `InputError`
naming the file instead of a GDAL traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
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
from scipy import ndimage

from landslide_jax import constants, faults
from landslide_jax.data import slope
from landslide_jax.errors import InputError

# Auto unit detection: Sentinel-2 reflectance rarely exceeds 1.0 (bright clouds ~1.5); DNs are ~0-10000.
_REFLECTANCE_MAX = 2.0

# Plausible digital numbers (10000 x reflectance, after s2_add_offset): baseline 04.00+ products store
# DN + 1000 in uint16, so -1000..65535 is every value a real product can give.
S2_DN_PLAUSIBLE = (-1000.0, 65535.0)
# Bands whose 99th percentile is at most _REFLECTANCE_MAX are reflectance; at least this many DN are
# digital numbers (the darkest real band, B2 over dense forest, has a p99 of a few hundred DN).
_DN_MIN_P99 = 20.0

# Offset check. Processing baseline 04.00 and later stores DN = 10000 x reflectance + 1000, so even the
# darkest pixels (water, shadows: a few hundred DN in every band) read above 1000. A scene whose darkest
# band has its 0.1th percentile of valid DN above OFFSET_DARK_DN, with no s2_add_offset given, gets a
# warning; scenes with fewer valid pixels than OFFSET_MIN_PIXELS are too small to judge.
OFFSET_DARK_PERCENTILE = 0.1
OFFSET_DARK_DN = 1000.0
OFFSET_MIN_PIXELS = 10_000
_OFFSET_SAMPLE_PIXELS = 1_000_000  # the percentile is taken on a regular subsample of this many pixels

# DEM fill detection. A DEM whose voids or out-of-footprint area hold a constant (0, -32768...) without a
# nodata tag makes cliffs of 90 degrees. A constant region of at least DEM_FILL_MIN_PIXELS source pixels
# is a fill when the valid pixels around it differ from it by more than DEM_FILL_JUMP_M (median), or when
# the constant is no elevation on Earth (outside DEM_PLAUSIBLE_M). A lake or a flat valley floor has
# shores within metres of its level and passes.
DEM_FILL_MIN_PIXELS = 100
DEM_FILL_JUMP_M = 100.0
DEM_PLAUSIBLE_M = (-500.0, 9000.0)
# A DEM coarser than this many scene pixels gives slopes of a few degrees everywhere (SRTM 90 m on the
# 10 m grid is 9: still accepted).
DEM_MAX_PIXEL_RATIO = 10.0
_WARP_CHUNK_ROWS = 256  # output rows the DEM resampler handles at once (memory, not results)
_WARP_NODE_STEP = 16  # pixels between exactly transformed positions when the DEM has another CRS


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
    (image, valid, grid): image float32 (len(bands), H, W) in digital numbers (reflectance x 10000),
    with the site's `s2_add_offset` added to DN data; valid bool (H, W), False where every band is nodata
    or any band is not finite; the grid of what was read.

  A whole-scene read of DN data without an `s2_add_offset` warns on stderr when the scene looks offset
  (see OFFSET_DARK_DN); the values are used as stored all the same.
  """
  if inputs.s2_products:
    # SAFE products: radiometry from each product's own metadata, already applied per product.
    image, valid, grid = _read_products(inputs, bands, window)
    if window is None and not valid.any():
      raise InputError(inputs.s2_products[0], "every pixel is nodata or masked by the scene "
                       "classification", "check the area of interest lies on the product's data, or "
                       "change scl_mask_classes in manifest.json")
    return image, valid, grid
  if window is not None:
    image, valid, grid = _read_s2_pixels(inputs, bands, window)
    units = resolve_s2_units(inputs, bands)
    return _to_dn(image, valid, units, s2_add_offsets(inputs, bands, units)), valid, grid
  image, valid, grid = _read_s2_pixels(inputs, bands, None)
  source = s2_source(inputs, bands)
  if not valid.any():
    raise InputError(source, "every pixel is nodata",
                     "check the file, or set the right s2_nodata in manifest.json")
  units = inputs.s2_units
  if units == "auto":
    units = _units_of(image, valid)
  offsets = s2_add_offsets(inputs, bands, units)
  check_s2_values(image, valid, bands, units, offsets, inputs.s2_units, source)
  _warn_if_offset_missing(inputs, image, valid, units, source)
  return _to_dn(image, valid, units, offsets), valid, grid


def check_s2_values(image: np.ndarray, valid: np.ndarray, bands: tuple[str, ...], units: str,
                    offsets: dict[str, float], declared: str, source: str | os.PathLike) -> None:
  """Refuses Sentinel-2 values that no product gives, before they become a silently wrong dataset.

  `image` holds the stored values (C, H, W) of `bands` (before unit scaling and offsets), `units` what
  they are taken to be, `declared` the manifest's `s2_units`. Checked per band on valid pixels: bands in
  different units (one in reflectance, the others in DN); units that contradict the values (reflectance
  declared for DN data, or DN for reflectance); negative stored DN with an offset still to add (the
  offset looks applied already); values outside S2_DN_PLAUSIBLE once in DN.

  Raises:
    InputError: naming the band, what its values are, and the likely cause.
  """
  if not valid.any():
    return
  step = max(1, int(np.sqrt(valid.size / _OFFSET_SAMPLE_PIXELS)))
  sample = valid[::step, ::step]
  stored = [layer[::step, ::step][sample] for layer in image]
  p99 = {b: float(np.percentile(v, 99)) for b, v in zip(bands, stored)}
  small = [b for b in bands if p99[b] <= _REFLECTANCE_MAX]
  large = [b for b in bands if p99[b] >= _DN_MIN_P99]
  if small and large:
    raise InputError(source, f"bands in different units: {', '.join(small)} look like reflectance "
                     f"(99th percentile {', '.join(f'{p99[b]:.3g}' for b in small)}), "
                     f"{', '.join(large)} like digital numbers", "export every band in the same units "
                     "(all digital numbers, or all reflectance)")
  if declared == "reflectance" and large:
    raise InputError(source, f"s2_units is reflectance, but {large[0]} holds digital numbers (99th "
                     f"percentile {p99[large[0]]:.0f})", "set \"s2_units\": \"dn\" (or \"auto\") in "
                     "manifest.json")
  if declared == "dn" and small:
    raise InputError(source, f"s2_units is dn, but {small[0]} holds reflectance (99th percentile "
                     f"{p99[small[0]]:.3g})", "set \"s2_units\": \"reflectance\" (or \"auto\") in "
                     "manifest.json")
  scale = constants.S2_DN_PER_REFLECTANCE if units == "reflectance" else 1.0
  for band, values in zip(bands, stored):
    offset = offsets.get(band, 0.0) if units == "dn" else 0.0
    low, high = float(values.min()), float(values.max())
    if offset and low < 0:
      raise InputError(source, f"{band} holds negative digital numbers (down to {low:g}) and "
                       f"s2_add_offset {offset:g} is still to be added: the offset looks applied already",
                       "drop s2_add_offset (or --s2_add_offset) for data whose offset is applied")
    dn_low, dn_high = low * scale + offset, high * scale + offset
    if dn_low < S2_DN_PLAUSIBLE[0] or dn_high > S2_DN_PLAUSIBLE[1]:
      raise InputError(source, f"{band} values reach {dn_low if dn_low < S2_DN_PLAUSIBLE[0] else dn_high:g} "
                       f"as digital numbers (10000 x reflectance), outside the {S2_DN_PLAUSIBLE[0]:g} to "
                       f"{S2_DN_PLAUSIBLE[1]:g} a Sentinel-2 product can hold",
                       "check the band is Sentinel-2 reflectance or DN (not a difference, index or scaled "
                       "export), and its s2_units, s2_nodata and s2_add_offset")


def s2_source(inputs, bands: tuple[str, ...]) -> Path:
  """The file (or product) that sets a site's Sentinel-2 grid, for messages."""
  if inputs.s2_products:
    return inputs.s2_products[0]
  path = inputs.s2_stack or inputs.s2_band_files.get(bands[0])
  if path is None:
    raise InputError(inputs.site_dir, f"missing band {bands[0]}", "add its file or name it in manifest.json")
  return path


def _units_of(image: np.ndarray, valid: np.ndarray) -> str:
  if not valid.any():
    return "dn"
  return "reflectance" if np.percentile(image[:, valid], 99) <= _REFLECTANCE_MAX else "dn"


def _to_dn(image: np.ndarray, valid: np.ndarray, units: str, offsets: dict[str, float]) -> np.ndarray:
  if units == "reflectance":
    image *= constants.S2_DN_PER_REFLECTANCE
  else:
    for layer, offset in zip(image, offsets.values()):
      if offset:
        layer += np.float32(offset)
  image[:, ~valid] = 0.0  # after the offset: nodata stays 0
  return image


def s2_add_offsets(inputs, bands: tuple[str, ...], units: str) -> dict[str, float]:
  """The DN offset added to each of `bands` (in order), checked against the data's units.

  Raises:
    InputError: a non-zero offset for data in reflectance units (the offset is in the stored DN), or a
      per-band table that leaves out one of `bands`.
  """
  offsets = inputs.add_offsets(bands)
  nonzero = {b: v for b, v in offsets.items() if v}
  if units == "reflectance" and nonzero:
    listed = ", ".join(f"{b} {v:g}" for b, v in nonzero.items())
    raise InputError(inputs.manifest or inputs.s2_stack or inputs.site_dir,
                     f"s2_add_offset ({listed}) applies to digital-number products, but the Sentinel-2 "
                     f"data are reflectance (s2_units {inputs.s2_units})",
                     "drop s2_add_offset (or --s2_add_offset) for reflectance data, or set "
                     "s2_units = \"dn\" if the file holds digital numbers")
  return offsets


def _darkest_dn(image: np.ndarray, valid: np.ndarray) -> float | None:
  """The OFFSET_DARK_PERCENTILE of valid values of the darkest band, or None for too few valid pixels.

  The darkest band, not B2: blue haze lifts B2 in shadows of non-offset L1C scenes, NIR stays low.
  """
  step = max(1, int(np.sqrt(valid.size / _OFFSET_SAMPLE_PIXELS)))
  sample = valid[::step, ::step]
  if int(sample.sum()) < OFFSET_MIN_PIXELS:
    return None
  return min(float(np.percentile(layer[::step, ::step][sample], OFFSET_DARK_PERCENTILE))
             for layer in image)


def _warn_if_offset_missing(inputs, image: np.ndarray, valid: np.ndarray, units: str,
                            source: str | os.PathLike) -> None:
  """One line on stderr when DN data look offset but no s2_add_offset was given (values stay as stored)."""
  if inputs.s2_add_offset_given or units != "dn":
    return
  dark = _darkest_dn(image, valid)
  if dark is None or dark <= OFFSET_DARK_DN:
    return
  print(f"warning: {source}: even the darkest Sentinel-2 pixels are above {OFFSET_DARK_DN:g} DN "
        f"({OFFSET_DARK_PERCENTILE:g}th percentile of the darkest band: {dark:.0f} DN), as in products of "
        "processing baseline 04.00 and later (DN = 10000 x reflectance + 1000), but no s2_add_offset is "
        "given, so the values are used as stored. If the product's BOA_ADD_OFFSET/RADIO_ADD_OFFSET is "
        "-1000, set \"s2_add_offset\": -1000 in manifest.json (launch.predict: --s2_add_offset=-1000)",
        file=sys.stderr, flush=True)


def resolve_s2_units(inputs, bands: tuple[str, ...], check_offset: bool = False) -> str:
  """'dn' or 'reflectance': the manifest's `s2_units`, or for 'auto' the answer of a ~1000 px overview
  read of the whole scene (cheap, and the same for every block). Block-wise readers resolve it once and
  pass inputs with it set, so the overview is not read again for each block.

  With `check_offset`, the same overview also feeds `check_s2_values` and the warning for DN data that
  look offset while no `s2_add_offset` was given (block reads do not check, so block-wise readers ask
  here, once a scene).
  """
  if inputs.s2_products:  # DN by definition, radiometry and nodata from each product's metadata
    return "dn"
  check = check_offset
  if inputs.s2_units != "auto" and not check:
    return inputs.s2_units
  grid = scene_grid(inputs, bands)
  step = max(1, max(grid.shape) // 1000)
  image, valid, _ = _read_s2_pixels(inputs, bands, None, step=step)
  units = _units_of(image, valid) if inputs.s2_units == "auto" else inputs.s2_units
  if check:
    source = s2_source(inputs, bands)
    check_s2_values(image, valid, bands, units, s2_add_offsets(inputs, bands, units), inputs.s2_units,
                    source)
    _warn_if_offset_missing(inputs, image, valid, units, source)
  return units


def _source_grid(inputs, bands: tuple[str, ...]) -> Grid:
  """The grid of the Sentinel-2 file itself (a product's: its 10 m grid), before any AOI crop."""
  if inputs.s2_products:
    from landslide_jax.data import sentinel2_safe  # pylint: disable=import-outside-toplevel
    product = sentinel2_safe.read_safe_product(inputs.s2_products[0])
    ten_m = next((b for b in constants.PAPER_BANDS if b in product.band_paths), None)
    if ten_m is None:
      raise InputError(product.path, "the product has no 10 m band (B02, B03, B04, B08)",
                       "use a complete L1C or L2A product")
    with open_raster(product.band_paths[ten_m], f"Sentinel-2 {ten_m}") as src:
      return grid_of(src)
  with open_raster(s2_source(inputs, bands), "Sentinel-2") as src:
    return grid_of(src)


def check_vector_coordinates(path: str | os.PathLike, crs, bounds, what: str) -> None:
  """Refuses a vector file whose CRS is geographic but whose coordinates are not degrees.

  A GeoJSON without a "crs" member is read as EPSG:4326 (RFC 7946), so a UTM export that lost the
  member, or a GeoPackage tagged with the wrong EPSG code, holds metres under a degree CRS: PROJ then
  fails with "Invalid latitude", or the features land thousands of kilometres away.

  Raises:
    InputError: coordinates outside longitude -180..360 or latitude -90..90 under a geographic CRS.
  """
  crs = CRS.from_user_input(crs)
  left, bottom, right, top = (float(v) for v in bounds)
  if not crs.is_geographic or (left >= -180 and right <= 360 and bottom >= -90 and top <= 90):
    return
  raise InputError(path, f"{what} coordinates ({left:.0f}, {bottom:.0f}, {right:.0f}, {top:.0f}) are not "
                   f"degrees, yet the file's CRS is {crs} (a GeoJSON without a \"crs\" member is read as "
                   "EPSG:4326)", "tag the CRS the coordinates are in, e.g. ogr2ogr -a_srs EPSG:32648 "
                   "out.gpkg in.geojson for UTM zone 48N")


def aoi_window(aoi: str | os.PathLike, grid: Grid) -> rasterio.windows.Window:
  """The window of `grid` holding the bounding box of an area-of-interest vector file, grown to whole
  pixels and clipped to the grid.

  Raises:
    InputError: the AOI cannot be read, has no CRS, or lies outside the grid.
  """
  import pyogrio  # pylint: disable=import-outside-toplevel
  import pyogrio.errors  # pylint: disable=import-outside-toplevel
  try:
    info = pyogrio.read_info(aoi, force_total_bounds=True)
  except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as err:
    raise InputError(aoi, f"cannot read area-of-interest file ({str(err).splitlines()[0][:160]})",
                     "check the file opens in QGIS; re-export it as GeoPackage or GeoJSON") from None
  if not info.get("crs"):
    raise InputError(aoi, "area-of-interest file has no CRS",
                     "assign one (ogr2ogr -a_srs EPSG:4326 out.gpkg in.geojson)")
  bounds = info.get("total_bounds")
  if bounds is None or info.get("features", 0) == 0 or not np.all(np.isfinite(bounds)):
    raise InputError(aoi, "area-of-interest file has no feature", "draw the study area polygon")
  check_vector_coordinates(aoi, info["crs"], bounds, "area-of-interest")
  left, bottom, right, top = rasterio.warp.transform_bounds(info["crs"], grid.crs, *bounds,
                                                            densify_pts=21)
  w = rasterio.windows.from_bounds(left, bottom, right, top, grid.transform)
  col0, row0 = max(int(np.floor(w.col_off + 1e-6)), 0), max(int(np.floor(w.row_off + 1e-6)), 0)
  col1 = min(int(np.ceil(w.col_off + w.width - 1e-6)), grid.shape[1])
  row1 = min(int(np.ceil(w.row_off + w.height - 1e-6)), grid.shape[0])
  if col1 <= col0 or row1 <= row0:
    g_left, g_bottom, g_right, g_top = grid.bounds
    raise InputError(aoi, f"the area of interest ({left:.0f}, {bottom:.0f}, {right:.0f}, {top:.0f}) lies "
                     f"outside the Sentinel-2 scene ({g_left:.0f}, {g_bottom:.0f}, {g_right:.0f}, "
                     f"{g_top:.0f}, {grid.crs})",
                     "use the product or tile that covers the study area, or check the AOI's CRS")
  return rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)


def _crop(grid: Grid, window: rasterio.windows.Window) -> Grid:
  return Grid(grid.crs, rasterio.windows.transform(window, grid.transform),
              (int(window.height), int(window.width)))


def scene_grid(inputs, bands: tuple[str, ...]) -> Grid:
  """The Sentinel-2 grid of a site without reading its pixels: the file's grid, or with an area of
  interest the part of it holding the AOI's bounding box."""
  grid = _source_grid(inputs, bands)
  if inputs.aoi is not None:
    grid = _crop(grid, aoi_window(inputs.aoi, grid))
  return grid


def _window_grid(grid: Grid, window: rasterio.windows.Window | None) -> Grid:
  if window is None:
    return grid
  return _crop(grid, rasterio.windows.Window(
      *map(int, (window.col_off, window.row_off, window.width, window.height))))


def _read_products(inputs, bands: tuple[str, ...], window: rasterio.windows.Window | None
                   ) -> tuple[np.ndarray, np.ndarray, Grid]:
  """Reads bands of one or more SAFE products onto the scene grid (or a window of it), in DN.

  Each band is read through a window of its file (never the whole tile) and resampled onto the 10 m
  grid: exact for bands on the grid's pixel lattice, bilinear for the others (20 m and 60 m bands, a
  product in another UTM zone). Stored 0 is nodata. Each
  product's values become 10000 x reflectance with its own QUANTIFICATION_VALUE and ADD_OFFSET, then the
  products are mosaicked: the first product with a valid pixel wins. L2A products mask the scene
  classification classes `inputs.scl_mask_classes` (SCL at 20 m, nearest).
  """
  from landslide_jax.data import sentinel2_safe  # pylint: disable=import-outside-toplevel
  grid = _window_grid(scene_grid(inputs, bands), window)
  image = np.full((len(bands), *grid.shape), np.nan, np.float32)
  valid = np.zeros(grid.shape, bool)
  for path in inputs.s2_products:
    product = sentinel2_safe.read_safe_product(path)
    layers = []
    for band in bands:
      if band not in product.band_paths:
        raise InputError(product.path, f"the product has no band {band} "
                         f"(it has {', '.join(sorted(product.band_paths))})",
                         "choose other --channels, or use a product with that band")
      # A band on the grid's own lattice (10 m bands of products on one UTM zone) is read exactly;
      # anything else (20/60 m bands, a product in another zone) is resampled bilinearly.
      stored = read_onto_grid(product.band_paths[band], grid, f"Sentinel-2 {band}",
                              Resampling.bilinear, fill=np.nan, src_nodata=0.0)
      layers.append(sentinel2_safe.reflectance_dn(stored, product, band))
    ok = np.isfinite(np.stack(layers)).all(axis=0)
    if product.scl_path is not None and inputs.scl_mask_classes:
      scl = read_onto_grid(product.scl_path, grid, "scene classification (SCL)", Resampling.nearest,
                           fill=0.0)
      ok &= ~np.isin(scl, np.asarray(inputs.scl_mask_classes, np.float32))
    take = ok & ~valid
    for out, layer in zip(image, layers):
      out[take] = layer[take]
    valid |= take
    if valid.all():
      break
  image[:, ~valid] = 0.0
  return image, valid, grid

def _read_s2_pixels(inputs, bands: tuple[str, ...], window, step: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, Grid]:
  """Band values as stored (no unit scaling), their validity and the grid read."""
  # With an area of interest the scene is a window of the file: a scene window moves by its offset.
  scene = scene_grid(inputs, bands)
  if inputs.aoi is not None:
    full = _source_grid(inputs, bands)
    col0, row0 = ~full.transform @ (scene.transform.c, scene.transform.f)
    col0, row0 = int(round(col0)), int(round(row0))
  else:
    col0 = row0 = 0
  file_window = rasterio.windows.Window(
      col0 + (int(window.col_off) if window is not None else 0),
      row0 + (int(window.row_off) if window is not None else 0),
      int(window.width) if window is not None else scene.shape[1],
      int(window.height) if window is not None else scene.shape[0])

  def read(src, index, what):
    if step > 1:
      shape = (max(1, file_window.height // step), max(1, file_window.width // step))
      return read_band(src, index, what, window=file_window, out_shape=shape).astype(np.float32)
    return read_band(src, index, what, window=file_window).astype(np.float32)

  def window_grid(full: Grid) -> Grid:
    return _window_grid(scene, window)

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


def _aligned_offset(src_grid: Grid, grid: Grid) -> tuple[int, int] | None:
  """(row, col) of `grid`'s top-left pixel in `src_grid` when `grid` is a whole-pixel window of the same
  pixel lattice (an AOI crop, a block of a scene), else None."""
  s, t = src_grid.transform, grid.transform
  tol = 1e-6 * abs(s.a)
  if src_grid.crs != grid.crs or abs(s.a - t.a) > tol or abs(s.e - t.e) > tol:
    return None
  col, row = ~s @ (t.c, t.f)
  if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
    return None
  return int(round(row)), int(round(col))


def read_onto_grid(path: str | os.PathLike, grid: Grid, what: str,
                   resampling: Resampling = Resampling.nearest, fill: float = 0.0,
                   src_nodata: float | None = None) -> np.ndarray:
  """Reads band 1 of a raster resampled onto `grid` (float32).

  Pixels equal to the file's nodata tag (or to `src_nodata` when given: Sentinel-2 products store 0
  without a tag), NaN pixels and pixels the raster does not cover get `fill` (0: for a mask, "not
  landslide", "not test area", "not masked"): a GIS export with 1 = landslide and NoData = 255 elsewhere
  must not read as all landslide. A raster on the same pixel lattice as the grid (the grid itself, or a
  window of it) is read as is, through a window: resampling then changes nothing.
  """
  with open_raster(path, what) as src:
    src_grid = grid_of(src)
    nodata = src.nodata if src_nodata is None else src_nodata
    offset = _aligned_offset(src_grid, grid)
    if offset is not None:
      row, col = offset
      out = np.full(grid.shape, fill, np.float32)
      r0, c0 = max(row, 0), max(col, 0)
      r1, c1 = min(row + grid.shape[0], src.height), min(col + grid.shape[1], src.width)
      if r1 > r0 and c1 > c0:
        part = read_band(src, 1, what, window=rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
                         ).astype(np.float32)
        if nodata is not None and not np.isnan(nodata):
          part[part == np.float32(nodata)] = np.nan
        part[np.isnan(part)] = fill
        out[r0 - row:r1 - row, c0 - col:c1 - col] = part
      return out
    window = _covering_window(src, grid)
    if window is None:
      return np.full(grid.shape, fill, np.float32)
    values = read_band(src, 1, what, window=window).astype(np.float32)
    # NaN marks nodata from here on: rasterio's reproject takes a dst_nodata of 0 as unset, so a
    # nodata tag (or 0) would otherwise leak through resampling.
    if nodata is not None and not np.isnan(nodata):
      values[values == np.float32(nodata)] = np.nan
    out = np.full(grid.shape, np.nan, np.float32)
    rasterio.warp.reproject(
        values, out, src_transform=src.window_transform(window), src_crs=src.crs, src_nodata=np.nan,
        dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan, resampling=resampling)
    out[np.isnan(out)] = fill
    return out


def read_dem_on_grid(dem: str | os.PathLike | tuple[Path, ...], grid: Grid, margin: int = 1,
                     scene: Grid | None = None) -> np.ndarray:
  """Reprojects a DEM (any CRS, any resolution) bilinearly onto `grid` grown by `margin` pixels.

  `scene` is the whole scene when `grid` is a block of it (default: `grid`): every pixel then gets the
  value a whole-scene read gives it, so block-wise prediction does not depend on the block size.

  `dem` is one file or a tuple of tiles, mosaicked first (a VRT: only the part the grid needs is read;
  each tile's nodata stays a void). The margin lets slope use true neighbours at the scene edge; where
  the DEM does not reach into the margin, the margin repeats the edge row/column.

  Raises:
    InputError: the DEM does not cover the scene (a missing tile of a known naming is named), or has
      NaN/nodata pixels inside it.
  """
  from landslide_jax.data import dem_tiles  # pylint: disable=import-outside-toplevel  (it imports us)
  tiles = (Path(dem),) if isinstance(dem, (str, os.PathLike)) else tuple(dem)
  if len(tiles) > 1:
    lonlat = rasterio.warp.transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21)
    dem_tiles.check_tiles_cover(tiles, lonlat, tiles[0].parent)
  with dem_tiles.dem_source(tiles) as source:
    return _read_dem_source(source, tiles[0] if len(tiles) == 1 else tiles[0].parent, grid, margin,
                            (scene or grid).expanded(margin))


def _read_dem_source(source: str, path: Path, grid: Grid, margin: int, anchor: Grid) -> np.ndarray:
  """`read_dem_on_grid` of one openable DEM (a file or a tile mosaic); `path` names it in errors."""
  with open_raster(source, "DEM") as src:
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
    dem_m = mean_pixel_metres(src.crs, src.transform, src.height)
    grid_m = mean_pixel_metres(grid.crs, grid.transform, grid.shape[0])
    if dem_m > DEM_MAX_PIXEL_RATIO * grid_m:
      raise InputError(path, f"DEM pixels are about {dem_m:.0f} m, {dem_m / grid_m:.0f} times the scene's "
                       f"{grid_m:.3g} m: slope from it would be nearly flat everywhere",
                       "use a DEM of 30 m (ALOS AW3D30, Copernicus GLO-30) or finer")
    big = grid.expanded(margin)
    window = _covering_window(src, big)
    dem = read_band(src, 1, "DEM", window=window).astype(np.float32)
    if src.nodata is not None and not np.isnan(src.nodata):
      dem[dem == np.float32(src.nodata)] = np.nan
    out = _warp_exactly(src, big, anchor)
    fill = find_dem_fill(dem)
    if fill is not None:
      value, flagged, jump = fill
      # Only a fill that reaches the scene (and its one-pixel margin) matters: the covering window also
      # holds DEM pixels around a rotated or reprojected footprint.
      reach = np.zeros(big.shape, np.float32)
      rasterio.warp.reproject(
          flagged.astype(np.float32), reach, src_transform=src.window_transform(window),
          src_crs=src.crs, src_nodata=np.nan, dst_transform=big.transform, dst_crs=big.crs,
          dst_nodata=np.nan, resampling=Resampling.bilinear)
      if np.nan_to_num(reach).any():
        cliff = ("an impossible elevation" if np.isnan(jump)
                 else f"bordered by a {jump:.0f} m jump to its neighbours")
        name = Path(path).name
        raise InputError(path, f"DEM holds {int(flagged.sum())} pixels of the constant value {value:g} "
                         f"({cliff}) where it covers the scene: voids or out-of-footprint area stored "
                         "as a fill value without a nodata tag, which would make cliffs of 90 degrees",
                         f"tag it as nodata (gdal_edit.py -a_nodata {value:g} {name}) and fill the voids "
                         "(gdal_fillnodata.py), or use a void-filled DEM")
  inner = out[margin:out.shape[0] - margin, margin:out.shape[1] - margin]
  holes = int(np.isnan(inner).sum())
  if holes:
    raise InputError(path, f"DEM has {holes} NaN or nodata pixels inside the scene",
                     "fill the voids first (gdal_fillnodata.py) or use a void-filled DEM")
  if margin and np.isnan(out).any():
    # Per pixel, so a block of a scene gets the margin the whole scene has at the same pixels.
    out = np.where(np.isnan(out), np.pad(inner, margin, mode="edge"), out)
  return out


def mean_pixel_metres(crs: CRS, transform: affine.Affine, rows: int) -> float:
  """The geometric mean of a pixel's sides in metres, at the raster's central row on a geographic CRS
  (`rows` tall): what "a 30 m DEM" means, and the square root of a pixel's area."""
  x, y = slope.pixel_size_metres(transform, crs, transform.f + transform.e * rows / 2)
  return math.sqrt(float(x) * float(y))


def _warp_exactly(src: rasterio.io.DatasetReader, grid: Grid, anchor: Grid) -> np.ndarray:
  """Band 1 of `src` resampled bilinearly onto `grid` (float32, NaN where the DEM has no data); `grid`
  is `anchor` or a whole-pixel window of it.

  Not GDAL's warper: it approximates the coordinate transformation piecewise-linearly over each chunk it
  warps (and picks source windows per chunk), so a block of a scene and the whole scene got elevations
  differing by metres on a geographic DEM (~0.1 degree of slope), and `launch.predict`'s maps depended on
  --block. Here source positions are transformed exactly (PROJ) at nodes every _WARP_NODE_STEP pixels of
  the anchor's lattice and interpolated linearly in between (a 160 m step on a 10 m grid: errors far below
  a millimetre of position), then each pixel is interpolated from its four source neighbours (weights
  renormalised over valid ones, as GDAL does). Node positions and weights depend only on a pixel's place
  in the anchor, so a block gets exactly the whole scene's values. A DEM more than twice as fine as the
  grid is first averaged over k x k blocks of its own pixel lattice (fixed by the file, not by the window
  read), as an anti-aliasing stand-in for GDAL's widened kernel.
  """
  offset = _aligned_offset(anchor, grid)
  if offset is None:  # not a window of the anchor: it is its own anchor
    anchor, offset = grid, (0, 0)
  nodata = src.nodata
  # Measured on the anchor, so every block of a scene gets the same k.
  k = max(1, int(mean_pixel_metres(anchor.crs, anchor.transform, anchor.shape[0])
                 // mean_pixel_metres(src.crs, src.transform, src.height)))
  window = _covering_window(src, grid, pad=2 * k)
  out = np.full(grid.shape, np.nan, np.float32)
  if window is None:
    return out
  # Align the window to the k-lattice so the averaged pixels are the same whatever the window.
  col0, row0 = int(window.col_off) // k * k, int(window.row_off) // k * k
  col1 = min(-(-(int(window.col_off + window.width)) // k) * k, src.width // k * k)
  row1 = min(-(-(int(window.row_off + window.height)) // k) * k, src.height // k * k)
  if col1 <= col0 or row1 <= row0:
    return out
  window = rasterio.windows.Window(col0, row0, col1 - col0, row1 - row0)
  values = read_band(src, 1, "DEM", window=window).astype(np.float32)
  if nodata is not None and not np.isnan(nodata):
    values[values == np.float32(nodata)] = np.nan
  values = values.astype(np.float64)
  transform = src.window_transform(window)
  if k > 1:
    values = values.reshape(values.shape[0] // k, k, values.shape[1] // k, k).mean(axis=(1, 3))
    transform = transform @ affine.Affine.scale(k)
  # Rows in chunks: the float64 work arrays of a whole 10980 px tile would take gigabytes.
  for first in range(0, grid.shape[0], _WARP_CHUNK_ROWS):
    last = min(first + _WARP_CHUNK_ROWS, grid.shape[0])
    xs, ys = _source_positions(anchor, src.crs, offset[0] + first, offset[0] + last, offset[1],
                               offset[1] + grid.shape[1])
    out[first:last] = _bilinear_at(values, ~transform, xs, ys)
  return out


def _source_positions(anchor: Grid, crs: CRS, row0: int, row1: int, col0: int, col1: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Coordinates in `crs` of the centres of anchor pixels rows row0..row1-1, cols col0..col1-1 (2-D):
  exact at nodes every _WARP_NODE_STEP anchor pixels, linear in between (see _warp_exactly)."""
  step = _WARP_NODE_STEP
  rows, cols = np.arange(row0, row1), np.arange(col0, col1)
  if crs == anchor.crs:  # an affine map: exact everywhere at no cost
    return anchor.transform @ tuple(np.meshgrid(cols + 0.5, rows + 0.5))
  node_rows = np.arange(row0 // step * step, (row1 - 1) // step * step + step + 1, step)
  node_cols = np.arange(col0 // step * step, (col1 - 1) // step * step + step + 1, step)
  nx, ny = anchor.transform @ tuple(np.meshgrid(node_cols + 0.5, node_rows + 0.5))
  nx, ny = (np.asarray(v).reshape(nx.shape) for v in rasterio.warp.transform(
      anchor.crs, crs, nx.ravel(), ny.ravel()))
  # Each pixel between its nodes, with weights from its integer place in the anchor.
  i, fr = (rows - node_rows[0]) // step, ((rows - node_rows[0]) % step) / step
  j, fc = (cols - node_cols[0]) // step, ((cols - node_cols[0]) % step) / step
  fr, fc = fr[:, None], fc[None, :]

  def blend(n: np.ndarray) -> np.ndarray:
    top = n[i][:, j] * (1 - fc) + n[i][:, j + 1] * fc
    bottom = n[i + 1][:, j] * (1 - fc) + n[i + 1][:, j + 1] * fc
    return top * (1 - fr) + bottom * fr

  return blend(nx), blend(ny)


def _bilinear_at(values: np.ndarray, to_pixel: affine.Affine, xs: np.ndarray, ys: np.ndarray
                 ) -> np.ndarray:
  """`values` (NaN = void) interpolated bilinearly at points (xs, ys) of its CRS; `to_pixel` maps
  them to its (col, row) pixel coordinates. Weights are renormalised over valid neighbours; NaN off the
  array or where no neighbour with weight is valid."""
  c, r = to_pixel @ (xs, ys)
  # Fractional positions with 0 at the first source pixel's centre.
  r, c = np.asarray(r) - 0.5, np.asarray(c) - 0.5
  height, width = values.shape
  r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
  fr, fc = r - r0, c - c0
  total = np.zeros(r.shape)
  weight = np.zeros(r.shape)
  for dr, wr in ((0, 1.0 - fr), (1, fr)):
    for dc, wc in ((0, 1.0 - fc), (1, fc)):
      rr, cc = r0 + dr, c0 + dc
      inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
      v = values[np.clip(rr, 0, height - 1), np.clip(cc, 0, width - 1)]
      ok = inside & np.isfinite(v)
      w = np.where(ok, wr * wc, 0.0)
      total += np.where(ok, v, 0.0) * w
      weight += w
  # The window read holds the grid's footprint with a margin, so "off" happens only at the file's edge.
  off = (r < -0.5) | (r > height - 0.5) | (c < -0.5) | (c > width - 0.5)
  return np.where((weight > 1e-12) & ~off, total / np.maximum(weight, 1e-12), np.nan).astype(np.float32)


def find_dem_fill(dem: np.ndarray) -> tuple[float, np.ndarray, float] | None:
  """Finds a fill value in DEM pixels (NaN = nodata): constant regions that cannot be terrain.

  A region is a 4-connected set of pixels of exactly one value. Regions of at least DEM_FILL_MIN_PIXELS
  pixels whose valid neighbours differ from the value by more than DEM_FILL_JUMP_M (median), or whose
  value is outside DEM_PLAUSIBLE_M, are fill. Only values with a flat core of some size (pixels equal to
  their four neighbours) are labelled, so the many small flats of an integer DEM cost one comparison pass.

  Returns:
    None, or (value, flagged bool mask of its fill regions, median jump in metres around the largest one
    (NaN when the value is implausible or the region has no valid neighbour)) for the value with the most
    flagged pixels.
  """
  if min(dem.shape) < 3:
    return None
  centre = dem[1:-1, 1:-1]
  core = np.zeros(dem.shape, bool)
  core[1:-1, 1:-1] = ((centre == dem[:-2, 1:-1]) & (centre == dem[2:, 1:-1])
                      & (centre == dem[1:-1, :-2]) & (centre == dem[1:-1, 2:]))
  core_labels, count = ndimage.label(core)
  if count == 0:
    return None
  # A region of n pixels at least 3 wide has a core of n / 3 pixels or more.
  big = np.flatnonzero(np.bincount(core_labels.ravel()) * 3 >= DEM_FILL_MIN_PIXELS)
  big = big[big > 0]
  if big.size == 0:
    return None
  cross = ndimage.generate_binary_structure(2, 1)
  found: dict[float, dict] = {}
  for value in np.unique(dem[np.isin(core_labels, big)]).tolist():
    regions, _ = ndimage.label(dem == value)
    objects = ndimage.find_objects(regions)
    sizes = np.bincount(regions.ravel())
    implausible = not DEM_PLAUSIBLE_M[0] <= value <= DEM_PLAUSIBLE_M[1]
    for i in np.flatnonzero(sizes >= DEM_FILL_MIN_PIXELS).tolist():
      if i == 0:
        continue
      rows, cols = objects[i - 1]
      r0, c0 = max(rows.start - 1, 0), max(cols.start - 1, 0)
      r1, c1 = min(rows.stop + 1, dem.shape[0]), min(cols.stop + 1, dem.shape[1])
      part, region = dem[r0:r1, c0:c1], regions[r0:r1, c0:c1] == i
      # The 4-neighbours of a region never hold its value (they would belong to it).
      ring = ndimage.binary_dilation(region, cross) & ~region & np.isfinite(part)
      jump = float(np.median(np.abs(part[ring] - value))) if ring.any() else np.nan
      if implausible or jump > DEM_FILL_JUMP_M:
        entry = found.setdefault(value, {"flagged": np.zeros(dem.shape, bool), "size": 0, "jump": np.nan})
        entry["flagged"][r0:r1, c0:c1] |= region
        if sizes[i] > entry["size"]:  # report the jump around the largest region
          entry["size"], entry["jump"] = int(sizes[i]), np.nan if implausible else jump
  if not found:
    return None
  value = max(found, key=lambda v: int(found[v]["flagged"].sum()))
  return value, found[value]["flagged"], found[value]["jump"]


def copy_as_cog(src: str | os.PathLike, dst: str | os.PathLike, resampling: str = "nearest") -> None:
  """Copies a GeoTIFF to a Cloud-Optimized GeoTIFF (GDAL's COG driver: 512 px tiles, internal
  overviews, deflate), so a large map opens at once in QGIS. `resampling` builds the overviews:
  "average" for probabilities, "nearest" for classes (a class map must not gain values)."""
  import rasterio.shutil  # pylint: disable=import-outside-toplevel
  with rasterio.Env(GDAL_PAM_ENABLED="NO"):
    rasterio.shutil.copy(src, dst, driver="COG", compress="DEFLATE", overview_resampling=resampling,
                         blocksize=512)


def cog_bytes_bound(src: str | os.PathLike) -> int:
  """About the most a `copy_as_cog` of `src` takes on disk: its size plus a third for the overviews."""
  return os.path.getsize(src) * 4 // 3


def write_geotiff(path: str | os.PathLike, array: np.ndarray, grid: Grid,
                  nodata: float | None = None, descriptions: tuple[str, ...] | None = None,
                  cog_resampling: str | None = None) -> Path:
  """Writes a (H, W) or (C, H, W) array as a tiled, compressed GeoTIFF, atomically.

  The file appears only when complete, so a crash never leaves a truncated map for QGIS to choke on.
  With `cog_resampling` ("nearest" or "average", for the overviews) it is a Cloud-Optimized GeoTIFF.
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
    with (faults.raster_write(path, data.nbytes), rasterio.Env(GDAL_PAM_ENABLED="NO"),
          rasterio.open(tmp, "w", **profile) as dst):
      dst.write(data)
      for i, name in enumerate(descriptions or (), start=1):
        dst.set_band_description(i, name)
    if cog_resampling is not None:
      plain, tmp = tmp, tmp[:-4] + ".cog.tif"
      try:
        # Named for the user's file: GDAL removes its partial copy, whose name is a temporary one.
        with faults.raster_write(path, cog_bytes_bound(plain)):
          copy_as_cog(plain, tmp, cog_resampling)
      finally:
        os.remove(plain)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a map is meant to be shared
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
