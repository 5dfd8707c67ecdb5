"""Sentinel-2 values no product can hold, and DEMs too coarse for slope, are refused in one line naming
the band (or file) and the likely cause, instead of building a silently wrong dataset; values real
products do hold (offset-corrected data slightly below 0, bright clouds) are accepted.

Every case is a real-format GeoTIFF site read through `scene.load_scene` (prepare's path) and, for the
per-scene checks of `launch.predict`, through `raster_io.resolve_s2_units(check_offset=True)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from landslide_jax import predict
from landslide_jax.data import raster_io, scene as scene_lib
from landslide_jax.errors import InputError
from tests.conftest import ORIGIN, SITE_CRS

SHAPE = (120, 150)
BANDS = ("B02", "B03", "B04", "B08")
CHANNELS = ("B2", "B3", "B4", "B8", "slope")


def _site(make_site, values: np.ndarray, dtype: str, manifest: dict | None = None,
          nodata: float | None = 0) -> Path:
  """The self-made site with its s2.tif replaced by `values` (4, H, W) stored as `dtype`."""
  site = make_site(shape=SHAPE, manifest=manifest)
  with rasterio.open(site / "s2.tif", "w", driver="GTiff", height=SHAPE[0], width=SHAPE[1], count=4,
                     dtype=dtype, crs=SITE_CRS, transform=from_origin(*ORIGIN, 10, 10),
                     nodata=nodata) as dst:
    dst.write(values.astype(dtype))
    for i, band in enumerate(BANDS, start=1):
      dst.set_band_description(i, band)
  return site


def _dn(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(200, 3000, size=(4, *SHAPE)).astype(np.float64)


def _error(site: Path) -> str:
  with pytest.raises(InputError) as err:
    scene_lib.load_scene(site, CHANNELS, "china")
  message = str(err.value)
  assert len(message.splitlines()) == 1 and message.startswith(str(site / "s2.tif"))
  return message


def test_reflectance_declared_for_digital_numbers(make_site):
  # Today's defect: DN data labelled reflectance were multiplied by 10000 (mean 3.3e6) and built fine.
  site = _site(make_site, _dn(), "uint16", {"s2_units": "reflectance"})
  assert "s2_units is reflectance, but B2 holds digital numbers" in _error(site)


def test_digital_numbers_declared_for_reflectance(make_site):
  site = _site(make_site, _dn() / 10000, "float32", {"s2_units": "dn"}, nodata=None)
  assert "s2_units is dn, but B2 holds reflectance" in _error(site)


def test_bands_in_mixed_units(make_site):
  values = _dn()
  values[3] /= 10000  # B08 exported as reflectance, the others as DN
  site = _site(make_site, values, "float32", {"s2_units": "auto"}, nodata=None)
  message = _error(site)
  assert "bands in different units: B8 look like reflectance" in message and "B2, B3, B4" in message


def test_values_above_what_a_product_holds(make_site):
  values = _dn()
  values[2, :10, :10] = 1e6  # a scaled export or a sum of bands
  site = _site(make_site, values, "float32", nodata=None)
  assert "B4 values reach 1e+06 as digital numbers" in _error(site)


def test_negative_values_far_below_any_product(make_site):
  values = _dn()
  values[1, 50:60, 50:60] = -5000  # a difference image
  site = _site(make_site, values, "int16", nodata=None)
  assert "B3 values reach -5000" in _error(site)


def test_negative_dn_with_an_offset_still_to_add(make_site):
  # Offset-corrected data (int16, dark water slightly below 0) and the manifest's -1000 on top.
  values = _dn() - 1000
  site = _site(make_site, values, "int16", {"s2_add_offset": -1000}, nodata=None)
  assert "the offset looks applied already" in _error(site)


def test_plausible_values_are_accepted(make_site):
  # Offset-corrected DN (a few pixels below 0) and bright clouds near 20000 DN are what products hold.
  values = _dn()
  values[:, :3, :3] = -40
  values[:, -5:, -5:] = 19000
  site = _site(make_site, values, "int16", nodata=None)
  scene = scene_lib.load_scene(site, CHANNELS, "china")
  np.testing.assert_array_equal(scene.image[0], values[0].astype(np.float32))


def test_predict_checks_the_scene_once_before_any_block(make_site):
  values = _dn()
  values[3] /= 10000
  site = _site(make_site, values, "float32", {"s2_units": "auto"}, nodata=None)
  inputs = predict.scene_inputs(site / "s2.tif", site / "dem.tif")
  with pytest.raises(InputError, match="bands in different units"):
    raster_io.resolve_s2_units(inputs, ("B2", "B3", "B4", "B8"), check_offset=True)
  # Block reads alone do not check (they would check each block): the scene-level call does.
  window = rasterio.windows.Window(0, 0, 32, 32)
  assert raster_io.read_sentinel2(inputs, ("B2",), window)[0].shape == (1, 32, 32)


@pytest.mark.parametrize("dem_px_m, refused", [(1500.0, True), (90.0, False)])
def test_a_dem_too_coarse_for_slope(make_site, dem_px_m, refused):
  # A DEM of a few pixels over the scene gave slope 0 everywhere; SRTM's 90 m is coarse but usable.
  site = make_site(shape=SHAPE)
  side = int(np.ceil(SHAPE[1] * 10 / dem_px_m)) + 2
  x = (np.arange(side) + 0.5) * dem_px_m
  dem = (1000 + 0.2 * x[None, :] + 0.1 * x[::-1, None]).astype(np.float32)
  with rasterio.open(site / "dem.tif", "w", driver="GTiff", height=side, width=side, count=1,
                     dtype="float32", crs=SITE_CRS,
                     transform=from_origin(ORIGIN[0] - dem_px_m, ORIGIN[1] + dem_px_m, dem_px_m,
                                           dem_px_m)) as dst:
    dst.write(dem, 1)
  if refused:
    with pytest.raises(InputError, match="DEM pixels are about 1500 m, 150 times the scene's 10 m"):
      scene_lib.load_scene(site, CHANNELS, "china")
  else:
    scene = scene_lib.load_scene(site, CHANNELS, "china")
    assert np.isfinite(scene.image[-1]).all() and scene.image[-1].max() > 1.0
