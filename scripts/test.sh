#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, integration, doc), the wgpu correctness set when a
# Vulkan driver is present, clippy, and the type-check of the opt-in CUDA backend.
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

step "clippy, with the opt-in cuda backend type-checked in the same pass (DOCS_RS=1: its build script would download LLVM)"
DOCS_RS=1 cargo clippy --release --workspace --all-targets --features avatar-core/cuda -- -D warnings

step "all tests passed"
