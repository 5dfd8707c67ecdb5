"""Built-in synthetic demo scenes: a seeded generator of raw-input folders imitating the paper's sites.

Real Sentinel-2 scenes, DEMs and inventories cannot be downloaded here, so the product ships this
generator. It writes, per site, exactly what a user would put in `<manual_dir>/<site>/` (a 4-band
Sentinel-2 GeoTIFF in UTM, a geographic 1 arc-second DEM, a landslide inventory in EPSG:4326, a cloud
mask and a manifest), so the demo goes through the same reader, reprojection and rasterisation as real
data; nothing downstream knows it is synthetic except the manifest's `source`.

The scenes are built to make the task non-trivial and to make transfer between sites a real question:
  * fractal terrain with site-specific relief (Taiwan rugged, Jiuzhaigou a deep steep valley, Iburi
    low rolling hills with flat-bottomed valleys);
  * land cover with Sentinel-2-typical spectra, spatially correlated and per-pixel noise and
    topographic illumination;
  * landslide scars elongated downslope from seeds on steep ground, with site-specific density and size;
  * confounders that look like landslides but are not: bare fields, river gravel beds, roads,
    settlements, alpine rock, old revegetating scars, clouds, shadows and thin haze.

Everything is a deterministic function of (site, scale, seed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Iterable

import affine
import numpy as np
import pyogrio.raw
import rasterio
import rasterio.features
import rasterio.transform
import rasterio.warp
import scipy.fft
import scipy.ndimage
import shapely
import shapely.geometry
from rasterio.enums import Resampling

from landslide_jax import constants, faults, files
from landslide_jax.errors import InputError

# Bump when the generated content changes, so cached demo folders from an older generator are rebuilt.
GENERATOR_VERSION = 1

S2_FILE = "s2.tif"
DEM_FILE = "dem.tif"
INVENTORY_FILE = "inventory.gpkg"
CLOUD_MASK_FILE = "cloud_mask.tif"
MANIFEST_FILE = "manifest.json"
DEMO_FILES = (S2_FILE, DEM_FILE, INVENTORY_FILE, CLOUD_MASK_FILE, MANIFEST_FILE)

_PIXEL_M = 10.0                 # Sentinel-2 10 m bands.
_DEM_RES_DEG = 1.0 / 3600.0     # ALOS AW3D30 posting: 1 arc-second.
_DEM_MARGIN_PX = 8              # DEM margin around the scene, in DEM pixels (the reader needs >= 5).
_DEM_NODATA = -9999.0           # AW3D30's nodata value; the demo DEM has no nodata pixels.
_MIN_SIDE = 64

# Land-cover classes of the generated scene (DemoArrays.land_cover codes are indices into this).
LAND_COVER = ("forest", "grass", "bare_field", "green_field", "water", "gravel", "settlement", "road",
              "rock", "old_scar", "landslide")
_LC = {name: code for code, name in enumerate(LAND_COVER)}
VEGETATED = ("forest", "grass", "green_field")

# Mean surface reflectance x 10000 (B2, B3, B4, B8) per class, typical of Sentinel-2 L2A over these
# covers. Landslides deliberately overlap bare fields, gravel, rock and old scars: colour alone must not
# separate them, which is what makes slope and context matter.
_SPECTRA = np.array([
    [230, 420, 260, 2900],     # forest
    [380, 680, 560, 3100],     # grass / shrub / meadow
    [850, 1150, 1450, 2100],   # bare (ploughed or harvested) field
    [420, 760, 560, 3300],     # green field (crops, paddy)
    [650, 800, 650, 300],      # water (turbid)
    [1250, 1450, 1600, 1900],  # river gravel bed
    [1000, 1100, 1200, 1700],  # settlement (mixed roofs, asphalt, gardens)
    [1050, 1150, 1250, 1500],  # road
    [1300, 1450, 1600, 1850],  # bare rock (alpine)
    [650, 880, 950, 2400],     # old, partly revegetated scar (not in the inventory)
    [1150, 1400, 1650, 2150],  # fresh landslide scar (soil, regolith, fresh rock)
], dtype=np.float32)
_CLOUD_DN = np.array([6200, 6300, 6500, 6900], dtype=np.float32)
_HAZE_DN = np.array([450, 350, 250, 120], dtype=np.float32)  # haze scatters blue most.


@dataclasses.dataclass(frozen=True)
class _Style:
  """Generation parameters of one site (what makes the three sites differ)."""
  # Terrain.
  median_slope_deg: float      # Median slope of the hill terrain before valleys are carved.
  mid_elev_m: float            # Median elevation of the hill terrain.
  river_elev_m: tuple[float, float]  # Main river elevation at its two ends.
  max_elev_m: float            # Peaks are compressed softly towards this.
  massif_std_m: float          # Regional relief (std of the long-wavelength massif).
  massif_corner_m: float
  corner_m: float              # Longest wavelength of the hills with full power (spectrum corner).
  hill_beta: float             # Spectral exponent of the hills: higher = smoother, longer hillslopes.
  valley_corner_m: float       # Longest wavelength of the valley-and-ridge network.
  valley_weight: float         # Weight of that network relative to the fractal hills.
  river_angle_deg: tuple[float, float]  # Range of the main valley's direction (0 = east-west).
  wall_deg: float              # Main valley side slope.
  floor_half_m: float          # Half-width of the main valley's flat floor.
  gravel_half_m: float         # Half-width of the river's gravel bed.
  water_half_m: float
  lakes: int                   # Dammed lakes along the river (Jiuzhaigou).
  fill_quantile: float         # Lowlands below this elevation quantile are filled flat (alluvium).
  # Land cover.
  treeline_m: float
  rockline_m: float
  field_max_slope_deg: float
  field_share: float           # Share of flat land that is cultivated.
  settlement_share: float      # Share of flat land that is built up.
  grass_share: float           # Share of the hills under grass/shrub below the treeline.
  parcel_m: tuple[float, float]
  # Landslides.
  landslide_share: float       # Target share of the scene under event landslides.
  area_median_m2: float
  area_sigma: float
  area_max_m2: float
  aspect_ratio: tuple[float, float]  # Length / width.
  trigger_slope_deg: float     # Landslide seeds concentrate above this slope.
  stop_slope_deg: float        # Runout stops on ground flatter than this.
  cluster: float               # Strength of the spatial clustering of landslides.
  old_scar_ratio: float        # Area of old scars (not inventoried) per area of event landslides.
  # Atmosphere and illumination.
  cloud_share: float           # Target share masked as cloud or shadow.
  haze: float                  # Strength of thin haze (never masked).
  sun_azimuth_deg: float
  sun_elevation_deg: float
  swath_edge_share: float      # Share of the scene beyond the orbit swath edge (S2 nodata = 0).


_STYLES: dict[str, _Style] = {
    # Typhoon-triggered slides in rugged, forested high-relief terrain with wide braided gravel rivers.
    "taiwan": _Style(
        median_slope_deg=32.0, mid_elev_m=1350.0, river_elev_m=(300.0, 420.0), max_elev_m=2500.0,
        massif_std_m=450.0, massif_corner_m=20000.0, corner_m=3000.0, hill_beta=4.6,
        valley_corner_m=2400.0, valley_weight=1.0, river_angle_deg=(-20.0, 20.0),
        wall_deg=28.0, floor_half_m=260.0, gravel_half_m=130.0, water_half_m=14.0, lakes=0,
        fill_quantile=0.0,
        treeline_m=1e9, rockline_m=1e9, field_max_slope_deg=5.0, field_share=0.5,
        settlement_share=0.2, grass_share=0.12, parcel_m=(50.0, 110.0),
        landslide_share=0.05, area_median_m2=5000.0, area_sigma=1.0, area_max_m2=2.0e5,
        aspect_ratio=(2.5, 5.0), trigger_slope_deg=32.0, stop_slope_deg=14.0, cluster=0.6,
        old_scar_ratio=0.10,
        cloud_share=0.04, haze=0.6, sun_azimuth_deg=115.0, sun_elevation_deg=62.0,
        swath_edge_share=0.0),
    # Earthquake-triggered rock slides and falls on the steep walls of a deep glacial-fluvial valley,
    # with lakes on the valley floor, forest below the treeline, meadow and rock above.
    "china": _Style(
        median_slope_deg=36.0, mid_elev_m=3900.0, river_elev_m=(2000.0, 2500.0), max_elev_m=4600.0,
        massif_std_m=300.0, massif_corner_m=12000.0, corner_m=2500.0, hill_beta=4.6,
        valley_corner_m=2000.0, valley_weight=1.0, river_angle_deg=(70.0, 110.0),
        wall_deg=32.0, floor_half_m=70.0, gravel_half_m=25.0, water_half_m=8.0, lakes=3,
        fill_quantile=0.0,
        treeline_m=3650.0, rockline_m=4150.0, field_max_slope_deg=0.0, field_share=0.0,
        settlement_share=0.15, grass_share=0.15, parcel_m=(40.0, 80.0),
        landslide_share=0.025, area_median_m2=1200.0, area_sigma=0.8, area_max_m2=6.0e4,
        aspect_ratio=(1.5, 3.0), trigger_slope_deg=40.0, stop_slope_deg=25.0, cluster=0.8,
        old_scar_ratio=0.15,
        cloud_share=0.02, haze=0.3, sun_azimuth_deg=130.0, sun_elevation_deg=55.0,
        swath_edge_share=0.0),
    # Earthquake-triggered dense shallow slides in pumice soils on low rolling hills, with wide flat
    # valley floors under fields and villages.
    "japan": _Style(
        median_slope_deg=19.0, mid_elev_m=190.0, river_elev_m=(40.0, 70.0), max_elev_m=400.0,
        massif_std_m=60.0, massif_corner_m=10000.0, corner_m=2000.0, hill_beta=4.4,
        valley_corner_m=1200.0, valley_weight=1.0, river_angle_deg=(-90.0, 90.0),
        wall_deg=14.0, floor_half_m=350.0, gravel_half_m=18.0, water_half_m=10.0, lakes=0,
        fill_quantile=0.22,
        treeline_m=1e9, rockline_m=1e9, field_max_slope_deg=6.0, field_share=0.8,
        settlement_share=0.1, grass_share=0.15, parcel_m=(60.0, 140.0),
        landslide_share=0.08, area_median_m2=2200.0, area_sigma=0.6, area_max_m2=5.0e4,
        aspect_ratio=(1.8, 3.5), trigger_slope_deg=22.0, stop_slope_deg=9.0, cluster=1.2,
        old_scar_ratio=0.05,
        cloud_share=0.03, haze=0.4, sun_azimuth_deg=150.0, sun_elevation_deg=45.0,
        swath_edge_share=0.02),
}


@dataclasses.dataclass(frozen=True)
class DemoArrays:
  """Everything the generator makes for one site, before it is written to files.

  Attributes:
    s2: (4, H, W) uint16 DNs in PAPER_BANDS order; 0 = nodata (beyond the swath edge).
    dem_10m: (H, W) float32 elevation in metres on the scene grid (the truth the DEM file resamples).
    landslide: (H, W) bool, event landslides (what the inventory polygons rasterise to).
    cloud_mask: (H, W) uint8, 1 = thick cloud or cloud shadow.
    land_cover: (H, W) uint8 codes into LAND_COVER.
    transform: scene grid transform (10 m, north-up).
    crs: scene CRS string, "EPSG:<utm zone>".
    dem: (h, w) float32 DEM in EPSG:4326 at 1 arc-second.
    dem_transform: transform of `dem`.
  """
  s2: np.ndarray
  dem_10m: np.ndarray
  landslide: np.ndarray
  cloud_mask: np.ndarray
  land_cover: np.ndarray
  transform: affine.Affine
  crs: str
  dem: np.ndarray
  dem_transform: affine.Affine


def _check_site(site: str) -> constants.Site:
  if site not in constants.SITES:
    raise InputError(None, f"unknown demo site {site!r}",
                     f"use one of {', '.join(constants.SITE_NAMES)}")
  return constants.SITES[site]


def _check_scale(scale: float) -> float:
  if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
    raise InputError(None, f"demo scale must be a positive number, got {scale!r}",
                     "pass a scale such as 1.0 (full size) or 0.1")
  return float(scale)


def demo_shape(site: str, scale: float = 1.0) -> tuple[int, int]:
  """Returns the (rows, cols) of a site's demo scene: its demo_shape with the area scaled by `scale`.

  Each side is scaled by sqrt(scale), rounded, and kept at least 64 pixels.
  """
  rows, cols = _check_site(site).demo_shape
  factor = math.sqrt(_check_scale(scale))
  return max(_MIN_SIDE, round(rows * factor)), max(_MIN_SIDE, round(cols * factor))


def _rng(site: str, scale: float, seed: int, stream: str) -> np.random.Generator:
  """An independent generator per (site, scale, seed, stream).

  Separate streams keep e.g. the clouds unchanged when the landslide code draws more numbers.
  """
  key = f"{site}|{scale!r}|{int(seed)}|{stream}".encode()
  return np.random.default_rng([zlib.crc32(key), int(seed) & 0xFFFFFFFF, GENERATOR_VERSION])


def _fractal(rng: np.random.Generator, shape: tuple[int, int], beta: float, corner_m: float,
             rolloff_m: float = 0.0, absolute: bool = False) -> np.ndarray:
  """Gaussian random field with a power-law spectrum P(k) ~ (k^2 + k0^2)^(-beta/2).

  Spectral synthesis on a fast FFT size, cropped to `shape`. `corner_m` (1/k0) caps the power of long
  wavelengths; `rolloff_m` damps wavelengths near the pixel size (real terrain and covers are smooth
  over a few pixels). The field has unit std, or with `absolute` the std that a crop of `shape` has of a
  unit-std field on an unbounded plane: a small scene then holds less of a long-wavelength massif's
  relief, as a small crop of real terrain would, instead of squeezing the full relief into it.
  """
  rows, cols = shape
  fr, fc = scipy.fft.next_fast_len(rows, real=True), scipy.fft.next_fast_len(cols, real=True)
  ky = np.fft.fftfreq(fr, d=_PIXEL_M).astype(np.float32)[:, None]
  kx = np.fft.rfftfreq(fc, d=_PIXEL_M).astype(np.float32)[None, :]
  k2 = ky * ky + kx * kx
  k0 = 1.0 / corner_m
  amp = (k2 + np.float32(k0 * k0)) ** np.float32(-beta / 4.0)
  if rolloff_m:
    amp *= np.exp(-k2 * np.float32(rolloff_m * rolloff_m))
  amp[0, 0] = 0.0
  spectrum = rng.standard_normal((2,) + amp.shape, dtype=np.float32)
  spectrum = (spectrum[0] + 1j * spectrum[1]).astype(np.complex64) * amp
  field = scipy.fft.irfft2(spectrum, s=(fr, fc), workers=-1)[:rows, :cols]
  field -= field.mean()
  field /= max(float(field.std()), 1e-12)
  if absolute:
    # Parseval: the grid's share of the plane's variance, integral of (k^2 + k0^2)^(-beta/2) d^2k =
    # pi k0^(2 - beta) / (beta/2 - 1). The rfft half-plane counts twice.
    cell = 1.0 / (fr * fc * _PIXEL_M * _PIXEL_M)
    power = cell * (2.0 * float(np.sum(amp.astype(np.float64) ** 2)) - float(np.sum(amp[:, 0] ** 2.0)))
    plane = math.pi * k0 ** (2.0 - beta) / (beta / 2.0 - 1.0)
    field *= np.float32(math.sqrt(min(power / plane, 1.0)))
  return field.astype(np.float32, copy=False)


def _soft_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
  """Smooth minimum (log-sum-exp with width k): joins carved valley walls to the hills without a kink."""
  m = np.minimum(a, b)
  return m - k * np.log1p(np.exp(-np.abs(a - b) / k))


def _soft_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
  return -_soft_min(-a, -b, k)


def _slope_deg(elev: np.ndarray) -> np.ndarray:
  gy, gx = np.gradient(elev, _PIXEL_M)
  return np.degrees(np.arctan(np.hypot(gx, gy))).astype(np.float32)


def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
  """Deterministic uniform [0, 1) value per integer cell (ix, iy): per-parcel attributes, vectorised."""
  with np.errstate(over="ignore"):
    h = ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(salt)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
  return ((h >> np.uint64(11)).astype(np.float64) / float(1 << 53)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Grids:
  """The scene grid, the geographic DEM grid and the padded 10 m grid that covers both."""
  shape: tuple[int, int]
  transform: affine.Affine
  crs: str
  pad: tuple[int, int, int, int]  # top, bottom, left, right (10 m pixels)
  dem_shape: tuple[int, int]
  dem_transform: affine.Affine

  @property
  def padded_shape(self) -> tuple[int, int]:
    top, bottom, left, right = self.pad
    return self.shape[0] + top + bottom, self.shape[1] + left + right

  @property
  def padded_transform(self) -> affine.Affine:
    return self.transform @ affine.Affine.translation(-self.pad[2], -self.pad[0])

  def crop(self, arr: np.ndarray) -> np.ndarray:
    top, _, left, _ = self.pad
    return arr[..., top:top + self.shape[0], left:left + self.shape[1]]


def _make_grids(site: constants.Site, shape: tuple[int, int]) -> _Grids:
  crs = f"EPSG:{site.epsg}"
  rows, cols = shape
  (cx,), (cy,) = rasterio.warp.transform("EPSG:4326", crs, [site.lon], [site.lat])
  # Snap the origin to whole pixels, as Sentinel-2 tiles are.
  west = round((cx - cols * _PIXEL_M / 2) / _PIXEL_M) * _PIXEL_M
  north = round((cy + rows * _PIXEL_M / 2) / _PIXEL_M) * _PIXEL_M
  transform = rasterio.transform.from_origin(west, north, _PIXEL_M, _PIXEL_M)
  left, bottom, right, top = rasterio.transform.array_bounds(rows, cols, transform)
  # DEM grid: the scene's geographic footprint plus a margin, snapped outwards to whole arc-seconds
  # like an AW3D30 tile.
  lon0, lat0, lon1, lat1 = rasterio.warp.transform_bounds(crs, "EPSG:4326", left, bottom, right, top,
                                                          densify_pts=51)
  margin = _DEM_MARGIN_PX * _DEM_RES_DEG
  g_west = math.floor((lon0 - margin) / _DEM_RES_DEG) * _DEM_RES_DEG
  g_east = math.ceil((lon1 + margin) / _DEM_RES_DEG) * _DEM_RES_DEG
  g_south = math.floor((lat0 - margin) / _DEM_RES_DEG) * _DEM_RES_DEG
  g_north = math.ceil((lat1 + margin) / _DEM_RES_DEG) * _DEM_RES_DEG
  dem_shape = (round((g_north - g_south) / _DEM_RES_DEG), round((g_east - g_west) / _DEM_RES_DEG))
  dem_transform = rasterio.transform.from_origin(g_west, g_north, _DEM_RES_DEG, _DEM_RES_DEG)
  # The 10 m terrain must cover the whole (rotated) geographic box, so the DEM can be resampled from it.
  u_left, u_bottom, u_right, u_top = rasterio.warp.transform_bounds(
      "EPSG:4326", crs, g_west, g_south, g_east, g_north, densify_pts=51)
  extra = 3  # pixels, for the averaging kernel at the box's edge.
  pad = (max(0, math.ceil((u_top - top) / _PIXEL_M)) + extra,
         max(0, math.ceil((bottom - u_bottom) / _PIXEL_M)) + extra,
         max(0, math.ceil((left - u_left) / _PIXEL_M)) + extra,
         max(0, math.ceil((u_right - right) / _PIXEL_M)) + extra)
  return _Grids(shape, transform, crs, pad, dem_shape, dem_transform)


@dataclasses.dataclass(frozen=True)
class _River:
  """The main river: along-valley coordinate u and distance from the meandering centreline, metres."""
  u: np.ndarray
  dist: np.ndarray
  side: np.ndarray   # Signed cross-valley offset (distance with a sign), for braided threads.
  length_m: float


def _main_river(rng: np.random.Generator, shape: tuple[int, int], style: _Style) -> _River:
  rows, cols = shape
  angle = math.radians(rng.uniform(*style.river_angle_deg))
  y = ((np.arange(rows, dtype=np.float32) - rows / 2) * _PIXEL_M)[:, None]
  x = ((np.arange(cols, dtype=np.float32) - cols / 2) * _PIXEL_M)[None, :]
  # Image rows run south, so a positive angle turns the valley counter-clockwise on the map.
  u = x * math.cos(angle) - y * math.sin(angle)
  v = x * math.sin(angle) + y * math.cos(angle)
  extent = abs(cols * math.sin(angle)) + abs(rows * math.cos(angle))  # cross-valley extent, pixels
  offset = rng.uniform(-0.15, 0.15) * extent * _PIXEL_M
  # Two superposed meanders: a long bend and a shorter wiggle.
  waves = [(rng.uniform(3000, 7000), rng.uniform(150, 500), rng.uniform(0, 2 * math.pi)),
           (rng.uniform(700, 1500), rng.uniform(10, 40), rng.uniform(0, 2 * math.pi))]
  across = v - np.float32(offset)
  for wavelength, amplitude, phase in waves:
    across -= np.float32(amplitude) * np.sin(2 * np.pi * u / np.float32(wavelength) + np.float32(phase))
  # Exact distance to the centreline (where `across` changes sign): an along-normal approximation
  # bands the valley walls far from a bend.
  right = across >= 0
  line = np.zeros(shape, bool)
  line[:-1] |= right[:-1] != right[1:]
  line[:, :-1] |= right[:, :-1] != right[:, 1:]
  if line.any():
    dist = scipy.ndimage.distance_transform_edt(~line).astype(np.float32) * np.float32(_PIXEL_M)
  else:  # The meander left a small grid: the river is far away, the approximation will do.
    dist = np.abs(across)
  side = np.where(right, dist, -dist)
  length = abs(cols * math.cos(angle)) + abs(rows * math.sin(angle))
  return _River(u=u, dist=dist, side=side, length_m=float(length * _PIXEL_M))


def _terrain(rng: np.random.Generator, shape: tuple[int, int], style: _Style,
             river: _River) -> np.ndarray:
  """Elevation (m) on the padded grid.

  A regional massif, fractal hills creased by a network of V-shaped valleys and sharp ridges, alluvial
  flats in the lowest ground and the carved main valley.
  """
  hills = np.float32(0.5) * _fractal(rng, shape, beta=style.hill_beta, corner_m=style.corner_m,
                                     rolloff_m=30.0)
  # Octaves of |g| for smooth, narrow-band g: |g| has sharp V-shaped minima along g = 0, a connected
  # network. Added, the long octaves cut valley networks; subtracted, the short ones raise sharp ridges
  # and spurs, as in eroded mountains.
  for octave in range(4):
    wavelength = style.valley_corner_m / 2**octave
    crease = np.abs(_fractal(rng, shape, beta=6.0, corner_m=wavelength, rolloff_m=15.0))
    sign = 1.0 if octave < 2 else -1.0
    hills += np.float32(sign * style.valley_weight * wavelength / style.valley_corner_m) * crease
  del crease
  # Scale to the site's steepness (the median slope is what landslide susceptibility responds to).
  gy, gx = np.gradient(hills, _PIXEL_M)
  gradient = float(np.median(np.hypot(gx, gy)[::2, ::2]))
  del gx, gy
  hills *= np.float32(math.tan(math.radians(style.median_slope_deg)) / max(gradient, 1e-9))
  hills -= np.float32(np.median(hills))
  # The massif carries the regional relief; its std is absolute so a small scene gets a small share.
  massif = _fractal(rng, shape, beta=4.0, corner_m=style.massif_corner_m, absolute=True)
  elev = hills + np.float32(style.massif_std_m) * massif + np.float32(style.mid_elev_m)
  del massif
  # Compress peaks above the site's maximum smoothly instead of clipping them flat.
  top = np.float32(style.max_elev_m - 0.3 * (style.max_elev_m - style.mid_elev_m))
  span = np.float32(style.max_elev_m) - top
  elev = np.where(elev > top, top + span * np.tanh((elev - top) / span), elev)
  # Alluvial fill: the lowest hill ground is levelled into flats (fields, villages).
  if style.fill_quantile > 0:
    fill = np.float32(np.quantile(elev[::4, ::4], style.fill_quantile))
    elev = _soft_max(elev, fill + np.float32(0.002) * river.u, k=np.float32(2.0))
  # Main valley: a cone of the wall slope around the river, its floor rising upstream.
  frac = np.clip(river.u / np.float32(river.length_m) + 0.5, 0, 1)
  floor = np.float32(style.river_elev_m[0]) + frac * np.float32(
      style.river_elev_m[1] - style.river_elev_m[0])
  beyond = np.maximum(river.dist - np.float32(style.floor_half_m), 0)
  # The walls keep the hills' ridges and gullies, fading out towards the flat floor.
  wall = np.float32(math.tan(math.radians(style.wall_deg))) * beyond + hills * np.minimum(
      beyond / np.float32(300.0), 1)
  valley = floor + np.maximum(wall, 0)
  del hills, beyond, wall
  elev = _soft_min(elev, valley, k=np.float32(15.0))
  return np.maximum(elev, np.float32(min(style.river_elev_m) - 20.0)).astype(np.float32)


def _landslide_shapes(rng: np.random.Generator, elev: np.ndarray, weight: np.ndarray,
                      target_px: float, style: _Style, edge_noise: np.ndarray) -> tuple[np.ndarray, int]:
  """Stamps landslide scars elongated down the flow path from seeds on steep ground.

  Returns (label image with 0 = none, number of scars). Seeds are drawn with probability `weight`;
  sizes follow the site's lognormal area distribution. Overlaps, runouts cut short on flat ground and
  the scene edge lose area, so scars are added in rounds until `target_px` pixels are (nearly) covered.
  """
  labels = np.zeros(elev.shape, np.int32)
  if target_px <= 0 or not np.any(weight > 0):
    return labels, 0
  cdf = np.cumsum(weight, dtype=np.float64).ravel()
  # Flow direction from a smoothed DEM: pixel-scale bumps must not deflect a slide.
  gy, gx = np.gradient(scipy.ndimage.gaussian_filter(elev, 2.0))
  count, covered = 0, 0
  for _ in range(4):
    missing = target_px - covered
    if missing < 0.03 * target_px:
      break
    count += _stamp_round(rng, gy, gx, cdf, missing, style, edge_noise, labels, count)
    covered = int(np.count_nonzero(labels))
  return labels, count


def _stamp_round(rng: np.random.Generator, gy: np.ndarray, gx: np.ndarray, cdf: np.ndarray,
                 target_px: float, style: _Style, edge_noise: np.ndarray, labels: np.ndarray,
                 first_id: int) -> int:
  """One round of `_landslide_shapes`: stamps scars (ids first_id + 1, ...) into free `labels` pixels."""
  rows, cols = labels.shape
  mean_px = style.area_median_m2 / _PIXEL_M**2 * math.exp(style.area_sigma**2 / 2)
  areas = np.exp(rng.normal(math.log(style.area_median_m2 / _PIXEL_M**2), style.area_sigma,
                            size=int(3 * target_px / mean_px) + 16))
  areas = np.clip(areas, 4.0, style.area_max_m2 / _PIXEL_M**2)
  count = min(int(np.searchsorted(np.cumsum(areas), target_px * 1.1)) + 1, areas.size)
  areas = areas[:count]
  ratio = rng.uniform(*style.aspect_ratio, size=count)
  width = np.maximum(np.sqrt(areas / (0.85 * ratio)), 1.6)   # pixels
  length = np.maximum(areas / (0.85 * width), width)
  seeds = np.searchsorted(cdf, rng.uniform(0, cdf[-1], size=count), side="right")
  seeds = np.minimum(seeds, cdf.size - 1)
  pos = np.stack([seeds // cols, seeds % cols], axis=1).astype(np.float64)
  pos += rng.uniform(-0.5, 0.5, size=pos.shape)
  # Trace all slides downslope at once, one pixel per step.
  steps = int(math.ceil(length.max())) + 1
  path = np.empty((steps + 1, count, 2))
  path[0] = pos
  travelled = np.zeros(count)
  alive = np.ones(count, bool)
  heading = np.zeros((count, 2))
  stop_gradient = math.tan(math.radians(style.stop_slope_deg)) * _PIXEL_M  # metres per pixel
  for step in range(1, steps + 1):
    r = np.clip(np.rint(pos[:, 0]).astype(int), 0, rows - 1)
    c = np.clip(np.rint(pos[:, 1]).astype(int), 0, cols - 1)
    down = -np.stack([gy[r, c], gx[r, c]], axis=1)
    norm = np.hypot(down[:, 0], down[:, 1])
    down /= np.maximum(norm, 1e-6)[:, None]
    # Inertia: slides run fairly straight across small undulations.
    heading = down if step == 1 else 0.6 * heading + 0.4 * down
    heading /= np.maximum(np.hypot(heading[:, 0], heading[:, 1]), 1e-6)[:, None]
    alive &= (travelled < length - 1) & ((norm > stop_gradient) if step > 1 else True)
    pos = np.where(alive[:, None], pos + heading, pos)
    travelled += alive
    path[step] = pos
  for i in range(count):
    n = int(travelled[i]) + 1
    pts = path[:n, i]
    half = 0.5 * width[i]
    s = np.linspace(0.0, 1.0, n)
    # Teardrop: a wide scarp near the crown, narrowing down the runout track.
    radius = half * (0.55 + 0.45 * np.sin(np.pi * np.minimum(s * 1.6 + 0.25, 1.0)))
    stride = max(1, int(half / 2))
    keep = np.unique(np.r_[np.arange(0, n, stride), n - 1])
    pts, radius = pts[keep], radius[keep]
    reach = radius.max() + 2
    r0 = max(0, int(math.floor(pts[:, 0].min() - reach)))
    r1 = min(rows, int(math.ceil(pts[:, 0].max() + reach)) + 1)
    c0 = max(0, int(math.floor(pts[:, 1].min() - reach)))
    c1 = min(cols, int(math.ceil(pts[:, 1].max() + reach)) + 1)
    if r0 >= r1 or c0 >= c1:
      continue
    rr = np.arange(r0, r1)[:, None, None]
    cc = np.arange(c0, c1)[None, :, None]
    inside = (np.hypot(rr - pts[:, 0], cc - pts[:, 1]) - radius).min(axis=2)
    # Ragged outlines: correlated noise scaled with the slide's width.
    inside += edge_noise[r0:r1, c0:c1] * np.float32(min(0.35 * half, 2.0))
    window = labels[r0:r1, c0:c1]
    window[(inside < 0) & (window == 0)] = first_id + i + 1
  return count


def generate_demo_arrays(site: str, scale: float = 1.0, seed: int = 0) -> DemoArrays:
  """Generates one site's demo scene in memory (deterministic in site, scale and seed)."""
  info = _check_site(site)
  scale = _check_scale(scale)
  style = _STYLES[site]
  grids = _make_grids(info, demo_shape(site, scale))
  rows, cols = grids.shape

  # --- Terrain on the padded grid, resampled to the geographic DEM grid.
  rng = _rng(site, scale, seed, "terrain")
  river_padded = _main_river(rng, grids.padded_shape, style)
  terrain = _terrain(rng, grids.padded_shape, style, river_padded)
  dem = np.full(grids.dem_shape, np.nan, np.float32)
  rasterio.warp.reproject(
      terrain, dem, src_transform=grids.padded_transform, src_crs=grids.crs,
      dst_transform=grids.dem_transform, dst_crs="EPSG:4326", resampling=Resampling.average,
      dst_nodata=np.nan)
  if not np.all(np.isfinite(dem)):
    raise AssertionError("demo DEM grid is not covered by the generated terrain")
  # AW3D30 stores whole metres.
  dem = np.round(dem).astype(np.float32)
  elev = np.ascontiguousarray(grids.crop(terrain))
  river = _River(u=grids.crop(river_padded.u), dist=grids.crop(river_padded.dist),
                 side=grids.crop(river_padded.side), length_m=river_padded.length_m)
  del terrain, river_padded
  slope = _slope_deg(elev)

  # --- Land cover.
  rng = _rng(site, scale, seed, "cover")
  shape = (rows, cols)
  lc = np.full(shape, _LC["forest"], np.uint8)
  grass_field = _fractal(rng, shape, beta=3.0, corner_m=800.0, rolloff_m=15.0)
  grass_cut = np.quantile(grass_field[::4, ::4], 1.0 - style.grass_share)
  lc[grass_field > grass_cut] = _LC["grass"]
  lc[elev > style.treeline_m + 60.0 * grass_field] = _LC["grass"]
  lc[(elev > style.rockline_m + 80.0 * grass_field) | (slope > 62.0)] = _LC["rock"]
  # Flat lowland: fields in rectangular parcels, villages, roads between parcels.
  flat = (scipy.ndimage.uniform_filter(slope, 5) < style.field_max_slope_deg) & (
      elev < np.quantile(elev[::4, ::4], 0.5))
  angle = rng.uniform(0, math.pi / 2)
  y = (np.arange(rows, dtype=np.float32) * _PIXEL_M)[:, None]
  x = (np.arange(cols, dtype=np.float32) * _PIXEL_M)[None, :]
  pu = x * math.cos(angle) + y * math.sin(angle)
  pv = -x * math.sin(angle) + y * math.cos(angle)
  pw, ph = style.parcel_m[1], style.parcel_m[0]
  ix, iy = np.floor(pu / pw).astype(np.int64), np.floor(pv / ph).astype(np.int64)
  salt = int(rng.integers(1 << 62))
  parcel = _hash01(ix, iy, salt)
  parcel_tone = _hash01(ix, iy, salt + 1)
  field = flat & (parcel < style.field_share)
  lc[field] = np.where(parcel_tone[field] < 0.45, _LC["bare_field"], _LC["green_field"])
  settle_field = _fractal(rng, shape, beta=3.0, corner_m=600.0, rolloff_m=15.0)
  if style.settlement_share > 0 and flat.any():
    cut = np.quantile(settle_field[flat], 1.0 - style.settlement_share)
    lc[flat & (settle_field > cut)] = _LC["settlement"]
  # Farm tracks on every third parcel boundary.
  track = field & (((ix % 3) == 0) & ((pu - ix * pw) < 7.0) | ((iy % 3) == 0) & ((pv - iy * ph) < 7.0))
  lc[track] = _LC["road"]
  del pu, pv, ix, iy, parcel, parcel_tone, track
  # River: gravel bed with a meandering low-water channel; dammed lakes in Jiuzhaigou.
  bed_noise = _fractal(rng, shape, beta=3.0, corner_m=300.0, rolloff_m=10.0)
  gravel = river.dist < style.gravel_half_m * (1.0 + 0.25 * bed_noise)
  lc[gravel] = _LC["gravel"]
  thread = np.float32(0.55 * style.gravel_half_m) * np.sin(
      2 * np.pi * river.u / np.float32(rng.uniform(400, 900)) + np.float32(rng.uniform(0, 6.28)))
  water = np.abs(river.side - thread) < style.water_half_m
  for _ in range(style.lakes):
    centre = rng.uniform(-0.35, 0.35) * river.length_m
    half_len = rng.uniform(150, 400)
    lake_half = rng.uniform(0.6, 1.0) * (style.floor_half_m + 20.0)
    water |= (np.abs(river.u - centre) < half_len) & (
        river.dist < lake_half * np.sqrt(np.clip(1 - ((river.u - centre) / half_len) ** 2, 0, 1)))
  # Valley road along the foot of one valley wall, on the flattest side.
  road_off = np.float32(style.floor_half_m + rng.uniform(-0.3, 0.3) * style.floor_half_m)
  road = (np.abs(river.dist - road_off) < 7.0) & (river.side > 0)
  lc[road & ~water] = _LC["road"]
  lc[water] = _LC["water"]

  # --- Landslides (event, inventoried) and old scars (not inventoried).
  rng = _rng(site, scale, seed, "landslides")
  cluster = np.exp(np.float32(style.cluster) * _fractal(rng, shape, beta=3.5, corner_m=2500.0))
  susceptible = np.isin(lc, [_LC["forest"], _LC["grass"], _LC["rock"]])
  weight = (1.0 / (1.0 + np.exp(-(slope - style.trigger_slope_deg) / 3.0))) * cluster * susceptible
  edge_noise = _fractal(rng, shape, beta=3.0, corner_m=60.0, rolloff_m=8.0)
  slides, slide_count = _landslide_shapes(
      rng, elev, weight, style.landslide_share * rows * cols, style, edge_noise)
  landslide = (slides > 0) & ~water
  old, old_count = _landslide_shapes(
      rng, elev, weight * (~landslide),
      style.old_scar_ratio * style.landslide_share * rows * cols, style, edge_noise)
  lc[(old > 0) & ~water & ~landslide] = _LC["old_scar"]
  lc[landslide] = _LC["landslide"]
  del weight, edge_noise, cluster, susceptible

  # --- Reflectance: class spectra, per-object and spatially correlated variation, illumination.
  rng = _rng(site, scale, seed, "spectra")
  refl = _SPECTRA[lc].transpose(2, 0, 1).copy()   # (4, H, W)
  texture = 1.0 + 0.09 * _fractal(rng, shape, beta=2.6, corner_m=400.0, rolloff_m=8.0)
  refl *= texture
  del texture
  # Vegetation vigour varies smoothly (species, age, water): it moves NIR and red in opposite ways.
  vigour = _fractal(rng, shape, beta=3.0, corner_m=700.0, rolloff_m=10.0)
  vegetated = np.isin(lc, [_LC[n] for n in VEGETATED])
  refl[3] *= np.where(vegetated, 1.0 + 0.12 * vigour, 1.0)
  refl[2] *= np.where(vegetated, 1.0 - 0.12 * vigour, 1.0)
  del vigour
  # Each scar has its own material and partial revegetation: from bright fresh rock to darker soil.
  for labels_, n_obj, veg_max in ((slides, slide_count, 0.35), (old, old_count, 0.7)):
    if n_obj == 0:
      continue
    which = (labels_ > 0) & (lc == (_LC["landslide"] if veg_max < 0.5 else _LC["old_scar"]))
    ids = labels_[which] - 1
    bright = np.exp(rng.normal(0.0, 0.15, size=n_obj)).astype(np.float32)[ids]
    veg = rng.uniform(0.0, veg_max, size=n_obj).astype(np.float32)[ids]
    veg = np.clip(veg + rng.normal(0, 0.08, size=ids.size).astype(np.float32), 0, 1)
    refl[:, which] = refl[:, which] * bright * (1 - veg) + _SPECTRA[_LC["forest"]][:, None] * veg
  del slides, old
  # Villages mix roofs, asphalt and gardens at the pixel scale.
  town = lc == _LC["settlement"]
  mix = rng.uniform(0.5, 1.6, size=int(town.sum())).astype(np.float32)
  refl[:, town] *= mix
  # Topographic illumination: Lambert, damped by diffuse skylight so shaded slopes are not black.
  gy, gx = np.gradient(elev, _PIXEL_M)
  az, el = math.radians(style.sun_azimuth_deg), math.radians(style.sun_elevation_deg)
  # East = +col, north = -row.
  cos_i = (-gx * math.sin(az) * math.cos(el) + gy * math.cos(az) * math.cos(el) + math.sin(el)) / \
      np.sqrt(1.0 + gx * gx + gy * gy)
  del gx, gy
  illum = 0.3 + 0.7 * np.clip(cos_i, 0.0, None) / math.sin(el)
  refl *= np.clip(illum, 0.15, 1.6).astype(np.float32)
  del cos_i, illum
  # Sensor and sub-pixel noise.
  refl *= 1.0 + 0.03 * rng.standard_normal(refl.shape, dtype=np.float32)
  refl += 15.0 * rng.standard_normal(refl.shape, dtype=np.float32)

  # --- Atmosphere: thin haze (not masked), clouds and their shadows (masked).
  rng = _rng(site, scale, seed, "atmosphere")
  haze = np.clip(_fractal(rng, shape, beta=3.5, corner_m=5000.0) - 0.3, 0, None) * style.haze
  refl += _HAZE_DN[:, None, None] * haze
  del haze
  cloud_height = rng.uniform(800.0, 2000.0)
  # The shadow falls away from the sun, displaced by height / tan(elevation).
  shift = cloud_height / math.tan(el) / _PIXEL_M
  dr = int(round(shift * math.cos(az)))      # sun in the north -> shadow to the south (+rows)
  dc = int(round(-shift * math.sin(az)))     # sun in the east -> shadow to the west (-cols)
  big = _fractal(rng, (rows + abs(dr), cols + abs(dc)), beta=3.6, corner_m=3000.0, rolloff_m=15.0)
  # About half the masked area is cloud (opacity > 0.35 = 0.21 above the cut), half its shadow.
  cut = np.quantile(big[::4, ::4], 1.0 - style.cloud_share / 2) - 0.21
  opacity = np.clip((big - cut) / 0.6, 0.0, 1.0)
  # Scene pixel p is p + (r0, c0) in the cloud layer; its shadow is cast by the cloud at p - (dr, dc).
  r0, c0 = max(0, dr), max(0, dc)
  cloud = opacity[r0:r0 + rows, c0:c0 + cols]
  shadow = opacity[r0 - dr:r0 - dr + rows, c0 - dc:c0 - dc + cols]
  shade = 1.0 - 0.75 * shadow * (1.0 - cloud)
  refl = refl * shade * (1.0 - cloud) + _CLOUD_DN[:, None, None] * (
      1.0 + 0.05 * big[r0:r0 + rows, c0:c0 + cols]) * cloud
  # Real cloud masks catch thick cloud and dark shadow but not the thin fringes.
  cloud_mask = ((cloud > 0.35) | ((shadow > 0.4) & (cloud < 0.35))).astype(np.uint8)
  del big, opacity, cloud, shadow, shade

  s2 = np.clip(np.rint(refl), 1, 65535).astype(np.uint16)
  del refl
  # Beyond the orbit's swath edge the product holds nodata (0), cut diagonally across one corner.
  if style.swath_edge_share > 0:
    t = math.sqrt(2 * style.swath_edge_share)
    rr = np.arange(rows)[:, None] / rows
    cc = np.arange(cols)[None, :] / cols
    s2[:, (1.0 - rr) + cc < t] = 0
  return DemoArrays(s2=s2, dem_10m=elev, landslide=landslide, cloud_mask=cloud_mask,
                    land_cover=lc, transform=grids.transform, crs=grids.crs, dem=dem,
                    dem_transform=grids.dem_transform)


def landslide_polygons(arrays: DemoArrays) -> list[dict]:
  """Polygonises the landslide raster: GeoJSON-like polygons in EPSG:4326, one per connected scar."""
  mask = arrays.landslide.astype(np.uint8)
  shapes = [geom for geom, value in rasterio.features.shapes(
      mask, mask=arrays.landslide, transform=arrays.transform, connectivity=4) if value == 1]
  if not shapes:
    return []
  return list(rasterio.warp.transform_geom(arrays.crs, "EPSG:4326", shapes))


def _description(site: str, scale: float, seed: int) -> str:
  return (f"SYNTHETIC demo scene imitating {constants.SITES[site].title} "
          f"(seed={int(seed)}, scale={float(scale)!r}, generator v{GENERATOR_VERSION})")


def _manifest(site: str, scale: float, seed: int) -> dict:
  return {
      "sentinel2": S2_FILE,
      "bands": list(constants.PAPER_BANDS),
      "s2_units": "dn",
      "dem": DEM_FILE,
      "inventory": INVENTORY_FILE,
      "nodata_mask": CLOUD_MASK_FILE,
      "source": constants.SOURCE_DEMO,
      "description": _description(site, scale, seed),
  }


def _read_manifest(site_dir: Path) -> dict | None:
  try:
    data = json.loads((site_dir / MANIFEST_FILE).read_text())
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) else None


def _is_cached(site_dir: Path, description: str) -> bool:
  data = _read_manifest(site_dir)
  return (data is not None and data.get("description") == description
          and all((site_dir / name).is_file() for name in DEMO_FILES))


def _write_site_files(arrays: DemoArrays, folder: Path, site: str, scale: float, seed: int) -> None:
  rows, cols = arrays.landslide.shape
  profile = dict(driver="GTiff", height=rows, width=cols, crs=arrays.crs, transform=arrays.transform,
                 compress="lzw", tiled=True, blockxsize=256, blockysize=256)
  # No .aux.xml sidecars: the folder must hold exactly the demo files.
  with rasterio.Env(GDAL_PAM_ENABLED="NO"):
    with rasterio.open(folder / S2_FILE, "w", count=4, dtype="uint16", nodata=0, predictor=2,
                       **profile) as dst:
      dst.write(arrays.s2)
      for index, band in enumerate(constants.PAPER_BANDS, start=1):
        dst.set_band_description(index, f"B{int(band[1:]):02d}")
    with rasterio.open(folder / CLOUD_MASK_FILE, "w", count=1, dtype="uint8", **profile) as dst:
      dst.write(arrays.cloud_mask, 1)
      dst.set_band_description(1, "cloud_or_shadow")
    dem_rows, dem_cols = arrays.dem.shape
    with rasterio.open(folder / DEM_FILE, "w", driver="GTiff", height=dem_rows, width=dem_cols,
                       count=1, dtype="float32", crs="EPSG:4326", transform=arrays.dem_transform,
                       nodata=_DEM_NODATA, compress="lzw", predictor=3, tiled=True,
                       blockxsize=256, blockysize=256) as dst:
      dst.write(arrays.dem, 1)
      dst.set_band_description(1, "elevation_m")
  polygons = landslide_polygons(arrays)
  geometry = np.array([shapely.to_wkb(shapely.geometry.shape(p)) for p in polygons] or [],
                      dtype=object)
  areas = np.array([shapely.geometry.shape(p).area for p in rasterio.warp.transform_geom(
      "EPSG:4326", arrays.crs, polygons)] if polygons else [], dtype=np.float64)
  pyogrio.raw.write(
      folder / INVENTORY_FILE, geometry=geometry,
      field_data=[np.arange(1, len(polygons) + 1, dtype=np.int64), areas],
      fields=["id", "area_m2"], crs="EPSG:4326", driver="GPKG", geometry_type="Polygon",
      layer="landslides")
  (folder / MANIFEST_FILE).write_text(json.dumps(_manifest(site, scale, seed), indent=2) + "\n")


def write_demo_site(site: str, out_dir: str | os.PathLike, scale: float = 1.0, seed: int = 0) -> Path:
  """Writes one site's synthetic raw-input folder `out_dir/<site>/` and returns its path.

  The folder holds s2.tif, dem.tif, inventory.gpkg, cloud_mask.tif and manifest.json (see the module
  docstring). It is built in a temporary sibling folder and moved into place at the end, so a crash
  never leaves a half-written site. An existing folder from the same (seed, scale, generator version)
  is returned as is; an older demo folder is replaced; a folder that is not a demo is never touched.

  Raises:
    InputError: unknown site, bad scale, or `out_dir/<site>` exists and is not a demo folder.
  """
  _check_site(site)
  scale = _check_scale(scale)
  out_dir = Path(out_dir)
  site_dir = out_dir / site
  description = _description(site, scale, seed)
  # Temporary folders of writers that were killed; a live writer's is locked and stays.
  files.remove_stale(out_dir, (f".{site}.tmp-", f".{site}.old-"))
  if _is_cached(site_dir, description):
    return site_dir
  if site_dir.exists():
    existing = _read_manifest(site_dir)
    if existing is None or existing.get("source") != constants.SOURCE_DEMO:
      # Never overwrite what might be a user's real data.
      raise InputError(site_dir, "exists and is not a synthetic demo folder",
                       "choose another output folder or move it away")
  out_dir.mkdir(parents=True, exist_ok=True)
  staging = files.StagingDir(out_dir, f".{site}.tmp-")  # locked while we write, so never taken for stale
  tmp = staging.path
  try:
    arrays = generate_demo_arrays(site, scale, seed)
    # Uncompressed sizes: LZW only shrinks them, so this is an upper bound.
    need = sum(a.nbytes for a in (arrays.s2, arrays.cloud_mask, arrays.dem))
    files.require_free_space(out_dir, need, f"the {site} demo scene", "--data_dir")
    with faults.raster_write(site_dir, need):  # the disk may still fill meanwhile (other writers)
      _write_site_files(arrays, tmp, site, scale, seed)
    staging.unlock()  # the site folder must hold exactly the demo files, not our lock file
    if site_dir.exists():
      # A directory cannot be renamed onto a non-empty one: move the stale demo aside first.
      trash = Path(tempfile.mkdtemp(prefix=f".{site}.old-", dir=out_dir))
      os.replace(site_dir, trash)
      shutil.rmtree(trash, ignore_errors=True)
    try:
      os.replace(tmp, site_dir)
    except OSError:
      # Another process finished the same site first: keep its (identical) result.
      if not _is_cached(site_dir, description):
        raise
  finally:
    staging.cleanup()
  return site_dir


def write_demo_sites(out_dir: str | os.PathLike, sites: Iterable[str] = constants.SITE_NAMES,
                     scale: float = 1.0, seed: int = 0) -> dict[str, Path]:
  """Writes the demo folders of `sites` under `out_dir`; returns site -> folder."""
  sites = tuple(sites)
  for site in sites:
    _check_site(site)
  return {site: write_demo_site(site, out_dir, scale=scale, seed=seed) for site in sites}
