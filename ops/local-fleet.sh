#!/usr/bin/env bash
# A local fleet without Docker, against this machine's Redis and Postgres:
#   ops/local-fleet.sh up [N]   Milvus Lite server, N Celery workers (default 2), the metrics
#                               exporter and Flower; writes .fleet/local/env to source
#   ops/local-fleet.sh down     stops them
#   ops/local-fleet.sh status   which are running
# Settings come from the environment (FLEET_*), with local defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.fleet/local
MILVUS_PORT=${MILVUS_PORT:-19530}
EXPORTER_PORT=${EXPORTER_PORT:-9101}
FLOWER_PORT=${FLOWER_PORT:-5555}
export FLEET_DATABASE_URL=${FLEET_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/fleet}
export FLEET_BROKER_URL=${FLEET_BROKER_URL:-redis://127.0.0.1:6379/0}
export FLEET_MILVUS_URI=${FLEET_MILVUS_URI:-http://127.0.0.1:$MILVUS_PORT}

start() {  # name, command...: run in the background, remember its pid and log
  local name=$1; shift
  setsid "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
  echo "started $name (pid $!, log $RUN/$name.log)"
}

wait_port() {
  for _ in $(seq 1 120); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.5; done
  echo "nothing listens on port $1; see the logs in $RUN" >&2; return 1
}

up() {
  local workers=${1:-2}
  # shellcheck disable=SC1091
  . .venv/bin/activate
  mkdir -p "$RUN"
  python - <<'PY'
import os, psycopg
url = os.environ["FLEET_DATABASE_URL"]
admin, name = url.rsplit("/", 1)
with psycopg.connect(admin + "/postgres", autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(f'CREATE DATABASE "{name}"')
        print(f"created database {name}")
PY
  start milvus python -m milvus_lite server --data-dir .fleet/milvus-server --host 127.0.0.1 --port "$MILVUS_PORT"
  wait_port "$MILVUS_PORT"
  migrate db
  for i in $(seq 1 "$workers"); do
    FLEET_METRICS_PORT=$((9110 + i)) start "worker$i" celery -A workers.app worker --loglevel=INFO -n "worker$i@%h"
    echo "  worker$i metrics: http://127.0.0.1:$((9110 + i))/metrics"
  done
  start exporter producer serve-metrics --port "$EXPORTER_PORT"
  echo "  fleet metrics: http://127.0.0.1:$EXPORTER_PORT/metrics"
  start flower celery -A workers.app flower --address=127.0.0.1 --port="$FLOWER_PORT"
  echo "  Flower: http://127.0.0.1:$FLOWER_PORT"
  {
    echo "export FLEET_DATABASE_URL='$FLEET_DATABASE_URL'"
    echo "export FLEET_BROKER_URL='$FLEET_BROKER_URL'"
    echo "export FLEET_MILVUS_URI='$FLEET_MILVUS_URI'"
    [ -n "${FLEET_MODEL:-}" ] && echo "export FLEET_MODEL='$FLEET_MODEL'"
  } >"$RUN/env"
  echo "now: source $RUN/env && producer ingest ops/sample-docs --wait"
}

down() {
  for pidfile in "$RUN"/*.pid; do
    [ -e "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    # Workers get a soft shutdown: they finish or requeue what they hold.
    kill -TERM -- "-$pid" 2>/dev/null && echo "stopping $(basename "$pidfile" .pid)"
  done
  for pidfile in "$RUN"/*.pid; do
    [ -e "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

status() {
  for pidfile in "$RUN"/*.pid; do
    [ -e "$pidfile" ] || { echo "nothing running"; return; }
    local name; name=$(basename "$pidfile" .pid)
    if kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "$name: running"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  up) up "${2:-2}" ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up [N] | down | status" >&2; exit 2 ;;
esac
