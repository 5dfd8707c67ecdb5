"""3x3 convolutions' kernel gradient: XLA's own vs `layers.kernel_grad_matmul`, per layer and per step.

    python benchmarks/kernel_grad_bench.py [--repeats=5] [--steps=2] [--thresholds=off,64,128,256]
                                           [--configs=unet:128:4,resunet:64:4] [--skip_layers]

1. One layer's kernel gradient (the vjp of `lax.conv_general_dilated` w.r.t. the kernel) at every 3x3
   layer shape of both models for the first config's patch and batch: XLA's convolution whose window is
   the feature map, against one matmul per kernel tap.
2. The whole train step (the product's `train.train_step`, jitted over one device) with
   `layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS["cpu"]` at each threshold ("off": XLA's gradient everywhere),
   same state and batch (losses asserted equal to 1e-5).

Every variant of a row is compiled first, then all are timed alternately `--repeats` times (medians), as
in transposed_conv_bench.py, so a shared machine's load falls on all alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from landslide_jax import train  # pylint: disable=wrong-import-position
from landslide_jax.models import create_model, layers  # pylint: disable=wrong-import-position
import train_step_bench  # pylint: disable=wrong-import-position
from transposed_conv_bench import _alternate, _load, steps_runner  # pylint: disable=wrong-import-position

# 3x3 layers (input size as a fraction of the patch, stride, cin, cout) of each model.
LAYERS = {"unet": [(1, 1, 5, 32), (1, 1, 32, 32), (1 / 2, 1, 32, 64), (1 / 2, 1, 64, 64),
                   (1 / 4, 1, 64, 128), (1 / 4, 1, 128, 128), (1 / 8, 1, 128, 256), (1 / 8, 1, 256, 256),
                   (1 / 16, 1, 256, 512), (1 / 16, 1, 512, 512), (1 / 8, 1, 512, 256),
                   (1 / 4, 1, 256, 128), (1 / 2, 1, 128, 64), (1, 1, 64, 32)],
          "resunet": [(1, 1, 5, 64), (1, 1, 64, 64), (1, 2, 64, 128), (1 / 2, 1, 128, 128),
                      (1 / 2, 2, 128, 256), (1 / 4, 1, 256, 256), (1 / 4, 2, 256, 512), (1 / 8, 1, 512, 512),
                      (1 / 4, 1, 512, 256), (1 / 2, 1, 256, 128), (1, 1, 128, 64)]}


@contextlib.contextmanager
def _threshold(value: str):
  """Within: the models trace with this kernel-gradient threshold on CPU ("off": never matmuls)."""
  saved = dict(layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS)
  if value == "off":
    layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS.pop("cpu", None)
  else:
    layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS["cpu"] = int(value)
  try:
    yield
  finally:
    layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS.clear()
    layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS.update(saved)


def bench_layers(batch: int, patch: int, repeats: int) -> None:
  print(f"\nOne 3x3 conv's kernel gradient, batch {batch} ({patch} px models)")
  print("| model | input (N, H, W, C) -> F, stride | XLA ms | matmul ms | speed-up |")
  print("|---|---|---:|---:|---:|")
  rng = np.random.default_rng(0)
  for model, shapes in LAYERS.items():
    for fraction, stride, cin, cout in shapes:
      size = int(patch * fraction)
      x = jnp.asarray(rng.normal(size=(batch, size, size, cin)), jnp.float32)
      kernel = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
      strides = (stride, stride)
      pads = tuple(lax.padtype_to_pads((size, size), (3, 3), strides, "SAME"))
      out = (size + stride - 1) // stride
      dy = jnp.asarray(rng.normal(size=(batch, out, out, cout)), jnp.float32)
      xla = jax.jit(lambda x, k, g: jax.vjp(lambda kk: layers._conv(  # pylint: disable=protected-access
          x, kk, strides, pads, None), k)[1](g)[0])
      mm = jax.jit(lambda x, g: layers.kernel_grad_matmul(x, g, kernel.shape, strides, pads))
      np.testing.assert_allclose(mm(x, dy), xla(x, kernel, dy), rtol=1e-4, atol=1e-3 * float(
          jnp.max(jnp.abs(xla(x, kernel, dy)))))
      times = _alternate({"xla": lambda: xla(x, kernel, dy).block_until_ready(),
                          "matmul": lambda: mm(x, dy).block_until_ready()}, repeats)
      a, b = statistics.median(times["xla"]), statistics.median(times["matmul"])
      print(f"| {model} | ({batch}, {size}, {size}, {cin}) -> {cout}, {stride} | {1e3 * a:.1f} | "
            f"{1e3 * b:.1f} | {a / b:.2f}x |", flush=True)


def bench_steps(configs: list[tuple[str, int, int]], thresholds: list[str], steps: int,
                repeats: int) -> None:
  print(f"\nWhole train step (forward, backward, Adam), 5 channels; {steps} steps per timing; "
        "patches/s per kernel-gradient threshold (input channels from which matmuls are used)")
  print("| model | patch | batch | " + " | ".join(thresholds) + " | best vs off |")
  print("|---|---:|---:|" + "---:|" * (len(thresholds) + 1))
  for name, patch, batch in configs:
    data = {k: jnp.asarray(v) for k, v in train_step_bench._batch(  # pylint: disable=protected-access
        batch, patch, 5, 1).items()}
    config = train.TrainConfig(model=name, patch=patch, batch_size=batch)
    model = create_model(name, **({"axis_name": train.AXIS} if name == "resunet" else {}))
    state = train.create_train_state(jax.random.key(0, impl="rbg"), model, (1, patch, patch, 5), config)
    state = jax.tree.map(lambda x: jnp.asarray(x)[None], state)
    fns, losses = {}, {}
    for value in thresholds:
      with _threshold(value):
        fresh = lambda s, b: train.train_step(s, b)  # pylint: disable=unnecessary-lambda  (a new trace)
        compiled = jax.jit(jax.vmap(fresh, axis_name=train.AXIS)).lower(state, data).compile()
      losses[value] = float(compiled(state, data)[1]["loss"][0])
      fns[value] = steps_runner(compiled, state, data, steps)
    reference = losses[thresholds[0]]
    assert all(abs(v - reference) <= 1e-5 * abs(reference) for v in losses.values()), losses
    times = _alternate(fns, repeats)
    speed = {v: batch * steps / statistics.median(t) for v, t in times.items()}
    best = max(speed, key=speed.get)
    gain = f"{speed[best] / speed['off']:.2f}x ({best})" if "off" in speed else ""
    print(f"| {name} | {patch} | {batch} | " + " | ".join(f"{speed[v]:.2f}" for v in thresholds) +
          f" | {gain} |", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=2, help="train steps per timing")
  parser.add_argument("--thresholds", default="off,64,128,256")
  parser.add_argument("--configs", default="unet:128:4,resunet:64:4", help="model:patch:batch,...")
  parser.add_argument("--skip_layers", action="store_true")
  args = parser.parse_args()
  configs = [(m, int(p), int(b)) for m, p, b in (c.split(":") for c in args.configs.split(","))]
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {os.cpu_count()} CPUs, {_load()}")
  if not args.skip_layers:
    bench_layers(configs[0][2], configs[0][1], args.repeats)
  bench_steps(configs, args.thresholds.split(","), args.steps, args.repeats)
  print(f"\nend: {_load()}")


if __name__ == "__main__":
  main()
