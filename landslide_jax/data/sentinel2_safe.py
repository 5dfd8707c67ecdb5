"""Sentinel-2 SAFE products (Level-1C and Level-2A, a .SAFE folder or its .zip): structure and radiometry.

Reads only what the pipeline needs from the product metadata (`MTD_MSIL1C.xml` / `MTD_MSIL2A.xml`): level,
mission, processing baseline, quantification value, per-band radiometric offsets and the band image files.
A zip is never unpacked: `zipfile` lists its members and reads the small metadata XML, and every band path
handed out is a GDAL `/vsizip/` path that rasterio opens in place.

Format facts this module relies on, and where they were checked (not guessed):
  * Product names `S2B_MSIL2A_20230815T022529_N0509_R046_T51QTF_20230815T052416.SAFE`: mission, level,
    sensing start, processing baseline (N0509 = 05.09), relative orbit, tile, product discriminator.
    https://github.com/microsoft/AIforEarthDataSets/blob/main/storage-docs/sentinel-2-storage.md
  * Downloads are `<name>.SAFE.zip` (Copernicus Data Space) or `<name>.zip` (the former SciHub); both hold
    the `<name>.SAFE/` folder: GDAL's SENTINEL2 driver, frmts/sentinel2/sentinel2dataset.cpp (OSGeo/gdal),
    and https://github.com/CS-SI/eodag/issues/897. Corrupt or truncated downloads are common:
    https://github.com/ranghetti/sen2r/issues/406.
  * Metadata nesting, from real products (stactools-packages/sentinel2 tests/data-files: L2A N0400, N0509;
    bludka/Satellite_Derived_Bathymetry: L2A N0214; mohitpinninti/satprojectfinal: L1C N0204):
    `Level-2A_User_Product/General_Info/Product_Info/{PRODUCT_TYPE, PROCESSING_BASELINE, Datatake/
    SPACECRAFT_NAME, Product_Organisation/Granule_List/Granule/IMAGE_FILE}`;
    `General_Info/Product_Image_Characteristics/{QUANTIFICATION_VALUE (L1C) | QUANTIFICATION_VALUES_LIST/
    BOA_QUANTIFICATION_VALUE (L2A), Radiometric_Offset_List/RADIO_ADD_OFFSET[@band_id] (L1C) |
    BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET[@band_id] (L2A), Spectral_Information_List/
    Spectral_Information[@bandId, @physicalBand]}`. `band_id` is the `bandId` of Spectral_Information
    (0 = B1 ... 8 = B8A, 9 = B9, 10 = B10, 11 = B11, 12 = B12). No real L1C file of baseline 04.00+ was
    at hand: its Radiometric_Offset_List/RADIO_ADD_OFFSET[@band_id] nesting is taken from code reading such
    products (e.g. python-fmask's RADIO_ADD_OFFSET translation); GDAL's SENTINEL2 driver reads the same
    nesting (tests/test_sentinel2_safe.py checks that both readers agree on the fixture products).
  * IMAGE_FILE entries carry no extension (".jp2" is appended, as GDAL does). L1C:
    `GRANULE/L1C_T51QTF_A.../IMG_DATA/T51QTF_<sensing>_B02`; L2A (baselines 02.xx and 04.00+ alike):
    `GRANULE/L2A_T51QTF_A.../IMG_DATA/R10m/T51QTF_<sensing>_B02_10m`, `R20m/..._B05_20m`, `R20m/..._SCL_20m`,
    `R60m/..._B01_60m`. L2A also lists bands resampled to coarser grids (B02_20m, B02_60m, and since 04.00
    B01_20m); the native-resolution file is the one to read.
  * Processing baseline 04.00 (25 January 2022) added the offsets: reflectance = (DN + ADD_OFFSET) /
    QUANTIFICATION_VALUE, ADD_OFFSET = -1000, DN 0 stays NO_DATA; before 04.00 there is no offset.
    https://forum.step.esa.int/t/info-introduction-of-additional-radiometric-offset-in-pb04-00-products/35431
    https://forum.dataspace.copernicus.eu/t/radiometric-offset-of-sentinel-2-l2a-l1c-images/3521
  * Scene classification (SCL) classes: 0 no data, 1 saturated or defective, 2 dark area pixels, 3 cloud
    shadows, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 8 cloud medium probability, 9 cloud
    high probability, 10 thin cirrus, 11 snow. https://github.com/fmenat/SITS_S2Coverage (from ESA's page).
  * Sen2Cor run locally names its products N9999 (baseline 99.99), e.g.
    S2A_MSIL2A_20190919T175011_N9999_R141_T13TDE_20191026T081601.SAFE (seen in public code using such
    products). Current Sen2Cor given L1C of baseline 04.00+ writes the offset and its list
    (https://forum.step.esa.int/t/sen2cor-supporting-processing-baseline-05-11/42828/26); local products
    made before that have neither, so for 99.99 the presence of the list decides.
  * Products since December 2016 (compact naming) hold one granule (tile); the older multi-granule format
    (`S2A_OPER_PRD_MSIL1C_...`) is refused.
"""

from __future__ import annotations

import dataclasses
import os
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from landslide_jax import constants
from landslide_jax.errors import InputError

# SCL classes masked by default: no data, saturated/defective, cloud shadow, cloud medium/high
# probability, thin cirrus. Dark area pixels (2) and snow (11) are real surface and stay: in mountains
# class 2 is mostly terrain shadow, and masking it would cut out the steep slopes landslides occur on.
DEFAULT_SCL_MASK_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10)

LEVELS: tuple[str, ...] = ("L1C", "L2A")
# The first baseline whose products store DN = 10000 x reflectance - ADD_OFFSET.
OFFSET_BASELINE = (4, 0)
# Products made locally with Sen2Cor say baseline 99.99 (N9999 in the name) whatever the Sen2Cor version
# and input: older ones have no offset list and store no offset, so a missing list means 0 for them.
LOCAL_BASELINE = "99.99"

# <mission>_MSI<level>_<sensing start>_... ; the rest of the name is not needed and not checked, so a
# product renamed by a download tool still reads.
_PRODUCT_NAME = re.compile(r"^(S2[A-Z])_MSI(L[0-9][A-Z])_(\d{8}T\d{6})_\S*$")
_OLD_FORMAT = re.compile(r"^S2[A-Z]_(OPER|USER)_PRD_MSI")
_BASELINE = re.compile(r"^\d{2}\.\d{2}$")
# The band token at the end of an IMAGE_FILE: ..._B02 (L1C) or ..._B02_10m (L2A); also SCL, TCI, AOT, WVP.
_IMAGE_TOKEN = re.compile(r"_(B\d{1,2}|B8A|SCL|TCI|AOT|WVP)(?:_(\d{2})m)?$")
_REDOWNLOAD = "download the product again (the file is incomplete or damaged)"


@dataclasses.dataclass(frozen=True)
class SafeProduct:
  """What the pipeline needs from one Sentinel-2 L1C/L2A product."""
  path: Path                      # the .SAFE folder or the .zip, as given
  level: str                      # "L1C" or "L2A"
  mission: str                    # "S2A", "S2B", "S2C"
  baseline: str                   # processing baseline, e.g. "05.09"
  quantification: float           # QUANTIFICATION_VALUE (L1C) / BOA_QUANTIFICATION_VALUE (L2A)
  add_offsets: dict[str, float]   # every canonical band -> RADIO_ADD_OFFSET / BOA_ADD_OFFSET (0.0 if none)
  band_paths: dict[str, str]      # canonical band -> a path rasterio opens (plain or /vsizip/)
  scl_path: str | None            # L2A scene classification at 20 m; None for L1C

  def band_resolution(self, band: str) -> int:
    """The native resolution in metres of `band` (any spelling: "B02", "B8a"...)."""
    return constants.SENTINEL2_BANDS[constants.canonical_band(band)][1]


# ----------------------------------------------------------------------------------------------------------
# Names.


def _name_stem(name: str) -> str:
  """The product name without `.SAFE`, `.SAFE.zip` or `.zip`."""
  for suffix in (".SAFE.zip", ".zip", ".SAFE"):
    if name.upper().endswith(suffix.upper()):
      return name[: -len(suffix)]
  return name


def _level_of(stem: str) -> str | None:
  """The level, "L1C" or "L2A", of a Sentinel-2 L1C/L2A product name (without suffix); else None."""
  match = _PRODUCT_NAME.match(stem)
  return match.group(2) if match and match.group(2) in LEVELS else None


def _name_problem(name: str) -> str:
  """Why `name` is not the name of a Sentinel-2 L1C/L2A product, for the error message."""
  stem = _name_stem(name)
  match = _PRODUCT_NAME.match(stem)
  if match:
    return (f"{name!r} is a Sentinel-2 {match.group(2)} product; only Level-1C and Level-2A products "
            "are supported")
  if _OLD_FORMAT.match(stem):
    return (f"{name!r} is in the multi-granule SAFE format of products made before December 2016, which "
            "is not supported")
  if re.match(r"^S1[A-Z]_", stem):
    return f"{name!r} is a Sentinel-1 (radar) product, not Sentinel-2"
  if re.match(r"^(S3[A-Z]|S5P)_", stem):
    return f"{name!r} is a Sentinel-3/5P product, not Sentinel-2"
  if re.match(r"^L[CTEOM]0\d_", stem):
    return f"{name!r} is a Landsat product, not Sentinel-2"
  return f"{name!r} is not named like a Sentinel-2 product (S2A_MSIL2A_<date>_..._<tile>_<date>.SAFE)"


_NAME_FIX = ("give a Sentinel-2 L1C or L2A product: the S2?_MSIL1C_*/S2?_MSIL2A_*.SAFE folder or its .zip "
             "as downloaded from the Copernicus Data Space (reprocessed products replace the old format)")


def _zip_top_folder(names: list[str]) -> str | None:
  """The single top-level folder of a zip listing, or None if there is not exactly one."""
  tops = {name.split("/", 1)[0] for name in names
          if name and not name.startswith("__MACOSX")}  # macOS zips add resource-fork folders
  if len(tops) != 1:
    return None
  top = tops.pop()
  return top if any(name.startswith(top + "/") for name in names) else None


def is_safe_product(path: str | os.PathLike) -> bool:
  """True for a Sentinel-2 L1C/L2A product: an existing `S2?_MSIL1C_*.SAFE` / `S2?_MSIL2A_*.SAFE` folder,
  a `.SAFE.zip` / `.zip` named like one, or any `.zip` whose single top folder is such a product.

  Only names are checked (and, for a zip named otherwise, its listing): `read_safe_product` validates the
  content and reports what is wrong. A zip named like a product counts even when it is damaged, so that the
  caller gets read_safe_product's message about the damage rather than "not a product".
  """
  path = Path(path)
  name = path.name
  if path.is_dir():
    return name.upper().endswith(".SAFE") and _level_of(_name_stem(name)) is not None
  if not (path.is_file() and name.lower().endswith(".zip")):
    return False
  if _level_of(_name_stem(name)) is not None:
    return True
  try:
    with zipfile.ZipFile(path) as archive:
      top = _zip_top_folder(archive.namelist())
  except (zipfile.BadZipFile, OSError, EOFError, ValueError):
    return False
  return (top is not None and top.upper().endswith(".SAFE")
          and _level_of(_name_stem(top)) is not None)


# ----------------------------------------------------------------------------------------------------------
# Product content: a folder or a zip behind one interface.


class _Folder:
  """A .SAFE folder on disk."""

  def __init__(self, root: Path):
    self.root = root
    self.name = root.name

  def where(self, rel: str) -> str:
    return str(self.root / rel)

  def read(self, rel: str) -> bytes | None:
    try:
      return (self.root / rel).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
      return None
    except OSError as err:
      raise InputError(self.root / rel, f"cannot read the product metadata ({err.strerror})",
                       "check the file's permissions, or download the product again") from None

  def exists(self, rel: str) -> bool:
    return (self.root / rel).is_file()

  def gdal_path(self, rel: str) -> str:
    return str(self.root.resolve() / rel)


class _Zip:
  """A zipped .SAFE folder: member names listed and the metadata read once, nothing unpacked."""

  def __init__(self, path: Path):
    self.path = path
    try:
      with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        top = _zip_top_folder(names)
        if top is None:
          tops = sorted({n.split("/", 1)[0] for n in names if n})[:3]
          raise InputError(path, f"the zip holds {', '.join(tops) or 'nothing'} instead of one "
                           "<product>.SAFE folder", _NAME_FIX)
        self.name = top
        self.names = set(names)
        # The metadata XML is small (~60 KB); the band images are only ever read through /vsizip/.
        self._cache = {}
        for level in LEVELS:
          member = f"{top}/MTD_MSI{level}.xml"
          if member in self.names:
            self._cache[member] = archive.read(member)
    except InputError:
      raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, ValueError, OSError) as err:
      # A truncated download loses the central directory at the end: "File is not a zip file".
      raise InputError(path, f"is not a readable zip archive: it is corrupt or truncated "
                       f"({type(err).__name__}: {str(err)[:120]})", _REDOWNLOAD) from None

  def where(self, rel: str) -> str:
    return f"{self.path}/{self.name}/{rel}"

  def read(self, rel: str) -> bytes | None:
    return self._cache.get(f"{self.name}/{rel}")

  def exists(self, rel: str) -> bool:
    return f"{self.name}/{rel}" in self.names

  def gdal_path(self, rel: str) -> str:
    return f"/vsizip/{self.path.resolve()}/{self.name}/{rel}"


# ----------------------------------------------------------------------------------------------------------
# Metadata.


def _parse_xml(data: bytes, where: str) -> ET.Element:
  """The XML tree with namespaces stripped (`n1:General_Info` -> `General_Info`)."""
  try:
    root = ET.fromstring(data)
  except ET.ParseError as err:
    raise InputError(where, f"the product metadata is not valid XML ({err})", _REDOWNLOAD) from None
  for element in root.iter():
    if isinstance(element.tag, str) and "}" in element.tag:
      element.tag = element.tag.split("}", 1)[1]
  return root


def _missing(where: str, element: str) -> InputError:
  return InputError(where, f"the product metadata has no {element} element", _REDOWNLOAD)


def _text(root: ET.Element, xpath: str, where: str, element: str) -> str:
  """The stripped text of the element at `xpath`; an InputError naming `element` when absent or empty."""
  node = root.find(xpath)
  if node is None or not (node.text or "").strip():
    raise _missing(where, element)
  return node.text.strip()


def _number(text: str, where: str, element: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not np.isfinite(value):
    raise InputError(where, f"{element} is {text!r}, not a number", _REDOWNLOAD)
  return value


def _baseline_tuple(baseline: str) -> tuple[int, int]:
  major, minor = baseline.split(".")
  return int(major), int(minor)


def _spectral_bands(root: ET.Element, where: str) -> dict[str, str]:
  """bandId -> canonical band, from Spectral_Information_List."""
  bands = {}
  for node in root.findall("General_Info//Spectral_Information_List/Spectral_Information"):
    band_id, physical = node.get("bandId"), node.get("physicalBand")
    try:
      bands[str(int(band_id))] = constants.canonical_band(physical)
    except (TypeError, ValueError, KeyError):
      raise InputError(where, f"Spectral_Information bandId={band_id!r} physicalBand={physical!r} is not "
                       "a Sentinel-2 band", _REDOWNLOAD) from None
  if not bands:
    raise _missing(where, "Product_Image_Characteristics/Spectral_Information_List/Spectral_Information")
  return bands


def _add_offsets(root: ET.Element, level: str, baseline: str, where: str) -> dict[str, float]:
  """Every canonical band -> its ADD_OFFSET (0.0 for bands not listed and for products before 04.00)."""
  list_tag, item_tag = (("Radiometric_Offset_List", "RADIO_ADD_OFFSET") if level == "L1C"
                        else ("BOA_ADD_OFFSET_VALUES_LIST", "BOA_ADD_OFFSET"))
  offsets = {band: 0.0 for band in constants.SENTINEL2_BANDS}
  offset_list = root.find(f"General_Info//{list_tag}")
  if offset_list is None:
    if _baseline_tuple(baseline) >= OFFSET_BASELINE and baseline != LOCAL_BASELINE:
      # Assuming 0 here would shift every reflectance by +0.1: refuse instead.
      raise InputError(where, f"the product metadata has no Product_Image_Characteristics/{list_tag} "
                       f"element, which processing baseline {baseline} products have", _REDOWNLOAD)
    return offsets
  bands = _spectral_bands(root, where)
  for node in offset_list.findall(item_tag):
    band_id = (node.get("band_id") or "").strip()
    band = bands.get(band_id)
    if band is None:
      raise InputError(where, f"{item_tag} band_id={band_id!r} matches no Spectral_Information bandId",
                       _REDOWNLOAD)
    offsets[band] = _number((node.text or "").strip(), where, f"{item_tag} band_id={band_id}")
  return offsets


def _image_files(root: ET.Element, where: str) -> list[str]:
  """The IMAGE_FILE entries of the product's one granule, as relative paths with ".jp2"."""
  granules = root.findall("General_Info/Product_Info/Product_Organisation/Granule_List/Granule")
  if not granules:
    granules = root.findall("General_Info//Granule_List/Granule")
  if not granules:
    raise _missing(where, "Product_Organisation/Granule_List/Granule")
  files = []
  for granule in granules:
    for node in granule.findall("IMAGE_FILE"):
      rel = (node.text or "").strip()
      if not rel:
        continue
      parts = PurePosixPath(rel).parts
      if rel.startswith("/") or ".." in parts or "\\" in rel:
        raise InputError(where, f"IMAGE_FILE {rel!r} points outside the product", _REDOWNLOAD)
      files.append(rel if rel.lower().endswith((".jp2", ".tif")) else rel + ".jp2")
  if not files:
    raise _missing(where, "Granule_List/Granule/IMAGE_FILE")
  granule_dirs = sorted({"/".join(PurePosixPath(f).parts[:2]) for f in files})
  if len(granules) > 1 or len(granule_dirs) > 1:
    raise InputError(where, f"the product holds {max(len(granules), len(granule_dirs))} granules (tiles); "
                     "only products with one granule are supported", "use products in the compact "
                     "format made since December 2016 (one tile each), or split the product by tile")
  return files


def _pick_files(files: list[str], level: str, where: str) -> tuple[dict[str, str], str | None]:
  """band -> relative file (the native-resolution one for L2A), and the SCL file for L2A."""
  by_band: dict[str, dict[int, str]] = {}
  scl: dict[int, str] = {}
  for rel in files:
    match = _IMAGE_TOKEN.search(PurePosixPath(rel).stem)
    if match is None:
      continue
    token, res = match.group(1), int(match.group(2) or 0)
    if token == "SCL":
      scl[res] = rel
      continue
    try:
      band = constants.canonical_band(token)
    except KeyError:
      continue  # TCI, AOT, WVP
    by_band.setdefault(band, {})[res] = rel
  if not by_band:
    raise InputError(where, "the product metadata lists no band image (IMAGE_FILE ..._B02)", _REDOWNLOAD)
  chosen = {}
  for band in constants.SENTINEL2_BANDS:  # canonical order
    if band not in by_band:
      continue
    options = by_band[band]
    # L2A lists a band at several resolutions (B02 at 10, 20 and 60 m; B01 at 20 m since 04.00, upsampled
    # from 60 m): the native one carries the measurement, the others are resampled from it.
    native = constants.SENTINEL2_BANDS[band][1]
    chosen[band] = options[native] if native in options else options[min(options)]
  scl_rel = None
  if level == "L2A":
    if not scl:
      raise InputError(where, "the product metadata lists no scene classification image (SCL_20m)",
                       _REDOWNLOAD)
    scl_rel = scl[20] if 20 in scl else scl[min(scl)]
  return chosen, scl_rel


def read_safe_product(path: str | os.PathLike) -> SafeProduct:
  """Reads the structure and radiometric metadata of a Sentinel-2 L1C/L2A product (folder or zip).

  Raises:
    InputError: the path is missing or not a Sentinel-2 L1C/L2A product (another mission or level, the
      pre-2016 format), the zip is corrupt or truncated, the metadata XML is missing or lacks an element
      the pipeline needs (named in the message), the product holds several granules, or a band image the
      metadata lists is missing from the product.
  """
  path = Path(path)
  if not path.exists():
    raise InputError(path, "the Sentinel-2 product does not exist", "check the path")
  if path.is_dir():
    if not path.name.upper().endswith(".SAFE") and _level_of(_name_stem(path.name)):
      raise InputError(path, "a Sentinel-2 product folder must keep its .SAFE suffix",
                       f"rename it to {_name_stem(path.name)}.SAFE")
    content = _Folder(path)
  elif path.name.lower().endswith(".zip"):
    content = _Zip(path)
  elif path.name.upper().startswith("MTD_MSIL") and path.parent.name.upper().endswith(".SAFE"):
    raise InputError(path, "this is the product's metadata file, not the product",
                     f"give its folder {path.parent}")
  else:
    raise InputError(path, f"{_name_problem(path.name)}: give the .SAFE folder or the .zip", _NAME_FIX)
  level = _level_of(_name_stem(content.name))
  if level is None:
    raise InputError(path, _name_problem(content.name), _NAME_FIX)

  mtd = f"MTD_MSI{level}.xml"
  where = content.where(mtd)
  data = content.read(mtd)
  if data is None:
    raise InputError(path, f"the product has no {mtd} metadata file", _REDOWNLOAD)
  root = _parse_xml(data, where)
  if root.tag != f"Level-{level[1:]}_User_Product":
    raise InputError(where, f"the metadata root element is {root.tag}, not Level-{level[1:]}_User_Product",
                     _REDOWNLOAD)

  product_type = root.findtext("General_Info/Product_Info/PRODUCT_TYPE")
  if product_type is not None and not product_type.strip().startswith(f"S2MSI{level[1:]}"):
    raise InputError(where, f"PRODUCT_TYPE is {product_type.strip()!r} but the product is named as "
                     f"{level}", _REDOWNLOAD)
  baseline = _text(root, "General_Info/Product_Info/PROCESSING_BASELINE", where,
                   "Product_Info/PROCESSING_BASELINE")
  if not _BASELINE.match(baseline):
    raise InputError(where, f"PROCESSING_BASELINE is {baseline!r}, not NN.NN", _REDOWNLOAD)
  spacecraft = (root.findtext("General_Info/Product_Info/Datatake/SPACECRAFT_NAME") or "").strip()
  mission_match = re.fullmatch(r"Sentinel-2([A-Z])", spacecraft)
  mission = f"S2{mission_match.group(1)}" if mission_match else content.name[:3]

  quant_tag = "QUANTIFICATION_VALUE" if level == "L1C" else "BOA_QUANTIFICATION_VALUE"
  quant_text = _text(root, f"General_Info//{quant_tag}", where, f"Product_Image_Characteristics/{quant_tag}")
  quantification = _number(quant_text, where, quant_tag)
  if quantification <= 0:
    raise InputError(where, f"{quant_tag} is {quant_text}, not a positive number", _REDOWNLOAD)
  add_offsets = _add_offsets(root, level, baseline, where)

  chosen, scl_rel = _pick_files(_image_files(root, where), level, where)
  for band, rel in [*chosen.items(), *([("SCL", scl_rel)] if scl_rel else [])]:
    if not content.exists(rel):
      raise InputError(path, f"{mtd} lists {band} as {rel}, but that file is missing from the product",
                       _REDOWNLOAD)
  return SafeProduct(
      path=path, level=level, mission=mission, baseline=baseline, quantification=quantification,
      add_offsets=add_offsets, band_paths={band: content.gdal_path(rel) for band, rel in chosen.items()},
      scl_path=content.gdal_path(scl_rel) if scl_rel else None)


def reflectance_dn(stored: np.ndarray, product: SafeProduct, band: str) -> np.ndarray:
  """Stored values of `band` of `product` in the project's DN unit (10000 x reflectance), float32.

  (stored + ADD_OFFSET) * (10000 / QUANTIFICATION_VALUE): a baseline 05.xx product storing 1452 gives 452
  for the same reflectance a 02.xx product stores as 452. Nodata is not handled here: products store 0
  for nodata, which comes out as -1000 from an offset product, so callers mask stored == 0 (or read with
  nodata 0 into NaN, which stays NaN) themselves. `stored` is not modified.
  """
  band = constants.canonical_band(band)
  offset = np.float32(product.add_offsets.get(band, 0.0))
  out = np.asarray(stored, dtype=np.float32) + offset
  scale = constants.S2_DN_PER_REFLECTANCE / product.quantification
  if scale != 1.0:
    out *= np.float32(scale)
  return out
