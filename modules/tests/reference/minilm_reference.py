#!/usr/bin/env python3
"""Reference embeddings of all-MiniLM-L6-v2, computed by an independent implementation.

A plain numpy BERT forward pass, in float64, written from the BERT paper and the
transformers `BertModel` definition (not from Tailor's Rust code), reading the same
`model.safetensors` (parsed by hand, no safetensors package) and tokenizing with the
`tokenizers` Python package. Each sentence runs alone, unpadded, so the Rust test also
checks that padding and the attention mask leave real tokens untouched.

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install numpy tokenizers
    /tmp/ref/bin/python modules/tests/reference/minilm_reference.py \
        > modules/tests/reference/minilm_l6.json

The checkpoint folder is $TAILOR_ASSETS/minilm-l6 (default /var/tmp/tailor-assets).
"""
import json
import math
import os
import struct
import sys

import numpy as np
from tokenizers import Tokenizer

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "The quarterly tax report is due on Friday.",
]
DIMS = 8


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return tensors


erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def bert(t, cfg, ids):
    p = "bert." if "bert.embeddings.word_embeddings.weight" in t else ""
    eps = cfg["layer_norm_eps"]
    heads = cfg["num_attention_heads"]
    n = len(ids)
    x = (
        t[p + "embeddings.word_embeddings.weight"][ids]
        + t[p + "embeddings.position_embeddings.weight"][:n]
        + t[p + "embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, t[p + "embeddings.LayerNorm.weight"], t[p + "embeddings.LayerNorm.bias"], eps)
    for i in range(cfg["num_hidden_layers"]):
        L = lambda name: t[f"{p}encoder.layer.{i}.{name}"]
        lin = lambda h, name: h @ L(name + ".weight").T + L(name + ".bias")
        q, k, v = (lin(x, "attention.self." + m) for m in ("query", "key", "value"))
        d = q.shape[-1] // heads
        split = lambda h: h.reshape(n, heads, d).transpose(1, 0, 2)
        q, k, v = split(q), split(k), split(v)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        a = s / s.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(1, 0, 2).reshape(n, heads * d)
        x = layer_norm(lin(ctx, "attention.output.dense") + x,
                       L("attention.output.LayerNorm.weight"), L("attention.output.LayerNorm.bias"), eps)
        h = gelu(lin(x, "intermediate.dense"))
        x = layer_norm(lin(h, "output.dense") + x, L("output.LayerNorm.weight"), L("output.LayerNorm.bias"), eps)
    return x


def main():
    assets = os.environ.get("TAILOR_ASSETS", "/var/tmp/tailor-assets")
    folder = os.path.join(assets, "minilm-l6")
    cfg = json.load(open(os.path.join(folder, "config.json")))
    t = load_safetensors(os.path.join(folder, "model.safetensors"))
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    out = {"model": "all-MiniLM-L6-v2", "dims": DIMS, "sentences": []}
    normalized = []
    for sentence in SENTENCES:
        ids = tok.encode(sentence).ids
        states = bert(t, cfg, np.array(ids))
        mean = states.mean(0)
        unit = mean / np.linalg.norm(mean)
        normalized.append(unit)
        out["sentences"].append({
            "text": sentence,
            "ids": ids,
            "mean_normalized": [round(float(v), 7) for v in unit[:DIMS]],
            "mean": [round(float(v), 7) for v in mean[:DIMS]],
            "cls": [round(float(v), 7) for v in states[0, :DIMS]],
        })
    out["cosine"] = [[round(float(a @ b), 7) for b in normalized] for a in normalized]
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
