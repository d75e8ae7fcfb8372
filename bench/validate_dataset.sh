#!/usr/bin/env bash
# Benchmark of dataset validation (services/datasets): generates CSVs with text, label and
# number columns, validates each from disk in release mode, and prints rows/s, MB/s and
# peak RSS (VmHWM). Usage: bench/validate_dataset.sh [ROWS...]  (default: 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p tailor-datasets --example validate_bench
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
for rows in "${@:-100000 1000000}"; do
  for n in $rows; do
    echo "## ${n} rows"
    "${target_dir}/release/examples/validate_bench" "$n"
    echo
  done
done
