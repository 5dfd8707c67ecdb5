"""Shared tables: Sentinel-2 bands, input channels, Landslide4Sense layout, paper sites, patch sizes.

Every builder, the model input and prediction read these; nothing else defines them.
"""

from __future__ import annotations

import dataclasses
import re

# Sentinel-2 MSI bands: canonical name -> (central wavelength nm, native resolution m).
SENTINEL2_BANDS: dict[str, tuple[int, int]] = {
    "B1": (443, 60), "B2": (490, 10), "B3": (560, 10), "B4": (665, 10),
    "B5": (705, 20), "B6": (740, 20), "B7": (783, 20), "B8": (842, 10),
    "B8A": (865, 20), "B9": (945, 60), "B10": (1375, 60), "B11": (1610, 20),
    "B12": (2190, 20),
}
# The four 10 m bands the paper uses.
PAPER_BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B8")
# Channels derived from the DEM rather than read from Sentinel-2.
DEM_CHANNELS: tuple[str, ...] = ("slope", "dem")
# The paper's input: B2, B3, B4, B8 and slope, in that order.
DEFAULT_CHANNELS: tuple[str, ...] = PAPER_BANDS + ("slope",)
# Channels a site dataset can be built with (the S2 file must provide the bands asked for).
SITE_CHANNELS: tuple[str, ...] = tuple(SENTINEL2_BANDS) + DEM_CHANNELS

# Sentinel-2 values are stored as digital numbers (reflectance x 10000), the unit of L1C/L2A products.
S2_DN_PER_REFLECTANCE = 10000.0

# Landslide4Sense (Ghorbanzadeh et al. 2022) h5 layout: channel order and the per-channel divisors the
# data were published with (multiply to get DN, slope in degrees, elevation in metres).
L4S_CHANNELS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "slope", "dem")
L4S_SCALES: tuple[float, ...] = (
    1111.81, 824.63, 663.42, 445.17, 645.86, 1547.74, 1960.44, 1941.32, 674.08, 9.05, 1113.98,
    519.90, 20.29, 772.83)
L4S_PATCH = 128
# Landslide4Sense images are resampled to 10 m (their h5 files carry no georeference).
L4S_PIXEL_M = 10.0

PATCH_SIZES: tuple[int, ...] = (32, 64, 128)

# The paper's split: training:testing = 3:2 by area; validation carved from the training area.
TEST_FRACTION = 0.4
VALIDATION_FRACTION = 0.15
# A window with more nodata than this share is dropped (and counted).
MAX_NODATA_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Site:
  """A study site of the paper, with what the demo generator needs to imitate it."""
  name: str
  title: str
  epsg: int            # UTM zone of the site: the demo scene's CRS.
  lat: float           # Scene centre, degrees.
  lon: float
  area_km2: float      # Approximate area of the paper's site image.
  demo_shape: tuple[int, int]  # (rows, cols) at 10 m and demo_scale=1.0: area_km2 * 1e4 pixels.


SITES: dict[str, Site] = {
    "taiwan": Site("taiwan", "Western Taitung, Taiwan", 32651, 22.95, 120.95, 468.0, (1800, 2600)),
    "china": Site("china", "Shuzheng Valley (Jiuzhaigou), China", 32648, 33.20, 103.90, 64.0,
                  (1000, 640)),
    # Iburi: the remainder of the paper's 7888 patches of 32 px once Taiwan and China are counted.
    "japan": Site("japan", "Eastern Iburi, Hokkaido, Japan", 32654, 42.75, 142.00, 275.8,
                  (1560, 1768)),
}
SITE_NAMES: tuple[str, ...] = tuple(SITES)

SOURCE_REAL = "real"
SOURCE_DEMO = "synthetic-demo"


def canonical_band(name: str) -> str:
  """Returns the canonical channel name: 'B02'/'b2'/'B8a' -> 'B2'/'B2'/'B8A'; 'Slope' -> 'slope'.

  Raises KeyError for names that are not Sentinel-2 bands or DEM channels.
  """
  text = name.strip()
  if text.lower() in DEM_CHANNELS:
    return text.lower()
  if text.lower() in ("elevation", "dtm"):
    return "dem"
  match = re.fullmatch(r"[Bb]0*(\d{1,2})([Aa]?)", text)
  if match:
    band = f"B{int(match.group(1))}{match.group(2).upper()}"
    if band in SENTINEL2_BANDS:
      return band
  raise KeyError(name)


def parse_channels(spec: str | tuple[str, ...] | list[str], valid: tuple[str, ...]) -> tuple[str, ...]:
  """Parses a comma-separated channel list (or a sequence) into canonical names, checked against `valid`.

  Raises ValueError listing the valid names for an unknown or repeated channel.
  """
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  channels = []
  for item in items:
    if not item.strip():
      continue
    try:
      channel = canonical_band(item)
    except KeyError:
      channel = None
    if channel not in valid:
      raise ValueError(f"unknown channel {item!r}; valid channels: {', '.join(valid)}")
    if channel in channels:
      raise ValueError(f"channel {channel!r} is listed twice")
    channels.append(channel)
  if not channels:
    raise ValueError(f"no channels given; valid channels: {', '.join(valid)}")
  return tuple(channels)
