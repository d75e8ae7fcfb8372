//! Chinese statutes into their 8 `law_department` classes with the `text/gemma3-270m`
//! encoder: a frozen baseline (linear head on mean-pooled states) against LoRA on the last
//! layers with the same head, trained on a few hundred articles and scored on articles of
//! other laws.
//!
//!     python3 bench/gemma_laws_export.py 40 20 > /var/tmp/gemma-laws.jsonl
//!     cargo run --release -p tailor-modules --example gemma_laws -- /var/tmp/gemma-laws.jsonl

use std::collections::BTreeMap;

use anyhow::Context;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::Deserialize;
use tailor_modules::encoder::Encoder;
use tailor_modules::lora::LoraConfig;
use tailor_modules::ops::SeededRng;
use tailor_modules::text::gemma3::{GemmaEncoder, GemmaEncoderOptions};

#[derive(Deserialize)]
struct Row {
    split: String,
    label: String,
    text: String,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Head {
    w: Var,
    b: Var,
}

impl Head {
    fn new(classes: usize, width: usize, seed: u64) -> anyhow::Result<Self> {
        let bound = 1.0 / (width as f32).sqrt();
        let w = SeededRng::new(seed).uniform((classes, width), -bound, bound, &Device::Cpu)?;
        Ok(Self {
            w: Var::from_tensor(&w)?,
            b: Var::zeros(classes, DType::F32, &Device::Cpu)?,
        })
    }

    fn logits(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.matmul(&self.w.as_tensor().t()?)?
            .broadcast_add(self.b.as_tensor())
    }
}

/// Accuracy and macro-F1 of predictions.
fn score(truth: &[u32], pred: &[u32], classes: usize) -> (f64, f64) {
    let acc = truth.iter().zip(pred).filter(|(t, p)| t == p).count() as f64 / truth.len() as f64;
    let mut f1 = 0.0;
    for c in 0..classes as u32 {
        let tp = truth
            .iter()
            .zip(pred)
            .filter(|&(&t, &p)| t == c && p == c)
            .count() as f64;
        let fp = truth
            .iter()
            .zip(pred)
            .filter(|&(&t, &p)| t != c && p == c)
            .count() as f64;
        let fnn = truth
            .iter()
            .zip(pred)
            .filter(|&(&t, &p)| t == c && p != c)
            .count() as f64;
        if tp > 0.0 {
            f1 += 2.0 * tp / (2.0 * tp + fp + fnn);
        }
    }
    (acc, f1 / classes as f64)
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/var/tmp/gemma-laws.jsonl".into());
    let assets = std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into());
    let model_dir = std::path::Path::new(&assets).join("gemma3-270m");
    let rows: Vec<Row> = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let labels: BTreeMap<String, u32> = rows
        .iter()
        .map(|r| r.label.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, l)| (l, i as u32))
        .collect();
    let classes = labels.len();
    let split = |name: &str| -> (Vec<String>, Vec<u32>) {
        rows.iter()
            .filter(|r| r.split == name)
            .map(|r| (r.text.clone(), labels[&r.label]))
            .unzip()
    };
    let (train_x, train_y) = split("train");
    let (test_x, test_y) = split("test");
    let max_tokens = env_usize("MAX_TOKENS", 64);
    let layers = env_usize("ADAPTED_LAYERS", 2);
    let epochs = env_usize("EPOCHS", 4);
    let batch = 16;
    println!(
        "{} classes, {} train / {} test articles (test laws unseen), max_tokens {max_tokens}",
        classes,
        train_x.len(),
        test_x.len()
    );

    let run = |lora: Option<LoraConfig>, epochs: usize| -> anyhow::Result<(f64, f64, f64)> {
        let started = std::time::Instant::now();
        let encoder = GemmaEncoder::load(
            &model_dir,
            &GemmaEncoderOptions {
                max_tokens,
                lora: lora.clone(),
                adapted_layers: Some(layers),
                seed: 7,
                ..Default::default()
            },
        )?;
        let head = Head::new(classes, encoder.width(), 11)?;
        let mut vars: Vec<Var> = vec![head.w.clone(), head.b.clone()];
        vars.extend(encoder.adapter_vars().into_iter().map(|(_, v)| v));
        let mut opt = AdamW::new(
            vars,
            ParamsAdamW {
                lr: 1e-3,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let y_all = Tensor::new(train_y.as_slice(), &Device::Cpu)?;
        let order_rng = SeededRng::new(3);
        for epoch in 0..epochs {
            let keys = order_rng
                .uniform(train_x.len(), 0.0, 1.0, &Device::Cpu)?
                .to_vec1::<f32>()?;
            let mut order: Vec<usize> = (0..train_x.len()).collect();
            order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
            let mut total = 0.0;
            for (step, chunk) in order.chunks(batch).enumerate() {
                encoder.reseed((epoch * 1000 + step) as u64);
                let texts: Vec<String> = chunk.iter().map(|&i| train_x[i].clone()).collect();
                let idx = Tensor::new(
                    chunk
                        .iter()
                        .map(|&i| i as u32)
                        .collect::<Vec<_>>()
                        .as_slice(),
                    &Device::Cpu,
                )?;
                let y = y_all.index_select(&idx, 0)?;
                let pooled = encoder.encode(&texts, lora.is_some())?.pooled;
                let loss = candle_nn::loss::cross_entropy(&head.logits(&pooled)?, &y)?;
                opt.backward_step(&loss)?;
                total += loss.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            }
            println!(
                "  epoch {epoch}: train loss {:.4} ({:.0}s)",
                total / train_x.len() as f64,
                started.elapsed().as_secs_f64()
            );
        }
        let mut pred = Vec::new();
        for chunk in test_x.chunks(batch) {
            let pooled = encoder.encode(chunk, false)?.pooled;
            pred.extend(head.logits(&pooled)?.argmax(D::Minus1)?.to_vec1::<u32>()?);
        }
        let (acc, f1) = score(&test_y, &pred, classes);
        Ok((acc, f1, started.elapsed().as_secs_f64()))
    };

    let (acc, f1, secs) = run(None, env_usize("BASELINE_EPOCHS", 30))?;
    println!("frozen baseline: accuracy {acc:.3}, macro-F1 {f1:.3} ({secs:.0}s)");
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
    };
    let (acc_l, f1_l, secs_l) = run(Some(lora), epochs)?;
    println!(
        "LoRA (rank 8, all projections of the last {layers} layers): accuracy {acc_l:.3}, macro-F1 {f1_l:.3} ({secs_l:.0}s)"
    );
    println!(
        "LoRA - baseline: accuracy {:+.3}, macro-F1 {:+.3}",
        acc_l - acc,
        f1_l - f1
    );
    Ok(())
}
