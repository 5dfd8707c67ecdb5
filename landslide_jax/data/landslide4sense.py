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
    lines = [ln.strip() for ln in listed[0].read_text().splitlines() if ln.strip()]
    paths = [root / ln for ln in lines]
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


def _read_h5(path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray:
  try:
    with h5py.File(path, "r") as f:
      if key not in f:
        raise InputError(path, f"has no dataset {key!r} (keys: {', '.join(f.keys()) or 'none'})",
                         "use the official Landslide4Sense files")
      data = f[key][()]
  except OSError as err:
    raise InputError(path, f"cannot read HDF5 file ({str(err).splitlines()[0][:120]})",
                     "the file is corrupt or truncated: re-download it") from None
  if data.shape != shape:
    raise InputError(path, f"dataset {key!r} has shape {data.shape}, expected {shape}",
                     "use the official Landslide4Sense files")
  return data


def read_image(path: str | os.PathLike, channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
  """Reads one patch in physical units: (image float32 (128, 128, C), valid bool (128, 128)).

  Values are multiplied back by the published divisors: S2 digital numbers, slope in degrees, DEM in
  metres. Non-finite pixels are marked invalid and set to 0.
  """
  raw = _read_h5(Path(path), "img", (constants.L4S_PATCH, constants.L4S_PATCH, len(constants.L4S_CHANNELS)))
  index = [constants.L4S_CHANNELS.index(c) for c in channels]
  scales = np.asarray(constants.L4S_SCALES)[index]
  image = raw[..., index] * scales
  valid = np.isfinite(image).all(axis=-1)
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
