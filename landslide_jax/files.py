"""Writing files so that a reader never sees half of one, and folders that one process at a time owns.

- `write_text_atomically`, `append_line`: small result files and log lines that a kill cannot tear.
- `FileLock`: an exclusive `fcntl.flock` on a lock file that holds the holder's pid, host and start time.
  The kernel releases a flock when its process dies, however it dies, so a lock can never be left held
  by a dead process; the file left behind by a SIGKILL only says who held it, and the next holder takes
  it over with a one-line note.
- `lock_folder`: one process at a time in a run folder or an output folder (`launch.train`,
  `launch.sweep`); a second one is refused in one line.
- `require_free_space`: refuse to start a write the disk cannot hold.
- `staging_dir`, `remove_stale`: hidden work folders (a dataset being built, a demo site being written,
  maps being written) locked by their owner while it lives, so the next run can tell a leftover of a
  killed process (removed) from the folder of a live one (never touched).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from landslide_jax.errors import InputError

# The lock file of a run folder or an output folder (`lock_folder`).
LOCK_FILE = ".lock"
# The lock file inside a staging folder (`staging_dir`): present and locked while the owner lives.
STAGING_LOCK = ".owner.lock"
# flock is unsupported on some network file systems (Lustre without -o flock, old NFS); there the lock
# falls back to the pid recorded in the file.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _process_start() -> float:
  """When this process started (seconds since the epoch), from /proc; the import time elsewhere."""
  try:
    with open("/proc/self/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    with open("/proc/stat", encoding="ascii") as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError, StopIteration):
    return time.time()


# A leftover without a lock is only taken for stale when it is older than this process: whatever a live
# process made after we started is not ours to judge.
PROCESS_START = _process_start()


def note(message: str) -> None:
  """One line on stderr about something fixed on the way (a stale lock taken over, a leftover removed)."""
  print(f"note: {message}".replace("\n", " "), file=sys.stderr, flush=True)


# Room kept beside what a write needs: file-system metadata, logs, the small files written next to it.
_FREE_MARGIN_BYTES = 16 * 2**20


def free_bytes(folder: str | os.PathLike) -> int | None:
  """Free bytes on the disk holding `folder`, or on its first existing parent's (a folder not made yet
  will be written there); None when no parent answers."""
  for part in (Path(folder), *Path(folder).parents):
    try:
      return shutil.disk_usage(part).free
    except OSError:
      continue
  return None


def require_free_space(folder: str | os.PathLike, need_bytes: int, what: str, flag: str | None = None
                       ) -> None:
  """Refuses to start writing `what` (about `need_bytes`) into `folder` when its disk has less room.

  Checked before the write because a disk that fills in the middle of one fails inside GDAL (which logs
  "No space left" on stderr and raises a bare "Write failed") or in orbax's background threads: the
  staged work is then removed, but the user gets pages of tracebacks instead of one line.

  Raises:
    InputError: the disk holding `folder` (or its first existing parent) has less than `need_bytes`
      plus a 16 MiB margin free.
  """
  free = free_bytes(folder)
  if free is None or free >= need_bytes + _FREE_MARGIN_BYTES:
    return
  elsewhere = f"pass another {flag}" if flag else "write to another disk"
  raise InputError(folder, f"not enough free space for {what}: needs about "
                   f"{(need_bytes + _FREE_MARGIN_BYTES) / 1e6:.1f} MB, the disk has {free / 1e6:.1f} MB free",
                   f"free space on that disk or {elsewhere}")


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
  """Writes `text` to a hidden sibling, then renames it over `path`: a crash leaves the old file or none,
  never a truncated one (metrics.json and config.json are read back to resume and skip runs).

  The sibling has a name of its own per call, so two writers of one file never write into each other's
  temporary file; the last rename wins, whole.
  """
  path = Path(path)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())  # the rename must not reach the disk before the data (power loss)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be read by others
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  return path


def append_line(path: str | os.PathLike, line: str) -> None:
  """Appends `line` and a newline with one `os.write` of the whole line, flushed to disk.

  A kill can then only lose the line or keep it whole: never leave half of it for the next line to be
  glued to (a log read back when resuming). The rare short write (disk full) is completed in a loop.
  """
  data = (line.rstrip("\n") + "\n").encode("utf-8")
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    written = os.write(fd, data)
    while written < len(data):
      written += os.write(fd, data[written:])
    os.fsync(fd)
  finally:
    os.close(fd)


def _pid_alive(pid) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False  # never os.kill(0 or -1, ...): those address whole process groups
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's process
  return True


def describe_holder(holder: dict | None) -> str:
  """'pid N since T' (and 'on host H' when it is another machine), for messages."""
  if not holder:
    return "another process"
  text = f"pid {holder.get('pid')}"
  if holder.get("host") != socket.gethostname():
    text += f" on host {holder.get('host')}"
  return text + f" since {holder.get('since')}"


class LockBusy(Exception):
  """The lock is held by a live process, described by `holder` (None if it has not said who yet)."""

  def __init__(self, path: Path, holder: dict | None):
    super().__init__(f"{path} is held by {describe_holder(holder)}")
    self.path, self.holder = path, holder


class FileLock:
  """An exclusive `flock` on the file `path`, which records the holder (pid, host, since).

  The file exists while the lock is held and is removed on release, so a folder is left as it was; a
  file found with a record in it was left by a process that died holding it (a stale lock), and is
  taken over. Waiters that locked a file since removed notice it (another inode at `path`) and retry.
  Locks are per open file, so two threads of one process exclude each other too.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self, blocking: bool = False, create: bool = True) -> dict | None:
    """Takes the lock; returns the record of a stale previous holder (a process that died holding it),
    else None.

    Raises:
      LockBusy: `blocking` is False and a live process holds the lock.
      FileNotFoundError: `create` is False and there is no lock file.
    """
    if self._fd is not None:
      return None
    while True:
      flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
      fd = os.open(self.path, flags, 0o644)
      try:
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
          supported = True
        except BlockingIOError:
          raise LockBusy(self.path, _read_record(fd)) from None
        except OSError as err:
          if err.errno not in _NO_FLOCK:
            raise
          supported = False
        if supported and not _same_file(fd, self.path):
          os.close(fd)  # released and removed by its holder meanwhile: lock the file now at `path`
          continue
        previous = _read_record(fd)
        if previous and previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname():
          previous = None  # our own record (a lock file reused in this process)
        if not supported and previous and (previous.get("host") != socket.gethostname()
                                           or _pid_alive(previous.get("pid"))):
          raise LockBusy(self.path, previous)
        _write_record(fd)
        self._fd = fd
        return previous
      except BaseException:
        if self._fd != fd:
          os.close(fd)
        raise

  def release(self, remove: bool = True) -> None:
    """Releases the lock, removing the file first (while still holding it) unless `remove` is False."""
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      if remove and _same_file(fd, self.path):
        os.unlink(self.path)
      else:
        os.ftruncate(fd, 0)  # an empty file left behind reads as "nobody", not as a stale holder
    except OSError:
      pass  # the folder went away with it (a staging folder removed while locked)
    finally:
      os.close(fd)

  def __enter__(self) -> "FileLock":
    self.acquire(blocking=True)
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _same_file(fd: int, path: Path) -> bool:
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return False
  own = os.fstat(fd)
  return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_record(fd: int) -> dict | None:
  try:
    data = os.pread(fd, 4096, 0)
    record = json.loads(data) if data.strip() else None
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def _write_record(fd: int) -> None:
  since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode()
  os.ftruncate(fd, 0)
  os.pwrite(fd, data + b"\n", 0)


def lock_folder(folder: str | os.PathLike, noun: str = "workdir", flag: str = "--workdir") -> FileLock:
  """Takes `folder/.lock` for this process (released by `FileLock.release`, or by the kernel if the
  process dies); a stale lock file of a dead process is taken over with a one-line note.

  Raises:
    InputError: another live process holds the folder.
  """
  folder = Path(folder)
  lock = FileLock(folder / LOCK_FILE)
  try:
    previous = lock.acquire()
  except LockBusy as busy:
    raise InputError(folder, f"{noun} is in use by {describe_holder(busy.holder)}",
                     f"wait for it, or use another {flag}") from None
  if previous:
    note(f"{folder}: took over the lock of {describe_holder(previous)}, which is gone (killed?)")
  return lock


def _remove_if_stale(entry: Path) -> bool:
  """Removes `entry` if it is a leftover of a process that is gone: a staging folder whose owner lock can
  be taken, or (no lock inside: a file, or a folder of an older version) one last changed before this
  process started. Returns whether it did."""
  if entry.is_dir() and not entry.is_symlink():
    probe = FileLock(entry / STAGING_LOCK)
    try:
      owner = probe.acquire(create=False)
    except FileNotFoundError:
      owner = None  # no lock inside: judged by its age below
    except LockBusy:
      return False  # its owner lives
    if probe.held:
      if owner:
        # Its owner locked it and wrote its record, and is gone. Removed while we hold the lock, so no
        # other scanner removes it twice; the lock file goes with the folder.
        shutil.rmtree(entry, ignore_errors=True)
        probe.release(remove=False)
        return True
      # No record: an owner between creating the lock file and locking it (or done and cleaning up).
      probe.release(remove=False)
  try:
    if entry.lstat().st_mtime >= PROCESS_START:
      return False
  except FileNotFoundError:
    return False
  if entry.is_dir() and not entry.is_symlink():
    shutil.rmtree(entry, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      entry.unlink()
  return True


def remove_stale(parent: str | os.PathLike, prefixes: tuple[str, ...], suffix: str = "") -> list[Path]:
  """Removes the leftovers in `parent` whose names start with one of `prefixes` (and end with `suffix`)
  and whose processes are gone (`_remove_if_stale`); says so in one line. Never touches a live one."""
  parent = Path(parent)
  try:
    entries = sorted(p for p in parent.iterdir()
                     if p.name.startswith(prefixes) and p.name.endswith(suffix))
  except (FileNotFoundError, NotADirectoryError):
    return []
  removed = [entry for entry in entries if _remove_if_stale(entry)]
  if removed:
    note(f"removed {len(removed)} leftover{'s' if len(removed) > 1 else ''} of killed processes in "
         f"{parent}: {', '.join(p.name for p in removed)}")
  return removed


class StagingDir:
  """A new hidden folder `parent/<prefix>XXXXXXXX`, locked by this process while it exists (a lock file
  inside), so `remove_stale` in any other process leaves it alone. Removed on `cleanup`."""

  def __init__(self, parent: str | os.PathLike, prefix: str):
    self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(self.path, 0o755)  # mkdtemp makes it private; what is built here is meant to be shared
    self._lock = FileLock(self.path / STAGING_LOCK)
    self._lock.acquire()

  def unlock(self) -> None:
    """Removes the lock file, for a folder about to be renamed into place whole. The folder is then
    younger than any process that could scan it (`_remove_if_stale`), so it stays safe until the rename."""
    self._lock.release()

  def cleanup(self) -> None:
    if self.path.exists():
      shutil.rmtree(self.path, ignore_errors=True)
    self._lock.release(remove=False)


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike, prefix: str) -> Iterator[StagingDir]:
  """`StagingDir` as a context: removed on exit, on success or failure."""
  staging = StagingDir(parent, prefix)
  try:
    yield staging
  finally:
    staging.cleanup()
