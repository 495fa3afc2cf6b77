#!/usr/bin/env bash
# Add one more Ray node on this machine to the local stack's cluster, so multi-node placement
# (a 2-worker Ray Train job spread over two nodes) can be exercised without a second host.
# The node has its own temp dir ($FCN_RAY_TMP-NAME), ports and resources; down.sh stops it.
#
#   bash cluster/add-node.sh [--name node2] [--num-cpus 2] [--num-gpus 0] \
#                            [--resources '{"node2": 1}']
#
# A custom resource named after the node (default) lets a test pin work to it, e.g.
# ScalingConfig(resources_per_worker={"CPU": 1, "node2": 0.01}); placement strategy SPREAD puts
# the two Train workers on different nodes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NAME=node2 CPUS=2 GPUS=0 RESOURCES=
while [ $# -gt 0 ]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --num-cpus) CPUS=$2; shift 2 ;;
    --num-gpus) GPUS=$2; shift 2 ;;
    --resources) RESOURCES=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) fcn_die "unknown option $1 (see --help)" ;;
  esac
done
[[ $NAME =~ ^[A-Za-z0-9_-]+$ ]] || fcn_die "--name: letters, digits, - and _ only"
RESOURCES=${RESOURCES:-"{\"$NAME\": 1}"}
PIDS=$FCN_STATE/pids LOGS=$FCN_STATE/logs
fcn_alive "$PIDS/ray-head.pid" || fcn_die "no local head running: bash cluster/up.sh first"
fcn_alive "$PIDS/ray-node-$NAME.pid" && { fcn_log "node $NAME already running"; exit 0; }

fcn_ray_env
TMP=$FCN_RAY_TMP-$NAME
fcn_stop_ray_dir "$TMP" 5
# Every port of its own: the head's fixed ports (agent 52365, metrics, client server) are taken.
setsid nohup "$FCN_BIN/ray" start --block --address "127.0.0.1:$FCN_RAY_PORT" --temp-dir "$TMP" \
  --num-cpus "$CPUS" --num-gpus "$GPUS" --resources "$RESOURCES" \
  --object-store-memory $((FCN_OBJECT_STORE_MB * 1024 * 1024)) \
  --metrics-export-port "$(fcn_free_port)" --dashboard-agent-listen-port "$(fcn_free_port)" \
  --dashboard-agent-grpc-port "$(fcn_free_port)" --runtime-env-agent-port "$(fcn_free_port)" \
  --node-manager-port "$(fcn_free_port)" --object-manager-port "$(fcn_free_port)" \
  >"$LOGS/ray-node-$NAME.log" 2>&1 </dev/null &
echo $! >"$PIDS/ray-node-$NAME.pid"
for _ in $(seq 120); do
  grep -q "Ray runtime started" "$LOGS/ray-node-$NAME.log" 2>/dev/null && break
  fcn_alive "$PIDS/ray-node-$NAME.pid" || fcn_die "node $NAME exited: see $LOGS/ray-node-$NAME.log"
  sleep 0.5
done
grep -q "Ray runtime started" "$LOGS/ray-node-$NAME.log" || fcn_die "node $NAME did not start: $LOGS/ray-node-$NAME.log"
fcn_log "node $NAME joined 127.0.0.1:$FCN_RAY_PORT: $CPUS CPU, $GPUS GPU, resources $RESOURCES"
