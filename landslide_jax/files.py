"""Writing small result files so that a reader never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
  """Writes `text` to a hidden sibling, then renames it over `path`: a crash leaves the old file or none,
  never a truncated one (metrics.json and config.json are read back to resume and skip runs)."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)
  return path
