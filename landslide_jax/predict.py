"""Landslide maps of new scenes (`python -m launch.predict`): overlapping windows, blended, block by block.

The scene is processed in blocks read with rasterio windows, so a scene larger than memory works: each
block is read with a halo of one patch, every sliding window (on one grid for the whole scene) that
touches the block is predicted, and the blended probabilities of the block's own pixels are written to
the output GeoTIFFs. The result does not depend on the block size.

The outputs of one call are a set: every file carries its provenance (GeoTIFF tags and the GeoJSON's
top-level properties: checkpoint step, threshold, workdir, a hash of the run's config, and an id of the
set), is written into a hidden staging folder of the output folder, and is swapped in only when all are
complete: the old set is removed first, then the new files are renamed in, the GeoJSON last. A kill at
any point leaves files of one set only (possibly not all of them), never a new map beside an old one.
The next run removes what killed runs left (staging folders, temporary files) and, in a folder mixed by
an older version, the files of the older set.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import rasterio.features
import rasterio.warp
import rasterio.windows
from scipy import ndimage

from landslide_jax import constants, faults, files
from landslide_jax.data import dem_tiles, raster_io, scene as scene_lib, sentinel2_safe, site_inputs
from landslide_jax.errors import InputError

PROBABILITY_NODATA = -1.0
LANDSLIDE_NODATA = 255
BLENDS = ("cosine", "triangular")
# The minimum mapping unit of the polygons (--min_area_m2): ten 10 m pixels, just below the smallest
# landslides of the paper's inventories (~1,100 m2), so speckle of one to a few pixels is not mapped.
DEFAULT_MIN_AREA_M2 = 1000.0
# The output set, in the order its files are renamed into place (the GeoJSON, made from the two maps, last).
PROBABILITY_FILE, LANDSLIDES_FILE, GEOJSON_FILE = "probability.tif", "landslides.tif", "landslides.geojson"
OUTPUT_FILES = (PROBABILITY_FILE, LANDSLIDES_FILE, GEOJSON_FILE)
# Hidden folder in the output folder where a set is written before it is swapped in.
STAGING_PREFIX = ".predict-"
# Held while a set is swapped in or the folder is tidied, so two runs into one folder cannot interleave.
SWAP_LOCK = ".predict.lock"
# Temporary files that versions before the staging folder wrote straight into the output folder.
LEGACY_TEMP_PREFIXES = (".probability.", ".landslides.")
# Provenance keys; GeoTIFF tags are these in upper case after TAG_PREFIX.
PROVENANCE_KEYS = ("set", "written", "files", "checkpoint_step", "threshold", "tta", "workdir",
                   "run_config_sha256")
TAG_PREFIX = "LANDSLIDE_JAX_"


def blend_weights(patch: int, kind: str = "cosine") -> np.ndarray:
  """(P, P) window weights, highest in the centre and positive everywhere.

  Window borders see the least context, so their predictions count least; positive weights keep the
  scene's edge pixels (covered by one window only) defined.
  """
  centres = (np.arange(patch) + 0.5) / patch
  if kind == "cosine":
    profile = np.sin(np.pi * centres) ** 2
  elif kind == "triangular":
    profile = 1.0 - np.abs(2.0 * centres - 1.0)
  else:
    raise ValueError(f"unknown blend {kind!r}; valid: {', '.join(BLENDS)}")
  return np.outer(profile, profile).astype(np.float32)


def window_origins(length: int, patch: int, stride: int) -> np.ndarray:
  """Start offsets of sliding windows covering [0, length): every `stride`, plus one flush with the end."""
  if length < patch:
    raise ValueError(f"a side of {length} px is smaller than the {patch} px window")
  origins = list(range(0, length - patch + 1, stride))
  if origins[-1] != length - patch:
    origins.append(length - patch)
  return np.asarray(origins)


def scene_inputs(scene: str | os.PathLike, dem: str | os.PathLike | None,
                 s2_add_offset: float | None = None, aoi: str | os.PathLike | None = None,
                 cloud_mask: str | os.PathLike | None = None) -> site_inputs.SiteInputs:
  """Inputs of a scene to map: a Sentinel-2 GeoTIFF (bands named by their descriptions), a SAFE product
  (L1C or L2A, folder or .zip), or a site manifest.

  Args:
    scene: the Sentinel-2 GeoTIFF, SAFE product, or a site's manifest.json / manifest.toml.
    dem: the DEM file, or tiles: a folder, a glob or a comma-separated list (overrides a manifest's).
    s2_add_offset: DN added to every band (`--s2_add_offset`; -1000 for processing baseline 04.00 and
      later); overrides a manifest's. None: not given (a manifest's, else 0). Not for SAFE products,
      whose metadata gives it.
    aoi: area-of-interest vector file: only its part of the scene is read and mapped.
    cloud_mask: raster, non-zero = invalid (clouds, shadows), as a manifest's `nodata_mask`.
  """
  scene = Path(scene)
  if not scene.exists():
    raise InputError(scene, "scene does not exist",
                     "pass an S2 GeoTIFF, a SAFE product (folder or .zip) or a site manifest.json")
  changes = {}
  if aoi is not None:
    if not Path(aoi).is_file():
      raise InputError(aoi, "area-of-interest file does not exist", "pass --aoi=<polygon file>")
    changes["aoi"] = Path(aoi).resolve()
  if cloud_mask is not None:
    if not Path(cloud_mask).is_file():
      raise InputError(cloud_mask, "cloud mask file does not exist", "pass --cloud_mask=<raster>")
    changes["nodata_mask"] = Path(cloud_mask).resolve()
  if dem is not None:
    changes["dem"] = dem_tiles.find_dem_files([d for d in str(dem).split(",") if d], Path.cwd(), None)
  product = site_inputs.is_product_name(scene.name)
  if s2_add_offset is not None:
    if product:
      raise InputError(scene, "--s2_add_offset given for a SAFE product, whose metadata gives the offsets",
                       "drop --s2_add_offset")
    changes.update(s2_add_offset=site_inputs.parse_add_offset(s2_add_offset, None),
                   s2_add_offset_given=True)
  if scene.suffix.lower() in (".json", ".toml"):
    if scene.name not in site_inputs.MANIFEST_NAMES:
      raise InputError(scene, "a scene manifest must be named manifest.json or manifest.toml",
                       "rename it, or pass the Sentinel-2 GeoTIFF with --dem")
    inputs = site_inputs.find_site_inputs(scene.parent, require_inventory=False)
    if "s2_add_offset" in changes and inputs.s2_products:
      raise InputError(scene, "--s2_add_offset given for SAFE products, whose metadata gives the offsets",
                       "drop --s2_add_offset")
    return dataclasses.replace(inputs, **changes)
  if dem is None:
    raise InputError(scene, "no DEM given", "pass --dem=<DEM GeoTIFF, or a folder of DEM tiles>")
  common = dict(site_dir=scene.parent, bands=None, s2_units="auto", s2_nodata=None, inventory=None,
                inventory_layer=None, test_area=None, nodata_mask=None, source=constants.SOURCE_REAL,
                manifest=None)
  if product:
    offsets = dict(sentinel2_safe.read_safe_product(scene).add_offsets)
    return dataclasses.replace(site_inputs.SiteInputs(
        **common, s2_stack=None, s2_band_files={}, dem=(), s2_products=(scene.resolve(),),
        s2_add_offset=offsets, s2_add_offset_given=True), s2_units="dn", **changes)
  return dataclasses.replace(
      site_inputs.SiteInputs(**common, s2_stack=scene, s2_band_files={}, dem=()), **changes)


def training_offset_warning(saved_config: dict, offsets: dict[str, float]) -> str | None:
  """A one-line warning when a scene's Sentinel-2 offsets differ from the run's training datasets.

  Args:
    saved_config: the run's `config.json`; its `datasets[site]["s2_add_offset"]` (band -> DN) are the
      offsets each training dataset was built with. Sites (or bands) without them are unknown: no warning.
    offsets: the scene's offset of each band the model reads.

  Returns:
    The warning line, or None when every known training offset matches.
  """
  datasets = saved_config.get("datasets")
  differences = []
  for site, info in (datasets.items() if isinstance(datasets, dict) else ()):
    trained = info.get("s2_add_offset") if isinstance(info, dict) else None
    if not isinstance(trained, dict):
      continue
    for band, offset in offsets.items():
      value = trained.get(band)
      if isinstance(value, (int, float)) and float(value) != offset:
        differences.append(f"{band} {offset:g} here vs {float(value):g} in {site}")
  if not differences:
    return None
  shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
  return ("warning: the scene's Sentinel-2 offset (s2_add_offset) differs from the run's training data "
          f"({shown}), so its values are shifted against what the model learnt: check the product's "
          "processing baseline and set --s2_add_offset or the manifest's s2_add_offset to match")


def _warn_training_offset(run, offsets: dict[str, float]) -> None:
  """Prints `training_offset_warning` for the run's saved config, if the run recorded its offsets."""
  workdir = getattr(run, "workdir", None)
  try:
    saved = json.loads((Path(workdir) / "config.json").read_text()) if workdir is not None else {}
  except (OSError, ValueError):
    return  # no saved config: the offsets of training are unknown
  message = training_offset_warning(saved if isinstance(saved, dict) else {}, offsets)
  if message:
    print(message, file=sys.stderr, flush=True)


class _AtomicGeoTIFF:
  """A Cloud-Optimized GeoTIFF: written block by block into a hidden temporary GeoTIFF, converted to a
  COG (internal overviews built with `resampling`) and renamed into place on success."""

  def __init__(self, path: Path, grid: raster_io.Grid, dtype: str, nodata: float, resampling: str,
               tags: dict[str, str] | None = None):
    self.path, self.resampling = path, resampling
    fd, self.tmp = tempfile.mkstemp(suffix=".tif", dir=path.parent, prefix=f".{path.stem}.")
    os.close(fd)
    tiled = grid.shape[0] >= 256 and grid.shape[1] >= 256
    self.dst = rasterio.open(
        self.tmp, "w", driver="GTiff", height=grid.shape[0], width=grid.shape[1], count=1, dtype=dtype,
        crs=grid.crs, transform=grid.transform, nodata=nodata, compress="deflate",
        **({"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled else {}))
    if tags:
      self.dst.update_tags(**tags)  # GDAL's COG copy keeps them

  def write(self, data: np.ndarray, window: rasterio.windows.Window) -> None:
    with faults.raster_write(self.path, data.nbytes):
      self.dst.write(data, 1, window=window)

  def close(self, keep: bool) -> None:
    cog = self.tmp[:-4] + ".cog.tif"
    try:
      # Closing flushes GDAL's cached blocks: the whole map at most.
      size = self.dst.width * self.dst.height * np.dtype(self.dst.dtypes[0]).itemsize
      with faults.raster_write(self.path, size):
        self.dst.close()
      if keep:
        with faults.raster_write(self.path, raster_io.cog_bytes_bound(self.tmp)):
          raster_io.copy_as_cog(self.tmp, cog, self.resampling)
        os.chmod(cog, 0o644)  # mkstemp makes it private; a map is meant to be shared
        os.replace(cog, self.path)
    finally:
      for leftover in (self.tmp, cog):
        if os.path.exists(leftover):
          os.remove(leftover)


def predict_probabilities(run, inputs: site_inputs.SiteInputs, out_dir: str | os.PathLike,
                          overlap: float = 0.5, blend: str = "cosine", threshold: float | None = None,
                          block: int = 1024, batch_size: int = 16, tta: bool = False) -> dict:
  """Writes `probability.tif` and `landslides.tif` for a scene; returns their paths and the grid.

  The two maps are swapped into `out_dir` as a set (see the module docstring); a `landslides.geojson`
  of an earlier call is removed with the old set, as it no longer belongs to the maps.

  Args:
    run: a loaded training run (`evaluate.load_run`): config, normalisation and `predict(images)`.
    inputs: the scene's inputs (`scene_inputs`).
    out_dir: output folder.
    overlap: share of a window overlapping its neighbour, in [0, 1).
    blend: 'cosine' or 'triangular' window weights.
    threshold: probability threshold (default: the run's).
    block: block side in pixels (memory use grows with its square; results do not depend on it).
    batch_size: windows per model call.
    tta: test-time augmentation: each window's probabilities are the mean over its 8 rotations and flips.
  """
  return _predict(run, inputs, out_dir, overlap, blend, threshold, block, batch_size, min_area_m2=None,
                  tta=tta)


def _predict(run, inputs: site_inputs.SiteInputs, out_dir: str | os.PathLike, overlap: float,
             blend: str, threshold: float | None, block: int, batch_size: int,
             min_area_m2: float | None, tta: bool = False) -> dict:
  """`predict_probabilities`, and with `min_area_m2` (not None) also `landslides.geojson`: all written
  into a staging folder, then swapped into `out_dir` as one set."""
  config = run.config
  patch, channels = config.patch, tuple(config.channels)
  if threshold is None:
    from landslide_jax import evaluate  # pylint: disable=import-outside-toplevel  (evaluate imports train)
    threshold = evaluate.run_threshold(run)
  if not 0.0 <= overlap < 1.0:
    raise InputError(None, f"--overlap={overlap} is outside [0, 1)", "pass e.g. 0.5")
  bands = tuple(c for c in channels if c in constants.SENTINEL2_BANDS)
  _check_channels(inputs, bands, channels)
  # Units, the offset check and the offsets are settled once for the scene, before any block is read.
  units = raster_io.resolve_s2_units(inputs, bands, check_offset=True)
  offsets = raster_io.s2_add_offsets(inputs, bands, units)
  # Reflectance data carry no offset, and a SAFE product's offsets come from its own metadata (a
  # baseline 05.xx product mapped by a run trained on 02.xx data is consistent): nothing to compare.
  if units == "dn" and not inputs.s2_products:
    _warn_training_offset(run, offsets)
  inputs = dataclasses.replace(inputs, s2_units=units)
  grid = raster_io.scene_grid(inputs, bands)
  stride = max(1, int(round(patch * (1.0 - overlap))))
  try:
    rows, cols = window_origins(grid.shape[0], patch, stride), window_origins(grid.shape[1], patch, stride)
  except ValueError as err:
    if inputs.aoi is not None:
      raise InputError(inputs.aoi, f"the area of interest is {grid.shape[0]} x {grid.shape[1]} px, "
                       f"smaller than the model's {patch} px window",
                       f"draw an AOI at least "
                       f"{patch * raster_io.mean_pixel_metres(grid.crs, grid.transform, grid.shape[0]):.0f} m "
                       "across, "
                       "or use a run trained on smaller patches") from None
    raise InputError(raster_io.s2_source(inputs, bands), f"scene too small: {err}",
                     f"use a scene of at least {patch} x {patch} px or a model trained on smaller patches"
                     ) from None
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  members = OUTPUT_FILES if min_area_m2 is not None else (PROBABILITY_FILE, LANDSLIDES_FILE)
  provenance = _provenance(run, threshold, members, tta)
  with files.FileLock(out_dir / SWAP_LOCK):
    _tidy_output_folder(out_dir)
  # float32 probability + uint8 classes, uncompressed, and the COG copies made of them: an upper bound.
  files.require_free_space(out_dir, 2 * grid.shape[0] * grid.shape[1] * (4 + 1), "the maps", "--out")
  with files.staging_dir(out_dir, STAGING_PREFIX) as staging:
    _write_maps(run, inputs, staging.path, grid, rows, cols, blend_weights(patch, blend),
                max(block, patch), batch_size, threshold, provenance, tta)
    polygons = None
    if min_area_m2 is not None:
      features = landslide_polygons(staging.path / LANDSLIDES_FILE, staging.path / PROBABILITY_FILE,
                                    min_area_m2)
      write_geojson(staging.path / GEOJSON_FILE, features, {**provenance, "min_area_m2": min_area_m2})
      polygons = len(features)
    _swap_in(staging.path, out_dir, members)
  return {"probability": out_dir / PROBABILITY_FILE, "landslides": out_dir / LANDSLIDES_FILE,
          "geojson": out_dir / GEOJSON_FILE if polygons is not None else None, "polygons": polygons,
          "grid": grid, "threshold": threshold, "windows": int(len(rows) * len(cols)),
          "provenance": provenance}


def _write_maps(run, inputs: site_inputs.SiteInputs, folder: Path, grid: raster_io.Grid,
                rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, block: int, batch_size: int,
                threshold: float, provenance: dict[str, str], tta: bool) -> None:
  """Predicts the scene block by block into `folder`'s probability.tif and landslides.tif (tagged
  with `provenance`); nothing of them stays there if it fails."""
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  patch, channels = run.config.patch, tuple(run.config.channels)
  tags = {TAG_PREFIX + key.upper(): value for key, value in provenance.items()}
  prob_out = _AtomicGeoTIFF(folder / PROBABILITY_FILE, grid, "float32", PROBABILITY_NODATA, "average",
                            tags)
  mask_out = _AtomicGeoTIFF(folder / LANDSLIDES_FILE, grid, "uint8", LANDSLIDE_NODATA, "nearest", tags)
  ok, mapped = False, 0
  try:
    blocks = [(r0, c0) for r0 in range(0, grid.shape[0], block) for c0 in range(0, grid.shape[1], block)]
    for r0, c0 in tqdm(blocks, desc="predict", unit="block"):
      r1, c1 = min(r0 + block, grid.shape[0]), min(c0 + block, grid.shape[1])
      # Every window of the scene grid that touches this block, and the region they span.
      wr = rows[(rows > r0 - patch) & (rows < r1)]
      wc = cols[(cols > c0 - patch) & (cols < c1)]
      rr0, cc0 = int(wr.min()), int(wc.min())
      rr1, cc1 = int(wr.max()) + patch, int(wc.max()) + patch
      region = rasterio.windows.Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
      image, valid, _ = scene_lib.load_channels(inputs, channels, window=region)
      image = run.stats.apply(np.moveaxis(image, 0, -1)) * valid[..., None]
      total = np.zeros(valid.shape, np.float32)
      weight = np.zeros(valid.shape, np.float32)
      origins = [(r - rr0, c - cc0) for r in wr.tolist() for c in wc.tolist()]
      for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        batch = np.stack([image[r:r + patch, c:c + patch] for r, c in chunk])
        if len(chunk) < batch_size:  # pad: one compiled shape for every call
          batch = np.concatenate([batch, np.zeros((batch_size - len(chunk), *batch.shape[1:]),
                                                  batch.dtype)])
        probs = (run.predict(batch, tta=True) if tta else run.predict(batch))[:len(chunk)]
        for (r, c), p in zip(chunk, probs):
          total[r:r + patch, c:c + patch] += p * weights
          weight[r:r + patch, c:c + patch] += weights
      inner = (slice(r0 - rr0, r1 - rr0), slice(c0 - cc0, c1 - cc0))
      prob = total[inner] / weight[inner]
      ok_pixels = valid[inner]
      window = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
      prob_out.write(np.where(ok_pixels, prob, PROBABILITY_NODATA).astype(np.float32), window)
      mask_out.write(np.where(ok_pixels, (prob > threshold).astype(np.uint8), LANDSLIDE_NODATA)
                     .astype(np.uint8), window)
      mapped += int(ok_pixels.sum())
    if mapped == 0:
      # Empty maps with exit 0 would read as "no landslides here", as prepare refuses such scenes too.
      raise InputError(raster_io.s2_source(inputs, tuple(c for c in channels
                                                         if c in constants.SENTINEL2_BANDS)),
                       "no pixel of the scene has data: every one is nodata, masked (clouds) or "
                       "outside the area of interest", "check the scene, the --cloud_mask polarity "
                       "(non-zero = invalid) and the --aoi")
    ok = True
  finally:
    prob_out.close(ok)
    mask_out.close(ok)


def run_config_sha256(run) -> str:
  """SHA-256 of what makes a run's maps: its options and its normalisation statistics."""
  config = getattr(run, "config", None)
  stats = getattr(run, "stats", None)
  record = {"flags": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config),
            "normalization": stats.to_json() if hasattr(stats, "to_json") else None}
  return hashlib.sha256(json.dumps(record, sort_keys=True, default=list).encode()).hexdigest()


def _provenance(run, threshold: float, members: tuple[str, ...], tta: bool = False) -> dict[str, str]:
  """What the files of one output set say about where they come from (all strings: GeoTIFF tags)."""
  workdir = getattr(run, "workdir", None)
  step = getattr(run, "step", None)
  return {"set": uuid.uuid4().hex,
          "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
          "files": ",".join(members),
          "checkpoint_step": "" if step is None else str(step),
          "threshold": repr(float(threshold)),
          "tta": "8 rotations and flips" if tta else "none",
          "workdir": "" if workdir is None else str(Path(workdir).resolve()),
          "run_config_sha256": run_config_sha256(run)}


def read_provenance(path: str | os.PathLike) -> dict[str, str] | None:
  """The provenance of an output file (`PROVENANCE_KEYS`), or None when it has none (written by an
  older version) or cannot be read."""
  path = Path(path)
  try:
    if path.suffix == ".geojson":
      properties = json.loads(path.read_text()).get("properties") or {}
      found = {key: str(properties[key]) for key in PROVENANCE_KEYS if key in properties}
    else:
      with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path) as src:
        tags = src.tags()
      found = {key: tags[TAG_PREFIX + key.upper()] for key in PROVENANCE_KEYS
               if TAG_PREFIX + key.upper() in tags}
  except (OSError, ValueError, AttributeError, rasterio.errors.RasterioError):
    return None
  return found if found.get("set") else None


def _tidy_output_folder(out_dir: Path) -> None:
  """What killed runs left: staging folders and temporary files whose process is gone, and, in a folder
  whose outputs come from different calls (an older version killed between renames), the files of the
  older set. Called with the folder's swap lock held."""
  files.remove_stale(out_dir, (STAGING_PREFIX,))
  files.remove_stale(out_dir, LEGACY_TEMP_PREFIXES)
  present = {name: read_provenance(out_dir / name) for name in OUTPUT_FILES if (out_dir / name).exists()}
  sets = {(record or {}).get("set") for record in present.values()}
  if len(sets) <= 1:
    return
  # The newest set stays; files without provenance (an older version's) count as the oldest.
  newest = max(present.values(), key=lambda record: (record is not None, (record or {}).get("written", "")))
  stale = [name for name, record in present.items() if (record or {}).get("set") != newest["set"]]
  for name in stale:
    (out_dir / name).unlink(missing_ok=True)
  files.note(f"{out_dir}: removed {', '.join(stale)}, left from another prediction than "
             f"{', '.join(n for n in present if n not in stale)} (an interrupted run)")


def _swap_in(staging: Path, out_dir: Path, members: tuple[str, ...]) -> None:
  """Replaces the output set in `out_dir` with the staged `members`: every old output goes first, then
  the new files are renamed in (the GeoJSON last), so the folder never holds files of two sets."""
  with files.FileLock(out_dir / SWAP_LOCK):
    for name in reversed(OUTPUT_FILES):
      (out_dir / name).unlink(missing_ok=True)
    for name in members:
      os.replace(staging / name, out_dir / name)


def _check_channels(inputs, bands: tuple[str, ...], channels: tuple[str, ...]) -> None:
  """The scene must provide every band the model was trained on."""
  if inputs.s2_products:
    have_sets = [set(sentinel2_safe.read_safe_product(p).band_paths) for p in inputs.s2_products]
    have = sorted(set.intersection(*have_sets))
    missing = [b for b in bands if b not in have]
    source = inputs.s2_products[0]
  elif inputs.s2_stack is None:
    missing = [b for b in bands if b not in inputs.s2_band_files]
    source = inputs.site_dir
    have = sorted(inputs.s2_band_files)
  else:
    with raster_io.open_raster(inputs.s2_stack, "Sentinel-2") as src:
      try:
        have = raster_io.stack_band_names(src, inputs.bands)
      except InputError:
        raise InputError(src.name, "bands have no Sentinel-2 descriptions, so they cannot be matched to "
                         f"the model's channels {', '.join(channels)}",
                         "set band descriptions (B02...) or pass a manifest.json with 'bands'") from None
    missing = [b for b in bands if b not in have]
    source = inputs.s2_stack
  if missing:
    raise InputError(source, f"the model was trained on channels {', '.join(channels)} but the scene "
                     f"has no {', '.join(missing)} (it has {', '.join(have) or 'none'})",
                     "use a scene with those bands, or a model trained on the scene's bands")


def landslide_polygons(landslides_tif: Path, probability_tif: Path, min_area_m2: float = 0.0
                       ) -> list[dict]:
  """GeoJSON features (EPSG:4326) of connected landslide regions, with area and mean probability.

  Holds the uint8 map and one int32 label raster in memory; probabilities are read block by block.
  """
  with rasterio.open(landslides_tif) as src:
    binary = src.read(1) == 1
    grid = raster_io.grid_of(src)
  labels, count = ndimage.label(binary)
  if count == 0:
    return []
  sums = np.zeros(count + 1)
  with rasterio.open(probability_tif) as src:
    for _, window in src.block_windows(1):
      block = labels[window.row_off:window.row_off + window.height,
                     window.col_off:window.col_off + window.width]
      sums += np.bincount(block.ravel(), weights=src.read(1, window=window).ravel(), minlength=count + 1)
  pixels = np.bincount(labels.ravel(), minlength=count + 1)
  pixel_area = raster_io.mean_pixel_metres(grid.crs, grid.transform, grid.shape[0]) ** 2
  features = []
  for geometry, value in rasterio.features.shapes(labels, mask=labels > 0, transform=grid.transform):
    value = int(value)
    area = float(pixels[value] * pixel_area)
    if area < min_area_m2:
      continue
    features.append({
        "type": "Feature",
        "geometry": rasterio.warp.transform_geom(grid.crs, "EPSG:4326", geometry),
        "properties": {"id": value, "area_m2": round(area, 1),
                       "mean_probability": round(float(sums[value] / pixels[value]), 4)},
    })
  return features


def write_geojson(path: Path, features: list[dict], properties: dict | None = None) -> Path:
  """A FeatureCollection in EPSG:4326 (RFC 7946), written atomically. `properties` (the provenance)
  become a top-level member of the collection, which RFC 7946 allows and GIS readers ignore."""
  collection = {"type": "FeatureCollection"}
  if properties:
    collection["properties"] = properties
  collection["features"] = features
  return files.write_text_atomically(path, json.dumps(collection))


def predict_scene(workdir: str | os.PathLike, scene: str | os.PathLike, dem: str | os.PathLike | None,
                  out_dir: str | os.PathLike, checkpoint: str = "best", overlap: float = 0.5,
                  blend: str = "cosine", threshold: float | None = None,
                  min_area_m2: float = DEFAULT_MIN_AREA_M2,
                  block: int = 1024, s2_add_offset: float | None = None,
                  aoi: str | os.PathLike | None = None,
                  cloud_mask: str | os.PathLike | None = None, tta: bool = False) -> dict:
  """`launch.predict`: maps landslides in a scene with a trained run; returns the written paths.

  `s2_add_offset`, `aoi` and `cloud_mask` are the flags of the same names (see `scene_inputs`)."""
  from landslide_jax import evaluate  # pylint: disable=import-outside-toplevel  (evaluate imports train)
  if blend not in BLENDS:
    raise InputError(None, f"--blend={blend!r} is not valid", f"use one of: {', '.join(BLENDS)}")
  if block <= 0 or min_area_m2 < 0:
    raise InputError(None, "--block must be positive and --min_area_m2 non-negative", "check the flags")
  inputs = scene_inputs(scene, dem, s2_add_offset, aoi=aoi, cloud_mask=cloud_mask)
  run = evaluate.load_run(workdir, checkpoint)
  written = _predict(run, inputs, out_dir, overlap, blend, threshold, block, batch_size=16,
                     min_area_m2=min_area_m2, tta=tta)
  print(f"{written['polygons']} landslide polygons (>= {min_area_m2:g} m2); wrote "
        f"{written['probability']}, {written['landslides']}, {written['geojson']}", flush=True)
  return {"probability": str(written["probability"]), "landslides": str(written["landslides"]),
          "geojson": str(written["geojson"]), "polygons": written["polygons"],
          "threshold": written["threshold"]}
