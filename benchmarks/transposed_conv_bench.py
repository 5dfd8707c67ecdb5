"""The decoders' 2x2 stride-2 transposed conv: flax's `nn.ConvTranspose` vs `layers.UpConv2x2`'s matmul.

    python benchmarks/transposed_conv_bench.py [--repeats=5] [--steps=2] [--batch=4] [--patch=128]
                                               [--models=unet,resunet] [--skip_ops] [--skip_steps]

XLA:CPU lowers a stride-2 `lax.conv_transpose` to a slow generic convolution (jax issue #23783);
`UpConv2x2` computes the same function as a 1x1 matmul to 4F channels and a depth-to-space.

1. One layer, forward + backward (gradients w.r.t. kernel, bias and input), at every decoder shape of
   both models for `--patch` and `--batch`: "conv" is `lax.conv_transpose` (what nn.ConvTranspose runs,
   bit for bit: tests/test_models.py), "matmul" the new form.
2. The whole train step (forward, backward, Adam) of each model, 5 channels: `train.train_step` under
   `jax.jit(jax.vmap(..., axis_name))` on one device, as the peer in benchmarks/train_step_bench.py,
   with the decoders built from `nn.ConvTranspose` (before) and from `UpConv2x2` (after), same state
   and batch.

Both forms of each pair are compiled first, then timed alternately (before, after, before, after...)
`--repeats` times, so that the load of a shared machine falls on both alike; medians and the median of
the per-repeat ratios are printed, with the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from landslide_jax import train  # pylint: disable=wrong-import-position
from landslide_jax.models import create_model  # pylint: disable=wrong-import-position
from landslide_jax.models.layers import UpConv2x2  # pylint: disable=wrong-import-position
import train_step_bench  # pylint: disable=wrong-import-position

# Decoder up-convolutions (input size as a fraction of the patch, cin, cout) of each model.
DECODERS = {"unet": [(1 / 16, 512, 256), (1 / 8, 256, 128), (1 / 4, 128, 64), (1 / 2, 64, 32)],
            "resunet": [(1 / 8, 512, 256), (1 / 4, 256, 128), (1 / 2, 128, 64)]}


def _load() -> str:
  return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def _conv_transpose_decoders():
  """Within: both models build their decoders from flax's nn.ConvTranspose, as before UpConv2x2
  (auto-named, as then: the parameter tree is the same, tests/test_models.py)."""
  modules = [importlib.import_module(f"landslide_jax.models.{name}") for name in ("unet", "resunet")]

  def legacy(features, dtype=None, name=None):
    del name
    return nn.ConvTranspose(features, (2, 2), strides=(2, 2), dtype=dtype)

  saved = [module.UpConv2x2 for module in modules]
  for module in modules:
    module.UpConv2x2 = legacy
  try:
    yield
  finally:
    for module, original in zip(modules, saved):
      module.UpConv2x2 = original


def _alternate(fns: dict, repeats: int) -> dict[str, list[float]]:
  """Seconds per call of each (already compiled) function, called in turn `repeats` times."""
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def steps_runner(compiled, state, data, steps: int):
  """A function running `steps` train steps of a compiled step from `state` and waiting for them."""
  def run():
    s = state
    for _ in range(steps):
      s, out = compiled(s, data)
    jax.block_until_ready(out)
  return run


def _ratio(times: dict[str, list[float]]) -> float:
  """Median over repeats of before/after time: the speed-up."""
  return statistics.median(b / a for b, a in zip(times["before"], times["after"]))


def bench_ops(models: list[str], batch: int, patch: int, repeats: int) -> None:
  print(f"\nOne 2x2 stride-2 transposed conv, forward + backward, batch {batch} ({patch} px models)")
  print("| model | input (N, H, W, C) -> F | lax.conv_transpose ms | matmul ms | speed-up |")
  print("|---|---|---:|---:|---:|")
  rng = np.random.default_rng(0)
  for model in models:
    for fraction, cin, cout in DECODERS[model]:
      size = int(patch * fraction)
      x = jnp.asarray(rng.normal(size=(batch, size, size, cin)), jnp.float32)
      cotangent = jnp.asarray(rng.normal(size=(batch, 2 * size, 2 * size, cout)), jnp.float32)
      variables = UpConv2x2(cout).init(jax.random.key(0), x)
      fns = {}
      for label, impl in (("before", "conv"), ("after", "matmul")):
        layer = UpConv2x2(cout, impl=impl)
        grad = jax.jit(jax.grad(lambda v, x_, layer=layer: jnp.sum(layer.apply(v, x_) * cotangent),
                                argnums=(0, 1)))
        jax.block_until_ready(grad(variables, x))  # compile
        fns[label] = lambda grad=grad: jax.block_until_ready(grad(variables, x))
      times = _alternate(fns, repeats)
      print(f"| {model} | ({batch}, {size}, {size}, {cin}) -> {cout} | "
            f"{1e3 * statistics.median(times['before']):.1f} | {1e3 * statistics.median(times['after']):.1f} "
            f"| {_ratio(times):.1f}x |", flush=True)


def bench_steps(models: list[str], batch: int, patch: int, steps: int, repeats: int) -> None:
  print(f"\nWhole train step (forward, backward, Adam), batch {batch}, {patch} px, 5 channels; "
        f"{steps} steps per timing")
  print("| model | nn.ConvTranspose patches/s | UpConv2x2 patches/s | speed-up | per-repeat speed-ups "
        "| convolutions in the step (before, after) |")
  print("|---|---:|---:|---:|---|---|")
  batch_arrays = train_step_bench._batch(batch, patch, 5, 1)  # pylint: disable=protected-access
  data = {k: jnp.asarray(v) for k, v in batch_arrays.items()}
  for name in models:
    config = train.TrainConfig(model=name, patch=patch, batch_size=batch)
    kwargs = {"axis_name": train.AXIS} if name == "resunet" else {}
    model = create_model(name, **kwargs)
    # An 'rbg' key: the values do not matter here, and it compiles the init far faster than threefry.
    state = train.create_train_state(jax.random.key(0, impl="rbg"), model, (1, patch, patch, 5), config)
    state = jax.tree.map(lambda x: jnp.asarray(x)[None], state)

    def step():
      """A new function object each time: jax caches traces by function, and the two forms must each
      be traced."""
      fresh = lambda s, b: train.train_step(s, b)  # pylint: disable=unnecessary-lambda
      return jax.jit(jax.vmap(fresh, axis_name=train.AXIS))

    # Compiled ahead of time, so that the patched model is traced now and never again.
    with _conv_transpose_decoders():
      before = step().lower(state, data).compile()
    after = step().lower(state, data).compile()
    # Each decoder layer is one convolution forward and two backward in `before` and none in `after`:
    # proof that the two programs differ where they should.
    convs = {label: c.as_text().count(" convolution(") for label, c in (("before", before), ("after", after))}
    assert convs["before"] - convs["after"] == 3 * len(DECODERS[name]), convs
    losses = {}
    fns = {}
    for label, compiled in (("before", before), ("after", after)):
      losses[label] = float(compiled(state, data)[1]["loss"][0])  # warm-up, and a check
      fns[label] = steps_runner(compiled, state, data, steps)
    assert abs(losses["before"] - losses["after"]) <= 1e-4 * abs(losses["before"]), losses
    times = _alternate(fns, repeats)
    speed = {label: batch * steps / statistics.median(t) for label, t in times.items()}
    per_repeat = ", ".join(f"{b / a:.2f}" for b, a in zip(times["before"], times["after"]))
    print(f"| {name} | {speed['before']:.2f} | {speed['after']:.2f} | {_ratio(times):.2f}x | "
          f"{per_repeat} | {convs['before']}, {convs['after']} |", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=2, help="train steps per timing")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--patch", type=int, default=128)
  parser.add_argument("--models", default="unet,resunet")
  parser.add_argument("--skip_ops", action="store_true")
  parser.add_argument("--skip_steps", action="store_true")
  args = parser.parse_args()
  models = args.models.split(",")
  print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {os.cpu_count()} CPUs, {_load()}")
  if not args.skip_ops:
    bench_ops(models, args.batch, args.patch, args.repeats)
  if not args.skip_steps:
    bench_steps(models, args.batch, args.patch, args.steps, args.repeats)
  print(f"\nend: {_load()}")


if __name__ == "__main__":
  main()
