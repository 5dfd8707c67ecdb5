"""Test-time augmentation (landslide_jax/tta.py) against a numpy re-implementation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from landslide_jax import tta


def _numpy_tta(predict, images: np.ndarray) -> np.ndarray:
  """The definition, one view at a time: transform, predict, transform back, average."""
  total = np.zeros(images.shape[:3], np.float64)
  for flip in (False, True):
    for k in range(4):
      view = np.rot90(images, k, axes=(1, 2))
      view = view[:, :, ::-1] if flip else view
      out = np.asarray(predict(jnp.asarray(np.ascontiguousarray(view))))
      out = out[:, :, ::-1] if flip else out
      total += np.rot90(out, -k, axes=(1, 2))
  return total / 8


def _position_dependent(x):
  """Not equivariant: a ramp over columns and rows weights the first channel differently per pixel."""
  h, w = x.shape[1:3]
  ramp = jnp.arange(h)[:, None] * 10.0 + jnp.arange(w)[None, :]
  return x[..., 0] * ramp + x[..., 1] ** 2


def test_tta_equals_the_mean_of_the_eight_views_done_one_by_one():
  images = np.random.default_rng(0).normal(size=(3, 6, 6, 2)).astype(np.float32)
  got = np.asarray(tta.dihedral_mean(_position_dependent, jnp.asarray(images)))
  np.testing.assert_allclose(got, _numpy_tta(_position_dependent, images), rtol=1e-6, atol=1e-5)
  # The ramp is symmetric under none of the views: TTA changed the output.
  assert not np.allclose(got, np.asarray(_position_dependent(jnp.asarray(images))), atol=1e-3)


def test_tta_leaves_an_equivariant_model_unchanged():
  images = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)

  def pointwise(x):  # per-pixel, so rotating the input rotates the output
    return jnp.tanh(x[..., 0] - 2 * x[..., 2])
  np.testing.assert_allclose(np.asarray(tta.dihedral_mean(pointwise, jnp.asarray(images))),
                             np.asarray(pointwise(jnp.asarray(images))), rtol=1e-6, atol=1e-6)


def test_tta_calls_the_model_once_with_all_views():
  calls = []

  def counting(x):
    calls.append(x.shape)
    return x[..., 0]
  tta.dihedral_mean(counting, jnp.zeros((5, 4, 4, 1)))
  assert calls == [(40, 4, 4, 1)]


def test_tta_refuses_non_square_windows():
  with pytest.raises(ValueError, match="square"):
    tta.dihedral_mean(lambda x: x[..., 0], jnp.zeros((1, 4, 6, 1)))
