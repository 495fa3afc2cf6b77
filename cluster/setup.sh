#!/usr/bin/env bash
# Create ./.venv and install fcn_dist with its test extras. Idempotent: re-running is cheap (the
# install is skipped while pyproject.toml is unchanged since the last one).
# torch/torchvision are pinned (torch==2.14.1, torchvision==0.29.1) in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.fcn-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import fcn_dist" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
