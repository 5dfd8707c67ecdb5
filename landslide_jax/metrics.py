"""The paper's scores (precision, recall, F1) and IoU of the landslide class, from pixel counts.

Counts are summed over a whole test area before scoring (not averaged per patch), and pixels outside
`valid` are excluded. `confusion_counts` runs on device inside the pmapped eval step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

COUNT_NAMES = ("tp", "fp", "fn", "tn")


def confusion_counts(logits: jax.Array, mask: jax.Array, valid: jax.Array,
                     threshold: float = 0.5) -> jax.Array:
  """[TP, FP, FN, TN] of the landslide class over the valid pixels, as float32 (exact below 2**24).

  Args:
    logits: (..., 1) model output.
    mask: (..., 1) 0/1 ground truth.
    valid: (..., 1) 0/1; pixels with 0 count nowhere.
    threshold: probability above which a pixel is called landslide.
  """
  predicted = (jax.nn.sigmoid(logits) > threshold).astype(jnp.float32)
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
  """A title line and one row of precision, recall, F1 and IoU per test set."""
  lines = [title, f"{'test set':<16} {'precision':>9} {'recall':>7} {'F1':>6} {'IoU':>6} {'coverage':>8}"]
  for name, s in tests.items():
    coverage = f"{s['coverage']:>8.3f}" if "coverage" in s else f"{'-':>8}"
    lines.append(f"{name:<16} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {s['iou']:>6.3f} "
                 f"{coverage}")
  return "\n".join(lines)
