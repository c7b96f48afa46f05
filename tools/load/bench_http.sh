#!/usr/bin/env bash
# Load benchmark: avatar-http vs the reference FastAPI + Keras server of the seed's design,
# both on loopback, `GET /generate-image` (small) at saturation with wrk, bounded in time.
#
#   tools/load/bench_http.sh                 # 20 s per target, 32 connections
#   DURATION=10s CONNECTIONS=64 tools/load/bench_http.sh
#
# Targets (each measured in the same run, results appended to benches/RESULTS.md):
#   rust-embedded   avatar-http with the weights compiled into the binary (skipped if empty)
#   rust-seed-arch  avatar-http with random weights of the seed's Keras architecture
#   reference       tools/reference/fastapi_server.py (uvicorn, tf.keras .predict, as the seed)
#   reference-call  the same with generator(noise) instead of .predict (a faster Python baseline)
#
# Needs: wrk (apt-get install wrk), curl, the venv of tools/reference/keras_dcgan.py with
# tools/reference/requirements-server.txt installed (VENV, default /work/venv-keras).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-20s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
WARMUP="${WARMUP:-3s}"
WRK_TIMEOUT="${WRK_TIMEOUT:-60s}"
VENV="${VENV:-/work/venv-keras}"
TARGETS="${TARGETS:-rust-embedded rust-seed-arch reference reference-call}"
RUST_PORT="${RUST_PORT:-18080}"
REF_PORT="${REF_PORT:-18081}"
WORK="$ROOT/target/bench-http"
RESULTS="$ROOT/benches/RESULTS.md"
mkdir -p "$WORK" "$(dirname "$RESULTS")"

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
TRIPLE_BIN="$ROOT/target/x86_64-unknown-linux-gnu/release/avatar-http"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_health() { # url
  for _ in $(seq 1 600); do
    curl -fsS --noproxy '*' "$1/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "server at $1 did not come up" >&2
  return 1
}

stop_last() { local pid="${PIDS[-1]}"; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; unset 'PIDS[-1]'; }

declare -A RPS P50 P99 NON2XX CMD SERVER_CMD
LAST_CMD=""
measure() { # name url
  local name="$1" url="$2/generate-image"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" --timeout "$WRK_TIMEOUT" "$url" >/dev/null
  local out="$WORK/$name.wrk.txt"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout "$WRK_TIMEOUT" --latency "$url" | tee "$out"
  RPS[$name]="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
  P50[$name]="$(awk '$1 == "50%" {print $2}' "$out")"
  P99[$name]="$(awk '$1 == "99%" {print $2}' "$out")"
  NON2XX[$name]="$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")"
  NON2XX[$name]="${NON2XX[$name]:-0} / $(awk '/Socket errors/ {gsub(",", ""); print $NF}' "$out")"
  [[ "${NON2XX[$name]}" == *" / " ]] && NON2XX[$name]="${NON2XX[$name]}0"
  CMD[$name]="wrk -t$THREADS -c$CONNECTIONS -d$DURATION --timeout $WRK_TIMEOUT --latency $url"
  LAST_CMD="${CMD[$name]}"
}

run_rust() { # name [weights-dir]
  local name="$1" dir="${2:-}"
  local args=(--port "$RUST_PORT" --store memory)
  [[ -n "$dir" ]] && args+=(--weights-dir "$dir")
  RUST_LOG=warn "$TRIPLE_BIN" "${args[@]}" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_health "http://127.0.0.1:$RUST_PORT"
  measure "$name" "http://127.0.0.1:$RUST_PORT"
  SERVER_CMD[$name]="avatar-http ${args[*]}"
  stop_last
}

run_reference() { # name inference
  local name="$1" inference="$2"
  REF_MODELS_DIR="$WORK/reference-models" REF_INFERENCE="$inference" \
    "$VENV/bin/uvicorn" --app-dir "$ROOT/tools/reference" fastapi_server:app \
    --host 127.0.0.1 --port "$REF_PORT" --no-access-log --log-level warning >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_health "http://127.0.0.1:$REF_PORT"
  measure "$name" "http://127.0.0.1:$REF_PORT"
  SERVER_CMD[$name]="REF_INFERENCE=$inference uvicorn fastapi_server:app --no-access-log"
  stop_last
}

nice cargo build --release -p avatar-http --examples --bins
for target in $TARGETS; do
  case "$target" in
    rust-embedded)
      if [[ ! -s "$ROOT/avatar-core/weights/dcgan_small.safetensors" ]]; then
        echo "skipping rust-embedded: the embedded weights are empty placeholders" >&2
        continue
      fi
      run_rust rust-embedded ;;
    rust-seed-arch)
      "$ROOT/target/x86_64-unknown-linux-gnu/release/examples/seed_arch_weights" "$WORK/seed-arch-weights" >/dev/null
      run_rust rust-seed-arch "$WORK/seed-arch-weights" ;;
    reference|reference-call)
      if [[ ! -f "$WORK/reference-models/face_generator_128.h5" ]]; then
        for pair in "full96 96" "full128 128"; do
          set -- $pair
          "$VENV/bin/python" "$ROOT/tools/reference/keras_dcgan.py" --preset "$1" --name "face_generator_$2" \
            --out-dir "$WORK/reference-models" --forms keras3 >/dev/null
          mv "$WORK/reference-models/face_generator_$2.keras3.h5" "$WORK/reference-models/face_generator_$2.h5"
        done
      fi
      if [[ "$target" == reference ]]; then run_reference reference predict; else run_reference reference-call call; fi ;;
    *) echo "unknown target $target" >&2; exit 1 ;;
  esac
done

BASE="${RPS[reference]:-}"
{
  echo
  echo "## bench_http.sh — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "\`GET /generate-image\` (size=small, PNG) at saturation on loopback: wrk, $THREADS threads,"
  echo "$CONNECTIONS connections, $DURATION per target after a $WARMUP warm-up."
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m);"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other jobs share this machine)."
  echo
  echo "| target | server | req/s | p50 | p99 | non-2xx / timeouts | vs reference |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
  for target in $TARGETS; do
    [[ -n "${RPS[$target]:-}" ]] || continue
    ratio="—"
    if [[ -n "$BASE" ]] && awk -v b="$BASE" 'BEGIN { exit !(b > 0) }'; then ratio="$(awk -v a="${RPS[$target]}" -v b="$BASE" 'BEGIN { printf "%.1fx", a / b }')"; fi
    echo "| $target | \`${SERVER_CMD[$target]}\` | ${RPS[$target]} | ${P50[$target]} | ${P99[$target]} | ${NON2XX[$target]} | $ratio |"
  done
  echo
  echo "Load command (URL per target): \`${LAST_CMD:-wrk}\`; script: \`DURATION=$DURATION CONNECTIONS=$CONNECTIONS tools/load/bench_http.sh\`."
} | tee -a "$RESULTS"
