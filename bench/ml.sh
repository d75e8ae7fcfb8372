#!/usr/bin/env bash
# Tailor (candle) against PyTorch on this machine, in one run: LoRA fine-tuning of the MiniLM
# classifier (r=8, alpha=16, query+value, 512 texts of exactly 128 tokens, batch 16, AdamW,
# one epoch) against Hugging Face PEFT; frozen-encoder inference (batch 32) against
# sentence-transformers; and each side's 1024x1024 f32 matmul, the faster of which is the
# machine's ceiling the GFLOP/s columns are a share of. Every measurement runs alone, one after another, with the same
# thread count on both sides. Prints a table; see bench/README.md.
#
#   bench/ml.sh                     # THREADS=2 SAMPLES=512 by default
#   THREADS=2 SAMPLES=64 bench/ml.sh  # a quick look
#   FEATURES=avx512 bench/ml.sh     # tailor-modules features for the Rust side
#
# Needs $TAILOR_ASSETS (default /var/tmp/tailor-assets) with minilm-l6/ and
# drugreview/drugsComTrain.tsv, and the reference virtualenv (bench/setup-reference).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-2}"
SAMPLES="${SAMPLES:-512}"
SEQ=128
ASSETS="${TAILOR_ASSETS:-/var/tmp/tailor-assets}"
MODEL="$ASSETS/minilm-l6"
TSV="$ASSETS/drugreview/drugsComTrain.tsv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
EXAMPLES="$CARGO_TARGET_DIR/release/examples"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

for f in "$MODEL/model.safetensors" "$MODEL/tokenizer.json" "$TSV"; do
  [[ -f $f ]] || { echo "missing $f (set TAILOR_ASSETS)" >&2; exit 1; }
done

PYTHON="$(bench/setup-reference)"
# Only the bench examples: another example that does not build must not stop the bench.
FEATURES="${FEATURES:-}"
echo "building the Rust side (features: ${FEATURES:-default})" >&2
cargo build --release -q -p tailor-modules ${FEATURES:+--features "$FEATURES"} \
  --example bench_train --example bench_encode --example bench_matmul

# The same texts for both sides: the first reviews, one per line (whitespace collapsed).
"$PYTHON" - "$TSV" "$SAMPLES" >"$WORK/texts.txt" <<'EOF'
import csv, sys
csv.field_size_limit(1 << 30)
rows = csv.DictReader(open(sys.argv[1], encoding="utf-8", newline=""), delimiter="\t")
texts = [t for t in (" ".join(r["review"].split()) for r in rows) if t]
print("\n".join(texts[: int(sys.argv[2])]))
EOF

# Both sides get the same threads: candle's CPU ops and gemm use rayon's pool
# (RAYON_NUM_THREADS), PyTorch its intra-op pool (set_num_threads, OpenMP/MKL).
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error

LOAD_BEFORE="$(uptime)"
run() {
  echo "running: ${*##*/}" >&2
  local out
  if ! out="$("$@" 2>"$WORK/stderr")"; then
    cat "$WORK/stderr" >&2
    exit 1
  fi
  grep '^{' <<<"$out" | tail -n 1 >>"$WORK/results.jsonl"
}
common=(--model "$MODEL" --texts "$WORK/texts.txt" --samples "$SAMPLES" --seq "$SEQ")
run "$EXAMPLES/bench_matmul"
run "$PYTHON" bench/torch_reference.py matmul --threads "$THREADS"
run "$EXAMPLES/bench_train" "${common[@]}" --batch 16
run "$PYTHON" bench/torch_reference.py train "${common[@]}" --batch 16 --threads "$THREADS"
run "$EXAMPLES/bench_encode" "${common[@]}" --batch 32
run "$PYTHON" bench/torch_reference.py encode "${common[@]}" --batch 32 --threads "$THREADS"
LOAD_AFTER="$(uptime)"

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC') · $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
  "· $(nproc) CPUs · threads $THREADS · $SAMPLES samples x $SEQ tokens" \
  "· features: ${FEATURES:-default}"
echo "load before: ${LOAD_BEFORE##*load average: }"
"$PYTHON" - "$WORK/results.jsonl" <<'EOF'
import json, sys
r = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    r[(d["what"], d["impl"] in ("candle", "tailor"))] = d
# The machine's ceiling: the faster of the two 1024x1024 f32 matmuls measured in this run.
ceiling = max(r[("matmul", side)]["gflops"] for side in (True, False))
rows = [("train (LoRA, batch 16)", "train", "samples_per_s", "samples/s"),
        ("encode (batch 32)", "encode", "sequences_per_s", "sequences/s"),
        ("matmul 1024 f32", "matmul", "gflops", "GFLOP/s")]
head = f"{'':24}{'unit':>12} | {'Tailor':>8} {'RSS MiB':>8} {'GFLOP/s':>8} {'% ceil':>7}" \
       f" | {'PyTorch':>8} {'RSS MiB':>8} {'GFLOP/s':>8} {'% ceil':>7} | {'Tailor/PyTorch':>14}"
print(head)
print("-" * len(head))
def cells(d, key):
    rss = f"{d['peak_rss_mib']:8.0f}" if "peak_rss_mib" in d else f"{'-':>8}"
    share = 100 * d["gflops"] / ceiling
    return f"{d[key]:8.2f} {rss} {d['gflops']:8.1f} {share:6.0f}%"
for label, what, key, unit in rows:
    t, p = r[(what, True)], r[(what, False)]
    print(f"{label:24}{unit:>12} | {cells(t, key)} | {cells(p, key)} |"
          f" {t[key] / p[key]:13.2f}x")
print(f"% ceil: share of the machine's matmul ceiling, {ceiling:.1f} GFLOP/s (the faster"
      " 1024x1024 f32 matmul above); GFLOP/s counts forward + input-gradient backward"
      " (2x forward) for train, forward for encode.")
EOF
echo "load after:  ${LOAD_AFTER##*load average: }"
