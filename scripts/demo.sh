#!/usr/bin/env bash
# The seed's scenario on one machine, with what exists today: a private redis-server,
# a Master and a worker, an account that waits for login, a login success, and the
# running worker hot-applying it without a restart. (`hiscrm up --demo` replaces this
# script when the operator-experience issue lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
H=.venv/bin/hiscrm
DIR=var/demo
mkdir -p "$DIR"
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export HISCRM_REDIS_URL="redis://127.0.0.1:$PORT/0"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "redis-server on 127.0.0.1:$PORT (data in $DIR)"
redis-server --port "$PORT" --bind 127.0.0.1 --dir "$DIR" --save "" --appendonly no >"$DIR/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.05; done

step "hiscrm master and hiscrm worker --id w1 (logs in $DIR)"
$H master --id m1 >"$DIR/master.log" 2>&1 &
pids+=($!)
HISCRM_HEARTBEAT_INTERVAL_S=0.5 HISCRM_RECONCILE_INTERVAL_S=5 $H worker --id w1 >"$DIR/worker.log" 2>&1 &
pids+=($!)
until redis-cli -p "$PORT" exists hiscrm:worker:w1 | grep -q 1; do sleep 0.1; done

step "hiscrm account add acc-1 --platform sandbox --worker w1 --interval 1"
$H --log-level warning account add acc-1 --platform sandbox --worker w1 --interval 1
until redis-cli -p "$PORT" hget hiscrm:worker:w1 tasks | grep -q waiting_login; do sleep 0.1; done
step "the task waits for login (as in the seed):"
grep -m1 "missing platform_user_id" "$DIR/worker.log"

step "login succeeds: hiscrm account login-success acc-1 --platform-user-id 1864722759 --wait"
$H --log-level warning account login-success acc-1 --platform-user-id 1864722759 --wait --timeout 10
until redis-cli -p "$PORT" hget hiscrm:worker:w1 tasks | grep -q '"running"'; do sleep 0.1; done

step "the same worker process, never restarted, runs the task with the new id:"
$H --log-level warning account show acc-1
step "worker log"
grep -E "received account config update|reloaded|updated account config|task running" "$DIR/worker.log" | tail -6
step "done; stopping everything"
