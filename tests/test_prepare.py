"""End-to-end dataset preparation: a self-made site read back through TFDS, and the demo default."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from landslide_jax import constants, prepare
from tests.conftest import ROOT, SITE_CRS
from tfds_builders import site_builder


def test_prepare_site_round_trip(make_site, tmp_path):
  site = make_site("china", shape=(200, 600))
  result = prepare.prepare_site("china", 32, tmp_path / "tfds", site.parent)
  meta = result.metadata
  assert result.rebuilt
  assert meta["source"] == constants.SOURCE_REAL
  assert meta["grid"]["crs"] == SITE_CRS
  assert meta["channels"] == list(constants.DEFAULT_CHANNELS)
  # 200 x 600 all valid, cut across columns: train 306 cols, validation 54, test 240 (see
  # test_patching.py for the arithmetic) -> 6 x 9 whole training windows; validation and test covered
  # by 7 x 2 and 7 x 8 windows, every one of their pixels scored.
  assert [meta["areas"][s]["patches"] for s in ("train", "validation", "test")] == [54, 14, 56]
  assert [meta["areas"][s]["valid_pixels"] for s in ("train", "validation", "test")] == [
      200 * 306, 200 * 54, 200 * 240]
  import tfds_builders  # pylint: disable=import-outside-toplevel
  from tfds_builders import site_builder  # pylint: disable=import-outside-toplevel
  builder = tfds_builders.get_builder("china", site_builder.make_config(32), tmp_path / "tfds")
  source = builder.as_data_source()
  assert {k: len(v) for k, v in source.items()} == {"train": 54, "validation": 14, "test": 56}
  example = source["train"][0]
  assert example["image"].shape == (32, 32, 5) and example["image"].dtype == np.float32
  assert example["mask"].shape == example["valid"].shape == (32, 32, 1)
  # Same inputs again: reused, not rebuilt.
  again = prepare.prepare_site("china", 32, tmp_path / "tfds", site.parent)
  assert not again.rebuilt and again.metadata["input_hash"] == meta["input_hash"]


def _demo_dataset(data_dir, scale: float, patch: int):
  return (prepare.datasets_dir(data_dir, None, scale) / "china" / f"p{patch}" / str(site_builder.VERSION))


def test_prepare_without_manual_dir_uses_the_labelled_demo_scenes(tmp_path):
  cmd = [sys.executable, "-m", "launch.prepare", "--site=china", "--patch=64", "--demo_scale=0.3",
         f"--data_dir={tmp_path}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert "SYNTHETIC demo scenes" in out.stderr
  meta = json.loads((_demo_dataset(tmp_path, 0.3, 64) / "metadata.json").read_text())
  assert meta["source"] == constants.SOURCE_DEMO
  # The printed table carries the stored counts.
  row = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("china")][-1]
  assert row[:5] == ["china", "64"] + [str(meta["areas"][s]["patches"]) for s in
                                       ("train", "validation", "test")]
  assert row[-1] == constants.SOURCE_DEMO
  # One line of ours per dataset, none of TFDS's "Downloading and preparing dataset Unknown size".
  printed = out.stdout + out.stderr
  assert "Downloading and preparing" not in printed and "downloaded and prepared" not in printed
  assert "china p64: built at" in out.stdout
  assert (tmp_path / prepare.DEMO_DIRNAME).is_dir()
  assert not (tmp_path / "china").exists()  # real-data datasets' place stays free


def test_switching_demo_scale_just_works(tmp_path):
  # Before, every demo scale shared one dataset path, and a second scale was refused as "built from
  # different raw inputs" with a fix naming a flag launch.train does not have.
  small = prepare.prepare(("china",), (64,), tmp_path, None, demo_scale=0.2)[0]
  large = prepare.prepare(("china",), (64,), tmp_path, None, demo_scale=0.3)[0]
  assert small.rebuilt and large.rebuilt
  assert small.path == _demo_dataset(tmp_path, 0.2, 64) and large.path == _demo_dataset(tmp_path, 0.3, 64)
  assert small.metadata["input_hash"] != large.metadata["input_hash"]
  again = prepare.prepare(("china",), (64,), tmp_path, None, demo_scale=0.2)[0]
  assert not again.rebuilt and again.metadata == small.metadata
