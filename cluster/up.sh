#!/usr/bin/env bash
# Bring the local fcn_dist stack up: Redis (AOF) + a Ray head with the dashboard + N fcn-workers.
#
#   bash cluster/up.sh [--workers N]        # idempotent: what already runs is kept
#   source .fcn/env                         # FCN_REDIS_URL, RAY_ADDRESS, FCN_DASHBOARD_URL, ...
#   bash cluster/add-node.sh                # a second Ray node on this machine (multi-node)
#   bash cluster/down.sh [--purge]          # stop everything this script started
#
# Settings (environment, defaults in cluster/lib.sh): FCN_STATE (.fcn), FCN_REDIS_PORT (6380:
# 6379 is often the distro's non-persistent Redis), FCN_RAY_PORT (6385), FCN_DASHBOARD_PORT
# (8265, bound to 127.0.0.1), FCN_METRICS_PORT (8090), FCN_WORKERS (1), FCN_HEAD_CPUS/GPUS,
# FCN_OBJECT_STORE_MB (1024), FCN_RAY_AUTH (token|disabled), FCN_WORKER_ARGS (extra flags).
# State: .fcn/redis (AOF data), .fcn/logs/*.log, .fcn/pids/*.pid, .fcn/env.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

while [ $# -gt 0 ]; do
  case $1 in
    --workers) FCN_WORKERS=$2; shift 2 ;;
    --no-workers) FCN_WORKERS=0; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) fcn_die "unknown option $1 (see --help)" ;;
  esac
done

[ -x "$FCN_BIN/ray" ] || fcn_die "no $FCN_BIN/ray: run bash cluster/setup.sh first (or set FCN_VENV)"
command -v redis-server >/dev/null || fcn_die "redis-server not found (apt-get install redis-server)"
mkdir -p "$FCN_STATE"/{redis,logs,pids}
PIDS=$FCN_STATE/pids LOGS=$FCN_STATE/logs

# --- Redis with AOF persistence in .fcn/redis -------------------------------------------------
if fcn_alive "$PIDS/redis.pid"; then
  redis-cli -p "$FCN_REDIS_PORT" ping >/dev/null 2>&1 || fcn_die "the stack's redis (pid \
$(cat "$PIDS/redis.pid")) does not answer on :$FCN_REDIS_PORT: run cluster/down.sh first"
  fcn_log "redis already running on :$FCN_REDIS_PORT (pid $(cat "$PIDS/redis.pid"))"
else
  fcn_port_busy "$FCN_REDIS_PORT" && fcn_die "port $FCN_REDIS_PORT is taken by a server this \
stack did not start; set FCN_REDIS_PORT to a free port (or point FCN_REDIS_URL at a persistent Redis)"
  # appendonly + fsync every second: a crash loses at most ~1 s of queue updates; no RDB snapshots.
  redis-server --port "$FCN_REDIS_PORT" --bind 127.0.0.1 --dir "$FCN_STATE/redis" \
    --appendonly yes --appendfsync everysec --save "" \
    --daemonize yes --pidfile "$PIDS/redis.pid" --logfile "$LOGS/redis.log"
  for _ in $(seq 50); do redis-cli -p "$FCN_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.2; done
  redis-cli -p "$FCN_REDIS_PORT" ping >/dev/null || fcn_die "redis did not start: see $LOGS/redis.log"
  fcn_log "redis on :$FCN_REDIS_PORT (AOF in $FCN_STATE/redis)"
fi

# --- Ray head with the dashboard and the metrics endpoint ------------------------------------
fcn_ray_env
if fcn_alive "$PIDS/ray-head.pid"; then
  fcn_log "ray head already running at 127.0.0.1:$FCN_RAY_PORT (pid $(cat "$PIDS/ray-head.pid"))"
else
  for p in "$FCN_RAY_PORT" "$FCN_DASHBOARD_PORT" "$FCN_METRICS_PORT"; do
    fcn_port_busy "$p" && fcn_die "port $p is taken; set FCN_RAY_PORT / FCN_DASHBOARD_PORT / FCN_METRICS_PORT"
  done
  if [ "$FCN_RAY_AUTH" = token ]; then
    # Ray 2.60 token auth: ~/.ray/auth_token (or $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH) is the key
    # to the dashboard API and to ray.init(address=...); created once, kept.
    "$FCN_BIN/ray" get-auth-token --generate >/dev/null 2>&1 || fcn_die "could not create a Ray auth token"
  fi
  fcn_stop_ray_dir "$FCN_RAY_TMP" 5   # leftovers of a killed stack, ours only
  args=(--head --block --port "$FCN_RAY_PORT" --temp-dir "$FCN_RAY_TMP"
        --include-dashboard=true --dashboard-host "$FCN_DASHBOARD_HOST" --dashboard-port "$FCN_DASHBOARD_PORT"
        --metrics-export-port "$FCN_METRICS_PORT"
        --dashboard-agent-listen-port "$(fcn_free_port)" --ray-client-server-port "$(fcn_free_port)"
        --object-store-memory $((FCN_OBJECT_STORE_MB * 1024 * 1024)) --disable-usage-stats)
  [ -n "$FCN_HEAD_CPUS" ] && args+=(--num-cpus "$FCN_HEAD_CPUS")
  [ -n "$FCN_HEAD_GPUS" ] && args+=(--num-gpus "$FCN_HEAD_GPUS")
  # --block keeps `ray start` in the foreground as the parent of this node's processes: its pid
  # (a process-group leader via setsid) is what down.sh stops — never a machine-wide `ray stop`.
  setsid nohup "$FCN_BIN/ray" start "${args[@]}" >"$LOGS/ray-head.log" 2>&1 </dev/null &
  echo $! >"$PIDS/ray-head.pid"
  for _ in $(seq 120); do
    curl -fsS "http://127.0.0.1:$FCN_DASHBOARD_PORT/api/gcs_healthz" >/dev/null 2>&1 && break
    fcn_alive "$PIDS/ray-head.pid" || fcn_die "ray head exited: see $LOGS/ray-head.log"
    sleep 0.5
  done
  curl -fsS "http://127.0.0.1:$FCN_DASHBOARD_PORT/api/gcs_healthz" >/dev/null 2>&1 \
    || fcn_die "dashboard did not come up on :$FCN_DASHBOARD_PORT: see $LOGS/ray-head.log"
  fcn_log "ray head at 127.0.0.1:$FCN_RAY_PORT, dashboard http://$FCN_DASHBOARD_HOST:$FCN_DASHBOARD_PORT"
fi

cat >"$FCN_STATE/env" <<ENV
# written by cluster/up.sh; source it to talk to the local stack
export FCN_REDIS_URL=redis://127.0.0.1:$FCN_REDIS_PORT/0
export RAY_ADDRESS=127.0.0.1:$FCN_RAY_PORT
export FCN_DASHBOARD_URL=http://$FCN_DASHBOARD_HOST:$FCN_DASHBOARD_PORT
export RAY_AUTH_MODE=$FCN_RAY_AUTH
export RAY_TRAIN_ENABLE_STATE_TRACKING=$RAY_TRAIN_ENABLE_STATE_TRACKING
export FCN_RAY_TMP=$FCN_RAY_TMP FCN_RAY_PORT=$FCN_RAY_PORT FCN_REDIS_PORT=$FCN_REDIS_PORT
export FCN_DASHBOARD_PORT=$FCN_DASHBOARD_PORT FCN_METRICS_PORT=$FCN_METRICS_PORT
ENV
. "$FCN_STATE/env"

# --- fcn-worker daemons ------------------------------------------------------------------------
# Ray: --ray-address (= RAY_ADDRESS); Redis: FCN_REDIS_URL (both exported above).
if [ "$FCN_WORKERS" -gt 0 ] && ! "$FCN_BIN/python" -c "import fcn_dist.cli.worker" 2>/dev/null; then
  fcn_log "warning: fcn_dist.cli.worker is not importable yet: no fcn-worker started"
  FCN_WORKERS=0
fi
for ((i = 1; i <= FCN_WORKERS; i++)); do
  if fcn_alive "$PIDS/worker-$i.pid"; then continue; fi
  # shellcheck disable=SC2086
  setsid nohup "$FCN_BIN/fcn-worker" --ray-address "$RAY_ADDRESS" ${FCN_WORKER_ARGS:-} >>"$LOGS/worker-$i.log" 2>&1 </dev/null &
  echo $! >"$PIDS/worker-$i.pid"
  fcn_log "fcn-worker $i: pid $! (log $LOGS/worker-$i.log)"
done

fcn_log "up. source $FCN_STATE/env; dashboard $FCN_DASHBOARD_URL (token: $FCN_BIN/ray get-auth-token);"
fcn_log "metrics http://127.0.0.1:$FCN_METRICS_PORT/metrics; stop with bash cluster/down.sh"
