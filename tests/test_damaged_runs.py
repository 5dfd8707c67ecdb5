"""A damaged run folder (issue 10): truncated or missing checkpoint files, an empty step folder, a
config.json that is not JSON or from another version, a torn last line of metrics.jsonl.

Each gives one line naming the file (an InputError, or a note where the run can go on), and where an
earlier usable checkpoint exists the run falls back to it and ends exactly as an uninterrupted run (CPU
training is deterministic). One reference run of EPOCHS epochs on the tiny learnable sites of
tests/run_fixtures.py is trained once; every test damages a copy of it. Its best checkpoint (epoch 2) is
not its latest (epoch 3), so there is an earlier checkpoint to fall back to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from landslide_jax import files, input_pipeline, train
from landslide_jax.errors import InputError
from tests import run_fixtures
from tests.conftest import ROOT
from tests import test_train
from tests.test_train import _checkpoint_steps, _snapshot

EPOCHS = 3
BEST, LATEST = 2, 3
TIMEOUT = 300


@dataclasses.dataclass(frozen=True)
class Env(test_train.Env):
  """test_train's prepared inputs, and an uninterrupted reference run to compare resumed runs with."""
  reference: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  with run_fixtures.learnable_module_env(tmp_path_factory, "damaged") as (root, raw, data_dir, cache):
    reference = root / "reference"
    run_fixtures.train_run(raw, data_dir, reference, EPOCHS)
    yield Env(root, raw, data_dir, cache, reference)


def _copy(env: Env, tmp_path: Path) -> Path:
  return Path(shutil.copytree(env.reference, tmp_path / "run"))


def _resume(env: Env, workdir: Path) -> dict:
  """The reference run's command again, in `workdir`."""
  return run_fixtures.train_run(env.raw, env.data_dir, workdir, EPOCHS)


def _truncate(path: Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _truncate_arrays(workdir: Path, step: int) -> Path:
  """Cuts the largest array file of a checkpoint in half (the parameters, as a disk-full write would)."""
  folder = workdir / train.CHECKPOINT_DIR / str(step)
  largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  _truncate(largest)
  return largest


def _notes(capfd) -> list[str]:
  return [ln for ln in capfd.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("note: ")]


def _tree(folder: Path) -> dict[str, int]:
  return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_reference_has_a_best_checkpoint_before_its_latest(env):
  assert _checkpoint_steps(env.reference) == [BEST, LATEST]
  assert run_fixtures.read_json(env.reference / "metrics.json")["best_epoch"] == BEST


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def test_truncated_latest_checkpoint_falls_back_to_the_earlier_one(env, tmp_path, capfd, monkeypatch):
  workdir = _copy(env, tmp_path)
  _truncate_arrays(workdir, LATEST)
  load = input_pipeline.load_training_data
  held = []

  def load_while_locked(*args, **kwargs):
    # The run holds its workdir meanwhile: a second run would be refused.
    with pytest.raises(InputError, match=f"workdir is in use by pid {os.getpid()} since"):
      files.lock_folder(workdir)
    held.append(True)
    return load(*args, **kwargs)
  monkeypatch.setattr(input_pipeline, "load_training_data", load_while_locked)
  capfd.readouterr()
  result = _resume(env, workdir)
  captured = capfd.readouterr()
  notes = [ln for ln in captured.err.replace("\r", "\n").splitlines() if ln.startswith("note: ")]
  assert len(notes) == 1, captured.err
  assert notes[0].startswith(f"note: {workdir / train.CHECKPOINT_DIR / str(LATEST)}: checkpoint cannot be "
                             "restored (")
  assert notes[0].endswith(f"; moved checkpoint {LATEST} to {workdir / train.DAMAGED_CHECKPOINT_DIR}, "
                           f"resuming from the earlier checkpoint of epoch {BEST}")
  assert f"resuming from epoch {BEST} in {workdir}" in captured.out
  # Epoch 3 trained again from checkpoint 2: the same result as the uninterrupted run.
  assert _snapshot(workdir) == _snapshot(env.reference)
  assert result == run_fixtures.read_json(env.reference / "metrics.json")
  assert _checkpoint_steps(workdir) == [BEST, LATEST]
  assert (workdir / train.DAMAGED_CHECKPOINT_DIR / str(LATEST)).is_dir()
  assert held == [True] and not (workdir / files.LOCK_FILE).exists()


def test_full_disk_stops_the_run_between_checkpoints_and_it_resumes_exactly(env, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  real = shutil.disk_usage
  checks = []

  def disk_usage(path):
    # Full from the epoch 2 checkpoint on: the check before each save is the only one in the run folder.
    if Path(path) == workdir:
      checks.append(path)
      if len(checks) >= BEST:
        return real(path)._replace(free=10**6)
    return real(path)
  monkeypatch.setattr(files.shutil, "disk_usage", disk_usage)
  with pytest.raises(InputError) as info:
    _resume(env, workdir)
  assert str(info.value).startswith(f"{workdir}: not enough free space for the epoch {BEST} checkpoint: "
                                    "needs about ")
  assert str(info.value).endswith("Fix: free space on that disk or pass another --workdir")
  assert _checkpoint_steps(workdir) == [1] and not (workdir / files.LOCK_FILE).exists()
  monkeypatch.undo()
  # Room again: the same command goes on from epoch 1 and ends as the uninterrupted run.
  _resume(env, workdir)
  assert _snapshot(workdir) == _snapshot(env.reference)


def test_empty_step_folder_is_moved_aside(env, tmp_path, capfd):
  # An empty step folder made every orbax restore fail, so the run could never resume.
  workdir = _copy(env, tmp_path)
  (workdir / train.CHECKPOINT_DIR / "4").mkdir()
  capfd.readouterr()
  result = _resume(env, workdir)
  assert _notes(capfd) == [
      f"note: {workdir / train.CHECKPOINT_DIR / '4'}: checkpoint folder is empty; moved checkpoint 4 to "
      f"{workdir / train.DAMAGED_CHECKPOINT_DIR}, resuming from the earlier checkpoint of epoch {LATEST}"]
  assert result == run_fixtures.read_json(env.reference / "metrics.json")
  assert _snapshot(workdir) == _snapshot(env.reference)


def test_no_usable_checkpoint_is_one_line_naming_the_file(env, tmp_path):
  workdir = _copy(env, tmp_path)
  _truncate_arrays(workdir, BEST)
  os.remove(workdir / train.CHECKPOINT_DIR / str(LATEST) / "default" / "manifest.ocdbt")  # a lost file
  before = _tree(workdir / train.CHECKPOINT_DIR)
  o = run_fixtures.RUN_OPTIONS
  proc = subprocess.run(
      [sys.executable, "-m", "launch.train", "--scenario=china", f"--patch={o['patch']}",
       f"--model={o['model']}", f"--batch_size={o['batch_size']}", f"--learning_rate={o['learning_rate']}",
       f"--loss_weights={o['loss_weights']}", f"--patience={o['patience']}", f"--seed={o['seed']}",
       f"--max_epochs={EPOCHS}", f"--channels={run_fixtures.CHANNELS}", f"--workdir={workdir}",
       f"--data_dir={env.data_dir}", f"--manual_dir={env.raw}"],
      cwd=ROOT, env=run_fixtures.subprocess_env(env.cache), capture_output=True, text=True,
      timeout=TIMEOUT, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1, proc.stderr
  checkpoints = workdir / train.CHECKPOINT_DIR
  assert lines[0].startswith(f"error: {checkpoints / str(LATEST)}: checkpoint cannot be restored (")
  assert f"(checkpoint of epoch {LATEST}), and no earlier checkpoint is usable; checkpoint {BEST} too: " \
         f"{checkpoints / str(BEST)}: checkpoint cannot be restored (" in lines[0]
  assert lines[0].endswith(f"Fix: delete {checkpoints} to train this run again from epoch 1 (config.json "
                           "and the datasets are kept), or pass another --workdir")
  # No checkpoint moved or written (config.json is rewritten at every start, as before).
  assert _tree(workdir / train.CHECKPOINT_DIR) == before
  assert not (workdir / train.DAMAGED_CHECKPOINT_DIR).exists()


def test_damaged_best_checkpoint_is_one_line_naming_it(env, tmp_path):
  workdir = _copy(env, tmp_path)
  _truncate_arrays(workdir, BEST)  # the latest restores; the best is needed for the scores
  with pytest.raises(InputError) as err:
    _resume(env, workdir)
  assert err.value.path == str(workdir / train.CHECKPOINT_DIR / str(BEST))
  assert f"the best checkpoint (epoch {BEST}) cannot be restored (" in err.value.problem
  assert err.value.fix == (f"score another one with python -m launch.evaluate --workdir={workdir} "
                           f"--checkpoint=latest, or delete {workdir / train.CHECKPOINT_DIR} to train again")
  assert "\n" not in str(err.value)


def test_evaluate_of_a_damaged_checkpoint_is_one_line_naming_it(env, tmp_path):
  workdir = _copy(env, tmp_path)
  _truncate_arrays(workdir, BEST)
  proc = subprocess.run([sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}", "--checkpoint=best"],
                        cwd=ROOT, env=run_fixtures.subprocess_env(env.cache), capture_output=True, text=True,
                        timeout=TIMEOUT, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f"error: {workdir / train.CHECKPOINT_DIR / str(BEST)}: checkpoint {BEST} cannot "
                             "be restored (OUT_OF_RANGE: ")
  assert lines[0].endswith(f"Fix: pass --checkpoint= with another saved step ({LATEST}), or train again in a "
                           "new --workdir")


def _unretrieved_future_error(message: str, task: bool = False) -> None:
  """A future (or task) whose error nobody retrieves, collected: asyncio logs "Future (Task) exception was
  never retrieved"."""
  loop = asyncio.new_event_loop()
  if task:
    async def read():
      raise ValueError(message)
    future = loop.create_task(read())
    loop.run_until_complete(asyncio.sleep(0))
  else:
    future = loop.create_future()
    future.set_exception(ValueError(message))
  loop.close()  # as orbax's loop is when tensorstore's late reads fail
  del future
  gc.collect()


def test_what_a_failed_restore_leaves_behind_is_silenced_and_nothing_else(tmp_path, monkeypatch):
  # Both kinds come at a time set by the garbage collector, so a subprocess test meets them only now and
  # then (the one-line test above failed in CI once with 40 lines of them); here they are made on purpose.
  seen_unraisable, logged = [], []
  monkeypatch.setattr(sys, "unraisablehook", seen_unraisable.append)
  asyncio_logger = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_logger, "filters", [])
  handler = logging.Handler()
  handler.emit = logged.append
  asyncio_logger.addHandler(handler)
  try:
    # The control: without the filter, the unretrieved error is logged (absl prints it on stderr).
    _unretrieved_future_error(f'NOT_FOUND: Metadata at "state/.zarray" in OCDBT database at local file '
                              f'"{tmp_path}/checkpoints/3/default/" does not exist')
    assert [r.msg.splitlines()[0] for r in logged] == ["Future exception was never retrieved"]

    train._ignore_late_restore_callbacks(tmp_path / "checkpoints")  # pylint: disable=protected-access
    _unretrieved_future_error(f'NOT_FOUND: Metadata at "state/.zarray" in OCDBT database at local file '
                              f'"{tmp_path}/checkpoints/3/default/" does not exist')
    _unretrieved_future_error(f'NOT_FOUND: local file "{tmp_path}/checkpoints/2/default/"', task=True)
    assert len(logged) == 1  # silenced: the errors name the checkpoint directory being restored
    _unretrieved_future_error(f'NOT_FOUND: local file "{tmp_path}/elsewhere/3/"')
    assert len(logged) == 2  # kept: another folder's error
    _unretrieved_future_error(f'NOT_FOUND: local file "{tmp_path}/elsewhere/3/"', task=True)
    assert [r.msg.splitlines()[0] for r in logged[1:]] == ["Future exception was never retrieved",
                                                          "Task exception was never retrieved"]
    asyncio_logger.error("something else")
    assert len(logged) == 4

    class LateRead:
      def __init__(self, error):
        self.error = error

      def __del__(self):
        raise self.error
    LateRead(RuntimeError("Event loop is closed"))
    assert not seen_unraisable
    LateRead(RuntimeError("another error"))
    assert [str(u.exc_value) for u in seen_unraisable] == ["another error"]
  finally:
    asyncio_logger.removeHandler(handler)


def test_truncated_checkpoint_metrics_file_is_moved_aside(env, tmp_path, capfd):
  # orbax could not even open the checkpoint directory (a JSON error from its metrics file).
  workdir = _copy(env, tmp_path)
  metrics_file = workdir / train.CHECKPOINT_DIR / str(LATEST) / "metrics" / "metrics"
  _truncate(metrics_file)
  capfd.readouterr()
  _resume(env, workdir)
  assert _notes(capfd) == [
      f"note: {metrics_file}: checkpoint file is not valid JSON (truncated?); moved checkpoint {LATEST} to "
      f"{workdir / train.DAMAGED_CHECKPOINT_DIR}, resuming from the earlier checkpoint of epoch {BEST}"]
  assert _snapshot(workdir) == _snapshot(env.reference)


# ----------------------------------------------------------------------------------------------------------
# config.json and metrics.jsonl


@pytest.mark.parametrize("damage, problem", [
    ("truncated", "is not a config.json this version of landslide_jax wrote: not valid JSON "
                  "(JSONDecodeError at byte"),
    ("newer_version", "is not a config.json this version of landslide_jax wrote (another version's: "
                      "options unknown here: tile_overlap)"),
])
def test_damaged_config_json_is_one_line_naming_it(env, tmp_path, damage, problem):
  workdir = _copy(env, tmp_path)
  config = workdir / "config.json"
  if damage == "truncated":
    _truncate(config)
  else:
    saved = json.loads(config.read_text())
    saved["flags"]["tile_overlap"] = 0.25
    config.write_text(json.dumps(saved))
  before = _tree(workdir)
  with pytest.raises(InputError) as err:
    _resume(env, workdir)
  assert err.value.path == str(config)
  assert err.value.problem.startswith(problem), err.value.problem
  assert "pass another --workdir, or delete that run folder to start over" in err.value.fix
  assert _tree(workdir) == before


def test_killed_run_with_a_torn_log_line_and_a_stale_lock_resumes(env, tmp_path, capfd):
  # What a SIGKILL while logging epoch 3 left, with the previous version's buffered writes: epoch 3's
  # line cut short, no checkpoint 3 yet, and the lock file of the dead process. Before, the torn line
  # made every resume fail on a JSON error.
  workdir = _copy(env, tmp_path)
  shutil.rmtree(workdir / train.CHECKPOINT_DIR / str(LATEST))
  log = workdir / "metrics.jsonl"
  lines = log.read_text().splitlines(keepends=True)
  log.write_text("".join(lines[:2]) + lines[2][:len(lines[2]) // 2])
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                        text=True, check=True)
  record = {"pid": int(dead.stdout), "host": os.uname().nodename, "since": "2026-01-01T00:00:00+00:00"}
  (workdir / files.LOCK_FILE).write_text(json.dumps(record))
  capfd.readouterr()
  _resume(env, workdir)
  assert _notes(capfd) == [
      f"note: {workdir}: took over the lock of pid {record['pid']} since {record['since']}, which is gone "
      "(killed?)",
      f"note: {log}: dropped its torn last line (line 3, cut off when the run was killed)"]
  assert _snapshot(workdir) == _snapshot(env.reference)
  assert not (workdir / files.LOCK_FILE).exists()


def test_damaged_log_line_before_the_last_is_one_line_naming_it(env, tmp_path):
  workdir = _copy(env, tmp_path)
  log = workdir / "metrics.jsonl"
  lines = log.read_text().splitlines(keepends=True)
  log.write_text(lines[0][:10] + "\n" + "".join(lines[1:]))
  with pytest.raises(InputError) as err:
    _resume(env, workdir)
  assert str(err.value) == (f"{log}: line 1 is not a metrics record (damaged). Fix: delete that line "
                            f"(every epoch after checkpoint {LATEST} is logged again), or the whole file")


def test_log_lines_are_written_whole(tmp_path):
  log = tmp_path / "metrics.jsonl"
  files.append_line(log, json.dumps({"epoch": 1}))
  files.append_line(log, json.dumps({"epoch": 2}) + "\n")
  assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
  assert train.read_metrics_log(log, 1) == ['{"epoch": 1}']
