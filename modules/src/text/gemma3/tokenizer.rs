//! Gemma's tokenizer, rebuilt from a GGUF file's metadata (there is no `tokenizer.json`).
//!
//! Gemma's original tokenizer is a SentencePiece BPE model: byte fallback, no dummy
//! prefix, spaces kept as `▁`. The GGUF stores its pieces (`tokenizer.ggml.tokens`), scores
//! and piece types, but no merges. As transformers does for a Gemma GGUF, merges are
//! rebuilt from the vocabulary: every way of cutting a token into two tokens of the
//! vocabulary is a merge, ranked by the token's position in the file (Gemma's pieces are
//! stored best-first). The result runs on the `tokenizers` crate's BPE.
//!
//! Two GGUF spellings are undone first: user-defined whitespace pieces are stored with real
//! spaces (`"  "`) and become `▁▁` again; control pieces (`<bos>`, `<start_of_turn>` …) are
//! special tokens matched whole, and user-defined ones (`\n`, `<div>` …) are matched whole
//! in the raw text too.
//!
//! The reference test compares its ids with both transformers' GGUF tokenizer and
//! SentencePiece on a model rebuilt from the same metadata
//! (`tests/reference/gemma3_tokenizer_reference.py`).

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::{GgufError, GgufFile};

/// GGUF (SentencePiece) piece types.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// A Gemma tokenizer and its special ids.
pub struct GemmaTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    vocab_size: usize,
    add_bos: bool,
}

/// Tokens of one text: ids and, per id, the byte span in the text it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoding {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

impl GemmaTokenizer {
    /// Builds the tokenizer from the `tokenizer.ggml.*` metadata of `gguf`.
    pub fn from_gguf(gguf: &GgufFile) -> anyhow::Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "llama" {
            anyhow::bail!(
                "{}: tokenizer.ggml.model is `{model}`; Gemma's is a SentencePiece (`llama`) vocabulary",
                gguf.path().display()
            );
        }
        let tokens = gguf.get_strings("tokenizer.ggml.tokens")?;
        let types = gguf.get_i32s("tokenizer.ggml.token_type")?;
        if types.len() != tokens.len() {
            return Err(GgufError::Metadata {
                path: gguf.path().display().to_string(),
                key: "tokenizer.ggml.token_type".into(),
                message: format!("has {} entries for {} tokens", types.len(), tokens.len()),
            }
            .into());
        }
        let id = |key: &str, default: u32| -> anyhow::Result<u32> {
            if gguf.has(key) {
                Ok(u32::try_from(gguf.get_usize(key)?)?)
            } else {
                Ok(default)
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id", 2)?;
        let eos = id("tokenizer.ggml.eos_token_id", 1)?;
        let pad = id("tokenizer.ggml.padding_token_id", 0)?;
        let unk = id("tokenizer.ggml.unknown_token_id", 3)?;
        let add_bos = if gguf.has("tokenizer.ggml.add_bos_token") {
            gguf.get_bool("tokenizer.ggml.add_bos_token")?
        } else {
            true
        };
        for (what, v) in [
            ("bos", bos),
            ("eos", eos),
            ("padding", pad),
            ("unknown", unk),
        ] {
            if v as usize >= tokens.len() {
                anyhow::bail!(
                    "{}: the {what} token id {v} is outside the vocabulary of {}",
                    gguf.path().display(),
                    tokens.len()
                );
            }
        }
        let inner = build(&tokens, &types, &tokens[unk as usize])?;
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            vocab_size: tokens.len(),
            add_bos,
        })
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether the checkpoint asks for `<bos>` before a text.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The id of a token spelled exactly `token` (a special token such as `<end_of_turn>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Tokens of `text` with their byte offsets, without `<bos>`. Special tokens written in
    /// the text (`<start_of_turn>`) are recognized, as the chat template needs.
    pub fn encode(&self, text: &str) -> anyhow::Result<Encoding> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(Encoding {
            ids: encoding.get_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// The token ids of `text`, without `<bos>`.
    pub fn encode_ids(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self.encode(text)?.ids)
    }

    /// Text of `ids`; special tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> anyhow::Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))
    }
}

/// The BPE tokenizer transformers builds for a Gemma GGUF (`GemmaTokenizer` with merges
/// from `generate_merges`), from the pieces and their types.
fn build(tokens: &[String], types: &[i32], unk: &str) -> anyhow::Result<Tokenizer> {
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "\u{2581}".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // A repeated spelling keeps its last id, as a Python dict built in order does.
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(spelled.len());
    for (index, token) in spelled.iter().enumerate() {
        vocab.insert(token.clone(), index as u32);
    }
    let merges = merges(&spelled, &vocab);
    let vocab: tokenizers::models::bpe::Vocab = vocab.into_iter().collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.to_string())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| anyhow::anyhow!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(
        Replace::new(" ", "\u{2581}").map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    // What Gemma's tokenizer.json declares; after the normalizer there is no space left to
    // split on, so a text is one piece (as in SentencePiece, which does not pre-split).
    tokenizer.with_pre_tokenizer(Some(
        Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    ));
    tokenizer.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(|e| anyhow::anyhow!("{e}"))?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));
    let control: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, t)| **t == CONTROL)
        .map(|(token, _)| AddedToken::from(token.clone(), true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&control);
    // User-defined pieces are matched whole in the raw text; the whitespace ones were
    // respelled with `▁` and are reached through merges instead.
    let user: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(token, t)| {
            **t == USER_DEFINED && !(token.contains(' ') && token.trim().is_empty())
        })
        .map(|(token, _)| AddedToken::from(token.clone(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user);
    Ok(tokenizer)
}

/// Every cut of a token into two tokens of the vocabulary, best token first (its position
/// in the file), longer left part first within a token (transformers' `generate_merges`
/// with the positions as scores).
fn merges(spelled: &[String], vocab: &HashMap<String, u32>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (index, token) in spelled.iter().enumerate() {
        // A repeated spelling is ranked at its last position.
        if vocab.get(token).copied() != Some(index as u32) {
            continue;
        }
        let cuts: Vec<usize> = token.char_indices().map(|(i, _)| i).skip(1).collect();
        for &cut in cuts.iter().rev() {
            let (left, right) = token.split_at(cut);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                out.push((left.to_string(), right.to_string()));
            }
        }
    }
    out
}
