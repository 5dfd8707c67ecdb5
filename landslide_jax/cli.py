"""What every `launch/*` entry point shares: whatever goes wrong on the user's side ends in one line on stderr
and a distinct exit code, never in a traceback.

A launcher defines its flags, attaches the `check_*` rules below to those that need them, runs
`app.run(main, flags_parser=cli.parse_flags)`, and its `main` makes one library call through
`run_reporting_input_errors`:

- a bad command line (absl's own errors and the `check_*` rules), or bad input (`InputError`): one
  `error: <flag or file>: <problem>. Fix: <fix>` line, exit 2, before anything is written;
- a fault of the machine (full disk, read-only or forbidden folder, symlink loop; see `faults`): one
  `error:` line naming the path, the fault and the folder flag to change, exit 2;
- Ctrl-C: one `interrupted` line, exit 130 (what shells report for SIGINT).

Other exceptions keep their traceback: they are bugs, and the traceback is what a bug report needs.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from absl import flags, logging

from landslide_jax import faults
from landslide_jax.errors import InputError

EXIT_BAD_INPUT = 2
# 128 + SIGINT, what shells report for a command stopped with Ctrl-C, so scripts can tell it from a failure.
EXIT_INTERRUPTED = 130

# Separates the fix inside a `check_*` rule's absl ValidationError, so `parse_flags` can put it last.
_FIX = ". Fix: "
# absl's messages for a required flag left out, and those of its parsers, in plain words.
_REQUIRED = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.?")
_REWORDED = ((re.compile(r"could not convert string to float: .*"), "not a number"),
             (re.compile(r"invalid literal for int\(\) with base 10: .*"), "not an integer"),
             (re.compile(r"\('Non-boolean argument to boolean flag', .*\)"), "not true or false"),
             (re.compile(r"Missing value for flag (--\S+)"), r"\1: missing value"),
             (re.compile(r"^ERROR:: "), ""))
# jax.random.key takes a seed that fits int64; numpy's generators refuse negative ones.
_SEED_LIMIT = 2**63
# Folder flags registered by `check_folder`: a disk fault under one of them names the flag in its fix.
_FOLDER_FLAGS: list[flags.FlagHolder] = []


def command() -> str:
  """The command that started this process, as the user would type it again: `python -m launch.train`."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name and spec.name != "__main__":
    return f"python -m {spec.name}"
  return f"python {sys.argv[0]}" if sys.argv and sys.argv[0] else "python"


def _exit_bad_input(error: InputError) -> NoReturn:
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(EXIT_BAD_INPUT)


def flag_error(error: flags.Error, cmd: str) -> InputError:
  """Rewrites an absl flag error (possibly several lines, one per bad flag) as one `InputError` line.

  The fix is a `check_*` rule's own when every bad flag has one, else (also) the launcher's --helpshort.
  """
  help_fix = f"see {cmd} --helpshort"
  if isinstance(error, flags.UnrecognizedFlagError):
    # absl keeps its suggestions only in the message: "... Did you mean: learning_rate ?".
    tip = re.search(r"Did you mean: (.+?) \?$", str(error))
    guess = " or ".join(f"--{name.strip()}" for name in tip[1].split(",")) if tip else ""
    return InputError(None, f"--{error.flagname}: no such flag",
                      f"did you mean {guess}? {help_fix}" if guess else help_fix)
  problems, fixes, missing, needs_help = [], [], [], False
  for line in (ln.strip() for ln in str(error).splitlines()):
    if not line:
      continue
    if match := _REQUIRED.fullmatch(line):
      missing.append(f"--{match[1]}")
      continue
    line = line.removeprefix("flag ")
    for pattern, words in _REWORDED:
      line = pattern.sub(words, line)
    problem, _, fix = line.partition(_FIX)
    problems.append(problem)
    if fix:
      fixes.append(fix)
    else:
      needs_help = True
  if missing:
    problems.insert(0, f"missing required flag{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    fixes.insert(0, "pass " + " ".join(f"{name}=..." for name in missing))
    needs_help = True
  if needs_help:
    fixes.append(help_fix)
  # Several flags can share a fix (two folders that are files): say it once.
  return InputError(None, "; ".join(problems), "; ".join(dict.fromkeys(fixes)))


def parse_flags(argv: list[str]) -> list[str]:
  """absl `flags_parser` for `app.run(main, flags_parser=cli.parse_flags)`.

  Parses `argv` into `flags.FLAGS` (running every `check_*` rule) and returns the program name. absl's
  default parser prints two lines and exits 1; here a bad command line is one line naming the flag, the
  problem and the fix, with exit 2 like every other bad input. --help and its kin work as in absl.
  """
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as err:
    _exit_bad_input(flag_error(err, command()))
  if len(rest) > 1:
    # No launcher takes positional arguments; silently ignoring one (`scenario=japan`, a lost `--`) would
    # run something the user did not ask for.
    _exit_bad_input(InputError(None, f"unexpected argument {rest[1]!r}",
                               f"write flags as --<name>=<value>; see {command()} --helpshort"))
  return rest


def check(flag: flags.FlagHolder, problem_of: Callable[[Any], str | None], fix: str) -> None:
  """Adds a rule to `flag`: when `problem_of(value)` returns a problem, parsing stops with
  `error: --flag=value: problem. Fix: fix`. An unset flag (None) passes: the library resolves its default.
  """
  def checker(value: Any) -> bool:
    problem = None if value is None else problem_of(value)
    if problem is None:
      return True
    raise flags.ValidationError(f"{problem}{_FIX}{fix}")
  flags.register_validator(flag, checker)


def _example(flag: flags.FlagHolder, example: Any) -> str:
  value = flag.default if example is None else example
  return f"--{flag.name}={value:g}" if isinstance(value, float) else f"--{flag.name}={value}"


def check_positive(flag: flags.FlagHolder, example: float | None = None) -> None:
  """`flag` must be a finite number > 0 (NaN passes every comparison, so it is named)."""
  check(flag, lambda v: None if math.isfinite(v) and v > 0 else "must be a finite number > 0",
        f"pass a number > 0, e.g. {_example(flag, example)}")


def check_non_negative(flag: flags.FlagHolder, example: float | None = None) -> None:
  """`flag` must be a finite number >= 0."""
  check(flag, lambda v: None if math.isfinite(v) and v >= 0 else "must be a finite number >= 0",
        f"pass a number >= 0, e.g. {_example(flag, example)}")


def check_finite(flag: flags.FlagHolder, example: float) -> None:
  """`flag` must be a finite number (not NaN or inf)."""
  check(flag, lambda v: None if math.isfinite(v) else "must be a finite number",
        f"pass a number, e.g. {_example(flag, example)}")


def check_probability(flag: flags.FlagHolder) -> None:
  """`flag` must lie strictly between 0 and 1 (a threshold of 0 or 1 maps everything or nothing)."""
  check(flag, lambda v: None if 0.0 < v < 1.0 else "must be a probability strictly between 0 and 1",
        f"pass e.g. --{flag.name}=0.5")


def threshold_value(text: str | None) -> float | str | None:
  """A threshold flag's value: a probability, "auto" (chosen on the validation area), or None."""
  if text is None or text.strip().lower() == "auto":
    return None if text is None else "auto"
  return float(text)


def check_threshold(flag: flags.FlagHolder) -> None:
  """`flag` (a string flag) must be "auto" or a probability strictly between 0 and 1."""
  def problem(text: str) -> str | None:
    try:
      value = threshold_value(text)
    except ValueError:
      return "must be a probability or auto"
    if value == "auto" or 0.0 < value < 1.0:
      return None
    return "must be a probability strictly between 0 and 1, or auto"
  check(flag, problem, f"pass e.g. --{flag.name}=0.5, or --{flag.name}=auto to choose it on the "
        "validation area")


def check_seed(flag: flags.FlagHolder) -> None:
  """`flag` must be a seed JAX and numpy both accept: 0 <= seed < 2**63."""
  check(flag, lambda v: None if 0 <= v < _SEED_LIMIT else "must be an integer in [0, 2**63)",
        f"pass e.g. --{flag.name}=0")


def _file_in_the_way(path: str) -> Path | None:
  """The first of `path` and its parents that exists but is not a folder: nothing can be made under it."""
  for part in (Path(path), *Path(path).parents):
    if part.is_dir():
      return None
    if part.exists():
      return part
  return None


def check_folder(flag: flags.FlagHolder, fix: str = "pass a folder: an existing one, or a new path") -> None:
  """`flag` names a folder to read or create: neither it nor a parent may be an existing file."""
  def problem_of(value: str) -> str | None:
    blocker = _file_in_the_way(value)
    if blocker is None:
      return None
    return "is a file, not a folder" if blocker == Path(value) else f"{blocker} is a file, not a folder"
  check(flag, problem_of, fix)
  _FOLDER_FLAGS.append(flag)


def _exit_now(code: int) -> NoReturn:
  """Out at once, without the interpreter's shutdown: work cut short in other threads (an XLA compilation,
  an orbax checkpoint being saved) crashes or prints tracebacks while Python tears down. On disk this is
  a kill, which runs survive: orbax renames a checkpoint into place only once it is complete, and the
  same command resumes from the last complete one."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def run_reporting_input_errors(fn: Callable[[], object], resumable: bool = False) -> None:
  """Calls `fn`: an `InputError` (bad input or flag value) or a machine fault (`faults`) becomes one line on
  stderr and exit 2; Ctrl-C becomes one line (`interrupted`, and how to resume when `resumable`) and
  exit 130.

  Other exceptions keep their traceback: they are bugs, and the traceback is what a bug report needs.
  """
  # TFDS and orbax log every shard and file at INFO; keep the console for our own lines unless the
  # user asked for more with --verbosity.
  if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  faults.watch_library_messages()
  # launch/__init__.py answered Ctrl-C itself while the imports ran; from here it is a KeyboardInterrupt
  # (unless SIGINT is ignored, as in a script's background job: that choice stays).
  if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  interrupted = False
  fault = None
  try:
    fn()
  except InputError as err:
    _exit_bad_input(err)
  except KeyboardInterrupt:
    interrupted = True
  except Exception as err:  # pylint: disable=broad-except
    fault = faults.environment_fault(err, {flag.name: flag.value for flag in _FOLDER_FLAGS})
    if fault is None:
      raise  # a bug: its traceback is the report
  # Both reported outside the handler: the traceback is gone by now, and with it the frames holding an
  # open progress bar, so tqdm has cleared its line and ours starts on a line of its own.
  if fault is not None:
    print(f"error: {fault}", file=sys.stderr)
    _exit_now(EXIT_BAD_INPUT)
  if interrupted:
    print("interrupted; resume with the same command" if resumable else "interrupted", file=sys.stderr)
    _exit_now(EXIT_INTERRUPTED)
