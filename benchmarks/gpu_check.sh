#!/usr/bin/env bash
# One prepared accelerator check (target: under 8 minutes on one H100): the train-step table against
# PyTorch at batch 4 and 32, on the GPU. Run from the repository root on a machine with jax[cuda] and
# torch (the workplace's GPU image has both). Prediction is skipped: it needs rasterio, which that image
# lacks. NOT YET RUN ON A GPU: the task that wrote it had no accelerator; see benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import jax; print(jax.devices())"
# Scanned steps are the accelerator default (auto = 32 per dispatch); the table measures single steps.
timeout 450 python3 benchmarks/speed_table.py --steps=20 --predict_km2=0 "$@"
# Which forms of the up-convolution and kernel gradient this backend should use (layers.py tables): XLA's
# ("after" keeps them off accelerators) against the CPU's matmul forms, whole step, 128 px.
timeout 240 python3 benchmarks/step_profile.py --forms=after,cpu_forms --patches=128 --batches=4,32 --steps=5
