//! Encoder inference throughput: the frozen MiniLM encoder, mean pooling and L2
//! normalization (what sentence-transformers' all-MiniLM-L6-v2 pipeline does), tokenizing
//! inside the timed loop as `SentenceTransformer.encode` does, `--samples` texts of exactly
//! `--seq` tokens in batches of `--batch`. Prints one JSON line shaped like
//! `torch_reference.py encode`. Run through `bench/ml.sh`.

mod bench_common;

use std::time::Instant;

use candle_core::{D, Tensor};
use tailor_modules::encoder::{Encoder, Prepared};
use tailor_modules::text::{Pooling, TextEncoder};

fn encode(
    encoder: &TextEncoder,
    tokenizer: &tokenizers::Tokenizer,
    texts: &[String],
    batch: usize,
) -> anyhow::Result<Vec<Tensor>> {
    texts
        .chunks(batch)
        .map(|chunk| {
            let input = bench_common::tokenize(tokenizer, chunk)?;
            let pooled = encoder.forward(&Prepared::Text(input), false)?.pooled;
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            Ok(pooled.broadcast_div(&norm)?)
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = bench_common::Args::parse(32)?;
    let encoder = TextEncoder::load_frozen(&args.model, Pooling::Mean, args.seq)?;
    let tokenizer = bench_common::fixed_length_tokenizer(&args.model, args.seq)?;
    let texts = bench_common::load_texts(&args.texts, args.samples)?;

    encode(
        &encoder,
        &tokenizer,
        &texts[..args.batch.min(texts.len())],
        args.batch,
    )?;
    let start = Instant::now();
    let embeddings = encode(&encoder, &tokenizer, &texts, args.batch)?;
    let seconds = start.elapsed().as_secs_f64();
    anyhow::ensure!(embeddings.iter().map(|e| e.dims()[0]).sum::<usize>() == texts.len());

    let flops = bench_common::bert_flops_per_token(encoder.config(), args.seq)
        * (args.seq * texts.len()) as f64;
    println!(
        "{}",
        serde_json::json!({
            "what": "encode",
            "impl": "tailor",
            "sequences_per_s": texts.len() as f64 / seconds,
            "gflops": flops / seconds / 1e9,
            "peak_rss_mib": bench_common::peak_rss_mib(),
            "seconds": seconds,
            "threads": candle_core::utils::get_num_threads(),
        })
    );
    Ok(())
}
