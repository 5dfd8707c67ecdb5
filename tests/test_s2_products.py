"""Sentinel-2 SAFE products, DEM tiles and areas of interest through the whole input path (prepare's
`load_scene` and predict's block reads): the same reflectance gives the same scene from a GeoTIFF stack,
a baseline 02.14 product and a baseline 05.10 product; SCL classes land in the validity mask exactly;
a DEM cut into tiles gives the slope of the uncut DEM; an AOI cuts the scene to its window.

Products come from tests/safe_fixtures.py (real folder layout, JPEG2000 bands, MTD XML).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
import shapely
from rasterio.transform import from_origin

from landslide_jax import constants
from landslide_jax.data import scene as scene_lib, site_inputs
from landslide_jax.errors import InputError
from tests import safe_fixtures
from tests.conftest import write_polygons

CRS = "EPSG:32651"
ORIGIN = (300_000.0, 2_500_020.0)
SHAPE = (60, 60)  # 10 m pixels; 20 m bands 30 x 30, 60 m bands 10 x 10
CHANNELS = ("B2", "B3", "B4", "B8", "B11", "slope")


def _reflectance(seed: int = 0) -> dict[str, np.ndarray]:
  """Smooth-ish reflectance per band at its native resolution."""
  rng = np.random.default_rng(seed)
  out = {}
  for band, (_, res) in constants.SENTINEL2_BANDS.items():
    if band == "B10":
      continue
    n = SHAPE[0] * 10 // res
    out[band] = (0.02 + 0.3 * rng.random((n, n))).astype(np.float32)
  return out


def _write_dem(path: Path, west: float, north: float, cols: int, rows: int, res: float = 30.0,
               crs: str = CRS) -> np.ndarray:
  x = west + (np.arange(cols) + 0.5) * res
  y = north - (np.arange(rows) + 0.5) * res
  dem = (800 + 0.2 * (x[None, :] - ORIGIN[0]) + 0.1 * (y[:, None] - ORIGIN[1])
         + 40 * np.sin(x[None, :] / 300.0) * np.cos(y[:, None] / 250.0)).astype(np.float32)
  with rasterio.open(path, "w", driver="GTiff", height=rows, width=cols, count=1, dtype="float32",
                     crs=crs, transform=from_origin(west, north, res, res)) as dst:
    dst.write(dem, 1)
  return dem


def _site(root: Path, name: str, manifest: dict, dem: bool = True) -> Path:
  site = root / name
  site.mkdir(parents=True, exist_ok=True)
  if dem:
    _write_dem(site / "dem.tif", ORIGIN[0] - 90, ORIGIN[1] + 90, 26, 26)
    manifest = {"dem": "dem.tif", **manifest}
  x0, y0 = ORIGIN
  write_polygons(site / "inventory.gpkg", [shapely.box(x0 + 100, y0 - 300, x0 + 200, y0 - 100)], crs=CRS)
  (site / "manifest.json").write_text(json.dumps({"inventory": "inventory.gpkg", **manifest}))
  return site


def _stack(site: Path, reflectance: dict[str, np.ndarray]) -> None:
  """The reflectance as a GeoTIFF stack in DN (10000 x reflectance), 20 m bands resampled by GDAL."""
  bands = ("B2", "B3", "B4", "B8")
  data = np.stack([np.round(reflectance[b] * 10000) for b in bands]).astype(np.uint16)
  with rasterio.open(site / "s2.tif", "w", driver="GTiff", height=SHAPE[0], width=SHAPE[1],
                     count=len(bands), dtype="uint16", crs=CRS, transform=from_origin(*ORIGIN, 10, 10),
                     nodata=0) as dst:
    dst.write(data)
    for i, b in enumerate(bands, start=1):
      dst.set_band_description(i, b)


@pytest.fixture(scope="module")
def products(tmp_path_factory):
  """One reflectance as a GeoTIFF stack and as products of baselines 02.14 and 05.10, L1C and L2A."""
  root = tmp_path_factory.mktemp("s2_products")
  refl = _reflectance()
  scl = np.full((SHAPE[0] // 2, SHAPE[1] // 2), 4, np.uint8)  # vegetation
  for k, cls in enumerate(range(12)):
    scl[k, :] = cls  # one row per class
  made = {}
  for level in ("L1C", "L2A"):
    for baseline in ("02.14", "05.10"):
      for as_zip in (False, True):
        key = f"{level}-{baseline}-{'zip' if as_zip else 'dir'}"
        folder = root / "products" / key
        folder.mkdir(parents=True)
        made[key] = safe_fixtures.make_safe_product(
            folder, refl, level=level, baseline=baseline, crs=CRS, origin=ORIGIN,
            scl=scl if level == "L2A" else None, as_zip=as_zip)
  return root, refl, scl, made


def _scene(root: Path, name: str, manifest: dict, channels=CHANNELS) -> scene_lib.Scene:
  return scene_lib.load_scene(_site(root, name, manifest), channels, name)


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_same_reflectance_same_scene_from_stack_and_both_baselines(products, level):
  root, refl, _, made = products
  stack_site = _site(root, f"stack-{level}", {"sentinel2": "s2.tif", "s2_units": "dn"})
  _stack(stack_site, refl)
  stack = scene_lib.load_scene(stack_site, ("B2", "B3", "B4", "B8", "slope"), "stack")
  scenes = {}
  for baseline in ("02.14", "05.10"):
    for form in ("dir", "zip"):
      product = made[f"{level}-{baseline}-{form}"]
      site = _site(root, f"{level}-{baseline}-{form}", {"sentinel2": str(product)},)
      # No SCL masking here: only the radiometry is compared.
      if level == "L2A":
        manifest = json.loads((site / "manifest.json").read_text())
        (site / "manifest.json").write_text(json.dumps({**manifest, "scl_mask_classes": []}))
      scenes[baseline, form] = scene_lib.load_scene(site, CHANNELS, "p")
  old, new = scenes["02.14", "dir"], scenes["05.10", "zip"]
  assert old.grid == stack.grid == new.grid
  # Baseline 05.10 stores DN + 1000 and says BOA/RADIO_ADD_OFFSET = -1000: same DN after reading.
  np.testing.assert_allclose(new.image, old.image, atol=1.0)
  np.testing.assert_array_equal(scenes["05.10", "dir"].image, new.image)
  np.testing.assert_array_equal(scenes["02.14", "zip"].image, old.image)
  np.testing.assert_allclose(old.image[:4], stack.image[:4], atol=1.0)   # B2..B8 equal the stack
  np.testing.assert_allclose(old.image[5], stack.image[4], atol=1e-4)    # slope from the same DEM
  assert new.s2_add_offset["B2"] == -1000.0 and old.s2_add_offset["B2"] == 0.0
  assert new.valid.all() and old.valid.all()
  # B11 (20 m) is resampled bilinearly onto the 10 m grid: a numpy bilinear interpolation of the 20 m
  # values at the 10 m pixel centres (a quarter of a 20 m pixel off its centres), away from the edges.
  b11 = np.round(refl["B11"] * 10000)
  pos = np.arange(SHAPE[0]) / 2 - 0.25
  k0 = np.floor(pos).astype(int)
  t = pos - k0
  inner = slice(2, -2)
  k0, t = k0[inner], t[inner]
  rows = (1 - t)[:, None] * b11[k0] + t[:, None] * b11[k0 + 1]
  expected = (1 - t)[None, :] * rows[:, k0] + t[None, :] * rows[:, k0 + 1]
  np.testing.assert_allclose(old.image[4][inner, inner], expected, atol=0.01)


def test_scl_classes_land_in_the_mask_exactly(products):
  root, _, scl, made = products
  scl10 = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)
  default = _scene(root, "scl-default", {"sentinel2": str(made["L2A-05.10-dir"])}, ("B2", "slope"))
  np.testing.assert_array_equal(default.valid, ~np.isin(scl10, [0, 1, 3, 8, 9, 10]))
  only_clouds = _scene(root, "scl-clouds", {"sentinel2": str(made["L2A-05.10-zip"]),
                                            "scl_mask_classes": [8, 9]}, ("B2", "slope"))
  np.testing.assert_array_equal(only_clouds.valid, ~np.isin(scl10, [8, 9]))
  # L1C has no SCL: nothing is masked.
  l1c = _scene(root, "scl-l1c", {"sentinel2": str(made["L1C-05.10-dir"])}, ("B2", "slope"))
  assert l1c.valid.all()


def test_dem_tiles_give_the_slope_of_the_uncut_dem(products, tmp_path):
  root, _, _, made = products
  whole = _scene(root, "dem-whole", {"sentinel2": str(made["L1C-02.14-dir"])}, ("B2", "slope"))
  site = _site(tmp_path, "dem-tiles", {"sentinel2": str(made["L1C-02.14-dir"]), "dem": "tiles"},
               dem=False)
  (site / "tiles").mkdir()
  with rasterio.open(root / "dem-whole" / "dem.tif") as src:
    dem, transform = src.read(1), src.transform
  for i, (r0, c0) in enumerate([(0, 0), (0, 13), (13, 0), (13, 13)]):
    part = dem[r0:r0 + 13, c0:c0 + 13]
    with rasterio.open(site / "tiles" / f"tile_{i}.tif", "w", driver="GTiff", height=13, width=13,
                       count=1, dtype="float32", crs=CRS,
                       transform=transform @ rasterio.Affine.translation(c0, r0)) as dst:
      dst.write(part, 1)
  tiled = scene_lib.load_scene(site, ("B2", "slope"), "tiles")
  np.testing.assert_allclose(tiled.image[1], whole.image[1], atol=1e-3)
  # A missing tile leaves a hole in the scene: one line, not NaN slopes.
  (site / "tiles" / "tile_3.tif").unlink()
  with pytest.raises(InputError, match="DEM"):
    scene_lib.load_scene(site, ("B2", "slope"), "tiles")


def test_aoi_cuts_the_scene_to_its_window(products, tmp_path):
  root, _, _, made = products
  product = str(made["L2A-05.10-zip"])
  whole = _scene(root, "aoi-whole", {"sentinel2": product, "scl_mask_classes": []}, ("B2", "B11", "slope"))
  site = _site(tmp_path, "aoi", {"sentinel2": product, "scl_mask_classes": [], "aoi": "aoi.geojson"})
  x0, y0 = ORIGIN
  # Rows 10..39, columns 5..44 of the 60 x 60 scene; the bounding box edges fall inside pixels.
  triangle = shapely.Polygon([(x0 + 53, y0 - 103), (x0 + 447, y0 - 103), (x0 + 53, y0 - 397)])
  write_polygons(site / "aoi.geojson", [triangle], crs=CRS, driver="GeoJSON")
  cut = scene_lib.load_scene(site, ("B2", "B11", "slope"), "aoi")
  assert cut.grid.shape == (30, 40)
  assert cut.grid.transform == whole.grid.transform @ rasterio.Affine.translation(5, 10)
  inside = cut.valid
  np.testing.assert_allclose(cut.image[:, inside], whole.image[:, 10:40, 5:45][:, inside], atol=1e-3)
  # Pixels outside the triangle are not part of the study area.
  rows, cols = np.mgrid[0:30, 0:40]
  x = x0 + (cols + 5 + 0.5) * 10
  y = y0 - (rows + 10 + 0.5) * 10
  expected = shapely.contains_xy(triangle, x, y)
  np.testing.assert_array_equal(inside, expected)
  # An AOI off the tile is one line.
  write_polygons(site / "aoi.geojson", [shapely.box(x0 + 5000, y0 - 5000, x0 + 6000, y0 - 4000)],
                 crs=CRS, driver="GeoJSON")
  with pytest.raises(InputError, match="outside the Sentinel-2 scene") as err:
    scene_lib.load_scene(site, ("B2", "slope"), "aoi")
  assert err.value.path.endswith("aoi.geojson")


def test_safe_manifest_refuses_keys_the_metadata_answers(products, tmp_path):
  _, _, _, made = products
  site = _site(tmp_path, "clash", {"sentinel2": str(made["L1C-05.10-dir"]), "s2_add_offset": -1000})
  with pytest.raises(InputError, match="s2_add_offset given for SAFE products"):
    site_inputs.find_site_inputs(site)


def test_products_found_by_name_in_a_site_folder(products, tmp_path):
  _, _, _, made = products
  import shutil
  site = _site(tmp_path, "byname", {})
  shutil.copy(made["L2A-05.10-zip"], site / made["L2A-05.10-zip"].name)
  inputs = site_inputs.find_site_inputs(site)
  assert [p.name for p in inputs.s2_products] == [made["L2A-05.10-zip"].name]
  assert inputs.s2_units == "dn" and inputs.s2_add_offset["B2"] == -1000.0


def test_products_mosaic_first_valid_pixel_wins(tmp_path):
  # Two products on one grid: the first has no data in its west half (outside its swath), the second
  # (another date, other values) fills it. The first product's pixels win where both have data.
  first_refl, second_refl = _reflectance(1), _reflectance(2)
  west = np.zeros(SHAPE, bool)
  west[:, :30] = True
  products_dir = tmp_path / "products"
  (products_dir / "a").mkdir(parents=True)
  (products_dir / "b").mkdir()
  first = safe_fixtures.make_safe_product(products_dir / "a", first_refl, level="L1C", baseline="05.10",
                                          crs=CRS, origin=ORIGIN, nodata_mask=west)
  second = safe_fixtures.make_safe_product(products_dir / "b", second_refl, level="L1C", baseline="02.14",
                                           crs=CRS, origin=ORIGIN, sensing="20230825T022529")
  mosaic = _scene(tmp_path, "mosaic", {"sentinel2": [str(first), str(second)]}, ("B2", "B8", "slope"))
  assert mosaic.valid.all()
  for i, band in enumerate(("B2", "B8")):
    expected = np.where(west, np.round(second_refl[band] * 10000), np.round(first_refl[band] * 10000))
    np.testing.assert_allclose(mosaic.image[i], expected, atol=1.0)  # rounding of the stored DN
  alone = _scene(tmp_path, "alone", {"sentinel2": str(first)}, ("B2", "slope"))
  np.testing.assert_array_equal(alone.valid, ~west)


def test_band_missing_from_the_product_is_one_line(tmp_path):
  refl = {b: v for b, v in _reflectance().items() if b != "B8"}
  (tmp_path / "p").mkdir()
  product = safe_fixtures.make_safe_product(tmp_path / "p", refl, level="L2A", baseline="05.10", crs=CRS,
                                            origin=ORIGIN)
  with pytest.raises(InputError, match="has no band B8") as err:
    _scene(tmp_path, "nob8", {"sentinel2": str(product)}, ("B2", "B8", "slope"))
  assert err.value.path == str(product)


def test_a_product_in_another_utm_zone_is_reprojected_into_the_mosaic(tmp_path):
  # A study area on a zone border: the second product is on the neighbouring zone's grid. A constant
  # reflectance per band is a known answer whatever the resampling, so the west half must read exactly
  # that constant (within the stored DN's rounding), with the second product's own offsets applied.
  first_refl = _reflectance(1)
  west = np.zeros(SHAPE, bool)
  west[:, :30] = True
  other_crs = "EPSG:32650"
  corners = rasterio.warp.transform(CRS, other_crs, [ORIGIN[0], ORIGIN[0] + 600.0],
                                    [ORIGIN[1], ORIGIN[1] - 600.0])
  # 1.2 km of margin on the other grid (the scene is rotated by the zone change), snapped to 60 m.
  x0 = np.floor((min(corners[0]) - 1200) / 60) * 60
  y0 = np.ceil((max(corners[1]) + 1200) / 60) * 60
  n = 300  # 10 m pixels: 3 km on the other grid
  constant = {"B2": 0.0312, "B8": 0.2871}
  second_refl = {b: np.full((n, n), v, np.float32) for b, v in constant.items()}
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  first = safe_fixtures.make_safe_product(tmp_path / "a", first_refl, level="L1C", baseline="02.14",
                                          crs=CRS, origin=ORIGIN, nodata_mask=west)
  second = safe_fixtures.make_safe_product(tmp_path / "b", second_refl, level="L1C", baseline="05.10",
                                           crs=other_crs, origin=(x0, y0), tile="T50QRL")
  mosaic = _scene(tmp_path, "zones", {"sentinel2": [str(first), str(second)]}, ("B2", "B8", "slope"))
  assert mosaic.valid.all()
  assert mosaic.grid.crs == rasterio.crs.CRS.from_string(CRS)  # the first product's grid
  for i, band in enumerate(("B2", "B8")):
    np.testing.assert_allclose(mosaic.image[i][west], constant[band] * 10000, atol=1.0)
    np.testing.assert_allclose(mosaic.image[i][~west], np.round(first_refl[band] * 10000)[~west], atol=1.0)
