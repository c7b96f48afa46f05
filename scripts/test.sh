#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, integration, doc), the wgpu correctness set when a
# Vulkan driver is present, and the type-check of the opt-in CUDA backend.
# Usage: scripts/test.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all --check

step "rust tests (release profile: burn is built once for tests, examples, benches and the server)"
env -u AVATAR_WGPU_TESTS cargo test --release --workspace --all-targets
env -u AVATAR_WGPU_TESTS cargo test --release --workspace --doc

if [ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || [ -n "${AVATAR_WGPU_TESTS:-}" ]; then
  step "wgpu correctness set (software Vulkan)"
  AVATAR_WGPU_TESTS=1 cargo test --release -p avatar-core --test wgpu -- --test-threads=1
else
  step "wgpu correctness set skipped: no Vulkan driver (apt-get install mesa-vulkan-drivers)"
fi

step "cuda feature type-check (the cuda build script needs internet, so only checked)"
DOCS_RS=1 cargo check --release -p avatar-core --features cuda

step "all tests passed"
