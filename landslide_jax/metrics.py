"""The paper's scores (precision, recall, F1) and IoU of the landslide class, from pixel counts, and
object-level scores, from landslides counted as connected regions.

Counts are summed over a whole test area before scoring (not averaged per patch), and pixels outside
`valid` are excluded. `confusion_counts` runs on device inside the pmapped eval step.

Objects: inventory mappers count landslides, not pixels. A landslide is a connected region (8-neighbour)
of valid reference pixels; it is *detected* when predicted pixels cover at least `min_cover` of it. A
connected region of predicted pixels touching no landslide pixel is a *false alarm*. Object recall =
detected / landslides, object precision = predicted regions touching a landslide / predicted regions.
Object counts add up over maps, so a test set's scores come from the counts of all its maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from landslide_jax.data import patching

COUNT_NAMES = ("tp", "fp", "fn", "tn")
# The share of a landslide's pixels that must be predicted for it to count as detected.
DEFAULT_MIN_COVER = 0.5
# Size classes of landslides for object recall, in m^2 (the paper's landslides span 1,100 m^2 to 1.5 km^2):
# (name, lower bound inclusive, upper bound exclusive).
SIZE_CLASSES_M2: tuple[tuple[str, float, float], ...] = (
    ("<2000 m2", 0.0, 2_000.0), ("2000-10000 m2", 2_000.0, 10_000.0), (">10000 m2", 10_000.0, np.inf))
# 8-neighbour connectivity: a rasterised polygon's diagonal pixels belong to one landslide.
_CONNECTIVITY = np.ones((3, 3), bool)


def confusion_counts(logits: jax.Array, mask: jax.Array, valid: jax.Array,
                     threshold: float = 0.5) -> jax.Array:
  """[TP, FP, FN, TN] of the landslide class over the valid pixels, as float32 (exact below 2**24).

  Args:
    logits: (..., 1) model output.
    mask: (..., 1) 0/1 ground truth.
    valid: (..., 1) 0/1; pixels with 0 count nowhere.
    threshold: probability above which a pixel is called landslide.
  """
  return predicted_counts(jax.nn.sigmoid(logits) > threshold, mask, valid)


def predicted_counts(predicted: jax.Array, mask: jax.Array, valid: jax.Array) -> jax.Array:
  """[TP, FP, FN, TN] of 0/1 (or bool) landslide calls over the valid pixels, as float32, on device."""
  predicted = predicted.astype(jnp.float32)
  truth = mask.astype(jnp.float32)
  weight = valid.astype(jnp.float32)
  tp = jnp.sum(predicted * truth * weight)
  fp = jnp.sum(predicted * (1 - truth) * weight)
  fn = jnp.sum((1 - predicted) * truth * weight)
  tn = jnp.sum((1 - predicted) * (1 - truth) * weight)
  return jnp.stack([tp, fp, fn, tn])


def scores(tp: float, fp: float, fn: float, tn: float = 0.0) -> dict[str, float]:
  """Precision, recall, F1 and IoU (0 where undefined, as scikit-learn's zero_division=0)."""
  del tn
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
  iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
  return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "iou": float(iou)}


def report(counts, expected_pixels: int | None = None) -> dict[str, float]:
  """Counts (TP, FP, FN, TN) and their scores in one dict, as written to metrics.json.

  With `expected_pixels` (the valid pixels of the scored area, from the dataset metadata) it also holds
  `coverage`: scored pixels / expected pixels, 1.0 when every valid pixel of the area counted once.
  """
  values = [int(round(float(c))) for c in np.asarray(counts).reshape(-1)[:4]]
  out = dict(zip(COUNT_NAMES, values))
  out.update(scores(*values))
  if expected_pixels is not None:
    out["coverage"] = sum(values) / expected_pixels if expected_pixels else 0.0
  return out


def format_scores(title: str, tests: dict[str, dict]) -> str:
  """A title line and one row per test set: pixel precision, recall, F1, IoU and coverage, then object
  precision, recall and F1 where the scores have them."""
  objects = any("objects" in s for s in tests.values())
  header = f"{'test set':<16} {'precision':>9} {'recall':>7} {'F1':>6} {'IoU':>6} {'coverage':>8}"
  if objects:
    header += f" | {'objects':>7} {'obj P':>6} {'obj R':>6} {'obj F1':>6}"
  lines = [title, header]
  for name, s in tests.items():
    coverage = f"{s['coverage']:>8.3f}" if "coverage" in s else f"{'-':>8}"
    line = (f"{name:<16} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {s['iou']:>6.3f} "
            f"{coverage}")
    if "objects" in s:
      o = s["objects"]
      line += f" | {o['landslides']:>7d} {o['precision']:>6.3f} {o['recall']:>6.3f} {o['f1']:>6.3f}"
    lines.append(line)
  return "\n".join(lines)


def object_counts(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray, pixel_area_m2: float,
                  min_cover: float = DEFAULT_MIN_COVER) -> dict:
  """Object counts of one map (see the module docstring): `landslides`, `detected`, `regions`
  (predicted), `false_alarms`, and per size class (`SIZE_CLASSES_M2`) `[landslides, detected]`.

  Args:
    predicted, truth, valid: (H, W) bool maps; pixels outside `valid` belong to no object.
    pixel_area_m2: area of one pixel, for the size classes (a landslide's area counts its valid pixels).
    min_cover: share of a landslide's valid pixels that must be predicted for it to be detected.
  """
  predicted = np.asarray(predicted, bool) & np.asarray(valid, bool)
  truth = np.asarray(truth, bool) & np.asarray(valid, bool)
  labels, n = ndimage.label(truth, structure=_CONNECTIVITY)
  sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
  hits = np.bincount(labels[predicted], minlength=n + 1)[1:]
  detected = hits >= min_cover * sizes
  regions, m = ndimage.label(predicted, structure=_CONNECTIVITY)
  touching = np.zeros(m + 1, bool)
  touching[regions[truth]] = True
  area = sizes * pixel_area_m2
  by_size = {name: [int(np.sum((area >= lo) & (area < hi))), int(np.sum(detected & (area >= lo) & (area < hi)))]
             for name, lo, hi in SIZE_CLASSES_M2}
  return {"landslides": int(n), "detected": int(detected.sum()), "regions": int(m),
          "false_alarms": int(m - touching[1:].sum()), "by_size": by_size}


def add_object_counts(parts: list[dict]) -> dict:
  """The object counts of several maps together (counts add; scores do not)."""
  total = {"landslides": 0, "detected": 0, "regions": 0, "false_alarms": 0,
           "by_size": {name: [0, 0] for name, _, _ in SIZE_CLASSES_M2}}
  for part in parts:
    for key in ("landslides", "detected", "regions", "false_alarms"):
      total[key] += part[key]
    for name in total["by_size"]:
      total["by_size"][name] = [a + b for a, b in zip(total["by_size"][name], part["by_size"][name])]
  return total


def object_report(counts: dict, min_cover: float = DEFAULT_MIN_COVER) -> dict:
  """Object counts with object precision, recall and F1 and recall per size class (None where a class
  has no landslide), as written to metrics.json under "objects"."""
  recall = counts["detected"] / counts["landslides"] if counts["landslides"] else 0.0
  hits = counts["regions"] - counts["false_alarms"]
  precision = hits / counts["regions"] if counts["regions"] else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {**counts, "min_cover": min_cover, "precision": float(precision), "recall": float(recall),
          "f1": float(f1),
          "recall_by_size": {name: (d / n if n else None) for name, (n, d) in counts["by_size"].items()}}


def patch_object_counts(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray, rows: np.ndarray,
                        cols: np.ndarray, sites: np.ndarray, pixel_area_m2: dict[str, float],
                        min_cover: float = DEFAULT_MIN_COVER) -> tuple[dict, str]:
  """Object counts of a test split given as (N, P, P) windows with their positions and sites.

  A site's windows are stitched back into its map first, so a landslide cut by window borders counts
  once. Windows that do not tile one map (Landslide4Sense: every image's windows start at (0, 0)) are
  scored one by one, and landslides cut by their borders count once per window.

  Returns:
    (counts, unit): the summed counts and "map" or "window", what objects were counted within.
  """
  parts, unit = [], "map"
  sites = np.asarray(sites)
  for site in dict.fromkeys(sites.tolist()):
    index = np.flatnonzero(sites == site)
    r, c = np.asarray(rows)[index], np.asarray(cols)[index]
    area = pixel_area_m2[site]
    if len(set(zip(r.tolist(), c.tolist()))) < len(index):
      unit = "window"
      parts += [object_counts(predicted[i], truth[i], valid[i], area, min_cover) for i in index]
      continue
    p = predicted.shape[-1]
    r0, c0 = int(r.min()), int(c.min())
    shape = (int(r.max()) - r0 + p, int(c.max()) - c0 + p)

    def stitched(windows, r=r, c=c, r0=r0, c0=c0, shape=shape, index=index):
      return patching.stitch(np.asarray(windows[index], bool), r - r0, c - c0, shape, fill=False)
    parts.append(object_counts(stitched(predicted), stitched(truth), stitched(valid), area, min_cover))
  return add_object_counts(parts), unit


# Thresholds tried when one is chosen on validation: fine enough that the F1 curve's top is found
# (F1 varies slowly near it), coarse enough not to fit the validation area's noise.
THRESHOLD_GRID = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))


def pixel_counts(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """[TP, FP, FN, TN] of bool maps over the valid pixels (host-side twin of `confusion_counts`)."""
  predicted, truth, valid = (np.asarray(a, bool) for a in (predicted, truth, valid))
  p, t = predicted[valid], truth[valid]
  return np.array([np.sum(p & t), np.sum(p & ~t), np.sum(~p & t), np.sum(~p & ~t)], np.int64)


def threshold_scores(probs: np.ndarray, truth: np.ndarray, valid: np.ndarray,
                     thresholds=THRESHOLD_GRID) -> list[dict]:
  """Precision, recall and F1 of `probs > t` for each threshold t, over the valid pixels."""
  valid = np.asarray(valid, bool)
  p, t_ = np.asarray(probs)[valid], np.asarray(truth, bool)[valid]
  rows = []
  for t in thresholds:
    pred = p > t
    tp, fp, fn = int(np.sum(pred & t_)), int(np.sum(pred & ~t_)), int(np.sum(~pred & t_))
    rows.append({"threshold": float(t), **scores(tp, fp, fn)})
  return rows


def best_threshold(rows: list[dict]) -> dict:
  """The row of `threshold_scores` with the highest F1; among equal ones, the threshold nearest 0.5."""
  return max(rows, key=lambda r: (r["f1"], -abs(r["threshold"] - 0.5)))


def split_report(probs: np.ndarray, mask: np.ndarray, valid: np.ndarray, rows: np.ndarray,
                 cols: np.ndarray, sites: np.ndarray, threshold: float, pixel_area_m2: dict[str, float],
                 expected_pixels: int | None = None, min_cover: float = DEFAULT_MIN_COVER) -> dict:
  """Pixel scores (`report`) and object scores (under "objects") of a split's probabilities (N, P, P)
  at `threshold`; `mask`, `valid` (N, P, P) and the windows' positions and sites as in the datasets."""
  predicted = np.asarray(probs) > threshold
  out = report(pixel_counts(predicted, mask, valid), expected_pixels)
  counts, unit = patch_object_counts(predicted, np.asarray(mask, bool), np.asarray(valid, bool), rows, cols,
                                     sites, pixel_area_m2, min_cover)
  out["objects"] = {**object_report(counts, min_cover), "counted_within": unit}
  return out
