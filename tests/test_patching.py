"""Tests for landslide_jax.data.patching: window counts, boundaries, nodata, and a real build's splits."""

from __future__ import annotations

import numpy as np
import pytest

from landslide_jax import constants, prepare
from landslide_jax.data import patching, scene as scene_lib, split
from landslide_jax.data.split import TEST, TRAIN, VALIDATION

_CODES = {"train": TRAIN, "validation": VALIDATION, "test": TEST}


def _first_line(labels: np.ndarray, code: int, axis: int) -> int:
  """First row (axis 0) or column (axis 1) holding the area `code`."""
  return int(np.flatnonzero((labels == code).any(axis=1 - axis))[0])


def _check_windows(grid: patching.PatchGrid, labels: np.ndarray, code: int, painted: np.ndarray):
  """Every pixel of every window is in the area; windows are aligned to the area's bounding box origin
  and never overlap (`painted` counts windows per pixel over all areas)."""
  p = grid.patch
  rows, cols = np.nonzero(labels == code)
  r0, c0 = rows.min(), cols.min()
  assert ((grid.rows - r0) % p == 0).all() and ((grid.cols - c0) % p == 0).all()
  for r, c in zip(grid.rows, grid.cols):
    assert (labels[r:r + p, c:c + p] == code).all(), f"window ({r}, {c}) crosses the {grid.area} boundary"
    painted[r:r + p, c:c + p] += 1


def test_counts_200x600_patch32():
  valid = np.ones((200, 600), bool)
  labels = split.split_train_test(valid)
  # Wide scene: cut across columns. Test = columns from 0.6 * 600 = 360 on (240 columns). Validation =
  # training columns from 0.85 * 360 = 306 on (54 columns). Train = columns 0..305 (306 columns).
  assert _first_line(labels, VALIDATION, 1) == 306
  assert _first_line(labels, TEST, 1) == 360
  grids = {name: patching.patch_grid(labels, valid, code, 32) for name, code in _CODES.items()}
  # 200 rows // 32 = 6 window rows in every area.
  assert len(grids["train"]) == (200 // 32) * (306 // 32) == 6 * 9 == 54
  assert len(grids["validation"]) == (200 // 32) * (54 // 32) == 6 * 1 == 6
  assert len(grids["test"]) == (200 // 32) * (240 // 32) == 6 * 7 == 42
  for grid in grids.values():
    assert grid.dropped_nodata == 0 and grid.dropped_boundary == 0
    assert grid.rows.dtype == np.int32 and grid.cols.dtype == np.int32


@pytest.mark.parametrize("patch, expected", [
    # Tall 2000 x 1000 scene, cut across rows. Test = rows 0.6 * 2000 = 1200.. (800 rows); validation =
    # rows 0.85 * 1200 = 1020..1199 (180 rows); train = rows 0..1019 (1020 rows); 1000 columns each.
    (32, {"train": 31 * 31, "validation": 5 * 31, "test": 25 * 31}),   # 1020//32, 180//32, 800//32; 1000//32
    (64, {"train": 15 * 15, "validation": 2 * 15, "test": 12 * 15}),   # 1020//64, 180//64, 800//64; 1000//64
    (128, {"train": 7 * 7, "validation": 1 * 7, "test": 6 * 7}),       # 1020//128, 180//128, 800//128; 1000//128
])
def test_counts_per_patch_size(patch, expected):
  valid = np.ones((2000, 1000), bool)
  labels = split.split_train_test(valid)
  assert _first_line(labels, VALIDATION, 0) == 1020
  assert _first_line(labels, TEST, 0) == 1200
  painted = np.zeros(labels.shape, np.int32)
  for name, code in _CODES.items():
    grid = patching.patch_grid(labels, valid, code, patch)
    assert len(grid) == expected[name], name
    _check_windows(grid, labels, code, painted)
  assert painted.max() == 1


def test_windows_stay_inside_their_area():
  # 128 x 128 training area with a 64 x 64 test block at (40, 40), off the 32 px grid of training.
  labels = np.full((128, 128), TRAIN, np.uint8)
  labels[40:104, 40:104] = TEST
  valid = np.ones(labels.shape, bool)
  train = patching.patch_grid(labels, valid, TRAIN, 32)
  test = patching.patch_grid(labels, valid, TEST, 32)
  # Training's 4 x 4 grid from (0, 0): windows in grid rows/cols 1..3 both touch the block (rows/cols
  # 32..127 meet 40..103), so 9 are not whole; (2, 2) = rows/cols 64..95 lies inside the block and
  # does not touch training at all. Kept 16 - 9 = 7; dropped at the boundary 9 - 1 = 8.
  assert len(train) == 7 and train.dropped_boundary == 8 and train.dropped_nodata == 0
  assert sorted(zip(train.rows.tolist(), train.cols.tolist())) == [
      (0, 0), (0, 32), (0, 64), (0, 96), (32, 0), (64, 0), (96, 0)]
  # The test block gets its own grid from its corner (40, 40): 2 x 2 whole windows.
  assert sorted(zip(test.rows.tolist(), test.cols.tolist())) == [(40, 40), (40, 72), (72, 40), (72, 72)]
  assert test.dropped_boundary == 0
  painted = np.zeros(labels.shape, np.int32)
  _check_windows(train, labels, TRAIN, painted)
  _check_windows(test, labels, TEST, painted)
  assert painted.max() == 1
  # windows() cuts exactly those pixels, in plan order.
  image = np.arange(2 * 128 * 128).reshape(2, 128, 128)
  cut = test.windows(image)
  assert cut.shape == (4, 2, 32, 32)
  np.testing.assert_array_equal(cut[0], image[:, test.rows[0]:test.rows[0] + 32,
                                              test.cols[0]:test.cols[0] + 32])


def test_windows_of_an_irregular_split():
  # A test-area override with nodata: windows still never cross a boundary or overlap.
  valid = np.ones((300, 500), bool)
  valid[:70, :90] = False
  test_area = np.zeros(valid.shape, bool)
  test_area[100:260, 330:] = True
  labels = split.split_train_test(valid, test_area)
  painted = np.zeros(labels.shape, np.int32)
  total = 0
  for code in (TRAIN, VALIDATION, TEST):
    grid = patching.patch_grid(labels, valid, code, 32)
    _check_windows(grid, labels, code, painted)
    total += len(grid)
  assert total > 0 and painted.max() == 1


def test_nodata_threshold():
  # 64 x 64 training area = four 32 px windows with 512 (exactly half), 513, 1024 and 0 nodata pixels.
  labels = np.full((64, 64), TRAIN, np.uint8)
  valid = np.ones((64, 64), bool)
  valid[0:16, 0:32] = False                               # window (0, 0): 16 * 32 = 512
  valid[0:16, 32:64] = False                              # window (0, 32): 512 ...
  valid[16, 32] = False                                   # ... + 1 = 513
  valid[32:64, 0:32] = False                              # window (32, 0): 1024
  grid = patching.patch_grid(labels, valid, TRAIN, 32)    # default max_nodata_fraction 0.5 = 512 px
  assert constants.MAX_NODATA_FRACTION == 0.5
  assert sorted(zip(grid.rows.tolist(), grid.cols.tolist())) == [(0, 0), (32, 32)]
  assert grid.dropped_nodata == 2 and grid.dropped_boundary == 0
  strict = patching.patch_grid(labels, valid, TRAIN, 32, max_nodata_fraction=0.0)
  assert list(zip(strict.rows.tolist(), strict.cols.tolist())) == [(32, 32)]
  assert strict.dropped_nodata == 3
  lenient = patching.patch_grid(labels, valid, TRAIN, 32, max_nodata_fraction=1.0)
  assert len(lenient) == 4 and lenient.dropped_nodata == 0


def test_empty_area():
  labels = np.full((64, 64), TRAIN, np.uint8)
  grid = patching.patch_grid(labels, np.ones((64, 64), bool), TEST, 32)
  assert len(grid) == 0 and grid.windows(np.zeros((3, 64, 64))).shape == (0, 3, 32, 32)
  # An area narrower than the patch yields nothing either.
  labels[:, 40:] = TEST
  assert len(patching.patch_grid(labels, np.ones((64, 64), bool), TEST, 32)) == 0


def test_built_splits_are_disjoint(make_site, tmp_path):
  import tfds_builders  # pylint: disable=import-outside-toplevel
  from tfds_builders import site_builder  # pylint: disable=import-outside-toplevel

  site = make_site("china", shape=(200, 600))
  prepare.prepare_site("china", 32, tmp_path / "tfds", site.parent)
  builder = tfds_builders.get_builder("china", site_builder.make_config(32), tmp_path / "tfds")
  source = builder.as_data_source()
  examples = {name: list(source[name]) for name in _CODES}
  # By hand (cut across columns, no nodata): test = columns 360-599, validation = 306-359 (15% of the
  # training area's 360 columns), training = 0-305. Training: whole windows only, 6 x 9 = 54. Validation
  # and test windows cover their area: ceil(200/32) = 7 rows x ceil(54/32) = 2 and ceil(240/32) = 8.
  assert {name: len(e) for name, e in examples.items()} == {"train": 54, "validation": 14, "test": 56}

  # Labels recomputed independently of the builder, from the scene's own valid mask.
  scene = scene_lib.load_scene(site, constants.DEFAULT_CHANNELS, "china")
  labels = split.split_train_test(scene.valid)
  p = 32
  cover = {name: np.zeros(labels.shape, np.int32) for name in _CODES}
  for name, items in examples.items():
    positions = [(int(ex["row"]), int(ex["col"])) for ex in items]
    assert len(set(positions)) == len(positions), f"{name} holds a window twice"
    for ex, (r, c) in zip(items, positions):
      valid = ex["valid"][..., 0].astype(bool)
      h, w = min(p, labels.shape[0] - r), min(p, labels.shape[1] - c)
      assert not valid[h:].any() and not valid[:, w:].any(), f"{name} ({r}, {c}): valid past the scene"
      assert (labels[r:r + h, c:c + w][valid[:h, :w]] == _CODES[name]).all(), \
          f"{name} window ({r}, {c}) scores a pixel of another area"
      assert not ex["image"][~valid].any() and not ex["mask"][~valid].any()  # blanked outside
      if name == "train":
        assert valid.all(), "training windows are whole windows inside the training area"
      cover[name][r:r + h, c:c + w] += valid[:h, :w]
  for name, code in _CODES.items():
    assert cover[name].max() == 1, f"a {name} pixel is scored twice"
    assert not cover[name][labels != code].any()
  # Validation and test: every pixel of the area exactly once (no nodata in this scene).
  for name in ("validation", "test"):
    np.testing.assert_array_equal(cover[name], (labels == _CODES[name]).astype(np.int32))


def test_stitch_puts_every_window_back_exactly():
  # Round trip of a known raster: cut the windows of every area, stitch them back, and every pixel
  # covered by a window equals the original; uncovered pixels get the fill value.
  rng = np.random.default_rng(3)
  raster = rng.normal(size=(200, 600)).astype(np.float32)
  valid = np.ones(raster.shape, bool)
  labels = split.split_train_test(valid)
  covered = np.zeros(raster.shape, bool)
  stitched = np.full(raster.shape, np.nan, np.float32)
  for code in (split.TRAIN, split.VALIDATION, split.TEST):
    grid = patching.patch_grid(labels, valid, code, 32)
    part = patching.stitch(grid.windows(raster), grid.rows, grid.cols, raster.shape, fill=np.nan)
    placed = ~np.isnan(part)
    assert not (covered & placed).any()  # windows of different areas never overlap
    covered |= placed
    stitched[placed] = part[placed]
  assert covered.sum() == (54 + 6 + 42) * 32 * 32
  np.testing.assert_array_equal(stitched[covered], raster[covered])
  assert np.isnan(stitched[~covered]).all()


def _scored_pixels(labels: np.ndarray, valid: np.ndarray, area: int, patch: int) -> np.ndarray:
  """How often each pixel is scored by `cover_grid` windows, as the builder masks them (valid & area)."""
  grid = patching.cover_grid(labels, valid, area, patch)
  keep = grid.windows(valid & (labels == area)).astype(np.int32)
  return patching.stitch(keep, grid.rows, grid.cols, labels.shape, fill=0) if len(grid) else \
      np.zeros(labels.shape, np.int32)


def _irregular_area(shape=(300, 410), seed=5) -> tuple[np.ndarray, np.ndarray]:
  """Labels with a blobby test area touching the scene's bottom edge and nodata holes: what a real
  test-area polygon on a cloudy scene looks like. Sides are not multiples of any patch size."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[:shape[0], :shape[1]]
  blob = (rows - 260) ** 2 / 90 ** 2 + (cols - 200) ** 2 / 150 ** 2 < 1
  labels = np.where(blob, TEST, TRAIN).astype(np.uint8)
  valid = np.ones(shape, bool)
  for _ in range(6):
    r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
    valid[max(r - 15, 0):r + 15, max(c - 25, 0):c + 25] = False
  return labels, valid


def test_cover_grid_scores_every_valid_area_pixel_once_at_every_patch_size():
  labels, valid = _irregular_area()
  wanted = (valid & (labels == TEST)).astype(np.int32)
  for patch in (32, 64, 128):
    np.testing.assert_array_equal(_scored_pixels(labels, valid, TEST, patch), wanted)
    # The paper grid does not: it drops windows cut by the area boundary and the scene edge.
    grid = patching.patch_grid(labels, valid, TEST, patch, max_nodata_fraction=1.0)
    assert grid.windows(valid & (labels == TEST)).sum() < wanted.sum()


def test_cover_grid_windows_past_the_scene_are_zero_padded():
  labels, valid = _irregular_area()
  grid = patching.cover_grid(labels, valid, TEST, 128)
  assert (grid.rows + 128 > labels.shape[0]).any()  # the bottom row of windows leaves the scene
  image = np.arange(np.prod(labels.shape), dtype=np.float32).reshape(labels.shape) + 1
  for window, r, c in zip(grid.windows(image), grid.rows, grid.cols):
    h, w = min(128, labels.shape[0] - r), min(128, labels.shape[1] - c)
    np.testing.assert_array_equal(window[:h, :w], image[r:r + h, c:c + w])
    assert not window[h:].any() and not window[:, w:].any()


def test_cover_grid_on_the_real_jiuzhaigou_test_area():
  from tests.conftest import shared_path  # pylint: disable=import-outside-toplevel
  import rasterio  # pylint: disable=import-outside-toplevel
  with rasterio.open(shared_path("jiuzhaigou_dem", "Test_010.tif")) as src:
    test_area = src.read(1) > 0
  valid = np.ones(test_area.shape, bool)
  labels = split.split_train_test(valid, test_area)
  wanted = (labels == TEST).astype(np.int32)
  for patch in (32, 64, 128):
    np.testing.assert_array_equal(_scored_pixels(labels, valid, TEST, patch), wanted)
