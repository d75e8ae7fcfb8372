#!/usr/bin/env bash
# The job path end to end on this machine: a portal (with its outbox relay) and worker
# processes of their own — fresh database, own queue names, own object folder — then
# examples/bench_jobs.rs starts jobs through the JSON API and reads the times Postgres
# recorded: submit → broker-confirmed publish → `running` → finished, p50/p99, and jobs
# per second end to end. Jobs train for zero epochs by default (evaluation only), so the
# numbers are the platform's overhead, not training. Prints tables; see bench/README.md.
#
#   bench/jobs.sh                                   # 10 one at a time, then a burst of 50
#   JOBS=20 SEQUENTIAL=5 bench/jobs.sh              # a quick look
#   WORKERS=2 CONCURRENCY=1 EPOCHS=1 bench/jobs.sh  # two worker processes, one epoch
#
# Dev profile, like scripts/run and the tests (dependencies and the ML crate optimized).
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS="${JOBS:-50}"
SEQUENTIAL="${SEQUENTIAL:-10}"
EPOCHS="${EPOCHS:-0}"
WORKERS="${WORKERS:-1}"
CONCURRENCY="${CONCURRENCY:-2}"

scripts/services
export TAILOR_ASSETS="${TAILOR_ASSETS:-/var/tmp/tailor-assets}"
[[ -f $TAILOR_ASSETS/minilm-l6/model.safetensors ]] || scripts/fetch-assets >/dev/null

echo "building tailor and the bench (dev profile)" >&2
cargo build -q --bin tailor --example bench_jobs
TARGET="$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
TAILOR="$TARGET/debug/tailor"
BENCH="$TARGET/debug/examples/bench_jobs"

RUN="bench_jobs_$(date +%s)_$$"
WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export TAILOR_ENV=local
export TAILOR__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$RUN"
export TAILOR__RABBITMQ__QUEUE_PREFIX="$RUN"
export TAILOR__OBJECT_STORE__LOCAL_ROOT="$WORK/objects"
export TAILOR__APPLICATION__HOST=127.0.0.1
export TAILOR__APPLICATION__PORT="$PORT"
export TAILOR__JOBS__WORKER_CONCURRENCY="$CONCURRENCY"
# One organization starts every job: its quota must not be what the bench measures.
export TAILOR__JOBS__ORG_CONCURRENCY=1000
export TAILOR__TELEMETRY__FILTER="${TAILOR__TELEMETRY__FILTER:-warn}"
export BENCH_JOBS="$JOBS" BENCH_SEQUENTIAL="$SEQUENTIAL" BENCH_EPOCHS="$EPOCHS"

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  "$BENCH" cleanup >/dev/null 2>&1 || true
  psql -q -h 127.0.0.1 -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS $RUN WITH (FORCE)" >/dev/null 2>&1 || true
  if [[ -n ${KEEP_LOGS:-} ]]; then echo "logs in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

"$TAILOR" migrate >"$WORK/migrate.log" 2>&1
"$TAILOR" serve >"$WORK/portal.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 "$WORKERS"); do
  "$TAILOR" worker >"$WORK/worker$i.log" 2>&1 &
  PIDS+=($!)
done

echo "portal on :$PORT, $WORKERS worker process(es) x $CONCURRENCY, $(nproc) cores" >&2
"$BENCH"
