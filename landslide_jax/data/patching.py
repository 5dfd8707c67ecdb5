"""Regular, non-overlapping patch grids inside each area of a split scene.

Training windows follow the paper (`patch_grid`: whole windows inside the area). Validation and test
windows cover their area completely (`cover_grid`), so scores count every valid pixel of the area once,
the same pixels at every patch size.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from landslide_jax import constants
from landslide_jax.data.split import AREA_NAMES


@dataclasses.dataclass(frozen=True)
class PatchGrid:
  """The windows of one area: top-left (row, col) of each kept patch, and what was dropped."""
  area: str
  patch: int
  rows: np.ndarray      # int32 (N,)
  cols: np.ndarray      # int32 (N,)
  dropped_nodata: int   # whole windows inside the area with too much nodata
  dropped_boundary: int  # grid windows that would cross the area's boundary

  def __len__(self) -> int:
    return int(self.rows.size)

  def windows(self, array: np.ndarray) -> np.ndarray:
    """Cuts the windows from a (..., H, W) array: returns (N, ..., patch, patch), zero-padded where a
    window reaches past the array's edge (`cover_grid` windows may)."""
    p = self.patch
    return np.stack([cut_window(array, r, c, p) for r, c in zip(self.rows.tolist(), self.cols.tolist())]) \
        if len(self) else np.zeros((0, *array.shape[:-2], p, p), array.dtype)


def cut_window(array: np.ndarray, row: int, col: int, patch: int) -> np.ndarray:
  """array[..., row:row + patch, col:col + patch], zero-padded to (patch, patch) past the array's edge."""
  window = array[..., row:row + patch, col:col + patch]
  short = (patch - window.shape[-2], patch - window.shape[-1])
  if short == (0, 0):
    return window
  return np.pad(window, [(0, 0)] * (array.ndim - 2) + [(0, short[0]), (0, short[1])])


def _block_sums(mask: np.ndarray, r0: int, c0: int, n_rows: int, n_cols: int, patch: int) -> np.ndarray:
  block = mask[r0:r0 + n_rows * patch, c0:c0 + n_cols * patch]
  return block.reshape(n_rows, patch, n_cols, patch).sum(axis=(1, 3))


def patch_grid(labels: np.ndarray, valid: np.ndarray, area: int, patch: int,
               max_nodata_fraction: float = constants.MAX_NODATA_FRACTION) -> PatchGrid:
  """Plans the windows of one area.

  The grid starts at the top-left corner of the area's bounding box (aligned per area, so each area
  yields as many whole windows as it can), steps by `patch` without overlap, drops partial windows at the
  bounding box's edge, never emits a window with a pixel of another area, and drops windows whose nodata
  share exceeds `max_nodata_fraction`.
  """
  inside = labels == area
  rows_any, cols_any = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
  empty = PatchGrid(AREA_NAMES[area], patch, np.zeros(0, np.int32), np.zeros(0, np.int32), 0, 0)
  if rows_any.size == 0:
    return empty
  r0, c0 = int(rows_any[0]), int(cols_any[0])
  n_rows = (int(rows_any[-1]) + 1 - r0) // patch
  n_cols = (int(cols_any[-1]) + 1 - c0) // patch
  if n_rows == 0 or n_cols == 0:
    return empty
  full = _block_sums(inside, r0, c0, n_rows, n_cols, patch) == patch * patch
  nodata = _block_sums(~valid, r0, c0, n_rows, n_cols, patch)
  keep = full & (nodata <= max_nodata_fraction * patch * patch)
  # Windows that touch the area but are not whole were cut by a boundary: count them for the record.
  touched = _block_sums(inside, r0, c0, n_rows, n_cols, patch) > 0
  bi, bj = np.nonzero(keep)
  return PatchGrid(
      area=AREA_NAMES[area], patch=patch,
      rows=(r0 + bi * patch).astype(np.int32), cols=(c0 + bj * patch).astype(np.int32),
      dropped_nodata=int((full & ~keep).sum()), dropped_boundary=int((touched & ~full).sum()))


def cover_grid(labels: np.ndarray, valid: np.ndarray, area: int, patch: int) -> PatchGrid:
  """Windows that score an area completely: every valid pixel of the area in exactly one window.

  The area's bounding box is tiled from its top-left corner with non-overlapping windows, the last row
  and column of windows reaching past the box (and past the scene, where they are zero-padded: see
  `PatchGrid.windows`). Windows holding no valid pixel of the area are left out. Pixels of other areas
  inside a window are masked out by the caller (valid = 0), so each patch size scores the same pixel
  set: the area's valid pixels.
  """
  inside = (labels == area) & valid
  rows_any, cols_any = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
  if rows_any.size == 0:
    return PatchGrid(AREA_NAMES[area], patch, np.zeros(0, np.int32), np.zeros(0, np.int32), 0, 0)
  r0, c0 = int(rows_any[0]), int(cols_any[0])
  n_rows = -(-(int(rows_any[-1]) + 1 - r0) // patch)
  n_cols = -(-(int(cols_any[-1]) + 1 - c0) // patch)
  padded = np.zeros((n_rows * patch, n_cols * patch), bool)
  box = inside[r0:r0 + n_rows * patch, c0:c0 + n_cols * patch]
  padded[:box.shape[0], :box.shape[1]] = box
  keep = padded.reshape(n_rows, patch, n_cols, patch).any(axis=(1, 3))
  bi, bj = np.nonzero(keep)
  return PatchGrid(area=AREA_NAMES[area], patch=patch,
                   rows=(r0 + bi * patch).astype(np.int32), cols=(c0 + bj * patch).astype(np.int32),
                   dropped_nodata=0, dropped_boundary=0)


def stitch(windows: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
           fill: float = 0.0) -> np.ndarray:
  """Places (N, P, P) windows back on a (H, W) grid at their top-left (row, col); the inverse of
  `PatchGrid.windows` for non-overlapping windows. Pixels no window covers get `fill`."""
  out = np.full(shape, fill, dtype=windows.dtype)
  p = windows.shape[-1]
  for window, r, c in zip(windows, np.asarray(rows).tolist(), np.asarray(cols).tolist()):
    # Windows of `cover_grid` may reach past the grid: keep the part that lies on it.
    h, w = min(p, shape[0] - r), min(p, shape[1] - c)
    out[r:r + h, c:c + w] = window[:h, :w]
  return out
