"""Tests for landslide_jax.data.normalization: stored stats are training-only, pooling, applying."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from landslide_jax import constants, prepare
from landslide_jax.data import normalization
from landslide_jax.errors import InputError


def _plain_stats(examples: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
  """Mean and std per channel over the valid pixels of read-back examples, in plain numpy."""
  pixels = np.concatenate([ex["image"][ex["valid"][..., 0] == 1] for ex in examples]).astype(np.float64)
  std = pixels.std(axis=0)
  std = np.where(std > 1e-6, std, 1.0)  # the documented rule for constant channels
  return pixels.mean(axis=0), std, pixels.shape[0]


def test_stored_stats_are_training_only(make_site, tmp_path):
  import tfds_builders  # pylint: disable=import-outside-toplevel
  from tfds_builders import site_builder  # pylint: disable=import-outside-toplevel

  # Nodata in the top-left corner (windows with some nodata are kept, so the valid mask matters), and
  # the right half made brighter, so that windows of validation and test (on the right) would shift
  # the statistics if they leaked into them.
  site = make_site("china", shape=(200, 600), nodata_block=True)
  with rasterio.open(site / "s2.tif", "r+") as dst:
    data = dst.read()
    data[:, :, 300:] = np.where(data[:, :, 300:] > 0, data[:, :, 300:] + 4000, 0)
    dst.write(data)
  prepare.prepare_site("china", 32, tmp_path / "tfds", site.parent)
  builder = tfds_builders.get_builder("china", site_builder.make_config(32), tmp_path / "tfds")
  stored = normalization.read_normalization(builder.data_path)
  assert stored.channels == constants.DEFAULT_CHANNELS

  source = builder.as_data_source()
  splits = {name: [source[name][i] for i in range(len(source[name]))] for name in source}
  partial = [ex for ex in splits["train"] if 0 < ex["valid"].sum() < ex["valid"].size]
  assert partial, "expected training windows with some nodata"

  mean, std, count = _plain_stats(splits["train"])
  assert stored.count == count
  np.testing.assert_allclose(stored.mean, mean, rtol=1e-4)
  np.testing.assert_allclose(stored.std, std, rtol=1e-4)

  # Statistics that include the test (or validation) windows are clearly different: S2 bands differ.
  for leaked in (splits["train"] + splits["test"], splits["train"] + splits["validation"]):
    leak_mean, leak_std, _ = _plain_stats(leaked)
    assert not np.allclose(stored.mean, leak_mean, rtol=1e-4)
    assert np.all(np.abs(np.asarray(stored.mean[:4]) / leak_mean[:4] - 1) > 0.01)
    assert not np.allclose(stored.std, leak_std, rtol=1e-4)
  # Nor do they include nodata pixels (stored as 0): counting them would pull the mean down.
  all_pixels = np.concatenate([ex["image"].reshape(-1, 5) for ex in splits["train"]]).astype(np.float64)
  assert all_pixels.shape[0] > count
  assert np.all(all_pixels.mean(axis=0)[:4] < np.asarray(stored.mean[:4]) * (1 - 1e-3))


def _windows(rng, n, channels, offset, scale):
  windows = rng.normal(offset, scale, size=(n, channels, 8, 8))
  valid = rng.random((n, 8, 8)) > 0.2
  return windows, valid


def test_pool_stats_equals_stats_of_union():
  rng = np.random.default_rng(0)
  names = ("B2", "B3", "slope")
  w1, v1 = _windows(rng, 5, 3, np.array([1000.0, 50.0, -3.0])[:, None, None], 120.0)
  w2, v2 = _windows(rng, 11, 3, np.array([1400.0, 10.0, 7.0])[:, None, None], 30.0)
  parts = [normalization.channel_stats(w1, v1, names), normalization.channel_stats(w2, v2, names)]
  pooled = normalization.pool_stats(parts)
  union = normalization.channel_stats(np.concatenate([w1, w2]), np.concatenate([v1, v2]), names)
  assert pooled.channels == names
  assert pooled.count == union.count == int(v1.sum() + v2.sum())
  np.testing.assert_allclose(pooled.mean, union.mean, rtol=1e-9)
  np.testing.assert_allclose(pooled.std, union.std, rtol=1e-9)
  # The parts really differ, so a plain average of their statistics would not pass.
  assert abs(np.mean([p.std[0] for p in parts]) - union.std[0]) > 1.0


def test_pool_stats_rejects_other_channels():
  a = normalization.ChannelStats(("B2",), (1.0,), (1.0,), 4)
  b = normalization.ChannelStats(("B3",), (1.0,), (1.0,), 4)
  with pytest.raises(ValueError, match="channels"):
    normalization.pool_stats([a, b])


def test_channel_stats_known_values():
  # One channel, values 1, 2, 3, 4 valid and a 100 that is nodata: mean 2.5, std sqrt(1.25).
  windows = np.array([1.0, 2.0, 3.0, 4.0, 100.0, 100.0, 100.0, 100.0, 100.0]).reshape(1, 1, 3, 3)
  valid = np.array([True] * 4 + [False] * 5).reshape(1, 3, 3)
  stats = normalization.channel_stats(windows, valid, ("dem",))
  assert stats == normalization.ChannelStats(("dem",), (2.5,), (pytest.approx(np.sqrt(1.25)),), 4)
  # A constant channel is left unscaled rather than divided by zero.
  flat = normalization.channel_stats(np.full((1, 1, 3, 3), 7.0), np.ones((1, 3, 3), bool), ("slope",))
  assert flat.mean == (7.0,) and flat.std == (1.0,)
  with pytest.raises(ValueError, match="no valid"):
    normalization.channel_stats(windows, np.zeros_like(valid), ("dem",))


def test_apply_known_answer():
  stats = normalization.ChannelStats(("B2", "slope"), (1.0, 10.0), (2.0, 4.0), 100)
  image = np.array([[[3.0, 10.0], [1.0, 2.0]],
                    [[-1.0, 30.0], [5.0, 14.0]]], np.float64)  # (H, W, C) = (2, 2, 2)
  out = stats.apply(image)
  assert out.dtype == np.float32 and out.shape == (2, 2, 2)
  np.testing.assert_array_equal(out, np.array([[[1.0, 0.0], [0.0, -2.0]],
                                               [[-1.0, 5.0], [2.0, 1.0]]], np.float32))
  # Round trip through the metadata JSON keeps every value.
  assert normalization.ChannelStats.from_json(stats.to_json()) == stats


def test_read_normalization_missing(tmp_path):
  with pytest.raises(InputError, match="metadata.json missing"):
    normalization.read_normalization(tmp_path)
