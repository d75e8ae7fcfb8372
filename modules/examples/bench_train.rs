//! Training throughput of LoRA fine-tuning (r=8, alpha=16, query+value, dropout 0.1) of a
//! MiniLM classifier (mean pooling, 3-class linear head) with AdamW, one epoch over
//! `--samples` texts of exactly `--seq` tokens in batches of `--batch`. Prints one JSON line
//! shaped like `torch_reference.py train`. Run through `bench/ml.sh`.

mod bench_common;

use std::time::Instant;

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tailor_modules::blueprint::HeadKind;
use tailor_modules::catalog::Task;
use tailor_modules::encoder::{Encoder, Prepared};
use tailor_modules::heads::{HeadConfig, Heads, Target};
use tailor_modules::lora::LoraConfig;
use tailor_modules::text::{Pooling, TextEncoder, TextEncoderOptions};
use tailor_modules::train::{AdamW, Group};

fn main() -> anyhow::Result<()> {
    let args = bench_common::Args::parse(16)?;
    let encoder = TextEncoder::load(
        &args.model,
        &TextEncoderOptions {
            pooling: Pooling::Mean,
            max_tokens: args.seq,
            lora: Some(LoraConfig {
                rank: 8,
                alpha: 16.0,
                dropout: 0.1,
                targets: vec!["query".into(), "value".into()],
            }),
            seed: 7,
            base_name: None,
        },
    )?;
    let heads = Heads::new(
        vec![HeadConfig {
            name: "label".into(),
            task: Task::Classification,
            kind: HeadKind::Linear,
            dropout: 0.1,
            in_width: encoder.width(),
            labels: vec!["0".into(), "1".into(), "2".into()],
            class_weights: None,
            target_mean: 0.0,
            target_std: 1.0,
        }],
        7,
        &Device::Cpu,
    )?;
    let head = &heads.heads[0];
    let mut params: Vec<_> = encoder
        .adapter_vars()
        .into_iter()
        .map(|(n, v)| (n, v, Group::Adapter))
        .collect();
    params.extend(heads.vars().into_iter().map(|(n, v)| (n, v, Group::Head)));
    // torch.optim.AdamW's defaults: weight decay 0.01, lr 2e-4 as the python side.
    let mut optimizer = AdamW::new(params, 0.01)?;
    let lr = 2e-4;

    let texts = bench_common::load_texts(&args.texts, args.samples)?;
    let tokenizer = bench_common::fixed_length_tokenizer(&args.model, args.seq)?;
    let batches = texts
        .chunks(args.batch)
        .map(|chunk| bench_common::tokenize(&tokenizer, chunk))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let targets: Vec<Target> = (0..texts.len()).map(|i| Target::Class(i % 3)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    let start = Instant::now();
    for (b, batch) in batches.into_iter().enumerate() {
        let encoded = encoder.forward(&Prepared::Text(batch), true)?;
        let logits = head.forward(&encoded.pooled, Some(&mut rng))?;
        let batch_targets: Vec<&Target> = targets
            .iter()
            .skip(b * args.batch)
            .take(args.batch)
            .collect();
        let loss = head.loss(&logits, &batch_targets, None)?;
        let grads = loss.backward()?;
        optimizer.step(&grads, lr, lr)?;
    }
    let seconds = start.elapsed().as_secs_f64();

    let flops = 2.0
        * bench_common::bert_flops_per_token(encoder.config(), args.seq)
        * (args.seq * texts.len()) as f64;
    println!(
        "{}",
        serde_json::json!({
            "what": "train",
            "impl": "tailor",
            "samples_per_s": texts.len() as f64 / seconds,
            "gflops": flops / seconds / 1e9,
            "peak_rss_mib": bench_common::peak_rss_mib(),
            "seconds": seconds,
            "threads": candle_core::utils::get_num_threads(),
        })
    );
    Ok(())
}
