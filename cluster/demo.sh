#!/usr/bin/env bash
# The main job, end to end, on the embedded offline default (synthetic data, CPU):
#   set up the venv -> Redis (started with AOF in .fcn/redis if none answers) -> local Ray with
#   its dashboard -> synthetic shards -> fcn-submit --variant all -> fcn-worker --until-empty ->
#   fcn-results compare + report.
# Environment: FCN_REDIS_URL, FCN_STORE (default ./results), FCN_DATA (default ./data),
# DEMO_SPEC (default jobs/smoke.yaml), DEMO_KEEP_RAY=1 keeps the Ray head running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash cluster/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
export FCN_STORE=${FCN_STORE:-$ROOT/results} FCN_DATA=${FCN_DATA:-$ROOT/data}
SPEC=${DEMO_SPEC:-jobs/smoke.yaml}
mkdir -p .fcn

# Redis: reuse a server that answers, else start one persisted with AOF in .fcn/redis.
export FCN_REDIS_URL=${FCN_REDIS_URL:-redis://127.0.0.1:6379/0}
if ! python -c "import redis,os; redis.Redis.from_url(os.environ['FCN_REDIS_URL'], socket_connect_timeout=1).ping()" 2>/dev/null; then
  PORT=$(python -c "import os,urllib.parse as u; print(u.urlparse(os.environ['FCN_REDIS_URL']).port or 6379)")
  mkdir -p .fcn/redis
  echo "[demo] starting redis-server on port $PORT (AOF in .fcn/redis)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$PORT" --dir "$ROOT/.fcn/redis" \
    --appendonly yes --appendfsync everysec --logfile "$ROOT/.fcn/redis/redis.log"
  for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# A local Ray instance with its dashboard (reused if one is already up).
STARTED_RAY=0
if ! ray status >/dev/null 2>&1; then
  echo "[demo] starting a local Ray head with the dashboard on http://127.0.0.1:8265"
  ray start --head --num-cpus 4 --include-dashboard=true --dashboard-host 127.0.0.1 \
    --dashboard-port 8265 --disable-usage-stats >/dev/null
  STARTED_RAY=1
fi
cleanup() { if [ "$STARTED_RAY" = 1 ] && [ "${DEMO_KEEP_RAY:-0}" != 1 ]; then ray stop >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

echo "[demo] preparing synthetic shards in $FCN_DATA/synthetic"
fcn-data prepare synthetic --out "$FCN_DATA/synthetic"

echo "[demo] submitting $SPEC, all variants"
fcn-submit --spec "$SPEC" --variant all
echo "[demo] running a worker until the queue is empty"
fcn-worker --ray-address auto --until-empty

echo "[demo] comparison (from the Parquet store $FCN_STORE)"
fcn-results compare --dataset synthetic
fcn-results plot --out "$FCN_STORE/report"
echo "[demo] report: $FCN_STORE/report/report.html"
