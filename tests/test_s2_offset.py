"""Sentinel-2 radiometric offset: products of processing baseline 04.00 and later store
DN = 10000 x reflectance + 1000 (BOA_ADD_OFFSET / RADIO_ADD_OFFSET = -1000). The manifest's `s2_add_offset`
(or launch.predict's `--s2_add_offset`) undoes it; without it, a scene that looks offset gets a warning."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows

from landslide_jax import constants, predict
from landslide_jax.data import raster_io, scene as scene_lib
from landslide_jax.data.site_inputs import find_site_inputs
from landslide_jax.errors import InputError
from tests.conftest import ROOT, shared_path
from tests.test_sentinel2_reading import READ_BANDS, _chip_site

CHANNELS = constants.DEFAULT_CHANNELS  # B2, B3, B4, B8, slope
BANDS = ("B2", "B3", "B4", "B8")  # the order write_s2 stores them in


def _add_to_stored(s2: Path, offsets: tuple[float, ...]) -> None:
  """Rewrites the site's S2 stack with `offsets[i]` added to band i of every valid (non-zero) pixel, as a
  baseline >= 04.00 product stores the same reflectance."""
  with rasterio.open(s2) as src:
    data, profile, descriptions = src.read(), src.profile, src.descriptions
  valid = (data != 0).any(axis=0)
  for layer, offset in zip(data, offsets):
    layer[valid] += np.uint16(offset)
  with rasterio.open(s2, "w", **profile) as dst:
    dst.write(data)
    for i, name in enumerate(descriptions, start=1):
      dst.set_band_description(i, name)


def _offset_site(make_site, name: str, stored_offsets: tuple[float, ...], manifest: dict | None = None,
                 **kwargs) -> Path:
  site = make_site(name, manifest=manifest, **kwargs)
  _add_to_stored(site / "s2.tif", stored_offsets)
  return site


def _one_line(err: InputError, *phrases: str) -> None:
  message = str(err)
  assert "\n" not in message and "Fix: " in message, message
  for phrase in phrases:
    assert phrase in message, f"{phrase!r} not in {message!r}"


def _warnings(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("warning:")]


# ----------------------------------------------------------------------------------------------------------
# The same reflectance, stored with and without the offset, gives the same scene.


def test_manifest_offset_gives_the_scene_without_offset(make_site, capsys):
  plain = make_site("china", nodata_block=True)
  offset = _offset_site(make_site, "taiwan", (1000,) * 4, {"s2_add_offset": -1000}, nodata_block=True)
  with rasterio.open(offset / "s2.tif") as src:
    stored = src.read()
  assert stored[:, 100:, 100:].min() >= 1200 and not stored[:, :50, :75].any()  # offset, nodata kept 0
  a = scene_lib.load_scene(plain, CHANNELS, "china")
  b = scene_lib.load_scene(offset, CHANNELS, "taiwan")
  np.testing.assert_array_equal(b.image, a.image)
  np.testing.assert_array_equal(b.valid, a.valid)
  assert not b.valid[:50, :75].any() and not b.image[:, :50, :75].any()  # nodata pixels stay 0
  assert b.s2_add_offset == dict.fromkeys(BANDS, -1000.0)
  assert a.s2_add_offset == dict.fromkeys(BANDS, 0.0)
  assert not _warnings(capsys.readouterr().err)  # the offset was given: nothing to warn about


@pytest.mark.parametrize("form", ["json", "toml"])
def test_per_band_offset_table(make_site, form):
  plain = make_site("china")
  # Different offsets per band (and band names in several spellings), so a band mix-up shows.
  table = {"B02": -1000, "b3": -500, "B4": 0, "B08": -1000}
  offset = _offset_site(make_site, "taiwan", (1000, 500, 0, 1000), {"s2_add_offset": table})
  if form == "toml":
    spec = json.loads((offset / "manifest.json").read_text())
    (offset / "manifest.json").unlink()
    (offset / "manifest.toml").write_text(
        "".join(f'{k} = "{v}"\n' for k, v in spec.items() if isinstance(v, str))
        + "s2_add_offset = { B02 = -1000, b3 = -500, B4 = 0, B08 = -1000 }\n")
  inputs = find_site_inputs(offset)
  assert inputs.manifest.suffix == f".{form}"
  assert inputs.s2_add_offset == {"B2": -1000.0, "B3": -500.0, "B4": 0.0, "B8": -1000.0}
  a = scene_lib.load_channels(find_site_inputs(plain), CHANNELS)
  b = scene_lib.load_channels(inputs, CHANNELS)
  for x, y in zip(a[:2], b[:2]):
    np.testing.assert_array_equal(y, x)



def test_offset_table_without_a_band_read_is_an_error(make_site):
  # A table that leaves out a band read is an error, not an offset of 0.
  site = _offset_site(make_site, "taiwan", (1000, 1000, 1000, 1000),
                      {"s2_add_offset": {"B2": -1000, "B3": -1000, "B4": -1000}})
  inputs = find_site_inputs(site)
  assert scene_lib.load_channels(inputs, ("B2", "B4", "slope"))[0][0].max() > 0  # these bands are fine
  with pytest.raises(InputError) as err:
    scene_lib.load_channels(inputs, CHANNELS)
  _one_line(err.value, "manifest.json", "s2_add_offset lists B2, B3, B4 but not B8")


def test_predict_flag_and_manifest_give_the_scene_without_offset(make_site):
  plain = make_site("china")
  offset = _offset_site(make_site, "taiwan", (1000,) * 4, {"s2_add_offset": -1000})
  window = rasterio.windows.Window(40, 30, 64, 64)
  expected = scene_lib.load_channels(predict.scene_inputs(plain / "s2.tif", plain / "dem.tif"), CHANNELS,
                                     window=window)[0]
  by_flag = predict.scene_inputs(offset / "s2.tif", offset / "dem.tif", s2_add_offset=-1000)
  by_manifest = predict.scene_inputs(offset / "manifest.json", None)
  for inputs in (by_flag, by_manifest):
    assert inputs.s2_add_offset_given and inputs.add_offsets(BANDS) == dict.fromkeys(BANDS, -1000.0)
    np.testing.assert_array_equal(scene_lib.load_channels(inputs, CHANNELS, window=window)[0], expected)
  # Not given: 0 for a GeoTIFF scene; the flag overrides a manifest's value.
  unflagged = predict.scene_inputs(offset / "s2.tif", offset / "dem.tif")
  assert not unflagged.s2_add_offset_given and unflagged.add_offsets(BANDS) == dict.fromkeys(BANDS, 0.0)
  overridden = predict.scene_inputs(offset / "manifest.json", None, s2_add_offset=0.0)
  assert overridden.add_offsets(BANDS) == dict.fromkeys(BANDS, 0.0)


# ----------------------------------------------------------------------------------------------------------
# A scene that looks offset, without an offset given: one warning line, values as stored.


def test_warning_for_an_offset_scene_without_the_key(make_site, capsys):
  site = _offset_site(make_site, "taiwan", (1000,) * 4)
  inputs = find_site_inputs(site)
  image, _, _ = raster_io.read_sentinel2(inputs, BANDS)
  lines = _warnings(capsys.readouterr().err)
  assert len(lines) == 1, lines
  assert "s2_add_offset" in lines[0] and "--s2_add_offset" in lines[0] and str(site / "s2.tif") in lines[0]
  assert image[:, 100:, 100:].min() >= 1200  # values used as stored, not changed silently
  # The block-wise reader (launch.predict) checks once, on the overview it reads for the units.
  raster_io.resolve_s2_units(predict.scene_inputs(site / "s2.tif", site / "dem.tif"), BANDS,
                             check_offset=True)
  assert len(_warnings(capsys.readouterr().err)) == 1


def test_no_warning_for_a_scene_without_offset_or_with_it_given(make_site, capsys):
  plain = make_site("china")
  given = _offset_site(make_site, "taiwan", (1000,) * 4, {"s2_add_offset": -1000})
  small = _offset_site(make_site, "japan", (1000,) * 4, shape=(60, 100))  # 6000 px: too few to judge
  for site in (plain, given, small):
    raster_io.read_sentinel2(find_site_inputs(site), BANDS)
    raster_io.resolve_s2_units(find_site_inputs(site), BANDS, check_offset=True)
    assert not _warnings(capsys.readouterr().err), site


# ----------------------------------------------------------------------------------------------------------
# Bad values.


@pytest.mark.parametrize("value, phrase", [
    ("-1000", "must be a number or a table"),
    (True, "must be a number or a table"),
    ([-1000], "must be a number or a table"),
    ({}, "must be a number or a table"),
    (math.nan, "must be a number or a table"),
    ({"B2": "-1000"}, "s2_add_offset of B2 must be a number"),
    ({"B2": None}, "s2_add_offset of B2 must be a number"),
    ({"B99": -1000}, "'B99', which is not a Sentinel-2 band"),
    ({"slope": 0}, "'slope', which is not a Sentinel-2 band"),
    ({"B2": -1000, "B02": 0}, "lists band B2 twice"),
])
def test_bad_offset_values_are_one_line_errors(make_site, value, phrase):
  site = make_site("china", manifest={"s2_add_offset": value})
  with pytest.raises(InputError) as err:
    find_site_inputs(site)
  _one_line(err.value, "manifest.json", phrase)
  assert err.value.path == str(site / "manifest.json")


def test_offset_on_reflectance_data_is_an_error(make_site, tmp_path):
  site = make_site("china", manifest={"s2_add_offset": -1000, "s2_units": "auto"})
  with rasterio.open(site / "s2.tif") as src:
    profile, data, descriptions = src.profile, src.read(), src.descriptions
  with rasterio.open(site / "s2.tif", "w", **dict(profile, dtype="float32")) as dst:
    dst.write(data.astype(np.float32) / 10000.0)
    for i, name in enumerate(descriptions, start=1):
      dst.set_band_description(i, name)
  with pytest.raises(InputError) as err:
    scene_lib.load_channels(find_site_inputs(site), CHANNELS)
  _one_line(err.value, "s2_add_offset", "digital-number products", "reflectance")
  # The same through launch.predict's reader, before any block is read.
  inputs = predict.scene_inputs(site / "s2.tif", site / "dem.tif", s2_add_offset=-1000)
  units = raster_io.resolve_s2_units(inputs, BANDS)
  assert units == "reflectance"
  with pytest.raises(InputError, match="digital-number products"):
    raster_io.s2_add_offsets(inputs, BANDS, units)
  # Without the offset the reflectance scene reads as DN.
  image, _, _ = raster_io.read_sentinel2(predict.scene_inputs(site / "s2.tif", site / "dem.tif"), BANDS)
  np.testing.assert_allclose(image, data.astype(np.float32), rtol=1e-6)


def test_predict_flag_nan_is_a_one_line_error(make_site, tmp_path):
  site = make_site("china")
  with pytest.raises(InputError) as err:
    predict.scene_inputs(site / "s2.tif", site / "dem.tif", s2_add_offset=math.nan)
  _one_line(err.value, "s2_add_offset")
  proc = subprocess.run(
      [sys.executable, "-m", "launch.predict", f"--workdir={tmp_path / 'run'}", f"--scene={site / 's2.tif'}",
       f"--dem={site / 'dem.tif'}", f"--out={tmp_path / 'out'}", "--s2_add_offset=nan"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: ") and "s2_add_offset" in lines[0]


# ----------------------------------------------------------------------------------------------------------
# The scene's offsets against those the run was trained with (config.json, datasets[site]).


def _saved_config(**sites) -> dict:
  return {"flags": {}, "datasets": {site: {"s2_add_offset": offsets} for site, offsets in sites.items()}}


def test_training_offset_warning():
  scene = dict.fromkeys(BANDS, -1000.0)
  same = _saved_config(china=dict.fromkeys(BANDS, -1000.0))
  assert predict.training_offset_warning(same, scene) is None
  differ = _saved_config(china=dict.fromkeys(BANDS, 0.0), taiwan=dict.fromkeys(BANDS, -1000.0))
  message = predict.training_offset_warning(differ, scene)
  assert message.startswith("warning: ") and "\n" not in message
  assert "B2 -1000 here vs 0 in china" in message and "taiwan" not in message
  assert "--s2_add_offset" in message
  # Unknown training offsets say nothing: no `datasets`, or a dataset without the key.
  assert predict.training_offset_warning({"flags": {}}, scene) is None
  assert predict.training_offset_warning({"datasets": {"china": {"source": "real"}}}, scene) is None


def test_training_offset_warning_reads_the_runs_config(tmp_path, capsys):
  run = types.SimpleNamespace(workdir=tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(_saved_config(china=dict.fromkeys(BANDS, 0.0))))
  predict._warn_training_offset(run, dict.fromkeys(BANDS, -1000.0))  # pylint: disable=protected-access
  lines = _warnings(capsys.readouterr().err)
  assert len(lines) == 1 and "B8 -1000 here vs 0 in china" in lines[0]
  (tmp_path / "config.json").write_text(json.dumps({"flags": {}}))
  predict._warn_training_offset(run, dict.fromkeys(BANDS, -1000.0))  # pylint: disable=protected-access
  assert not capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# A real Chattogram chip (float64 DN, no offset: darkest band ~250 DN), stored again with the offset.


def test_real_chip_with_and_without_offset(tmp_path, capsys):
  root = shared_path("sentinel2_chips_chattogram")
  chip, label = root / "images" / "000000000002.tif", root / "labels" / "000000000002.tif"
  with rasterio.open(chip) as src:
    profile, data = src.profile, src.read()
  nodata = (data == 0).all(axis=0)
  assert nodata.any() and not nodata.all()  # the chip has a nodata part, which must stay 0
  offset_chip = tmp_path / "offset.tif"
  with rasterio.open(offset_chip, "w", **profile) as dst:
    dst.write(np.where(nodata, 0.0, data + 1000.0))
  plain = raster_io.read_sentinel2(find_site_inputs(_chip_site(tmp_path / "plain", chip, label)), READ_BANDS)
  assert not _warnings(capsys.readouterr().err)  # the real, non-offset chip looks fine
  unflagged = find_site_inputs(_chip_site(tmp_path / "unflagged", offset_chip, label))
  raster_io.read_sentinel2(unflagged, READ_BANDS)
  assert len(_warnings(capsys.readouterr().err)) == 1
  flagged = find_site_inputs(_chip_site(tmp_path / "flagged", offset_chip, label, s2_add_offset=-1000))
  image, valid, _ = raster_io.read_sentinel2(flagged, READ_BANDS)
  np.testing.assert_array_equal(valid, plain[1])
  np.testing.assert_array_equal(image, plain[0])
  assert not _warnings(capsys.readouterr().err)
