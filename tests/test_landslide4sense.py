"""Landslide4Sense: the official h5 layout round-trips through the TFDS builder in physical units.

Each check runs on the real sample (../shared/data/landslide4sense_sample, skipped when absent) and on a
self-made layout written to tmp_path in the same format, which always runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from landslide_jax import constants, prepare
from landslide_jax.data import landslide4sense as l4s
from tests.conftest import shared_path

# The divisors as published with the data (README of the sample): kept here, not read from
# `constants`, so that a typo in the constant is caught rather than reproduced.
PUBLISHED_SCALES = (1111.81, 824.63, 663.42, 445.17, 645.86, 1547.74, 1960.44, 1941.32, 674.08, 9.05,
                    1113.98, 519.90, 20.29, 772.83)
# h5 channels of the paper inputs B2, B3, B4, B8, slope, and of B11, B12, dem.
PAPER_INDEX = (1, 2, 3, 7, 12)
B11_B12_DEM_INDEX = (10, 11, 13)
SIZE = constants.L4S_PATCH


def _prepare(data_dir: Path, manual_dir: Path, patch: int,
             channels: tuple[str, ...] = constants.DEFAULT_CHANNELS):
  """Builds one dataset and returns (metadata, data sources per split)."""
  import tfds_builders  # pylint: disable=import-outside-toplevel
  from tfds_builders.landslide4sense import landslide4sense as l4s_builder  # pylint: disable=import-outside-toplevel
  result = prepare.prepare_site("landslide4sense", patch, data_dir, manual_dir, channels)
  builder = tfds_builders.get_builder("landslide4sense", l4s_builder.make_config(patch, channels),
                                      data_dir)
  return result.metadata, builder.as_data_source()


def _split_folder(metadata: dict, split: str) -> str:
  # A published split is read from its own folder; a carved one (origin is a sentence) from TrainData.
  origin = metadata["areas"][split]["origin"]
  return origin if origin in l4s.SPLIT_DIRS.values() else l4s.SPLIT_DIRS["train"]


def _expected_from_h5(root: Path, folder: str, image_id: str, index: tuple[int, ...]):
  """(image float32 (128, 128, C), mask uint8, valid bool) straight from the h5 files."""
  with h5py.File(root / folder / "img" / f"{image_id}.h5", "r") as f:
    raw = f["img"][()]
  with h5py.File(root / folder / "mask" / f"{image_id.replace('image', 'mask')}.h5", "r") as f:
    mask = f["mask"][()]
  image = raw[..., list(index)] * np.asarray(PUBLISHED_SCALES)[list(index)]
  valid = np.isfinite(image).all(axis=-1)
  image[~valid] = 0.0
  return image.astype(np.float32), mask.astype(np.uint8), valid


def _match_examples(source, metadata: dict, patch: int, expected) -> dict[str, dict]:
  """Matches every example to one (image, row, col) tile of its split, by tile offset and content.

  Examples carry no image id and TFDS stores them in a hashed order, so an example is identified by its
  (row, col) offset plus its pixels: it must equal that tile of one of the split's listed images, and
  each tile must be used exactly once.

  Args:
    source: data sources per split.
    metadata: the dataset's metadata.
    patch: tile size.
    expected: callable (split, image_id) -> (image, mask, valid) in 128 px.

  Returns:
    Per split: {"tiles": set of (image_id, row, col), "slide": landslide pixels, "valid": valid pixels}.
  """
  per_tile = (SIZE // patch) ** 2
  out = {}
  for split, data in source.items():
    ids = metadata["areas"][split]["images"]
    assert len(data) == len(ids) * per_tile == metadata["areas"][split]["patches"], split
    truth = {i: expected(split, i) for i in ids}
    used, slide, valid_px = set(), 0, 0
    for k in range(len(data)):
      example = data[k]
      r, c = int(example["row"]), int(example["col"])
      assert r % patch == 0 and c % patch == 0 and 0 <= r < SIZE and 0 <= c < SIZE
      assert example["image"].dtype == np.float32
      assert example["image"].shape[:2] == example["mask"].shape[:2] == (patch, patch)
      found = None
      for image_id, (image, mask, valid) in truth.items():
        if (image_id, r, c) in used:
          continue
        window = np.s_[r:r + patch, c:c + patch]
        if (np.array_equal(example["mask"][..., 0], mask[window])
            and np.array_equal(example["valid"][..., 0], valid[window].astype(np.uint8))
            and np.allclose(example["image"], image[window], rtol=1e-6, atol=0)):
          found = image_id
          break
      assert found is not None, f"{split} example {k} at ({r}, {c}) matches no tile of {ids}"
      used.add((found, r, c))
      slide += int(example["mask"][example["valid"].astype(bool)].sum())
      valid_px += int(example["valid"].sum())
    assert len(used) == len(ids) * per_tile
    out[split] = {"tiles": used, "slide": slide, "valid": valid_px}
  return out


def _check_splits(metadata: dict, all_ids: list[str], matched: dict) -> None:
  """Splits are disjoint by image and together hold every image once."""
  ids = {s: metadata["areas"][s]["images"] for s in ("train", "validation", "test")}
  assert sum(len(v) for v in ids.values()) == len(all_ids)
  assert sorted(sum(ids.values(), [])) == sorted(all_ids)
  for split, info in matched.items():
    assert {t[0] for t in info["tiles"]} == set(ids[split])


def test_published_scales_match_constants():
  np.testing.assert_array_equal(constants.L4S_SCALES, PUBLISHED_SCALES)
  assert tuple(constants.L4S_CHANNELS.index(c) for c in constants.DEFAULT_CHANNELS) == PAPER_INDEX


# ---------------------------------------------------------------------------------------------------
# Real sample.


@pytest.fixture(scope="module")
def real_root() -> Path:
  return shared_path("landslide4sense_sample")


@pytest.fixture(scope="module")
def real_ids(real_root) -> list[str]:
  lines = [ln.strip() for ln in (real_root / "train.txt").read_text().splitlines() if ln.strip()]
  return [Path(ln).stem for ln in lines]


@pytest.fixture(scope="module")
def real_data_dir(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp("l4s_real_tfds")


@pytest.mark.parametrize("patch", [128, 32])
def test_real_round_trip(real_root, real_ids, real_data_dir, patch):
  assert len(real_ids) == 14
  metadata, source = _prepare(real_data_dir, real_root, patch)
  assert metadata["channels"] == list(constants.DEFAULT_CHANNELS)
  assert metadata["source"] == constants.SOURCE_REAL
  assert set(source) == {"train", "validation", "test"}

  def expected(split, image_id):
    return _expected_from_h5(real_root, _split_folder(metadata, split), image_id, PAPER_INDEX)

  matched = _match_examples(source, metadata, patch, expected)
  _check_splits(metadata, real_ids, matched)
  # The sample has no ValidData/TestData, so both are carved from TrainData.
  assert metadata["areas"]["train"]["origin"] == "TrainData"
  for split in ("validation", "test"):
    assert "TrainData" in metadata["areas"][split]["origin"]
  if patch == 32:
    assert sum(len(s) for s in source.values()) == 14 * 16
  # Landslide share of the whole sample: ~4.8 % (README), from the examples and from the metadata.
  slide = sum(m["slide"] for m in matched.values())
  valid = sum(m["valid"] for m in matched.values())
  assert valid == 14 * SIZE * SIZE
  assert slide / valid == pytest.approx(0.048, abs=0.002)
  for split, info in matched.items():
    assert metadata["areas"][split]["landslide_share"] == pytest.approx(info["slide"] / info["valid"])


def test_real_channels_by_name(real_root, real_ids, real_data_dir):
  channels = constants.parse_channels("b11, B12, DEM", constants.L4S_CHANNELS)
  assert channels == ("B11", "B12", "dem")
  metadata, source = _prepare(real_data_dir, real_root, 128, channels)
  assert metadata["channels"] == list(channels)
  assert source["train"][0]["image"].shape == (128, 128, 3)

  def expected(split, image_id):
    return _expected_from_h5(real_root, _split_folder(metadata, split), image_id, B11_B12_DEM_INDEX)

  matched = _match_examples(source, metadata, 128, expected)
  _check_splits(metadata, real_ids, matched)


# ---------------------------------------------------------------------------------------------------
# Self-made layout: known physical values, divided by the published scales as the official files are.


def _known_image(seed: int) -> np.ndarray:
  """Distinct physical values per image (DN-like integers), so tiles identify their image."""
  rng = np.random.default_rng(seed)
  return rng.integers(1, 10000, size=(SIZE, SIZE, 14)).astype(np.float64)


def _known_mask(seed: int) -> np.ndarray:
  rng = np.random.default_rng(1000 + seed)
  return (rng.random((SIZE, SIZE)) < 0.05).astype(np.uint8)


def _write_split(root: Path, folder: str, numbers: list[int], with_masks: bool = True,
                 nan_pixels: dict[int, list[tuple[int, int, int]]] | None = None,
                 list_file: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Writes `<folder>/img/image_N.h5` (+ masks) and returns {image_id: (physical values, mask)}."""
  (root / folder / "img").mkdir(parents=True, exist_ok=True)
  if with_masks:
    (root / folder / "mask").mkdir(parents=True, exist_ok=True)
  truth = {}
  for n in numbers:
    values, mask = _known_image(n), _known_mask(n)
    for r, c, ch in (nan_pixels or {}).get(n, []):
      values[r, c, ch] = np.nan
    with h5py.File(root / folder / "img" / f"image_{n}.h5", "w") as f:
      f.create_dataset("img", data=values / np.asarray(PUBLISHED_SCALES))
    if with_masks:
      with h5py.File(root / folder / "mask" / f"mask_{n}.h5", "w") as f:
        f.create_dataset("mask", data=mask)
    truth[f"image_{n}"] = (values, mask)
  if list_file:
    (root / list_file).write_text("".join(f"{folder}/img/image_{n}.h5\n" for n in numbers))
  return truth


def _expected_known(truth: dict, index: tuple[int, ...]):
  """Expected (image, mask, valid) from the known physical values: NaN anywhere -> invalid and 0."""

  def expected(split, image_id):
    del split
    values, mask = truth[image_id]
    image = values[..., list(index)]
    valid = np.isfinite(image).all(axis=-1)
    image = np.where(valid[..., None], image, 0.0)
    return image.astype(np.float32), mask, valid

  return expected


TRAIN_NUMBERS = [1, 2, 3, 5, 8, 13, 21, 34]
# NaN pixels (row, col, h5 channel) in selected channels (B2, slope) and one in an unselected one (B1).
NAN_PIXELS = {1: [(0, 0, 1), (40, 70, 12), (40, 71, 1), (40, 71, 12)], 5: [(127, 127, 7)],
              21: [(64, 64, 0)]}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """A TrainData-only layout of 8 images with a train.txt, some pixels NaN."""
  root = tmp_path_factory.mktemp("l4s_synthetic")
  truth = _write_split(root, "TrainData", TRAIN_NUMBERS, nan_pixels=NAN_PIXELS, list_file="train.txt")
  return root, truth


@pytest.mark.parametrize("patch", [128, 32])
def test_synthetic_round_trip(synthetic, tmp_path, patch):
  root, truth = synthetic
  metadata, source = _prepare(tmp_path / "tfds", root, patch)
  matched = _match_examples(source, metadata, patch, _expected_known(truth, PAPER_INDEX))
  _check_splits(metadata, list(truth), matched)
  # 8 images: 20 % (2) carved for testing, then 15 % of the rest (1) for validation.
  sizes = {s: len(metadata["areas"][s]["images"]) for s in ("train", "validation", "test")}
  assert sizes == {"train": 5, "validation": 1, "test": 2}
  assert sum(len(s) for s in source.values()) == 8 * (SIZE // patch) ** 2
  for split in ("validation", "test"):
    assert "TrainData" in metadata["areas"][split]["origin"]
  for split, info in matched.items():
    assert metadata["areas"][split]["landslide_share"] == pytest.approx(info["slide"] / info["valid"])


def test_synthetic_nan_pixels_are_invalid_and_zero(synthetic, tmp_path):
  root, truth = synthetic
  metadata, source = _prepare(tmp_path / "tfds", root, 128)
  location = {i: s for s in source for i in metadata["areas"][s]["images"]}
  # The pixels with a NaN in B2, B8 or slope; a NaN only in B1 (not an input) leaves the pixel valid.
  bad = {(f"image_{n}", r, c) for n, pixels in NAN_PIXELS.items() for r, c, ch in pixels
         if ch in PAPER_INDEX}
  assert len(bad) == 4
  invalid_seen = set()
  for image_id in truth:
    data = source[location[image_id]]
    values = truth[image_id][0]
    for k in range(len(data)):
      example = data[k]
      unscaled = values[..., list(PAPER_INDEX)]
      finite = np.isfinite(unscaled).all(-1)
      # This example is the one of `image_id` when its finite pixels carry the known values.
      if not np.allclose(example["image"][finite], unscaled[finite], rtol=1e-6, atol=0):
        continue
      rows, cols = np.nonzero(example["valid"][..., 0] == 0)
      invalid_seen |= {(image_id, int(r), int(c)) for r, c in zip(rows, cols)}
      assert not np.isnan(example["image"]).any()
      assert (example["image"][rows, cols] == 0).all()
  assert invalid_seen == bad
  # The B1-only NaN pixel stays valid (B1 is not selected).
  assert ("image_21", 64, 64) not in invalid_seen


def test_direct_read_multiplies_scales_back(synthetic):
  root, truth = synthetic
  values, _ = truth["image_2"]
  image, valid = l4s.read_image(root / "TrainData" / "img" / "image_2.h5", ("B11", "B12", "dem"))
  assert image.dtype == np.float32 and valid.all()
  np.testing.assert_allclose(image, values[..., list(B11_B12_DEM_INDEX)], rtol=1e-6)
  np.testing.assert_array_equal(l4s.read_mask(root / "TrainData" / "mask" / "mask_2.h5"),
                                truth["image_2"][1])


def test_synthetic_channels_by_name(synthetic, tmp_path):
  root, truth = synthetic
  channels = constants.parse_channels(["B11", "b12", "elevation"], constants.L4S_CHANNELS)
  metadata, source = _prepare(tmp_path / "tfds", root, 64, channels)
  assert metadata["channels"] == ["B11", "B12", "dem"]
  matched = _match_examples(source, metadata, 64, _expected_known(truth, B11_B12_DEM_INDEX))
  _check_splits(metadata, list(truth), matched)


def test_labelled_validdata_is_used_as_is(tmp_path):
  root = tmp_path / "raw"
  truth = _write_split(root, "TrainData", TRAIN_NUMBERS, list_file="train.txt")
  valid_truth = _write_split(root, "ValidData", [100, 101], list_file="valid.txt")
  metadata, source = _prepare(tmp_path / "tfds", root, 64)
  areas = metadata["areas"]
  assert areas["validation"]["origin"] == "ValidData"
  assert areas["validation"]["images"] == ["image_100", "image_101"]
  assert len(source["validation"]) == 2 * 4
  # Validation is not carved from TrainData: train and test share the 8 TrainData images.
  assert sorted(areas["train"]["images"] + areas["test"]["images"]) == sorted(truth)
  assert len(areas["test"]["images"]) == math.ceil(0.2 * 8)
  assert "TrainData" in areas["test"]["origin"]
  matched = _match_examples(source, metadata, 64, _expected_known({**truth, **valid_truth},
                                                                  PAPER_INDEX))
  _check_splits(metadata, list(truth) + list(valid_truth), matched)


def test_unlabelled_validdata_is_replaced_by_carving(tmp_path):
  root = tmp_path / "raw"
  truth = _write_split(root, "TrainData", TRAIN_NUMBERS, list_file="train.txt")
  _write_split(root, "ValidData", [100, 101], with_masks=False)
  metadata, source = _prepare(tmp_path / "tfds", root, 128)
  areas = metadata["areas"]
  origin = areas["validation"]["origin"]
  assert "TrainData" in origin and "no published ValidData masks" in origin
  assert set(areas["validation"]["images"]) <= set(truth)
  assert "image_100" not in areas["validation"]["images"]
  matched = _match_examples(source, metadata, 128, _expected_known(truth, PAPER_INDEX))
  _check_splits(metadata, list(truth), matched)
