#!/usr/bin/env bash
# serve.sh: start the paged llama-server in the background on MODEL with the
# recommended knobs, wait until it is healthy, print its URL and how to stop
# it. 'serve.sh stop' stops it (by the PID it recorded).
#
# PAGED_BIN: the paged build's bin directory (the Makefile passes the one of its
# BACKEND). Knobs: SERVE_KNOBS, else those whose patch says 'Recommended: yes'.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/series-lib.sh"
bin=${PAGED_BIN:-$ROOT/build/paged-${BACKEND:-cpu}/bin}
host=${HOST:-127.0.0.1}
port=${PORT:-8080}
ctx=${CTX:-32768}
slots=${SLOTS:-8}
run_dir=${SERVE_RUN_DIR:-$ROOT/build/serve}
pidfile=$run_dir/llama-server.pid
log=$run_dir/llama-server.log

die() { printf 'serve: error: %s\n' "$*" >&2; exit 1; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# Stopping needs nothing but the PID file: no MODEL, no build.
if [ "${1:-}" = stop ]; then
    running || { echo "serve: no server running"; rm -f "$pidfile"; exit 0; }
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -9 "$pid"; echo "serve: PID $pid did not stop in 10 s; killed"; }
    rm -f "$pidfile"
    echo "serve: stopped (PID $pid)"
    exit 0
fi

model=${MODEL:?MODEL is not set (MODEL=path.gguf)}
# The series' recommended knobs (docs/KNOBS.md), read from the patch trailers.
knobs=${SERVE_KNOBS-$(series_recommended_knobs "$ROOT/patches" "$ROOT/patches/paged" | tr '\n' ' ')}

[ -x "$bin/llama-server" ] || die "no llama-server in $bin: run 'make' first"
[ -f "$model" ] || die "model '$model' does not exist (MODEL=path.gguf, or 'make bench-models' for the default)"
running && die "a server is already running (PID $(cat "$pidfile")); 'make serve-stop' first"
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then die "port $port on $host is taken; set PORT=..."; fi

mkdir -p "$run_dir"
# shellcheck disable=SC2086
env $knobs nohup "$bin/llama-server" -m "$model" --host "$host" --port "$port" -c "$ctx" -np "$slots" \
    --metrics > "$log" 2>&1 < /dev/null &
echo $! > "$pidfile"
for _ in $(seq 1 600); do
    if ! running; then
        tail -n 20 "$log" >&2
        rm -f "$pidfile"
        die "llama-server exited during start-up; log: $log"
    fi
    if curl -fsS "http://$host:$port/health" >/dev/null 2>&1; then
        cat <<MSG
serve: llama-server (paged) is up: http://$host:$port  (PID $(cat "$pidfile"), $slots slots, ctx $ctx)
  model: $model
  knobs: ${knobs:-none}
  log:   $log
  try:   curl http://$host:$port/completion -d '{"prompt": "Hello", "n_predict": 16}'
  stop:  make serve-stop
MSG
        exit 0
    fi
    sleep 0.5
done
kill "$(cat "$pidfile")" 2>/dev/null || true
rm -f "$pidfile"
die "llama-server not healthy after 300 s; log: $log"
