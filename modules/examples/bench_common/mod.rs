//! What the benchmark examples share: arguments, the texts, fixed-length tokenization, the
//! FLOP count and peak RSS, all matching `bench/torch_reference.py` so both sides of
//! `bench/ml.sh` measure the same work the same way.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use candle_core::{Device, Tensor};
use tailor_modules::encoder::Tokenized;
use tailor_modules::text::bert::Config;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// `--model DIR --texts FILE --samples N --seq N --batch N` (the python side's flags).
pub struct Args {
    pub model: PathBuf,
    pub texts: PathBuf,
    pub samples: usize,
    pub seq: usize,
    pub batch: usize,
}

impl Args {
    pub fn parse(default_batch: usize) -> anyhow::Result<Self> {
        let mut args = Args {
            model: PathBuf::new(),
            texts: PathBuf::new(),
            samples: 512,
            seq: 128,
            batch: default_batch,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<usize>()
                    .with_context(|| format!("{flag} {value}"))
            };
            match flag.as_str() {
                "--model" => args.model = value.into(),
                "--texts" => args.texts = value.into(),
                "--samples" => args.samples = number()?,
                "--seq" => args.seq = number()?,
                "--batch" => args.batch = number()?,
                other => anyhow::bail!("unknown flag {other}"),
            }
        }
        anyhow::ensure!(!args.model.as_os_str().is_empty(), "--model is required");
        anyhow::ensure!(!args.texts.as_os_str().is_empty(), "--texts is required");
        Ok(args)
    }
}

/// The first `n` non-empty lines of `path`, repeated if there are fewer (as the python side).
pub fn load_texts(path: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let all =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<String> = all
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    anyhow::ensure!(!lines.is_empty(), "{} has no texts", path.display());
    Ok(lines.iter().cycle().take(n).cloned().collect())
}

/// The checkpoint's tokenizer, truncating and padding every text to exactly `seq` tokens
/// (`padding="max_length"` on the python side), so both sides run the same shapes.
pub fn fixed_length_tokenizer(model: &Path, seq: usize) -> anyhow::Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(model.join("tokenizer.json"))
        .map_err(|e| anyhow!("reading tokenizer.json: {e}"))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: seq,
            ..Default::default()
        }))
        .map_err(|e| anyhow!("setting truncation: {e}"))?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(seq),
        ..Default::default()
    }));
    Ok(tokenizer)
}

pub fn tokenize(tokenizer: &Tokenizer, texts: &[String]) -> anyhow::Result<Tokenized> {
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| anyhow!("tokenizing: {e}"))?;
    let (batch, seq) = (encodings.len(), encodings[0].get_ids().len());
    let mut ids = Vec::with_capacity(batch * seq);
    let mut type_ids = Vec::with_capacity(batch * seq);
    let mut mask = Vec::with_capacity(batch * seq);
    for e in &encodings {
        ids.extend_from_slice(e.get_ids());
        type_ids.extend_from_slice(e.get_type_ids());
        mask.extend(e.get_attention_mask().iter().map(|&m| m as f32));
    }
    let device = Device::Cpu;
    Ok(Tokenized {
        ids: Tensor::from_vec(ids, (batch, seq), &device)?,
        type_ids: Tensor::from_vec(type_ids, (batch, seq), &device)?,
        mask: Tensor::from_vec(mask, (batch, seq), &device)?,
        word_ids: encodings
            .iter()
            .map(|e| {
                e.get_word_ids()
                    .iter()
                    .map(|w| w.map(|w| w as usize))
                    .collect()
            })
            .collect(),
    })
}

/// FLOPs of one token through the encoder's forward pass: the dense matmuls (q, k, v,
/// attention output, two FFN) and attention scores and weighted sum; a multiply-add is 2.
/// The same formula as `bert_flops_per_token` in `bench/torch_reference.py`.
pub fn bert_flops_per_token(cfg: &Config, seq: usize) -> f64 {
    let (h, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let per_layer = 2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * seq as f64 * h;
    cfg.num_hidden_layers as f64 * per_layer
}

/// Peak resident set size of this process in MiB (`VmHWM`, what `ru_maxrss` reports).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
