#!/usr/bin/env bash
# Training throughput (samples/s) and peak RSS of each encoder's LoRA training step, as a
# Markdown table. Usage: bench/encoders.sh [steps]   (needs $TAILOR_ASSETS, default
# /var/tmp/tailor-assets). Peak RSS is the process's high-water mark after each row, so
# rows after the first include what earlier rows held.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tailor-target}"
# The dev profile builds tailor-modules and its dependencies at opt-level 3 (Cargo.toml).
cargo run --quiet -p tailor-modules --example bench_encoders -- "${1:-3}"
