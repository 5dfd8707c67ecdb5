"""README's Python code runs as written: each ```python block is executed against a real dataset laid
out where the README says it is (HOME points at a temporary home holding it)."""

from __future__ import annotations

import re

from landslide_jax import constants, prepare
from tests.conftest import ROOT

PATCH = 32  # the README reads the main job's 128 px datasets; the self-made site is small


def _python_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_reading_without_tensorflow_runs_as_written(make_site, tmp_path, monkeypatch, capsys):
  blocks = [b for b in _python_blocks() if "tfds.data_source" in b]
  assert len(blocks) == 1
  home = tmp_path / "home"
  demo = home / "tensorflow_datasets" / "landslide_jax_demo" / "scale1-seed0"
  prepare.prepare(("china",), (PATCH,), demo, make_site("china").parent, constants.DEFAULT_CHANNELS)
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(tmp_path)
  code = blocks[0].replace("china/p128", f"china/p{PATCH}")
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out.strip().splitlines()[-1]
  count, keys, shape = re.fullmatch(r"(\d+) (\[.*\]) \((.*)\)", printed).groups()
  assert int(count) > 0 and "'image'" in keys
  assert shape == f"{PATCH}, {PATCH}, {len(constants.DEFAULT_CHANNELS)}"
  assert not (tmp_path / "~").exists()  # the old snippet's literal "~" folder


def test_every_python_block_is_covered():
  # A new block needs a test here: README code that was never run is how the "~" bug shipped.
  assert len(_python_blocks()) == 1
