"""Per-pixel loss weight maps: class balancing and the U-Net border term (issue 8, "The paper's loss").

Ghorbanzadeh et al. 2021 train with cross-entropy weighted by the map of Ronneberger et al. 2015 (eq. 2):

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)),   w0 = 10, sigma = 5 px,

with w_c the class-balancing weight and d1, d2 the distances to the border of the nearest and the
second-nearest object. Here an object is a connected landslide region of the mask. The maps are
precomputed once per training window (as the paper does per patch) and offered as
`--loss_weights=none|class|unet`; pixels with valid == 0 always weigh 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

LOSS_WEIGHTS = ("none", "class", "unet")
W0 = 10.0
SIGMA = 5.0  # px

# 8-connectivity: landslide polygons that touch only at a corner are rasterised as one region, so they
# are one object, not two objects with a zero-width gap for the border term to separate.
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def class_weights(mask: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
  """Class-balancing weights (background, landslide) from the valid pixels' class frequencies.

  The "balanced" form w_k = n_valid / (2 * n_k): each class then carries half of the total weight, and
  the mean weight over the valid pixels is exactly 1, so the loss scale (and with it the learning rate)
  stays comparable to unweighted BCE. Their ratio w_landslide / w_background is n_background /
  n_landslide.

  A class without valid pixels gets weight 1 and the other class 1 as well (the only choice that keeps
  the mean at 1): with nothing to balance the weights reduce to plain BCE instead of dividing by zero.
  `mask` and `valid` have any equal shapes; non-zero means landslide / valid.
  """
  if mask.shape != valid.shape:
    raise ValueError(f"mask {mask.shape} and valid {valid.shape} differ in shape")
  keep = valid != 0
  total = int(keep.sum())
  landslide = int(np.count_nonzero(mask[keep]))
  background = total - landslide
  if landslide == 0 or background == 0:
    return 1.0, 1.0
  return total / (2.0 * background), total / (2.0 * landslide)


def border_weights(mask: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
  """The U-Net border term w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) of ONE window; float32 (P, P).

  `mask` is (P, P), non-zero = landslide. Objects are its 8-connected landslide regions, found within
  the window only: an object cut by the window edge counts as an object, and objects outside the window
  do not count (the weights are per window, as the paper precomputes them per patch). d1, d2 are the
  Euclidean distances from the pixel centre to the nearest pixel of the nearest and of the second-nearest
  object (as `scipy.ndimage.distance_transform_edt` measures them).

  Following Ronneberger et al. and the common implementations, the term is applied to background pixels
  only (the gaps between objects it is meant to emphasise); object pixels get 0 (the formula there would
  have d1 = 0). With fewer than two objects d2 is undefined and the term is 0 everywhere.
  """
  if mask.ndim != 2:
    raise ValueError(f"border_weights takes one (P, P) window, got shape {mask.shape}")
  landslide = mask != 0
  labels, count = ndimage.label(landslide, structure=_CONNECTIVITY)
  if count < 2:
    return np.zeros(mask.shape, dtype=np.float32)
  # Running smallest two distances over the objects: memory stays O(P^2) whatever the object count,
  # instead of a (count, P, P) stack.
  d1 = np.full(mask.shape, np.inf)
  d2 = np.full(mask.shape, np.inf)
  for k in range(1, count + 1):
    d = ndimage.distance_transform_edt(labels != k)
    d2 = np.minimum(d2, np.maximum(d1, d))
    d1 = np.minimum(d1, d)
  term = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))
  term[landslide] = 0.0
  return term.astype(np.float32)


def weight_maps(mask: np.ndarray, valid: np.ndarray, kind: str,
                class_weight: tuple[float, float] | None = None) -> np.ndarray:
  """Per-pixel loss weights, float32 (N, P, P, 1), for windows with mask, valid (N, P, P, 1).

  'none': valid as float (plain BCE); 'class': w_c(mask) * valid; 'unet': (w_c + border term) * valid.
  `class_weight` (background, landslide) defaults to `class_weights` of these windows; the caller passes
  the training split's so that every split is weighted alike. The border term uses the whole mask, also
  under invalid pixels: a landslide partly under cloud is still one object, its pixels just weigh 0.
  With 'unet' the mean weight exceeds 1 by the mean border term.
  """
  if kind not in LOSS_WEIGHTS:
    raise ValueError(f"unknown loss weights {kind!r}; expected one of {', '.join(LOSS_WEIGHTS)}")
  if mask.ndim != 4 or mask.shape[-1] != 1 or mask.shape != valid.shape:
    raise ValueError(f"mask {mask.shape} and valid {valid.shape} must both be (N, P, P, 1)")
  valid_f = (valid != 0).astype(np.float32)
  if kind == "none":
    return valid_f
  if class_weight is None:
    class_weight = class_weights(mask, valid)
  background, landslide = class_weight
  weights = np.where(mask != 0, np.float32(landslide), np.float32(background))
  if kind == "unet":
    for i in range(mask.shape[0]):
      weights[i, ..., 0] += border_weights(mask[i, ..., 0])
  return (weights * valid_f).astype(np.float32)
