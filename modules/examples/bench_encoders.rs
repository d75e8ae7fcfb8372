//! Training throughput and peak memory of each encoder: a LoRA training step (forward,
//! backward, SGD on the adapters) on a batch of synthetic inputs, timed over a few steps
//! after a warm-up. Run by bench/encoders.sh; one row per encoder (others add theirs).
//!
//!     cargo run --release -p tailor-modules --example bench_encoders -- [steps]

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use tailor_modules::audio::{Ge2eEncoder, Ge2eOptions};
use tailor_modules::encoder::Encoder;
use tailor_modules::image::{ImageEncoder, ImageEncoderOptions};
use tailor_modules::lora::LoraConfig;
use tailor_modules::ops::SeededRng;

fn assets() -> PathBuf {
    std::env::var_os("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tailor-assets"))
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
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
        .unwrap_or(f64::NAN)
}

/// Samples per second of LoRA training steps on `pixels`.
fn image_steps(encoder: &ImageEncoder, pixels: &Tensor, steps: usize) -> anyhow::Result<f64> {
    let vars = encoder.adapter_vars();
    let step = || -> anyhow::Result<()> {
        let loss = encoder
            .encode_pixels(pixels, None, true)?
            .pooled
            .sqr()?
            .mean_all()?;
        let grads = loss.backward()?;
        for (_, var) in &vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (g * 1e-3)?)?)?;
            }
        }
        Ok(())
    };
    step()?;
    let started = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    Ok((steps * pixels.dim(0)?) as f64 / started.elapsed().as_secs_f64())
}

/// Clips per second of GE2E LoRA training steps on `rows` (one 1.6 s partial each).
fn audio_steps(encoder: &Ge2eEncoder, rows: usize, steps: usize) -> anyhow::Result<f64> {
    let wav: Vec<f32> = (0..24_000)
        .map(|i| 0.2 * (i as f32 * 0.07).sin() + 0.05 * (i as f32 * 0.31).sin())
        .collect();
    let partials = encoder.wav_partials(&wav)?;
    let batch = encoder.batch(&vec![Some(partials); rows])?;
    let vars = encoder.adapter_vars();
    let step = || -> anyhow::Result<()> {
        let loss = encoder
            .encode_batch(&batch, true)?
            .pooled
            .sqr()?
            .mean_all()?;
        let grads = loss.backward()?;
        for (_, var) in &vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (g * 1e-3)?)?)?;
            }
        }
        Ok(())
    };
    step()?;
    let started = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    Ok((steps * rows) as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let batch = 8;
    println!("| encoder | input | batch | training samples/s | peak RSS (MiB) |");
    println!("|---|---|---|---|---|");
    for size in [64usize, 224] {
        let encoder = ImageEncoder::load(
            assets().join("efficientnet-lite0"),
            &ImageEncoderOptions {
                image_size: size,
                lora: Some(LoraConfig {
                    rank: 8,
                    alpha: 16.0,
                    dropout: 0.0,
                    targets: vec!["_project_conv".into(), "_conv_head".into()],
                }),
                ..Default::default()
            },
        )?;
        let pixels = SeededRng::new(1).uniform((batch, size, size, 3), -1.0, 1.0, &Device::Cpu)?;
        let rate = image_steps(&encoder, &pixels, steps)?;
        println!(
            "| image/efficientnet-lite0 (LoRA r8 on project+head) | {size}×{size} | {batch} | {rate:.1} | {:.0} |",
            peak_rss_mib()
        );
    }
    for (label, targets) in [
        ("last layer + linear", vec!["ih_l2", "hh_l2", "linear"]),
        ("all layers", vec!["ih", "hh", "linear"]),
    ] {
        let encoder = Ge2eEncoder::load(
            assets().join("ge2e"),
            &Ge2eOptions {
                lora: Some(LoraConfig {
                    rank: 4,
                    alpha: 8.0,
                    dropout: 0.0,
                    targets: targets.into_iter().map(String::from).collect(),
                }),
                ..Default::default()
            },
        )?;
        let rate = audio_steps(&encoder, batch, steps)?;
        println!(
            "| audio/ge2e (LoRA r4 on {label}) | 1.6 s clip, 160×40 mel | {batch} | {rate:.1} | {:.0} |",
            peak_rss_mib()
        );
    }
    Ok(())
}
