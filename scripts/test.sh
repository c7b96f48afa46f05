#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, integration, doc), the wgpu correctness set when a
# Vulkan driver is present, the Python package (pytest), the Node package (node --test), the
# Next.js example, clippy, and the type-check of the opt-in CUDA backend.
# Usage: scripts/test.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Each step prints the seconds the previous one took, so a CI log shows where the time goes.
t0=$SECONDS; last=$SECONDS
step() { printf '\n==> [%ds, +%ds] %s\n' "$((SECONDS - t0))" "$((SECONDS - last))" "$*"; last=$SECONDS; }

step "format"
cargo fmt --all --check

venv=target/py-venv
# The Python and Node steps' installs. They run first in the background, beside the CPU-bound
# Rust build, so their downloads overlap it; the steps wait for that and run them again (quick
# no-ops when the first run succeeded).
python_env() {
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.16,<2" "pytest>=8" "numpy>=1.21" "pillow>=9"
}
# npm install, not npm ci: npm 11 rejects lockfiles without the other platforms' optional packages.
npm_install() { npm install --no-audit --no-fund --loglevel=error; }
mkdir -p target
(python_env && (cd avatar-node && npm_install) && (cd examples/nextjs && npm_install)) >target/downloads.log 2>&1 &
downloads=$!
await_downloads() {
  wait "$downloads" || { echo "background downloads failed (target/downloads.log):"; cat target/downloads.log; }
}
# .ci/run may still be installing system packages (Vulkan, Chromium) in the background.
await_system_packages() {
  while [ -n "${AVATAR_SETUP_PID:-}" ] && kill -0 "$AVATAR_SETUP_PID" 2>/dev/null; do sleep 2; done
}

step "rust build (release profile: burn is built once for tests, examples, benches and the server)"
cargo test --release --workspace --all-targets --no-run

# Clippy checks every crate again in check mode (no code shared with the release build), a
# CPU-bound pass of minutes: it runs in the background, in its own target dir so that it does
# not wait for the tests' lock on ./target, beside the tests (the wgpu, Python, Node and Next.js
# steps leave a core idle much of the time), and the script waits for it at the end.
# DOCS_RS=1: the opt-in cuda backend is type-checked in the same pass (its build script would
# download LLVM).
clippy_log=target/clippy.log
DOCS_RS=1 CARGO_TARGET_DIR=target/clippy nice -n 5 cargo clippy --release --workspace --all-targets \
  --features avatar-core/cuda -- -D warnings >"$clippy_log" 2>&1 &
clippy=$!
trap 'kill "$clippy" 2>/dev/null || true' EXIT

step "rust tests"
await_system_packages
env -u AVATAR_WGPU_TESTS cargo test --release --workspace --all-targets
env -u AVATAR_WGPU_TESTS cargo test --release --workspace --doc

if [ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -n "${AVATAR_WGPU_TESTS:-}" ]; then
  step "wgpu correctness set (software Vulkan)"
  AVATAR_WGPU_TESTS=1 cargo test --release -p avatar-core --test wgpu -- --test-threads=1
else
  step "wgpu correctness set skipped: no Vulkan driver (apt-get install mesa-vulkan-drivers)"
fi

step "python package: pip install ./avatar-py (maturin, shared target dir), then pytest"
await_downloads
python_env
# --no-build-isolation: use the maturin above; maturin builds into ./target with the same profile
# and features as every other crate, so burn is not rebuilt.
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pip" install -q --disable-pip-version-check \
  --no-build-isolation --force-reinstall --no-deps ./avatar-py
"$venv/bin/python" -m pytest -q avatar-py/tests

step "node package: napi build of avatar-node, then node --test"
(cd avatar-node && npm_install && npm run --silent build && npm test)

step "next.js example: next build, next start, HTTP and headless-Chromium checks"
# install-links=true (.npmrc) copies the addon; drop the old copy so the fresh build is taken.
(cd examples/nextjs && rm -rf node_modules/@avatar/node && npm_install && npx next build && npm test)

step "clippy with the cuda type-check (started after the build, in the background)"
if ! wait "$clippy"; then
  cat "$clippy_log"
  echo "clippy failed"
  exit 1
fi

step "all tests passed"
