"""No torn or stale output (issue 10): one run per workdir or output folder, concurrent dataset builds,
leftovers of killed processes, and prediction outputs that are always one set.

Nothing here trains: the locks are checked at the library calls that take them (a monkeypatched step
after the lock fails on purpose), prediction uses a stand-in run, and "other processes" are real
processes (tiny Python scripts holding a lock, or SIGKILLed while holding one). tests/test_damaged_runs.py
trains real runs to check resuming from damaged run folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import rasterio

from landslide_jax import constants, evaluate, files, predict, prepare, sweep, train
from landslide_jax.data import demo, normalization
from landslide_jax.errors import InputError
from tests import train_fixtures
from tests.conftest import ROOT

TIMEOUT = 120
# A holder of a lock: a real second process, which says what it holds, then waits to be killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from landslide_jax import files
    kind, where = sys.argv[1], sys.argv[2]
    if kind == "folder":
      lock = files.lock_folder(where)
      print(where, flush=True)
    else:
      staging = files.StagingDir(where, sys.argv[3])
      print(staging.path, flush=True)
    time.sleep(600)
""")
AN_HOUR_AGO = time.time() - 3600


@contextlib.contextmanager
def _holder(*args) -> Iterator[tuple[subprocess.Popen, Path]]:
  """A process holding a folder lock (`folder`, path) or a staging folder (`staging`, parent, prefix);
  SIGKILLed on exit, so what it held is left behind exactly as a killed run leaves it."""
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, args)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
  try:
    line = proc.stdout.readline().strip()
    assert line and proc.poll() is None, "the holder process did not start"
    yield proc, Path(line)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)
    proc.stdout.close()


def _left_by_killed_process(parent: Path, prefix: str) -> Path:
  """A staging folder whose owner was SIGKILLed: its lock file is there, and nobody holds it."""
  with _holder("staging", parent, prefix) as (_, path):
    (path / "partial.bin").write_bytes(b"half a file")
  assert path.is_dir()
  return path


def _names(folder: Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def _notes(capfd) -> list[str]:
  """The `note:` lines on stderr (tqdm's progress bars and library logs share it)."""
  return [ln for ln in capfd.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("note: ")]


def _since(folder: Path) -> str:
  return json.loads((folder / files.LOCK_FILE).read_text())["since"]


# ----------------------------------------------------------------------------------------------------------
# 1. One run per workdir (launch.train) and per output folder (launch.sweep).


def _config(tmp_path: Path, workdir: Path) -> train.TrainConfig:
  return train.TrainConfig(workdir=str(workdir), data_dir=str(tmp_path / "tfds"),
                           manual_dir=str(tmp_path / "raw"), patch=32, max_epochs=1)


def test_second_run_in_a_workdir_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"epoch": 1}\n')  # the other run's
  with _holder("folder", workdir) as (proc, _):
    message = (f"{workdir}: workdir is in use by pid {proc.pid} since {_since(workdir)}. "
               "Fix: wait for it, or use another --workdir")
    before = (workdir / files.LOCK_FILE).read_text()
    with pytest.raises(InputError) as err:
      train.train_and_evaluate(_config(tmp_path, workdir))
    assert str(err.value) == message
    cli = subprocess.run([sys.executable, "-m", "launch.train", "--patch=32", f"--workdir={workdir}",
                          f"--data_dir={tmp_path / 'tfds'}", f"--manual_dir={tmp_path / 'raw'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert cli.returncode == 2, cli.stderr[-3000:]
    assert [ln for ln in cli.stderr.splitlines() if ln.strip()] == [f"error: {message}"]
    # The holder's folder is untouched, its lock too; nothing was built.
    assert _names(workdir) == [files.LOCK_FILE, "metrics.jsonl"]
    assert (workdir / files.LOCK_FILE).read_text() == before
    assert not (tmp_path / "tfds").exists()


def test_workdir_lock_is_held_while_training_and_released_on_an_exception(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  seen = []

  def datasets_then_crash(config):
    # Inside the run: the lock file names this process, and another taker is refused.
    seen.append(json.loads((workdir / files.LOCK_FILE).read_text())["pid"])
    with pytest.raises(InputError, match=f"workdir is in use by pid {os.getpid()} since"):
      files.lock_folder(workdir)
    raise RuntimeError("disk on fire")
  monkeypatch.setattr(train, "ensure_datasets", datasets_then_crash)
  workdir.mkdir()
  with pytest.raises(RuntimeError, match="disk on fire"):
    train.train_and_evaluate(_config(tmp_path, workdir))
  assert seen == [os.getpid()]
  assert _names(workdir) == []  # released and removed: the next run starts without a note
  files.lock_folder(workdir).release()


def test_stale_workdir_lock_of_a_killed_run_is_taken_over_with_a_note(tmp_path, monkeypatch, capfd):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with _holder("folder", workdir) as (proc, _):
    since = _since(workdir)
  assert _names(workdir) == [files.LOCK_FILE]  # a SIGKILL leaves the file (the kernel drops the lock)
  taken = []
  monkeypatch.setattr(train, "ensure_datasets", lambda config: taken.append(
      json.loads((workdir / files.LOCK_FILE).read_text())["pid"]) or pytest.fail("stop here"))
  with pytest.raises(pytest.fail.Exception):
    train.train_and_evaluate(_config(tmp_path, workdir))
  assert taken == [os.getpid()]
  assert _notes(capfd) == [f"note: {workdir}: took over the lock of pid {proc.pid} since {since}, "
                                  "which is gone (killed?)"]
  assert _names(workdir) == []


def test_second_sweep_into_an_output_folder_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(train, "train_and_evaluate", lambda config: pytest.fail("must not train"))
  out, runs = tmp_path / "results", tmp_path / "runs"
  out.mkdir()
  base = train.TrainConfig(data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw"))
  with _holder("folder", out) as (proc, _):
    with pytest.raises(InputError) as err:
      sweep.sweep(("china",), (32,), ("unet",), out, runs, base)
    assert str(err.value) == (f"{out}: output folder is in use by pid {proc.pid} since {_since(out)}. "
                              "Fix: wait for it, or use another --out")
    assert _names(out) == [files.LOCK_FILE] and not runs.exists()

  # The sweep's own lock goes when it fails, and a folder it made for nothing goes too.
  def refuse(config):
    assert _names(tmp_path / "new") == [files.LOCK_FILE]  # held while the grid runs
    raise InputError(config.resolved_workdir(), "holds a run made with other options", "test")
  monkeypatch.setattr(train, "train_and_evaluate", refuse)
  with pytest.raises(InputError, match="other options"):
    sweep.sweep(("china",), (32,), ("unet",), tmp_path / "new", runs, base)
  assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------------------------------------
# 2. Two processes building the same dataset into one data dir at once.

ROUNDS = 3
# Each worker builds china p32 into tfds0, tfds1, ...; a file barrier starts every round in both at once.
WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import tfds_builders  # imported before the barrier: the builds themselves must overlap
    from landslide_jax import prepare
    raw, root, rounds, me = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rebuilt = []
    for r in range(rounds):
      (root / f"ready-{r}-{me}").touch()
      while len(list(root.glob(f"ready-{r}-*"))) < 2:
        time.sleep(0.002)
      rebuilt.append(prepare.prepare_site("china", 32, root / f"tfds{r}", raw).rebuilt)
    print(json.dumps(rebuilt))
""")


def test_concurrent_prepare_builds_one_complete_dataset(tmp_path):
  # Before: about 1 time in 4 one process crashed with "Directory not empty" installing its build.
  raw = train_fixtures.write_sites(tmp_path / "raw")
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(raw), str(tmp_path), str(ROUNDS), me],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for me in ("a", "b")]
  try:
    outputs = [proc.communicate(timeout=TIMEOUT) for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  rebuilt = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  # Each round: one process built the dataset, the other waited for it and reused it.
  assert [sorted(pair) for pair in zip(*rebuilt)] == [[False, True]] * ROUNDS
  expected_hash = prepare.input_hash("china", raw)
  import tfds_builders  # pylint: disable=import-outside-toplevel
  from tfds_builders import site_builder  # pylint: disable=import-outside-toplevel
  for r in range(ROUNDS):
    data_dir = tmp_path / f"tfds{r}"
    assert _names(data_dir) == ["china"]  # no staging folder, backup or lock file left
    dataset = data_dir / "china" / "p32"
    assert _names(dataset) == [str(site_builder.VERSION)]
    assert json.loads((dataset / str(site_builder.VERSION) / "metadata.json").read_text())[
        "input_hash"] == expected_hash
    source = tfds_builders.get_builder("china", site_builder.make_config(32), data_dir).as_data_source()
    assert {k: len(v) for k, v in source.items()} == {"train": 10, "validation": 2, "test": 8}


# ----------------------------------------------------------------------------------------------------------
# 3. Leftovers of killed processes are removed by the next run of their kind; live ones are kept.


def test_prepare_removes_staging_folders_of_killed_builds_only(make_site, tmp_path, capfd):
  site = make_site("china", shape=train_fixtures.SITE_SHAPE)
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  dead = _left_by_killed_process(data_dir, prepare.STAGING_PREFIX)
  older = data_dir / ".staging-k1ll3d"  # an older version's: no lock inside, from before we started
  older.mkdir()
  os.utime(older, (AN_HOUR_AGO, AN_HOUR_AGO))
  with _holder("staging", data_dir, prepare.STAGING_PREFIX) as (_, live):
    capfd.readouterr()
    assert prepare.prepare_site("china", 32, data_dir, site.parent).rebuilt
    assert _names(data_dir) == sorted(["china", live.name])  # the live build's folder is not touched
    assert _names(live) == [files.STAGING_LOCK]
    assert _notes(capfd) == [f"note: removed 2 leftovers of killed processes in {data_dir}: "
                                    f"{', '.join(sorted([dead.name, older.name]))}"]
  # Its owner is gone now: the next run, reusing the dataset, removes it.
  assert not prepare.prepare_site("china", 32, data_dir, site.parent).rebuilt
  assert _names(data_dir) == ["china"]


def test_demo_writer_removes_temporary_folders_of_killed_writers_only(tmp_path):
  out = tmp_path / "demo_raw"
  out.mkdir()
  dead = _left_by_killed_process(out, ".china.tmp-")
  with _holder("staging", out, ".china.tmp-") as (_, live):
    demo.write_demo_site("china", out, scale=0.03)
    assert _names(out) == sorted(["china", live.name])
    assert not dead.exists()
  assert _names(out / "china") == sorted(demo.DEMO_FILES)  # our own lock file did not move in with it
  demo.write_demo_site("china", out, scale=0.03)  # cached: nothing written, but the leftover goes
  assert _names(out) == ["china"]


# ----------------------------------------------------------------------------------------------------------
# 4. Prediction outputs are one set, with their provenance.

CHANNELS = constants.parse_channels(train_fixtures.CHANNELS, constants.SITE_CHANNELS)


@dataclasses.dataclass
class _StandInRun:
  """What prediction uses of a trained run (`evaluate.Run`), with a model that needs no training: the
  landslide probability is a sigmoid of the normalised red band."""
  workdir: Path
  step: int
  config: train.TrainConfig = train.TrainConfig(patch=32, channels=CHANNELS)
  stats: normalization.ChannelStats = normalization.ChannelStats(
      CHANNELS, (1600.0,) * 4 + (3.0,), (800.0,) * 4 + (2.0,), 1)
  fail: bool = False

  def predict(self, images: np.ndarray) -> np.ndarray:
    if self.fail:
      raise RuntimeError("model crashed")
    return 1.0 / (1.0 + np.exp(-images[..., CHANNELS.index("B4")]))


@pytest.fixture
def scene(make_site):
  return make_site("china", shape=(64, 96)) / "manifest.json"


def _map(tmp_path, monkeypatch, scene, out: Path, step: int = 7, threshold: float = 0.5) -> dict:
  run = _StandInRun(tmp_path / "run", step)
  monkeypatch.setattr(evaluate, "load_run", lambda workdir, checkpoint="best": run)
  return predict.predict_scene(run.workdir, scene, None, out, threshold=threshold, min_area_m2=0.0)


def _sets(out: Path) -> dict[str, str | None]:
  return {name: (predict.read_provenance(out / name) or {}).get("set") for name in _names(out)
          if name in predict.OUTPUT_FILES}


def test_outputs_carry_their_provenance(tmp_path, monkeypatch, scene):
  out = tmp_path / "maps"
  _map(tmp_path, monkeypatch, scene, out, step=7, threshold=0.4)
  assert _names(out) == ["landslides.geojson", "landslides.tif", "probability.tif"]
  run = _StandInRun(tmp_path / "run", 7)
  expected = {"checkpoint_step": "7", "threshold": "0.4", "workdir": str((tmp_path / "run").resolve()),
              "run_config_sha256": predict.run_config_sha256(run),
              "files": "probability.tif,landslides.tif,landslides.geojson"}
  records = {name: predict.read_provenance(out / name) for name in predict.OUTPUT_FILES}
  for name, record in records.items():
    assert {k: record[k] for k in expected} == expected, name
  assert len({r["set"] for r in records.values()}) == 1 and len({r["written"] for r in records.values()}) == 1
  with rasterio.open(out / "probability.tif") as src:  # same formats as before: COGs
    assert src.tags()["LANDSLIDE_JAX_CHECKPOINT_STEP"] == "7"
    assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
  geojson = json.loads((out / "landslides.geojson").read_text())
  assert geojson["type"] == "FeatureCollection" and geojson["properties"]["min_area_m2"] == 0.0
  # Another checkpoint and threshold: the whole set changes together.
  first = _sets(out)
  _map(tmp_path, monkeypatch, scene, out, step=9, threshold=0.6)
  second = _sets(out)
  assert len(set(second.values())) == 1 and set(second.values()).isdisjoint(first.values())
  assert predict.read_provenance(out / "landslides.tif")["checkpoint_step"] == "9"


KILLED_SWAP = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from landslide_jax import evaluate, predict
    from tests.test_robust_outputs import _StandInRun
    scene, out, run = Path(sys.argv[1]), Path(sys.argv[2]), _StandInRun(Path(sys.argv[3]), 2)
    evaluate.load_run = lambda workdir, checkpoint="best": run
    rename, renamed = os.replace, []

    def killed_on_second_output(src, dst):
      # SIGKILL (no cleanup, no finally) right before the second output file is renamed into place.
      if Path(dst).parent == out and Path(dst).name in predict.OUTPUT_FILES:
        renamed.append(dst)
        if len(renamed) == 2:
          os.kill(os.getpid(), signal.SIGKILL)
      rename(src, dst)
    os.replace = killed_on_second_output
    predict.predict_scene(run.workdir, scene, None, out, threshold=0.3)
""")


def test_a_kill_between_renames_leaves_no_mixed_set(tmp_path, monkeypatch, scene, capfd):
  out = tmp_path / "maps"
  _map(tmp_path, monkeypatch, scene, out, step=1)
  old_set = set(_sets(out).values())
  proc = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(scene), str(out), str(tmp_path / "run")],
                        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  # Killed after renaming the new probability.tif in: the old maps went first, so no old file is left
  # beside it. What is there is one (incomplete) set, and says so by its provenance.
  outputs = _sets(out)
  assert sorted(outputs) == ["probability.tif"] and set(outputs.values()).isdisjoint(old_set)
  assert predict.read_provenance(out / "probability.tif")["threshold"] == "0.3"
  staging = [name for name in _names(out) if name.startswith(predict.STAGING_PREFIX)]
  assert len(staging) == 1
  # The next run removes the killed one's staging folder and writes a whole set.
  capfd.readouterr()
  _map(tmp_path, monkeypatch, scene, out, step=3)
  assert _names(out) == ["landslides.geojson", "landslides.tif", "probability.tif"]
  assert len(set(_sets(out).values())) == 1
  assert _notes(capfd) == [f"note: removed 1 leftover of killed processes in {out}: {staging[0]}"]


def test_a_mixed_folder_is_cleaned_of_the_older_sets_files_before_writing(tmp_path, monkeypatch, scene,
                                                                           capfd):
  # A folder an older version left mixed: probability.tif of one call beside the others of a later one.
  older, newer = tmp_path / "older", tmp_path / "newer"
  _map(tmp_path, monkeypatch, scene, older, step=1)
  _map(tmp_path, monkeypatch, scene, newer, step=2)
  shutil.copy2(older / "probability.tif", newer / "probability.tif")
  capfd.readouterr()
  # The next run cleans the folder first, so even one that then fails leaves no mixed set.
  failing = _StandInRun(tmp_path / "run", 3, fail=True)
  with pytest.raises(RuntimeError, match="model crashed"):
    predict.predict_probabilities(failing, predict.scene_inputs(scene, None), newer)
  assert _names(newer) == ["landslides.geojson", "landslides.tif"]
  assert predict.read_provenance(newer / "landslides.tif")["checkpoint_step"] == "2"
  assert _notes(capfd) == [f"note: {newer}: removed probability.tif, left from another prediction "
                                  "than landslides.tif, landslides.geojson (an interrupted run)"]


def test_predict_removes_leftovers_of_killed_runs_only(tmp_path, monkeypatch, scene, capfd):
  out = tmp_path / "maps"
  out.mkdir()
  dead = _left_by_killed_process(out, predict.STAGING_PREFIX)
  # What versions before the staging folder left in the output folder itself when killed.
  legacy = [out / ".probability.x1y2z3.tif", out / ".landslides.a1b2c3.cog.tif", out / ".landslides.geojson.tmp"]
  for path in legacy:
    path.write_bytes(b"half a map")
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
  with _holder("staging", out, predict.STAGING_PREFIX) as (_, live):
    capfd.readouterr()
    _map(tmp_path, monkeypatch, scene, out)
    assert _names(out) == sorted(["landslides.geojson", "landslides.tif", "probability.tif", live.name])
    assert _notes(capfd) == [
        f"note: removed 1 leftover of killed processes in {out}: {dead.name}",
        f"note: removed 3 leftovers of killed processes in {out}: "
        f"{', '.join(sorted(p.name for p in legacy))}"]


def test_predict_on_a_full_disk_keeps_the_previous_set(tmp_path, monkeypatch, scene):
  out = tmp_path / "maps"
  _map(tmp_path, monkeypatch, scene, out, step=2)
  before = {name: (out / name).read_bytes() for name in _names(out)}
  real = shutil.disk_usage
  monkeypatch.setattr(files.shutil, "disk_usage", lambda path: real(path)._replace(free=10**6))
  with pytest.raises(InputError) as info:
    _map(tmp_path, monkeypatch, scene, out, step=3)
  assert "not enough free space for the maps" in str(info.value) and "another --out" in str(info.value)
  assert {name: (out / name).read_bytes() for name in _names(out)} == before
