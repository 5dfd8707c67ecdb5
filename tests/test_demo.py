"""Tests of the synthetic demo scene generator (landslide_jax/data/demo.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import rasterio.transform
import rasterio.warp
import shapely
import shapely.geometry

from landslide_jax import constants
from landslide_jax.data import demo
from landslide_jax.errors import InputError

# Small scenes keep each test at a few seconds; the behaviour checked does not depend on size.
SCALE = 0.03

MANIFEST_KEYS = {"sentinel2", "bands", "s2_units", "dem", "inventory", "nodata_mask", "source",
                 "description"}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
  """All three sites written once at SCALE, seed 0."""
  root = tmp_path_factory.mktemp("demo")
  demo.write_demo_sites(root, scale=SCALE, seed=0)
  return root


@pytest.fixture(scope="module")
def arrays():
  """In-memory scenes of all sites at a scale large enough for stable statistics."""
  return {site: demo.generate_demo_arrays(site, 0.05, 0) for site in constants.SITE_NAMES}


def _read_all(site_dir):
  out = {}
  for name in (demo.S2_FILE, demo.DEM_FILE, demo.CLOUD_MASK_FILE):
    with rasterio.open(site_dir / name) as src:
      out[name] = src.read()
  _, _, geometry, fields = pyogrio.raw.read(site_dir / demo.INVENTORY_FILE)
  out["geometry"] = list(geometry)
  out["fields"] = [list(f) for f in fields]
  return out


def _slope(dem):
  gy, gx = np.gradient(dem.astype(np.float64), 10.0)
  return np.degrees(np.arctan(np.hypot(gx, gy)))


def _ndvi(s2):
  red, nir = s2[2].astype(np.float64), s2[3].astype(np.float64)
  return (nir - red) / np.maximum(nir + red, 1.0)


def test_demo_shape_scales_area_and_keeps_a_minimum():
  assert demo.demo_shape("taiwan") == constants.SITES["taiwan"].demo_shape
  rows, cols = constants.SITES["japan"].demo_shape
  assert demo.demo_shape("japan", 0.25) == (round(rows / 2), round(cols / 2))
  assert demo.demo_shape("china", 1e-6) == (64, 64)
  with pytest.raises(InputError, match="unknown demo site"):
    demo.demo_shape("atlantis")
  for bad in (0.0, -1.0, float("nan")):
    with pytest.raises(InputError, match="scale"):
      demo.demo_shape("china", bad)


def test_same_inputs_give_identical_files_and_another_seed_differs(tmp_path):
  first = _read_all(demo.write_demo_site("china", tmp_path / "a", scale=SCALE, seed=3))
  second = _read_all(demo.write_demo_site("china", tmp_path / "b", scale=SCALE, seed=3))
  other = _read_all(demo.write_demo_site("china", tmp_path / "c", scale=SCALE, seed=4))
  for key in (demo.S2_FILE, demo.DEM_FILE, demo.CLOUD_MASK_FILE):
    np.testing.assert_array_equal(first[key], second[key])
  assert first["geometry"] == second["geometry"]
  assert first["fields"][1] == second["fields"][1]
  assert not np.array_equal(first[demo.S2_FILE], other[demo.S2_FILE])
  assert not np.array_equal(first[demo.DEM_FILE], other[demo.DEM_FILE])
  assert first["geometry"] != other["geometry"]


def test_generate_is_deterministic_and_sites_differ():
  a = demo.generate_demo_arrays("japan", SCALE, 7)
  b = demo.generate_demo_arrays("japan", SCALE, 7)
  for field in ("s2", "dem_10m", "landslide", "cloud_mask", "land_cover", "dem"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert a.transform == b.transform


@pytest.mark.parametrize("site", constants.SITE_NAMES)
def test_files_are_georeferenced_as_specified(demo_root, site):
  info = constants.SITES[site]
  site_dir = demo_root / site
  assert sorted(p.name for p in site_dir.iterdir()) == sorted(demo.DEMO_FILES)
  with rasterio.open(site_dir / demo.S2_FILE) as s2:
    assert s2.count == 4 and s2.dtypes == ("uint16",) * 4
    assert s2.nodata == 0
    assert s2.descriptions == ("B02", "B03", "B04", "B08")
    assert s2.crs == rasterio.crs.CRS.from_epsg(info.epsg)
    assert s2.res == (10.0, 10.0)
    t = s2.transform
    assert t.b == 0 and t.d == 0 and t.e < 0   # north-up
    assert s2.compression is not None and s2.compression.value == "LZW"
    assert s2.profile["tiled"]
    assert s2.shape == demo.demo_shape(site, SCALE)
    scene_bounds, scene_shape, scene_transform = s2.bounds, s2.shape, s2.transform
    data = s2.read()
    assert data.max() > 1000   # DNs, not reflectance
    # The scene centre is the site's position (within a pixel or two after snapping the origin).
    cx, cy = scene_transform @ (scene_shape[1] / 2, scene_shape[0] / 2)
    (lon,), (lat,) = rasterio.warp.transform(s2.crs, "EPSG:4326", [cx], [cy])
    assert abs(lon - info.lon) < 5e-4 and abs(lat - info.lat) < 5e-4
  with rasterio.open(site_dir / demo.CLOUD_MASK_FILE) as mask:
    assert mask.dtypes == ("uint8",) and mask.count == 1
    assert mask.crs == rasterio.crs.CRS.from_epsg(info.epsg)
    assert mask.transform == scene_transform and mask.shape == scene_shape
    assert set(np.unique(mask.read(1))) <= {0, 1}
  with rasterio.open(site_dir / demo.DEM_FILE) as dem:
    assert dem.crs == rasterio.crs.CRS.from_epsg(4326)
    assert dem.dtypes == ("float32",)
    assert dem.res == pytest.approx((1 / 3600, 1 / 3600))
    assert dem.transform.b == 0 and dem.transform.d == 0
    lon0, lat0, lon1, lat1 = rasterio.warp.transform_bounds(s2.crs, "EPSG:4326", *scene_bounds,
                                                            densify_pts=51)
    margin = 5 / 3600
    assert dem.bounds.left <= lon0 - margin and dem.bounds.right >= lon1 + margin
    assert dem.bounds.bottom <= lat0 - margin and dem.bounds.top >= lat1 + margin
    elevation = dem.read(1)
    assert np.all(np.isfinite(elevation)) and not np.any(elevation == dem.nodata)
  manifest = json.loads((site_dir / demo.MANIFEST_FILE).read_text())
  assert set(manifest) == MANIFEST_KEYS
  assert manifest["bands"] == ["B2", "B3", "B4", "B8"]
  assert manifest["s2_units"] == "dn"
  assert manifest["source"] == constants.SOURCE_DEMO
  assert (manifest["sentinel2"], manifest["dem"], manifest["inventory"], manifest["nodata_mask"]) == (
      "s2.tif", "dem.tif", "inventory.gpkg", "cloud_mask.tif")
  assert "SYNTHETIC" in manifest["description"] and info.title in manifest["description"]
  assert "seed=0" in manifest["description"] and f"scale={SCALE!r}" in manifest["description"]
  assert "\n" not in manifest["description"]


def test_dem_file_matches_the_terrain(demo_root):
  """The geographic DEM, resampled back to the scene grid, is the generated 10 m terrain."""
  arrays = demo.generate_demo_arrays("taiwan", SCALE, 0)
  with rasterio.open(demo_root / "taiwan" / demo.DEM_FILE) as src:
    back = np.zeros(arrays.dem_10m.shape, np.float32)
    rasterio.warp.reproject(src.read(1), back, src_transform=src.transform, src_crs=src.crs,
                            dst_transform=arrays.transform, dst_crs=arrays.crs,
                            resampling=rasterio.enums.Resampling.bilinear)
  diff = np.abs(back - arrays.dem_10m)
  # A 30 m DEM smooths 10 m detail, but not by more than a fraction of the local relief.
  assert np.median(diff) < 15.0
  assert np.corrcoef(back.ravel(), arrays.dem_10m.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("site", constants.SITE_NAMES)
def test_inventory_rasterises_back_to_the_landslide_raster(demo_root, site):
  arrays = demo.generate_demo_arrays(site, SCALE, 0)
  meta, _, geometry, fields = pyogrio.raw.read(demo_root / site / demo.INVENTORY_FILE)
  assert meta["crs"] == "EPSG:4326"
  assert list(meta["fields"]) == ["id", "area_m2"]
  assert meta["geometry_type"] in ("Polygon", "MultiPolygon")
  assert len(geometry) > 0
  shapes = [shapely.geometry.mapping(g) for g in shapely.from_wkb(geometry)]
  # Coordinates are longitude/latitude near the site, not metres.
  lon, lat = shapes[0]["coordinates"][0][0]
  assert abs(lon - constants.SITES[site].lon) < 0.5 and abs(lat - constants.SITES[site].lat) < 0.5
  projected = rasterio.warp.transform_geom("EPSG:4326", arrays.crs, shapes)
  raster = rasterio.features.rasterize(
      ((g, 1) for g in projected), out_shape=arrays.landslide.shape, transform=arrays.transform,
      all_touched=False, dtype="uint8").astype(bool)
  mismatch = np.count_nonzero(raster != arrays.landslide)
  assert mismatch <= 0.01 * np.count_nonzero(arrays.landslide)
  ids, areas = fields
  assert list(ids) == list(range(1, len(geometry) + 1))
  assert areas.sum() == pytest.approx(100.0 * arrays.landslide.sum(), rel=1e-6)


@pytest.mark.parametrize("site", constants.SITE_NAMES)
def test_landslides_are_steep_and_bare(arrays, site):
  a = arrays[site]
  slope = _slope(a.dem_10m)
  assert slope[a.landslide].mean() > slope.mean() + 3.0
  assert np.median(slope[a.landslide]) > np.median(slope)
  valid = (a.cloud_mask == 0) & np.all(a.s2 > 0, axis=0)
  ndvi = _ndvi(a.s2)
  vegetated = np.isin(a.land_cover, [demo.LAND_COVER.index(n) for n in demo.VEGETATED]) & valid
  assert ndvi[a.landslide & valid].mean() < ndvi[vegetated].mean() - 0.3
  # Confounders exist: some non-landslide pixels are as bare as landslides.
  bare = (ndvi < np.percentile(ndvi[a.landslide & valid], 75)) & valid & ~a.landslide
  assert bare.sum() > 0.2 * (a.landslide & valid).sum()


def test_sites_differ_in_relief_and_landslide_share(arrays):
  share = {site: float(a.landslide.mean()) for site, a in arrays.items()}
  for value in share.values():
    assert 0.015 < value < 0.1
  assert share["japan"] > share["taiwan"] > share["china"]
  elev = {site: a.dem_10m for site, a in arrays.items()}
  assert elev["china"].min() > 1500 and elev["china"].max() > elev["taiwan"].max()
  assert elev["japan"].max() < 500
  slope = {site: _slope(a.dem_10m).mean() for site, a in arrays.items()}
  assert slope["china"] > slope["taiwan"] > slope["japan"]


def test_cloud_mask_covers_clouds_and_shadows_only(arrays):
  a = arrays["taiwan"]
  mask = a.cloud_mask.astype(bool)
  assert 0.002 < mask.mean() < 0.1
  blue = a.s2[0].astype(np.float64)
  clear_median = np.median(blue[~mask & (a.s2[0] > 0)])
  # Thick clouds are bright, shadows dark, and most clear pixels are neither.
  assert np.mean(blue[mask] > 3000) > 0.2
  assert np.mean(blue[mask] < 0.6 * clear_median) > 0.05
  assert np.mean(blue[~mask] > 3000) < 0.01


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
  def broken(arrays, folder, *args):
    (folder / demo.S2_FILE).write_bytes(b"partial")
    raise RuntimeError("disk full")

  monkeypatch.setattr(demo, "_write_site_files", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    demo.write_demo_site("china", tmp_path, scale=SCALE)
  assert list(tmp_path.iterdir()) == []   # no site folder, no temporary leftovers


def test_cached_site_is_returned_without_rewriting(tmp_path, monkeypatch):
  site_dir = demo.write_demo_site("china", tmp_path, scale=SCALE, seed=1)
  stamp = {p.name: p.stat().st_mtime_ns for p in site_dir.iterdir()}

  def fail(*args, **kwargs):
    raise AssertionError("regenerated a cached site")

  with monkeypatch.context() as patch:
    patch.setattr(demo, "generate_demo_arrays", fail)
    assert demo.write_demo_site("china", tmp_path, scale=SCALE, seed=1) == site_dir
  assert {p.name: p.stat().st_mtime_ns for p in site_dir.iterdir()} == stamp
  # Another seed replaces the folder, leaving nothing else behind.
  demo.write_demo_site("china", tmp_path, scale=SCALE, seed=2)
  assert "seed=2" in json.loads((site_dir / demo.MANIFEST_FILE).read_text())["description"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["china"]
  # A folder with a file missing is not taken from the cache.
  (site_dir / demo.DEM_FILE).unlink()
  demo.write_demo_site("china", tmp_path, scale=SCALE, seed=2)
  assert (site_dir / demo.DEM_FILE).is_file()


def test_never_overwrites_a_folder_that_is_not_a_demo(tmp_path):
  real = tmp_path / "japan"
  real.mkdir()
  (real / "manifest.json").write_text(json.dumps({"source": "real", "dem": "dem.tif"}))
  with pytest.raises(InputError, match="not a synthetic demo"):
    demo.write_demo_site("japan", tmp_path, scale=SCALE)
  assert json.loads((real / "manifest.json").read_text())["source"] == "real"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["japan"]


def test_write_demo_sites_returns_every_site(demo_root):
  out = demo.write_demo_sites(demo_root, scale=SCALE, seed=0)   # cached from the fixture
  assert set(out) == set(constants.SITE_NAMES)
  assert all(out[site] == demo_root / site for site in out)
  with pytest.raises(InputError):
    demo.write_demo_sites(demo_root, sites=("taiwan", "mars"), scale=SCALE)


def test_reader_accepts_the_demo_folder(demo_root):
  site_inputs = pytest.importorskip("landslide_jax.data.site_inputs")
  found = site_inputs.find_site_inputs(demo_root / "taiwan")
  assert found.source == constants.SOURCE_DEMO
  assert found.bands == constants.PAPER_BANDS
  assert found.s2_units == "dn"
  assert found.nodata_mask is not None and found.nodata_mask.name == demo.CLOUD_MASK_FILE


def test_japan_has_a_swath_edge_of_nodata():
  a = demo.generate_demo_arrays("japan", SCALE, 0)
  nodata = np.all(a.s2 == 0, axis=0)
  assert 0.005 < nodata.mean() < 0.05
  assert np.all((a.s2 == 0) == nodata[None])   # all bands or none
  assert not np.any(demo.generate_demo_arrays("china", SCALE, 0).s2 == 0)
  assert math.isclose(float(np.any(a.s2 == 0, axis=0).mean()), float(nodata.mean()))
