#!/bin/sh
# Gemma 3 270M on this machine: LoRA SFT training tokens/s, greedy generation tokens/s and
# peak RSS, Tailor (candle, f32 dequantized) beside PyTorch (transformers + peft, the same
# GGUF dequantized to f32) with the same pairs, layers and settings.
#
#   bench/gemma.sh            # both sides; ADAPTED_LAYERS=4 by default
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-/var/tmp/tailor-bench-venv}
export ADAPTED_LAYERS=${ADAPTED_LAYERS:-4}
echo "== Tailor (candle), $(nproc) cores"
cargo run --quiet --release -p tailor-modules --example bench_gemma
echo "== PyTorch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), $(nproc) threads"
OMP_NUM_THREADS=$(nproc) "$VENV/bin/python" bench/gemma_torch.py 2>/dev/null
