"""The paper's spatial split: a training and a testing area (3:2 by area), plus a validation block.

Areas are labelled on the scene grid so that patching can check that no window crosses a boundary.
"""

from __future__ import annotations

import numpy as np

from landslide_jax import constants

OUTSIDE, TRAIN, VALIDATION, TEST = 0, 1, 2, 3
AREA_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test"}


def _cut_index(weights: np.ndarray, fraction: float) -> int:
  """Index i such that weights[:i] holds about `fraction` of the total weight."""
  cumulative = np.cumsum(weights, dtype=np.float64)
  target = fraction * cumulative[-1]
  return int(np.searchsorted(cumulative, target, side="left")) + 1 if target > 0 else 0


def long_axis(shape: tuple[int, int]) -> int:
  """0 when the scene is taller than wide (cut across rows), else 1 (cut across columns)."""
  return 0 if shape[0] > shape[1] else 1


def _facing_axis(train: np.ndarray, test: np.ndarray, default: int) -> int:
  """The axis along which the test area's centre lies furthest from the training area's (in pixels).

  A test-area file can put the test area on any side of the scene, e.g. its southern part of a wide
  scene; the validation block must then be the training rows next to it, not columns at one end.
  """
  offsets = []
  for axis in (0, 1):
    test_lines, train_lines = test.sum(axis=1 - axis), train.sum(axis=1 - axis)
    if not test_lines.any() or not train_lines.any():
      offsets.append(0.0)
      continue
    positions = np.arange(train.shape[axis])
    offsets.append(abs(np.average(positions, weights=test_lines)
                       - np.average(positions, weights=train_lines)))
  other = 1 - default
  return other if offsets[other] > offsets[default] else default


def split_train_test(valid: np.ndarray,
                     test_area: np.ndarray | None = None,
                     test_fraction: float = constants.TEST_FRACTION,
                     validation_fraction: float = constants.VALIDATION_FRACTION,
                     min_validation_lines: int = 0) -> np.ndarray:
  """Labels each pixel TRAIN, VALIDATION or TEST (uint8 (H, W); OUTSIDE only where nothing applies).

  Default: one straight cut across the longer axis, so that the first (1 - test_fraction) of the valid
  pixels are for training and the rest for testing. `test_area` (bool) overrides the cut. Then the last
  `validation_fraction` of the training area's valid pixels, on the side facing the test area, become
  one contiguous validation block. The test area never feeds training or model selection.

  Args:
    valid: bool (H, W), pixels with data; fractions are shares of valid pixels (area with data).
    test_area: bool (H, W) or None.
    test_fraction: share of the valid area for testing (paper: 2 of 3 + 2 = 0.4).
    validation_fraction: share of the training area carved for validation.
    min_validation_lines: the validation block spans at least this many lines (rows or columns) of the
      training area. Builders pass the patch size, so that a small site (China at 128 px) still gets a
      validation window; the block is then larger than `validation_fraction`, and the metadata's
      `area_fractions` say by how much.
  """
  axis = long_axis(valid.shape)
  labels = np.full(valid.shape, TRAIN, np.uint8)
  line_weights = valid.sum(axis=1 - axis)
  if test_area is None:
    cut = _cut_index(line_weights, 1.0 - test_fraction)
    index = [slice(None), slice(None)]
    index[axis] = slice(cut, None)
    labels[tuple(index)] = TEST
  else:
    labels[test_area.astype(bool)] = TEST

  train = labels == TRAIN
  if test_area is not None:
    axis = _facing_axis(valid & train, labels == TEST, axis)
  train_lines = (valid & train).sum(axis=1 - axis)
  test_lines = (labels == TEST).sum(axis=1 - axis)
  positions = np.arange(len(train_lines))
  # Carve validation on the side of the training area that faces the test area.
  test_centre = np.average(positions, weights=test_lines) if test_lines.any() else positions[-1]
  train_centre = np.average(positions, weights=train_lines) if train_lines.any() else 0
  occupied = np.flatnonzero(train_lines)
  first, last = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, len(positions) - 1)
  if test_centre >= train_centre:
    cut = min(_cut_index(train_lines, 1.0 - validation_fraction), last + 1 - min_validation_lines)
    selected = positions >= cut
  else:
    cut = max(_cut_index(train_lines, validation_fraction), first + min_validation_lines)
    selected = positions < cut
  line_mask = selected[:, None] if axis == 0 else selected[None, :]
  labels[train & line_mask] = VALIDATION
  return labels


def area_fractions(labels: np.ndarray, valid: np.ndarray) -> dict[str, float]:
  """Share of the valid pixels in each area, e.g. {'train': 0.51, 'validation': 0.09, 'test': 0.4}."""
  total = max(int(valid.sum()), 1)
  return {name: float((valid & (labels == code)).sum() / total) for code, name in AREA_NAMES.items()}
