"""Faults of the machine, not of the program: a full disk, a read-only or forbidden folder, a symlink loop.

Python raises them as `OSError` with an errno and the file name, but the libraries between us and the disk
rewrap them: orbax/tensorstore as `ValueError("... No space left on device [os_error_code='28'] ...")`,
GDAL as `RasterioIOError("Write failed")` after libtiff logged "No space left on device" through rasterio's
logger. `environment_fault` looks through all of these and turns a recognised fault into an `InputError`
naming the path, the fault and the fix, so the launchers report it in one line like any bad input.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from landslide_jax import files
from landslide_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class _Fault:
  errnos: tuple[int, ...]
  text: str  # strerror as the C library words it, for exceptions that kept only the text
  problem: str
  fix: str


_FAULTS = (
    _Fault((errno.ENOSPC,), "No space left on device", "no space left on the device",
           "free space on that disk or write to another one"),
    _Fault((errno.EDQUOT,), "Disk quota exceeded", "disk quota exceeded",
           "free space in your quota or write to another disk"),
    _Fault((errno.EFBIG,), "File too large", "file size limit reached",
           "raise the limit (ulimit -f) or write to another disk"),
    _Fault((errno.EROFS,), "Read-only file system", "read-only file system",
           "write to a folder on a writable disk"),
    _Fault((errno.EACCES, errno.EPERM), "Permission denied", "permission denied",
           "fix its permissions (ls -ld shows them) or use a folder you own"),
    _Fault((errno.ELOOP,), "Too many levels of symbolic links", "symbolic link loop",
           "a link points back into itself: replace it with the real folder (ls -l shows where it points)"),
)
# Quoted absolute paths in a library's message: tensorstore writes `local file "/a/b/"`.
_QUOTED_PATH = re.compile(r"[\"'](/[^\"']+)[\"']")


class _RecentMessages(logging.Handler):
  """Keeps the last few texts GDAL logged through rasterio: libtiff's "No space left on device" is there
  and nowhere in the exception rasterio raises afterwards. It only records; other handlers still print."""

  def __init__(self) -> None:
    super().__init__(logging.WARNING)
    self.texts: collections.deque[str] = collections.deque(maxlen=20)

  def emit(self, record: logging.LogRecord) -> None:
    try:
      self.texts.append(record.getMessage())
    except Exception:  # pylint: disable=broad-except  # a malformed record must not hide the real error
      pass


_GDAL_MESSAGES = _RecentMessages()


def watch_library_messages() -> None:
  """Starts recording GDAL's messages (idempotent); call before the work that may fail."""
  logger = logging.getLogger("rasterio")
  if _GDAL_MESSAGES not in logger.handlers:
    logger.addHandler(_GDAL_MESSAGES)


@contextlib.contextmanager
def raster_write(path: str | os.PathLike, need_bytes: int) -> Iterator[None]:
  """Turns a GDAL write of `path` that failed for want of room into `OSError(ENOSPC, path)`.

  libtiff reports a full disk only on stderr ("_tiffWriteProc: No space left on device", through its own
  handler: neither rasterio's logger nor the exception sees it) and rasterio then raises a bare "Write
  failed" or "Seek error at scanline N"; GDAL's COG copy also deletes its partial output. What is left to
  tell is the disk: a failed write whose disk now has less room than the write needs (`need_bytes`, an
  upper bound) is put down to a full disk, so the user gets the one-line fault (`environment_fault`)
  with the free space, instead of a traceback. Any other failure passes unchanged.
  """
  try:
    yield
  except Exception as err:  # pylint: disable=broad-except
    # rasterio's errors, GDAL's CPLE_* and pyogrio's share no base class short of Exception.
    if type(err).__module__.split(".")[0] in ("rasterio", "pyogrio"):
      free = files.free_bytes(Path(path).parent)
      if free is not None and free < need_bytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path)) from err
    raise


def _chain(err: BaseException) -> list[BaseException]:
  seen: list[BaseException] = []
  while err is not None and err not in seen:
    seen.append(err)
    err = err.__cause__ or err.__context__
  return seen


def _find(err: BaseException) -> tuple[_Fault, str | None] | None:
  """The fault behind `err` and the path it names, from errno first, then from the texts."""
  chain = _chain(err)
  for exc in chain:
    if isinstance(exc, OSError) and exc.errno is not None:
      for fault in _FAULTS:
        if exc.errno in fault.errnos:
          name = exc.filename2 if exc.errno == errno.ELOOP and exc.filename2 else exc.filename
          return fault, None if name is None else os.fsdecode(name)
  texts = [str(exc) for exc in chain]
  if any(type(exc).__module__.startswith("rasterio") for exc in chain):
    texts += list(_GDAL_MESSAGES.texts)
  for fault in _FAULTS:
    for text in texts:
      if fault.text.lower() in text.lower():
        path = _QUOTED_PATH.search(text)
        return fault, path[1] if path else None
  return None


def _inside(path: str, folder: str) -> bool:
  try:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
  except (OSError, ValueError):
    return False


def _free_text(folder: str) -> str:
  """'3.2 MB free' on the disk holding `folder` (or its first existing parent), or '' if unknown."""
  free = files.free_bytes(folder)
  return "" if free is None else f"{free / 1e6:.1f} MB free"


def environment_fault(err: BaseException, folders: dict[str, str]) -> InputError | None:
  """An `InputError` for a machine fault behind `err`, or None when `err` is something else (a bug).

  Args:
    err: the exception that ended the command.
    folders: the command's folder flags and their values (`{"data_dir": "/data/tfds"}`): the flag whose
      folder holds the failing path is named in the fix; when no path is known, all are listed.
  """
  found = _find(err)
  if found is None:
    return None
  fault, path = found
  owners = [name for name, value in folders.items() if value and path and _inside(path, value)]
  # The innermost folder names the flag to change (--workdir inside --data_dir: --workdir).
  owners.sort(key=lambda name: len(os.path.abspath(folders[name])), reverse=True)
  fix = fault.fix
  if owners:
    fix += f", e.g. another --{owners[0]}"
  problem = fault.problem
  if fault.errnos[0] in (errno.ENOSPC, errno.EDQUOT):
    where = [folders[owners[0]]] if owners else [v for v in folders.values() if v] or ([path] if path else [])
    free = "; ".join(f"{w}: {text}" for w in where if (text := _free_text(w)))
    if free:
      problem += f" ({free} now)"
  if path is None:
    flagged = ", ".join(f"--{name}={value}" for name, value in folders.items() if value)
    problem += f" while writing to one of {flagged}" if flagged else ""
  return InputError(path, problem, fix)
