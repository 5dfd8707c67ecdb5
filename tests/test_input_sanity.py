"""Inputs that used to give a silent wrong result (issue 10) now give one line naming the file and the fix:
points and lines inside GeometryCollections, invalid polygons (repaired, with a warning), mask rasters
that miss the scene, manifest values of the wrong type, and Landslide4Sense files that cannot be the
published format (repeated list lines, bytes or records, integers, all NaN, values far off the scaling).

Every input is a real-format file written to tmp_path: GeoPackage/GeoJSON, GeoTIFF and HDF5.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import rasterio.warp
import rasterio.windows
import shapely
import shapely.geometry
from rasterio.crs import CRS
from rasterio.transform import from_origin

from landslide_jax import constants, prepare
from landslide_jax.data import inventory, landslide4sense as l4s, raster_io, scene as scene_lib
from landslide_jax.data.site_inputs import find_site_inputs
from landslide_jax.errors import InputError
from tests.conftest import ORIGIN, ROOT, SITE_CRS, pixel_box, shared_path, write_polygons

SHAPE = (100, 120)  # the grid of the direct read_mask tests: 1000 m x 1200 m at 10 m
SITE_SHAPE = (200, 300)  # make_site's default scene


@pytest.fixture(name="grid")
def fixture_grid() -> raster_io.Grid:
  return raster_io.Grid(CRS.from_user_input(SITE_CRS), from_origin(*ORIGIN, 10, 10), SHAPE)


def _one_line(err: InputError, *phrases: str) -> str:
  """The message is one line with a fix and holds every phrase."""
  message = str(err)
  assert "\n" not in message and "\r" not in message, message
  assert "Fix: " in message, message
  for phrase in phrases:
    assert phrase in message, f"{phrase!r} not in {message!r}"
  return message


def _prepare_error_line(site: Path, tmp_path: Path) -> str:
  """`launch.prepare` on `site`: exit 2, no traceback, exactly one `error:` line (returned, it is the
  last), and no dataset written."""
  proc = subprocess.run([sys.executable, "-m", "launch.prepare", "--site=china", "--patch=32",
                         f"--manual_dir={site.parent}", f"--data_dir={tmp_path / 'tfds'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and lines[-1].startswith("error: "), proc.stderr[-2000:]
  assert sum(ln.startswith("error:") for ln in lines) == 1
  assert not any((tmp_path / "tfds").rglob("*.array_record*"))
  return lines[-1]


def _warnings(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("warning:")]


# ----------------------------------------------------------------------------------------------------------
# 1. Geometry types and invalid polygons.


def _xy(col: float, row: float) -> tuple[float, float]:
  """Scene coordinates of a point given in (fractional) pixels of the site grid."""
  return ORIGIN[0] + col * 10, ORIGIN[1] - row * 10


def _poly(*pixels: tuple[float, float], holes=()) -> shapely.Polygon:
  return shapely.Polygon([_xy(c, r) for c, r in pixels], [[_xy(c, r) for c, r in h] for h in holes])


def _write_geometries(path: Path, geometries: list, geometry_type: str = "Unknown") -> None:
  """Any geometries (collections, invalid polygons) as a vector file; the driver from the suffix."""
  driver = {".gpkg": "GPKG", ".geojson": "GeoJSON"}[path.suffix]
  pyogrio.raw.write(path, geometry=shapely.to_wkb(np.array(geometries, dtype=object)),
                    field_data=[np.arange(len(geometries), dtype=np.int32)], fields=["id"], crs=SITE_CRS,
                    driver=driver, geometry_type=geometry_type)


def _centres_inside(geometry, shape: tuple[int, int]) -> np.ndarray:
  """Independent of rasterio: 1 where a pixel centre of the site grid lies inside `geometry`."""
  rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
  x, y = _xy(cols + 0.5, rows + 0.5)
  return shapely.contains_xy(geometry, x, y).astype(np.uint8)


# Vertices off the pixel centres (fractions like .13, .37), so no centre lies on an edge.
BOX_A = _poly((5.13, 5.27), (30.41, 5.27), (30.41, 20.63), (5.13, 20.63))
MULTI_B = shapely.MultiPolygon([_poly((60.2, 10.3), (80.7, 10.3), (80.7, 30.6), (60.2, 30.6)),
                                _poly((90.2, 60.3), (100.7, 60.3), (100.7, 70.6), (90.2, 70.6))])
LINE = shapely.LineString([_xy(10.2, 50.3), _xy(60.7, 55.1)])
POINT = shapely.Point(_xy(40.3, 80.2))


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_collection_with_lines_and_points_is_refused(grid, tmp_path, suffix):
  path = tmp_path / f"inventory{suffix}"
  _write_geometries(path, [shapely.GeometryCollection([BOX_A, LINE]),
                           shapely.GeometryCollection([POINT, shapely.GeometryCollection([POINT])]),
                           MULTI_B])
  with pytest.raises(InputError) as info:
    inventory.read_mask(path, grid, "inventory")
  _one_line(info.value, path.name, "must be polygons, found LineString, Point",
            "1 LineString, 2 Point; 3 of them inside GeometryCollection features", "buffer")


@pytest.mark.parametrize("key", ["inventory", "test_area", "aoi"])
def test_collection_with_a_line_is_refused_as_inventory_test_area_and_aoi(make_site, key):
  site = make_site("china", manifest={})
  name = f"{key}_collection.gpkg"
  # A polygon over the scene, so nothing but the line could make it an error.
  _write_geometries(site / name, [shapely.GeometryCollection([pixel_box(0, 0, *SITE_SHAPE), LINE])],
                    "GeometryCollection")
  spec = json.loads((site / "manifest.json").read_text())
  (site / "manifest.json").write_text(json.dumps({**spec, key: name}))
  with pytest.raises(InputError) as info:
    scene_lib.load_scene(site, constants.DEFAULT_CHANNELS, "china")
  _one_line(info.value, name, "found LineString (1 LineString; 1 of them inside GeometryCollection")


def test_polygon_only_collection_is_accepted(grid, tmp_path, capsys):
  path = tmp_path / "inventory.gpkg"
  collection = shapely.GeometryCollection([BOX_A, MULTI_B])
  other = _poly((10.3, 60.2), (30.6, 60.2), (30.6, 90.7), (10.3, 90.7))
  _write_geometries(path, [collection, other])
  mask = inventory.read_mask(path, grid, "inventory")
  expected = _centres_inside(shapely.union_all([BOX_A, MULTI_B, other]), SHAPE)
  assert expected.sum() > 1000
  np.testing.assert_array_equal(mask, expected)
  assert not _warnings(capsys.readouterr().err)  # valid polygons: nothing repaired


# Invalid polygons, each burnt wrongly or differently without the repair.
BOWTIE = _poly((5.13, 5.27), (35.41, 25.63), (35.41, 5.27), (5.13, 25.63))
# A hole listed twice: GDAL's even-odd fill burns it back in.
TWICE_HOLED = _poly((40.3, 5.2), (70.6, 5.2), (70.6, 35.7), (40.3, 35.7),
                    holes=[[(50.2, 15.3), (60.7, 15.3), (60.7, 25.6), (50.2, 25.6)]] * 2)
# Two overlapping parts of one feature: one landslide, the union ("linework" repair would cut the overlap).
OVERLAPPING = shapely.MultiPolygon([_poly((5.3, 40.2), (25.6, 40.2), (25.6, 60.7), (5.3, 60.7)),
                                    _poly((15.3, 50.2), (35.6, 50.2), (35.6, 70.7), (15.3, 70.7))])


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_invalid_polygons_are_repaired_with_make_valid(grid, tmp_path, capsys, suffix):
  invalid = [BOWTIE, TWICE_HOLED, OVERLAPPING]
  assert not shapely.is_valid(np.array(invalid, dtype=object)).any()
  path = tmp_path / f"inventory{suffix}"
  _write_geometries(path, invalid + [MULTI_B])  # and one valid feature
  mask = inventory.read_mask(path, grid, "inventory")
  repaired = [shapely.make_valid(g, method="structure") for g in invalid]
  assert all(g.geom_type in ("Polygon", "MultiPolygon") for g in repaired)
  expected = _centres_inside(shapely.union_all(repaired + [MULTI_B]), SHAPE)
  np.testing.assert_array_equal(mask, expected)
  # Rasterio burns the repaired polygons the same: the reference is not an artefact of contains_xy.
  burnt = rasterio.features.rasterize([(g, 1) for g in repaired + [MULTI_B]], out_shape=SHAPE,
                                      transform=grid.transform, dtype=np.uint8)
  np.testing.assert_array_equal(burnt, expected)
  # The repair matters: burnt as they are, the twice-listed hole fills in.
  naive = rasterio.features.rasterize([(g, 1) for g in invalid + [MULTI_B]], out_shape=SHAPE,
                                      transform=grid.transform, dtype=np.uint8)
  assert naive[17:24, 52:59].all() and not expected[17:24, 52:59].any()
  # The union of overlapping parts, not their symmetric difference.
  assert expected[52:58, 17:23].all()
  lines = _warnings(capsys.readouterr().err)
  assert len(lines) == 1, lines
  assert path.name in lines[0] and "repaired 3 invalid polygon feature(s) of 4" in lines[0], lines[0]
  assert "make_valid" in lines[0]
  # Read again (launch.predict reads an AOI once per block): the same mask, no second warning.
  np.testing.assert_array_equal(inventory.read_mask(path, grid, "inventory"), expected)
  assert not _warnings(capsys.readouterr().err)


def test_repair_keeps_only_polygonal_parts(grid, tmp_path, capsys):
  # A polygon collapsed onto a line repairs into that line, and a spike (a ring running out and back)
  # into a polygon and a line; a burnt line would mark every pixel it crosses as landslide.
  collapsed = _poly((5.2, 80.3), (60.7, 80.3), (30.4, 80.3))
  spiked = _poly((40.3, 40.2), (70.6, 40.2), (70.6, 70.7), (40.3, 70.7), (40.3, 55.4), (5.2, 55.4),
                 (40.3, 55.4))
  assert not shapely.is_valid(collapsed) and not spiked.is_valid
  path = tmp_path / "inventory.gpkg"
  write_polygons(path, [collapsed, spiked])
  mask = inventory.read_mask(path, grid, "inventory")
  expected = _centres_inside(_poly((40.3, 40.2), (70.6, 40.2), (70.6, 70.7), (40.3, 70.7)), SHAPE)
  np.testing.assert_array_equal(mask, expected)
  assert not mask[:, :40].any() and not mask[80].any()
  lines = _warnings(capsys.readouterr().err)
  assert len(lines) == 1 and "repaired 2 invalid polygon feature(s) of 2" in lines[0], lines


# ----------------------------------------------------------------------------------------------------------
# 2. Mask rasters that miss the scene.


def _write_mask(path: Path, values: np.ndarray, transform, crs: str = SITE_CRS) -> Path:
  with rasterio.open(path, "w", driver="GTiff", height=values.shape[0], width=values.shape[1], count=1,
                     dtype=values.dtype, crs=crs, transform=transform) as dst:
    dst.write(values, 1)
  return path


def _cloud_site(make_site, transform, crs: str = SITE_CRS, shape=SITE_SHAPE) -> Path:
  """make_site with a cloud mask (a block of clouds) on `transform` / `crs` named in the manifest."""
  site = make_site("china", manifest={"nodata_mask": "cloud_mask.tif"})
  clouds = np.zeros(shape, np.uint8)
  clouds[50:80, 100:160] = 1
  _write_mask(site / "cloud_mask.tif", clouds, transform, crs)
  return site


ON_SCENE = from_origin(*ORIGIN, 10, 10)
EAST_100KM = from_origin(ORIGIN[0] + 100_000, ORIGIN[1], 10, 10)


@pytest.mark.parametrize("transform, crs", [
    (EAST_100KM, SITE_CRS),  # the wrong place
    (ON_SCENE, "EPSG:32647"),  # the right numbers tagged with the neighbouring UTM zone
    (ON_SCENE, "EPSG:4326"),  # UTM numbers tagged as degrees
], ids=["elsewhere", "wrong-zone", "utm-as-degrees"])
def test_nodata_mask_off_the_scene_is_an_error(make_site, transform, crs):
  site = _cloud_site(make_site, transform, crs)
  inputs = find_site_inputs(site)
  with pytest.raises(InputError) as info:
    scene_lib.load_channels(inputs, constants.DEFAULT_CHANNELS)
  _one_line(info.value, "cloud_mask.tif", "nodata mask raster does not overlap the scene", crs, "CRS")
  # A block of the scene (launch.predict reads blocks) gets the same error.
  with pytest.raises(InputError, match="does not overlap the scene"):
    scene_lib.load_channels(inputs, constants.DEFAULT_CHANNELS, window=rasterio.windows.Window(0, 0, 64, 64))


def test_nodata_mask_on_part_of_the_scene_is_read(make_site):
  # The mask covers the eastern 200 columns of the scene and reaches past it: the rest is not masked.
  site = make_site("china", manifest={"nodata_mask": "cloud_mask.tif"})
  clouds = np.zeros((250, 300), np.uint8)
  clouds[50:80, 0:60] = 1
  _write_mask(site / "cloud_mask.tif", clouds, from_origin(ORIGIN[0] + 1000, ORIGIN[1], 10, 10))
  inputs = find_site_inputs(site)
  _, valid, _ = scene_lib.load_channels(inputs, constants.DEFAULT_CHANNELS)
  expected = np.ones(SITE_SHAPE, bool)
  expected[50:80, 100:160] = False
  np.testing.assert_array_equal(valid, expected)
  # A block outside the mask's footprint is fine: the mask is checked against the whole scene.
  _, block_valid, _ = scene_lib.load_channels(inputs, constants.DEFAULT_CHANNELS,
                                              window=rasterio.windows.Window(0, 0, 64, 64))
  assert block_valid.all()


@pytest.mark.parametrize("what", ["inventory", "test area"])
def test_inventory_and_test_area_rasters_off_the_scene(grid, tmp_path, what):
  values = np.ones(SHAPE, np.uint8)
  path = _write_mask(tmp_path / "mask.tif", values, from_origin(*ORIGIN, 10, 10), "EPSG:32647")
  with pytest.raises(InputError) as info:
    inventory.read_mask(path, grid, what)
  _one_line(info.value, "mask.tif", f"{what} raster does not overlap the scene", "EPSG:32647")


def _geojson_without_crs(path: Path, polygons: list) -> Path:
  """A GeoJSON written as a careless export does: no "crs" member, so GDAL reads it as EPSG:4326."""
  features = [{"type": "Feature", "properties": {"id": i}, "geometry": shapely.geometry.mapping(p)}
              for i, p in enumerate(polygons)]
  path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
  return path


@pytest.mark.parametrize("kind", ["geojson-without-crs", "gpkg-tagged-4326"])
@pytest.mark.parametrize("key", ["inventory", "test_area", "aoi"])
def test_metres_under_a_degree_crs_are_refused(make_site, kind, key):
  site = make_site("china", manifest={})
  boxes = [pixel_box(20, 30, 12, 8), pixel_box(0, 0, 100, 300)]  # UTM metres, on the scene
  if kind == "geojson-without-crs":
    name = _geojson_without_crs(site / f"{key}_utm.geojson", boxes).name
  else:
    name = f"{key}_utm.gpkg"
    write_polygons(site / name, boxes, crs="EPSG:4326")
  spec = json.loads((site / "manifest.json").read_text())
  (site / "manifest.json").write_text(json.dumps({**spec, key: name}))
  with pytest.raises(InputError) as info:
    scene_lib.load_scene(site, constants.DEFAULT_CHANNELS, "china")
  _one_line(info.value, name, "coordinates (500000, 3699000, 503000, 3700000) are not degrees",
            "EPSG:4326", "ogr2ogr -a_srs EPSG:32648")


def test_geojson_without_crs_in_degrees_is_read_as_wgs84(grid, tmp_path):
  # The control: the same polygons in lon/lat, no "crs" member, give the UTM file's mask.
  boxes = [pixel_box(20, 30, 12, 8), pixel_box(60, 70, 10, 20)]
  write_polygons(tmp_path / "utm.gpkg", boxes)
  lonlat = [shapely.geometry.shape(g) for g in rasterio.warp.transform_geom(
      SITE_CRS, "EPSG:4326", [shapely.geometry.mapping(b) for b in boxes])]
  path = _geojson_without_crs(tmp_path / "lonlat.geojson", lonlat)
  expected = inventory.read_mask(tmp_path / "utm.gpkg", grid, "inventory")
  assert expected.sum() == 12 * 8 + 10 * 20
  np.testing.assert_array_equal(inventory.read_mask(path, grid, "inventory"), expected)


def test_metres_under_a_degree_crs_as_predict_aoi(grid, tmp_path):
  path = _geojson_without_crs(tmp_path / "aoi.geojson", [pixel_box(10, 10, 50, 50)])
  with pytest.raises(InputError) as info:
    raster_io.aoi_window(path, grid)
  _one_line(info.value, "aoi.geojson", "area-of-interest coordinates", "are not degrees")


def test_metres_under_a_degree_crs_from_the_cli_is_one_line_exit_2(make_site, tmp_path):
  site = make_site("china", manifest={})
  _geojson_without_crs(site / "inventory_utm.geojson", [pixel_box(20, 30, 12, 8)])
  spec = json.loads((site / "manifest.json").read_text())
  (site / "manifest.json").write_text(json.dumps({**spec, "inventory": "inventory_utm.geojson"}))
  line = _prepare_error_line(site, tmp_path)
  assert "inventory_utm.geojson" in line and "are not degrees" in line


# ----------------------------------------------------------------------------------------------------------
# 3. Manifest value types.


@pytest.mark.parametrize("key, value, found, write", [
    ("bands", [2, 3, 4, 8], "[2, 3, 4, 8]", '"bands": ["B2", "B3", "B4", "B8"]'),
    ("bands", "B2,B3,B4,B8", '"B2,B3,B4,B8"', '"bands": ["B2", "B3", "B4", "B8"]'),
    ("sentinel2", {"B02": 1}, '{"B02": 1}', '"sentinel2": "s2.tif"'),
    ("sentinel2", 5, "5", '"sentinel2": "s2.tif"'),
    ("s2_units", 5, "5", '"s2_units": "dn"'),
    ("s2_nodata", True, "true", '"s2_nodata": 0'),
    ("s2_nodata", "0", '"0"', '"s2_nodata": 0'),
    ("inventory", ["a.gpkg"], '["a.gpkg"]', '"inventory": "inventory.gpkg"'),
    ("test_area", None, "null", '"test_area": "test_area.gpkg"'),
    ("nodata_mask", 1, "1", '"nodata_mask": "cloud_mask.tif"'),
    ("source", 1, "1", '"source": "real"'),
    ("inventory_layer", 3, "3", '"inventory_layer": "landslides"'),
    ("description", ["a"], '["a"]', '"description": '),
])
def test_manifest_value_of_the_wrong_type(make_site, key, value, found, write):
  site = make_site("china", manifest={key: value})
  with pytest.raises(InputError) as info:
    find_site_inputs(site)
  _one_line(info.value, "manifest.json", f"manifest key '{key}' must be", f"found {found}",
            f"Fix: write {write}")


def test_manifest_type_error_in_toml_says_what_to_write_in_toml(make_site):
  site = make_site("china")
  (site / "manifest.json").unlink()
  (site / "manifest.toml").write_text('sentinel2 = "s2.tif"\ndem = "dem.tif"\ninventory = "inventory.gpkg"\n'
                                      "bands = [2, 3, 4, 8]\n")
  with pytest.raises(InputError) as info:
    find_site_inputs(site)
  _one_line(info.value, "manifest.toml", "found [2, 3, 4, 8]", 'Fix: write bands = ["B2", "B3", "B4", "B8"]')


def test_manifest_of_the_right_types_is_accepted(make_site):
  site = make_site("china", manifest={
      "bands": ["B2", "B3", "B4", "B8"], "s2_units": "dn", "s2_nodata": 0, "inventory_layer": None,
      "source": "real", "description": "a test scene", "sentinel2": "s2.tif"})
  inputs = find_site_inputs(site)
  assert inputs.bands == ("B2", "B3", "B4", "B8") and inputs.s2_nodata == 0.0
  assert inputs.inventory_layer is None and inputs.source == "real"


def test_manifest_type_error_from_the_cli_is_one_line_exit_2(make_site, tmp_path):
  site = make_site("china", manifest={"bands": [2, 3, 4, 8]})
  line = _prepare_error_line(site, tmp_path)
  assert "manifest.json" in line and "'bands'" in line and "[2, 3, 4, 8]" in line


# ----------------------------------------------------------------------------------------------------------
# 4. Landslide4Sense files.

L4S_SHAPE = (constants.L4S_PATCH, constants.L4S_PATCH, len(constants.L4S_CHANNELS))


def _stored(seed: int) -> np.ndarray:
  """A patch as published: DN-like values, slope and elevation, each channel divided by its scale."""
  rng = np.random.default_rng(seed)
  physical = rng.uniform(200, 3000, L4S_SHAPE)
  physical[..., 12] = rng.uniform(0, 60, L4S_SHAPE[:2])  # slope, degrees
  physical[..., 13] = rng.uniform(500, 3000, L4S_SHAPE[:2])  # elevation, m
  return physical / np.asarray(constants.L4S_SCALES)


def _write_l4s(root: Path, numbers=(1, 2, 3, 4, 5), list_lines: list[str] | None = None,
               img: dict[int, np.ndarray] | None = None) -> Path:
  """TrainData/img/image_N.h5 (+ masks) and, when given, train.txt; `img` replaces images by number."""
  (root / "TrainData" / "img").mkdir(parents=True)
  (root / "TrainData" / "mask").mkdir(parents=True)
  for n in numbers:
    with h5py.File(root / "TrainData" / "img" / f"image_{n}.h5", "w") as f:
      f.create_dataset("img", data=(img or {}).get(n, _stored(n)))
    with h5py.File(root / "TrainData" / "mask" / f"mask_{n}.h5", "w") as f:
      f.create_dataset("mask", data=(np.random.default_rng(n).random(L4S_SHAPE[:2]) < 0.05).astype(np.uint8))
  if list_lines is not None:
    (root / "train.txt").write_text("".join(f"{ln}\n" for ln in list_lines))
  return root


def test_l4s_self_made_layout_reads(tmp_path):
  """The self-made files are valid: each bad variant below fails because of its defect only."""
  root = _write_l4s(tmp_path / "l4s", list_lines=[f"TrainData/img/image_{n}.h5" for n in (1, 2, 3, 4, 5)])
  splits, _ = l4s.plan_splits(root)
  assert sum(len(v) for v in splits.values()) == 5
  image, valid = l4s.read_image(root / "TrainData" / "img" / "image_1.h5", constants.DEFAULT_CHANNELS)
  assert valid.all() and 200 <= image[..., 0].min() and image[..., 0].max() <= 3000


def test_l4s_duplicated_list_line(tmp_path):
  lines = [f"TrainData/img/image_{n}.h5" for n in (1, 2, 3, 4, 5)]
  lines.insert(3, "./TrainData/img/image_2.h5")  # the same file, spelt differently, on line 4
  root = _write_l4s(tmp_path / "l4s", list_lines=lines)
  with pytest.raises(InputError) as info:
    l4s.plan_splits(root)
  _one_line(info.value, "train.txt", "image_2.h5 twice (lines 2 and 4)", "remove the repeated line")


def test_l4s_duplicated_list_line_from_the_cli_is_one_line_exit_2(tmp_path):
  lines = [f"TrainData/img/image_{n}.h5" for n in (1, 2, 3, 4, 5, 3)]
  root = _write_l4s(tmp_path / "l4s", list_lines=lines)
  proc = subprocess.run([sys.executable, "-m", "launch.prepare", "--site=landslide4sense", "--patch=64",
                         f"--manual_dir={root}", f"--data_dir={tmp_path / 'tfds'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "tensorflow" not in proc.stderr, proc.stderr[-2000:]
  assert lines[-1].startswith("error: ") and "train.txt" in lines[-1] and "twice" in lines[-1], lines


def test_l4s_image_in_two_splits(tmp_path):
  root = _write_l4s(tmp_path / "l4s", list_lines=[f"TrainData/img/image_{n}.h5" for n in (1, 2, 3, 4, 5)])
  (root / "valid.txt").write_text("TrainData/img/image_4.h5\n")  # labelled: used as the validation split
  with pytest.raises(InputError) as info:
    l4s.plan_splits(root)
  # Carving puts image_4 in the train or the test split; either way it is also the validation split.
  message = _one_line(info.value, "image_4.h5", "is in both the ")
  assert message.split(": ", 1)[1].startswith(("is in both the train and the validation split",
                                               "is in both the validation and the test split")), message


OFFICIAL = "use the official"
BAD_IMAGES = {  # case: (img, phrase of the problem, phrase of the fix)
    "bytes": (np.full(L4S_SHAPE, b"1.0", dtype="S3"), "holds bytes (|S3), not numbers", OFFICIAL),
    "opaque": (np.zeros(L4S_SHAPE, dtype="V8"), "holds opaque bytes (|V8), not numbers", OFFICIAL),
    "compound": (np.zeros(L4S_SHAPE, dtype=[("value", "<f8"), ("flag", "u1")]),
                 "holds a compound dtype (fields value, flag), not numbers", OFFICIAL),
    "all-nan": (np.full(L4S_SHAPE, np.nan), "is all NaN", "re-download"),
    "zeros": (np.zeros(L4S_SHAPE), "are 0 in most pixels (no data)", "drop the image"),
    "int16": ((_stored(2) * np.asarray(constants.L4S_SCALES)).astype(np.int16), "stored as int16, not float",
              OFFICIAL),
    "uint8": (np.clip(_stored(2) * 100, 0, 255).astype(np.uint8), "stored as uint8, not float", OFFICIAL),
    "not-divided": (_stored(2) * np.asarray(constants.L4S_SCALES), "outside 0.01-100", OFFICIAL),
    "divided-twice": (_stored(2) / np.asarray(constants.L4S_SCALES), "outside 0.01-100", OFFICIAL),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_l4s_bad_image(tmp_path, case):
  data, problem, fix = BAD_IMAGES[case]
  root = _write_l4s(tmp_path / "l4s", img={3: data})
  path = root / "TrainData" / "img" / "image_3.h5"
  with pytest.raises(InputError) as info:
    l4s.read_image(path, constants.DEFAULT_CHANNELS)
  message = _one_line(info.value, str(path), problem)
  assert fix in message.split("Fix: ")[1], message
  # The whole build stops at it too, before writing anything.
  with pytest.raises(InputError, match="image_3.h5"):
    prepare.prepare_site("landslide4sense", 64, tmp_path / "tfds", root)
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_l4s_no_finite_pixel_in_the_channels_read(tmp_path):
  data = _stored(3)
  data[..., 12] = np.nan  # slope missing everywhere; the other channels are fine
  root = _write_l4s(tmp_path / "l4s", img={3: data})
  path = root / "TrainData" / "img" / "image_3.h5"
  with pytest.raises(InputError) as info:
    l4s.read_image(path, constants.DEFAULT_CHANNELS)
  _one_line(info.value, "image_3.h5", "no pixel with finite values", "slope")
  assert l4s.read_image(path, ("B2", "B3"))[1].all()  # without slope, every pixel is valid


def test_l4s_mask_of_bytes(tmp_path):
  root = _write_l4s(tmp_path / "l4s")
  path = root / "TrainData" / "mask" / "mask_2.h5"
  with h5py.File(path, "w") as f:
    f.create_dataset("mask", data=np.full(L4S_SHAPE[:2], b"1", dtype="S1"))
  with pytest.raises(InputError) as info:
    l4s.read_mask(path)
  _one_line(info.value, "mask_2.h5", "holds bytes (|S1)")


def test_l4s_img_that_is_a_group(tmp_path):
  root = _write_l4s(tmp_path / "l4s")
  path = root / "TrainData" / "img" / "image_4.h5"
  with h5py.File(path, "w") as f:
    f.create_group("img").create_dataset("data", data=_stored(4))
  with pytest.raises(InputError) as info:
    l4s.read_image(path, constants.DEFAULT_CHANNELS)
  _one_line(info.value, "image_4.h5", "'img' is a group, not a dataset")


def test_l4s_real_sample_is_in_the_plausible_range():
  root = shared_path("landslide4sense_sample")
  images = sorted((root / "TrainData" / "img").glob("image_*.h5"))
  assert len(images) >= 10
  for path in images:
    image, valid = l4s.read_image(path, constants.L4S_CHANNELS)
    assert valid.all(), path
    # And the margin is wide: the real level is within a factor 10 of 1.
    with h5py.File(path, "r") as f:
      raw = f["img"][()]
    level = np.median(np.median(raw[..., :12].reshape(-1, 12), axis=0))
    low, high = l4s.PLAUSIBLE_LEVEL
    assert low * 10 < level < high / 10, (path, level)
    assert 0 < image[..., constants.L4S_CHANNELS.index("B2")].mean() < 10000
