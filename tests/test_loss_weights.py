"""Loss weight maps: class balancing and the U-Net border term, against hand-computed answers and a
brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from landslide_jax import loss_weights


def _unet_term(d1: float, d2: float) -> float:
  return loss_weights.W0 * math.exp(-(d1 + d2) ** 2 / (2 * loss_weights.SIGMA ** 2))


def test_class_weights_known_answer():
  # 4 valid pixels, 1 landslide: n_valid / (2 n_k) = 4/6 and 4/2.
  mask = np.array([[1, 0], [0, 0]], dtype=np.uint8)
  valid = np.ones_like(mask)
  background, landslide = loss_weights.class_weights(mask, valid)
  assert background == pytest.approx(2 / 3)
  assert landslide == pytest.approx(2.0)


def test_class_weights_ignore_invalid_pixels_and_average_one():
  rng = np.random.default_rng(0)
  mask = (rng.random((5, 12, 12, 1)) < 0.2).astype(np.uint8)
  valid = (rng.random(mask.shape) < 0.7).astype(np.uint8)
  keep = valid.astype(bool)
  n1 = int(mask[keep].sum())
  n0 = int(keep.sum()) - n1
  background, landslide = loss_weights.class_weights(mask, valid)
  assert landslide / background == pytest.approx(n0 / n1)
  # Landslide labels under invalid pixels change nothing.
  flipped = mask.copy()
  flipped[~keep] = 1 - flipped[~keep]
  assert loss_weights.class_weights(flipped, valid) == pytest.approx((background, landslide))
  weights = loss_weights.weight_maps(mask, valid, "class")
  assert weights[keep].mean() == pytest.approx(1.0, rel=1e-6)
  assert np.all(weights[~keep] == 0)


@pytest.mark.parametrize("fill", [0, 1])
def test_class_weights_single_class_does_not_divide_by_zero(fill):
  mask = np.full((2, 4, 4, 1), fill, dtype=np.uint8)
  valid = np.ones_like(mask)
  assert loss_weights.class_weights(mask, valid) == (1.0, 1.0)
  assert loss_weights.class_weights(mask, np.zeros_like(valid)) == (1.0, 1.0)
  np.testing.assert_array_equal(loss_weights.weight_maps(mask, valid, "class"), 1.0)


def test_border_term_between_two_pixels_known_answer():
  mask = np.zeros((11, 11), dtype=np.uint8)
  mask[5, 2] = mask[5, 8] = 1
  term = loss_weights.border_weights(mask)
  assert term.shape == (11, 11) and term.dtype == np.float32
  assert term[5, 5] == pytest.approx(_unet_term(3.0, 3.0), rel=1e-6)  # midpoint
  assert term[2, 5] == pytest.approx(_unet_term(math.sqrt(18), math.sqrt(18)), rel=1e-6)
  assert term[5, 0] == pytest.approx(_unet_term(2.0, 8.0), rel=1e-6)
  assert term[0, 0] == pytest.approx(_unet_term(math.sqrt(29), math.sqrt(89)), rel=1e-6)
  assert term[5, 2] == 0 and term[5, 8] == 0  # object pixels get no border term


def test_border_term_between_two_squares_known_answer():
  mask = np.zeros((16, 16), dtype=np.uint8)
  mask[2:5, 2:5] = 1  # rows/cols 2..4
  mask[2:5, 9:12] = 1  # rows 2..4, cols 9..11
  term = loss_weights.border_weights(mask)
  # (3, 6): 2 px right of col 4 and 3 px left of col 9.
  assert term[3, 6] == pytest.approx(_unet_term(2.0, 3.0), rel=1e-6)
  # (7, 7): nearest pixels (4, 4) and (4, 9).
  assert term[7, 7] == pytest.approx(_unet_term(math.sqrt(18), math.sqrt(13)), rel=1e-6)
  assert np.all(term[mask == 1] == 0)


def test_border_term_zero_for_one_object():
  mask = np.zeros((12, 12), dtype=np.uint8)
  mask[3:6, 3:6] = 1
  np.testing.assert_array_equal(loss_weights.border_weights(mask), 0)
  np.testing.assert_array_equal(loss_weights.border_weights(np.zeros((12, 12))), 0)


def test_corner_touching_regions_are_one_object():
  mask = np.zeros((12, 12), dtype=np.uint8)
  mask[2:5, 2:5] = 1
  mask[5:8, 5:8] = 1  # touches the first square only at a corner
  np.testing.assert_array_equal(loss_weights.border_weights(mask), 0)


def _brute_force_border(mask: np.ndarray, w0: float, sigma: float) -> np.ndarray:
  """Explicit distances from every pixel centre to every pixel of every object; independent of
  distance transforms (only the labelling is shared)."""
  labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
  rows, cols = np.indices(mask.shape)
  pixels = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)
  per_object = []
  for k in range(1, count + 1):
    members = np.argwhere(labels == k).astype(np.float64)
    dist = np.sqrt(((pixels[:, None, :] - members[None, :, :]) ** 2).sum(-1)).min(axis=1)
    per_object.append(dist)
  dists = np.sort(np.stack(per_object), axis=0)
  term = w0 * np.exp(-(dists[0] + dists[1]) ** 2 / (2 * sigma ** 2))
  term = term.reshape(mask.shape)
  term[mask != 0] = 0
  return term


@pytest.mark.parametrize("seed,w0,sigma", [(0, 10.0, 5.0), (1, 10.0, 5.0), (2, 3.0, 2.0)])
def test_border_term_matches_brute_force(seed, w0, sigma):
  rng = np.random.default_rng(seed)
  mask = np.zeros((24, 24), dtype=np.uint8)
  for _ in range(7):
    r, c = rng.integers(0, 24, 2)
    h, w = rng.integers(1, 5, 2)
    mask[r:r + h, c:c + w] = 1  # may be cut by the window edge or merge with others
  _, count = ndimage.label(mask, structure=np.ones((3, 3)))
  assert count >= 3
  got = loss_weights.border_weights(mask, w0=w0, sigma=sigma)
  np.testing.assert_allclose(got, _brute_force_border(mask, w0, sigma), rtol=0, atol=1e-5)
  assert got.max() > 0.1  # the comparison is not between two zero maps


def _windows():
  mask = np.zeros((3, 16, 16, 1), dtype=np.uint8)
  mask[0, 2:5, 2:5] = 1
  mask[0, 2:5, 9:12] = 1
  mask[1, 6:9, 6:9] = 1
  valid = np.ones_like(mask)
  valid[0, :, 6] = 0  # through the gap between the two squares
  valid[2, 8:] = 0
  return mask, valid


def test_weight_maps_kinds():
  mask, valid = _windows()
  none = loss_weights.weight_maps(mask, valid, "none")
  klass = loss_weights.weight_maps(mask, valid, "class", class_weight=(0.5, 4.0))
  unet = loss_weights.weight_maps(mask, valid, "unet", class_weight=(0.5, 4.0))
  for weights in (none, klass, unet):
    assert weights.shape == mask.shape and weights.dtype == np.float32
    assert np.all(weights[valid == 0] == 0)
  np.testing.assert_array_equal(none, valid.astype(np.float32))
  want_class = np.where(mask == 1, 4.0, 0.5) * valid
  np.testing.assert_allclose(klass, want_class)
  border = np.stack([loss_weights.border_weights(m[..., 0]) for m in mask])[..., None]
  np.testing.assert_allclose(unet, (want_class + border) * valid, rtol=1e-6)
  assert unet[0, 3, 7, 0] == pytest.approx(0.5 + _unet_term(3.0, 2.0), rel=1e-6)
  # One object per window: the border term vanishes and 'unet' equals 'class'.
  np.testing.assert_array_equal(unet[1:], klass[1:])


def test_weight_maps_default_class_weight_is_the_windows_own():
  mask, valid = _windows()
  np.testing.assert_allclose(
      loss_weights.weight_maps(mask, valid, "class"),
      loss_weights.weight_maps(mask, valid, "class",
                               class_weight=loss_weights.class_weights(mask, valid)))


def test_weight_maps_unknown_kind():
  mask, valid = _windows()
  with pytest.raises(ValueError, match="none, class, unet"):
    loss_weights.weight_maps(mask, valid, "focal")
