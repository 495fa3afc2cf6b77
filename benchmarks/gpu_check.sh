#!/usr/bin/env bash
# The GPU check (about 1-3 minutes on a modern GPU, 8 at most): FCN-8s VGG16 at 512x512 trained
# for a few hundred steps with the service's own step (bf16 autocast, channels_last, DDP over
# NCCL with world size 1) on synthetic shards, then inference; prints JSON with training and
# inference images/s and MFU against a bf16 matmul peak measured in the same run. Needs only
# Python with torch, torchvision, torchmetrics, pyarrow, click and pyyaml (no Ray, no Redis).
#   bash benchmarks/gpu_check.sh [--steps 300] [--size 512] [--batch 8] [--json out.json]
#   bash benchmarks/gpu_check.sh --dry-run        # toy sizes on any device (the tests' CPU run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec timeout 480 "$PY" -m fcn_dist.bench.gpu_check "$@"
