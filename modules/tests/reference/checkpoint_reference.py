#!/usr/bin/env python3
"""Reference facts about checkpoints, for modules/tests/checkpoint_formats.rs.

PyTorch itself (`torch.load`) reads the two real legacy-format checkpoints Tailor ships
modules for (EfficientNet-Lite0 and resemblyzer's GE2E) and records, for every tensor
(nested dicts flattened with "."), its shape, dtype, the sum of its elements and its
first and last elements in row-major order (so a strided tensor read in the wrong order
shows up). It also writes four small fixtures holding the same nested dict, one per
format Tailor reads: PyTorch zip, PyTorch legacy, safetensors (flattened names) and GGUF
(F32 and Q8_0 tensors).

    /var/tmp/tailor-bench-venv/bin/python modules/tests/reference/checkpoint_reference.py

It writes checkpoints.json and checkpoint_fixture.* next to itself. The real checkpoints
are read from $TAILOR_ASSETS (default /var/tmp/tailor-assets).
"""
import json
import os

import gguf
import numpy as np
import torch
from safetensors.torch import save_file

ASSETS = os.environ.get("TAILOR_ASSETS", "/var/tmp/tailor-assets")
HERE = os.path.dirname(os.path.abspath(__file__))
REAL = {
    "efficientnet-lite0": "efficientnet-lite0/efficientnet-lite0.pth",
    "ge2e": "ge2e/pretrained.pt",
}


def flatten(obj, prefix=""):
    """Every tensor reachable through dicts and lists, by dotted path."""
    out = {}
    if torch.is_tensor(obj):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def describe(tensors):
    out = {}
    for name, t in sorted(tensors.items()):
        flat = t.detach().contiguous().reshape(-1)
        out[name] = {
            "shape": list(t.shape),
            "dtype": str(t.dtype).replace("torch.", ""),
            "contiguous": bool(t.is_contiguous()),
            "sum": float(flat.double().sum()) if flat.numel() else 0.0,
            "first": [float(v) for v in flat[:4].double()],
            "last": [float(v) for v in flat[-4:].double()],
        }
    return out


def fixture():
    g = torch.Generator().manual_seed(6)
    weight = torch.randn(4, 3, generator=g).t()  # (3, 4), non-contiguous
    conv = torch.randn(2, 3, 2, 2, generator=g).to(memory_format=torch.channels_last)
    return {
        "model_state": {
            "linear.weight": weight,
            "linear.bias": torch.arange(3, dtype=torch.float32) / 4,
            "conv.weight": conv,
            "steps": torch.tensor(7, dtype=torch.int64),
            "half": torch.tensor([0.5, -2.0, 1024.0], dtype=torch.float16),
        },
        "epoch": 3,
        "history": [torch.tensor([1.0, 2.0])],
    }


def main():
    real = {}
    for key, rel in REAL.items():
        obj = torch.load(os.path.join(ASSETS, rel), map_location="cpu", weights_only=False)
        real[key] = describe(flatten(obj))

    obj = fixture()
    torch.save(obj, os.path.join(HERE, "checkpoint_fixture.pt"))
    torch.save(
        obj,
        os.path.join(HERE, "checkpoint_fixture_legacy.pt"),
        _use_new_zipfile_serialization=False,
    )
    flat = {k: v.contiguous() for k, v in flatten(obj).items()}
    save_file(flat, os.path.join(HERE, "checkpoint_fixture.safetensors"))

    writer = gguf.GGUFWriter(os.path.join(HERE, "checkpoint_fixture.gguf"), "tailor-fixture")
    f32 = flat["model_state.linear.weight"].numpy().astype(np.float32)
    writer.add_tensor("linear.weight", f32)
    # 64 values: two Q8_0 blocks of 32.
    q = (torch.arange(64, dtype=torch.float32) / 8 - 4).reshape(2, 32).numpy()
    writer.add_tensor(
        "quantized",
        gguf.quantize(q, gguf.GGMLQuantizationType.Q8_0),
        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
    )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    dequantized = gguf.dequantize(
        gguf.quantize(q, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    )

    out = {
        "real": real,
        "fixture": describe(flatten(obj)),
        "gguf": {
            "linear.weight": {"shape": list(f32.shape), "values": f32.reshape(-1).tolist()},
            "quantized": {
                "shape": list(q.shape),
                "values": dequantized.reshape(-1).astype(float).tolist(),
            },
        },
    }
    with open(os.path.join(HERE, "checkpoints.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
