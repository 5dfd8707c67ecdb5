"""Landslide maps of new scenes (`python -m launch.predict`): overlapping windows, blended, block by block.

The scene is processed in blocks read with rasterio windows, so a scene larger than memory works: each
block is read with a halo of one patch, every sliding window (on one grid for the whole scene) that
touches the block is predicted, and the blended probabilities of the block's own pixels are written to
the output GeoTIFFs. The result does not depend on the block size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import rasterio.warp
import rasterio.windows
from scipy import ndimage

from landslide_jax import constants, files
from landslide_jax.data import dem_tiles, raster_io, scene as scene_lib, sentinel2_safe, site_inputs
from landslide_jax.errors import InputError

PROBABILITY_NODATA = -1.0
LANDSLIDE_NODATA = 255
BLENDS = ("cosine", "triangular")
# The minimum mapping unit of the polygons (--min_area_m2): ten 10 m pixels, just below the smallest
# landslides of the paper's inventories (~1,100 m2), so speckle of one to a few pixels is not mapped.
DEFAULT_MIN_AREA_M2 = 1000.0


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


def _pixel_area_m2(grid: raster_io.Grid) -> float:
  area = abs(grid.transform.a * grid.transform.e)
  if grid.crs.is_geographic:
    # Degrees to metres at the scene's central latitude: good to a fraction of a percent for a scene.
    lat = math.radians(grid.transform.f + grid.transform.e * grid.shape[0] / 2)
    area *= (111_320.0 ** 2) * math.cos(lat)
  return area


class _AtomicGeoTIFF:
  """A Cloud-Optimized GeoTIFF: written block by block into a hidden temporary GeoTIFF, converted to a
  COG (internal overviews built with `resampling`) and renamed into place on success."""

  def __init__(self, path: Path, grid: raster_io.Grid, dtype: str, nodata: float, resampling: str):
    self.path, self.resampling = path, resampling
    fd, self.tmp = tempfile.mkstemp(suffix=".tif", dir=path.parent, prefix=f".{path.stem}.")
    os.close(fd)
    tiled = grid.shape[0] >= 256 and grid.shape[1] >= 256
    self.dst = rasterio.open(
        self.tmp, "w", driver="GTiff", height=grid.shape[0], width=grid.shape[1], count=1, dtype=dtype,
        crs=grid.crs, transform=grid.transform, nodata=nodata, compress="deflate",
        **({"tiled": True, "blockxsize": 256, "blockysize": 256} if tiled else {}))

  def write(self, data: np.ndarray, window: rasterio.windows.Window) -> None:
    self.dst.write(data, 1, window=window)

  def close(self, keep: bool) -> None:
    self.dst.close()
    cog = self.tmp[:-4] + ".cog.tif"
    try:
      if keep:
        raster_io.copy_as_cog(self.tmp, cog, self.resampling)
        os.chmod(cog, 0o644)  # mkstemp makes it private; a map is meant to be shared
        os.replace(cog, self.path)
    finally:
      for leftover in (self.tmp, cog):
        if os.path.exists(leftover):
          os.remove(leftover)


def predict_probabilities(run, inputs: site_inputs.SiteInputs, out_dir: str | os.PathLike,
                          overlap: float = 0.5, blend: str = "cosine", threshold: float | None = None,
                          block: int = 1024, batch_size: int = 16) -> dict:
  """Writes `probability.tif` and `landslides.tif` for a scene; returns their paths and the grid.

  Args:
    run: a loaded training run (`evaluate.load_run`): config, normalisation and `predict(images)`.
    inputs: the scene's inputs (`scene_inputs`).
    out_dir: output folder.
    overlap: share of a window overlapping its neighbour, in [0, 1).
    blend: 'cosine' or 'triangular' window weights.
    threshold: probability threshold (default: the run's).
    block: block side in pixels (memory use grows with its square; results do not depend on it).
    batch_size: windows per model call.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  config = run.config
  patch, channels = config.patch, tuple(config.channels)
  threshold = config.threshold if threshold is None else threshold
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
                       f"draw an AOI at least {patch * math.sqrt(_pixel_area_m2(grid)):.0f} m across, "
                       "or use a run trained on smaller patches") from None
    raise InputError(raster_io.s2_source(inputs, bands), f"scene too small: {err}",
                     f"use a scene of at least {patch} x {patch} px or a model trained on smaller patches"
                     ) from None
  weights = blend_weights(patch, blend)
  block = max(block, patch)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  prob_out = _AtomicGeoTIFF(out_dir / "probability.tif", grid, "float32", PROBABILITY_NODATA, "average")
  mask_out = _AtomicGeoTIFF(out_dir / "landslides.tif", grid, "uint8", LANDSLIDE_NODATA, "nearest")
  ok = False
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
        probs = run.predict(batch)[:len(chunk)]
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
    ok = True
  finally:
    prob_out.close(ok)
    mask_out.close(ok)
  return {"probability": prob_out.path, "landslides": mask_out.path, "grid": grid,
          "threshold": threshold, "windows": int(len(rows) * len(cols))}


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
  pixel_area = _pixel_area_m2(grid)
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


def write_geojson(path: Path, features: list[dict]) -> Path:
  """A FeatureCollection in EPSG:4326 (RFC 7946), written atomically."""
  return files.write_text_atomically(
      path, json.dumps({"type": "FeatureCollection", "features": features}))


def predict_scene(workdir: str | os.PathLike, scene: str | os.PathLike, dem: str | os.PathLike | None,
                  out_dir: str | os.PathLike, checkpoint: str = "best", overlap: float = 0.5,
                  blend: str = "cosine", threshold: float | None = None,
                  min_area_m2: float = DEFAULT_MIN_AREA_M2,
                  block: int = 1024, s2_add_offset: float | None = None,
                  aoi: str | os.PathLike | None = None,
                  cloud_mask: str | os.PathLike | None = None) -> dict:
  """`launch.predict`: maps landslides in a scene with a trained run; returns the written paths.

  `s2_add_offset`, `aoi` and `cloud_mask` are the flags of the same names (see `scene_inputs`)."""
  from landslide_jax import evaluate  # pylint: disable=import-outside-toplevel  (evaluate imports train)
  if blend not in BLENDS:
    raise InputError(None, f"--blend={blend!r} is not valid", f"use one of: {', '.join(BLENDS)}")
  if block <= 0 or min_area_m2 < 0:
    raise InputError(None, "--block must be positive and --min_area_m2 non-negative", "check the flags")
  inputs = scene_inputs(scene, dem, s2_add_offset, aoi=aoi, cloud_mask=cloud_mask)
  run = evaluate.load_run(workdir, checkpoint)
  written = predict_probabilities(run, inputs, out_dir, overlap=overlap, blend=blend,
                                  threshold=threshold, block=block)
  features = landslide_polygons(written["landslides"], written["probability"], min_area_m2)
  geojson = write_geojson(Path(out_dir) / "landslides.geojson", features)
  print(f"{len(features)} landslide polygons (>= {min_area_m2:g} m2); wrote {written['probability']}, "
        f"{written['landslides']}, {geojson}", flush=True)
  return {"probability": str(written["probability"]), "landslides": str(written["landslides"]),
          "geojson": str(geojson), "polygons": len(features), "threshold": written["threshold"]}
