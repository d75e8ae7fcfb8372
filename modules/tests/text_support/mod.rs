//! Helpers shared by the text encoder and LoRA tests: where the real checkpoint lives, and
//! tiny random BERT folders for fast math tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use tailor_modules::ops::SeededRng;

/// `$TAILOR_ASSETS` (default `/var/tmp/tailor-assets`), filled by `scripts/fetch-assets`.
pub fn assets() -> PathBuf {
    PathBuf::from(
        std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into()),
    )
}

/// The all-MiniLM-L6-v2 folder; panics with the fix when it is missing.
pub fn minilm() -> PathBuf {
    let dir = assets().join("minilm-l6");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets (or set TAILOR_ASSETS)",
        dir.display()
    );
    dir
}

/// A fresh empty folder under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tailor-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

pub struct TinyBert {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Prefix every key with `bert.` (as `BertFor…` checkpoints do).
    pub bert_prefix: bool,
    pub seed: u64,
}

impl Default for TinyBert {
    fn default() -> Self {
        Self {
            layers: 2,
            hidden: 16,
            heads: 2,
            intermediate: 32,
            bert_prefix: false,
            seed: 1,
        }
    }
}

impl TinyBert {
    /// Writes a random BERT checkpoint folder (with the real MiniLM tokenizer, so the vocab
    /// is 30522) and returns its path.
    pub fn write(&self, tag: &str) -> PathBuf {
        let dir = temp_dir(tag);
        let vocab = 30522;
        let max_pos = 64;
        let config = serde_json::json!({
            "model_type": "bert", "vocab_size": vocab, "hidden_size": self.hidden,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "intermediate_size": self.intermediate, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": max_pos, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "pad_token_id": 0
        });
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        std::fs::copy(minilm().join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();

        let rng = SeededRng::new(self.seed);
        let dev = Device::Cpu;
        let p = if self.bert_prefix { "bert." } else { "" };
        let mut ts: HashMap<String, Tensor> = HashMap::new();
        let mut put = |name: String, shape: &[usize], lo: f32, hi: f32| {
            ts.insert(
                format!("{p}{name}"),
                rng.uniform(shape, lo, hi, &dev).unwrap(),
            );
        };
        let h = self.hidden;
        put(
            "embeddings.word_embeddings.weight".into(),
            &[vocab, h],
            -1.0,
            1.0,
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            &[max_pos, h],
            -0.5,
            0.5,
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            &[2, h],
            -0.5,
            0.5,
        );
        put("embeddings.LayerNorm.weight".into(), &[h], 0.8, 1.2);
        put("embeddings.LayerNorm.bias".into(), &[h], -0.1, 0.1);
        for i in 0..self.layers {
            let l = format!("encoder.layer.{i}");
            for (path, o, n) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", self.intermediate, h),
                ("output.dense", h, self.intermediate),
            ] {
                let bound = 1.0 / (n as f32).sqrt();
                put(format!("{l}.{path}.weight"), &[o, n], -bound, bound);
                put(format!("{l}.{path}.bias"), &[o], -0.1, 0.1);
            }
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                put(format!("{l}.{ln}.weight"), &[h], 0.8, 1.2);
                put(format!("{l}.{ln}.bias"), &[h], -0.1, 0.1);
            }
        }
        candle_core::safetensors::save(&ts, dir.join("model.safetensors")).unwrap();
        dir
    }
}

pub fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn rm(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
