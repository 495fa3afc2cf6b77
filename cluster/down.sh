#!/usr/bin/env bash
# Stop the local stack that cluster/up.sh (and add-node.sh) started, and only that:
# fcn-workers first (SIGTERM: each saves a checkpoint and releases its job's lease, up to
# FCN_STOP_GRACE s), then added Ray nodes, the Ray head (by pid and by its own temp dir — never a
# machine-wide `ray stop`), then Redis (SHUTDOWN: the AOF is fsynced; data stays in .fcn/redis).
#
#   bash cluster/down.sh [--keep-redis] [--purge]    # --purge also deletes .fcn (queue data, logs)
set -uo pipefail
. "$(dirname "$0")/lib.sh"

KEEP_REDIS=0 PURGE=0
while [ $# -gt 0 ]; do
  case $1 in
    --keep-redis) KEEP_REDIS=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) fcn_die "unknown option $1 (see --help)" ;;
  esac
done
PIDS=$FCN_STATE/pids

for f in "$PIDS"/worker-*.pid; do
  [ -e "$f" ] || continue
  fcn_log "stopping $(basename "$f" .pid)"
  fcn_stop_pid "$f" "$FCN_STOP_GRACE"
done

for f in "$PIDS"/ray-node-*.pid; do
  [ -e "$f" ] || continue
  name=$(basename "$f" .pid); name=${name#ray-node-}
  fcn_log "stopping ray node $name"
  fcn_stop_pid "$f" 5
  fcn_stop_ray_dir "$FCN_RAY_TMP-$name" 3
done

if [ -e "$PIDS/ray-head.pid" ] || [ -n "$(fcn_ray_pids "$FCN_RAY_TMP")" ]; then
  fcn_log "stopping ray head ($FCN_RAY_TMP)"
  fcn_stop_pid "$PIDS/ray-head.pid" 5
  fcn_stop_ray_dir "$FCN_RAY_TMP" 3
fi

if [ "$KEEP_REDIS" = 0 ] && fcn_alive "$PIDS/redis.pid"; then
  fcn_log "stopping redis on :$FCN_REDIS_PORT (AOF kept in $FCN_STATE/redis)"
  pid=$(cat "$PIDS/redis.pid")
  redis-cli -p "$FCN_REDIS_PORT" shutdown >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  rm -f "$PIDS/redis.pid"
fi

if [ "$PURGE" = 1 ]; then
  fcn_log "purging $FCN_STATE and $FCN_RAY_TMP*"
  rm -rf "$FCN_STATE" "$FCN_RAY_TMP" "$FCN_RAY_TMP"-*
else
  rm -f "$FCN_STATE/env"
fi
fcn_log "down."
