"""Reader of the official Landslide4Sense layout (Ghorbanzadeh et al. 2022).

Layout under the dataset root: `TrainData/img/image_N.h5` (key `img`, float64 (128, 128, 14)) with masks
`TrainData/mask/mask_N.h5` (key `mask`, uint8 (128, 128)); `ValidData/` and `TestData/` alike when
present, masks only where published; list files `train.txt`, `valid.txt`/`val.txt`, `test.txt` with one
image path per line. Channels were divided by `constants.L4S_SCALES`; reading multiplies them back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path

import h5py
import numpy as np

from landslide_jax import constants
from landslide_jax.errors import InputError

SPLIT_DIRS = {"train": "TrainData", "validation": "ValidData", "test": "TestData"}
LIST_FILES = {"train": ("train.txt",), "validation": ("valid.txt", "val.txt", "validation.txt"),
              "test": ("test.txt",)}
# Plausible level of a patch as stored: the median over its Sentinel-2 channels of each channel's median.
# Each channel was divided by its mean over the dataset, so this is about 1: 0.79-1.36 in the 14 real
# sample patches (../shared/data/landslide4sense_sample), per channel 0.70-5.5. Two orders of magnitude
# either side keep dark (water) and bright (snow, cloud) patches, and refuse values never divided (DN,
# about 1000) or divided twice (about 0.001), which would be read off by as much once multiplied back.
PLAUSIBLE_LEVEL = (0.01, 100.0)
_S2_INDEX = [i for i, c in enumerate(constants.L4S_CHANNELS) if c in constants.SENTINEL2_BANDS]


@dataclasses.dataclass(frozen=True)
class L4SImage:
  """One Landslide4Sense patch file and its mask file (None when the split has no masks)."""
  image: Path
  mask: Path | None

  @property
  def image_id(self) -> str:
    return self.image.stem


def find_root(manual_dir: str | os.PathLike) -> Path:
  """The dataset root: `manual_dir` itself or `manual_dir/landslide4sense`, whichever has TrainData."""
  for root in (Path(manual_dir), Path(manual_dir) / "landslide4sense"):
    if (root / SPLIT_DIRS["train"]).is_dir():
      return root
  raise InputError(manual_dir, "no Landslide4Sense TrainData/ folder here",
                   "point --manual_dir at the folder holding TrainData/img and TrainData/mask")


def mask_path(image_path: Path) -> Path:
  """`.../img/image_N.h5` -> `.../mask/mask_N.h5` (the official naming)."""
  return image_path.parent.parent / "mask" / re.sub(r"^image", "mask", image_path.name)


def list_split(root: Path, split: str) -> list[L4SImage]:
  """The images of one split, from its list file when there is one, else from its folder."""
  folder = root / SPLIT_DIRS[split] / "img"
  listed = [root / name for name in LIST_FILES[split] if (root / name).is_file()]
  if listed:
    numbered = [(n, ln.strip()) for n, ln in enumerate(listed[0].read_text().splitlines(), start=1)
                if ln.strip()]
    paths = [root / ln for _, ln in numbered]
    # An image listed twice would be two examples with one key (the TFDS build then fails with an
    # unrelated message about TensorFlow) or, tiled, weigh twice in training.
    seen: dict[str, int] = {}
    for (number, line), path in zip(numbered, paths):
      first = seen.setdefault(os.path.normpath(path), number)
      if first != number:
        raise InputError(listed[0], f"lists {line} twice (lines {first} and {number})",
                         "remove the repeated line: list each image once")
    missing = [p for p in paths if not p.is_file()]
    if missing:
      raise InputError(listed[0], f"lists {len(missing)} missing file(s), e.g. {missing[0]}",
                       "restore the files or remove their lines from the list file")
  elif folder.is_dir():
    paths = sorted(folder.glob("image_*.h5"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
  else:
    return []
  out = []
  for path in paths:
    mask = mask_path(path)
    out.append(L4SImage(path, mask if mask.is_file() else None))
  return out


def _dtype_text(dtype: np.dtype) -> str:
  if dtype.names:
    return f"a compound dtype (fields {', '.join(dtype.names)})"
  return {"S": f"bytes ({dtype})", "V": f"opaque bytes ({dtype})",
          "O": "objects (variable-length strings)", "U": f"text ({dtype})"}.get(dtype.kind, str(dtype))


def _read_h5(path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray:
  """Reads `key` after checking its shape and that it holds numbers (not bytes, text or records)."""
  try:
    with h5py.File(path, "r") as f:
      if key not in f:
        raise InputError(path, f"has no dataset {key!r} (keys: {', '.join(f.keys()) or 'none'})",
                         "use the official Landslide4Sense files")
      dataset = f[key]
      if not isinstance(dataset, h5py.Dataset):
        raise InputError(path, f"{key!r} is a group, not a dataset",
                         "use the official Landslide4Sense files")
      if dataset.dtype.kind not in "biuf":
        raise InputError(path, f"dataset {key!r} holds {_dtype_text(dataset.dtype)}, not numbers",
                         "use the official Landslide4Sense files (img float64, mask uint8)")
      if dataset.shape != shape:
        raise InputError(path, f"dataset {key!r} has shape {dataset.shape}, expected {shape}",
                         "use the official Landslide4Sense files")
      data = dataset[()]
  except OSError as err:
    raise InputError(path, f"cannot read HDF5 file ({str(err).splitlines()[0][:120]})",
                     "the file is corrupt or truncated: re-download it") from None
  return data


def _check_image(path: Path, raw: np.ndarray) -> None:
  """Refuses a patch whose values cannot be at the published scaling.

  Integers, all NaN, or a level far from 1 (see PLAUSIBLE_LEVEL): multiplied back, such values would
  give DN off by orders of magnitude, silently.
  """
  fix = ("use the official float64 files, or store each channel as float divided by its divisor in "
         "landslide_jax/constants.py L4S_SCALES")
  if raw.dtype.kind != "f":
    raise InputError(path, f"'img' is stored as {raw.dtype}, not float: the official patches are float64 "
                     "with each channel divided by its mean (values about 1), which integers cannot hold, "
                     "so multiplied back they would be off by orders of magnitude", fix)
  finite = np.isfinite(raw)
  if not finite.any():
    raise InputError(path, "'img' is all NaN (no finite value)", "re-download the file, or drop it and its "
                     "line in the list file")
  medians = [np.median(raw[..., i][finite[..., i]]) for i in _S2_INDEX if finite[..., i].any()]
  if medians:
    level = float(np.median(medians))
    low, high = PLAUSIBLE_LEVEL
    if level == 0:
      raise InputError(path, "the Sentinel-2 channels of 'img' are 0 in most pixels (no data)",
                       "drop the image and its line in the list file")
    if not low <= level <= high:
      raise InputError(path, f"the Sentinel-2 channels of 'img' have a median of {level:.4g}, outside "
                       f"{low:g}-{high:g}: the official patches are divided by the channel means (about 1; "
                       "0.8-1.4 in real patches), so these values would be off by orders of magnitude", fix)


def read_image(path: str | os.PathLike, channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
  """Reads one patch in physical units: (image float32 (128, 128, C), valid bool (128, 128)).

  Values are multiplied back by the published divisors: S2 digital numbers, slope in degrees, DEM in
  metres. Non-finite pixels are marked invalid and set to 0.

  Raises:
    InputError: unreadable file; `img` of another shape, not float (bytes, records, integers), all NaN,
      without a finite pixel in `channels`, or not at the published scaling (see PLAUSIBLE_LEVEL).
  """
  path = Path(path)
  raw = _read_h5(path, "img", (constants.L4S_PATCH, constants.L4S_PATCH, len(constants.L4S_CHANNELS)))
  _check_image(path, raw)
  index = [constants.L4S_CHANNELS.index(c) for c in channels]
  scales = np.asarray(constants.L4S_SCALES)[index]
  image = raw[..., index] * scales
  valid = np.isfinite(image).all(axis=-1)
  if not valid.any():
    raise InputError(path, f"'img' has no pixel with finite values in every channel read "
                     f"({', '.join(channels)})", "re-download the file, or drop it and its line in the list "
                     "file")
  image[~valid] = 0.0
  return image.astype(np.float32), valid


def read_mask(path: str | os.PathLike) -> np.ndarray:
  """Reads one mask: uint8 (128, 128), 1 = landslide."""
  mask = _read_h5(Path(path), "mask", (constants.L4S_PATCH, constants.L4S_PATCH))
  return (mask > 0).astype(np.uint8)


def carve(images: list[L4SImage], fraction: float, salt: str) -> tuple[list[L4SImage], list[L4SImage]]:
  """Splits off a deterministic `fraction` of whole images (ordered by a hash of their names).

  Whole images, not tiles, so no 128 px patch has tiles on both sides of a split.
  """
  order = sorted(images, key=lambda im: hashlib.sha1(f"{salt}/{im.image.name}".encode()).hexdigest())
  n = int(np.ceil(fraction * len(images))) if images else 0
  taken = {im.image for im in order[:n]}
  return [im for im in images if im.image not in taken], [im for im in images if im.image in taken]


def plan_splits(root: Path) -> tuple[dict[str, list[L4SImage]], dict[str, str]]:
  """Images per split. Splits without published masks are replaced by images carved from TrainData.

  Returns the images per split and where each split came from.
  """
  splits = {name: list_split(root, name) for name in SPLIT_DIRS}
  if not splits["train"]:
    raise InputError(root / SPLIT_DIRS["train"], "holds no image_N.h5 file", "check the download")
  missing = [im.image for im in splits["train"] if im.mask is None]
  if missing:
    raise InputError(missing[0], "training image has no mask", f"add {mask_path(missing[0])}")
  origin = {"train": SPLIT_DIRS["train"]}
  train = splits["train"]
  for name, fraction in (("test", 0.2), ("validation", constants.VALIDATION_FRACTION)):
    published = [im for im in splits[name] if im.mask is not None]
    if published and len(published) == len(splits[name]):
      origin[name] = SPLIT_DIRS[name]
    else:
      train, splits[name] = carve(train, fraction, salt=name)
      origin[name] = f"{fraction:.0%} of TrainData images (no published {SPLIT_DIRS[name]} masks)"
  splits["train"] = train
  # An image in two splits (a list file naming another split's images) would score a model on its own
  # training data. Carving never does this; list files can.
  owner: dict[str, str] = {}
  for name, images in splits.items():
    for im in images:
      first = owner.setdefault(os.path.normpath(im.image), name)
      if first != name:
        raise InputError(im.image, f"is in both the {first} and the {name} split",
                         "list each image in one split's list file only")
  for name, images in splits.items():
    if not images:
      raise InputError(root, f"the {name} split would be empty ({len(train)} training images)",
                       "provide more images or a labelled ValidData/TestData")
  return splits, origin


def content_hash(splits: dict[str, list[L4SImage]]) -> str:
  """SHA-256 over the names and bytes of every image and mask, in split order."""
  digest = hashlib.sha256()
  for images in splits.values():
    for im in images:
      for path in (im.image, im.mask):
        if path is not None:
          digest.update(path.name.encode() + path.read_bytes())
  return digest.hexdigest()


def tiles(patch: int) -> list[tuple[int, int]]:
  """Top-left offsets of the non-overlapping `patch` tiles of a 128 px image."""
  if constants.L4S_PATCH % patch:
    raise ValueError(f"patch {patch} does not tile {constants.L4S_PATCH}")
  steps = range(0, constants.L4S_PATCH, patch)
  return [(r, c) for r in steps for c in steps]
