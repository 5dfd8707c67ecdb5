"""landslide_jax vs PyTorch on the same machine, in one run: one command, one table.

    python benchmarks/speed_table.py [--batches=4,32] [--patches=32,64,128] [--models=unet,resunet]
                                     [--steps=5] [--predict_km2=4] [--predict_batches=4,16,64]

Prints, for each model x patch x batch: train-step throughput (patches/s) of the product's pmapped
step and of a PyTorch eager twin (benchmarks/torch_models.py, same parameter count, asserted), their
ratio JAX/PyTorch, the step's FLOPs (XLA cost analysis of the compiled step, counted once) and the
achieved GFLOP/s against a measured peak (a large float32 matmul). Then prediction's model part alone
(the product's `evaluate.Run.predict` on in-memory windows against the PyTorch twin, several windows per
call), whole-scene prediction
(km^2/s at 10 m, U-Net at 128 px, 50% overlap, blended) against the same sliding window in PyTorch, the
input pipeline's batches/s against the train step, and the process's peak memory.
Install the peer first: pip install -r benchmarks/requirements.txt (torch==2.13.0 is the CPU build).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import torch  # pylint: disable=wrong-import-position
import torch_models  # pylint: disable=wrong-import-position

from landslide_jax import input_pipeline, train  # pylint: disable=wrong-import-position
from landslide_jax.models import create_model  # pylint: disable=wrong-import-position

CHANNELS = 5


def _jax_batch(batch: int, patch: int, devices: int) -> dict:
  rng = np.random.default_rng(0)
  per = batch // devices
  return {"image": rng.normal(size=(devices, per, patch, patch, CHANNELS)).astype(np.float32),
          "mask": (rng.random((devices, per, patch, patch, 1)) < 0.05).astype(np.uint8),
          "valid": np.ones((devices, per, patch, patch, 1), np.uint8),
          "weight": np.ones((devices, per, patch, patch, 1), np.float32)}


def jax_train(name: str, patch: int, batch: int, steps: int) -> tuple[float, float, int]:
  """(seconds per step, FLOPs per step, parameter count) of the product's pmapped train step."""
  config = train.TrainConfig(model=name, patch=patch, batch_size=batch)
  model = create_model(name, **({"axis_name": train.AXIS} if name == "resunet" else {}))
  state = train.create_train_state(jax.random.key(0), model, (1, patch, patch, CHANNELS), config)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  step = jax.pmap(train.train_step, axis_name=train.AXIS)
  data = jax.device_put(_jax_batch(batch, patch, jax.local_device_count()))
  replicated = train.replicate(state)
  flops = float("nan")
  try:
    single = jax.jit(jax.vmap(train.train_step, axis_name=train.AXIS))
    one = jax.tree.map(lambda x: jnp.asarray(x)[None], state)
    cost = single.lower(one, _jax_batch(batch, patch, 1)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
  except Exception:  # pylint: disable=broad-except  (cost analysis is best effort per backend)
    pass
  replicated, out = step(replicated, data)  # compile
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    replicated, out = step(replicated, data)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps, flops, params


def torch_train(name: str, patch: int, batch: int, steps: int) -> tuple[float, int]:
  """(seconds per step, parameter count) of the PyTorch eager twin: same loss, Adam, batch."""
  model = torch_models.MODELS[name](CHANNELS).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.normal(size=(batch, CHANNELS, patch, patch)).astype(np.float32))
  y = torch.from_numpy((rng.random((batch, 1, patch, patch)) < 0.05).astype(np.float32))
  loss_fn = torch.nn.BCEWithLogitsLoss()

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
  step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - start) / steps, torch_models.parameter_count(model)


def peak_gflops() -> float:
  """A measured float32 matmul rate (GFLOP/s) as the machine's practical peak."""
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(5):
    f(a).block_until_ready()
  return 2 * n ** 3 * 5 / (time.perf_counter() - start) / 1e9


class _InitRun:
  """A `predict` run from freshly initialised U-Net weights (speed does not depend on training)."""

  def __init__(self, patch: int):
    from landslide_jax.data import normalization  # pylint: disable=import-outside-toplevel
    self.config = train.TrainConfig(model="unet", patch=patch)
    self.stats = normalization.ChannelStats(self.config.channels, (0.0,) * CHANNELS, (1.0,) * CHANNELS, 1)
    state = train.create_train_state(jax.random.key(0), create_model("unet"),
                                     (1, patch, patch, CHANNELS), self.config)
    self._fn = jax.jit(lambda x: jax.nn.sigmoid(state.apply_fn({"params": state.params}, x)[..., 0]))

  def predict(self, images):
    return np.asarray(self._fn(jnp.asarray(images)))


def prediction(km2: float, patch: int = 128) -> tuple[float, float]:
  """(JAX km^2/s, PyTorch km^2/s) for one demo scene of about `km2` at 10 m, 50% overlap, blended."""
  import tempfile  # pylint: disable=import-outside-toplevel
  # Imported here: prediction needs rasterio, which a bare accelerator image may lack.
  from landslide_jax import predict  # pylint: disable=import-outside-toplevel
  from landslide_jax.data import demo, scene as scene_lib, site_inputs  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    site = demo.write_demo_site("china", tmp, scale=km2 / 64.0)
    inputs = site_inputs.find_site_inputs(site, require_inventory=False)
    run = _InitRun(patch)
    predict.predict_probabilities(run, inputs, f"{tmp}/warm", block=1024)  # compile
    start = time.perf_counter()
    out = predict.predict_probabilities(run, inputs, f"{tmp}/out", block=1024)
    t_jax = time.perf_counter() - start
    area = out["grid"].shape[0] * out["grid"].shape[1] * 100 / 1e6
    # PyTorch: the same windows, weights and normalisation on the same channels, all in memory.
    image, valid, grid = scene_lib.load_channels(inputs, run.config.channels)
    model = torch_models.UNet(CHANNELS).eval()
    start = time.perf_counter()
    x = np.moveaxis(image, 0, -1) * valid[..., None]
    weights = predict.blend_weights(patch)
    stride = patch // 2
    rows = predict.window_origins(grid.shape[0], patch, stride)
    cols = predict.window_origins(grid.shape[1], patch, stride)
    total = np.zeros(grid.shape, np.float32)
    weight = np.zeros(grid.shape, np.float32)
    origins = [(r, c) for r in rows for c in cols]
    with torch.inference_mode():
      for i in range(0, len(origins), 16):
        chunk = origins[i:i + 16]
        batch = torch.from_numpy(np.stack([x[r:r + patch, c:c + patch] for r, c in chunk])
                                 ).permute(0, 3, 1, 2).contiguous()
        probs = torch.sigmoid(model(batch))[:, 0].numpy()
        for (r, c), p in zip(chunk, probs):
          total[r:r + patch, c:c + patch] += p * weights
          weight[r:r + patch, c:c + patch] += weights
    _ = total / weight
    t_torch = time.perf_counter() - start
  return area / t_jax, area / t_torch


def predict_model_part(name: str, patch: int, batch: int, windows: int = 64) -> tuple[float, float]:
  """(JAX windows/s, PyTorch windows/s) of the model alone on the same in-memory windows: the product's
  `evaluate.Run.predict` (what `launch.predict` calls per batch of windows: jitted forward + sigmoid)
  against the PyTorch twin in `inference_mode`, `batch` windows per call, no I/O on either side."""
  from landslide_jax import evaluate  # pylint: disable=import-outside-toplevel
  from landslide_jax.data import normalization  # pylint: disable=import-outside-toplevel
  config = train.TrainConfig(model=name, patch=patch)
  model = create_model(name)
  state = train.create_train_state(jax.random.key(0), model, (1, patch, patch, CHANNELS), config)
  stats = normalization.ChannelStats(config.channels, (0.0,) * CHANNELS, (1.0,) * CHANNELS, 1)
  run = evaluate.Run(Path("."), config, stats, state, 0)
  images = np.random.default_rng(0).normal(size=(windows, patch, patch, CHANNELS)).astype(np.float32)
  chunks = [images[i:i + batch] for i in range(0, windows, batch)]
  run.predict(chunks[0])  # compile
  start = time.perf_counter()
  for chunk in chunks:
    run.predict(chunk)
  t_jax = time.perf_counter() - start
  twin = torch_models.MODELS[name](CHANNELS).eval()
  tensors = [torch.from_numpy(c).permute(0, 3, 1, 2).contiguous() for c in chunks]
  with torch.inference_mode():
    torch.sigmoid(twin(tensors[0]))  # warm-up, as the JAX side's compilation
    start = time.perf_counter()
    for tensor in tensors:
      torch.sigmoid(twin(tensor))[:, 0].numpy()
    t_torch = time.perf_counter() - start
  return windows / t_jax, windows / t_torch


def pipeline_rate(patch: int, batch: int, n: int = 512) -> float:
  """Batches per second delivered by input_pipeline.batches from memory (shuffled)."""
  rng = np.random.default_rng(0)
  data = input_pipeline.SplitData(
      rng.normal(size=(n, patch, patch, CHANNELS)).astype(np.float32),
      np.zeros((n, patch, patch, 1), np.uint8), np.ones((n, patch, patch, 1), np.uint8),
      np.zeros(n, np.int32), np.zeros(n, np.int32), np.array(["x"] * n))
  start = time.perf_counter()
  count = sum(1 for _ in input_pipeline.batches(data, batch, jax.local_device_count(), shuffle=True))
  return count / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="4,32")
  parser.add_argument("--patches", default="32,64,128", help="train-step table; empty to skip it")
  parser.add_argument("--models", default="unet,resunet")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--predict_km2", type=float, default=4.0)
  parser.add_argument("--predict_batches", default="4,16,64",
                      help="windows per call of the model-part comparison; empty to skip")
  args = parser.parse_args()
  torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
  print(f"# {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind} "
        f"x{jax.local_device_count()}, jax {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {time.strftime('%Y-%m-%d')}")
  peak = peak_gflops()
  print(f"# measured float32 matmul peak: {peak:.1f} GFLOP/s")
  print("| model | patch | batch | JAX patches/s | PyTorch patches/s | JAX/PyTorch | GFLOP/step | "
        "JAX GFLOP/s | % of peak | pipeline batches/s per step time |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for name in args.models.split(","):
    for patch in (map(int, args.patches.split(",")) if args.patches else ()):
      for batch in map(int, args.batches.split(",")):
        t_jax, flops, n_jax = jax_train(name, patch, batch, args.steps)
        t_torch, n_torch = torch_train(name, patch, batch, args.steps)
        assert n_jax == n_torch, f"{name}: parameter counts differ ({n_jax} vs {n_torch})"
        gflops = flops / 1e9
        pipe = pipeline_rate(patch, batch) * t_jax
        print(f"| {name} | {patch} | {batch} | {batch / t_jax:.2f} | {batch / t_torch:.2f} | "
              f"{t_torch / t_jax:.2f} | {gflops:.2f} | {gflops / t_jax:.1f} | "
              f"{100 * gflops / t_jax / peak:.0f}% | {pipe:.0f}x |", flush=True)
  if args.predict_batches:
    print("\nprediction, model part only (the same in-memory windows, no I/O), windows/s:")
    print("| model | patch | windows per call | JAX | PyTorch | JAX/PyTorch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
      for batch in map(int, args.predict_batches.split(",")):
        jax_rate, torch_rate = predict_model_part(name, 128, batch)
        print(f"| {name} | 128 | {batch} | {jax_rate:.2f} | {torch_rate:.2f} | {jax_rate / torch_rate:.2f} |",
              flush=True)
  if args.predict_km2 > 0:
    jax_rate, torch_rate = prediction(args.predict_km2)
    print(f"\nprediction (U-Net, 128 px, 50% overlap): JAX {jax_rate:.3f} km2/s, PyTorch "
          f"{torch_rate:.3f} km2/s, ratio {jax_rate / torch_rate:.2f}")
  print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
  main()
