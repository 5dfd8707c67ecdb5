"""Sentinel-2 reading: band re-ordering, zero nodata without a tag, geographic CRS, units, label rasters,
and the filename conventions and manifests of a site folder.

The chip checks run on real Chattogram chips (../shared/data/sentinel2_chips_chattogram, skipped when
absent) and on a self-made chip in the same format, which always runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from landslide_jax.data import inventory, raster_io
from landslide_jax.data.site_inputs import find_site_inputs
from tests.conftest import ORIGIN, SITE_CRS, pixel_box, shared_path, write_dem, write_polygons

READ_BANDS = ("B2", "B3", "B4", "B8")
CHIP_BANDS = ["B4", "B3", "B2", "B8"]  # R, G, B, NIR as the chips store them.
# Chip band (0-based) holding each of READ_BANDS: B2 is the chip's 3rd band, B3 the 2nd, ...
CHIP_INDEX = [2, 1, 0, 3]
# 000000000002: partly nodata with landslides; 000000000006: no nodata; 000000000082: mostly nodata.
REAL_CHIPS = ("000000000002", "000000000006", "000000000082")
DEG_10M = 8.983152841196085e-05  # ~10 m in degrees at the equator, as the chips use.


def _read_all(path: Path) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
  with rasterio.open(path) as src:
    return src.read(), src.transform, src.crs


def _write_geographic_dem(path: Path, chip: Path) -> None:
  """A flat DEM over the chip's footprint: find_site_inputs needs one, read_sentinel2 ignores it."""
  with rasterio.open(chip) as src:
    left, _, _, top = src.bounds
    rows, cols = src.height // 3 + 2, src.width // 3 + 2
  with rasterio.open(path, "w", driver="GTiff", height=rows, width=cols, count=1, dtype="float32",
                     crs="EPSG:4326", transform=from_origin(left - 3 * DEG_10M, top + 3 * DEG_10M,
                                                            3 * DEG_10M, 3 * DEG_10M)) as dst:
    dst.write(np.full((1, rows, cols), 100.0, np.float32))


def _chip_site(site: Path, chip: Path, label: Path, **manifest) -> Path:
  """A site folder whose manifest names the chip and its labels by absolute path."""
  site.mkdir(parents=True)
  _write_geographic_dem(site / "dem.tif", chip)
  spec = {"sentinel2": str(chip.resolve()), "bands": CHIP_BANDS, "dem": "dem.tif",
          "inventory": str(label.resolve()), "s2_units": "auto"}
  spec.update(manifest)
  (site / "manifest.json").write_text(json.dumps(spec))
  return site


def _check_chip_read(site: Path, chip: Path, label: Path) -> tuple[np.ndarray, raster_io.Grid]:
  """Reads the site's S2 and labels and checks them against the raw chip; returns (image, grid)."""
  raw, transform, crs = _read_all(chip)
  inputs = find_site_inputs(site)
  assert inputs.s2_stack == chip.resolve()
  assert inputs.bands == tuple(CHIP_BANDS) and inputs.s2_units == "auto"
  image, valid, grid = raster_io.read_sentinel2(inputs, READ_BANDS)
  assert image.dtype == np.float32 and image.shape == (4, *raw.shape[1:])
  # Re-ordered bands, values untouched: 'auto' saw digital numbers and did not scale them.
  np.testing.assert_array_equal(image, raw[CHIP_INDEX].astype(np.float32))
  np.testing.assert_array_equal(valid, ~(raw == 0).all(axis=0))
  assert grid.crs.to_epsg() == 4326 and grid.crs == crs
  assert grid.transform == transform and grid.shape == raw.shape[1:]
  dn, _, _ = raster_io.read_sentinel2(
      find_site_inputs(_chip_site(site.parent / (site.name + "_dn"), chip, label, s2_units="dn")),
      READ_BANDS)
  np.testing.assert_array_equal(dn, image)

  # The label raster on the same grid: codes come back as they are; 2 = landslide.
  labels = _read_all(label)[0][0]
  codes = raster_io.read_onto_grid(inputs.inventory, grid, "labels")
  np.testing.assert_array_equal(codes, labels.astype(np.float32))
  # inventory.read_mask takes non-zero as landslide, so a classified-tiles raster (1 = sampled
  # non-landslide) must be binarised first: both behaviours are checked.
  np.testing.assert_array_equal(
      inventory.read_mask(label, grid, "labels", require_features=False), (labels > 0).astype(np.uint8))
  binary = site / "landslides.tif"
  with rasterio.open(label) as src:
    profile = dict(src.profile, dtype="uint8")
  with rasterio.open(binary, "w", **profile) as dst:
    dst.write((labels == 2).astype(np.uint8), 1)
  np.testing.assert_array_equal(inventory.read_mask(binary, grid, "inventory", require_features=False),
                                (labels == 2).astype(np.uint8))
  return image, grid


# ---------------------------------------------------------------------------------------------------
# Real Chattogram chips.


@pytest.mark.parametrize("name", REAL_CHIPS)
def test_real_chip(tmp_path, name):
  root = shared_path("sentinel2_chips_chattogram")
  chip, label = root / "images" / f"{name}.tif", root / "labels" / f"{name}.tif"
  with rasterio.open(chip) as src:
    # The format these checks rely on: float64 DN, no nodata tag, geographic CRS.
    assert src.dtypes[0] == "float64" and src.nodata is None and src.crs.is_geographic
  _check_chip_read(_chip_site(tmp_path / "site", chip, label), chip, label)


# ---------------------------------------------------------------------------------------------------
# Self-made chips in the same format.


def _write_chip(path: Path, values: np.ndarray, dtype: str = "float64") -> None:
  """A chip like the Chattogram ones: R, G, B, NIR, EPSG:4326 ~10 m pixels, LZW, tiled, no nodata tag."""
  with rasterio.open(path, "w", driver="GTiff", height=values.shape[1], width=values.shape[2], count=4,
                     dtype=dtype, crs="EPSG:4326", transform=from_origin(91.75, 22.48, DEG_10M, DEG_10M),
                     compress="lzw", tiled=True, blockxsize=32, blockysize=32) as dst:
    dst.write(values.astype(dtype))


def _write_labels(path: Path, labels: np.ndarray) -> None:
  with rasterio.open(path, "w", driver="GTiff", height=labels.shape[0], width=labels.shape[1], count=1,
                     dtype="uint16", crs="EPSG:4326",
                     transform=from_origin(91.75, 22.48, DEG_10M, DEG_10M)) as dst:
    dst.write(labels, 1)


@pytest.fixture
def synthetic_chip(tmp_path) -> tuple[Path, Path, np.ndarray]:
  """(chip, labels, DN values R,G,B,NIR) with a zero nodata corner and some pixels zero in one band."""
  rng = np.random.default_rng(7)
  values = rng.integers(1, 10000, size=(4, 64, 96)).astype(np.float64)
  values[:, :16, :24] = 0.0          # nodata corner: every band 0
  values[0, 40, 10:20] = 0.0         # zero red only: still valid
  values[3, 50, 50] = 0.0            # zero NIR only: still valid
  labels = rng.choice(np.array([0, 1, 2], np.uint16), size=(64, 96), p=[0.9, 0.06, 0.04])
  chip, label = tmp_path / "chips" / "images" / "c1.tif", tmp_path / "chips" / "labels" / "c1.tif"
  chip.parent.mkdir(parents=True)
  label.parent.mkdir(parents=True)
  _write_chip(chip, values)
  _write_labels(label, labels)
  return chip, label, values


def test_synthetic_chip(tmp_path, synthetic_chip):
  chip, label, values = synthetic_chip
  image, _ = _check_chip_read(_chip_site(tmp_path / "site", chip, label), chip, label)
  valid = ~(values == 0).all(axis=0)
  assert not valid[:16, :24].any() and valid[40, 10:20].all() and valid[50, 50]
  np.testing.assert_array_equal(image, values[CHIP_INDEX].astype(np.float32))


def test_synthetic_chip_relative_manifest_path(tmp_path, synthetic_chip):
  chip, label, values = synthetic_chip
  site = _chip_site(tmp_path / "site", chip, label)
  # Names relative to the site folder work as well as absolute ones.
  spec = json.loads((site / "manifest.json").read_text())
  spec["sentinel2"] = "../chips/images/c1.tif"
  (site / "manifest.json").write_text(json.dumps(spec))
  image, _, _ = raster_io.read_sentinel2(find_site_inputs(site), READ_BANDS)
  np.testing.assert_array_equal(image, values[CHIP_INDEX].astype(np.float32))


def test_synthetic_reflectance_chip_is_scaled_to_dn(tmp_path, synthetic_chip):
  _, label, values = synthetic_chip
  chip = tmp_path / "reflectance.tif"
  _write_chip(chip, values / 10000.0)
  image, valid, _ = raster_io.read_sentinel2(find_site_inputs(_chip_site(tmp_path / "site", chip, label)),
                                             READ_BANDS)
  np.testing.assert_allclose(image, values[CHIP_INDEX], rtol=1e-6)
  np.testing.assert_array_equal(valid, ~(values == 0).all(axis=0))


# ---------------------------------------------------------------------------------------------------
# Filename conventions and manifests.


def _write_band(path: Path, data: np.ndarray, driver: str = "GTiff") -> None:
  options = {"QUALITY": 100, "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}  # lossless
  with rasterio.open(path, "w", driver=driver, height=data.shape[0], width=data.shape[1], count=1,
                     dtype="uint16", crs=SITE_CRS, transform=from_origin(*ORIGIN, 10, 10),
                     **options) as dst:
    dst.write(data, 1)


def _jp2_available() -> bool:
  with rasterio.Env() as env:
    return "JP2OpenJPEG" in env.drivers()


def _convention_site(site: Path, shape=(40, 60)) -> dict[str, np.ndarray]:
  """Per-band files named like an L2A product, plus dem/inventory/test area/cloud mask; no manifest."""
  site.mkdir(parents=True)
  rng = np.random.default_rng(3)
  bands = {}
  for band, token in (("B2", "B02"), ("B3", "B03"), ("B4", "B04"), ("B8", "B08")):
    data = rng.integers(100, 5000, size=shape, dtype=np.uint16)
    data[:4, :4] = 0
    jp2 = band == "B4" and _jp2_available()
    _write_band(site / f"T48RTT_20200101_{token}_10m.{'jp2' if jp2 else 'tif'}", data,
                "JP2OpenJPEG" if jp2 else "GTiff")
    bands[band] = data
  write_dem(site / "dem.tif", shape)
  write_polygons(site / "inventory.gpkg", [pixel_box(5, 5, 6, 6)])
  write_polygons(site / "test_area.geojson", [pixel_box(0, 30, 40, 30)], driver="GeoJSON")
  cloud = np.zeros(shape, np.uint8)
  cloud[10:12, 10:12] = 1
  with rasterio.open(site / "cloud_mask.tif", "w", driver="GTiff", height=shape[0], width=shape[1],
                     count=1, dtype="uint8", crs=SITE_CRS, transform=from_origin(*ORIGIN, 10, 10)) as dst:
    dst.write(cloud, 1)
  return bands


def test_filename_conventions(tmp_path):
  site = tmp_path / "site"
  bands = _convention_site(site)
  inputs = find_site_inputs(site)
  assert inputs.manifest is None and inputs.s2_stack is None
  assert sorted(inputs.s2_band_files) == ["B2", "B3", "B4", "B8"]
  assert inputs.s2_band_files["B2"].name == "T48RTT_20200101_B02_10m.tif"
  if _jp2_available():
    assert inputs.s2_band_files["B4"].suffix == ".jp2"
  assert [p.name for p in inputs.dem] == ["dem.tif"]
  assert inputs.inventory.name == "inventory.gpkg"
  assert inputs.test_area.name == "test_area.geojson"
  assert inputs.nodata_mask.name == "cloud_mask.tif"
  # Read in the requested order, not the order of the files.
  order = ("B8", "B2", "B4", "B3")
  image, valid, grid = raster_io.read_sentinel2(inputs, order)
  np.testing.assert_array_equal(image, np.stack([bands[b] for b in order]).astype(np.float32))
  assert not valid[:4, :4].any() and valid.sum() == valid.size - 16
  assert grid.crs == SITE_CRS and grid.shape == (40, 60)
  mask = inventory.read_mask(inputs.inventory, grid, "inventory")
  assert mask.sum() == 36 and mask[5:11, 5:11].all()
  np.testing.assert_array_equal(inventory.read_mask(inputs.nodata_mask, grid, "nodata mask")[10:12, 10:12],
                                1)


def test_jp2_band_is_read_losslessly(tmp_path):
  if not _jp2_available():
    pytest.skip("GDAL has no JP2OpenJPEG driver in this rasterio build")
  site = tmp_path / "site"
  bands = _convention_site(site)
  inputs = find_site_inputs(site)
  image, _, _ = raster_io.read_sentinel2(inputs, ("B4",))
  np.testing.assert_array_equal(image[0], bands["B4"].astype(np.float32))


def test_toml_manifest_works_like_json(tmp_path, synthetic_chip):
  chip, label, values = synthetic_chip
  json_site = _chip_site(tmp_path / "json_site", chip, label)
  toml_site = tmp_path / "toml_site"
  toml_site.mkdir()
  _write_geographic_dem(toml_site / "dem.tif", chip)
  (toml_site / "manifest.toml").write_text(
      f'sentinel2 = "{chip.resolve()}"\n'
      'bands = ["B4", "B3", "B2", "B8"]\n'
      'dem = "dem.tif"\n'
      f'inventory = "{label.resolve()}"\n'
      's2_units = "auto"\n')
  from_json, from_toml = find_site_inputs(json_site), find_site_inputs(toml_site)
  for field in ("s2_stack", "s2_band_files", "bands", "s2_units", "s2_nodata", "inventory",
                "inventory_layer", "test_area", "nodata_mask", "source"):
    assert getattr(from_toml, field) == getattr(from_json, field), field
  assert from_toml.manifest.name == "manifest.toml"
  a = raster_io.read_sentinel2(from_json, READ_BANDS)
  b = raster_io.read_sentinel2(from_toml, READ_BANDS)
  for x, y in zip(a[:2], b[:2]):
    np.testing.assert_array_equal(x, y)
  assert a[2] == b[2]
  np.testing.assert_array_equal(b[0], values[CHIP_INDEX].astype(np.float32))

