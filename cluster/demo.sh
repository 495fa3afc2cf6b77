#!/usr/bin/env bash
# The main job, end to end, on the embedded offline default (synthetic data, CPU):
#   set up the venv -> the local stack (cluster/up.sh: Redis persisted with AOF in .fcn/redis,
#   a Ray head with its dashboard on http://127.0.0.1:8265) -> synthetic shards ->
#   fcn-submit --variant all -> fcn-worker --until-empty -> fcn-results compare + report.
# Environment: FCN_STORE (default ./results), FCN_DATA (default ./data), DEMO_SPEC (default
# jobs/smoke.yaml), DEMO_KEEP=1 leaves the stack running afterwards (cluster/down.sh stops it).
# A stack that was already up (cluster/up.sh) is used as it is and left running.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$(date +%s)
bash cluster/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
export FCN_STORE=${FCN_STORE:-$ROOT/results} FCN_DATA=${FCN_DATA:-$ROOT/data}
SPEC=${DEMO_SPEC:-jobs/smoke.yaml}

WAS_UP=0
[ -f .fcn/pids/ray-head.pid ] && kill -0 "$(cat .fcn/pids/ray-head.pid)" 2>/dev/null && WAS_UP=1
cleanup() {
  if [ "$WAS_UP" = 0 ] && [ "${DEMO_KEEP:-0}" != 1 ]; then bash cluster/down.sh >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
if [ "$WAS_UP" = 0 ]; then
  # a port of the stack's defaults already taken (another Ray on this machine): use a free one
  free_port() { python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
  busy() { python -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', int(sys.argv[1]))) != 0)" "$1"; }
  for var in FCN_RAY_PORT:6385 FCN_DASHBOARD_PORT:8265 FCN_METRICS_PORT:8090; do
    name=${var%%:*}; port=${!name:-${var##*:}}
    if busy "$port"; then export "$name=$(free_port)"; echo "[demo] port $port is taken: $name=${!name}"; fi
  done
fi
FCN_WORKERS=0 bash cluster/up.sh
# shellcheck disable=SC1091
source .fcn/env            # FCN_REDIS_URL, RAY_ADDRESS, FCN_DASHBOARD_URL, RAY_AUTH_MODE
echo "[demo] Redis $FCN_REDIS_URL (AOF in .fcn/redis); Ray dashboard $FCN_DASHBOARD_URL"

if [ -f "$FCN_DATA/synthetic/manifest.json" ]; then
  echo "[demo] synthetic shards already in $FCN_DATA/synthetic"
else
  echo "[demo] preparing synthetic shards in $FCN_DATA/synthetic"
  fcn-data prepare synthetic --out "$FCN_DATA/synthetic" --count 240 --size 64x64
fi

echo "[demo] fcn-submit --spec $SPEC --variant all"
fcn-submit --spec "$SPEC" --variant all
echo "[demo] fcn-worker --until-empty (watch it in the dashboard: $FCN_DASHBOARD_URL)"
fcn-worker --ray-address "$RAY_ADDRESS" --until-empty

echo "[demo] comparison of the variants (Parquet store $FCN_STORE)"
fcn-results compare --dataset synthetic
fcn-results plot --out "$FCN_STORE/report"
fcn-jobs list
echo "[demo] report: $FCN_STORE/report/report.html   ($(( $(date +%s) - T0 )) s in all)"
