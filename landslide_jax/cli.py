"""What every `launch/*` entry point shares: turning bad input into one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from typing import Callable

from absl import flags, logging

from landslide_jax.errors import InputError

EXIT_BAD_INPUT = 2


def run_reporting_input_errors(fn: Callable[[], object]) -> None:
  """Calls `fn`; an `InputError` (bad input or bad flag value) becomes one line on stderr and exit 2.

  Other exceptions keep their traceback: they are bugs, and the traceback is what a bug report needs.
  """
  # TFDS and orbax log every shard and file at INFO; keep the console for our own lines unless the
  # user asked for more with --verbosity.
  if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    fn()
  except InputError as err:
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)
