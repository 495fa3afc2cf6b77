# Shared settings and helpers for cluster/up.sh, down.sh, add-node.sh (source it; not executable).
# Every setting is an environment variable with a default; up.sh writes the resolved values to
# $FCN_STATE/env so the other scripts (and users: `source .fcn/env`) see the same stack.

FCN_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FCN_STATE=${FCN_STATE:-$FCN_REPO/.fcn}                 # pids/, logs/, redis/ (AOF), env
[ -f "$FCN_STATE/env" ] && . "$FCN_STATE/env"          # values of the running stack win

FCN_VENV=${FCN_VENV:-$FCN_REPO/.venv}
FCN_BIN=${FCN_BIN:-$FCN_VENV/bin}
# Ray's unix sockets live under the temp dir and must stay under ~100 characters: keep it short.
FCN_RAY_TMP=${FCN_RAY_TMP:-/tmp/fcn-ray-$(printf %s "$FCN_STATE" | cksum | cut -d' ' -f1)}
FCN_RAY_PORT=${FCN_RAY_PORT:-6385}                     # GCS port (Ray's default 6379 = Redis's)
FCN_DASHBOARD_HOST=${FCN_DASHBOARD_HOST:-127.0.0.1}
FCN_DASHBOARD_PORT=${FCN_DASHBOARD_PORT:-8265}
FCN_METRICS_PORT=${FCN_METRICS_PORT:-8090}             # Prometheus text at :PORT/metrics
FCN_HEAD_CPUS=${FCN_HEAD_CPUS:-}                       # empty: Ray detects
FCN_HEAD_GPUS=${FCN_HEAD_GPUS:-}
FCN_REDIS_PORT=${FCN_REDIS_PORT:-6380}                 # 6379 is often a non-persistent server
FCN_WORKERS=${FCN_WORKERS:-1}                          # fcn-worker daemons to start
FCN_RAY_AUTH=${FCN_RAY_AUTH:-token}                    # token | disabled (RAY_AUTH_MODE)

fcn_log() { printf '[fcn-cluster] %s\n' "$*" >&2; }
fcn_die() { fcn_log "error: $*"; exit 1; }

# fcn_free_port: print a free TCP port on 127.0.0.1
fcn_free_port() {
  "$FCN_BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# fcn_port_busy PORT: true if something listens on 127.0.0.1:PORT
fcn_port_busy() {
  "$FCN_BIN/python" - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

# fcn_alive PIDFILE: true if the pid in PIDFILE is a running process
fcn_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# fcn_stop_pid PIDFILE [GRACE_S]: SIGTERM the process group led by the pid, SIGKILL after GRACE_S
fcn_stop_pid() {
  local pidfile=$1 grace=${2:-20} pid i
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 2; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; }
  fi
  rm -f "$pidfile"
}

# fcn_ray_pids DIR: pids of the Ray processes whose command line names temp dir DIR (ours only)
fcn_ray_pids() {
  # the dir goes through the environment, not argv, so this awk does not match itself
  ps -eo pid=,args= | FCN_D="$1" awk 'BEGIN { d = ENVIRON["FCN_D"] }
    index($0, d "/") || index($0, d " ") || substr($0, length($0) - length(d) + 1) == d {print $1}'
}

# fcn_stop_ray_dir DIR [GRACE_S]: stop exactly the Ray processes of temp dir DIR (never `ray stop`,
# which would stop every Ray instance on the machine)
fcn_stop_ray_dir() {
  local dir=$1 grace=${2:-10} pids i
  pids=$(fcn_ray_pids "$dir")
  [ -n "$pids" ] || return 0
  kill -TERM $pids 2>/dev/null || true
  for ((i = 0; i < grace * 2; i++)); do
    pids=$(fcn_ray_pids "$dir"); [ -n "$pids" ] || return 0; sleep 0.5
  done
  kill -KILL $pids 2>/dev/null || true
}

# fcn_ray_env: the environment a Ray process / driver of this stack needs
fcn_ray_env() {
  export RAY_AUTH_MODE=$FCN_RAY_AUTH
  export RAY_TRAIN_ENABLE_STATE_TRACKING=${RAY_TRAIN_ENABLE_STATE_TRACKING:-1}
}

FCN_OBJECT_STORE_MB=${FCN_OBJECT_STORE_MB:-1024}      # per Ray node of the local stack
FCN_STOP_GRACE=${FCN_STOP_GRACE:-60}                   # seconds a worker gets to checkpoint+release
