"""One error type for bad user input, so every entry point can report it in one line."""

from __future__ import annotations

import os


class InputError(ValueError):
  """Bad user input: names the file, the problem and the fix.

  `launch/*` catch this, print `str(err)` as a single line on stderr and exit non-zero.
  """

  def __init__(self, path: str | os.PathLike | None, problem: str, fix: str):
    self.path = None if path is None else os.fspath(path)
    self.problem = problem
    self.fix = fix
    where = f"{self.path}: " if self.path else ""
    # Keep it to one line: tracebacks and multi-line messages get lost in job logs.
    message = f"{where}{problem}. Fix: {fix}".replace("\n", " ")
    super().__init__(message)
