"""Tests for landslide_jax.data.slope: analytic planes, an independent reference, gdaldem."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import affine
import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.crs import CRS
from rasterio.enums import Resampling

from landslide_jax.data.slope import slope_degrees
from tests.conftest import SHARED_DATA

_SHARED_DEM_DIR = SHARED_DATA / "jiuzhaigou_dem"
_REAL_DEM = _SHARED_DEM_DIR / "DEM_030.tif"
_REAL_10M_GRID = _SHARED_DEM_DIR / "Test_010.tif"
_GDAL_NODATA = -9999.0
# Agreement required with gdaldem on interior pixels. The real difference is rounding only
# (gdaldem sums in float32): ~1e-3 degree, so a formula or pixel-size error shows at once.
_GDALDEM_TOL_DEG = 0.1

requires_gdaldem = pytest.mark.skipif(
    shutil.which("gdaldem") is None, reason="gdaldem not installed: apt-get install gdal-bin")


def _expected_plane_slope(a: float, b: float) -> float:
  return math.degrees(math.atan(math.hypot(a, b)))


def _projected_plane(shape, xres, yres, a, b):
  """z = a * easting + b * northing on a north-up grid with pixel (xres, yres) metres."""
  rows, cols = shape
  east = (np.arange(cols) + 0.5) * xres
  north = -(np.arange(rows) + 0.5) * yres  # rows run southwards
  return a * east[None, :] + b * north[:, None]


def _fractal_dem(shape, seed, beta=3.0, relief=1500.0):
  """Random power-law (fBm-like) terrain in metres: larger beta is smoother."""
  rng = np.random.default_rng(seed)
  ky = np.fft.fftfreq(shape[0])[:, None]
  kx = np.fft.rfftfreq(shape[1])[None, :]
  k = np.hypot(kx, ky)
  k[0, 0] = np.inf  # no mean term
  spectrum = k ** (-beta / 2) * (rng.normal(size=k.shape) + 1j * rng.normal(size=k.shape))
  field = np.fft.irfft2(spectrum, s=shape)
  field = (field - field.min()) / np.ptp(field)
  return 2000.0 + relief * field


# ---------------------------------------------------------------------------------------------
# 1. Analytic planes.


@pytest.mark.parametrize("xres,yres", [(10.0, 10.0), (10.0, 20.0), (30.0, 7.5)])
@pytest.mark.parametrize("a,b", [(0.3, 0.0), (0.0, -0.7), (0.25, 0.4), (-1.5, 2.0), (0.0, 0.0)])
def test_plane_projected_interior_exact_and_edges_as_documented(xres, yres, a, b):
  shape = (23, 31)
  dem = _projected_plane(shape, xres, yres, a, b)
  transform = affine.Affine(xres, 0.0, 500000.0, 0.0, -yres, 3700000.0)
  out = slope_degrees(dem, transform, "EPSG:32648")
  assert out.shape == shape and out.dtype == np.float32

  np.testing.assert_allclose(out[1:-1, 1:-1], _expected_plane_slope(a, b), rtol=0, atol=1e-4)
  # Documented edge behaviour: edge replication halves the gradient component across the
  # edge (one-sided difference over a two-pixel distance); at corners both are halved.
  np.testing.assert_allclose(out[1:-1, 0], _expected_plane_slope(a / 2, b), rtol=0, atol=1e-4)
  np.testing.assert_allclose(out[1:-1, -1], _expected_plane_slope(a / 2, b), rtol=0, atol=1e-4)
  np.testing.assert_allclose(out[0, 1:-1], _expected_plane_slope(a, b / 2), rtol=0, atol=1e-4)
  np.testing.assert_allclose(out[-1, 1:-1], _expected_plane_slope(a, b / 2), rtol=0, atol=1e-4)
  for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
    assert corner == pytest.approx(_expected_plane_slope(a / 2, b / 2), abs=1e-4)
  assert np.all(np.isfinite(out))
  assert np.all(out <= _expected_plane_slope(a, b) + 1e-4)  # the border is biased low only


@pytest.mark.parametrize("lat0", [0.0, 33.2, 65.0, -41.0])
@pytest.mark.parametrize("xres_deg,yres_deg,rows,cols", [
    (1 / 3600, 1 / 3600, 61, 47), (1e-4, 2e-4, 61, 47),
    # Coarse pixels on a small grid: a latitude taken off the row centre shows here.
    (0.01, 0.005, 11, 9)])
@pytest.mark.parametrize("a,b", [(0.0, 0.5), (0.4, 0.0), (0.3, -0.6)])
def test_plane_geographic(lat0, xres_deg, yres_deg, rows, cols, a, b):
  # The ground plane z = a * east + b * north, with (east, north) in metres from a local
  # transverse Mercator centred on the grid (scale 1): conformal, and within 1e-6 of true
  # ground distances over these grids of at most ~5 km. PROJ does the geodesy, independently
  # of the ellipsoid formulas in slope.py.
  lon0 = 103.9
  top = lat0 + rows / 2 * yres_deg
  left = lon0 - cols / 2 * xres_deg
  transform = affine.Affine(xres_deg, 0.0, left, 0.0, -yres_deg, top)
  col_c, row_c = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
  lon, lat = transform @ (col_c.ravel(), row_c.ravel())
  local_tm = CRS.from_proj4(
      f"+proj=tmerc +lat_0={lat0} +lon_0={lon0} +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m")
  east, north = rasterio.warp.transform(CRS.from_epsg(4326), local_tm, lon, lat)
  dem = (a * np.asarray(east) + b * np.asarray(north)).reshape(rows, cols)

  out = slope_degrees(dem, transform, CRS.from_epsg(4326))
  np.testing.assert_allclose(out[1:-1, 1:-1], _expected_plane_slope(a, b), rtol=0, atol=1e-4)
  assert np.all(np.isfinite(out))
  # The same array read as metres is wildly different: the conversion is really applied.
  naive = slope_degrees(dem, transform, None)
  assert np.all(np.abs(naive[1:-1, 1:-1] - out[1:-1, 1:-1]) > 1.0)


# ---------------------------------------------------------------------------------------------
# 2. Independent reference.


def _reference_horn_slope(dem, xres, yres):
  """Slow per-pixel Horn slope, neighbours clamped to the grid (= edge replication)."""
  rows, cols = dem.shape
  kernel_x = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
  kernel_y = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
  out = np.empty((rows, cols), np.float64)
  for r in range(rows):
    for c in range(cols):
      gx = gy = 0.0
      for i in range(3):
        for j in range(3):
          rr = min(max(r + i - 1, 0), rows - 1)
          cc = min(max(c + j - 1, 0), cols - 1)
          value = float(dem[rr, cc])
          gx += kernel_x[i][j] * value
          gy += kernel_y[i][j] * value
      gradient = math.sqrt((gx / (8 * xres)) ** 2 + (gy / (8 * yres)) ** 2)
      out[r, c] = math.atan(gradient) * 180.0 / math.pi
  return out


@pytest.mark.parametrize("xres,yres", [(30.0, 30.0), (10.0, 20.0)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
def test_matches_independent_reference(xres, yres, dtype):
  dem = _fractal_dem((48, 37), seed=7, beta=2.5).astype(dtype)
  transform = affine.Affine(xres, 0.0, 0.0, 0.0, -yres, 0.0)
  out = slope_degrees(dem, transform, None)
  expected = _reference_horn_slope(dem, xres, yres)
  # 1e-6 degree, plus the float32 rounding of the result (half an ulp, 2**-24 relative).
  np.testing.assert_allclose(out, expected, rtol=2.0**-24, atol=1e-6)
  assert np.ptp(expected) > 10.0  # the terrain is not trivially flat


# ---------------------------------------------------------------------------------------------
# 3. gdaldem.


def _gdaldem_slope(src: Path, dst: Path) -> np.ndarray:
  """Runs `gdaldem slope` (Horn, scale 1, degrees) and returns it with nodata as NaN."""
  subprocess.run(["gdaldem", "slope", "-q", str(src), str(dst)], check=True,
                 capture_output=True, text=True)
  with rasterio.open(dst) as ds:
    out = ds.read(1).astype(np.float64)
    nodata = ds.nodata
  if nodata is not None:
    out[out == nodata] = np.nan
  return out


def _write_dem(path: Path, dem: np.ndarray, transform, crs, nodata=None) -> None:
  profile = dict(driver="GTiff", width=dem.shape[1], height=dem.shape[0], count=1,
                 dtype=dem.dtype, crs=crs, transform=transform, nodata=nodata)
  with rasterio.open(path, "w", **profile) as ds:
    ds.write(dem, 1)


def _diff_stats(ours, gdal):
  diff = np.abs(ours.astype(np.float64) - gdal)
  return float(diff.max()), float(diff.mean())


@requires_gdaldem
@pytest.mark.parametrize("xres,yres", [(30.0, 30.0), (10.0, 20.0)])
def test_gdaldem_synthetic(tmp_path, xres, yres):
  dem = _fractal_dem((200, 170), seed=3, beta=4.0, relief=2500.0).astype(np.float32)
  transform = affine.Affine(xres, 0.0, 394000.0, 0.0, -yres, 3690000.0)
  _write_dem(tmp_path / "in.tif", dem, transform, "EPSG:32648")
  gdal = _gdaldem_slope(tmp_path / "in.tif", tmp_path / "out.tif")
  ours = slope_degrees(dem, transform, "EPSG:32648")

  interior_ours, interior_gdal = ours[1:-1, 1:-1], gdal[1:-1, 1:-1]
  assert np.all(np.isfinite(interior_gdal)), "gdaldem left nodata inside a nodata-free DEM"
  max_diff, mean_diff = _diff_stats(interior_ours, interior_gdal)
  assert max_diff < _GDALDEM_TOL_DEG, f"vs gdaldem: max {max_diff:.2e} mean {mean_diff:.2e} deg"
  assert np.ptp(interior_gdal) > 20.0  # a test on flat ground would prove little


def _require_real(path: Path) -> None:
  if not path.exists():
    pytest.skip(f"real Jiuzhaigou data not found: {path}")


@requires_gdaldem
def test_gdaldem_real_dem_30m(tmp_path):
  _require_real(_REAL_DEM)
  with rasterio.open(_REAL_DEM) as ds:
    dem, transform, crs = ds.read(1), ds.transform, ds.crs
  assert dem.dtype == np.int16 and dem.shape == (779, 453)
  gdal = _gdaldem_slope(_REAL_DEM, tmp_path / "slope.tif")
  ours = slope_degrees(dem, transform, crs)
  assert ours.shape == dem.shape and np.all(np.isfinite(ours))

  interior_ours, interior_gdal = ours[1:-1, 1:-1], gdal[1:-1, 1:-1]
  assert np.all(np.isfinite(interior_gdal))
  max_diff, mean_diff = _diff_stats(interior_ours, interior_gdal)
  # The file fills a third of its area (outside the footprint) with 0 m rather than nodata;
  # report the terrain-only numbers too, since the fill cliffs reach ~89 degrees.
  terrain = np.lib.stride_tricks.sliding_window_view(dem, (3, 3)).min(axis=(-1, -2)) > 0
  terrain_max, terrain_mean = _diff_stats(interior_ours[terrain], interior_gdal[terrain])
  message = (f"DEM_030 vs gdaldem, interior: max {max_diff:.2e} mean {mean_diff:.2e} deg; "
             f"terrain only: max {terrain_max:.2e} mean {terrain_mean:.2e} deg")
  print(message)
  assert max_diff < _GDALDEM_TOL_DEG, message


@requires_gdaldem
def test_gdaldem_real_dem_reprojected_10m(tmp_path):
  _require_real(_REAL_DEM)
  _require_real(_REAL_10M_GRID)
  with rasterio.open(_REAL_10M_GRID) as grid:
    dst_transform, dst_crs, dst_shape = grid.transform, grid.crs, grid.shape
  assert dst_shape == (2336, 1360)
  dem10 = np.full(dst_shape, np.nan, np.float32)
  with rasterio.open(_REAL_DEM) as ds:
    rasterio.warp.reproject(
        source=ds.read(1).astype(np.float32), destination=dem10, src_transform=ds.transform,
        src_crs=ds.crs, src_nodata=ds.nodata, dst_transform=dst_transform, dst_crs=dst_crs,
        dst_nodata=np.nan, resampling=Resampling.bilinear)
  # The 10 m grid reaches ~10 m past the DEM on the east and south: those pixels are NaN.
  # gdaldem sees them as declared nodata; slope_degrees sees the NaN.
  _write_dem(tmp_path / "dem10.tif", np.where(np.isnan(dem10), _GDAL_NODATA, dem10)
             .astype(np.float32), dst_transform, dst_crs, nodata=_GDAL_NODATA)
  gdal = _gdaldem_slope(tmp_path / "dem10.tif", tmp_path / "slope10.tif")
  ours = slope_degrees(dem10, dst_transform, dst_crs)

  interior_ours, interior_gdal = ours[1:-1, 1:-1], gdal[1:-1, 1:-1]
  # Documented NaN behaviour: NaN spreads to exactly the 3x3 neighbourhood, where gdaldem
  # writes nodata.
  np.testing.assert_array_equal(np.isnan(interior_ours), np.isnan(interior_gdal))
  valid = np.isfinite(interior_gdal)
  assert valid.mean() > 0.99, f"only {valid.mean():.1%} of the interior is comparable"
  max_diff, mean_diff = _diff_stats(interior_ours[valid], interior_gdal[valid])
  message = (f"10 m reprojected DEM vs gdaldem, interior: max {max_diff:.2e} "
             f"mean {mean_diff:.2e} deg")
  print(message)
  assert max_diff < _GDALDEM_TOL_DEG, message


# ---------------------------------------------------------------------------------------------
# 4. Edges, shapes, dtypes, errors.


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 2), (3, 5), (64, 33)])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_finite_input_gives_finite_float32_of_same_shape(shape, dtype):
  dem = _fractal_dem(shape, seed=11).astype(dtype) if min(shape) > 1 else np.full(shape, 5, dtype)
  out = slope_degrees(dem, affine.Affine(10.0, 0.0, 0.0, 0.0, -10.0, 0.0), None)
  assert out.shape == shape
  assert out.dtype == np.float32
  assert np.all(np.isfinite(out))
  assert np.all((out >= 0.0) & (out <= 90.0))


def test_constant_dem_is_flat_everywhere():
  out = slope_degrees(np.full((5, 6), 1234.5), affine.Affine(30.0, 0, 0, 0, -30.0, 0), None)
  np.testing.assert_array_equal(out, 0.0)


def test_empty_dem_gives_empty_output():
  out = slope_degrees(np.zeros((0, 4)), affine.Affine(30.0, 0, 0, 0, -30.0, 0), None)
  assert out.shape == (0, 4) and out.dtype == np.float32


@pytest.mark.parametrize("nan_at,expected_nan_block", [
    ((5, 6), (slice(4, 7), slice(5, 8))),   # interior: the 3x3 neighbourhood
    ((0, 0), (slice(0, 2), slice(0, 2))),   # corner: the neighbourhood clipped to the grid
    ((0, 4), (slice(0, 2), slice(3, 6))),   # edge
])
def test_nan_spreads_to_its_3x3_neighbourhood_only(nan_at, expected_nan_block):
  dem = _fractal_dem((10, 12), seed=5)
  dem[nan_at] = np.nan
  out = slope_degrees(dem, affine.Affine(30.0, 0, 0, 0, -30.0, 0), None)
  expected = np.zeros(dem.shape, bool)
  expected[expected_nan_block] = True
  np.testing.assert_array_equal(np.isnan(out), expected)


@pytest.mark.parametrize("transform", [
    (affine.Affine.translation(500000, 3700000) @ affine.Affine.rotation(10)
     @ affine.Affine.scale(30, -30)),
    affine.Affine(30.0, 0.5, 0.0, 0.0, -30.0, 0.0),   # shear in x
    affine.Affine(30.0, 0.0, 0.0, -0.5, -30.0, 0.0),  # shear in y
])
def test_rotated_or_sheared_transform_raises(transform):
  with pytest.raises(ValueError, match="rotated"):
    slope_degrees(np.zeros((4, 4)), transform, "EPSG:32648")


def test_bad_arguments_raise():
  transform = affine.Affine(30.0, 0, 0, 0, -30.0, 0)
  with pytest.raises(ValueError, match="2-D"):
    slope_degrees(np.zeros((2, 4, 4)), transform, None)
  with pytest.raises(ValueError, match="pixel size"):
    slope_degrees(np.zeros((4, 4)), affine.Affine(0.0, 0, 0, 0, -30.0, 0), None)
  with pytest.raises(TypeError, match="Affine"):
    slope_degrees(np.zeros((4, 4)), (0.0, 30.0, 0.0, 0.0, 0.0, -30.0), None)
  with pytest.raises(ValueError, match="latitude"):  # rows beyond the north pole
    slope_degrees(np.zeros((4, 4)), affine.Affine(0.1, 0, 100, 0, -0.1, 90.2), "EPSG:4326")


def test_crs_forms_agree():
  dem = _fractal_dem((20, 20), seed=2)
  transform = affine.Affine(1e-4, 0, 103.9, 0, -1e-4, 33.2)
  by_string = slope_degrees(dem, transform, "EPSG:4326")
  np.testing.assert_array_equal(by_string, slope_degrees(dem, transform, CRS.from_epsg(4326)))
  projected = affine.Affine(30.0, 0, 394000, 0, -30.0, 3690000)
  np.testing.assert_array_equal(slope_degrees(dem, projected, None),
                                slope_degrees(dem, projected, "EPSG:32648"))


# ---------------------------------------------------------------------------------------------
# 5. The same terrain on a geographic and on a projected grid.


def _terrain_utm(east, north):
  """Smooth analytic terrain over UTM 48N metres (Jiuzhaigou), slopes up to ~50 degrees."""
  x = (east - 400000.0) / 1500.0
  y = (north - 3680000.0) / 1100.0
  return 3000.0 + 400.0 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y) + 0.2 * (east - 400000.0)


def _terrain_utm_slope(east, north):
  x = (east - 400000.0) / 1500.0
  y = (north - 3680000.0) / 1100.0
  dzde = 400.0 * 2 * np.pi / 1500.0 * np.cos(2 * np.pi * x) * np.cos(2 * np.pi * y) + 0.2
  dzdn = -400.0 * 2 * np.pi / 1100.0 * np.sin(2 * np.pi * x) * np.sin(2 * np.pi * y)
  return np.degrees(np.arctan(np.hypot(dzde, dzdn)))


def test_same_terrain_geographic_and_projected_grids_agree():
  utm = CRS.from_epsg(32648)
  # Projected: 30 m UTM grid over ~6 x 6 km.
  proj_transform = affine.Affine(30.0, 0.0, 397000.0, 0.0, -30.0, 3683000.0)
  col_c, row_c = np.meshgrid(np.arange(200) + 0.5, np.arange(200) + 0.5)
  east, north = proj_transform @ (col_c, row_c)
  proj_slope = slope_degrees(_terrain_utm(east, north), proj_transform, utm)

  # Geographic: 1 arc-second grid over the same area, elevations sampled at each pixel
  # centre's UTM position.
  left, bottom, right, top = rasterio.warp.transform_bounds(
      utm, "EPSG:4326", 397000.0, 3677000.0, 403000.0, 3683000.0)
  step = 1 / 3600
  cols, rows = int((right - left) / step), int((top - bottom) / step)
  geo_transform = affine.Affine(step, 0.0, left, 0.0, -step, top)
  col_c, row_c = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
  lon, lat = geo_transform @ (col_c.ravel(), row_c.ravel())
  geo_east, geo_north = (np.asarray(v).reshape(rows, cols)
                         for v in rasterio.warp.transform("EPSG:4326", utm, lon, lat))
  geo_slope = slope_degrees(_terrain_utm(geo_east, geo_north), geo_transform, "EPSG:4326")

  # Compared through the analytic slope at each grid's own pixel centres (UTM's 0.9997 scale
  # factor here changes slopes by < 0.02 degree), not by resampling one grid onto the other:
  # slope is a cone (|gradient|) around peaks, pits and saddles, and interpolating it there
  # is off by degrees whatever the slope algorithm.
  proj_err = np.abs(proj_slope - _terrain_utm_slope(east, north))[1:-1, 1:-1]
  geo_err = np.abs(geo_slope - _terrain_utm_slope(geo_east, geo_north))[1:-1, 1:-1]
  assert np.ptp(geo_slope) > 40.0  # steep and varied, so a wrong metre scale shows
  assert proj_err.max() < 0.5, f"projected: max error {proj_err.max():.3f} deg"
  assert geo_err.max() < 0.5, f"geographic: max error {geo_err.max():.3f} deg"
  # Same terrain, same method: the error distributions match too.
  assert abs(float(proj_err.mean()) - float(geo_err.mean())) < 0.05, (proj_err.mean(),
                                                                       geo_err.mean())
