#!/usr/bin/env bash
# serve.sh: start the paged llama-server in the background on MODEL with the
# recommended knobs, wait until it is healthy, print its URL and how to stop
# it. 'serve.sh stop' stops it (by the PID it recorded).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SERVE_BIN:-$ROOT/build/paged-cpu/bin}
model=${MODEL:?MODEL is not set}
host=${HOST:-127.0.0.1}
port=${PORT:-8080}
ctx=${CTX:-32768}
slots=${SLOTS:-8}
run_dir=$ROOT/build/serve
pidfile=$run_dir/llama-server.pid
log=$run_dir/llama-server.log
# The series' recommended knobs (docs/KNOBS.md): the gated delta net decode
# path of qwen35/qwen35moe/qwen3next (a logged no-op on other archs). Only
# LLAMA_GDN_SSM_OUT_2D is not bit-exact (kernel rounding on repacked formats).
knobs=${SERVE_KNOBS-LLAMA_GDN_IDS=1 LLAMA_GDN_SSM_OUT_2D=1}

die() { printf 'serve: error: %s\n' "$*" >&2; exit 1; }

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

if [ "${1:-}" = stop ]; then
    running || { echo "serve: no server running"; rm -f "$pidfile"; exit 0; }
    kill "$(cat "$pidfile")"
    rm -f "$pidfile"
    echo "serve: stopped"
    exit 0
fi

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
