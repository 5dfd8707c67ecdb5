"""Preparation time and peak memory for the built-in demo sites.

    python benchmarks/prepare_bench.py [--scale=1.0] [--sites=taiwan,china,japan] [--patches=32,64,128]

Each step runs in a fresh subprocess so its peak RSS is its own. The peer, measured in the same run, is
the I/O floor: reading the site's raw rasters with rasterio and nothing else. The ratio says how much the
whole preparation (reprojection, slope, rasterisation, split, patching, TFDS writing) costs on top.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_STEP = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    start = time.perf_counter()
    {body}
    print(json.dumps({{"seconds": time.perf_counter() - start,
                       "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
""")

_GENERATE = "from landslide_jax.data import demo; demo.write_demo_site({site!r}, {raw!r}, scale={scale})"
_READ = ("import rasterio, glob\n"
         "for p in sorted(glob.glob({raw!r} + '/{site}/*.tif')):\n"
         "  with rasterio.open(p) as s: s.read()")
_PREPARE = ("from landslide_jax import prepare\n"
            "prepare.prepare_site({site!r}, {patch}, {tfds!r}, {raw!r})")


def _run(body: str, **kw) -> dict:
  code = _STEP.format(root=str(ROOT), body=textwrap.indent(body.format(**kw), "").replace("\n", "\n"))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scale", type=float, default=1.0)
  parser.add_argument("--sites", default="taiwan,china,japan")
  parser.add_argument("--patches", default="32,64,128")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    raw, tfds_dir = f"{tmp}/raw", f"{tmp}/tfds"
    print(f"{'site':<7} {'step':<13} {'seconds':>8} {'peak MB':>8} {'x raw read':>10}")
    total = 0.0
    for site in args.sites.split(","):
      gen = _run(_GENERATE, site=site, raw=raw, scale=args.scale)
      read = _run(_READ, site=site, raw=raw)
      print(f"{site:<7} {'demo scene':<13} {gen['seconds']:>8.2f} {gen['peak_mb']:>8.0f} {'':>10}")
      print(f"{site:<7} {'raw read':<13} {read['seconds']:>8.2f} {read['peak_mb']:>8.0f} {1.0:>10.1f}")
      for patch in args.patches.split(","):
        prep = _run(_PREPARE, site=site, patch=int(patch), raw=raw, tfds=tfds_dir)
        total += prep["seconds"]
        print(f"{site:<7} {'prepare p' + patch:<13} {prep['seconds']:>8.2f} {prep['peak_mb']:>8.0f} "
              f"{prep['seconds'] / read['seconds']:>10.1f}")
    print(f"total prepare time (all sites, all patch sizes, one process per step): {total:.1f} s")


if __name__ == "__main__":
  main()
