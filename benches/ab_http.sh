#!/usr/bin/env bash
# `GET /generate-image` throughput of two builds of avatar-http, in ABBA order per size, on
# loopback with wrk (2 threads, 32 connections, 15 s after a 2 s warm-up; apt-get install wrk).
# Prints one line per run: binary, size, requests/s, median latency, non-2xx count.
#
#   benches/ab_http.sh BEFORE_BIN AFTER_BIN
set -euo pipefail
[ $# -eq 2 ] || { sed -n 2,6p "$0"; exit 2; }
port="${PORT:-18080}"
one() {
  "$1" --port "$port" --store memory >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
  wrk -t2 -c4 -d2s "http://127.0.0.1:$port/generate-image?size=$2" >/dev/null 2>&1
  local out
  out=$(wrk -t2 -c32 -d15s --timeout 60s --latency "http://127.0.0.1:$port/generate-image?size=$2" 2>&1)
  echo "$1 $2 $(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '$1=="50%" {print $2}')" \
    "non-2xx: $(echo "$out" | awk '/Non-2xx/ {print $NF}' | grep . || echo 0)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
for size in small large; do one "$1" "$size"; one "$2" "$size"; one "$2" "$size"; one "$1" "$size"; done
