"""The PyTorch side of bench/gemma.sh: Gemma 3 270M from the same GGUF, dequantized to f32
by transformers, LoRA (peft) on the same projections and layers, the same four pairs and
sampling settings as modules/examples/bench_gemma.rs. Threads: as many as torch takes
(set OMP_NUM_THREADS to compare like with like)."""

import os
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

ASSETS = os.environ.get("TAILOR_ASSETS", "/var/tmp/tailor-assets")
FOLDER = os.path.join(ASSETS, "gemma3-270m")
FILE = "gemma-3-270m-q4_k_m.gguf"
LAYERS = int(os.environ.get("ADAPTED_LAYERS", "4"))
PAIRS = [
    ("盗窃公私财物，数额较大的，处三年以下有期徒刑、拘役或者管制，并处或者单处罚金。出自哪部法律？", "中华人民共和国刑法"),
    ("为了保护民事主体的合法权益，调整民事关系，维护社会和经济秩序，制定本法。出自哪部法律？", "中华人民共和国民法典"),
    ("广告经营者、广告发布者应当按照国家有关规定，建立、健全广告业务的承接登记、审核、档案管理制度。出自哪部法律？", "中华人民共和国广告法"),
    ("Which law says that the contract ends when both parties have performed their obligations?", "The Civil Code of the People's Republic of China"),
]


def chat(user):
    return f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"


def main():
    tok = AutoTokenizer.from_pretrained(FOLDER, gguf_file=FILE)
    model = AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=FILE, dtype=torch.float32)
    n_layers = model.config.num_hidden_layers
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                        layers_to_transform=list(range(n_layers - LAYERS, n_layers)), task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    rows, labels = [], []
    for prompt, response in PAIRS:
        p = tok(chat(prompt))["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<end_of_turn>")]
        rows.append(p + r)
        labels.append([-100] * len(p) + r)
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    lab = torch.tensor([l + [-100] * (width - len(l)) for l in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    tokens = sum(map(len, rows))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    steps = 5
    start = time.time()
    for _ in range(steps):
        step()
    secs = time.time() - start
    print(f"training: LoRA r8 on all projections of the last {LAYERS} layers, batch of 4 pairs ({tokens} tokens): "
          f"{tokens * steps / secs:.0f} tokens/s ({secs / steps:.2f} s/step)")
    model.eval()
    prompt = tok(chat("请简要介绍中华人民共和国民法典。"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=4, do_sample=False)
        start = time.time()
        out = model.generate(prompt, max_new_tokens=1, do_sample=False)
        first = time.time() - start
        start = time.time()
        out = model.generate(prompt, max_new_tokens=64, do_sample=False)
        secs = time.time() - start
    n = out.shape[1] - prompt.shape[1]
    print(f"generation: {prompt.shape[1]} prompt tokens, {n} new tokens greedy: "
          f"{(n - 1) / max(secs - first, 1e-9):.1f} tokens/s after the first ({first:.2f} s to the first token)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
