"""Tests for landslide_jax.data.split: the paper's 3:2 train/test cut and the validation block."""

from __future__ import annotations

import numpy as np
import pytest

from landslide_jax.data import split
from landslide_jax.data.split import TEST, TRAIN, VALIDATION


def _line_labels(labels: np.ndarray, axis: int) -> np.ndarray:
  """The one label of each line across the cut axis; fails if a line mixes labels (cut not straight)."""
  lines = labels if axis == 0 else labels.T
  assert (lines == lines[:, :1]).all(), "a line across the cut axis holds more than one area"
  return lines[:, 0]


def _runs(values: np.ndarray) -> list[tuple[int, int, int]]:
  """(value, start, stop) of each run of equal values in a 1-D array."""
  edges = np.flatnonzero(np.diff(values)) + 1
  starts = np.concatenate([[0], edges])
  stops = np.concatenate([edges, [len(values)]])
  return [(int(values[a]), int(a), int(b)) for a, b in zip(starts, stops)]


@pytest.mark.parametrize("shape, axis", [((50, 257), 1), ((257, 50), 0), ((120, 300), 1),
                                         ((300, 120), 0)])
def test_default_cut_all_valid(shape, axis):
  valid = np.ones(shape, bool)
  labels = split.split_train_test(valid)
  assert labels.dtype == np.uint8 and labels.shape == shape
  assert split.long_axis(shape) == axis
  n_lines = shape[axis]
  per_line = _line_labels(labels, axis)
  # One run each, in this order along the long axis: validation lies between train and test, so it
  # is one contiguous block touching the test area.
  runs = _runs(per_line)
  assert [r[0] for r in runs] == [TRAIN, VALIDATION, TEST]
  (_, _, train_stop), (_, val_start, val_stop), (_, test_start, _) = runs
  assert train_stop == val_start and val_stop == test_start
  test_lines = n_lines - test_start
  training_lines = test_start  # train + validation
  val_lines = val_stop - val_start
  # Shares hold to within one line (the cut is on whole lines).
  assert abs(test_lines / n_lines - 0.4) <= 1 / n_lines
  assert abs(val_lines / training_lines - 0.15) <= 1 / training_lines
  fractions = split.area_fractions(labels, valid)
  assert fractions["test"] == pytest.approx(test_lines / n_lines)
  assert sum(fractions.values()) == pytest.approx(1.0)


def test_default_cut_known_positions():
  # 50 x 257, cut across columns. Training keeps the first columns holding >= 60 % of the pixels:
  # 0.6 * 257 = 154.2 -> 155 columns (0..154); test = 102 columns (155..256), 102 / 257 = 0.397.
  # Validation = the last columns of training holding >= 15 % of it, counted from the train side:
  # train keeps ceil(0.85 * 155) = ceil(131.75) = 132 columns (0..131); validation 132..154 (23 columns).
  labels = split.split_train_test(np.ones((50, 257), bool))
  expected = np.full(257, TRAIN)
  expected[132:155] = VALIDATION
  expected[155:] = TEST
  np.testing.assert_array_equal(labels, np.broadcast_to(expected, (50, 257)))
  # Tall grid: the same cut across rows, test at the bottom.
  tall = split.split_train_test(np.ones((257, 50), bool))
  np.testing.assert_array_equal(tall, np.broadcast_to(expected[:, None], (257, 50)))


def test_cut_is_by_valid_area():
  # 100 x 400; columns 0..99 have only 20 valid rows, the others 100: 2000 + 30000 = 32000 valid.
  valid = np.ones((100, 400), bool)
  valid[20:, :100] = False
  labels = split.split_train_test(valid)
  per_column = _line_labels(labels, 1)
  # Train by valid area: 0.6 * 32000 = 19200 = 2000 + 100 * 172 -> columns 0..271 (cut at 272). A cut by
  # raw area would be at column 240 instead.
  test_start = int(np.argmax(per_column == TEST))
  assert test_start == 272
  # Validation: 0.85 * 19200 = 16320 <= 2000 + 100 * 144 -> train keeps columns 0..243.
  val_start = int(np.argmax(per_column == VALIDATION))
  assert val_start == 244
  assert [r[0] for r in _runs(per_column)] == [TRAIN, VALIDATION, TEST]
  fractions = split.area_fractions(labels, valid)
  one_line = 100 / 32000  # the heaviest column's share of the valid area
  assert abs(fractions["test"] - 0.4) <= one_line
  assert fractions["test"] == pytest.approx(12800 / 32000)
  training = fractions["train"] + fractions["validation"]
  assert abs(fractions["validation"] / training - 0.15) <= 100 / 19200
  assert fractions["validation"] == pytest.approx(2800 / 32000)


@pytest.mark.parametrize("side", ["left", "right"])
def test_test_area_override_band(side):
  # 60 x 200 with a test band of 80 columns on one side: TEST is exactly the band, and validation is
  # the 15 % of training next to it: 0.15 * 120 columns = 18 columns.
  test_area = np.zeros((60, 200), bool)
  if side == "left":
    test_area[:, :80] = True
  else:
    test_area[:, 120:] = True
  valid = np.ones((60, 200), bool)
  labels = split.split_train_test(valid, test_area)
  np.testing.assert_array_equal(labels == TEST, test_area)
  expected = np.full(200, TRAIN)
  if side == "left":
    expected[:80] = TEST
    expected[80:98] = VALIDATION
  else:
    expected[102:120] = VALIDATION
    expected[120:] = TEST
  np.testing.assert_array_equal(labels, np.broadcast_to(expected, (60, 200)))


def test_test_area_override_irregular():
  # A test rectangle in the lower right, not spanning the scene: TEST == mask, validation is carved
  # from training only, on the side facing the test area (the columns just before and alongside it).
  valid = np.ones((60, 200), bool)
  valid[:10, :40] = False  # some nodata in the training area
  test_area = np.zeros((60, 200), bool)
  test_area[20:, 150:] = True
  labels = split.split_train_test(valid, test_area)
  np.testing.assert_array_equal(labels == TEST, test_area)
  validation = labels == VALIDATION
  assert validation.any() and not (validation & test_area).any()
  cols = np.flatnonzero(validation.any(axis=0))
  # One contiguous block of columns, reaching the scene's edge on the test area's side.
  np.testing.assert_array_equal(cols, np.arange(cols[0], 200))
  assert cols[0] < 150  # it touches the test rectangle's left edge
  train_cols = np.flatnonzero((labels == TRAIN).any(axis=0))
  assert train_cols.max() < cols[0]
  # Its share of the training area's valid pixels is 15 % to within one column (60 pixels).
  training_valid = (valid & ~test_area).sum()
  assert abs((validation & valid).sum() / training_valid - 0.15) <= 60 / training_valid


@pytest.mark.parametrize("side", ["top", "bottom"])
def test_test_area_override_across_short_axis(side):
  # A test band along the long side of a wide scene (e.g. the southern part of the site): validation
  # must be the rows of training next to it, not a strip of columns at one end of the scene.
  test_area = np.zeros((100, 300), bool)
  if side == "top":
    test_area[:40] = True
  else:
    test_area[60:] = True
  labels = split.split_train_test(np.ones((100, 300), bool), test_area)
  np.testing.assert_array_equal(labels == TEST, test_area)
  # 0.15 * 60 training rows = 9 rows next to the test band.
  expected = np.full(100, TRAIN)
  if side == "top":
    expected[:40] = TEST
    expected[40:49] = VALIDATION
  else:
    expected[51:60] = VALIDATION
    expected[60:] = TEST
  np.testing.assert_array_equal(labels, np.broadcast_to(expected[:, None], (100, 300)))


def test_area_fractions_known_values():
  labels = np.array([[TRAIN, TRAIN, VALIDATION, TEST, TEST],
                     [TRAIN, TRAIN, VALIDATION, TEST, split.OUTSIDE]], np.uint8)
  valid = np.ones_like(labels, bool)
  valid[0, 0] = False
  # 9 valid pixels: 3 train, 2 validation, 3 test, 1 outside every area.
  assert split.area_fractions(labels, valid) == pytest.approx(
      {"train": 3 / 9, "validation": 2 / 9, "test": 3 / 9})
  # No valid pixel at all: zero shares, not a division by zero.
  assert split.area_fractions(labels, np.zeros_like(valid)) == {
      "train": 0.0, "validation": 0.0, "test": 0.0}


def test_min_validation_lines_deepens_a_thin_validation_block():
  # 1000 x 640 all valid (the demo China shape): rows are the long axis. Train+validation = rows
  # [0, 600); 15% of 600 rows = 90 rows of validation, too shallow for one 128 px window.
  valid = np.ones((1000, 640), bool)
  default = split.split_train_test(valid)
  assert np.flatnonzero((default == split.VALIDATION).any(axis=1)).tolist() == list(range(510, 600))
  deep = split.split_train_test(valid, min_validation_lines=128)
  rows = np.flatnonzero((deep == split.VALIDATION).any(axis=1))
  assert rows.tolist() == list(range(472, 600))  # 128 rows, still adjacent to the test area
  assert (deep == split.TEST).sum() == (default == split.TEST).sum()  # the test area never moves
  # A block already deep enough is left as it is.
  assert np.array_equal(split.split_train_test(valid, min_validation_lines=64), default)
