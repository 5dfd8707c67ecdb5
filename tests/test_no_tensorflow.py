"""The data path (build and read back) works with TensorFlow absent: TFDS is used without TF."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

# Run in a fresh interpreter: the finder goes in before anything imports TFDS, so any attempt to import
# TensorFlow (directly or lazily inside TFDS) fails as if it were not installed.
_SCRIPT = textwrap.dedent("""
    import importlib.abc
    import sys


    class _NoTensorFlow(importlib.abc.MetaPathFinder):
      # Behaves as if TensorFlow were not installed, even where it is.

      def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" and not name.startswith("tensorflow."):
          return None
        # `importlib.util.find_spec("tensorflow")` is how etils/TFDS ask whether TF is there; for an
        # absent package it answers None (raising would break that probe, which TF-free code relies
        # on). Everything else, i.e. an actual import, gets the error an absent package raises.
        caller = sys._getframe(2).f_code
        if caller.co_name == "find_spec" and "importlib" in caller.co_filename:
          return None
        raise ModuleNotFoundError(f"import of {name} blocked by the test", name=name)


    sys.meta_path.insert(0, _NoTensorFlow())
    try:
      import tensorflow  # pylint: disable=unused-import
    except ImportError:
      pass
    else:
      raise AssertionError("the blocker let tensorflow be imported")
    from pathlib import Path

    import numpy as np

    from landslide_jax import prepare
    from tests.conftest import pixel_box, write_dem, write_polygons, write_s2

    tmp = Path(sys.argv[1])
    site = tmp / "raw" / "china"
    site.mkdir(parents=True)
    data = write_s2(site / "s2.tif", (64, 400))
    write_dem(site / "dem.tif", (64, 400))
    write_polygons(site / "inventory.gpkg", [pixel_box(10, 10, 8, 8)])
    prepare.prepare_site("china", 32, tmp / "tfds", tmp / "raw")

    import tensorflow_datasets as tfds
    import tfds_builders
    from tfds_builders import site_builder

    by_name = tfds.data_source("china/p32", data_dir=str(tmp / "tfds"))
    builder = tfds_builders.get_builder("china", site_builder.make_config(32), tmp / "tfds")
    by_builder = builder.as_data_source()
    # 64 x 400 scene: test = columns 0.6 * 400 = 240.. (160), validation = 0.85 * 240 = 204..239 (36),
    # train = 0..203 (204); 64 // 32 = 2 window rows: train 2 * 6 whole windows; validation and test
    # covered: 2 * ceil(36 / 32) = 4 and 2 * 5.
    for source in (by_name, by_builder):
      counts = {name: len(source[name]) for name in ("train", "validation", "test")}
      assert counts == {"train": 12, "validation": 4, "test": 10}, counts
      example = source["train"][0]
      r, c = int(example["row"]), int(example["col"])
      window = np.moveaxis(data[:, r:r + 32, c:c + 32], 0, -1).astype(np.float32)
      np.testing.assert_array_equal(example["image"][..., :4], window)
    assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if m.startswith("tensorflow."))
    assert not any(m.startswith("tensorflow.") for m in sys.modules)
    print("NO_TF_OK")
""")


def test_build_and_read_without_tensorflow(tmp_path):
  result = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "NO_TF_OK" in result.stdout


def test_tensorflow_not_installed():
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("tensorflow is installed in this environment; the subprocess test still blocks it")
  assert importlib.util.find_spec("tensorflow") is None
