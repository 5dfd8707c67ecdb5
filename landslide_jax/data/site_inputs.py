"""Finds a site's raw inputs: a manifest (JSON or TOML) or, without one, filename conventions.

A site folder `<manual_dir>/<site>/` holds a Sentinel-2 scene, a DEM and a landslide inventory, plus an
optional test-area and nodata mask. See README.md ("Raw data layout") for a worked example.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tomllib
from pathlib import Path

from landslide_jax import constants
from landslide_jax.data import dem_tiles
from landslide_jax.errors import InputError

MANIFEST_NAMES = ("manifest.json", "manifest.toml")
# Every key a manifest may hold; anything else is an error, because a typo ("inventroy") would
# otherwise silently fall back to a convention or to no inventory at all.
MANIFEST_KEYS = {
    "sentinel2": "one multi-band file, a table band -> file (B02, B03, B04, B08), or a Sentinel-2 SAFE "
                 "product (folder or .zip, L1C or L2A) or a list of them",
    "bands": "band names of a multi-band file, in band order",
    "s2_units": "'dn' (0-10000), 'reflectance' (0-1) or 'auto'",
    "s2_nodata": "Sentinel-2 value meaning nodata (default: the file's nodata tag, else 0)",
    "s2_add_offset": "DN added to stored values (-1000 for processing baseline >= 04.00), or a table "
                     "band -> DN (default 0)",
    "dem": "the DEM raster, any CRS and resolution; or DEM tiles: a list of files, a folder or a glob",
    "aoi": "area of interest (vector file): the scene is cut to it from a larger tile or product",
    "scl_mask_classes": "L2A scene classification classes masked as invalid (default 0, 1, 3, 8, 9, 10)",
    "inventory": "landslide polygons (.gpkg/.geojson/.shp) or a mask raster on the S2 grid",
    "inventory_layer": "layer of a multi-layer vector file",
    "test_area": "polygon(s) or raster marking the testing area",
    "nodata_mask": "raster on the S2 grid, non-zero = invalid (clouds, shadows)",
    "source": "'real' (default) or 'synthetic-demo'",
    "description": "free text",
}
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")
S2_UNITS = ("dn", "reflectance", "auto")
# Keys a SAFE product's own metadata answers; giving them as well would contradict it.
_PRODUCT_KEYS = ("bands", "s2_units", "s2_nodata", "s2_add_offset")


@dataclasses.dataclass(frozen=True)
class SiteInputs:
  """Resolved paths and options of one site's raw inputs."""
  site_dir: Path
  # Either one multi-band file (band order in `bands` or its band descriptions) or one file per band.
  s2_stack: Path | None
  s2_band_files: dict[str, Path]
  bands: tuple[str, ...] | None
  s2_units: str
  s2_nodata: float | None
  dem: tuple[Path, ...]  # one DEM file, or tiles mosaicked on read (data/dem_tiles.py)
  inventory: Path | None  # None only for scenes to predict on (require_inventory=False)
  inventory_layer: str | None
  test_area: Path | None
  nodata_mask: Path | None
  source: str
  manifest: Path | None
  # DN added to the stored values of each band (ESA's BOA_ADD_OFFSET / RADIO_ADD_OFFSET: -1000 for
  # processing baseline 04.00 and later). A single number covers every band; a table covers the bands it
  # names. `s2_add_offset_given` is False when neither a manifest nor a flag said anything: then the
  # offset is 0 and a scene that looks offset gets a warning.
  s2_add_offset: dict[str, float] = dataclasses.field(
      default_factory=lambda: dict.fromkeys(constants.SENTINEL2_BANDS, 0.0))
  s2_add_offset_given: bool = False
  # Sentinel-2 SAFE products (folders or zips), mosaicked in this order on the first one's 10 m grid;
  # when given, s2_stack and s2_band_files are unused and the radiometry comes from their metadata.
  s2_products: tuple[Path, ...] = ()
  # Scene classification classes of L2A products masked as invalid.
  scl_mask_classes: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
  # Area of interest: the scene is the part of the Sentinel-2 grid holding it; pixels outside it are
  # invalid.
  aoi: Path | None = None

  def add_offsets(self, bands: tuple[str, ...]) -> dict[str, float]:
    """The offset of each of `bands` (canonical names), in DN.

    Raises:
      InputError: a per-band `s2_add_offset` table leaves out one of `bands`.
    """
    missing = [b for b in bands if b not in self.s2_add_offset]
    if missing:
      raise InputError(self.manifest or self.site_dir,
                       f"s2_add_offset lists {', '.join(self.s2_add_offset) or 'no band'} but not "
                       f"{', '.join(missing)}", "give every band read an offset, or one number for all")
    return {b: self.s2_add_offset[b] for b in bands}

  def files(self) -> list[Path]:
    """All input files (including a shapefile's sidecars), for hashing."""
    paths = [self.s2_stack, *self.s2_band_files.values(), *self.dem, self.inventory,
             self.test_area, self.nodata_mask, self.manifest, self.aoi, *self.s2_products]
    out = []
    for path in paths:
      if path is None:
        continue
      if path.is_dir():  # an unpacked SAFE product
        out.extend(p for p in path.rglob("*") if p.is_file())
      elif path.suffix.lower() == ".shp":
        out.extend(sorted(path.parent.glob(path.stem + ".*")))
      else:
        out.append(path)
    return sorted(set(out))

  def content_hash(self) -> str:
    """SHA-256 over the names and bytes of every input file: identifies what a dataset was built from."""
    digest = hashlib.sha256()
    folders = [p for p in self.s2_products if p.is_dir()]
    for path in self.files():
      # Files inside an unpacked SAFE product by their path in it: several granule files share a name.
      inside = next((f for f in folders if path.is_relative_to(f)), None)
      digest.update(str(path.relative_to(inside.parent) if inside else path.name).encode())
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict:
  try:
    if path.suffix == ".json":
      data = json.loads(path.read_text())
    else:
      data = tomllib.loads(path.read_text())
  except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
    raise InputError(path, f"manifest is not valid {path.suffix[1:].upper()} ({err})",
                     "fix the syntax; see README.md 'Site manifest'") from None
  if not isinstance(data, dict):
    raise InputError(path, "manifest must be a table of keys", "see README.md 'Site manifest'")
  unknown = sorted(set(data) - set(MANIFEST_KEYS))
  if unknown:
    raise InputError(path, f"unknown manifest key(s) {', '.join(unknown)}",
                     f"use only {', '.join(MANIFEST_KEYS)}")
  _check_types(data, path)
  return data


def _is_str_list(value) -> bool:
  return isinstance(value, list) and all(isinstance(v, str) for v in value)


# The value type of each manifest key: (what it must be, test, an example to write). A wrong type would
# otherwise end in a Python traceback (a band number where a name goes) or be read as something else (a
# layer index 3 as the layer named "3"). Only types here: values (band names, units...) are checked where
# they are read, and so are the keys missing here (s2_add_offset, dem, aoi, scl_mask_classes).
_MANIFEST_TYPES = {
    "sentinel2": ('a file name, a table band -> file name ({"B02": "B02.jp2", ...}) or a list of SAFE '
                  "product names",
                  lambda v: (isinstance(v, str) or _is_str_list(v) or (
                      isinstance(v, dict) and all(isinstance(f, str) for f in v.values()))),
                  "s2.tif"),
    "bands": ("a list of band names", _is_str_list, ["B2", "B3", "B4", "B8"]),
    "s2_units": ("a text", lambda v: isinstance(v, str), "dn"),
    "s2_nodata": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), 0),
    "inventory": ("a file name", lambda v: isinstance(v, str), "inventory.gpkg"),
    "inventory_layer": ("a layer name", lambda v: isinstance(v, str), "landslides"),
    "test_area": ("a file name", lambda v: isinstance(v, str), "test_area.gpkg"),
    "nodata_mask": ("a file name", lambda v: isinstance(v, str), "cloud_mask.tif"),
    "source": ("a text", lambda v: isinstance(v, str), constants.SOURCE_REAL),
    "description": ("a text", lambda v: isinstance(v, str), "Eastern Iburi, 2018-09-11 post-event scene"),
}
# Keys whose null (JSON) means "not given", as if the key were absent.
_NULLABLE_KEYS = ("sentinel2", "bands", "s2_nodata", "inventory_layer")


def _check_types(spec: dict, manifest: Path) -> None:
  """Raises InputError for the first key whose value has the wrong type (see `_MANIFEST_TYPES`)."""
  for key, (expected, test, example) in _MANIFEST_TYPES.items():
    if key not in spec or (spec[key] is None and key in _NULLABLE_KEYS) or test(spec[key]):
      continue
    found = json.dumps(spec[key], default=str)
    found = found if len(found) <= 60 else found[:57] + "..."
    value = json.dumps(example)  # JSON strings and lists of strings are TOML too
    write = f'"{key}": {value}' if manifest.suffix == ".json" else f"{key} = {value}"
    raise InputError(manifest, f"manifest key {key!r} must be {expected}, found {found}", f"write {write}")


def _is_number(value) -> bool:
  # bool is an int in Python, but `true` is no offset.
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_add_offset(value, where: str | os.PathLike | None) -> dict[str, float]:
  """`s2_add_offset` (a number, or a table band -> number) as band -> DN for the bands it covers.

  A number covers every Sentinel-2 band; band names may be spelt B02, b2, B8a, ...

  Raises:
    InputError: not a finite number or a table of them, or a table key that is not a band.
  """
  fix = ("write s2_add_offset = -1000 (processing baseline >= 04.00; launch.predict: "
         "--s2_add_offset=-1000), or a table like {\"B02\": -1000, ...}")
  if _is_number(value):
    return dict.fromkeys(constants.SENTINEL2_BANDS, float(value))
  if not isinstance(value, dict) or not value:
    raise InputError(where, f"s2_add_offset must be a number or a table band -> number, got {value!r}",
                     fix)
  offsets = {}
  for band, offset in value.items():
    try:
      name = constants.canonical_band(str(band))
    except KeyError:
      name = None
    if name not in constants.SENTINEL2_BANDS:
      raise InputError(where, f"s2_add_offset names {band!r}, which is not a Sentinel-2 band",
                       f"use band names like {', '.join(constants.PAPER_BANDS)}")
    if not _is_number(offset):
      raise InputError(where, f"s2_add_offset of {band} must be a number, got {offset!r}", fix)
    if name in offsets:
      raise InputError(where, f"s2_add_offset lists band {name} twice", "keep one entry per band")
    offsets[name] = float(offset)
  return offsets


def _existing(site_dir: Path, name: str, key: str, manifest: Path | None) -> Path:
  path = (site_dir / name).resolve()
  if not path.is_file():
    where = manifest if manifest else site_dir
    raise InputError(where, f"{key} file {name!r} does not exist",
                     f"put it in {site_dir} or correct the {key!r} entry")
  return path


def _band_of(filename: str) -> str | None:
  """'T51QTF_20200101_B02_10m.jp2' -> 'B2'; None when the name carries no band token."""
  match = re.search(r"(?:^|[_\-.])(B\d{1,2}A?)(?=[_\-.]|$)", Path(filename).stem, re.IGNORECASE)
  if not match:
    return None
  try:
    return constants.canonical_band(match.group(1))
  except KeyError:
    return None


def _find_one(site_dir: Path, pattern: str, suffixes: tuple[str, ...]) -> Path | None:
  hits = sorted(p for p in site_dir.iterdir()
                if p.is_file() and p.suffix.lower() in suffixes and re.match(pattern, p.name, re.I))
  if len(hits) > 1:
    raise InputError(site_dir, f"several files match {pattern!r}: {', '.join(p.name for p in hits)}",
                     "keep one, or name the file in a manifest.json")
  return hits[0].resolve() if hits else None


def find_site_inputs(site_dir: str | os.PathLike, require_inventory: bool = True) -> SiteInputs:
  """Resolves the raw inputs of one site folder, from its manifest or from filename conventions.

  Conventions without a manifest (case-insensitive): one `s2*.tif`/`sentinel2*.tif` multi-band file with
  band descriptions, or per-band files whose names contain `B02`, `B03`, `B04`, `B08` (GeoTIFF or JP2);
  `dem*.tif`; `inventory.{gpkg,geojson,shp}` or `inventory*.tif`; optional `test_area.*` and
  `nodata_mask.tif`/`cloud_mask.tif`.

  Args:
    site_dir: the site folder.
    require_inventory: False for a scene to map, which has no inventory yet.

  Raises:
    InputError: the folder or a named file is missing, the manifest is malformed or has unknown keys.
  """
  site_dir = Path(site_dir)
  if not site_dir.is_dir():
    raise InputError(site_dir, "site folder does not exist",
                     "pass --manual_dir holding one folder per site (see README.md 'Raw data layout')")
  manifests = [site_dir / n for n in MANIFEST_NAMES if (site_dir / n).is_file()]
  if len(manifests) > 1:
    raise InputError(site_dir, "both manifest.json and manifest.toml exist", "keep one")
  manifest = manifests[0].resolve() if manifests else None
  spec = _read_manifest(manifest) if manifest else {}

  def named(key: str, required: bool, pattern: str, suffixes: tuple[str, ...]) -> Path | None:
    if key in spec:  # a file name: _check_types saw to it
      return _existing(site_dir, spec[key], key, manifest)
    found = _find_one(site_dir, pattern, suffixes)
    if found is None and required:
      raise InputError(site_dir, f"no {key} file found",
                       f"add one matching {pattern!r} ({'/'.join(suffixes)}) or name it in manifest.json")
    return found

  s2_stack, band_files, products = None, {}, ()
  s2_spec = spec.get("sentinel2")
  if s2_spec is None:
    products = find_products(site_dir)
  elif isinstance(s2_spec, list) or (isinstance(s2_spec, str) and is_product_name(s2_spec)):
    names = s2_spec if isinstance(s2_spec, list) else [s2_spec]
    if not names or not all(isinstance(n, str) and is_product_name(n) for n in names):
      raise InputError(manifest, f"'sentinel2' lists {s2_spec!r}, not Sentinel-2 SAFE products",
                       "list product folders or zips named S2?_MSIL1C_*/S2?_MSIL2A_*, or name one GeoTIFF")
    products = tuple(_existing_path(site_dir, n, "sentinel2", manifest) for n in names)
  if products:
    clashing = [k for k in _PRODUCT_KEYS if k in spec]
    if clashing:
      raise InputError(manifest, f"{', '.join(clashing)} given for SAFE products, whose metadata "
                       "gives the band files, units, nodata and offsets", f"remove {', '.join(clashing)}")
  elif isinstance(s2_spec, dict):
    for band, name in s2_spec.items():
      try:
        band_files[constants.canonical_band(band)] = _existing(site_dir, name, "sentinel2", manifest)
      except KeyError:
        raise InputError(manifest, f"{band!r} is not a Sentinel-2 band",
                         f"use band names like {', '.join(constants.PAPER_BANDS)}") from None
  elif s2_spec is not None:
    s2_stack = named("sentinel2", True, "", RASTER_SUFFIXES)
  elif s2_spec is None:
    s2_stack = _find_one(site_dir, r"(s2|sentinel[-_]?2)", RASTER_SUFFIXES)
    if s2_stack is None:
      for path in sorted(site_dir.iterdir()):
        band = _band_of(path.name) if path.suffix.lower() in RASTER_SUFFIXES else None
        if band:
          if band in band_files:
            raise InputError(site_dir, f"two files for band {band}: {band_files[band].name}, {path.name}",
                             "keep one, or list the band files in manifest.json")
          band_files[band] = path.resolve()
      if not band_files:
        raise InputError(site_dir, "no Sentinel-2 file found",
                         "add s2.tif (bands described B02..B08) or per-band files named *_B02.jp2 etc.")

  bands = spec.get("bands")
  if bands is not None:
    try:
      bands = tuple(constants.canonical_band(b) for b in bands)
    except (KeyError, TypeError):
      raise InputError(manifest, f"'bands' must list Sentinel-2 band names, got {bands!r}",
                       "write bands = [\"B2\", \"B3\", \"B4\", \"B8\"]") from None
  units = spec.get("s2_units", "auto")
  if units not in S2_UNITS:
    raise InputError(manifest, f"s2_units {units!r} is not one of {', '.join(S2_UNITS)}",
                     "write s2_units = \"dn\" or \"reflectance\"")
  source = spec.get("source", constants.SOURCE_REAL)
  if source not in (constants.SOURCE_REAL, constants.SOURCE_DEMO):
    raise InputError(manifest, f"source {source!r} is unknown",
                     f"write source = \"{constants.SOURCE_REAL}\"")
  nodata = spec.get("s2_nodata")
  layer = spec.get("inventory_layer")
  offset_given = "s2_add_offset" in spec
  offsets = parse_add_offset(spec["s2_add_offset"] if offset_given else 0, manifest)
  if products:
    # Recorded in the dataset metadata; the reader applies each product's own offsets.
    from landslide_jax.data import sentinel2_safe  # pylint: disable=import-outside-toplevel
    offsets = dict(sentinel2_safe.read_safe_product(products[0]).add_offsets)
    offset_given, units = True, "dn"
  scl_classes = spec.get("scl_mask_classes", SiteInputs.scl_mask_classes)
  if (not isinstance(scl_classes, (list, tuple))
      or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 11 for c in scl_classes)):
    raise InputError(manifest, f"scl_mask_classes must list scene classification classes 0-11, got "
                     f"{scl_classes!r}", "write e.g. scl_mask_classes = [0, 1, 3, 8, 9, 10]")
  dem_spec = spec.get("dem")
  if dem_spec is None:
    dem_file = _find_one(site_dir, r"dem", RASTER_SUFFIXES)
    if dem_file is None:
      raise InputError(site_dir, "no dem file found",
                       "add one matching 'dem' (.tif) or name it (or its tiles) in manifest.json")
    dems = (dem_file,)
  else:
    if not (isinstance(dem_spec, str) or (isinstance(dem_spec, list)
                                          and all(isinstance(d, str) for d in dem_spec))):
      raise InputError(manifest, f"'dem' must be a file, folder or glob, or a list of them, got "
                       f"{dem_spec!r}", "write dem = \"dem.tif\" or dem = [\"tiles/*.tif\"]")
    dems = dem_tiles.find_dem_files(dem_spec, site_dir, manifest)
  aoi = spec.get("aoi")
  if aoi is not None:
    if not isinstance(aoi, str):
      raise InputError(manifest, f"'aoi' must be a vector file name, got {aoi!r}",
                       "write aoi = \"study_area.geojson\"")
    aoi = _existing(site_dir, aoi, "aoi", manifest)

  return SiteInputs(
      site_dir=site_dir.resolve(),
      s2_stack=s2_stack,
      s2_band_files=band_files,
      bands=bands,
      s2_units=units,
      s2_nodata=None if nodata is None else float(nodata),
      dem=dems,
      inventory=named("inventory", require_inventory, r"inventory", VECTOR_SUFFIXES + RASTER_SUFFIXES),
      inventory_layer=None if layer is None else str(layer),
      test_area=named("test_area", False, r"test[-_]?area", VECTOR_SUFFIXES + RASTER_SUFFIXES),
      nodata_mask=named("nodata_mask", False, r"(nodata|cloud)[-_]?mask", RASTER_SUFFIXES),
      source=source,
      manifest=manifest,
      s2_add_offset=offsets,
      s2_add_offset_given=offset_given,
      s2_products=products,
      scl_mask_classes=tuple(scl_classes),
      aoi=aoi,
  )


def is_product_name(name: str | os.PathLike) -> bool:
  """Whether a name is a Sentinel-2 L1C/L2A SAFE product's (folder `.SAFE` or its `.zip`)."""
  return re.fullmatch(r"S2[A-D]_MSIL(1C|2A)_\w+?(\.SAFE)?(\.zip)?", Path(name).name, re.I) is not None


def find_products(site_dir: Path) -> tuple[Path, ...]:
  """SAFE products in a site folder by name, sorted (the first sets the grid)."""
  found = sorted(p.resolve() for p in site_dir.iterdir()
                 if is_product_name(p.name) and (p.is_dir() or p.suffix.lower() == ".zip"))
  # A folder and its zip are one product twice.
  stems = [p.name.removesuffix(".zip").removesuffix(".SAFE") for p in found]
  twice = sorted({s for s in stems if stems.count(s) > 1})
  if twice:
    raise InputError(site_dir, f"product {twice[0]} is there twice (folder and zip)",
                     "keep one of them")
  return tuple(found)


def _existing_path(site_dir: Path, name: str, key: str, manifest: Path | None) -> Path:
  """A named file or folder (a SAFE product may be either)."""
  path = (site_dir / name).resolve()
  if not path.exists():
    raise InputError(manifest or site_dir, f"{key} {name!r} does not exist",
                     f"put it in {site_dir} or correct the {key!r} entry")
  return path
