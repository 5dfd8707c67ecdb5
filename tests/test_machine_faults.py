"""Faults of the machine (issue 10): a full disk, a read-only data dir, a symlink loop.

Each ends in one `error:` line naming the path, the fault and the folder flag to change, exit 2, and
leaves nothing half-written. Where the kernel can make the fault (root may mount a small or read-only
tmpfs), the launchers meet the real thing; the always-running equivalents make the same faults without
privileges: a real symlink loop, a chmod'ed folder for a non-root user, and `shutil.disk_usage` reporting
a full disk. Kill-and-resume after a full disk is in tests/test_damaged_runs.py.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from landslide_jax import constants, faults, files, prepare
from landslide_jax.data import demo
from landslide_jax.errors import InputError
from tests import train_fixtures
from tests.conftest import ROOT

TIMEOUT = 300
CHANNELS = constants.parse_channels(train_fixtures.CHANNELS, constants.SITE_CHANNELS)
_Usage = collections.namedtuple("_Usage", "total used free")


def _one_error_line(proc: subprocess.CompletedProcess, *phrases: str) -> str:
  """Exit 2, no traceback, exactly one `error:` line, last, holding every phrase."""
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
  assert sum(ln.startswith("error:") for ln in lines) == 1, proc.stderr[-3000:]
  for phrase in phrases:
    assert phrase in lines[-1], f"{phrase!r} not in {lines[-1]!r}"
  return lines[-1]


def _launch(module: str, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, capture_output=True, text=True,
                        timeout=TIMEOUT, check=False)


def _files_under(folder: Path) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------------
# 1. Recognising a fault in what the libraries raise.

FOLDERS = {"data_dir": "/data/tfds", "workdir": "/data/tfds/runs/a", "manual_dir": None}


def test_oserror_by_errno_names_the_innermost_folder_flag():
  err = OSError(errno.EROFS, "Read-only file system", "/data/tfds/runs/a/checkpoints")
  fault = faults.environment_fault(err, FOLDERS)
  assert str(fault) == ("/data/tfds/runs/a/checkpoints: read-only file system. Fix: write to a folder on a "
                        "writable disk, e.g. another --workdir")


def test_orbax_text_without_errno_is_recognised_with_its_path():
  # What orbax raised when the run folder's disk filled (tensorstore keeps only the text).
  err = ValueError('RESOURCE_EXHAUSTED: Error writing "state.params.kernel/0" in OCDBT database at local '
                   'file "/data/tfds/runs/a/checkpoints/1.orbax-checkpoint-tmp/": Failed to write 28188672 '
                   "bytes to file 19: No space left on device [os_error_code='28']")
  fault = faults.environment_fault(err, FOLDERS)
  assert fault is not None and fault.path == "/data/tfds/runs/a/checkpoints/1.orbax-checkpoint-tmp/"
  assert fault.problem.startswith("no space left on the device (/data/tfds/runs/a: ")
  assert fault.fix.endswith("e.g. another --workdir")


def test_fault_behind_a_wrapping_exception_is_found():
  try:
    try:
      raise OSError(errno.ELOOP, "Too many levels of symbolic links", "/data/tfds/x")
    except OSError as inner:
      raise RuntimeError("dataset build failed") from inner
  except RuntimeError as outer:
    fault = faults.environment_fault(outer, FOLDERS)
  assert fault is not None and fault.problem == "symbolic link loop" and "--data_dir" in fault.fix


def test_a_bug_is_not_taken_for_a_fault():
  assert faults.environment_fault(ValueError("shapes (3,) and (4,) do not match"), FOLDERS) is None
  assert faults.environment_fault(OSError(errno.ENOENT, "No such file", "/x"), FOLDERS) is None


def test_require_free_space_is_refused_below_the_need_plus_margin(tmp_path, monkeypatch):
  need = 100 * 2**20
  margin = 16 * 2**20
  for free, refused in ((need + margin, False), (need + margin - 1, True)):
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path, free=free: _Usage(2**40, 0, free))
    if refused:
      with pytest.raises(InputError) as info:
        files.require_free_space(tmp_path / "new" / "folder", need, "the maps", "--out")
      message = str(info.value)
      assert "not enough free space for the maps: needs about 121.6 MB, the disk has 121.6 MB free" in message
      assert message.endswith("Fix: free space on that disk or pass another --out")
    else:
      files.require_free_space(tmp_path / "new" / "folder", need, "the maps", "--out")
  assert not (tmp_path / "new").exists()  # asking never makes the folder


# ----------------------------------------------------------------------------------------------------------
# 2. A full disk, without privileges: nothing written, nothing already built lost.


def _disk_full_under(monkeypatch, folder: Path) -> None:
  """`shutil.disk_usage` reports 1 MB free for `folder` and what lies under it, the truth elsewhere."""
  real = shutil.disk_usage

  def disk_usage(path):
    usage = real(path)
    inside = Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
    return usage._replace(free=10**6) if inside else usage
  monkeypatch.setattr(files.shutil, "disk_usage", disk_usage)


def test_prepare_on_a_full_disk_keeps_the_datasets_already_built(tmp_path, monkeypatch):
  raw = train_fixtures.write_sites(tmp_path / "raw")
  data_dir = tmp_path / "tfds"
  built = prepare.prepare_site("china", 32, data_dir, raw, CHANNELS)
  before = {name: (data_dir / name).read_bytes() for name in _files_under(data_dir)}
  _disk_full_under(monkeypatch, data_dir)
  with pytest.raises(InputError) as info:
    prepare.prepare_site("china", 64, data_dir, raw, CHANNELS)
  message = str(info.value)
  assert "not enough free space for the china p64 dataset" in message and "--data_dir" in message
  assert {name: (data_dir / name).read_bytes() for name in _files_under(data_dir)} == before
  assert prepare.prepare_site("china", 32, data_dir, raw, CHANNELS).path == built.path  # still reused


def test_demo_scene_on_a_full_disk_writes_nothing(tmp_path, monkeypatch):
  _disk_full_under(monkeypatch, tmp_path)
  with pytest.raises(InputError, match="not enough free space for the china demo scene"):
    demo.write_demo_site("china", tmp_path / "demo", scale=0.03)
  assert _files_under(tmp_path) == []


# ----------------------------------------------------------------------------------------------------------
# 3. Real faults through the launchers.


def test_symlink_loop_as_data_dir_is_one_line(tmp_path):
  loop = tmp_path / "loop"
  loop.symlink_to(loop.name)  # loop -> loop
  proc = _launch("launch.prepare", "--site=china", "--patch=128", "--demo_scale=0.05",
                 f"--data_dir={loop}/tfds")
  _one_error_line(proc, f"{loop}/tfds", "symbolic link loop", "another --data_dir")


@pytest.fixture(name="read_only_dir")
def fixture_read_only_dir(tmp_path):
  """A folder nobody may write into: chmod for a normal user, a read-only tmpfs for root (whom
  permissions do not stop); skipped where root may not mount."""
  folder = tmp_path / "read_only"
  folder.mkdir()
  if os.geteuid() != 0:
    folder.chmod(0o555)
    yield folder, "permission denied"
    folder.chmod(0o755)
    return
  with _tmpfs(folder, "ro,size=1m"):
    yield folder, "read-only file system"


class _tmpfs:  # pylint: disable=invalid-name  (used like a function: `with _tmpfs(folder, options):`)
  """Mounts a tmpfs on `folder` for the block (root only), or skips the test saying why."""

  def __init__(self, folder: Path, options: str):
    self.folder, self.options = folder, options

  def __enter__(self) -> Path:
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", self.options, "tmpfs", str(self.folder)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not permitted'}): the fault "
                  "is covered without privileges by the disk_usage tests of this file")
    return self.folder

  def __exit__(self, *exc) -> None:
    subprocess.run(["umount", str(self.folder)], check=False)


def test_read_only_data_dir_is_one_line(read_only_dir):
  folder, problem = read_only_dir
  proc = _launch("launch.prepare", "--site=china", "--patch=128", "--demo_scale=0.05",
                 f"--data_dir={folder}/tfds")
  _one_error_line(proc, f"{folder}/tfds", problem, "another --data_dir")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_under_prepare_is_one_line_and_leaves_nothing(tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  with _tmpfs(disk, "size=2m"):
    proc = _launch("launch.prepare", "--site=china", "--patch=128", "--demo_scale=0.05",
                   f"--data_dir={disk}/tfds")
    _one_error_line(proc, "not enough free space for the china demo scene", "MB free", "another --data_dir")
    assert _files_under(disk) == []


# ----------------------------------------------------------------------------------------------------------
# GDAL filling the disk in the middle of a write (after the free-space check passed: other jobs write too).


class _GdalWriteFailed(Exception):
  """Stands for rasterio's bare "Write failed" (the type's module is what raster_write looks at)."""


_GdalWriteFailed.__module__ = "rasterio.errors"


@pytest.mark.parametrize("free, converted", [(10, True), (999, True), (1000, False), (None, False)])
def test_failed_raster_write_with_no_room_left_is_a_full_disk(monkeypatch, free, converted):
  monkeypatch.setattr(files, "free_bytes", lambda folder: free)
  with pytest.raises(Exception) as caught:
    with faults.raster_write("/maps/probability.tif", need_bytes=1000):
      raise _GdalWriteFailed("Write failed. See previous exception for details.")
  if converted:
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert caught.value.filename == "/maps/probability.tif"
    assert isinstance(caught.value.__cause__, _GdalWriteFailed)
    fault = faults.environment_fault(caught.value, {"out": "/maps"})
    assert fault is not None and fault.problem.startswith("no space left on the device")
    assert "another --out" in fault.fix
  else:
    assert isinstance(caught.value, _GdalWriteFailed)


def test_other_errors_in_a_raster_write_pass_unchanged(monkeypatch):
  monkeypatch.setattr(files, "free_bytes", lambda folder: 0)
  with pytest.raises(ValueError, match="a bug"):
    with faults.raster_write("/maps/probability.tif", need_bytes=1000):
      raise ValueError("a bug")


_WRITE_ON_FULL_DISK = """
import numpy as np
import rasterio
from absl import app
from landslide_jax import cli
from landslide_jax.data import raster_io

def main(argv):
  grid = raster_io.Grid(rasterio.crs.CRS.from_epsg(32648), rasterio.Affine(10, 0, 5e5, 0, -10, 3.7e6),
                        (1000, 1000))
  noise = np.random.default_rng(0).random((1000, 1000)).astype(np.float32)  # ~4 MB, incompressible
  cog = None if argv[2] == "plain" else "average"
  cli.run_reporting_input_errors(lambda: raster_io.write_geotiff(argv[1], noise, grid, cog_resampling=cog))

app.run(main)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("form, disk_size", [("plain", "1m"), ("cog", "6m")])
def test_gdal_write_that_fills_the_disk_is_one_line_and_leaves_nothing(tmp_path, form, disk_size):
  # 1 MB: the plain GeoTIFF does not fit; 6 MB: it does (~4 MB), its COG copy beside it does not.
  disk = tmp_path / "disk"
  disk.mkdir()
  with _tmpfs(disk, f"size={disk_size}"):
    proc = subprocess.run([sys.executable, "-c", _WRITE_ON_FULL_DISK, str(disk / "map.tif"), form],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    _one_error_line(proc, f"{disk}/map.tif", "no space left on the device", "MB free now")
    assert _files_under(disk) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_predict_map_writer_on_a_full_disk_names_it_and_leaves_nothing(tmp_path):
  import rasterio  # pylint: disable=import-outside-toplevel
  from landslide_jax import predict  # pylint: disable=import-outside-toplevel
  from landslide_jax.data import raster_io  # pylint: disable=import-outside-toplevel
  disk = tmp_path / "disk"
  disk.mkdir()
  grid = raster_io.Grid(rasterio.crs.CRS.from_epsg(32648), rasterio.Affine(10, 0, 5e5, 0, -10, 3.7e6),
                        (1024, 1024))
  noise = np.random.default_rng(0).random(grid.shape).astype(np.float32)  # 4 MB, incompressible
  with _tmpfs(disk, "size=1m"):
    out = predict._AtomicGeoTIFF(disk / "probability.tif", grid, "float32", -1.0, "average")
    written = False
    with pytest.raises(OSError) as caught:
      out.write(noise, rasterio.windows.Window(0, 0, 1024, 1024))
      written = True  # GDAL may keep the blocks in its cache until the file is closed
      out.close(keep=True)
    if not written:
      with contextlib.suppress(OSError):
        out.close(keep=False)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(disk / "probability.tif")
    assert _files_under(disk) == []
