"""Reference side of the ML benchmarks: PyTorch + Hugging Face PEFT on the same CPU.

Prints one JSON line per measurement, read by bench/ml.sh, which runs Tailor's side in
the same run and prints the table. Run through bench/ml.sh, not alone.

  python bench/torch_reference.py train  --model DIR --texts FILE --threads 2
  python bench/torch_reference.py encode --model DIR --texts FILE --threads 2
  python bench/torch_reference.py matmul --threads 2
"""
import argparse
import json
import resource
import time


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bert_flops_per_token(hidden, layers, inter, seq):
    # Dense matmuls (q, k, v, out, two FFN) plus attention scores and weighted sum.
    per_layer = 2 * (4 * hidden * hidden + 2 * hidden * inter) + 4 * seq * hidden
    return layers * per_layer


def load_texts(path, n):
    texts = [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
    while len(texts) < n:
        texts = texts + texts
    return texts[:n]


def matmul(args):
    import torch

    torch.set_num_threads(args.threads)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    # The best of 5 rounds of 10: a ceiling is the best the machine gives, and a shared
    # machine disturbs single rounds (the same on the Rust side).
    reps, dt = 10, float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        dt = min(dt, time.perf_counter() - t)
    print(json.dumps({"what": "matmul", "impl": "torch", "gflops": 2 * n**3 * reps / dt / 1e9}))


def train(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(7)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=3)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                     task_type="SEQ_CLS")
    model = get_peft_model(model, cfg)
    model.train()
    texts = load_texts(args.texts, args.samples)
    labels = torch.tensor([i % 3 for i in range(len(texts))])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    enc = tok(texts, padding="max_length", truncation=True, max_length=args.seq,
              return_tensors="pt")
    t = time.perf_counter()
    for i in range(0, len(texts), args.batch):
        out = model(input_ids=enc["input_ids"][i:i + args.batch],
                    attention_mask=enc["attention_mask"][i:i + args.batch],
                    labels=labels[i:i + args.batch])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    dt = time.perf_counter() - t
    c = model.config
    # Forward plus the input-gradient half of backward: 2x forward for a frozen base (the
    # formula already counts a multiply-add as 2 FLOPs; LoRA and head are negligible).
    flops = 2 * bert_flops_per_token(c.hidden_size, c.num_hidden_layers,
                                     c.intermediate_size, args.seq) * args.seq * len(texts)
    print(json.dumps({"what": "train", "impl": "torch+peft", "samples_per_s": len(texts) / dt,
                      "gflops": flops / dt / 1e9, "peak_rss_mib": peak_rss_mib(),
                      "seconds": dt}))


def encode(args):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = args.seq
    # sentence-transformers pads each batch to its longest item and sorts texts by length,
    # so its last batches would be shorter than Tailor's: pad every batch to exactly
    # `seq` tokens, as the Rust side does, so both sides do the same work.
    model[0].processing_kwargs = {"text": {"padding": "max_length", "max_length": args.seq}}
    texts = load_texts(args.texts, args.samples)
    width = model.preprocess(texts[-2:])["input_ids"].shape[1]
    assert width == args.seq, f"sequences are {width} tokens, not {args.seq}"
    model.encode(texts[:args.batch], batch_size=args.batch)
    t = time.perf_counter()
    model.encode(texts, batch_size=args.batch)
    dt = time.perf_counter() - t
    c = model[0].auto_model.config
    flops = bert_flops_per_token(c.hidden_size, c.num_hidden_layers, c.intermediate_size,
                                 args.seq) * args.seq * len(texts)
    print(json.dumps({"what": "encode", "impl": "sentence-transformers",
                      "sequences_per_s": len(texts) / dt, "gflops": flops / dt / 1e9,
                      "peak_rss_mib": peak_rss_mib(), "seconds": dt}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["train", "encode", "matmul"])
    p.add_argument("--model")
    p.add_argument("--texts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="16 for train, 32 for encode")
    a = p.parse_args()
    {"train": train, "encode": encode, "matmul": matmul}[a.what](a)
