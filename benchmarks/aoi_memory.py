"""Peak memory and time of reading a small area of interest from a large Sentinel-2 product, against
reading the whole product, in the same run (issue 9: an AOI read touches only the windows it needs).

Builds one real-structured L2A product (tests/safe_fixtures.py: JPEG2000 bands, SCL, MTD XML) of
--tile px square, then in fresh subprocesses loads (a) a 256 x 256 px AOI and (b) the whole product
through `scene.load_scene` with channels B2,B3,B4,B8,slope, and prints each peak RSS, wall time and the
ratios. With --workdir (a run trained on those channels, e.g. the main job's), it also times (c) the
whole `launch.predict` path (`predict.predict_scene`) on the AOI of the same product.

  python benchmarks/aoi_memory.py [--tile=3000] [--workdir=runs/china-unet-p128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from landslide_jax import constants  # noqa: E402
from tests import safe_fixtures  # noqa: E402
from tests.conftest import write_polygons  # noqa: E402

CRS = "EPSG:32651"
ORIGIN = (300_000.0, 2_500_020.0)
CHANNELS = ("B2", "B3", "B4", "B8", "slope")
AOI_PX = 256  # a 2.56 km study area: two 128 px model windows across


def _peak_mb() -> float:
  # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child would
  # report the parent's peak (the parent holds the whole product's arrays while building it).
  status = Path("/proc/self/status").read_text()
  return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def _load(site: str) -> None:
  from landslide_jax.data import scene  # pylint: disable=import-outside-toplevel
  imports = _peak_mb()
  start = time.perf_counter()
  loaded = scene.load_scene(site, CHANNELS, "bench")
  print(json.dumps({"shape": list(loaded.grid.shape), "peak_mb": _peak_mb(), "imports_mb": imports,
                    "seconds": time.perf_counter() - start}))


def _predict(spec: str) -> None:
  """`predict_scene` on the AOI site's product, DEM and AOI; spec is 'workdir|site|out'."""
  from landslide_jax import predict  # pylint: disable=import-outside-toplevel
  workdir, site, out = spec.split("|")
  manifest = json.loads((Path(site) / "manifest.json").read_text())
  import jax  # pylint: disable=import-outside-toplevel
  jax.numpy.zeros(1).block_until_ready()  # the backend's start-up is not the AOI's cost
  imports = _peak_mb()
  start = time.perf_counter()
  predict.predict_scene(workdir, manifest["sentinel2"], manifest["dem"], out,
                        aoi=str(Path(site) / manifest["aoi"]))
  with rasterio.open(Path(out) / "probability.tif") as src:
    shape = list(src.shape)
  print(json.dumps({"shape": shape, "peak_mb": _peak_mb(), "imports_mb": imports,
                    "seconds": time.perf_counter() - start}))


def _build(root: Path, tile: int) -> tuple[Path, Path]:
  rng = np.random.default_rng(0)
  refl = {}
  for band in ("B2", "B3", "B4", "B8"):  # the bands the channels read
    n = tile * 10 // constants.SENTINEL2_BANDS[band][1]
    refl[band] = (0.02 + 0.3 * rng.random((n, n))).astype(np.float32)
  product = safe_fixtures.make_safe_product(root, refl, level="L2A", baseline="05.10", crs=CRS,
                                            origin=ORIGIN, scl=np.full((tile // 2, tile // 2), 4, np.uint8),
                                            as_zip=True)
  rows = cols = tile // 3 + 4
  x = ORIGIN[0] - 60 + (np.arange(cols) + 0.5) * 30
  y = ORIGIN[1] + 60 - (np.arange(rows) + 0.5) * 30
  dem = (500 + 0.1 * x[None, :] - 0.1 * y[:, None] % 97).astype(np.float32)
  with rasterio.open(root / "dem.tif", "w", driver="GTiff", height=rows, width=cols, count=1,
                     dtype="float32", crs=CRS, transform=from_origin(ORIGIN[0] - 60, ORIGIN[1] + 60, 30, 30),
                     tiled=True) as dst:
    dst.write(dem, 1)
  sites = []
  for name, aoi in (("aoi", True), ("whole", False)):
    site = root / name
    site.mkdir()
    x0, y0 = ORIGIN[0] + tile * 5, ORIGIN[1] - tile * 5  # the product's centre
    write_polygons(site / "inventory.gpkg", [shapely.box(x0, y0 - 200, x0 + 200, y0)], crs=CRS)
    manifest = {"sentinel2": str(product), "dem": str(root / "dem.tif"), "inventory": "inventory.gpkg"}
    if aoi:
      half = AOI_PX * 5  # metres
      write_polygons(site / "aoi.gpkg", [shapely.box(x0 - half, y0 - half, x0 + half, y0 + half)],
                     crs=CRS)
      manifest["aoi"] = "aoi.gpkg"
    (site / "manifest.json").write_text(json.dumps(manifest))
    sites.append(site)
  return sites[0], sites[1]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--tile", type=int, default=3000, help="product side in 10 m pixels")
  parser.add_argument("--workdir", help="a trained run on B2,B3,B4,B8,slope: also time an AOI predict")
  parser.add_argument("--load", help=argparse.SUPPRESS)
  parser.add_argument("--predict", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.load:
    _load(args.load)
    return
  if args.predict:
    _predict(args.predict)
    return
  with tempfile.TemporaryDirectory() as tmp:
    aoi_site, whole_site = _build(Path(tmp), args.tile)
    jobs = [("aoi read", f"--load={aoi_site}"), ("whole read", f"--load={whole_site}")]
    if args.workdir:
      jobs.append(("aoi predict", f"--predict={Path(args.workdir).resolve()}|{aoi_site}|{Path(tmp) / 'maps'}"))
    results = {}
    for name, flag in jobs:
      done = subprocess.run([sys.executable, __file__, flag], check=False, capture_output=True,
                            text=True, cwd=ROOT)
      if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
      results[name] = json.loads(done.stdout.strip().splitlines()[-1])
  print(f"product {args.tile} x {args.tile} px (L2A zip, JPEG2000):")
  for name, r in results.items():
    print(f"  {name:11s}: scene {r['shape'][0]} x {r['shape'][1]} px, {r['seconds']:.1f} s, peak RSS "
          f"{r['peak_mb']:.0f} MB ({r['imports_mb']:.0f} MB after imports)")
  whole = results["whole read"]
  for name in [n for n in results if n != "whole read"]:
    print(f"  {name} / whole read: peak memory {results[name]['peak_mb'] / whole['peak_mb']:.2f}, "
          f"time {results[name]['seconds'] / whole['seconds']:.2f}")


if __name__ == "__main__":
  main()
