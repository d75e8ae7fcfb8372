"""Reference token ids for Gemma 3 270M's tokenizer, from the GGUF checkpoint alone.

Two independent tokenizers are built from the GGUF metadata (vocabulary, scores, token
types) and must agree on every sentence before anything is written:

1. transformers' own GGUF path (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`), a BPE
   with merges rebuilt from the vocabulary;
2. SentencePiece itself, with a `ModelProto` rebuilt from the same metadata (BPE, byte
   fallback, no dummy prefix, whitespace kept): Gemma's original `tokenizer.model` is a
   SentencePiece BPE model, so this is the original algorithm on the original pieces.

Run with the bench venv:
    /var/tmp/tailor-bench-venv/bin/python modules/tests/reference/gemma3_tokenizer_reference.py
It writes modules/tests/reference/gemma3_tokenizer.json next to itself.
"""

import json
import os
import struct
import sys

import gguf
import sentencepiece as spm
from transformers import AutoTokenizer

ASSETS = os.environ.get("TAILOR_ASSETS", "/var/tmp/tailor-assets")
FOLDER = os.path.join(ASSETS, "gemma3-270m")
FILE = "gemma-3-270m-q4_k_m.gguf"
HERE = os.path.dirname(os.path.abspath(__file__))

SENTENCES = [
    "Hello, world!",
    "The contract ends on 31 May 2025; payment is due within 30 days.",
    "中华人民共和国民法典",
    "第一条 为了保护民事主体的合法权益，调整民事关系，维护社会和经济秩序，适应中国特色社会主义发展要求，弘扬社会主义核心价值观，根据宪法，制定本法。",
    "第一千二百六十条　本法自2021年1月1日起施行。《中华人民共和国婚姻法》同时废止。",
    "违反本法第十二条规定的，处五千元以上五万元以下的罚款；情节严重的，吊销营业执照。",
    "根据《刑法》第264条，盗窃公私财物，数额较大的，处三年以下有期徒刑、拘役或者管制，并处或者单处罚金。",
    "Mixed 中文 and English: GDP增长了3.5%，达到¥1,234,567.89元。",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnew lines\n\n\nand    runs     of      spaces",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 2024-11-29",
    "Punctuation!?… «quotes» “curly” 「括号」【方括号】——破折号……省略号",
    "<div>HTML</div> and <start_of_turn>user\nhi<end_of_turn>",
    "Émigré café naïve façade Zürich 東京 서울 Москва",
    "emoji 😀👍🏽 and symbols ∑∫√ ≤ ≥ ≠",
    "行政机关实施行政许可，应当遵循公开、公平、公正、非歧视的原则。",
    "",
]


def read_vocab(path):
    reader = gguf.GGUFReader(path)
    fields = reader.fields

    def strings(key):
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def numbers(key):
        f = fields[key]
        return [f.parts[i][0].item() for i in f.data]

    return strings("tokenizer.ggml.tokens"), numbers("tokenizer.ggml.scores"), numbers("tokenizer.ggml.token_type")


def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number, wire, payload):
    return _varint((number << 3) | wire) + payload


def _int(number, value):
    return _field(number, 0, _varint(value))


def _bytes(number, value):
    return _field(number, 2, _varint(len(value)) + value)


def _float(number, value):
    return _field(number, 5, struct.pack("<f", value))


def sentencepiece_from_gguf(tokens, scores, types):
    """A SentencePiece `ModelProto`, serialized by hand (the venv has no protobuf): field
    numbers from sentencepiece_model.proto."""
    trainer = b"".join([
        _int(3, 2),  # model_type: BPE
        _int(4, len(tokens)),  # vocab_size
        _int(35, 1),  # byte_fallback
        _int(40, 3), _int(41, 2), _int(42, 1), _int(43, 0),  # unk, bos, eos, pad ids
    ])
    normalizer = b"".join([
        _bytes(1, b"identity"),
        _int(3, 0),  # add_dummy_prefix
        _int(4, 0),  # remove_extra_whitespaces
        _int(5, 1),  # escape_whitespaces
    ])
    # GGUF token types are SentencePiece's piece types (1 normal, 2 unknown, 3 control,
    # 4 user-defined, 5 unused, 6 byte).
    pieces = []
    for index, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        if kind == 4:
            # llama.cpp's converter writes user-defined whitespace pieces with real spaces.
            token = token.replace(" ", "\u2581")
        if index == 3:
            kind = 2
        pieces.append(_bytes(1, _bytes(1, token.encode("utf-8")) + _float(2, score) + _int(3, kind)))
    model = b"".join(pieces) + _bytes(2, trainer) + _bytes(3, normalizer)
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model)
    return processor


def main():
    path = os.path.join(FOLDER, FILE)
    tokens, scores, types = read_vocab(path)
    hf = AutoTokenizer.from_pretrained(FOLDER, gguf_file=FILE)
    sp = sentencepiece_from_gguf(tokens, scores, types)
    out = []
    disagreements = 0
    for text in SENTENCES:
        with_bos = hf(text)["input_ids"]
        plain = hf(text, add_special_tokens=False)["input_ids"]
        assert with_bos == [2] + plain, (text, with_bos[:3])
        reference = sp.encode(text)
        if reference != plain:
            # SentencePiece has no notion of control tokens inside text; compare only where
            # the text has none.
            if "<start_of_turn>" not in text:
                disagreements += 1
                print("DISAGREE", repr(text), plain, reference, file=sys.stderr)
        decoded = hf.decode(plain)
        out.append({"text": text, "ids": plain, "decoded": decoded, "sentencepiece_agrees": reference == plain})
    if disagreements:
        sys.exit(f"{disagreements} sentences differ between transformers and sentencepiece")
    doc = {
        "source": f"{FILE} metadata via transformers {__import__('transformers').__version__} (gguf_file=) and sentencepiece {spm.__version__}",
        "bos_id": 2,
        "eos_id": 1,
        "vocab_size": len(tokens),
        "sentences": out,
    }
    with open(os.path.join(HERE, "gemma3_tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
    print(f"wrote {len(out)} sentences")


if __name__ == "__main__":
    main()
