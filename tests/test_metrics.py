"""Confusion counts and scores against scikit-learn, on the valid pixels only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score, precision_score, recall_score

from landslide_jax import metrics

SCORE_NAMES = ("precision", "recall", "f1", "iou")


def _case(seed: int, positive_rate: float, shape=(3, 16, 16, 1), logit_shift: float = 0.0,
          threshold: float = 0.5):
  """Random uint8 mask/valid (as the input pipeline gives them) and float32 logits.

  Invalid pixels are made to look like confident true positives, so counting any of them shows.
  """
  rng = np.random.default_rng(seed)
  mask = (rng.random(shape) < positive_rate).astype(np.uint8)
  valid = (rng.random(shape) < 0.7).astype(np.uint8)
  logits = (rng.normal(0.0, 3.0, shape) + logit_shift).astype(np.float32)
  # Keep every logit clear of the decision boundary, where float32 and float64 sigmoids could disagree.
  boundary = np.log(threshold / (1 - threshold))
  near = np.abs(logits - boundary) < 1e-3
  logits[near] = boundary + 1e-2
  logits[valid == 0] = 20.0
  mask[valid == 0] = 1
  return logits, mask, valid


def _reference(logits, mask, valid, threshold):
  """scikit-learn on the valid pixels, with the probability computed in float64."""
  keep = valid.reshape(-1).astype(bool)
  y_true = mask.reshape(-1)[keep]
  y_pred = (1.0 / (1.0 + np.exp(-logits.reshape(-1)[keep].astype(np.float64))) > threshold).astype(int)
  tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
  kwargs = {"labels": [0, 1], "pos_label": 1, "zero_division": 0}
  scores = {"precision": precision_score(y_true, y_pred, **kwargs),
            "recall": recall_score(y_true, y_pred, **kwargs),
            "f1": f1_score(y_true, y_pred, **kwargs),
            "iou": jaccard_score(y_true, y_pred, **kwargs)}
  return [int(tp), int(fp), int(fn), int(tn)], scores


# (seed, positive rate, logit shift): ordinary cases, plus no true positives at all, no predicted
# positives (shift -100), neither, and every valid pixel positive and predicted so.
CASES = [(0, 0.3, 0.0), (1, 0.05, 0.0), (2, 0.5, 2.0), (3, 0.0, 0.0), (4, 0.3, -100.0),
         (5, 0.0, -100.0), (6, 1.0, 100.0), (7, 0.9, -1.0)]


@pytest.mark.parametrize("threshold", [0.5, 0.2, 0.85])
@pytest.mark.parametrize("seed,positive_rate,shift", CASES)
def test_counts_and_scores_match_scikit_learn(seed, positive_rate, shift, threshold):
  logits, mask, valid = _case(seed, positive_rate, logit_shift=shift, threshold=threshold)
  want_counts, want_scores = _reference(logits, mask, valid, threshold)

  counts = metrics.confusion_counts(jnp.asarray(logits), jnp.asarray(mask), jnp.asarray(valid),
                                    threshold)
  assert counts.shape == (4,) and counts.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(counts), want_counts)
  assert sum(want_counts) == int(valid.sum())  # every valid pixel exactly once, invalid ones never

  got = metrics.scores(*want_counts)
  assert set(got) == set(SCORE_NAMES)
  for name in SCORE_NAMES:
    assert got[name] == pytest.approx(want_scores[name], rel=1e-12, abs=1e-12), name
  # Straight from the device counts, as evaluate() does via report().
  reported = metrics.report(counts)
  for name in SCORE_NAMES:
    assert reported[name] == pytest.approx(want_scores[name], rel=1e-12, abs=1e-12), name


def test_empty_positive_cases_score_zero():
  # No landslide in truth or prediction: every score is 0 (zero_division=0), not NaN and not 1.
  assert metrics.scores(0, 0, 0, 100) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}
  # Predictions but no landslide in truth; landslides but no predictions.
  assert metrics.scores(0, 5, 0, 100) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}
  assert metrics.scores(0, 0, 5, 100) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}
  # Nothing valid at all.
  logits, mask, valid = _case(0, 0.5)
  counts = metrics.confusion_counts(logits, mask, np.zeros_like(valid))
  np.testing.assert_array_equal(np.asarray(counts), [0, 0, 0, 0])
  assert metrics.report(counts) == {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "precision": 0.0,
                                    "recall": 0.0, "f1": 0.0, "iou": 0.0}


def test_threshold_is_a_probability_threshold():
  # sigmoid(0.5) = 0.622, sigmoid(1.0) = 0.731, sigmoid(-0.5) = 0.378: all landslide pixels.
  logits = jnp.asarray([0.5, 1.0, -0.5], jnp.float32).reshape(3, 1)
  mask = jnp.ones((3, 1), jnp.uint8)
  valid = jnp.ones((3, 1), jnp.uint8)
  tp = lambda t: int(metrics.confusion_counts(logits, mask, valid, t)[0])
  assert [tp(0.3), tp(0.5), tp(0.7), tp(0.8)] == [3, 2, 1, 0]
  # Strictly above: a probability equal to the threshold is not a landslide.
  assert int(metrics.confusion_counts(jnp.zeros((1, 1)), jnp.ones((1, 1)), jnp.ones((1, 1)), 0.5)[0]) == 0


def test_invalid_pixels_never_count():
  logits, mask, valid = _case(11, 0.3)
  base = np.asarray(metrics.confusion_counts(logits, mask, valid))
  # Whatever the model and the mask say outside `valid`, the counts do not move.
  rng = np.random.default_rng(0)
  logits2, mask2 = logits.copy(), mask.copy()
  logits2[valid == 0] = rng.normal(0, 10, int((valid == 0).sum()))
  mask2[valid == 0] = rng.integers(0, 2, int((valid == 0).sum()))
  logits2[(valid == 0) & (rng.random(valid.shape) < 0.2)] = np.nan  # e.g. a model fed raw nodata
  logits2[(valid == 0) & (rng.random(valid.shape) < 0.2)] = np.inf
  np.testing.assert_array_equal(np.asarray(metrics.confusion_counts(logits2, mask2, valid)), base)
  np.testing.assert_array_equal(
      np.asarray(metrics.confusion_counts(np.full_like(logits, np.nan), mask, np.zeros_like(valid))),
      [0, 0, 0, 0])


def test_counts_under_jit_and_pmap_with_a_traced_threshold():
  """As in train.eval_step: inside pmap, summed over devices, threshold an ordinary argument."""
  n = jax.local_device_count()
  logits, mask, valid = _case(12, 0.3, shape=(n, 2, 8, 8, 1), threshold=0.4)
  want, _ = _reference(logits, mask, valid, 0.4)
  jitted = jax.jit(metrics.confusion_counts)(logits.reshape(-1, 8, 8, 1), mask.reshape(-1, 8, 8, 1),
                                             valid.reshape(-1, 8, 8, 1), 0.4)
  np.testing.assert_array_equal(np.asarray(jitted), want)
  step = jax.pmap(lambda lg, m, v, t: jax.lax.psum(metrics.confusion_counts(lg, m, v, t), "batch"),
                  axis_name="batch", in_axes=(0, 0, 0, None))
  np.testing.assert_array_equal(np.asarray(step(logits, mask, valid, 0.4))[0], want)


def test_report_gives_int_counts_and_the_four_scores():
  # evaluate() sums float64 copies of the float32 device counts: report rounds them to ints.
  out = metrics.report(np.array([3.0000001, 1.0, 2.0, 9.9999999]))
  assert list(out) == ["tp", "fp", "fn", "tn", *SCORE_NAMES]
  assert {k: out[k] for k in metrics.COUNT_NAMES} == {"tp": 3, "fp": 1, "fn": 2, "tn": 10}
  assert all(type(out[k]) is int for k in metrics.COUNT_NAMES)  # pylint: disable=unidiomatic-typecheck
  assert all(type(out[k]) is float for k in SCORE_NAMES)  # pylint: disable=unidiomatic-typecheck
  assert out["precision"] == pytest.approx(3 / 4)
  assert out["recall"] == pytest.approx(3 / 5)
  assert out["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
  assert out["iou"] == pytest.approx(3 / (3 + 1 + 2))
  # From a device array, as the pmapped eval step returns them.
  device_counts = jnp.asarray([3.0, 1.0, 2.0, 10.0], jnp.float32)
  assert metrics.report(device_counts) == out


# --- object-level scores -------------------------------------------------------------------------------

def _known_objects():
  """A 40 x 40 map at 100 m^2 per pixel with four landslides and a prediction of known outcome:

  A: 3 x 4 = 12 px (1,200 m^2, small), 8 predicted (67%): detected.
  B: 5 x 8 = 40 px (4,000 m^2, medium), 16 predicted (40%): missed.
  C: 12 x 10 = 120 px (12,000 m^2, large), exactly 60 predicted (50%): detected (at least half).
  D: two 2 x 2 squares touching at a corner = 8 px (800 m^2, small), one object under 8-connectivity;
     its prediction (4 px, 50%) spills one pixel outside it: one region touching D, detected.
  False alarms: a 2 x 2 blob and a single pixel away from every landslide.
  """
  truth = np.zeros((40, 40), bool)
  pred = np.zeros((40, 40), bool)
  truth[1:4, 1:5] = True                  # A
  pred[1:3, 1:5] = True                   # 8 of 12
  truth[10:15, 1:9] = True                # B
  pred[10:12, 1:9] = True                 # 16 of 40
  truth[20:32, 20:30] = True              # C
  pred[20:26, 20:30] = True               # 60 of 120
  truth[1:3, 30:32] = True                # D, upper square
  truth[3:5, 32:34] = True                # D, lower square touching diagonally
  pred[1:3, 30:32] = True                 # 4 of 8 ...
  pred[1, 32] = True                      # ... and one pixel outside D, same region
  pred[36:38, 2:4] = True                 # false alarm
  pred[36, 20] = True                     # false alarm
  return pred, truth, np.ones_like(truth)


def test_objects_on_a_hand_made_map_have_the_known_counts():
  pred, truth, valid = _known_objects()
  counts = metrics.object_counts(pred, truth, valid, pixel_area_m2=100.0)
  assert counts == {"landslides": 4, "detected": 3, "regions": 6, "false_alarms": 2,
                    "by_size": {"<2000 m2": [2, 2], "2000-10000 m2": [1, 0], ">10000 m2": [1, 1]}}
  report = metrics.object_report(counts)
  assert report["recall"] == pytest.approx(3 / 4)
  assert report["precision"] == pytest.approx(4 / 6)
  assert report["f1"] == pytest.approx(2 * (3 / 4) * (4 / 6) / (3 / 4 + 4 / 6))
  assert report["recall_by_size"] == {"<2000 m2": 1.0, "2000-10000 m2": 0.0, ">10000 m2": 1.0}


def test_object_cover_share_and_pixel_area_are_honoured():
  pred, truth, valid = _known_objects()
  strict = metrics.object_counts(pred, truth, valid, pixel_area_m2=100.0, min_cover=0.6)
  assert strict["detected"] == 1                      # only A (67%) reaches 60%
  # At 400 m^2 per pixel A (4,800 m^2) and D (3,200 m^2) are medium, B (16,000) and C (48,000) large.
  coarse = metrics.object_counts(pred, truth, valid, pixel_area_m2=400.0)
  assert coarse["by_size"] == {"<2000 m2": [0, 0], "2000-10000 m2": [2, 2], ">10000 m2": [2, 1]}
  assert metrics.object_report(coarse)["recall_by_size"]["<2000 m2"] is None


def test_objects_ignore_invalid_pixels():
  pred, truth, valid = _known_objects()
  valid = valid.copy()
  valid[10:15, 1:9] = False          # B under clouds: no longer a landslide to find
  valid[36:38, 2:4] = False          # a false alarm under clouds: not counted
  counts = metrics.object_counts(pred, truth, valid, pixel_area_m2=100.0)
  assert (counts["landslides"], counts["detected"], counts["regions"], counts["false_alarms"]) == (3, 3, 4, 1)


def test_empty_maps_score_zero_objects():
  empty = np.zeros((8, 8), bool)
  counts = metrics.object_counts(empty, empty, ~empty, pixel_area_m2=100.0)
  report = metrics.object_report(counts)
  assert (counts["landslides"], counts["regions"], report["precision"], report["recall"], report["f1"]) == (
      0, 0, 0.0, 0.0, 0.0)


def test_windows_are_stitched_so_a_landslide_cut_by_them_counts_once():
  pred, truth, valid = _known_objects()
  p = 8
  rows, cols = np.meshgrid(np.arange(0, 40, p), np.arange(0, 40, p), indexing="ij")
  rows, cols = rows.ravel(), cols.ravel()

  def windows(m):
    return np.stack([m[r:r + p, c:c + p] for r, c in zip(rows, cols)])
  # Shuffled, as a dataset may hold them, and on a site grid not starting at (0, 0).
  order = np.random.default_rng(0).permutation(len(rows))
  counts, unit = metrics.patch_object_counts(
      windows(pred)[order], windows(truth)[order], windows(valid)[order], rows[order] + 96,
      cols[order] + 48, np.array(["china"] * len(rows)), {"china": 100.0})
  assert unit == "map"
  assert counts == metrics.object_counts(pred, truth, valid, 100.0)
  # Two sites: counts add up site by site.
  both, _ = metrics.patch_object_counts(
      np.concatenate([windows(pred)] * 2), np.concatenate([windows(truth)] * 2),
      np.concatenate([windows(valid)] * 2), np.concatenate([rows] * 2), np.concatenate([cols] * 2),
      np.array(["china"] * len(rows) + ["japan"] * len(rows)), {"china": 100.0, "japan": 100.0})
  assert both == metrics.add_object_counts([counts, counts])


def test_windows_that_do_not_tile_one_map_are_scored_one_by_one():
  pred, truth, valid = _known_objects()
  # Landslide4Sense-like: two images, both windows at (0, 0). C (rows 20-31) is cut by the 32 px window.
  wins = [m[None, 0:32, 0:32] for m in (pred, truth, valid)]
  stacked = [np.concatenate([w, w]) for w in wins]
  counts, unit = metrics.patch_object_counts(*stacked, np.zeros(2, int), np.zeros(2, int),
                                             np.array(["l4s", "l4s"]), {"l4s": 100.0})
  one = metrics.object_counts(*(w[0] for w in wins), pixel_area_m2=100.0)
  assert unit == "window" and counts == metrics.add_object_counts([one, one])
