"""Which XLA CPU options speed up the train step? Each candidate runs in its own process (XLA_FLAGS are
read once, at backend start) and is compared with the default in the same run.

    python benchmarks/xla_flags_bench.py [--model=unet] [--patch=128] [--batch=4] [--steps=4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn custom call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "no thunk runtime": "--xla_cpu_use_thunk_runtime=false",
    "fast math": "--xla_cpu_enable_fast_math=true",
}

_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import jax, numpy as np
from landslide_jax import train
from landslide_jax.models import create_model
name, patch, batch, steps = {model!r}, {patch}, {batch}, {steps}
config = train.TrainConfig(model=name, patch=patch, batch_size=batch)
model = create_model(name, **({{"axis_name": train.AXIS}} if name == "resunet" else {{}}))
state = train.replicate(train.create_train_state(jax.random.key(0), model, (1, patch, patch, 5), config))
rng = np.random.default_rng(0)
data = {{"image": rng.normal(size=(1, batch, patch, patch, 5)).astype(np.float32),
         "mask": (rng.random((1, batch, patch, patch, 1)) < 0.05).astype(np.uint8),
         "valid": np.ones((1, batch, patch, patch, 1), np.uint8),
         "weight": np.ones((1, batch, patch, patch, 1), np.float32)}}
step = jax.pmap(train.train_step, axis_name=train.AXIS)
state, out = step(state, data); jax.block_until_ready(out)
start = time.perf_counter()
for _ in range(steps):
  state, out = step(state, data)
jax.block_until_ready(out)
print((time.perf_counter() - start) / steps, float(out["loss"][0]))
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="unet")
  parser.add_argument("--patch", type=int, default=128)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=4)
  args = parser.parse_args()
  code = _CHILD.format(root=str(ROOT), model=args.model, patch=args.patch, batch=args.batch,
                       steps=args.steps)
  base = None
  print(f"{args.model} {args.patch} px batch {args.batch}")
  print(f"{'option':<20} {'s/step':>8} {'x default':>10} {'loss after steps':>17}")
  for name, flags in CANDIDATES.items():
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
      print(f"{name:<20} failed: {out.stderr.strip().splitlines()[-1][:80]}")
      continue
    seconds, loss = map(float, out.stdout.split())
    base = base or seconds
    print(f"{name:<20} {seconds:>8.3f} {base / seconds:>10.2f} {loss:>17.6f}", flush=True)


if __name__ == "__main__":
  main()
