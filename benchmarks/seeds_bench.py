"""K seeds in one vmapped program (`launch.train --seeds=K`) vs K runs one after another.

    python benchmarks/seeds_bench.py [--seeds=1,2,4] [--models=unet,resunet] [--patch=64] [--batch=4]
                                     [--steps=4] [--repeats=3]

Times the product's multi-seed step for K stacked seeds against K calls of the single-seed step on the
same batches, in the form training uses on this backend (`--path`): one dispatch per step with batches
gathered on the host (`multi_seed.seeds_train_step` vs `train.train_step`, CPU) or scans over the
device-resident split (`seeds_train_steps` vs `train.train_steps`, accelerators): the time one epoch of K seeds takes either way. Both are compiled
first and timed alternately `--repeats` times (medians), so machine load falls on both alike. Prints
seconds per K-seed step both ways and the speed-up (sequential / vmapped); > 1 means the vmapped program
is cheaper than running the seeds one after another.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from landslide_jax import multi_seed, train  # pylint: disable=wrong-import-position

CHANNELS = 5
EXAMPLES = 64


def _data(patch: int) -> dict:
  rng = np.random.default_rng(0)
  return {"image": rng.normal(size=(EXAMPLES, patch, patch, CHANNELS)).astype(np.float32),
          "mask": (rng.random((EXAMPLES, patch, patch, 1)) < 0.05).astype(np.uint8),
          "valid": np.ones((EXAMPLES, patch, patch, 1), np.uint8),
          "weight": np.ones((EXAMPLES, patch, patch, 1), np.float32)}


def _plan(seed: int, steps: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(devices, steps, per_device) indices and keep of one seed's batches."""
  devices = jax.local_device_count()
  idx = np.random.default_rng(seed).integers(0, EXAMPLES, (steps, devices, batch // devices))
  return idx.transpose(1, 0, 2).astype(np.int32), np.ones(idx.transpose(1, 0, 2).shape, bool)


def _time(fn, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    out.append(time.perf_counter() - start)
  return out


def bench(model: str, patch: int, batch: int, k: int, steps: int, repeats: int, path: str
          ) -> tuple[float, float]:
  """(seconds for `steps` steps of K seeds vmapped, the same done seed after seed)."""
  config = train.TrainConfig(model=model, patch=patch, batch_size=batch)
  states = [train.initial_state(config, seed) for seed in range(k)]
  resident = train.replicate(_data(patch))
  plans = [_plan(seed, steps, batch) for seed in range(k)]
  indices = np.stack([p[0] for p in plans], axis=1)  # (devices, seeds, steps, per_device)
  keep = np.stack([p[1] for p in plans], axis=1)
  active = np.ones((jax.local_device_count(), k), bool)
  stacked = train.replicate(multi_seed.stack(states))
  singles = [train.replicate(s) for s in states]
  if path == "scan":
    p_seeds = jax.pmap(multi_seed.seeds_train_steps, axis_name=train.AXIS)
    p_single = jax.pmap(train.train_steps, axis_name=train.AXIS)

    def vmapped():
      jax.block_until_ready(p_seeds(stacked, resident, indices, keep, active))

    def sequential():
      for i in range(k):
        jax.block_until_ready(p_single(singles[i], resident, indices[:, i], keep[:, i]))
  else:  # one dispatch per step, batches gathered on the host: the CPU default of both
    host = _data(patch)
    p_seeds = jax.pmap(multi_seed.seeds_train_step, axis_name=train.AXIS)
    p_single = jax.pmap(train.train_step, axis_name=train.AXIS)

    def batch(idx):
      return {key: value[idx] for key, value in host.items()}

    def vmapped():
      for step in range(steps):
        jax.block_until_ready(p_seeds(stacked, batch(indices[:, :, step]), active))

    def sequential():
      for i in range(k):
        for step in range(steps):
          jax.block_until_ready(p_single(singles[i], batch(indices[:, i, step])))
  vmapped()
  sequential()  # compile both
  times_v, times_s = [], []
  for _ in range(repeats):
    times_v += _time(vmapped, 1)
    times_s += _time(sequential, 1)
  return statistics.median(times_v) / steps, statistics.median(times_s) / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="1,2,4")
  parser.add_argument("--models", default="unet,resunet")
  parser.add_argument("--patch", type=int, default=64)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--path", choices=("step", "scan"), default=None,
                      help="step: one dispatch per step (CPU default); scan: scanned steps over "
                           "device-resident data (accelerator default)")
  args = parser.parse_args()
  if args.path is None:
    args.path = "step" if train.resolved_steps_per_dispatch(train.TrainConfig()) == 1 else "scan"
  print(f"# {args.path} path, {jax.default_backend()} x{jax.local_device_count()}, jax {jax.__version__}, patch {args.patch}, "
        f"batch {args.batch}, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print("| model | seeds | vmapped s/step | sequential s/step | sequential / vmapped |")
  print("|---|---:|---:|---:|---:|")
  for model in args.models.split(","):
    for k in (int(x) for x in args.seeds.split(",")):
      v, s = bench(model, args.patch, args.batch, k, args.steps, args.repeats, args.path)
      print(f"| {model} | {k} | {v:.3f} | {s:.3f} | {s / v:.2f} |", flush=True)
  print(f"# load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
