//! Gemma 3's tokenizer rebuilt from the GGUF metadata gives exactly the ids of the original
//! tokenizer on Chinese and English text (legal text, numbers, punctuation, mixed scripts,
//! whitespace runs, special tokens). The reference ids come from
//! `tests/reference/gemma3_tokenizer_reference.py`, where transformers' GGUF tokenizer and
//! SentencePiece on the same pieces agree on them.

use serde::Deserialize;
use tailor_modules::gguf::GgufFile;
use tailor_modules::text::gemma3::tokenizer::GemmaTokenizer;

#[derive(Deserialize)]
struct Reference {
    bos_id: u32,
    eos_id: u32,
    vocab_size: usize,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn gguf_path() -> std::path::PathBuf {
    let assets = std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into());
    std::path::Path::new(&assets).join("gemma3-270m/gemma-3-270m-q4_k_m.gguf")
}

#[test]
fn token_ids_equal_the_reference_tokenizers() {
    let reference: Reference =
        serde_json::from_str(include_str!("reference/gemma3_tokenizer.json")).unwrap();
    let gguf = GgufFile::open(gguf_path()).unwrap();
    let tokenizer = GemmaTokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(tokenizer.vocab_size(), reference.vocab_size);
    assert_eq!(tokenizer.bos_id(), reference.bos_id);
    assert_eq!(tokenizer.eos_id(), reference.eos_id);
    assert!(tokenizer.adds_bos());
    let mut wrong = Vec::new();
    for sentence in &reference.sentences {
        let ids = tokenizer.encode_ids(&sentence.text).unwrap();
        if ids != sentence.ids {
            wrong.push(format!(
                "{:?}\n  ours:      {ids:?}\n  reference: {:?}",
                sentence.text, sentence.ids
            ));
        }
        let decoded = tokenizer.decode(&sentence.ids, false).unwrap();
        assert_eq!(decoded, sentence.decoded, "decoding {:?}", sentence.text);
    }
    assert!(
        wrong.is_empty(),
        "{} sentences differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(reference.sentences.len() >= 15);
}

#[test]
fn offsets_point_into_the_text() {
    let gguf = GgufFile::open(gguf_path()).unwrap();
    let tokenizer = GemmaTokenizer::from_gguf(&gguf).unwrap();
    let text = "第一条 为了保护民事主体的合法权益 and English";
    let encoding = tokenizer.encode(text).unwrap();
    assert_eq!(encoding.ids.len(), encoding.offsets.len());
    // The spans tile the text without gaps.
    let mut end = 0;
    for &(s, e) in &encoding.offsets {
        assert_eq!(s, end, "offsets {:?}", encoding.offsets);
        end = e;
    }
    assert_eq!(end, text.len());
    assert_eq!(tokenizer.token_id("<end_of_turn>"), Some(106));
}
