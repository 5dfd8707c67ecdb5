"""Test-time augmentation: the mean prediction over the 8 symmetries of the square (dihedral group D4).

Landslides have no preferred orientation in a north-up image, but a trained network's output does: the
mean over the four 90-degree rotations, each with and without a flip, averages that out. All 8 views of
a batch go through the model as one batch (8N windows), so on an accelerator they cost one larger call.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

VIEWS = 8


def _view(x: jax.Array, k: int, flip: bool) -> jax.Array:
  """Rotation by k x 90 degrees, then an optional left-right flip, of (N, H, W, ...) windows."""
  x = jnp.rot90(x, k, axes=(1, 2))
  return jnp.flip(x, axis=2) if flip else x


def _unview(x: jax.Array, k: int, flip: bool) -> jax.Array:
  """The inverse of `_view`: flip back, then rotate by -k x 90 degrees."""
  x = jnp.flip(x, axis=2) if flip else x
  return jnp.rot90(x, -k, axes=(1, 2))


def dihedral_mean(predict: Callable[[jax.Array], jax.Array], images: jax.Array) -> jax.Array:
  """The mean of `predict` over the 8 rotations and flips of square windows, each mapped back.

  Args:
    predict: (M, P, P, C) images -> (M, P, P) per-pixel outputs (e.g. probabilities).
    images: (N, P, P, C) windows; square, so every view has the batch's shape.
  """
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"test-time augmentation needs square windows, got {images.shape[1:3]}")
  views = [(k, flip) for flip in (False, True) for k in range(4)]
  n = images.shape[0]
  out = predict(jnp.concatenate([_view(images, k, f) for k, f in views]))
  return sum(_unview(out[i * n:(i + 1) * n], k, f) for i, (k, f) in enumerate(views)) / VIEWS
