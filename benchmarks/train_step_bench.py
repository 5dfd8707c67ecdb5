"""Train-step throughput (patches/s) of U-Net and ResU-Net at 32, 64 and 128 px.

    python benchmarks/train_step_bench.py [--batch=4] [--steps=5] [--models=unet,resunet] [--patches=32,64,128]

Measures the product's pmapped `train.train_step` and, as the peer in the same run, the same step
function under plain `jax.jit` on one device (no collectives): the ratio pmap/jit shows what the
data-parallel wrapper costs at this batch size. Compilation is excluded (one warm-up step).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from landslide_jax import train  # pylint: disable=wrong-import-position
from landslide_jax.models import create_model  # pylint: disable=wrong-import-position


def _batch(batch: int, patch: int, channels: int, devices: int) -> dict:
  rng = np.random.default_rng(0)
  per = batch // devices
  return {"image": rng.normal(size=(devices, per, patch, patch, channels)).astype(np.float32),
          "mask": (rng.random((devices, per, patch, patch, 1)) < 0.05).astype(np.uint8),
          "valid": np.ones((devices, per, patch, patch, 1), np.uint8),
          "weight": np.ones((devices, per, patch, patch, 1), np.float32)}


def _time(step, state, batch, steps: int) -> float:
  state, out = step(state, batch)  # compile
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    state, out = step(state, batch)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--models", default="unet,resunet")
  parser.add_argument("--patches", default="32,64,128")
  args = parser.parse_args()
  devices = jax.local_device_count()
  print(f"{jax.devices()[0].device_kind} x{devices}, jax {jax.__version__}, batch {args.batch}")
  print(f"{'model':<8} {'patch':>5} {'pmap patches/s':>15} {'jit patches/s':>14} {'pmap/jit':>9}")
  for name in args.models.split(","):
    for patch in map(int, args.patches.split(",")):
      config = train.TrainConfig(model=name, patch=patch, batch_size=args.batch)
      kwargs = {"axis_name": train.AXIS} if name == "resunet" else {}
      state = train.create_train_state(jax.random.key(0), create_model(name, **kwargs),
                                       (1, patch, patch, 5), config)
      pmapped = jax.pmap(train.train_step, axis_name=train.AXIS)
      t_pmap = _time(pmapped, train.replicate(state),
                     _batch(args.batch, patch, 5, devices), args.steps)
      # The peer: same step, one device, jit only. vmap with axis_name gives the collectives a
      # size-1 axis to run on, so the function is unchanged.
      single = jax.jit(jax.vmap(train.train_step,
                                axis_name=train.AXIS))
      t_jit = _time(single, jax.tree.map(lambda x: jnp.asarray(x)[None], state),
                    _batch(args.batch, patch, 5, 1), args.steps)
      print(f"{name:<8} {patch:>5} {args.batch / t_pmap:>15.2f} {args.batch / t_jit:>14.2f} "
            f"{t_jit / t_pmap:>9.2f}")


if __name__ == "__main__":
  main()
