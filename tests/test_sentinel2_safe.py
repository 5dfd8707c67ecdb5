"""Sentinel-2 SAFE products (landslide_jax.data.sentinel2_safe): the metadata of L1C and L2A products of
baselines 02.14 and 05.10, as folders and zips, parses to known values; the same reflectance read from a
02.14 and a 05.10 product gives the same DN; SCL reads back exactly; every bad product is one InputError
line naming the file.

Products come from tests/safe_fixtures.py (real names and layout, JPEG2000 bands, MTD XML).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.errors

from landslide_jax import constants
from landslide_jax.data import sentinel2_safe
from landslide_jax.errors import InputError
from tests import safe_fixtures

SHAPE = (60, 60)  # 10 m pixels; 20 m bands 30 x 30, 60 m bands 10 x 10
SENSING = "20230815T022529"
TILE = "T51QTF"
BASELINES = ("02.14", "05.10")
FORMS = ("dir", "zip")


def _reflectance(seed: int = 0, with_b10: bool = True) -> dict[str, np.ndarray]:
  """Reflectance 0.01..0.61 per band at its native resolution."""
  rng = np.random.default_rng(seed)
  out = {}
  for band, (_, res) in constants.SENTINEL2_BANDS.items():
    if band == "B10" and not with_b10:
      continue
    n = SHAPE[0] * 10 // res
    out[band] = 0.01 + 0.6 * rng.random((n, n))
  return out


def _scl() -> np.ndarray:
  scl = np.full((SHAPE[0] // 2, SHAPE[1] // 2), 4, np.uint8)
  for cls in range(12):
    scl[2 * cls: 2 * cls + 2, :] = cls  # two rows per class
  scl[:, 0] = 7
  return scl


@pytest.fixture(scope="module")
def products(tmp_path_factory):
  """(level, baseline, form) -> product path, with the reflectance and SCL they were made from."""
  root = tmp_path_factory.mktemp("safe")
  refl, scl = _reflectance(), _scl()
  made = {}
  for level in ("L1C", "L2A"):
    for baseline in BASELINES:
      for form in FORMS:
        folder = root / f"{level}-{baseline}-{form}"
        folder.mkdir()
        bands = refl if level == "L1C" else {b: v for b, v in refl.items() if b != "B10"}
        made[level, baseline, form] = safe_fixtures.make_safe_product(
            folder, bands, level=level, baseline=baseline, scl=scl if level == "L2A" else None,
            as_zip=form == "zip", sensing=SENSING, tile=TILE)
  return made, refl, scl


def _read(path: str) -> np.ndarray:
  with rasterio.Env(GDAL_PAM_ENABLED="NO"):
    with rasterio.open(path) as src:
      return src.read(1)


def _name(level: str, baseline: str) -> str:
  return safe_fixtures.product_name(level, baseline, "S2B", TILE, SENSING)


def _copy(product: Path, dest_root: Path, new_name: str | None = None) -> Path:
  """A private copy of a folder product (optionally renamed) to break."""
  dest = dest_root / (new_name or product.name)
  shutil.copytree(product, dest)
  return dest


def _edit_mtd(safe: Path, old: str, new: str) -> None:
  """Replaces the first `old` in the product's MTD XML."""
  mtd = next(safe.glob("MTD_MSI*.xml"))
  text = mtd.read_text(encoding="utf-8")
  assert old in text, old
  mtd.write_text(text.replace(old, new, 1), encoding="utf-8")


def _error(path) -> str:
  """The InputError message of reading `path`, checked to be one line naming the file and a fix."""
  with pytest.raises(InputError) as info:
    sentinel2_safe.read_safe_product(path)
  message = str(info.value)
  assert "\n" not in message
  assert str(path) in message
  assert "Fix: " in message
  return message


# ----------------------------------------------------------------------------------------------------------
# Parsed metadata.


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_metadata_parses_to_known_values(products, level, baseline, form):
  made, _, _ = products
  path = made[level, baseline, form]
  assert sentinel2_safe.is_safe_product(path)
  product = sentinel2_safe.read_safe_product(path)
  assert product.path == path
  assert (product.level, product.mission, product.baseline) == (level, "S2B", baseline)
  assert product.quantification == 10000.0
  assert set(product.add_offsets) == set(constants.SENTINEL2_BANDS)
  expected_offset = -1000.0 if baseline == "05.10" else 0.0
  assert all(v == expected_offset for v in product.add_offsets.values()), product.add_offsets

  name = _name(level, baseline)
  granule = f"GRANULE/{level}_{TILE}_A033245_{SENSING}/IMG_DATA"
  prefix = (f"/vsizip/{path.resolve()}/{name}.SAFE/" if form == "zip" else f"{path.resolve()}/")
  expected_bands = [b for b in constants.SENTINEL2_BANDS if level == "L1C" or b != "B10"]
  assert list(product.band_paths) == expected_bands  # canonical order; L1C has B10, L2A does not
  for band, got in product.band_paths.items():
    token = safe_fixtures.band_token(band)
    res = constants.SENTINEL2_BANDS[band][1]
    assert product.band_resolution(band) == res
    if level == "L1C":
      assert got == f"{prefix}{granule}/{TILE}_{SENSING}_{token}.jp2"
    else:
      # The native resolution: B02 from R10m although R20m and R60m copies exist, B01 from R60m although
      # baseline 05.10 also has B01_20m.
      assert got == f"{prefix}{granule}/R{res}m/{TILE}_{SENSING}_{token}_{res}m.jp2"
    if form == "dir":
      assert Path(got).is_file()
  if level == "L1C":
    assert product.scl_path is None
  else:
    assert product.scl_path == f"{prefix}{granule}/R20m/{TILE}_{SENSING}_SCL_20m.jp2"
  assert product.band_resolution("B02") == 10 and product.band_resolution("b8a") == 20


def test_l2a_lists_coarser_copies_like_real_products(products):
  """The fixture's L2A metadata lists what real products list: B02 at 10, 20 and 60 m; B08 only at 10 m;
  B01_20m only from baseline 04.00 on; SCL at 20 and 60 m; IMAGE_FILE without extension."""
  made, _, _ = products
  for baseline, has_b01_20 in (("02.14", False), ("05.10", True)):
    text = (made["L2A", baseline, "dir"] / "MTD_MSIL2A.xml").read_text()
    files = re.findall(r"<IMAGE_FILE>([^<]+)</IMAGE_FILE>", text)
    stems = {f.rsplit("/", 1)[1].replace(f"{TILE}_{SENSING}_", "") for f in files}
    assert {"B02_10m", "B02_20m", "B02_60m", "B08_10m", "SCL_20m", "SCL_60m", "B01_60m"} <= stems
    assert "B08_20m" not in stems and "B08_60m" not in stems
    assert ("B01_20m" in stems) == has_b01_20
    assert not any(f.endswith(".jp2") for f in files)


def test_mission_comes_from_the_metadata(tmp_path):
  product = safe_fixtures.make_safe_product(tmp_path, {"B2": np.full((12, 12), 0.1)}, level="L1C",
                                            mission="S2C")
  assert sentinel2_safe.read_safe_product(product).mission == "S2C"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the container dataset
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_gdal_sentinel2_driver_agrees(products, tmp_path, level, form):
  """An independent reader of the real format, GDAL's SENTINEL2 driver, opens the fixture products (the
  zip directly, the folder by its MTD XML) and finds the same baseline, quantification, B2 values and
  per-band offsets; a B2 offset changed to -999 (band_id 1) moves in both readers, and only for B2."""
  made, refl, _ = products
  path = made[level, "05.10", form]
  if form == "dir":
    path = _copy(path, tmp_path)
    _edit_mtd(path, '_OFFSET band_id="1">-1000<', '_OFFSET band_id="1">-999<')
  target = str(path) if form == "zip" else str(path / f"MTD_MSI{level}.xml")
  offset_tag = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
  with rasterio.Env(GDAL_PAM_ENABLED="NO"):
    try:
      src = rasterio.open(target)
    except rasterio.errors.RasterioIOError as err:
      pytest.skip(f"GDAL without its SENTINEL2 driver: {err}")
    with src:
      assert src.driver == "SENTINEL2"
      tags = src.tags()
      ten_m = next(s for s in src.subdatasets if ":10m:" in s)
    assert tags["PROCESSING_BASELINE"] == "05.10"
    assert tags["QUANTIFICATION_VALUE" if level == "L1C" else "BOA_QUANTIFICATION_VALUE"] == "10000"
    with rasterio.open(ten_m) as src:
      assert src.shape == SHAPE and src.res == (10.0, 10.0) and src.crs.to_epsg() == 32651
      gdal_offsets = {src.tags(i)["BANDNAME"]: float(src.tags(i)[offset_tag])
                      for i in range(1, src.count + 1) if src.tags(i)["BANDNAME"].startswith("B")}
      index = [src.tags(i)["BANDNAME"] for i in range(1, src.count + 1)].index("B2") + 1
      np.testing.assert_array_equal(src.read(index), np.round(refl["B2"] * 10000) + 1000)
  ours = sentinel2_safe.read_safe_product(path).add_offsets
  expected_b2 = -999.0 if form == "dir" else -1000.0
  assert gdal_offsets == {"B2": expected_b2, "B3": -1000.0, "B4": -1000.0, "B8": -1000.0}
  assert {band: ours[band] for band in gdal_offsets} == gdal_offsets
  assert ours["B1"] == ours["B12"] == -1000.0


# ----------------------------------------------------------------------------------------------------------
# Radiometry.


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_same_reflectance_same_dn_from_both_baselines(products, level):
  made, refl, _ = products
  for band in ("B2", "B8", "B5", "B8A", "B11", "B1", "B9"):
    expected = np.round(refl[band] * 10000)
    dns = {}
    for baseline in BASELINES:
      for form in FORMS:
        product = sentinel2_safe.read_safe_product(made[level, baseline, form])
        stored = _read(product.band_paths[band])
        # The stored values really differ by the offset: the agreement below is the metadata's doing.
        np.testing.assert_array_equal(stored, expected + (1000 if baseline == "05.10" else 0))
        dn = sentinel2_safe.reflectance_dn(stored, product, band)
        assert dn.dtype == np.float32
        dns[baseline, form] = dn
    np.testing.assert_allclose(dns["05.10", "zip"], dns["02.14", "dir"], atol=1.0)
    np.testing.assert_array_equal(dns["05.10", "dir"], expected)  # lossless JPEG2000: exact
    np.testing.assert_array_equal(dns["02.14", "zip"], expected)


def test_reflectance_dn_scales_by_quantification_and_keeps_nan(products):
  made, _, _ = products
  product = sentinel2_safe.read_safe_product(made["L2A", "05.10", "dir"])
  stored = np.array([[0, 1000, 1452], [11000, 65535, 0]], np.uint16)
  np.testing.assert_array_equal(sentinel2_safe.reflectance_dn(stored, product, "B02"),
                                [[-1000, 0, 452], [10000, 64535, -1000]])  # stored 0: callers mask it
  # A quantification of 1000 (reflectance x 1000 stored) gives 10 DN per stored unit.
  coarse = dataclasses.replace(product, quantification=1000.0, add_offsets={"B2": -100.0})
  np.testing.assert_allclose(sentinel2_safe.reflectance_dn(np.array([100.0, 145.2]), coarse, "b2"),
                             [0.0, 452.0], atol=1e-3)
  as_float = np.array([np.nan, 1452.0], np.float32)
  out = sentinel2_safe.reflectance_dn(as_float, product, "B2")
  assert np.isnan(out[0]) and out[1] == 452.0
  assert as_float[1] == 1452.0  # the input is left alone


def test_nodata_is_stored_as_zero(tmp_path):
  refl = {"B2": np.full((12, 12), 0.2), "B5": np.full((6, 6), 0.3), "B1": np.full((2, 2), 0.05)}
  nodata = np.zeros((12, 12), bool)
  nodata[:6, :6] = True
  path = safe_fixtures.make_safe_product(tmp_path, refl, level="L2A", baseline="05.10", nodata_mask=nodata)
  product = sentinel2_safe.read_safe_product(path)
  b2 = _read(product.band_paths["B2"])
  np.testing.assert_array_equal(b2, np.where(nodata, 0, 3000))
  np.testing.assert_array_equal(_read(product.band_paths["B5"]), np.where(nodata[::2, ::2], 0, 4000))
  np.testing.assert_array_equal(_read(product.band_paths["B1"]), [[0, 1500], [1500, 1500]])
  np.testing.assert_array_equal(_read(product.scl_path), np.where(nodata[::2, ::2], 0, 4))


@pytest.mark.parametrize("form", FORMS)
def test_scl_reads_back_exactly(products, form):
  made, _, scl = products
  for baseline in BASELINES:
    product = sentinel2_safe.read_safe_product(made["L2A", baseline, form])
    got = _read(product.scl_path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, scl)
  assert sentinel2_safe.DEFAULT_SCL_MASK_CLASSES == (0, 1, 3, 8, 9, 10)


# ----------------------------------------------------------------------------------------------------------
# Recognising products.


def test_is_safe_product(products, tmp_path):
  made, _, _ = products
  name = _name("L2A", "05.10")
  safe_zip = made["L2A", "05.10", "zip"]
  assert safe_zip.name == f"{name}.SAFE.zip"  # as the Copernicus Data Space delivers it
  # The former SciHub name (<name>.zip) and a download renamed at will, both holding <name>.SAFE/.
  scihub = tmp_path / f"{name}.zip"
  shutil.copy(safe_zip, scihub)
  renamed = tmp_path / "download (1).zip"
  shutil.copy(safe_zip, renamed)
  for path in (made["L1C", "02.14", "dir"], safe_zip, scihub, renamed):
    assert sentinel2_safe.is_safe_product(path), path
    assert sentinel2_safe.read_safe_product(path).level in ("L1C", "L2A")

  not_products = []
  for folder in ("S1A_IW_GRDH_1SDV_20230815T101010_20230815T101035_049876_05FFAA_1A2B.SAFE",
                 "LC08_L2SP_118043_20230815_20230825_02_T1",
                 f"S2B_MSIL2B_{SENSING}_N0510_R046_{TILE}_20230815T052416.SAFE",
                 f"S2B_MSIL1B_{SENSING}_N0510_R046_{TILE}_20230815T052416.SAFE",
                 name):  # a product folder without its .SAFE suffix
    (tmp_path / folder).mkdir()
    not_products.append(tmp_path / folder)
  other_zip = tmp_path / "other.zip"
  with zipfile.ZipFile(other_zip, "w") as archive:
    archive.writestr("readme.txt", "no product here")
  garbage = tmp_path / "garbage.zip"
  garbage.write_bytes(b"not a zip at all")
  safe_file = tmp_path / f"{name}x.SAFE"
  safe_file.write_text("a file, not a folder")
  not_products += [other_zip, garbage, safe_file, tmp_path / "missing.SAFE"]
  for path in not_products:
    assert not sentinel2_safe.is_safe_product(path), path


# ----------------------------------------------------------------------------------------------------------
# Bad products: one InputError line naming the file.


@pytest.mark.parametrize("folder, says", [
    ("S1A_IW_GRDH_1SDV_20230815T101010_20230815T101035_049876_05FFAA_1A2B.SAFE", "Sentinel-1"),
    ("LC08_L2SP_118043_20230815_20230825_02_T1", "Landsat"),
    (f"S2B_MSIL2B_{SENSING}_N0510_R046_{TILE}_20230815T052416.SAFE",
     "Sentinel-2 L2B product; only Level-1C and Level-2A"),
    (f"S2A_MSIL1B_{SENSING}_N0510_R046_{TILE}_20230815T052416.SAFE",
     "Sentinel-2 L1B product; only Level-1C and Level-2A"),
    ("S2A_OPER_PRD_MSIL1C_PDMC_20160905T104813_R002_V20160905T005712_20160905T010424.SAFE",
     "before December 2016"),
])
def test_other_missions_and_levels_are_refused(tmp_path, folder, says):
  path = tmp_path / folder
  path.mkdir()
  assert says in _error(path)


def test_other_level_inside_a_zip_is_refused(tmp_path):
  path = tmp_path / "download.zip"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"S2B_MSIL2B_{SENSING}_N0510_R046_{TILE}_20230815T052416.SAFE/MTD_MSIL2B.xml", "<x/>")
  assert "only Level-1C and Level-2A" in _error(path)


def test_missing_path_unsuffixed_folder_and_metadata_file(products, tmp_path):
  made, _, _ = products
  assert "does not exist" in _error(tmp_path / f"{_name('L2A', '05.10')}.SAFE")
  bare = _copy(made["L2A", "05.10", "dir"], tmp_path, _name("L2A", "05.10"))
  assert f"rename it to {_name('L2A', '05.10')}.SAFE" in _error(bare)
  mtd = made["L1C", "02.14", "dir"] / "MTD_MSIL1C.xml"
  assert f"give its folder {mtd.parent}" in _error(mtd)


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_missing_metadata_file(products, tmp_path, level):
  made, _, _ = products
  safe = _copy(made[level, "05.10", "dir"], tmp_path)
  (safe / f"MTD_MSI{level}.xml").unlink()
  assert f"no MTD_MSI{level}.xml" in _error(safe)
  zipped = safe_fixtures.zip_product(safe)
  assert f"no MTD_MSI{level}.xml" in _error(zipped)


@pytest.mark.parametrize("level, tag", [
    ("L2A", "PROCESSING_BASELINE"),
    ("L1C", "PROCESSING_BASELINE"),
    ("L2A", "BOA_QUANTIFICATION_VALUE"),
    ("L1C", "QUANTIFICATION_VALUE"),
    ("L2A", "BOA_ADD_OFFSET_VALUES_LIST"),  # baseline 05.10 without offsets: refused, not read as 0
    ("L1C", "Radiometric_Offset_List"),
    ("L2A", "Spectral_Information_List"),   # needed to map band_id to bands
    ("L2A", "Granule_List"),
    ("L1C", "IMAGE_FILE"),
])
def test_metadata_without_an_expected_element(products, tmp_path, level, tag):
  made, _, _ = products
  safe = _copy(made[level, "05.10", "dir"], tmp_path)
  mtd = safe / f"MTD_MSI{level}.xml"
  text, removed = re.subn(rf"<{tag}[ >].*?</{tag}>", "", mtd.read_text(), flags=re.S)
  assert removed >= 1
  mtd.write_text(text)
  message = _error(safe)
  expected = "Granule_List/Granule" if tag == "Granule_List" else tag
  assert re.search(rf"has no \S*{expected}\S* element", message), message
  assert str(mtd) in message


def test_local_sen2cor_products_without_offsets_read_as_zero(tmp_path):
  """Sen2Cor run locally says baseline 99.99; its older products have no offset list (and no offset)."""
  refl = {"B2": np.full((12, 12), 0.1)}
  with_offsets = safe_fixtures.make_safe_product(tmp_path, refl, level="L2A", baseline="99.99")
  assert sentinel2_safe.read_safe_product(with_offsets).add_offsets["B2"] == -1000.0
  old = _copy(with_offsets, tmp_path / "old")
  mtd = old / "MTD_MSIL2A.xml"
  mtd.write_text(re.sub(r"<BOA_ADD_OFFSET_VALUES_LIST>.*?</BOA_ADD_OFFSET_VALUES_LIST>", "",
                        mtd.read_text(), flags=re.S))
  product = sentinel2_safe.read_safe_product(old)
  assert product.baseline == "99.99" and set(product.add_offsets.values()) == {0.0}


def test_metadata_values_that_are_not_numbers(products, tmp_path):
  made, _, _ = products
  cases = [  # (product, text in MTD, replaced by, expected error)
      (("L2A", "05.10"), '<BOA_ADD_OFFSET band_id="3">-1000<', '<BOA_ADD_OFFSET band_id="3">n/a<',
       "BOA_ADD_OFFSET band_id=3 is 'n/a', not a number"),
      (("L2A", "02.14"), ">10000</BOA_QUANTIFICATION_VALUE>", ">0</BOA_QUANTIFICATION_VALUE>",
       "not a positive number"),
      (("L1C", "02.14"), "<PROCESSING_BASELINE>02.14<", "<PROCESSING_BASELINE>2.14<", "'2.14', not NN.NN"),
      (("L1C", "05.10"), "</n1:General_Info>", "", "not valid XML"),
  ]
  for (level, baseline), old, new, expected in cases:
    safe = _copy(made[level, baseline, "dir"], tmp_path)
    _edit_mtd(safe, old, new)
    assert expected in _error(safe)


def test_level_mismatch_between_name_and_metadata(products, tmp_path):
  made, _, _ = products
  safe = _copy(made["L2A", "05.10", "dir"], tmp_path)
  _edit_mtd(safe, "<PRODUCT_TYPE>S2MSI2A<", "<PRODUCT_TYPE>S2MSI1C<")
  assert "PRODUCT_TYPE is 'S2MSI1C' but the product is named as L2A" in _error(safe)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "two_products"])
def test_damaged_zips(products, tmp_path, damage):
  made, _, _ = products
  good = made["L2A", "05.10", "zip"]
  path = tmp_path / good.name
  if damage == "garbage":
    path.write_bytes(b"<html>Service unavailable</html>" * 10)
  elif damage == "truncated":
    data = good.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
  else:
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr(f"{_name('L2A', '05.10')}.SAFE/MTD_MSIL2A.xml", "<x/>")
      archive.writestr(f"{_name('L1C', '05.10')}.SAFE/MTD_MSIL1C.xml", "<x/>")
  assert sentinel2_safe.is_safe_product(path)  # by its name; reading says what is wrong
  message = _error(path)
  if damage == "two_products":
    assert "instead of one <product>.SAFE folder" in message
  else:
    assert "not a readable zip archive: it is corrupt or truncated" in message


def test_several_granules_are_refused(products, tmp_path):
  made, _, _ = products
  safe = _copy(made["L1C", "02.14", "dir"], tmp_path)
  mtd = safe / "MTD_MSIL1C.xml"
  text = mtd.read_text()
  granule = re.search(r"<Granule .*?</Granule>", text, re.S).group(0)
  mtd.write_text(text.replace(granule, granule + "\n" + granule.replace("T51QTF", "T51QUF")))
  message = _error(safe)
  assert "holds 2 granules" in message and "one granule" in message


@pytest.mark.parametrize("level, band, rel", [
    ("L2A", "B4", "R10m/T51QTF_20230815T022529_B04_10m.jp2"),
    ("L2A", "SCL", "R20m/T51QTF_20230815T022529_SCL_20m.jp2"),
    ("L1C", "B8A", "T51QTF_20230815T022529_B8A.jp2"),
])
def test_listed_band_missing_from_the_product(products, tmp_path, level, band, rel):
  made, _, _ = products
  for form in FORMS:
    safe = _copy(made[level, "05.10", "dir"], tmp_path / form)
    member = f"GRANULE/{level}_{TILE}_A033245_{SENSING}/IMG_DATA/{rel}"
    (safe / member).unlink()
    path = safe_fixtures.zip_product(safe) if form == "zip" else safe
    message = _error(path)
    assert f"lists {band} as {member[:-4]}.jp2, but that file is missing" in message
    shutil.rmtree(safe)


def test_unlisted_coarser_copy_missing_is_fine(products, tmp_path):
  """Only the files read must exist: a missing B02_60m copy does not stop the product."""
  made, _, _ = products
  safe = _copy(made["L2A", "05.10", "dir"], tmp_path)
  (safe / f"GRANULE/L2A_{TILE}_A033245_{SENSING}/IMG_DATA/R60m/{TILE}_{SENSING}_B02_60m.jp2").unlink()
  assert sentinel2_safe.read_safe_product(safe).band_paths["B2"].endswith("_B02_10m.jp2")
