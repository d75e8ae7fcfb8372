#!/usr/bin/env bash
# The inference gateway under load, from a separate load generator (wrk) on loopback.
#
# Trains one small real model version (`tailor train`, MiniLM + LoRA r4 on drug reviews),
# registers it as the published version of VERSIONS (64) models of one organization
# (each its own model version row and its own copy of the files in the object store, so
# the gateway loads, caches and swaps 64 distinct adapters over one shared base), creates
# an API key, starts `tailor gateway`, and prints in one run:
#   - throughput and p50/p99 latency for 1 version, for 8 and for 64 versions sharing one
#     base (requests rotating across them), 16 concurrent clients;
#   - the same for 1 version and 1 client: the gain from dynamic batching;
#   - resident memory per extra version, beside the adapter file's size.
#
# Needs Postgres on 127.0.0.1:5432 (user postgres, trust), wrk (apt-get install wrk),
# python3, and the assets of scripts/fetch-assets. Not a test; numbers depend on the box.
#   bench/gateway.sh                     # DURATION=10s VERSIONS=64 CLIENTS=16
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
VERSIONS=${VERSIONS:-64}
CLIENTS=${CLIENTS:-16}
PORT=${PORT:-18071}
ASSETS=${TAILOR_ASSETS:-/var/tmp/tailor-assets}
DB=tailor_bench_gateway
PG="postgres://postgres@127.0.0.1:5432"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

WORK=$(mktemp -d)
GATEWAY_PID=""
cleanup() {
  [ -n "$GATEWAY_PID" ] && kill "$GATEWAY_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build -q --bin tailor
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
TAILOR="$TARGET/debug/tailor"

export TAILOR__DATABASE__URL="$PG/$DB"
export TAILOR__OBJECT_STORE__LOCAL_ROOT="$WORK/objects"
export TAILOR__JOBS__ASSETS_DIR="$ASSETS"
export TAILOR__GATEWAY__PORT="$PORT"
export TAILOR_ASSETS="$ASSETS"
export RUST_LOG=${RUST_LOG:-warn}
psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
"$TAILOR" migrate >/dev/null

# 1. One real model version.
python3 - "$ASSETS/drugreview/drugsComTrain.tsv" > "$WORK/reviews.jsonl" <<'PY'
import csv, json, sys
csv.field_size_limit(1 << 24)
rows = list(csv.DictReader(open(sys.argv[1], newline=""), delimiter="\t"))
for c in ("positive", "negative", "neutral"):
    for r in [r for r in rows if r["rating"] == c][:8]:
        print(json.dumps({"review": r["review"].strip().strip('"').replace("&#039;", "'"), "rating": c}))
PY
cat > "$WORK/blueprint.json" <<'JSON'
{ "name": "bench", "inputs": [{ "name": "review", "modality": "text",
    "encoder": { "module": "text/minilm-l6", "max_tokens": 64 } }],
  "outputs": [{ "name": "rating", "task": "classification", "decoder": { "module": "head/linear" } }],
  "adaptation": { "method": "lora", "rank": 4, "alpha": 8, "targets": ["query", "value"] },
  "training": { "epochs": 1, "batch_size": 8, "seed": 7, "validation_split": 0.2 } }
JSON
"$TAILOR" train "$WORK/blueprint.json" "$WORK/reviews.jsonl" --out "$WORK/version" >/dev/null 2>&1
ADAPTER_BYTES=$(stat -c %s "$WORK/version/adapter_model.safetensors")
HEADS_BYTES=$(stat -c %s "$WORK/version/heads.safetensors")
MANIFEST_SHA=$(sha256sum "$WORK/version/manifest.json" | cut -d' ' -f1)

# 2. An organization with VERSIONS models, each publishing its own copy of the version.
ORG=$(python3 -c 'import uuid; print(uuid.uuid4())')
SQL="$WORK/setup.sql"
{
  echo "BEGIN;"
  echo "INSERT INTO orgs (id, name, slug) VALUES ('$ORG', 'Bench', 'bench');"
  echo "INSERT INTO datasets (id, org_id, name) VALUES ('$ORG', '$ORG', 'reviews');"
  echo "INSERT INTO dataset_versions (id, org_id, dataset_id, version, object_key, format, sha256, bytes, row_count, schema, profile, warnings)
        VALUES ('$ORG', '$ORG', '$ORG', 1, 'none', 'jsonl', '', 0, 0, '{}', '{}', '[]');"
} > "$SQL"
for i in $(seq 0 $((VERSIONS - 1))); do
  MODEL=$(python3 -c 'import uuid; print(uuid.uuid4())')
  JOB=$(python3 -c 'import uuid; print(uuid.uuid4())')
  PREFIX="orgs/$ORG/models/$MODEL/v1"
  mkdir -p "$WORK/objects/$PREFIX"
  cp -r "$WORK/version/." "$WORK/objects/$PREFIX/"
  cat >> "$SQL" <<EOS
INSERT INTO models (id, org_id, name, published_version) VALUES ('$MODEL', '$ORG', 'bench-$i', 1);
INSERT INTO jobs (id, org_id, model_id, blueprint, dataset_version_id, state)
  VALUES ('$JOB', '$ORG', '$MODEL', '{}', '$ORG', 'succeeded');
INSERT INTO model_versions (id, org_id, model_id, version, job_id, object_prefix, manifest_sha256,
  metrics, blueprint, dataset_version_id, dataset_sha256, base_checkpoints)
  VALUES ('$JOB', '$ORG', '$MODEL', 1, '$JOB', '$PREFIX', '$MANIFEST_SHA', '{}', '{}', '$ORG', '', '{}');
EOS
done
# An API key in the format of tailor_core::api_keys (tlr_ + 27 base62 + CRC-32 in 6).
read -r KEY HASH < <(python3 - <<'PY'
import hashlib, os, zlib
A = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
def b62(b, w):
    n, out = int.from_bytes(b, "big"), ""
    for _ in range(w):
        n, r = divmod(n, 62); out = A[r] + out
    return out
r = b62(os.urandom(20), 27)
key = "tlr_" + r + b62(zlib.crc32(r.encode()).to_bytes(4, "big"), 6)
print(key, hashlib.sha256(key.encode()).hexdigest())
PY
)
echo "INSERT INTO api_keys (id, org_id, name, prefix, hash, actions)
      VALUES ('$ORG', '$ORG', 'bench', '${KEY:0:12}', '$HASH', ARRAY['predict']);
COMMIT;" >> "$SQL"
psql -q "$PG/$DB" -v ON_ERROR_STOP=1 -f "$SQL"

# 3. The gateway, alone in its process.
"$TAILOR" gateway &
GATEWAY_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
BODY='{"text": "I have been taking this for a month; it helps with the pain but makes me tired."}'
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$GATEWAY_PID/status"; }
warm() { # warm models $1..$2
  for i in $(seq "$1" "$2"); do
    code=$(curl -s -o "$WORK/answer.json" -w '%{http_code}' -H "Authorization: Bearer $KEY" \
      -H 'Content-Type: application/json' -d "$BODY" "http://127.0.0.1:$PORT/v1/models/bench-$i/predict")
    [ "$code" = 200 ] || { echo "bench-$i answered $code: $(cat "$WORK/answer.json")" >&2; exit 1; }
  done
}
warm 0 0
RSS_1=$(rss_kb)
warm 1 $((VERSIONS - 1))
RSS_N=$(rss_kb)

cat > "$WORK/rotate.lua" <<EOF
local n = tonumber(os.getenv("ROTATE"))
local i = 0
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $KEY"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$BODY'
request = function()
  local path = "/v1/models/bench-" .. (i % n) .. "/predict"
  i = i + 1
  return wrk.format(nil, path)
end
done = function(summary, latency, requests)
  io.write(string.format("%.1f %.1f %.1f %d %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status, summary.requests))
end
EOF
run() { # versions clients
  ROTATE=$1 wrk -t1 -c"$2" -d"$DURATION" -s "$WORK/rotate.lua" "http://127.0.0.1:$PORT" | tail -1
}

printf '\n%-34s %10s %9s %9s %8s\n' "scenario" "req/s" "p50 ms" "p99 ms" "non-2xx"
declare -A RPS
for scenario in "1 $CLIENTS" "8 $CLIENTS" "$VERSIONS $CLIENTS" "1 1"; do
  set -- $scenario
  read -r rps p50 p99 bad total < <(run "$1" "$2")
  RPS["$1/$2"]=$rps
  printf '%-34s %10s %9s %9s %8s\n' "$1 version(s), $2 client(s)" "$rps" "$p50" "$p99" "$bad"
done
python3 - "${RPS[1/$CLIENTS]}" "${RPS[$VERSIONS/$CLIENTS]}" "${RPS[1/1]}" "$RSS_1" "$RSS_N" "$VERSIONS" "$ADAPTER_BYTES" "$HEADS_BYTES" "$CLIENTS" <<'PY'
import sys
one, many, single, rss1, rssn, n, adapter, heads, clients = map(float, sys.argv[1:])
print(f"\n{int(n)} versions vs 1: {many / one * 100:.0f}% of the throughput (goal: within 10%)")
print(f"batching: {clients:.0f} clients vs 1: {one / single:.2f}x the throughput")
per = (rssn - rss1) * 1024 / (n - 1)
print(f"memory per extra version: {per / 1024:.0f} KiB resident "
      f"(adapter file {adapter / 1024:.0f} KiB, heads {heads / 1024:.0f} KiB); "
      f"{rss1 / 1024:.0f} MiB with 1 version, {rssn / 1024:.0f} MiB with {n:.0f}")
PY
