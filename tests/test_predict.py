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
import rasterio.warp
import rasterio.windows
import shapely
from scipy import ndimage
from sklearn import metrics as skm

from landslide_jax import evaluate, input_pipeline, predict
from landslide_jax.data import scene as scene_lib
from landslide_jax.errors import InputError
from tests import conftest, run_fixtures
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
  """`predict_scene` on the China site's manifest with the default options."""
  out = env.root / "china_map"
  written = predict.predict_scene(env.workdir, env.raw / "china" / "manifest.json", None, out)
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


def test_block_size_does_not_change_the_result(env):
  # A 64 x 100 px crop: with overlap 0.5 (stride 16) the windows straddle every block border, and the
  # last column of windows (at 68) is flush with the edge, off the stride grid.
  site = env.root / "crop"
  site.mkdir()
  s2 = _write_s2_like(env.raw / "china" / "s2.tif", site / "s2.tif", rasterio.windows.Window(0, 0, 100, 64))
  inputs = predict.scene_inputs(s2, env.raw / "china" / "dem.tif")
  maps = {}
  for block in (32, 64, 1024):
    written = predict.predict_probabilities(env.run, inputs, site / f"block{block}", block=block)
    assert written["windows"] == 3 * 6
    maps[block] = _read(written["probability"])[0]
  for block in (32, 64):
    np.testing.assert_array_equal(maps[block], maps[1024], err_msg=f"block={block}")
  assert ((maps[1024] >= 0) & (maps[1024] <= 1)).all()


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


def test_predict_agrees_with_evaluate_on_the_test_windows(env, china_map, capsys):
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
  with capsys.disabled():
    print(f"\n  evaluate china F1 {eval_f1:.4f}; predict on the test windows: "
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
  with pytest.raises(InputError, match="DEM file does not exist"):
    predict.predict_scene(env.workdir, scene, tmp_path / "no_dem.tif", out)
  _assert_nothing_written(out)
  # The same through the command line: exit code 2 and one line.
  proc = subprocess.run([sys.executable, "-m", "launch.predict", f"--workdir={env.workdir}",
                         f"--scene={scene}", f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=SUBPROCESS_TIMEOUT, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {scene}: no DEM given"), proc.stderr
  _assert_nothing_written(out)
