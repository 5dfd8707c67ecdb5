"""Where the train step's time goes on CPU: one 3x3 convolution (forward + backward), XLA vs PyTorch.

    python benchmarks/conv_bench.py

Convolutions are >98% of both models' FLOPs (the rest is elementwise), so the ratio of a single conv's
speed between XLA:CPU and PyTorch (oneDNN) predicts most of the train-step ratio in speed_table.py.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

SHAPES = [  # (batch, size, cin, cout): U-Net's first block at 32/128 px, and its deepest level.
    (4, 32, 32, 32), (32, 32, 32, 32), (4, 128, 32, 32), (4, 8, 512, 512), (4, 16, 256, 256)]


def _time(fn, repeats: int = 5) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main() -> None:
  torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
  print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}")
  print(f"{'batch,size,cin,cout':<22} {'GFLOP':>6} {'XLA ms':>8} {'torch ms':>9} {'XLA/torch speed':>16}")
  for batch, size, cin, cout in SHAPES:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, cin)).astype(np.float32)
    w = rng.normal(size=(3, 3, cin, cout)).astype(np.float32) * 0.1

    def loss(w_, x_):
      y = jax.lax.conv_general_dilated(x_, w_, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.sum(y * y)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    t_xla = _time(lambda: jax.block_until_ready(grad(wj, xj)))

    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)

    def torch_step():
      xt.grad = wt.grad = None
      y = torch.nn.functional.conv2d(xt, wt, padding=1)
      (y * y).sum().backward()
    t_torch = _time(torch_step)
    gflop = 3 * 2 * batch * size * size * cin * cout * 9 / 1e9  # forward + two backward convs
    print(f"{f'{batch},{size},{cin},{cout}':<22} {gflop:>6.2f} {1e3 * t_xla:>8.2f} {1e3 * t_torch:>9.2f} "
          f"{t_torch / t_xla:>16.2f}")


if __name__ == "__main__":
  main()
