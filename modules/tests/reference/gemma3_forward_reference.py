"""Reference forward passes of Gemma 3 270M, computed by transformers (PyTorch, f32) on the
GGUF checkpoint dequantized, for modules/tests/gemma_forward.rs.

transformers reads the GGUF itself (its own dequantizer, its own Gemma 3 implementation:
sliding/global attention, (1 + w) RMSNorm, GELU-tanh, tied embeddings), so these numbers
are independent of the Rust code.

    /var/tmp/tailor-bench-venv/bin/python modules/tests/reference/gemma3_forward_reference.py
writes modules/tests/reference/gemma3_forward.json.
"""

import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ASSETS = os.environ.get("TAILOR_ASSETS", "/var/tmp/tailor-assets")
FOLDER = os.path.join(ASSETS, "gemma3-270m")
FILE = "gemma-3-270m-q4_k_m.gguf"
HERE = os.path.dirname(os.path.abspath(__file__))

TEXTS = [
    "The capital of France is",
    "第一条 为了保护民事主体的合法权益，调整民事关系，维护社会和经济秩序，",
    "中华人民共和国刑法第二百六十四条规定，盗窃公私财物，数额较大的，",
]
DIMS = 16
GREEDY = 12


def main():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(FOLDER, gguf_file=FILE)
    model = AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file=FILE, dtype=torch.float32)
    model.eval()
    out = []
    with torch.no_grad():
        for text in TEXTS:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            outputs = model(input_ids=ids, output_hidden_states=True)
            hidden = outputs.hidden_states[-1][0]  # after the final norm
            logits = outputs.logits[0, -1]
            top = torch.topk(logits, 10)
            pooled = hidden[1:].mean(0)  # `<bos>` left out, as the encoder does
            generated = model.generate(ids, max_new_tokens=GREEDY, do_sample=False)[0, ids.shape[1]:]
            out.append({
                "text": text,
                "ids": ids[0].tolist(),
                "hidden_first_dims": hidden[:, :DIMS].tolist(),
                "hidden_norms": hidden.norm(dim=-1).tolist(),
                "pooled_first_dims": pooled[:DIMS].tolist(),
                "last_logits_top_ids": top.indices.tolist(),
                "last_logits_top_values": top.values.tolist(),
                "last_logits_mean": logits.mean().item(),
                "last_logits_std": logits.std().item(),
                "greedy_ids": generated.tolist(),
                "greedy_text": tokenizer.decode(generated),
            })
            print(repr(text), "->", repr(out[-1]["greedy_text"]))
    doc = {
        "source": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, {FILE} dequantized to f32",
        "dims": DIMS,
        "cases": out,
    }
    with open(os.path.join(HERE, "gemma3_forward.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
