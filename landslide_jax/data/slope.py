"""Slope in degrees from a DEM: Horn's (1981) 3x3 method, matching `gdaldem slope`.

The paper's slope channel is what GDAL produces with its defaults (Horn, scale 1), so this
reproduces that formula. On interior pixels the only difference is rounding: gdaldem sums
the window in float32, this in float64. On the Jiuzhaigou DEM that is 0 at 30 m (int16
input) and at most 0.0025 degree at 10 m (float32 input); tests/test_slope.py allows 0.1.

Differences to `gdaldem slope`, both deliberate:
  * Edges: gdaldem writes nodata on the 1-pixel border (without -compute_edges). Here the DEM
    is padded by edge replication, so every output pixel of a finite DEM is finite and patches
    cut at the scene border never carry nodata into the model.
  * Geographic grids: gdaldem needs a hand-picked -s scale (one value for the whole raster);
    here degrees are converted to metres per row on the WGS84 ellipsoid.
"""

from __future__ import annotations

import math

import affine
import numpy as np
import rasterio.crs

# WGS84 ellipsoid (EPSG:7030). Other geographic datums differ by well under 0.01 % in
# metres per degree, far below what a slope channel can resolve, so WGS84 serves them all.
_WGS84_A = 6378137.0
_WGS84_F = 1.0 / 298.257223563
_WGS84_E2 = _WGS84_F * (2.0 - _WGS84_F)


def _metres_per_degree(lat_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Returns (metres per degree of latitude, of longitude) on WGS84 at `lat_deg`.

  Latitude: pi/180 * M(phi), M the meridional radius of curvature. Longitude:
  pi/180 * N(phi) * cos(phi), N the prime-vertical radius of curvature.
  """
  phi = np.radians(lat_deg)
  w2 = 1.0 - _WGS84_E2 * np.sin(phi) ** 2
  n = _WGS84_A / np.sqrt(w2)
  m = _WGS84_A * (1.0 - _WGS84_E2) / (w2 * np.sqrt(w2))
  per_rad = math.pi / 180.0
  return per_rad * m, per_rad * n * np.cos(phi)


def pixel_size_metres(transform: affine.Affine, crs: rasterio.crs.CRS | str | None,
                      latitude: float | np.ndarray) -> tuple[float | np.ndarray, float | np.ndarray]:
  """The (x, y) sides of a pixel in metres: as is on a projected CRS (or `crs=None`), whose unit is
  taken to be metres; on a geographic CRS degrees converted at `latitude` (scalar or array) on WGS84."""
  xres = abs(float(transform.a))
  yres = abs(float(transform.e))
  if crs is None or not rasterio.crs.CRS.from_user_input(crs).is_geographic:
    return xres, yres
  m_lat, m_lon = _metres_per_degree(latitude)
  return xres * m_lon, yres * m_lat


def _pixel_size_metres(transform: affine.Affine, crs: rasterio.crs.CRS | str | None,
                       rows: int) -> tuple[float | np.ndarray, float | np.ndarray]:
  """Returns the (x, y) pixel size in metres: scalars, or (rows, 1) arrays on geographic grids."""
  if crs is None or not rasterio.crs.CRS.from_user_input(crs).is_geographic:
    return pixel_size_metres(transform, crs, 0.0)
  # North-up, so a row's centre latitude depends on the row only: f + (row + 0.5) * e.
  lat = float(transform.f) + (np.arange(rows, dtype=np.float64) + 0.5) * float(transform.e)
  if not np.all(np.abs(lat) < 90.0):
    raise ValueError(
        f"geographic grid has row centres at latitudes {lat.min():.6f}..{lat.max():.6f}, outside "
        "(-90, 90); check the transform (origin must be the top-left corner, in degrees)")
  x, y = pixel_size_metres(transform, crs, lat)
  return x[:, None], y[:, None]


def slope_degrees(dem: np.ndarray, transform: affine.Affine,
                  crs: rasterio.crs.CRS | str | None) -> np.ndarray:
  """Returns the slope of a DEM in degrees by Horn's (1981) method, as `gdaldem slope` does.

  Horn's 3x3 gradient: with neighbours z1..z9 row by row (z5 the centre) and pixel size dx, dy,
    dz/dx = ((z3 + 2 z6 + z9) - (z1 + 2 z4 + z7)) / (8 dx)
    dz/dy = ((z7 + 2 z8 + z9) - (z1 + 2 z2 + z3)) / (8 dy)
    slope = atan(hypot(dz/dx, dz/dy)), in degrees.

  Units: elevations are taken to be in metres. On a projected CRS (or `crs=None`) the pixel
  size is used as is, i.e. the CRS unit is assumed to be metres (a feet-based CRS needs a
  feet DEM). On a geographic CRS the pixel size in degrees is converted to metres at each
  row's centre latitude on the WGS84 ellipsoid (longitude: pi/180 N cos(phi); latitude:
  pi/180 M); the whole 3x3 window uses its centre row's size, an error of order
  (pixel size in radians)^2, i.e. negligible.

  Edges: the DEM is padded by one pixel by edge replication (np.pad mode='edge'), so the
  output has the input's shape and is finite wherever the input is finite. On the border the
  replicated neighbour equals the border pixel, so the gradient component across the edge is
  a one-sided difference divided by the two-pixel distance: on a plane it comes out at half
  its true value (on both components at the corners), i.e. border slopes are biased low.
  gdaldem writes nodata there instead; callers that need gdaldem's exact values should drop
  the 1-pixel border.

  NaN: a NaN elevation makes every output pixel whose 3x3 window contains it NaN, i.e. its
  3x3 neighbourhood clipped to the grid, where gdaldem writes nodata. (Horn's kernels give
  the centre weight 0, so the NaN pixel itself is set to NaN explicitly.) Callers reject
  DEMs with NaN or nodata before calling this; fill or mask them first.

  Args:
    dem: 2-D elevations in metres, any real dtype (computed in float64).
    transform: the DEM's affine transform; must be north-up (no rotation or shear).
      Non-square pixels are supported.
    crs: the DEM's CRS (anything `rasterio.crs.CRS.from_user_input` takes) or None, which
      is treated as a projected CRS in metres.

  Returns:
    float32 slope in degrees, in [0, 90], with the shape of `dem`.

  Raises:
    ValueError: `dem` is not 2-D, the grid is rotated or sheared, the pixel size is zero or
      not finite, or a geographic grid reaches a pole.
    TypeError: `transform` is not an affine.Affine.
  """
  dem = np.asarray(dem)
  if dem.ndim != 2:
    raise ValueError(f"slope_degrees needs a 2-D DEM, got shape {dem.shape}")
  if not isinstance(transform, affine.Affine):
    # A bare tuple is ambiguous (GDAL geotransform order differs from Affine's), so refuse it.
    raise TypeError(f"transform must be an affine.Affine, got {type(transform).__name__}")
  if transform.b != 0 or transform.d != 0:
    raise ValueError(
        f"rotated or sheared grids are not supported (transform.b={transform.b}, "
        f"transform.d={transform.d}); warp the DEM to a north-up grid first (e.g. gdalwarp)")
  if not (math.isfinite(transform.a) and math.isfinite(transform.e)
          and transform.a != 0 and transform.e != 0):
    raise ValueError(f"pixel size must be finite and non-zero, got ({transform.a}, {transform.e})")
  rows, cols = dem.shape
  if rows == 0 or cols == 0:
    return np.zeros(dem.shape, np.float32)
  dx, dy = _pixel_size_metres(transform, crs, rows)

  # float64 throughout: int16 sums can overflow, and float32 sums of ~4000 m elevations round
  # off by ~1e-3 m, which shows as slope noise on gentle terrain.
  z = np.pad(dem.astype(np.float64, copy=False), 1, mode="edge")
  # Horn's kernels are separable: [1, 2, 1] smoothing across the derivative direction, then a
  # central difference along it. Two passes per axis instead of six shifted slices.
  smooth = z[:-2] + z[2:]
  smooth += 2.0 * z[1:-1]
  dzdx = smooth[:, 2:] - smooth[:, :-2]
  del smooth
  smooth = z[:, :-2] + z[:, 2:]
  smooth += 2.0 * z[:, 1:-1]
  dzdy = smooth[2:] - smooth[:-2]
  del smooth
  dzdx /= 8.0 * dx
  dzdy /= 8.0 * dy
  # The sign conventions (row order, west/east) drop out: only the magnitude is needed.
  out = np.hypot(dzdx, dzdy, out=dzdx)
  np.arctan(out, out=out)
  np.degrees(out, out=out)
  if dem.dtype.kind in "fc":
    # The centre has weight 0 in both kernels, so a NaN pixel would get a finite slope from
    # its neighbours; mark it like its neighbourhood (and like gdaldem's nodata).
    out[np.isnan(dem)] = np.nan
  return out.astype(np.float32)
