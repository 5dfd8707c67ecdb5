"""Where a train step's time goes, per kind of operation, from XLA's own per-kernel trace.

    python benchmarks/step_profile.py [--models=unet,resunet] [--patches=32,64,128] [--batches=4,32]
                                      [--steps=3] [--forms=before,after] [--top=0]

For each model x patch x batch: the product's pmapped `train.train_step` (1 device) is compiled, run
once, then traced for `--steps` steps with `jax.profiler.trace`. XLA:CPU records one event per kernel
(thunk) of the compiled program, named after its HLO instruction; each instruction is classified from
the optimised HLO (`compile().as_text()`): what it computes (convolution window, dot, reduce-window,
concatenate) and the JAX name stack in its metadata (`jvp(...)` forward, `transpose(jvp(...))` backward,
`BatchNorm`, the optimiser's update outside both). The table gives each kind's share of the kernels'
summed time (CPU time over XLA's threads) and its milliseconds per step; the last columns are the step's
wall time and the kernels' time over it (above 1: kernels ran in parallel on several threads).

`--forms`: "after" is the models as they are; "before" traces them with the CPU's fast forms switched
off (`layers.UPCONV_IMPL_BY_BACKEND` and `layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS` emptied): XLA's
transposed convolutions and kernel gradients, the step as it was before issue 11. "cpu_forms" applies the
CPU's forms on any backend: on an accelerator, "after" (XLA's forms there) against "cpu_forms" says which
to put in those tables for it (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from landslide_jax import train  # pylint: disable=wrong-import-position
from landslide_jax.models import create_model, layers  # pylint: disable=wrong-import-position

CHANNELS = 5
# Columns of the table, in order; `classify` returns one of these.
KINDS = ("3x3 conv fwd", "3x3 conv bwd (input)", "conv bwd (kernel)", "1x1 conv fwd+bwd",
         "2x2 up-conv fwd+bwd", "max pool fwd", "max pool bwd", "BatchNorm fwd+bwd", "ReLU fwd+bwd",
         "concat / split", "loss", "Adam update", "all-reduce", "layout copies", "other")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_CALLS = re.compile(r"(?:calls|to_apply|select|scatter)=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WINDOW = re.compile(r"window=\{size=(\d+)x(\d+)")


def _opcode(rest: str) -> str:
  """The opcode of an HLO instruction line after `name = `: skip the (possibly tuple) type."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        rest = rest[i + 1:].lstrip()
        break
  else:
    rest = rest.split(" ", 1)[1] if " " in rest else rest
  return rest.split("(", 1)[0].strip()


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(computations, entry): computation -> [(name, opcode, line)], and the entry's instruction lines."""
  computations: dict[str, list] = {}
  entry: dict[str, tuple[str, str]] = {}
  current, is_entry = None, False
  for line in text.splitlines():
    if not line.startswith(" ") and (match := _COMPUTATION.match(line)):
      current, is_entry = match[1], line.startswith("ENTRY")
      computations[current] = []
      continue
    if current is None or not (match := _INSTRUCTION.match(line)):
      continue
    name = match[1]
    opcode = _opcode(line[match.end():])
    computations[current].append((name, opcode, line))
    if is_entry:
      entry[name] = (opcode, line)
  return computations, entry


def _contents(line: str, computations: dict, seen: set | None = None) -> list[tuple[str, str]]:
  """(opcode, line) of an instruction and of everything in the computations it calls."""
  seen = set() if seen is None else seen
  out = [(_opcode(line[_INSTRUCTION.match(line).end():]), line)]
  for called in _CALLS.findall(line):
    if called in seen or called not in computations:
      continue
    seen.add(called)
    for _, _, inner in computations[called]:
      out.extend(_contents(inner, computations, seen))
  return out


def classify(line: str, computations: dict) -> str | None:
  """The kind (one of KINDS) of a top-level instruction; None when it has no name stack to go by."""
  contents = _contents(line, computations)
  opcodes = {op for op, _ in contents}
  names = " ".join(n for _, inner in contents for n in _OP_NAME.findall(inner))
  backward = "transpose(" in names
  if "convolution" in opcodes:
    conv = next(inner for op, inner in contents if op == "convolution")
    window = _WINDOW.search(conv)
    size = (int(window[1]), int(window[2])) if window else (1, 1)
    if "ConvTranspose" in names:
      return "2x2 up-conv fwd+bwd"
    if size == (1, 1):
      return "1x1 conv fwd+bwd"
    if size != (3, 3):  # a kernel gradient convolves the input with the output gradient
      return "conv bwd (kernel)"
    return "3x3 conv bwd (input)" if backward else "3x3 conv fwd"
  if "dot" in opcodes:
    return "2x2 up-conv fwd+bwd" if "ConvTranspose" in names else "other"
  if "reverse" in opcodes:  # a kernel flipped (and transposed) for an input gradient
    return "2x2 up-conv fwd+bwd" if "ConvTranspose" in names else "3x3 conv bwd (input)"
  if "select-and-scatter" in opcodes or ("select_and_scatter" in names):
    return "max pool bwd"
  if "reduce-window" in opcodes:
    return "max pool bwd" if backward else "max pool fwd"
  if "all-reduce" in opcodes:
    return "all-reduce"
  if not names:
    return None
  if "BatchNorm" in names:
    return "BatchNorm fwd+bwd"
  if "concatenate" in opcodes or "/concatenate" in names or "/split" in names:
    return "concat / split"
  if "relu" in names or "select_n" in names or "/gt" in names:
    return "ReLU fwd+bwd"
  if "log_sigmoid" in names or "softplus" in names:
    return "loss"
  if "jvp(" not in names and "transpose(" not in names:
    return "Adam update"
  if opcodes <= {"copy", "transpose", "bitcast", "fusion", "parameter"}:
    return "layout copies"
  return "other"


def classify_all(text: str) -> dict[str, str]:
  """Kind of every top-level instruction. Those without a name stack (the iotas feeding max pooling's
  index reduce-window, copies) take the kind of the first classified instruction that uses them."""
  computations, entry = parse_hlo(text)
  kinds = {name: classify(line, computations) for name, (_, line) in entry.items()}
  users: dict[str, list[str]] = collections.defaultdict(list)
  for name, (_, line) in entry.items():
    for operand in re.findall(r"%([\w.\-]+)", line.split("=", 1)[1]):
      users[operand].append(name)
  for _ in range(3):  # chains of unnamed instructions, a few deep
    for name, kind in list(kinds.items()):
      if kind is None:
        kinds[name] = next((kinds[u] for u in users.get(name, []) if kinds.get(u)), None)
  opcode_of = {name: op for name, (op, _) in entry.items()}
  return {name: kind or ("layout copies" if "copy" in name or "transpose" in name
                         else "other") for name, kind in kinds.items() if opcode_of[name] != "parameter"}


@contextlib.contextmanager
def _form(form: str):
  """Within: the models trace in `form` ("after": as they are; "before": no CPU fast forms;
  "cpu_forms": the CPU's fast forms on whatever backend runs, to choose the forms of an accelerator)."""
  tables = (layers.UPCONV_IMPL_BY_BACKEND, layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS)
  saved = [dict(t) for t in tables]
  if form == "before":
    for table in tables:
      table.clear()
  elif form == "cpu_forms":
    backend = jax.default_backend()
    layers.UPCONV_IMPL_BY_BACKEND[backend] = saved[0]["cpu"]
    layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS[backend] = saved[1]["cpu"]
  try:
    yield
  finally:
    for table, values in zip(tables, saved):
      table.clear()
      table.update(values)


def _batch(batch: int, patch: int) -> dict:
  rng = np.random.default_rng(0)
  shape = (1, batch, patch, patch)
  return {"image": rng.normal(size=(*shape, CHANNELS)).astype(np.float32),
          "mask": (rng.random((*shape, 1)) < 0.05).astype(np.uint8),
          "valid": np.ones((*shape, 1), np.uint8), "weight": np.ones((*shape, 1), np.float32)}


def profile_step(name: str, patch: int, batch: int, steps: int, top: int = 0, form: str = "after"
                 ) -> tuple[dict[str, float], float, float]:
  """(kind -> kernel ms per step, wall ms per step, summed kernel ms per step) of one configuration;
  prints the `top` most expensive kernels with their kind."""
  config = train.TrainConfig(model=name, patch=patch, batch_size=batch)
  model = create_model(name, **({"axis_name": train.AXIS} if name == "resunet" else {}))
  state = train.create_train_state(jax.random.key(0), model, (1, patch, patch, CHANNELS), config)
  fresh = lambda s, b: train.train_step(s, b)  # pylint: disable=unnecessary-lambda  (traced per form)
  replicated = train.replicate(state)
  data = jax.device_put(_batch(batch, patch))
  with _form(form):
    step = jax.pmap(fresh, axis_name=train.AXIS).lower(replicated, data).compile()
  kinds = classify_all(step.as_text())
  replicated, out = step(replicated, data)
  jax.block_until_ready(out)
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder):
      start = time.perf_counter()
      for _ in range(steps):
        replicated, out = step(replicated, data)
      jax.block_until_ready(out)
      wall = (time.perf_counter() - start) / steps
    trace = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)
    profile = jax.profiler.ProfileData.from_file(trace[0])
  per_kind: dict[str, float] = collections.defaultdict(float)
  per_kernel: dict[str, float] = collections.defaultdict(float)
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        kind = kinds.get(event.name)
        if kind is not None:
          per_kind[kind] += event.duration_ns / 1e6 / steps
          per_kernel[event.name] += event.duration_ns / 1e6 / steps
  for kernel, ms in sorted(per_kernel.items(), key=lambda item: -item[1])[:top]:
    print(f"#   {ms:8.1f} ms  {kinds[kernel]:22s} {kernel}", file=sys.stderr)
  return dict(per_kind), wall * 1e3, sum(per_kind.values())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="unet,resunet")
  parser.add_argument("--patches", default="32,64,128")
  parser.add_argument("--batches", default="4,32")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--top", type=int, default=0, help="Also list the N costliest kernels (stderr).")
  parser.add_argument("--forms", default="before,after")
  args = parser.parse_args()
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].device_kind} x{jax.local_device_count()}, jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}")
  print("# share of the step's summed kernel time (ms per step in brackets)")
  print("| model | patch | batch | form | " + " | ".join(KINDS) + " | wall ms/step | kernel ms / wall |")
  print("|---|---:|---:|---|" + "---:|" * (len(KINDS) + 2))
  for name in args.models.split(","):
    for patch in map(int, args.patches.split(",")):
      for batch in map(int, args.batches.split(",")):
        for form in args.forms.split(","):
          per_kind, wall, total = profile_step(name, patch, batch, args.steps, args.top, form)
          cells = [f"{100 * per_kind.get(k, 0) / total:.0f}% ({per_kind.get(k, 0):.0f})" for k in KINDS]
          print(f"| {name} | {patch} | {batch} | {form} | " + " | ".join(cells) +
                f" | {wall:.0f} | {total / wall:.2f} |", flush=True)
  print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
