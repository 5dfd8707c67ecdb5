"""Bad command lines of every launcher (issue 10): one `error:` line on stderr naming the flag, the problem
and a fix that names only flags the launcher has, exit code 2, and nothing written. Ctrl-C: one line, exit
130. Bad raw inputs are tests/test_bad_inputs.py's; bad scenario/patch/model names are tests/test_train.py's.

Every command here fails at flag parsing (or, for the two "says where" cases, at the first check of its
library call), so the whole file is interpreter start-ups run a few at a time: no training, no dataset.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from absl import logging

from landslide_jax import cli, constants
from landslide_jax.errors import InputError
from tests.conftest import ROOT

TIMEOUT = 120

# Each launcher's own folders are in the test's tmp dir, so a check that failed to fire would write there
# (and be caught as "left behind") rather than in runs/ or ~/tensorflow_datasets; the run is as small as
# a run can be in case it does start.
SAFE = {
    "prepare": ["--site=china", "--patch=32", "--data_dir={tmp}/tfds"],
    "train": ["--patch=32", "--max_epochs=1", "--workdir={tmp}/run", "--data_dir={tmp}/tfds"],
    "evaluate": ["--workdir={tmp}/run"],
    "predict": ["--workdir={tmp}/run", "--scene={tmp}/scene.tif", "--out={tmp}/maps"],
    "sweep": ["--scenarios=china", "--patches=32", "--models=unet", "--max_epochs=1",
              "--workdir={tmp}/runs", "--out={tmp}/results", "--data_dir={tmp}/tfds"],
}

# name: (launcher, flags added after SAFE's (absl keeps the last of a repeated flag), flags the line must
# name, other phrases it must hold). "{file}" is an existing regular file. Several bad values in
# one command are reported together, in one line: the train, evaluate and sweep launchers import JAX
# (3 s each), so their cases are grouped; prepare and predict start in about 1 s.
BAD_FLAGS = {
    "train_nan": ("train", ["--learning_rate=nan", "--threshold=nan", "--min_delta=nan"],
                  ["--learning_rate=nan", "--min_delta=nan", "--threshold=nan"], ["finite", "between 0 and 1"]),
    "train_out_of_range": ("train", ["--learning_rate=inf", "--threshold=1", "--pos_weight=-1"],
                           ["--learning_rate=inf", "--pos_weight=-1", "--threshold=1"], ["> 0"]),
    "train_seed_negative": ("train", ["--seed=-1"], ["--seed=-1"], []),
    "train_threshold_and_seeds": ("train", ["--threshold=often", "--seeds=0"], ["--threshold=often", "--seeds=0"],
                                  ["probability or auto", "--threshold=auto", "> 0"]),
    "train_workdir_is_a_file": ("train", ["--workdir={file}"], ["--workdir"], ["is a file, not a folder"]),
    "evaluate_bad_values": ("evaluate", ["--workdir={file}", "--threshold=nan", "--data_dir={file}/tfds"],
                            ["--workdir", "--data_dir", "--threshold=nan"],
                            ["is a file", "{file} is a file", "between 0 and 1"]),
    "predict_threshold_zero": ("predict", ["--threshold=0"], ["--threshold"], ["between 0 and 1"]),
    "predict_unknown_blend": ("predict", ["--blend=gaussian"], ["--blend=gaussian"], ["cosine|triangular"]),
    "predict_out_is_a_file": ("predict", ["--out={file}"], ["--out"], ["is a file, not a folder"]),
    "predict_min_area_nan": ("predict", ["--min_area_m2=nan"], ["--min_area_m2=nan"], ["finite"]),
    "predict_block_not_an_integer": ("predict", ["--block=1.5"], ["--block=1.5"], ["not an integer"]),
    "prepare_unknown_site": ("prepare", ["--site=mars"], ["--site=mars"],
                             ["taiwan|china|japan", "see python -m launch.prepare --helpshort"]),
    "prepare_data_dir_under_a_file": ("prepare", ["--data_dir={file}/tfds"], ["--data_dir"],
                                      ["{file} is a file, not a folder"]),
    "prepare_demo_scale_nan": ("prepare", ["--demo_scale=nan"], ["--demo_scale=nan"], ["finite"]),
    "prepare_misspelt_flag": ("prepare", ["--overwite"], ["--overwite"],
                              ["no such flag", "did you mean --overwrite?"]),
    "prepare_positional_argument": ("prepare", ["japan"], [], ["unexpected argument 'japan'"]),
    "sweep_seed_negative": ("sweep", ["--seed=-1"], ["--seed=-1"], []),
    "sweep_jobs_and_seeds_zero": ("sweep", ["--jobs=0", "--seeds=0"], ["--jobs=0", "--seeds=0"], ["> 0"]),
    "sweep_folders_are_files": ("sweep", ["--out={file}", "--workdir={file}"], ["--out", "--workdir"],
                                ["is a file, not a folder"]),
}

# Required flags left out: every one is named, in one line.
MISSING = {
    "evaluate_without_workdir": ("evaluate", ["--workdir"]),
    "predict_without_anything": ("predict", ["--workdir", "--scene", "--out"]),
}


def _env() -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu")


def _run(args: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=TIMEOUT, check=False)


def _tree(root: Path) -> set[str]:
  return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
  """The only non-empty stderr line, checked to be an `error:` line with a fix."""
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: ") and ". Fix: " in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
  """Every command of this file, run a few at a time (each is mostly interpreter start-up)."""
  root = tmp_path_factory.mktemp("flags")
  file = root / "not_a_folder.txt"
  file.write_text("a file where a folder is expected\n")
  commands = {}
  for name, (launcher, extra, *_) in BAD_FLAGS.items():
    commands[name] = (launcher, SAFE[launcher] + extra)
  for name, (launcher, _) in MISSING.items():
    commands[name] = (launcher, [])
  # The two that get past parsing: they must say where their outputs go before failing on bad input.
  commands["train_says_where"] = ("train", SAFE["train"] + ["--manual_dir={tmp}/empty"])
  commands["sweep_says_where"] = ("sweep", SAFE["sweep"] + ["--scenarios=mars"])
  # Each in a folder of its own, so what a command leaves behind is its own.
  args = {}
  for name, (launcher, flags) in commands.items():
    tmp = root / name
    tmp.mkdir()
    if name == "train_says_where":
      (tmp / "empty").mkdir()
    args[name] = ["-m", f"launch.{launcher}", *(f.format(tmp=tmp, file=file) for f in flags)]
  args["train_help"] = ["-m", "launch.train", "--helpshort"]
  args["ctrl_c"] = ["-c", "from landslide_jax import cli\n"
                          "def train():\n  raise KeyboardInterrupt\n"
                          "cli.run_reporting_input_errors(train, resumable=True)"]
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    procs = dict(zip(args, pool.map(_run, args.values())))
  return root, file, procs


def _defined_flags(launcher: str) -> set[str]:
  """The flags a fix may name: the launcher's own (its DEFINE_ calls) and absl's help flags.

  Read from the source rather than by importing: every launcher defines --workdir & co. in absl's one
  global FLAGS, so two of them cannot be imported into one process.
  """
  source = (ROOT / "launch" / f"{launcher}.py").read_text()
  return set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source)) | {"help", "helpshort", "helpfull"}


def _fix_names_only_defined_flags(line: str, launcher: str) -> None:
  defined = _defined_flags(launcher)
  fix = line.split(". Fix: ", 1)[1]
  named = set(re.findall(r"--(\w+)", fix))
  assert named <= defined, f"fix names flags {sorted(named - defined)} the launcher lacks: {line}"


@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flag_is_one_line_exit_2_nothing_written(launched, name):
  root, file, procs = launched
  launcher, _, named, phrases = BAD_FLAGS[name]
  proc = procs[name]
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = _one_error_line(proc)
  for phrase in named + phrases:
    assert phrase.format(file=file) in line, (phrase, line)
  if named:
    # A bad flag comes first, before its problem: `error: --flag=value: problem[; --other...]. Fix: ...`.
    assert any(line.startswith(f"error: {flag}") for flag in named), line
  _fix_names_only_defined_flags(line, launcher)
  assert _tree(root / name) == set(), f"left behind: {sorted(_tree(root / name))}"
  assert file.read_text() == "a file where a folder is expected\n"


@pytest.mark.parametrize("name", list(MISSING))
def test_missing_required_flags_are_one_line(launched, name):
  _, _, procs = launched
  launcher, missing = MISSING[name]
  proc = procs[name]
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = _one_error_line(proc)
  assert line.startswith("error: missing required flag"), line
  for flag in missing:
    assert f"{flag}=..." in line, (flag, line)
  assert f"see python -m launch.{launcher} --helpshort" in line
  _fix_names_only_defined_flags(line, launcher)


def test_train_says_where_its_run_folder_is(launched):
  root, _, procs = launched
  proc = procs["train_says_where"]
  tmp = root / "train_says_where"
  assert proc.returncode == 2, proc.stderr[-3000:]
  _one_error_line(proc)  # the empty --manual_dir (its wording is tests/test_train.py's)
  assert f"run folder: {tmp / 'run'}" in proc.stdout.splitlines()
  assert not (tmp / "run").exists()  # said where it would be; bad input still makes no folder


def test_sweep_says_where_runs_and_outputs_go(launched):
  root, _, procs = launched
  proc = procs["sweep_says_where"]
  tmp = root / "sweep_says_where"
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "--scenarios" in _one_error_line(proc)
  assert (f"runs in {tmp / 'runs' / '<scenario>-<model>-p<patch>'}, tables and figures in {tmp / 'results'}"
          in proc.stdout.splitlines())
  assert _tree(tmp) == set()


def test_train_help_lists_channels_and_landslide4sense_manual_dir(launched):
  _, _, procs = launched
  proc = procs["train_help"]
  text = " ".join(proc.stdout.split())  # absl wraps help at 80 columns
  assert ", ".join(constants.SITE_CHANNELS) in text, text
  assert ", ".join(constants.L4S_CHANNELS) in text, text
  manual_dir = re.split(r" --\w+: ", text.split("--manual_dir:", 1)[1])[0]  # up to the next flag
  assert "landslide4sense" in manual_dir and "TrainData" in manual_dir, manual_dir


# ----------------------------------------------------------------------------------------------------------
# In process: the wrapper every launcher's main goes through.


@pytest.fixture
def keep_verbosity():
  # run_reporting_input_errors quietens absl logging for the launcher's process; not for the test run's.
  before = logging.get_verbosity()
  yield
  logging.set_verbosity(before)


@pytest.mark.parametrize("resumable, expected", [(True, "interrupted; resume with the same command"),
                                                  (False, "interrupted")])
def test_ctrl_c_is_one_line_exit_130(capsys, monkeypatch, keep_verbosity, resumable, expected):
  def interrupted():
    raise KeyboardInterrupt
  # The wrapper leaves with os._exit (no interpreter shutdown); record the code instead of ending pytest.
  codes = []
  monkeypatch.setattr(cli.os, "_exit", codes.append)
  cli.run_reporting_input_errors(interrupted, resumable=resumable)
  assert codes == [cli.EXIT_INTERRUPTED] == [130]
  captured = capsys.readouterr()
  assert captured.err == expected + "\n" and captured.out == ""


def test_ctrl_c_exit_code_reaches_the_shell(launched):
  # The same without the monkeypatch, in a process of its own: what a shell or a job scheduler sees.
  proc = launched[2]["ctrl_c"]
  assert proc.returncode == 130, proc.stderr
  assert proc.stderr == "interrupted; resume with the same command\n" and proc.stdout == ""


def test_input_error_is_one_line_exit_2(capsys, keep_verbosity):
  def bad():
    raise InputError("raw/china", "site folder does not exist", "pass --manual_dir=<folder>")
  with pytest.raises(SystemExit) as info:
    cli.run_reporting_input_errors(bad)
  assert info.value.code == cli.EXIT_BAD_INPUT == 2
  assert capsys.readouterr().err == ("error: raw/china: site folder does not exist. "
                                     "Fix: pass --manual_dir=<folder>\n")


def test_other_exceptions_keep_their_traceback(keep_verbosity):
  # A bug is not bad input: it must not be reduced to one line.
  def bug():
    raise ZeroDivisionError("a bug")
  with pytest.raises(ZeroDivisionError):
    cli.run_reporting_input_errors(bug)


def _has_loaded(pid: int, library: str) -> bool:
  try:
    return library in Path(f"/proc/{pid}/maps").read_text()
  except OSError:
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports progress")
def test_ctrl_c_while_the_launcher_imports_is_one_line_exit_130(tmp_path):
  # Interrupted once jaxlib's first library is loaded: launch/__init__.py has run, and jax, flax, optax,
  # orbax and TFDS are still being imported (seconds). That used to end in a traceback through importlib.
  # SIGINT as an interactive shell leaves it: a test suite started as a background job (`pytest &` in a
  # script) passes it on ignored, and an ignored SIGINT is rightly left ignored by the launcher. So the
  # child resets it, then execs the launcher (same pid; no preexec_fn fork in this multithreaded process).
  launcher = [sys.executable, "-m", "launch.train", f"--workdir={tmp_path / 'run'}",
              f"--data_dir={tmp_path / 'tfds'}", "--patch=32", "--demo_scale=0.05"]
  reset = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
           "os.execv(sys.executable, sys.argv[1:])")
  proc = subprocess.Popen([sys.executable, "-c", reset, *launcher], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 60
  while not (loaded := _has_loaded(proc.pid, "/jaxlib/")) and proc.poll() is None:
    assert time.monotonic() < deadline, "the launcher did not start importing jax within 60 s"
    time.sleep(0.002)
  proc.send_signal(signal.SIGINT)
  assert loaded, "jaxlib was never seen loading"
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert err == "interrupted\n" and out == "", err
  assert not (tmp_path / "run").exists() and not (tmp_path / "tfds").exists()
