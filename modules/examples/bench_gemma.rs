//! Gemma 3 270M speed on this machine: LoRA SFT training tokens/s, greedy generation
//! tokens/s (KV cache), and peak RSS. `bench/gemma.sh` runs it beside PyTorch.
//!
//!     cargo run --release -p tailor-modules --example bench_gemma

use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use tailor_modules::generate::{Generator, GeneratorOptions, Pair, SamplingOptions, chat_prompt};
use tailor_modules::lora::LoraConfig;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let assets = std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into());
    let layers: usize = std::env::var("ADAPTED_LAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let generator = Generator::load(
        std::path::Path::new(&assets).join("gemma3-270m"),
        &GeneratorOptions {
            lora: Some(LoraConfig {
                rank: 8,
                alpha: 16.0,
                dropout: 0.0,
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
            seed: 1,
            max_positions: 256,
        },
    )?;
    // The same four pairs as bench/gemma_torch.py.
    let pairs: Vec<Pair> = [
        ("盗窃公私财物，数额较大的，处三年以下有期徒刑、拘役或者管制，并处或者单处罚金。出自哪部法律？", "中华人民共和国刑法"),
        ("为了保护民事主体的合法权益，调整民事关系，维护社会和经济秩序，制定本法。出自哪部法律？", "中华人民共和国民法典"),
        ("广告经营者、广告发布者应当按照国家有关规定，建立、健全广告业务的承接登记、审核、档案管理制度。出自哪部法律？", "中华人民共和国广告法"),
        ("Which law says that the contract ends when both parties have performed their obligations?", "The Civil Code of the People's Republic of China"),
    ]
    .iter()
    .map(|(p, r)| Pair { prompt: p.to_string(), response: r.to_string() })
    .collect();
    let batch_tokens: usize = pairs
        .iter()
        .map(|p| generator.encode_pair(p).map(|(ids, _)| ids.len()))
        .sum::<anyhow::Result<usize>>()?;
    let vars = generator
        .adapter_vars()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let steps = 5;
    let (loss, _) = generator.sft_loss(&pairs, true)?; // warm-up
    opt.backward_step(&loss)?;
    let started = std::time::Instant::now();
    for _ in 0..steps {
        let (loss, _) = generator.sft_loss(&pairs, true)?;
        opt.backward_step(&loss)?;
    }
    let train_secs = started.elapsed().as_secs_f64();
    println!(
        "training: LoRA r8 on all projections of the last {layers} layers, batch of 4 pairs ({batch_tokens} tokens): {:.0} tokens/s ({:.2} s/step)",
        (batch_tokens * steps) as f64 / train_secs,
        train_secs / steps as f64
    );
    let options = SamplingOptions {
        max_new_tokens: 64,
        ..Default::default()
    };
    let prompt = chat_prompt("请简要介绍中华人民共和国民法典。");
    let _ = generator.generate(
        &prompt,
        &SamplingOptions {
            max_new_tokens: 4,
            ..Default::default()
        },
        |_, _| true,
    )?;
    let started = std::time::Instant::now();
    let mut first = None;
    let out = generator.generate(&prompt, &options, |_, _| {
        first.get_or_insert_with(|| started.elapsed().as_secs_f64());
        true
    })?;
    let secs = started.elapsed().as_secs_f64();
    let first = first.unwrap_or(secs);
    let n = out.token_ids.len();
    println!(
        "generation: {} prompt tokens, {n} new tokens greedy: {:.1} tokens/s after the first ({:.2} s to the first token)",
        out.prompt_tokens,
        (n.saturating_sub(1)) as f64 / (secs - first).max(1e-9),
        first
    );
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
    Ok(())
}
