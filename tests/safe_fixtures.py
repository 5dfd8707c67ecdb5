"""Small Sentinel-2 SAFE products with the real structure, for tests.

`make_safe_product` writes a Level-1C or Level-2A product: the real folder and file names, every band as a
real (lossless) JPEG2000 file, `MTD_MSIL1C.xml` / `MTD_MSIL2A.xml` with the real element names and nesting
(product info, baseline, quantification, offsets from baseline 04.00 on, the granule's image file list,
spectral information), the granule's `MTD_TL.xml` and a `manifest.safe`, optionally zipped as the Copernicus
Data Space delivers it (`<name>.SAFE.zip` holding `<name>.SAFE/`). The format facts and their sources are
listed in landslide_jax/data/sentinel2_safe.py.

Stored values follow the products: DN = round(10000 x reflectance) before baseline 04.00 and
round(10000 x reflectance) + 1000 from 04.00 on (RADIO_ADD_OFFSET / BOA_ADD_OFFSET = -1000), clipped to
1..65535; 0 is nodata.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path

import affine
import numpy as np
import rasterio
import rasterio.warp
import rasterio.windows

from landslide_jax import constants

LEVELS = ("L1C", "L2A")
QUANTIFICATION = 10000
OFFSET_DN = 1000  # stored DN shift from baseline 04.00 on; the metadata says ADD_OFFSET = -1000
RELATIVE_ORBIT = 46
ABSOLUTE_ORBIT = 33245
DEFAULT_SCL_CLASS = 4  # vegetation
# Bands in Spectral_Information order: bandId 0..12.
BAND_ORDER = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
# What a Level-2A product holds besides the native bands: R20m and R60m copies resampled from them (real
# products, checked against baselines 02.14, 04.00 and 05.09). B01_20m exists from baseline 04.00 on.
L2A_R20M_EXTRA = ("B2", "B3", "B4")
L2A_R60M_EXTRA = ("B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B11", "B12")
_JP2_OPTIONS = {"QUALITY": 100, "REVERSIBLE": "YES"}  # lossless JPEG2000


def band_token(band: str) -> str:
  """The band as it appears in file names: B1 -> B01, B8A -> B8A, B11 -> B11."""
  band = constants.canonical_band(band)
  return band if band == "B8A" else f"B{int(band[1:]):02d}"


def has_offset(baseline: str) -> bool:
  """Whether products of `baseline` store DN + 1000 (processing baseline 04.00 and later)."""
  major, minor = (int(part) for part in baseline.split("."))
  return (major, minor) >= (4, 0)


def product_name(level: str, baseline: str, mission: str, tile: str, sensing: str) -> str:
  """The compact product name without .SAFE, e.g. S2B_MSIL2A_20230815T022529_N0510_R046_T51QTF_..."""
  return (f"{mission}_MSI{level}_{sensing}_N{baseline.replace('.', '')}_R{RELATIVE_ORBIT:03d}_{tile}_"
          f"{sensing[:8]}T052416")


def stored_dn(reflectance: np.ndarray, baseline: str, nodata: np.ndarray | None = None) -> np.ndarray:
  """The uint16 values a product of `baseline` stores for `reflectance` (0 where `nodata` or NaN)."""
  refl = np.asarray(reflectance, np.float64)
  bad = ~np.isfinite(refl)
  if nodata is not None:
    bad |= nodata
  dn = np.round(np.where(bad, 0.0, refl) * QUANTIFICATION) + (OFFSET_DN if has_offset(baseline) else 0)
  out = np.clip(dn, 1, 65535).astype(np.uint16)
  out[bad] = 0
  return out


def _block_any(mask: np.ndarray, factor: int) -> np.ndarray:
  h, w = mask.shape
  return mask.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))


def _block_mean(values: np.ndarray, factor: int) -> np.ndarray:
  h, w = values.shape
  return values.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _write_jp2(path: Path, data: np.ndarray, crs: str, origin: tuple[float, float], res: int) -> None:
  """A georeferenced JPEG2000 file (1 band, or 3 for TCI), lossless, no nodata tag and no .aux.xml,
  like the products' own files (their nodata 0 is declared in the metadata, not in the files)."""
  data = data if data.ndim == 3 else data[None]
  path.parent.mkdir(parents=True, exist_ok=True)
  with rasterio.Env(GDAL_PAM_ENABLED="NO"):
    transform = affine.Affine(res, 0.0, origin[0], 0.0, -res, origin[1])
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=data.shape[2], height=data.shape[1],
                       count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform,
                       **_JP2_OPTIONS) as dst:
      dst.write(data)


def _iso(stamp: str) -> str:
  """20230815T022529 -> 2023-08-15T02:25:29.024Z."""
  return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}.024Z"


def _product_xml(level: str, baseline: str, mission: str, name: str, sensing: str, granule: str,
                 image_files: list[str]) -> str:
  """MTD_MSIL1C.xml / MTD_MSIL2A.xml with the elements and nesting of real products."""
  lvl = level[1:]  # "1C" / "2A"
  tile = granule.split("_")[1]  # L2A_T51QTF_A033245_... -> T51QTF
  n = f"N{baseline}"
  offsets = ""
  if has_offset(baseline):
    list_tag, item_tag = (("Radiometric_Offset_List", "RADIO_ADD_OFFSET") if level == "L1C"
                          else ("BOA_ADD_OFFSET_VALUES_LIST", "BOA_ADD_OFFSET"))
    items = "".join(f'\n        <{item_tag} band_id="{i}">-{OFFSET_DN}</{item_tag}>'
                    for i in range(len(BAND_ORDER)))
    offsets = f"\n      <{list_tag}>{items}\n      </{list_tag}>"
  if level == "L1C":
    quantification = f'\n      <QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}</QUANTIFICATION_VALUE>'
  else:
    quantification = (
        "\n      <QUANTIFICATION_VALUES_LIST>"
        f'\n        <BOA_QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}</BOA_QUANTIFICATION_VALUE>'
        '\n        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>'
        '\n        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>'
        "\n      </QUANTIFICATION_VALUES_LIST>")
  spectral = "".join(
      f'\n        <Spectral_Information bandId="{i}" physicalBand="{band}">'
      f"\n          <RESOLUTION>{constants.SENTINEL2_BANDS[band][1]}</RESOLUTION>"
      f'\n          <Wavelength><CENTRAL unit="nm">{constants.SENTINEL2_BANDS[band][0]}</CENTRAL>'
      "</Wavelength>"
      "\n        </Spectral_Information>" for i, band in enumerate(BAND_ORDER))
  files = "".join(f"\n            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
  generation = f"{sensing[:8]}T052416"
  xsd = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{lvl}.xsd"
  return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{lvl}_User_Product xmlns:n1="{xsd}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:schemaLocation="{xsd}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{_iso(sensing)}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{_iso(sensing)}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{name}.SAFE</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{lvl}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{lvl}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{_iso(generation)}</GENERATION_TIME>
      <PREVIEW_IMAGE_URL>Not applicable</PREVIEW_IMAGE_URL>
      <PREVIEW_GEO_INFO>Not applicable</PREVIEW_GEO_INFO>
      <Datatake datatakeIdentifier="G{mission}_{sensing}_{ABSOLUTE_ORBIT:06d}_{n}">
        <SPACECRAFT_NAME>Sentinel-2{mission[2]}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{_iso(sensing)}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>{RELATIVE_ORBIT}</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="{mission}_OPER_MSI_L{lvl}_DS_2BPS_{generation}_S{sensing}_{n}" \
granuleIdentifier="{mission}_OPER_MSI_L{lvl}_TL_2BPS_{generation}_A{ABSOLUTE_ORBIT:06d}_{tile}_{n}" \
imageFormat="JPEG2000">{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Image_Display_Order>
        <RED_CHANNEL>3</RED_CHANNEL>
        <GREEN_CHANNEL>2</GREEN_CHANNEL>
        <BLUE_CHANNEL>1</BLUE_CHANNEL>
      </Image_Display_Order>{quantification}{offsets}
      <Spectral_Information_List>{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
  <n1:Quality_Indicators_Info>
    <Cloud_Coverage_Assessment>0.0</Cloud_Coverage_Assessment>
  </n1:Quality_Indicators_Info>
</n1:Level-{lvl}_User_Product>
"""


def _tile_xml(level: str, mission: str, baseline: str, sensing: str, tile: str, crs: str,
              origin: tuple[float, float], shape10: tuple[int, int]) -> str:
  """The granule's MTD_TL.xml: tile id, sensing time and the tile geocoding per resolution."""
  lvl = level[1:]
  xsd = f"https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{lvl}_Tile_Metadata.xsd"
  sizes = "".join(f'\n      <Size resolution="{r}">\n        <NROWS>{shape10[0] * 10 // r}</NROWS>'
                  f"\n        <NCOLS>{shape10[1] * 10 // r}</NCOLS>\n      </Size>" for r in (10, 20, 60))
  positions = "".join(f'\n      <Geoposition resolution="{r}">\n        <ULX>{origin[0]:g}</ULX>'
                      f"\n        <ULY>{origin[1]:g}</ULY>\n        <XDIM>{r}</XDIM>"
                      f"\n        <YDIM>-{r}</YDIM>"
                      "\n      </Geoposition>" for r in (10, 20, 60))
  return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{lvl}_Tile_ID xmlns:n1="{xsd}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:schemaLocation="{xsd}">
  <n1:General_Info>
    <TILE_ID metadataLevel="Brief">{mission}_OPER_MSI_L{lvl}_TL_2BPS_{sensing[:8]}T052416_\
A{ABSOLUTE_ORBIT:06d}_{tile}_N{baseline}</TILE_ID>
    <SENSING_TIME metadataLevel="Standard">{_iso(sensing)}</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>{crs}</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>{crs}</HORIZONTAL_CS_CODE>{sizes}{positions}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:Level-{lvl}_Tile_ID>
"""


def _manifest_xml(level: str, root: Path) -> str:
  """manifest.safe: the XFDU package listing every file with its size and SHA3-256, as the products do."""
  objects = []
  files = sorted((p for p in root.rglob("*") if p.is_file() and p.name != "manifest.safe"),
                 key=lambda p: (not p.name.startswith("MTD_MSI"), p.as_posix()))  # product metadata first
  for i, path in enumerate(files):
    rel = path.relative_to(root).as_posix()
    digest = hashlib.sha3_256(path.read_bytes()).hexdigest().upper()
    mime = "application/xml" if path.suffix == ".xml" else "application/octet-stream"
    objects.append(
        f'\n    <dataObject ID="Object_{i}">'
        f'\n      <byteStream mimeType="{mime}" size="{path.stat().st_size}">'
        f'\n        <fileLocation href="./{rel}" locatorType="URL"/>'
        f'\n        <checksum checksumName="SHA3-256">{digest}</checksum>'
        "\n      </byteStream>\n    </dataObject>")
  lvl = level[1:]
  return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<xfdu:XFDU xmlns:gml="http://www.opengis.net/gml" xmlns:safe="http://www.esa.int/safe/sentinel/1.1" \
xmlns:xfdu="urn:ccsds:schema:xfdu:1" \
version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_l{lvl.lower()}_user_product">
  <informationPackageMap>
    <xfdu:contentUnit textInfo="SENTINEL-2 MSI Level-{lvl} User Product" unitType="Product_Level-{lvl}">
      <xfdu:contentUnit ID="Product_Metadata_Level-{lvl}" unitType="Metadata Unit">
        <dataObjectPointer dataObjectID="Object_0"/>
      </xfdu:contentUnit>
    </xfdu:contentUnit>
  </informationPackageMap>
  <metadataSection/>
  <dataObjectSection>{''.join(objects)}
  </dataObjectSection>
</xfdu:XFDU>
"""


def zip_product(safe_dir: Path, zip_path: Path | None = None) -> Path:
  """Zips a .SAFE folder as delivered: `<name>.SAFE.zip` next to it holding `<name>.SAFE/...`; images
  stored, XML deflated."""
  zip_path = zip_path or safe_dir.with_name(safe_dir.name + ".zip")
  with zipfile.ZipFile(zip_path, "w") as archive:
    for path in sorted(safe_dir.rglob("*")):
      if path.is_file():
        compress = zipfile.ZIP_STORED if path.suffix == ".jp2" else zipfile.ZIP_DEFLATED
        archive.write(path, f"{safe_dir.name}/{path.relative_to(safe_dir).as_posix()}",
                      compress_type=compress)
  return zip_path


def make_safe_product(out_dir: Path, reflectance: dict[str, np.ndarray], *, level: str = "L2A",
                      baseline: str = "05.10", mission: str = "S2B", tile: str = "T51QTF",
                      crs: str = "EPSG:32651", origin: tuple[float, float] = (300000.0, 2500020.0),
                      scl: np.ndarray | None = None, nodata_mask: np.ndarray | None = None,
                      as_zip: bool = False, sensing: str = "20230815T022529") -> Path:
  """Writes a Sentinel-2 product into `out_dir` and returns the `.SAFE` folder (or the `.SAFE.zip`).

  Args:
    reflectance: canonical band ("B2", "B8A"...) -> reflectance at the band's native resolution: 10 m
      arrays (H, W), 20 m (H/2, W/2), 60 m (H/6, W/6); NaN is nodata. Bands not given are not written.
      L2A products have no B10.
    level: "L1C" or "L2A".
    baseline: processing baseline "NN.NN"; from "04.00" on the stored DN carry +1000 and the metadata
      the -1000 offsets.
    scl: L2A scene classification at 20 m (H/2, W/2), uint8; default all 4 (vegetation).
    nodata_mask: bool (H, W) at 10 m: stored 0 there; a 20/60 m pixel is nodata where any 10 m pixel under
      it is, and the SCL is 0 (no data) there.
    as_zip: write `<name>.SAFE.zip` (holding `<name>.SAFE/`) instead of the folder.

  L2A products also get what real ones carry besides the native bands, where the 10 m shape divides
  evenly: R20m/R60m copies (B02_20m, B02_60m, ...; B01_20m from 04.00 on), TCI, AOT and WVP at each
  resolution, SCL at 20 and 60 m. L1C products get every band once and a TCI.
  """
  if level not in LEVELS:
    raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
  refl = {constants.canonical_band(b): np.asarray(v, np.float64) for b, v in reflectance.items()}
  if level == "L2A" and "B10" in refl:
    raise ValueError("Level-2A products have no B10")
  if not refl:
    raise ValueError("give at least one band")
  shapes = {(v.shape[0] * constants.SENTINEL2_BANDS[b][1] // 10,
             v.shape[1] * constants.SENTINEL2_BANDS[b][1] // 10) for b, v in refl.items()}
  if len(shapes) != 1:
    raise ValueError(f"band shapes do not make one 10 m grid: {({b: v.shape for b, v in refl.items()})}")
  shape10 = shapes.pop()
  if level == "L2A" and (shape10[0] % 2 or shape10[1] % 2):
    raise ValueError(f"an L2A product needs an even 10 m shape for its 20 m SCL, got {shape10}")
  nodata10 = np.zeros(shape10, bool) if nodata_mask is None else np.asarray(nodata_mask, bool)
  if nodata10.shape != shape10:
    raise ValueError(f"nodata_mask is {nodata10.shape}, the 10 m grid {shape10}")

  def nodata_at(res: int) -> np.ndarray:
    return nodata10 if res == 10 else _block_any(nodata10, res // 10)

  name = product_name(level, baseline, mission, tile, sensing)
  granule = f"{level}_{tile}_A{ABSOLUTE_ORBIT:06d}_{sensing}"
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  final = out_dir / (name + (".SAFE.zip" if as_zip else ".SAFE"))
  if final.exists():
    raise FileExistsError(final)
  staging = Path(tempfile.mkdtemp(dir=out_dir)) if as_zip else out_dir
  safe = staging / f"{name}.SAFE"
  img = f"GRANULE/{granule}/IMG_DATA"
  # (relative path without .jp2, array, resolution), in the order real products list them.
  images: list[tuple[str, np.ndarray, int]] = []

  def add_band(band: str, values: np.ndarray, res: int) -> None:
    stem = f"{tile}_{sensing}_{band_token(band)}"
    rel = f"{img}/{stem}" if level == "L1C" else f"{img}/R{res}m/{stem}_{res}m"
    images.append((rel, stored_dn(values, baseline, nodata_at(res)), res))

  tci = None
  if all(b in refl for b in ("B2", "B3", "B4")):
    tci = np.stack([np.clip(refl[b] / 0.3 * 255, 0, 255) for b in ("B4", "B3", "B2")]).astype(np.uint8)
    tci[:, nodata10] = 0
  if level == "L1C":
    for band in BAND_ORDER:
      if band in refl:
        add_band(band, refl[band], constants.SENTINEL2_BANDS[band][1])
    if tci is not None:
      images.append((f"{img}/{tile}_{sensing}_TCI", tci, 10))
  else:
    by_res: dict[int, dict[str, np.ndarray]] = {10: {}, 20: {}, 60: {}}
    for band, values in refl.items():
      native = constants.SENTINEL2_BANDS[band][1]
      by_res[native][band] = values
      for res, extras in ((20, L2A_R20M_EXTRA), (60, L2A_R60M_EXTRA)):
        factor = res // native
        tiles = shape10[0] % (res // 10) == 0 and shape10[1] % (res // 10) == 0
        if band in extras and res > native and tiles:
          by_res[res][band] = _block_mean(values, factor)
    if "B1" in refl and has_offset(baseline):
      by_res[20]["B1"] = np.repeat(np.repeat(refl["B1"], 3, axis=0), 3, axis=1)  # upsampled, as ESA does
    scl20 = (np.full((shape10[0] // 2, shape10[1] // 2), DEFAULT_SCL_CLASS, np.uint8) if scl is None
             else np.asarray(scl).astype(np.uint8))
    if scl20.shape != (shape10[0] // 2, shape10[1] // 2):
      raise ValueError(f"scl is {scl20.shape}, the 20 m grid {(shape10[0] // 2, shape10[1] // 2)}")
    scl20 = np.where(nodata_at(20), 0, scl20).astype(np.uint8)
    aot, wvp = np.full(shape10, 120, np.uint16), np.full(shape10, 2500, np.uint16)  # 0.12 AOT, 2.5 cm
    for res in (10, 20, 60):
      step = res // 10
      if shape10[0] % step or shape10[1] % step:
        continue  # no coarser copies for a grid they would not tile
      for band in BAND_ORDER:
        if band in by_res[res]:
          add_band(band, by_res[res][band], res)
      # Listed after the bands at every resolution, as in real products: TCI, AOT, WVP, then SCL (20, 60 m).
      stem = f"{img}/R{res}m/{tile}_{sensing}"
      if tci is not None:
        images.append((f"{stem}_TCI_{res}m", tci[:, ::step, ::step], res))
      images.append((f"{stem}_AOT_{res}m", aot[::step, ::step], res))
      images.append((f"{stem}_WVP_{res}m", wvp[::step, ::step], res))
      if res == 20:
        images.append((f"{stem}_SCL_20m", scl20, 20))
      elif res == 60:
        images.append((f"{stem}_SCL_60m", scl20[1::3, 1::3], 60))

  try:
    for rel, data, res in images:
      _write_jp2(safe / f"{rel}.jp2", data, crs, origin, res)
    (safe / "GRANULE" / granule / "MTD_TL.xml").write_text(
        _tile_xml(level, mission, baseline, sensing, tile, crs, origin, shape10), encoding="utf-8")
    (safe / f"MTD_MSI{level}.xml").write_text(
        _product_xml(level, baseline, mission, name, sensing, granule, [rel for rel, _, _ in images]),
        encoding="utf-8")
    (safe / "manifest.safe").write_text(_manifest_xml(level, safe), encoding="utf-8")
    if as_zip:
      zip_product(safe, final)
  finally:
    if as_zip:
      shutil.rmtree(staging, ignore_errors=True)
  return final


def write_worked_example(site_dir: Path, out_dir: Path) -> dict[str, Path]:
  """README's worked example: a GeoTIFF site (a demo site folder) rewritten as users download it.

  Writes into `out_dir`: the scene as a Level-2A baseline 05.10 product zip (its clouds, the site's
  `nodata_mask`, as SCL class 9), the DEM cut into four tiles in `dem_tiles/`, `study_area.geojson`
  (an EPSG:4326 polygon over the middle of the scene), the inventory and a `manifest.json` naming them,
  so `out_dir` is a site folder. Returns the paths by role.
  """
  import json  # pylint: disable=import-outside-toplevel
  site_dir, out_dir = Path(site_dir), Path(out_dir)
  manifest = json.loads((site_dir / "manifest.json").read_text())
  with rasterio.open(site_dir / manifest["sentinel2"]) as src:
    dn = src.read().astype(np.float64)
    bands = manifest.get("bands") or [constants.canonical_band(d) for d in src.descriptions]
    crs, transform = src.crs, src.transform
  rows, cols = dn.shape[1] // 2 * 2, dn.shape[2] // 2 * 2  # the 20 m SCL needs an even 10 m grid
  reflectance = {constants.canonical_band(b): dn[i, :rows, :cols] / QUANTIFICATION
                 for i, b in enumerate(bands)}
  scl = np.full((rows // 2, cols // 2), DEFAULT_SCL_CLASS, np.uint8)
  if manifest.get("nodata_mask"):
    with rasterio.open(site_dir / manifest["nodata_mask"]) as src:
      scl[_block_any(src.read(1)[:rows, :cols] != 0, 2)] = 9  # cloud, high probability
  zone = crs.to_epsg() % 100
  product = make_safe_product(out_dir, reflectance, level="L2A", baseline="05.10",
                              tile=f"T{zone:02d}SVC", crs=crs.to_string(),
                              origin=(transform.c, transform.f), scl=scl, as_zip=True)
  tiles_dir = out_dir / "dem_tiles"
  tiles_dir.mkdir(parents=True, exist_ok=True)
  with rasterio.open(site_dir / manifest["dem"]) as src:
    dem, profile = src.read(1), src.profile
    half_r, half_c = src.height // 2, src.width // 2
    for i, (r0, r1) in enumerate(((0, half_r), (half_r, src.height))):
      for j, (c0, c1) in enumerate(((0, half_c), (half_c, src.width))):
        window = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
        profile.update(height=r1 - r0, width=c1 - c0,
                       transform=rasterio.windows.transform(window, src.transform))
        with rasterio.open(tiles_dir / f"dem_part_{i}{j}.tif", "w", **profile) as dst:
          dst.write(dem[r0:r1, c0:c1], 1)
  # The middle half of the scene (a quarter of its area), as a user would draw it: lon/lat.
  x0, y0 = transform @ (cols / 4, rows / 4)
  x1, y1 = transform @ (3 * cols / 4, 3 * rows / 4)
  lon, lat = rasterio.warp.transform(crs, "EPSG:4326", [x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0])
  aoi = out_dir / "study_area.geojson"
  aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
      "type": "Feature", "properties": {"name": "study area"},
      "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in zip(lon, lat)]]}}]}))
  # With the inventory and a manifest, `out_dir` is also a site folder for launch.prepare: the
  # product is found by its name.
  inventory = out_dir / Path(manifest["inventory"]).name
  shutil.copyfile(site_dir / manifest["inventory"], inventory)
  (out_dir / "manifest.json").write_text(json.dumps(
      {"dem": "dem_tiles/", "aoi": aoi.name, "inventory": inventory.name,
       "source": manifest.get("source", "real"), "description": f"worked example: {manifest.get('description', site_dir.name)} as SAFE + DEM tiles"},
      indent=2))
  return {"product": product, "dem_tiles": tiles_dir, "aoi": aoi, "site": out_dir}


if __name__ == "__main__":
  import sys  # pylint: disable=import-outside-toplevel
  if len(sys.argv) != 3:
    sys.exit("usage: python -m tests.safe_fixtures SITE_DIR OUT_DIR  (SITE_DIR: a demo site folder)")
  for role, path in write_worked_example(Path(sys.argv[1]), Path(sys.argv[2])).items():
    print(f"{role}: {path}")
