"""A site scene on its Sentinel-2 grid: input channels, validity, landslides and optional test area."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import rasterio.windows

from landslide_jax import constants
from landslide_jax.data import inventory, raster_io, site_inputs
from landslide_jax.data.slope import slope_degrees
from landslide_jax.errors import InputError


@dataclasses.dataclass
class Scene:
  """Everything a site dataset is cut from, on the Sentinel-2 10 m grid.

  Attributes:
    image: float32 (C, H, W): S2 bands in digital numbers, slope in degrees, DEM in metres.
    valid: bool (H, W): pixel has data in every band and is not cloud-masked.
    landslides: uint8 (H, W), 1 = landslide.
    test_area: bool (H, W) from a test-area file, or None for the default split.
    s2_add_offset: DN added to each Sentinel-2 band read (band -> offset; -1000 for processing baseline
      04.00 and later when the manifest says so, else 0), for the dataset's metadata.
  """
  name: str
  channels: tuple[str, ...]
  image: np.ndarray
  valid: np.ndarray
  landslides: np.ndarray
  test_area: np.ndarray | None
  grid: raster_io.Grid
  source: str
  input_hash: str
  s2_add_offset: dict[str, float] = dataclasses.field(default_factory=dict)


def load_channels(inputs: site_inputs.SiteInputs, channels: tuple[str, ...],
                  window: rasterio.windows.Window | None = None
                  ) -> tuple[np.ndarray, np.ndarray, raster_io.Grid]:
  """The input channels of a site (or of one window of it) on its Sentinel-2 grid.

  The one place channels are computed: dataset building reads whole scenes, prediction reads windows,
  and both get the same S2 scaling, DEM reprojection and slope.

  Returns:
    (image float32 (C, H, W) with nodata pixels set to 0, valid bool (H, W), grid).
  """
  bands = tuple(c for c in channels if c in constants.SENTINEL2_BANDS)
  if bands:
    image, valid, grid = raster_io.read_sentinel2(inputs, bands, window)
  else:
    raise InputError(inputs.site_dir, f"channels {', '.join(channels)} include no Sentinel-2 band",
                     "add at least one band, e.g. --channels=B2,B3,B4,B8,slope")
  layers = dict(zip(bands, image))
  # The DEM is read even when no DEM channel is asked for: a DEM that does not cover the scene
  # means the inputs are not what the user thinks they are.
  # A window's DEM is resampled relative to the whole scene, so it holds the whole scene's values.
  scene = grid if window is None else raster_io.scene_grid(inputs, bands)
  dem = raster_io.read_dem_on_grid(inputs.dem, grid, margin=1, scene=scene)
  layers["dem"] = dem[1:-1, 1:-1]
  if "slope" in channels:
    layers["slope"] = slope_degrees(dem, grid.expanded(1).transform, grid.crs)[1:-1, 1:-1]
  if inputs.aoi is not None:
    # The grid is the AOI's bounding box; pixels outside its polygons are not part of the study area.
    inside = inventory.read_mask(inputs.aoi, grid, "area of interest", require_features=False) > 0
    valid &= inside
    if window is None and not valid.any():
      raise InputError(inputs.aoi, "no valid Sentinel-2 pixel inside the area of interest",
                       "check the AOI lies on the scene's data (not its nodata or clouds)")
  if inputs.nodata_mask is not None:
    # A mask in the wrong CRS or place would mask nothing, silently. Checked against the whole scene, not
    # a block of it: a mask may cover only part of the scene.
    inventory.check_raster_overlap(inputs.nodata_mask, scene, "nodata mask")
    # Pixels the mask tags nodata, or does not cover, read as 0: not masked.
    masked = raster_io.read_onto_grid(inputs.nodata_mask, grid, "nodata mask", fill=0.0) > 0
    valid &= ~masked
    if window is None and not valid.any():
      raise InputError(inputs.nodata_mask, "the nodata mask covers every valid pixel",
                       "check the mask polarity: non-zero must mean invalid")
  stacked = np.stack([layers[c] for c in channels]).astype(np.float32)
  stacked[:, ~valid] = 0.0  # nodata carries no signal; `valid` tells the model to ignore it
  return stacked, valid, grid


def load_scene(site_dir: str | os.PathLike, channels: tuple[str, ...], name: str,
               input_hash: str | None = None) -> Scene:
  """Reads one site folder into a `Scene` with the requested channels, in order.

  `input_hash` is the inputs' `content_hash()` when the caller already has it (hashing reads every raw
  file, so it is not worth doing twice).

  Raises:
    InputError: any unusable input (see README.md 'Errors').
  """
  inputs = site_inputs.find_site_inputs(site_dir)
  image, valid, grid = load_channels(inputs, channels)
  landslides = inventory.read_mask(inputs.inventory, grid, "inventory", inputs.inventory_layer)
  test_area = None
  if inputs.test_area is not None:
    test_area = inventory.read_mask(inputs.test_area, grid, "test area").astype(bool)
  bands = tuple(c for c in channels if c in constants.SENTINEL2_BANDS)
  return Scene(name=name, channels=tuple(channels), image=image, valid=valid,
               landslides=landslides * valid.astype(np.uint8), test_area=test_area, grid=grid,
               source=inputs.source, input_hash=input_hash or inputs.content_hash(),
               s2_add_offset=inputs.add_offsets(bands))
