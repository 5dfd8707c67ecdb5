"""DEM tiles as users download them: AW3D30 and Copernicus GLO-30 1-degree tiles in a folder, a glob or
a list give exactly the DEM (and slope) of the uncut raster on the scene grid; voids stay voids; a
missing tile is named; tiles that cannot be mosaicked are refused.

The tiles are cut from one synthetic geographic DEM around the corner (142 E, 43 N), in each product's
layout: AW3D30 int16 with nodata -9999 and edges on whole degrees; GLO-30 float32 with pixel centres on
whole degrees (its origin half a pixel west and north of the degree), no nodata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.errors
from rasterio.transform import from_origin

from landslide_jax.data import dem_tiles, raster_io
from landslide_jax.data.slope import slope_degrees
from landslide_jax.errors import InputError

RES = 1 / 600  # 6 arc-seconds: 600 pixels per 1-degree tile keeps the files small
PER_TILE = 600
LATS, LONS = (42, 43), (141, 142)
# A 12 km x 12 km UTM 54N scene at 100 m whose centre is the four tiles' common corner (142 E, 43 N).
SCENE = raster_io.Grid(rasterio.crs.CRS.from_epsg(32654),
                       from_origin(575_700.0, 4_767_400.0, 100.0, 100.0), (120, 120))


def _uncut_dem(kind: str) -> tuple[np.ndarray, rasterio.Affine, str]:
  """The 2 x 2 degree DEM (rows north to south), its transform and dtype, as `kind` stores it."""
  n = 2 * PER_TILE
  lon = 141 + (np.arange(n) + 0.5) * RES
  lat = 44 - (np.arange(n) + 0.5) * RES
  # Relief of a few hundred metres over ~2.5 km wavelengths: slopes of 0-30 degrees at 100 m.
  dem = (300 + 200 * np.sin(lon[None, :] * 200.0) * np.cos(lat[:, None] * 250.0)
         + 900 * (lat[:, None] - 42.0))
  if kind == "aw3d30":
    return np.round(dem).astype(np.int16), from_origin(141.0, 44.0, RES, RES), "int16"
  # GLO-30 is pixel-is-point on whole degrees: as an area raster its edges sit half a pixel out.
  return dem.astype(np.float32), from_origin(141.0 - RES / 2, 44.0 + RES / 2, RES, RES), "float32"


def _write(path: Path, data: np.ndarray, transform, nodata=None) -> Path:
  with rasterio.open(path, "w", driver="GTiff", height=data.shape[0], width=data.shape[1], count=1,
                     dtype=data.dtype, crs="EPSG:4326", transform=transform, nodata=nodata) as dst:
    dst.write(data, 1)
  return path


def _cut(kind: str, folder: Path, dem: np.ndarray, transform, skip=()) -> list[Path]:
  """Writes the four tiles of `dem` under their product names; returns their paths."""
  folder.mkdir(parents=True, exist_ok=True)
  nodata = -9999 if kind == "aw3d30" else None
  paths = []
  for i, lat in enumerate(sorted(LATS, reverse=True)):  # row 0 is the northern tile row
    for j, lon in enumerate(LONS):
      if (lat, lon) in skip:
        continue
      block = dem[i * PER_TILE:(i + 1) * PER_TILE, j * PER_TILE:(j + 1) * PER_TILE]
      tile_transform = transform @ rasterio.Affine.translation(j * PER_TILE, i * PER_TILE)
      paths.append(_write(folder / dem_tiles.tile_name(kind, lat, lon), block, tile_transform, nodata))
  return paths


@pytest.mark.parametrize("kind", ["aw3d30", "glo30"])
def test_four_tiles_give_the_dem_and_slope_of_the_uncut_dem(kind, tmp_path):
  dem, transform, _ = _uncut_dem(kind)
  uncut = _write(tmp_path / "uncut.tif", dem, transform, -9999 if kind == "aw3d30" else None)
  _cut(kind, tmp_path / "tiles", dem, transform)
  tiles = dem_tiles.find_dem_files("tiles", tmp_path, None)
  assert len(tiles) == 4 and all(dem_tiles.tile_of_name(p.name)[0] == kind for p in tiles)
  whole = raster_io.read_dem_on_grid(uncut, SCENE, margin=1)
  mosaic = raster_io.read_dem_on_grid(tiles, SCENE, margin=1)
  # The scene's bilinear footprint reaches into all four tiles.
  assert whole.shape == (122, 122) and not np.isnan(whole).any()
  np.testing.assert_array_equal(mosaic, whole)
  expanded = SCENE.expanded(1).transform
  slope_whole = slope_degrees(whole, expanded, SCENE.crs)
  slope_mosaic = slope_degrees(mosaic, expanded, SCENE.crs)
  assert 10 < float(np.nanmax(slope_whole)) < 60  # real relief, so equality means something
  np.testing.assert_allclose(slope_mosaic, slope_whole, atol=1e-3, rtol=0)


def test_folder_glob_and_list_name_the_same_tiles(tmp_path):
  dem, transform, _ = _uncut_dem("aw3d30")
  paths = _cut("aw3d30", tmp_path / "tiles", dem, transform)
  (tmp_path / "tiles" / "README.txt").write_text("not a raster")
  by_folder = dem_tiles.find_dem_files("tiles", tmp_path, None)
  by_glob = dem_tiles.find_dem_files("tiles/ALPSMLC30_*_DSM.tif", tmp_path, None)
  by_list = dem_tiles.find_dem_files([f"tiles/{p.name}" for p in sorted(paths)], tmp_path, None)
  assert by_folder == by_glob == by_list == tuple(sorted(p.resolve() for p in paths))
  # A list that names a tile twice (or a folder and a tile in it) gives each file once.
  assert dem_tiles.find_dem_files(["tiles", f"tiles/{paths[0].name}"], tmp_path, None) == by_folder
  with pytest.raises(InputError, match="matches no raster"):
    dem_tiles.find_dem_files("tiles/Copernicus_*.tif", tmp_path, None)
  with pytest.raises(InputError, match="does not exist"):
    dem_tiles.find_dem_files(["tiles", "elsewhere/dem.tif"], tmp_path, None)
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="holds no raster"):
    dem_tiles.find_dem_files("empty", tmp_path, None)


@pytest.mark.parametrize("kind", ["aw3d30", "glo30"])
def test_a_missing_tile_is_named(kind, tmp_path):
  dem, transform, _ = _uncut_dem(kind)
  tiles = tuple(_cut(kind, tmp_path, dem, transform, skip=[(42, 142)]))
  with pytest.raises(InputError) as err:
    raster_io.read_dem_on_grid(tiles, SCENE)
  assert f"needs DEM tile {dem_tiles.tile_name(kind, 42, 142)}, which is missing" in str(err.value)
  assert len(str(err.value).splitlines()) == 1


def test_missing_tiles_covers_exactly_the_degrees_the_bounds_touch():
  have = tuple(Path(dem_tiles.tile_name("glo30", lat, lon)) for lat in LATS for lon in LONS)
  assert dem_tiles.missing_tiles(have, (141.2, 42.1, 142.9, 43.9)) == []
  # Bounds ending on a whole degree need no tile beyond it.
  assert dem_tiles.missing_tiles(have, (141.0, 42.0, 143.0, 44.0)) == []
  assert dem_tiles.missing_tiles(have, (140.5, 42.5, 141.5, 42.7)) == [
      dem_tiles.tile_name("glo30", 42, 140)]
  assert dem_tiles.missing_tiles(have, (141.5, 43.5, 142.5, 44.2)) == [
      dem_tiles.tile_name("glo30", 44, 141), dem_tiles.tile_name("glo30", 44, 142)]
  # Unnamed or mixed tile sets: nothing to say by name (the coverage check still applies).
  assert dem_tiles.missing_tiles(have + (Path("dem.tif"),), (139.0, 40.0, 145.0, 46.0)) == []
  assert dem_tiles.missing_tiles(have + (Path(dem_tiles.tile_name("aw3d30", 0, 0)),),
                                 (139.0, 40.0, 145.0, 46.0)) == []


@pytest.mark.parametrize("lat,lon", [(42, 141), (-8, 115), (-1, -79), (64, -22), (0, 0), (-90, -180)])
@pytest.mark.parametrize("kind", ["aw3d30", "glo30"])
def test_tile_names_round_trip_in_every_hemisphere(kind, lat, lon):
  name = dem_tiles.tile_name(kind, lat, lon)
  assert dem_tiles.tile_of_name(name) == (kind, lat, lon)
  assert dem_tiles.tile_of_name(name.replace(".tif", ".TIF")) == (kind, lat, lon)


def test_published_names_parse():
  assert dem_tiles.tile_of_name("ALPSMLC30_N042E141_DSM.tif") == ("aw3d30", 42, 141)
  assert dem_tiles.tile_of_name("Copernicus_DSM_COG_10_N42_00_E141_00_DEM.tif") == ("glo30", 42, 141)
  assert dem_tiles.tile_of_name("Copernicus_DSM_10_S08_00_W079_00_DEM.tif") == ("glo30", -8, -79)
  assert dem_tiles.tile_of_name("ALPSMLC30_N042E141_MSK.tif") is None  # the mask file, not the DSM
  assert dem_tiles.tile_of_name("dem.tif") is None


def test_a_void_in_a_tile_is_refused_where_it_reaches_the_scene_and_ignored_elsewhere(tmp_path):
  dem, transform, _ = _uncut_dem("aw3d30")
  far = dem.copy()
  far[10:60, 10:60] = -9999  # the north-west corner of N043E141, ~100 km from the scene
  tiles = tuple(_cut("aw3d30", tmp_path / "far", far, transform))
  np.testing.assert_array_equal(
      raster_io.read_dem_on_grid(tiles, SCENE),
      raster_io.read_dem_on_grid(tuple(_cut("aw3d30", tmp_path / "ok", dem, transform)), SCENE))
  near = dem.copy()
  near[PER_TILE + 5:PER_TILE + 15, PER_TILE + 5:PER_TILE + 15] = -9999  # in N042E142, under the scene
  with pytest.raises(InputError, match="NaN or nodata pixels inside the scene") as err:
    raster_io.read_dem_on_grid(tuple(_cut("aw3d30", tmp_path / "near", near, transform)), SCENE)
  assert str(err.value).startswith(f"{tmp_path / 'near'}: ") and "gdal_fillnodata" in str(err.value)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the truncated tile
def test_tiles_that_cannot_be_mosaicked_are_refused(tmp_path):
  dem, transform, _ = _uncut_dem("aw3d30")
  tiles = _cut("aw3d30", tmp_path, dem, transform)
  coarse = tmp_path / "coarse" / tiles[1].name
  coarse.parent.mkdir()
  _write(coarse, dem[:300:2, :300:2].copy(), from_origin(142.0, 44.0, 2 * RES, 2 * RES), -9999)
  with pytest.raises(InputError, match="differs from .* in CRS, pixel size or data type"):
    raster_io.read_dem_on_grid((tiles[0], coarse, tiles[2], tiles[3]), SCENE)
  as_float = tmp_path / "float" / tiles[1].name
  as_float.parent.mkdir()
  with rasterio.open(tiles[1]) as src:
    _write(as_float, src.read(1).astype(np.float32), src.transform, -9999)
  with pytest.raises(InputError, match="gdalwarp"):
    raster_io.read_dem_on_grid((tiles[0], as_float, tiles[2], tiles[3]), SCENE)
  broken = tmp_path / "broken" / tiles[1].name
  broken.parent.mkdir()
  for size in (500, 100):  # a header without its georeferencing tags; not even a header
    broken.write_bytes(tiles[1].read_bytes()[:size])
    with pytest.raises(InputError, match="re-download it") as err:
      raster_io.read_dem_on_grid((tiles[0], broken, tiles[2], tiles[3]), SCENE)
    assert str(err.value).startswith(str(broken))


def test_the_mosaic_vrt_is_temporary(tmp_path):
  dem, transform, _ = _uncut_dem("glo30")
  tiles = tuple(_cut("glo30", tmp_path, dem, transform))
  with dem_tiles.dem_source(tiles) as source:
    assert Path(source).exists()
    with rasterio.open(source) as src:
      assert (src.width, src.height) == (2 * PER_TILE, 2 * PER_TILE)
      assert src.transform.almost_equals(transform)
      # Gaps between float tiles without nodata read as NaN voids, never as 0 m.
      assert np.isnan(src.nodata)
  assert not Path(source).exists()
  with dem_tiles.dem_source(tiles[:1]) as single:
    assert single == str(tiles[0])


def test_a_geographic_dem_read_by_blocks_equals_the_whole_read(tmp_path):
  # GDAL approximates the degrees -> UTM transformation per warped chunk; the DEM reader must not, or
  # predict's blocks get other elevations than the whole scene (up to ~1.6 m here, ~0.1 degree of slope).
  dem, transform, _ = _uncut_dem("glo30")
  path = _write(tmp_path / "dem.tif", dem, transform)
  whole = raster_io.read_dem_on_grid(path, SCENE, margin=1)
  blocks = np.full_like(whole, np.nan)
  size = 37  # divides neither side of the 120 px scene
  for r in range(0, SCENE.shape[0], size):
    for c in range(0, SCENE.shape[1], size):
      h, w = min(size, SCENE.shape[0] - r), min(size, SCENE.shape[1] - c)
      block = raster_io.Grid(SCENE.crs, SCENE.transform @ rasterio.Affine.translation(c, r), (h, w))
      blocks[r + 1:r + 1 + h, c + 1:c + 1 + w] = raster_io.read_dem_on_grid(path, block, scene=SCENE)[1:-1, 1:-1]
  np.testing.assert_array_equal(blocks[1:-1, 1:-1], whole[1:-1, 1:-1])


def test_a_dem_finer_than_the_grid_is_averaged_on_its_own_lattice(tmp_path):
  # A 2 m DEM under a 10 m grid aligned with it: each 10 m pixel centre is the centre of a 5 x 5 block
  # of DEM pixels, so the answer is the block mean (not a point sample), whatever block is read.
  rng = np.random.default_rng(3)
  dem = (500 + 20 * rng.standard_normal((300, 300))).astype(np.float32)
  path = tmp_path / "lidar.tif"
  with rasterio.open(path, "w", driver="GTiff", height=300, width=300, count=1, dtype="float32",
                     crs="EPSG:32654", transform=from_origin(500_000.0, 4_700_000.0, 2.0, 2.0)) as dst:
    dst.write(dem, 1)
  grid = raster_io.Grid(rasterio.crs.CRS.from_epsg(32654), from_origin(500_100.0, 4_699_900.0, 10.0, 10.0),
                        (40, 40))
  got = raster_io.read_dem_on_grid(path, grid, margin=0)
  means = dem[50:250, 50:250].reshape(40, 5, 40, 5).astype(np.float64).mean(axis=(1, 3))
  np.testing.assert_allclose(got, means, atol=1e-3)
  block = raster_io.Grid(grid.crs, grid.transform @ rasterio.Affine.translation(13, 7), (11, 17))
  np.testing.assert_array_equal(raster_io.read_dem_on_grid(path, block, margin=0, scene=grid),
                                got[7:18, 13:30])
