"""Tests of scene mapping (landslide_jax/predict.py, launch/predict.py).

One run (China, 32 px, U-Net, 12 epochs on the learnable sites of tests/run_fixtures.py: test F1 ~0.9,
with false positives and negatives) is shared by the module and loaded once; most tests call
`predict_probabilities` with it directly, so the U-Net is compiled once per batch shape.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.crs
import rasterio.transform
import rasterio.warp
import rasterio.windows
import shapely
from scipy import ndimage
from sklearn import metrics as skm

from landslide_jax import evaluate, input_pipeline, predict
from landslide_jax.data import raster_io, scene as scene_lib
from landslide_jax.errors import InputError
from tests import conftest, run_fixtures, safe_fixtures
from tests.conftest import ROOT

MAX_EPOCHS = 12
PATCH = run_fixtures.PATCH
PIXEL_AREA_M2 = 100.0  # the fixture's 10 m grid
SUBPROCESS_TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class Env:
  root: Path
  raw: Path
  data_dir: Path
  workdir: Path
  run: evaluate.Run


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  with run_fixtures.learnable_module_env(tmp_path_factory, "predict") as (root, raw, data_dir, _):
    workdir = root / "run"
    run_fixtures.train_run(raw, data_dir, workdir, MAX_EPOCHS)
    yield Env(root, raw, data_dir, workdir, evaluate.load_run(workdir))


@pytest.fixture(scope="module")
def china_map(env):
  """`predict_scene` on the China site's manifest with the default options, all polygons kept."""
  out = env.root / "china_map"
  written = predict.predict_scene(env.workdir, env.raw / "china" / "manifest.json", None, out,
                                  min_area_m2=0.0)
  return out, written


def _read(path: Path) -> tuple[np.ndarray, dict]:
  with rasterio.open(path) as src:
    return src.read(1), {"crs": src.crs, "transform": src.transform, "shape": src.shape,
                         "dtype": src.dtypes[0], "nodata": src.nodata, "count": src.count}


def _scene_grid(s2: Path) -> dict:
  with rasterio.open(s2) as src:
    return {"crs": src.crs, "transform": src.transform, "shape": src.shape}


def _write_s2_like(src_path: Path, dst_path: Path, window: rasterio.windows.Window | None = None,
                   bands: tuple[int, ...] | None = None, descriptions: bool = True) -> Path:
  """A copy of a site's S2 GeoTIFF: a window of it, some of its bands, with or without descriptions."""
  with rasterio.open(src_path) as src:
    bands = bands or tuple(range(1, src.count + 1))
    window = window or rasterio.windows.Window(0, 0, src.width, src.height)
    data = src.read(list(bands), window=window)
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=len(bands),
                   dtype=data.dtype, crs=src.crs, transform=src.window_transform(window),
                   nodata=src.nodata)
    names = [src.descriptions[b - 1] for b in bands]
  with rasterio.open(dst_path, "w", **profile) as dst:
    dst.write(data)
    if descriptions:
      for i, name in enumerate(names, start=1):
        dst.set_band_description(i, name)
  return dst_path


def _assert_nothing_written(out: Path) -> None:
  # Hidden temporary GeoTIFFs count too: listdir shows dot files.
  leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
  assert leftovers == [], leftovers


# ----------------------------------------------------------------------------------------------------------
# Window weights and origins


def test_blend_weights_known_values():
  s1, s3 = np.sin(np.pi / 8) ** 2, np.sin(3 * np.pi / 8) ** 2
  np.testing.assert_allclose(predict.blend_weights(4, "cosine"), np.outer([s1, s3, s3, s1], [s1, s3, s3, s1]),
                             rtol=1e-6)
  np.testing.assert_allclose(predict.blend_weights(4, "triangular"),
                             np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]), rtol=1e-6)
  np.testing.assert_allclose(predict.blend_weights(3, "triangular"),
                             np.outer([1 / 3, 1, 1 / 3], [1 / 3, 1, 1 / 3]), rtol=1e-6)


@pytest.mark.parametrize("kind", predict.BLENDS)
@pytest.mark.parametrize("patch", [1, 7, 32])
def test_blend_weights_symmetric_and_positive(kind, patch):
  w = predict.blend_weights(patch, kind)
  assert w.shape == (patch, patch) and w.dtype == np.float32
  assert (w > 0).all() and w.max() <= 1.0
  np.testing.assert_array_equal(w, w.T)
  np.testing.assert_array_equal(w, w[::-1])
  np.testing.assert_array_equal(w, w[:, ::-1])
  centre = (patch - 1) // 2
  assert w[centre, centre] == w.max() and w[0, 0] == w.min()


def test_blend_weights_unknown_kind():
  with pytest.raises(ValueError, match="unknown blend 'gaussian'"):
    predict.blend_weights(8, "gaussian")


@pytest.mark.parametrize("length, patch, stride, expected", [
    (8, 4, 4, [0, 4]),
    (10, 4, 4, [0, 4, 6]),      # the last window is flush with the end
    (9, 4, 2, [0, 2, 4, 5]),
    (4, 4, 2, [0]),
    (64, 32, 16, [0, 16, 32]),
    (100, 32, 32, [0, 32, 64, 68]),
])
def test_window_origins_known_answers(length, patch, stride, expected):
  origins = predict.window_origins(length, patch, stride)
  assert origins.tolist() == expected
  covered = np.zeros(length, bool)
  for o in origins:
    covered[o:o + patch] = True
  assert covered.all()


def test_window_origins_side_shorter_than_patch():
  with pytest.raises(ValueError, match="smaller than the 32 px window"):
    predict.window_origins(31, 32, 16)


# ----------------------------------------------------------------------------------------------------------
# Outputs on a scene


def test_outputs_have_the_scene_grid(env, china_map):
  out, written = china_map
  grid = _scene_grid(env.raw / "china" / "s2.tif")
  prob, prob_meta = _read(out / "probability.tif")
  binary, binary_meta = _read(out / "landslides.tif")
  assert written["probability"] == str(out / "probability.tif")
  assert prob_meta == {**grid, "dtype": "float32", "nodata": -1.0, "count": 1}
  assert binary_meta == {**grid, "dtype": "uint8", "nodata": 255, "count": 1}
  assert ((prob >= 0) & (prob <= 1)).all()  # every pixel of the fixture is valid
  np.testing.assert_array_equal(binary, (prob > 0.5).astype(np.uint8))
  assert written["threshold"] == 0.5
  assert sorted(p.name for p in out.iterdir()) == ["landslides.geojson", "landslides.tif",
                                                   "probability.tif"]
  for name in ("probability.tif", "landslides.tif"):  # Cloud-Optimized GeoTIFFs, for QGIS
    with rasterio.open(out / name) as src:
      assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
      assert src.profile["compress"] == "deflate"


def test_default_min_area_is_the_mapping_unit(tmp_path):
  # Regions of 9, 10 and 11 pixels of 100 m2: the default keeps 1000 m2 and more.
  import inspect  # pylint: disable=import-outside-toplevel
  from launch import predict as launch_predict  # pylint: disable=import-outside-toplevel
  assert predict.DEFAULT_MIN_AREA_M2 == 1000.0
  assert inspect.signature(predict.predict_scene).parameters["min_area_m2"].default == 1000.0
  assert launch_predict._MIN_AREA.default == 1000.0  # pylint: disable=protected-access
  binary = np.zeros((20, 40), np.uint8)
  binary[2, 0:9] = binary[6, 0:10] = binary[10, 0:11] = 1
  grid = raster_io.Grid(rasterio.crs.CRS.from_user_input(conftest.SITE_CRS),
                        rasterio.transform.from_origin(*conftest.ORIGIN, 10, 10), binary.shape)
  raster_io.write_geotiff(tmp_path / "l.tif", binary, grid, nodata=255)
  raster_io.write_geotiff(tmp_path / "p.tif", binary.astype(np.float32), grid, nodata=-1.0)
  features = predict.landslide_polygons(tmp_path / "l.tif", tmp_path / "p.tif", predict.DEFAULT_MIN_AREA_M2)
  assert sorted(f["properties"]["area_m2"] for f in features) == [1000.0, 1100.0]


def test_geojson_polygons_match_the_landslide_pixels(env, china_map):
  out, written = china_map
  binary, meta = _read(out / "landslides.tif")
  prob, _ = _read(out / "probability.tif")
  collection = json.loads((out / "landslides.geojson").read_text())
  assert collection["type"] == "FeatureCollection"
  features = collection["features"]
  labels, count = ndimage.label(binary == 1)
  assert written["polygons"] == len(features) == count > 1
  total = sum(f["properties"]["area_m2"] for f in features)
  assert total == pytest.approx((binary == 1).sum() * PIXEL_AREA_M2, abs=0.05 * len(features))
  for feature in features:
    props = feature["properties"]
    assert feature["geometry"]["type"] == "Polygon"
    assert 0.5 < props["mean_probability"] <= 1.0
    np.testing.assert_allclose(props["mean_probability"], prob[labels == props["id"]].mean(), atol=1e-4)
    # RFC 7946 lon/lat: back in the site CRS the polygon covers exactly its pixels.
    lon, lat = np.asarray(feature["geometry"]["coordinates"][0]).T
    assert 104 < lon.min() and lon.max() < 106 and 33 < lat.min() and lat.max() < 34
    utm = shapely.geometry.shape(rasterio.warp.transform_geom("EPSG:4326", meta["crs"], feature["geometry"]))
    assert utm.area == pytest.approx(props["area_m2"], rel=1e-4)
    assert props["area_m2"] == pytest.approx((labels == props["id"]).sum() * PIXEL_AREA_M2)


def test_s2_and_dem_form_equals_the_manifest_and_min_area_drops_small_polygons(env, china_map):
  out, _ = china_map
  areas = sorted(f["properties"]["area_m2"]
                 for f in json.loads((out / "landslides.geojson").read_text())["features"])
  assert areas[0] < areas[-1]
  min_area = (areas[0] + areas[-1]) / 2
  other = env.root / "china_s2_dem"
  written = predict.predict_scene(env.workdir, env.raw / "china" / "s2.tif", env.raw / "china" / "dem.tif",
                                  other, min_area_m2=min_area)
  for name in ("probability.tif", "landslides.tif"):
    np.testing.assert_array_equal(_read(other / name)[0], _read(out / name)[0])
  kept = [f["properties"]["area_m2"]
          for f in json.loads((other / "landslides.geojson").read_text())["features"]]
  assert sorted(kept) == [a for a in areas if a >= min_area]
  assert written["polygons"] == len(kept) < len(areas)


def _geographic_copy(dem: Path, out: Path) -> Path:
  """The DEM warped to EPSG:4326 at about its own resolution, as AW3D30 and GLO-30 are delivered."""
  with rasterio.open(dem) as src:
    transform, width, height = rasterio.warp.calculate_default_transform(
        src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
    values = np.full((height, width), np.nan, np.float32)
    rasterio.warp.reproject(src.read(1).astype(np.float32), values, src_transform=src.transform,
                            src_crs=src.crs, dst_transform=transform, dst_crs="EPSG:4326",
                            resampling=rasterio.warp.Resampling.bilinear, dst_nodata=np.nan)
  with rasterio.open(out, "w", driver="GTiff", height=height, width=width, count=1, dtype="float32",
                     crs="EPSG:4326", transform=transform, nodata=-9999.0) as dst:
    dst.write(np.where(np.isnan(values), np.float32(-9999.0), values), 1)
  return out


@pytest.mark.parametrize("dem_crs", ["projected", "geographic"])
def test_block_size_does_not_change_the_result(env, dem_crs):
  # A 64 x 100 px crop: with overlap 0.5 (stride 16) the windows straddle every block border, and the
  # last column of windows (at 68) is flush with the edge, off the stride grid. A geographic DEM is
  # warped through a non-linear transformation, which GDAL approximates per chunk unless told not to.
  site = env.root / f"crop-{dem_crs}"
  site.mkdir()
  s2 = _write_s2_like(env.raw / "china" / "s2.tif", site / "s2.tif", rasterio.windows.Window(0, 0, 100, 64))
  dem = env.raw / "china" / "dem.tif"
  if dem_crs == "geographic":
    dem = _geographic_copy(dem, site / "dem_4326.tif")
  inputs = predict.scene_inputs(s2, dem)
  maps = {}
  for block in (32, 37, 1024):  # 37 divides neither side
    written = predict.predict_probabilities(env.run, inputs, site / f"block{block}", block=block)
    assert written["windows"] == 3 * 6
    maps[block] = _read(written["probability"])[0]
  for block in (32, 37):
    np.testing.assert_array_equal(maps[block], maps[1024], err_msg=f"block={block}")
  assert ((maps[1024] >= 0) & (maps[1024] <= 1)).all()


def test_aoi_maps_only_its_window_and_cloud_mask_masks(env, tmp_path):
  # The AOI box is aligned to whole windows: without overlap, its windows are windows of the whole
  # scene, so its map equals the whole scene's map there.
  s2, dem = env.raw / "china" / "s2.tif", env.raw / "china" / "dem.tif"
  whole = predict.predict_probabilities(env.run, predict.scene_inputs(s2, dem), tmp_path / "whole",
                                        overlap=0.0)
  full, full_meta = _read(whole["probability"])
  r0 = PATCH if full.shape[0] >= 3 * PATCH else 0  # the fixture scene may be only 2 windows tall
  assert full.shape[0] >= r0 + 2 * PATCH and full.shape[1] >= 4 * PATCH
  aoi = tmp_path / "aoi.geojson"
  conftest.write_polygons(aoi, [conftest.pixel_box(r0, PATCH, 2 * PATCH, 3 * PATCH)], driver="GeoJSON")
  clouds = np.zeros(full.shape, np.uint8)
  clouds[r0 + 3:r0 + 9, PATCH + 5:PATCH + 20] = 1
  cloud_tif = tmp_path / "clouds.tif"
  with rasterio.open(cloud_tif, "w", driver="GTiff", height=clouds.shape[0], width=clouds.shape[1],
                     count=1, dtype="uint8", crs=full_meta["crs"], transform=full_meta["transform"]) as dst:
    dst.write(clouds, 1)
  out = tmp_path / "aoi_map"
  predict.predict_scene(env.workdir, s2, dem, out, overlap=0.0, aoi=aoi, cloud_mask=cloud_tif)
  prob, meta = _read(out / "probability.tif")
  assert prob.shape == (2 * PATCH, 3 * PATCH)
  assert meta["transform"] == full_meta["transform"] @ rasterio.Affine.translation(PATCH, r0)
  expected = full[r0:r0 + 2 * PATCH, PATCH:4 * PATCH]
  cloudy = clouds[r0:r0 + 2 * PATCH, PATCH:4 * PATCH] == 1
  assert (prob[cloudy] == predict.PROBABILITY_NODATA).all()
  # Masked pixels enter the model as zeros, so the windows holding them differ; the others are equal.
  window_has_cloud = np.zeros(prob.shape, bool)
  for r in range(0, prob.shape[0], PATCH):
    for c in range(0, prob.shape[1], PATCH):
      window_has_cloud[r:r + PATCH, c:c + PATCH] = cloudy[r:r + PATCH, c:c + PATCH].any()
  assert (~window_has_cloud).sum() >= 4 * PATCH * PATCH
  np.testing.assert_allclose(prob[~window_has_cloud], expected[~window_has_cloud], atol=1e-5)
  # An AOI outside the scene: one line, nothing written.
  far = tmp_path / "far.geojson"
  conftest.write_polygons(far, [conftest.pixel_box(5000, 5000, 10, 10)], driver="GeoJSON")
  with pytest.raises(InputError, match="outside the Sentinel-2 scene"):
    predict.predict_scene(env.workdir, s2, dem, tmp_path / "far_map", aoi=far)
  _assert_nothing_written(tmp_path / "far_map")
  # Clouds over the whole AOI: refused in one line, no empty maps left behind.
  everywhere = tmp_path / "clouds_everywhere.tif"
  with rasterio.open(everywhere, "w", driver="GTiff", height=clouds.shape[0], width=clouds.shape[1],
                     count=1, dtype="uint8", crs=full_meta["crs"], transform=full_meta["transform"]) as dst:
    dst.write(np.ones_like(clouds), 1)
  with pytest.raises(InputError, match="no pixel of the scene has data"):
    predict.predict_scene(env.workdir, s2, dem, tmp_path / "cloudy_map", aoi=aoi, cloud_mask=everywhere)
  _assert_nothing_written(tmp_path / "cloudy_map")
  # An AOI smaller than one model window: one line naming the AOI and the size to draw.
  small = tmp_path / "small.geojson"
  conftest.write_polygons(small, [conftest.pixel_box(r0, PATCH, PATCH // 2, PATCH // 2)], driver="GeoJSON")
  with pytest.raises(InputError, match=f"smaller than the model's {PATCH} px window") as err:
    predict.predict_scene(env.workdir, s2, dem, tmp_path / "small_map", aoi=small)
  assert err.value.path == str(small) and f"at least {PATCH * 10} m across" in str(err.value)
  _assert_nothing_written(tmp_path / "small_map")


def test_safe_zip_with_dem_tiles_and_aoi_maps_like_the_geotiff(env, tmp_path, capsys):
  # The China fixture's scene as a baseline 05.10 L2A product (zip, JPEG2000, DN + 1000) and its DEM cut
  # in two tiles: the same maps as the GeoTIFF scene and the uncut DEM.
  s2, dem = env.raw / "china" / "s2.tif", env.raw / "china" / "dem.tif"
  with rasterio.open(s2) as src:
    names = [d.upper().replace("B0", "B") for d in src.descriptions]
    reflectance = {n: src.read(i + 1).astype(np.float64) / 10000.0 for i, n in enumerate(names)}
    origin = (src.transform.c, src.transform.f)
    crs = src.crs.to_string()
  product = safe_fixtures.make_safe_product(tmp_path, reflectance, level="L2A", baseline="05.10", crs=crs,
                                            origin=origin, as_zip=True)
  tiles = tmp_path / "dem_tiles"
  tiles.mkdir()
  with rasterio.open(dem) as src:
    values, profile = src.read(1), src.profile
    half = src.width // 2
    for name, cols in (("west.tif", slice(0, half)), ("east.tif", slice(half, src.width))):
      part = values[:, cols]
      with rasterio.open(tiles / name, "w", **{**profile, "width": part.shape[1],
                                                "transform": src.transform @ rasterio.Affine.translation(cols.start, 0)}) as dst:
        dst.write(part, 1)
  aoi = tmp_path / "aoi.geojson"
  conftest.write_polygons(aoi, [conftest.pixel_box(3, 5, 40, 70)], driver="GeoJSON")
  maps = {}
  for name, scene, dem_arg in (("geotiff", s2, dem), ("safe", product, tiles)):
    capsys.readouterr()
    predict.predict_scene(env.workdir, scene, dem_arg, tmp_path / name, aoi=aoi, min_area_m2=0.0)
    maps[name] = _read(tmp_path / name / "probability.tif")
  # The run was trained without offsets; the product's -1000 comes from its metadata and is applied,
  # so the two agree and there is nothing to warn about.
  printed = capsys.readouterr()
  assert "s2_add_offset" not in printed.out + printed.err
  assert maps["safe"][1] == maps["geotiff"][1] and maps["safe"][0].shape == (40, 70)
  np.testing.assert_allclose(maps["safe"][0], maps["geotiff"][0], atol=1e-5)
  # The product's metadata gives the offset; a flag saying otherwise is refused.
  with pytest.raises(InputError, match="metadata gives the offsets"):
    predict.predict_scene(env.workdir, product, tiles, tmp_path / "flag", s2_add_offset=-1000)


def test_without_overlap_each_window_is_the_models_prediction(env):
  inputs = predict.scene_inputs(env.raw / "china" / "manifest.json", None)
  written = predict.predict_probabilities(env.run, inputs, env.root / "no_overlap", overlap=0.0)
  prob, _ = _read(written["probability"])
  rows, cols = range(0, prob.shape[0], PATCH), range(0, prob.shape[1], PATCH)
  assert written["windows"] == len(rows) * len(cols) == 20
  windows, origins = [], []
  for r in rows:
    for c in cols:
      image, valid, _ = scene_lib.load_channels(inputs, env.run.config.channels,
                                                window=rasterio.windows.Window(c, r, PATCH, PATCH))
      windows.append(env.run.stats.apply(np.moveaxis(image, 0, -1)) * valid[..., None])
      origins.append((r, c))
  expected = env.run.predict(np.stack(windows))
  for (r, c), p in zip(origins, expected):
    np.testing.assert_allclose(prob[r:r + PATCH, c:c + PATCH], p, atol=1e-6, err_msg=f"window {r}, {c}")


def test_predict_agrees_with_evaluate_on_the_test_windows(env, china_map, record_property):
  result = evaluate.evaluate_run(env.workdir, test_sets=("china",))
  eval_f1 = result["test"]["china"]["f1"]
  eval_prob, _ = _read(Path(result["maps"]["china"]["probability"]))
  split = input_pipeline.read_split("china", PATCH, "test", run_fixtures.CHANNEL_TUPLE, env.data_dir)
  test_pixels = np.zeros(run_fixtures.SITE_SHAPE, bool)
  for r, c in zip(split.row.tolist(), split.col.tolist()):
    test_pixels[r:r + PATCH, c:c + PATCH] = True
  truth = run_fixtures.inventory_mask(env.raw / "china")
  c0 = int(split.col.min())  # the test area's first column (rows start at 0 in the fixture)

  out, _ = china_map
  figures = {}
  for name, folder in (("blended", out), ("no overlap", None)):
    if folder is None:
      folder = env.root / "china_no_overlap"
      predict.predict_scene(env.workdir, env.raw / "china" / "manifest.json", None, folder, overlap=0.0)
    binary, _ = _read(folder / "landslides.tif")
    prob, _ = _read(folder / "probability.tif")
    f1 = skm.f1_score(truth[test_pixels], binary[test_pixels] == 1, zero_division=0)
    mad = float(np.abs(prob[:, c0:] - eval_prob).mean())
    figures[name] = (f1, mad)
  # The figures README quotes, kept out of the progress dots: `pytest -rA` or the JUnit XML shows them.
  record_property("figures", f"evaluate china F1 {eval_f1:.4f}; predict on the test windows: "
                  + "; ".join(f"{k} F1 {f:.4f}, mean |dp| {m:.4f}" for k, (f, m) in figures.items()))
  assert 0.5 < eval_f1 < 1.0  # a real comparison: the model maps landslides, imperfectly
  assert result["test"]["china"]["fp"] > 0 and result["test"]["china"]["fn"] > 0
  blended_f1, blended_mad = figures["blended"]
  assert abs(blended_f1 - eval_f1) <= 0.01
  assert blended_mad < 0.05
  # Same windows as the dataset's: the same numbers, up to float round-off.
  flat_f1, flat_mad = figures["no overlap"]
  assert flat_f1 == pytest.approx(eval_f1, abs=1e-9) and flat_mad < 1e-5


# ----------------------------------------------------------------------------------------------------------
# Unusable scenes: one clear error, nothing written


def test_scene_without_a_band_the_model_needs(env, tmp_path):
  s2 = _write_s2_like(env.raw / "china" / "s2.tif", tmp_path / "s2_rgb.tif", bands=(1, 2, 3))
  out = tmp_path / "out"
  with pytest.raises(InputError) as err:
    predict.predict_scene(env.workdir, s2, env.raw / "china" / "dem.tif", out)
  assert err.value.path == str(s2)
  assert "has no B8 (it has B2, B3, B4)" in str(err.value)
  _assert_nothing_written(out)


def test_scene_without_band_descriptions(env, tmp_path):
  s2 = _write_s2_like(env.raw / "china" / "s2.tif", tmp_path / "s2_plain.tif", descriptions=False)
  out = tmp_path / "out"
  with pytest.raises(InputError) as err:
    predict.predict_scene(env.workdir, s2, env.raw / "china" / "dem.tif", out)
  assert err.value.path == str(s2)
  assert "no Sentinel-2 descriptions" in str(err.value) and "manifest.json" in str(err.value)
  _assert_nothing_written(out)


def test_dem_that_stops_short_leaves_no_partial_output(env, tmp_path):
  # The DEM covers the first ~100 columns only: the first blocks are predicted and written into the
  # hidden temporary GeoTIFFs, then a later block fails. Nothing may remain, not even the temp files.
  dem = tmp_path / "dem_short.tif"
  conftest.write_dem(dem, (64, 100))
  out = tmp_path / "out"
  inputs = predict.scene_inputs(env.raw / "china" / "s2.tif", dem)
  with pytest.raises(InputError, match="DEM does not cover the scene"):
    predict.predict_probabilities(env.run, inputs, out, block=64)
  _assert_nothing_written(out)


def test_geotiff_scene_without_dem(env, tmp_path):
  out = tmp_path / "out"
  scene = env.raw / "china" / "s2.tif"
  with pytest.raises(InputError, match="no DEM given") as err:
    predict.predict_scene(env.workdir, scene, None, out)
  assert err.value.path == str(scene) and "--dem=" in str(err.value)
  with pytest.raises(InputError, match="DEM .*no_dem.tif.* does not exist") as err:
    predict.predict_scene(env.workdir, scene, tmp_path / "no_dem.tif", out)
  assert err.value.path == str(tmp_path / "no_dem.tif")
  _assert_nothing_written(out)
  # The same through the command line: exit code 2 and one line.
  proc = subprocess.run([sys.executable, "-m", "launch.predict", f"--workdir={env.workdir}",
                         f"--scene={scene}", f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=SUBPROCESS_TIMEOUT, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {scene}: no DEM given"), proc.stderr
  _assert_nothing_written(out)
