//! `lm/gemma3-270m` SFT with LoRA on prompt–response pairs (article → the law it comes
//! from), evaluated against the base model on held-out pairs: loss, perplexity, exact
//! match, ROUGE-L, and sample answers side by side.
//!
//!     python3 bench/gemma_sft_export.py 200 40 > /var/tmp/gemma-sft.jsonl
//!     cargo run --release -p tailor-modules --example gemma_sft -- /var/tmp/gemma-sft.jsonl

use anyhow::Context;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use serde::Deserialize;
use tailor_modules::generate::{Generator, GeneratorOptions, Pair, SamplingOptions};
use tailor_modules::lora::LoraConfig;

#[derive(Deserialize)]
struct Row {
    split: String,
    prompt: String,
    response: String,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/var/tmp/gemma-sft.jsonl".into());
    let assets = std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into());
    let model_dir = std::path::Path::new(&assets).join("gemma3-270m");
    let rows: Vec<Row> = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path}"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let pairs = |split: &str| -> Vec<Pair> {
        rows.iter()
            .filter(|r| r.split == split)
            .map(|r| Pair {
                prompt: r.prompt.clone(),
                response: r.response.clone(),
            })
            .collect()
    };
    let (train, test) = (pairs("train"), pairs("test"));
    let epochs = env_usize("EPOCHS", 2);
    let layers = env_usize("ADAPTED_LAYERS", 4);
    let batch = 4;
    let greedy = SamplingOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    println!("{} training pairs, {} held out", train.len(), test.len());

    let generator = Generator::load(
        &model_dir,
        &GeneratorOptions {
            lora: Some(LoraConfig {
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
            }),
            adapted_layers: Some(layers),
            seed: 7,
            max_positions: 256,
        },
    )?;
    // B starts at zero: before training the adapted model is the base model.
    let base = generator.evaluate(&test, &greedy)?;
    println!(
        "base:  loss {:.3}, perplexity {:.2}, exact match {:.3}, ROUGE-L {:.3}",
        base.loss, base.perplexity, base.exact_match, base.rouge_l
    );
    let vars = generator
        .adapter_vars()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let started = std::time::Instant::now();
    let mut tokens = 0usize;
    for epoch in 0..epochs {
        let mut total = 0.0;
        for (step, chunk) in train.chunks(batch).enumerate() {
            generator.reseed((epoch * 10_000 + step) as u64);
            let (loss, n) = generator.sft_loss(chunk, true)?;
            opt.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? as f64;
            tokens += chunk
                .iter()
                .map(|p| generator.encode_pair(p).map(|(ids, _)| ids.len()))
                .sum::<anyhow::Result<usize>>()?;
            let _ = n;
        }
        println!(
            "  epoch {epoch}: mean batch loss {:.3} ({:.0}s, {:.0} tokens/s)",
            total / train.len().div_ceil(batch) as f64,
            started.elapsed().as_secs_f64(),
            tokens as f64 / started.elapsed().as_secs_f64()
        );
    }
    let tuned = generator.evaluate(&test, &greedy)?;
    println!(
        "tuned: loss {:.3}, perplexity {:.2}, exact match {:.3}, ROUGE-L {:.3}",
        tuned.loss, tuned.perplexity, tuned.exact_match, tuned.rouge_l
    );
    for ((pair, before), after) in test.iter().zip(&base.outputs).zip(&tuned.outputs).take(6) {
        println!(
            "- {:?}\n  reference: {}\n  base:  {:?}\n  tuned: {:?}",
            pair.prompt.chars().skip(16).take(30).collect::<String>(),
            pair.response,
            before,
            after
        );
    }
    Ok(())
}
