"""Entry points: `python -m launch.<name>`. Each parses flags and makes one library call.

Importing JAX, Flax, orbax and TFDS takes seconds, and a Ctrl-C meanwhile would end in a traceback
through importlib. When this package starts a launcher, Ctrl-C until `landslide_jax.cli` takes over (when
the launcher's work begins) prints one `interrupted` line and exits 130, as it does later.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:  # pylint: disable=unused-argument
  print("interrupted", file=sys.stderr, flush=True)
  os._exit(130)  # nothing written yet: no cleanup to run, and none of the importers' teardown to see


def _started_as_launcher() -> bool:
  """True for `python -m launch.<name>`, not when tests or a notebook import a launcher module."""
  argv = getattr(sys, "orig_argv", [])
  return any(a == "-m" and b.startswith(f"{__name__}.") for a, b in zip(argv, argv[1:]))


# A shell starts background jobs (`cmd &` in a script) with SIGINT ignored: they stay deaf to it.
if _started_as_launcher() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
  signal.signal(signal.SIGINT, _interrupted_while_starting)


# `launch.sweep --jobs=N` gives each of its training processes a share of the cores (landslide_jax.sweep
# job_slots). Applied here, before jax starts: XLA sizes its CPU thread pool from the cores this process
# may run on, so N processes then use N disjoint shares instead of N pools of every core.
_CORES = os.environ.get("LANDSLIDE_JAX_CORES")
if _CORES and _started_as_launcher():
  os.sched_setaffinity(0, {int(core) for core in _CORES.split(",")})
