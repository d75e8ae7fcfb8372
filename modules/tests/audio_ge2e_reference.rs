//! The GE2E encoder against resemblyzer itself: mel frames, partial embeddings and the
//! utterance embedding of three generated clips, computed by resemblyzer 0.1.4's own code
//! from the same `pretrained.pt` (tests/reference/ge2e_reference.py → ge2e.json).

use std::path::PathBuf;

use serde::Deserialize;
use tailor_modules::audio::frontend::{MEL_BANDS, PARTIAL_FRAMES};
use tailor_modules::audio::{Ge2eEncoder, Ge2eOptions};

#[derive(Deserialize)]
struct Reference {
    clips: Vec<ClipReference>,
}

#[derive(Deserialize)]
struct ClipReference {
    name: String,
    seconds: f64,
    f_base: f64,
    samples: usize,
    partials: usize,
    mel_rows: std::collections::BTreeMap<String, Vec<f32>>,
    mel_first_partial_sum: f64,
    partial_embeddings: Vec<Vec<f32>>,
    embedding: Vec<f32>,
}

fn assets() -> PathBuf {
    std::env::var_os("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tailor-assets"))
}

/// The reference script's `clip`: a vibrato voice-like tone (five harmonics, amplitude
/// modulation) plus a little LCG noise, at 16 kHz.
fn clip(seconds: f64, f_base: f64) -> Vec<f32> {
    let rate = 16000.0;
    let n = (seconds * rate).round() as usize;
    let mut phase = 0.0f64;
    let mut state: u64 = 12345;
    (0..n)
        .map(|i| {
            let tau = i as f64 / rate;
            let f0 = f_base + 30.0 * (2.0 * std::f64::consts::PI * 3.0 * tau).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / rate;
            let amp = 0.2 * (0.6 + 0.4 * (2.0 * std::f64::consts::PI * 2.5 * tau).sin());
            let voiced: f64 = (1..6).map(|k| (k as f64 * phase).sin() / k as f64).sum();
            state = (state * 1664525 + 1013904223) % 4294967296;
            let noise = state as f64 / 4294967296.0 * 2.0 - 1.0;
            (amp * voiced + 0.02 * noise) as f32
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mel_frames_and_embeddings_match_resemblyzer() {
    let reference: Reference =
        serde_json::from_str(include_str!("reference/ge2e.json")).expect("ge2e.json");
    let encoder = Ge2eEncoder::load(assets().join("ge2e"), &Ge2eOptions::default())
        .expect("loading ge2e/pretrained.pt (scripts/fetch-assets)");
    let mut worst_mel = 0f32;
    let mut worst_partial = 0f32;
    let mut worst_embedding = 0f32;
    for r in &reference.clips {
        let wav = clip(r.seconds, r.f_base);
        assert_eq!(wav.len(), r.samples, "{}", r.name);
        let partials = encoder.wav_partials(&wav).unwrap();
        assert_eq!(partials.len(), r.partials, "{}: partial count", r.name);

        // Mel power frames of the first partial: within 2e-5 of each row's largest value.
        let first = &partials[0];
        for (frame, expected) in &r.mel_rows {
            let f: usize = frame.parse().unwrap();
            let ours = &first[f * MEL_BANDS..(f + 1) * MEL_BANDS];
            // (A frame of the zero padding after a short clip is all zeros.)
            let scale = expected.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let diff = max_abs_diff(ours, expected) / scale;
            worst_mel = worst_mel.max(diff);
            assert!(
                diff < 2e-5,
                "{} frame {f}: relative difference {diff}",
                r.name
            );
        }
        let sum: f64 = first[..PARTIAL_FRAMES * MEL_BANDS]
            .iter()
            .map(|&v| v as f64)
            .sum();
        let rel = (sum - r.mel_first_partial_sum).abs() / r.mel_first_partial_sum;
        assert!(
            rel < 1e-5,
            "{}: mel sum {sum} vs {}",
            r.name,
            r.mel_first_partial_sum
        );

        // Partial embeddings and the utterance embedding (unit vectors of 256).
        let encoded = encoder.embed_wavs(&[&wav]).unwrap();
        let tokens = encoded.tokens.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(tokens.len(), r.partials);
        for (i, (ours, expected)) in tokens.iter().zip(&r.partial_embeddings).enumerate() {
            let diff = max_abs_diff(ours, expected);
            worst_partial = worst_partial.max(diff);
            assert!(diff < 1e-5, "{} partial {i}: max difference {diff}", r.name);
        }
        let pooled = encoded.pooled.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let diff = max_abs_diff(&pooled, &r.embedding);
        worst_embedding = worst_embedding.max(diff);
        assert!(diff < 1e-5, "{}: embedding max difference {diff}", r.name);
        let cosine: f32 = pooled.iter().zip(&r.embedding).map(|(a, b)| a * b).sum();
        assert!(cosine > 0.99999, "{}: cosine {cosine}", r.name);
    }
    eprintln!(
        "worst: mel {worst_mel:.2e} (relative to the row), partial {worst_partial:.2e}, \
         embedding {worst_embedding:.2e}"
    );
    // The three clips are different voices to the encoder, not one.
    let embeds: Vec<&Vec<f32>> = reference.clips.iter().map(|c| &c.embedding).collect();
    let cos01: f32 = embeds[0].iter().zip(embeds[1]).map(|(a, b)| a * b).sum();
    assert!(cos01 < 0.99, "distinct clips embed apart ({cos01})");
}
