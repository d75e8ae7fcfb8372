//! LoRA on the real GE2E encoder: every adapter (input and hidden projections of the three
//! LSTM layers, and the final linear layer) gets a gradient through the recurrence, merging
//! gives the unmerged outputs, and a saved adapter loads back to the same outputs (and is
//! refused by another base).

use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use tailor_modules::audio::{Ge2eEncoder, Ge2eOptions};
use tailor_modules::encoder::{Encoder, FileValue, Prepared, RawColumn};
use tailor_modules::lora::LoraConfig;
use tailor_modules::ops::SeededRng;
use tailor_modules::peft::{self, AdapterError};

fn ge2e_dir() -> PathBuf {
    std::env::var_os("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tailor-assets"))
        .join("ge2e")
}

fn norm(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A 16-bit mono WAV of a chirp from `f0` to `f1` Hz at `rate`.
fn chirp_wav(rate: u32, seconds: f64, f0: f64, f1: f64) -> Vec<u8> {
    let n = (rate as f64 * seconds) as usize;
    let samples: Vec<i16> = (0..n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            let phase = 2.0 * std::f64::consts::PI * (f0 * t + (f1 - f0) * t * t / (2.0 * seconds));
            (0.3 * phase.sin() * 32767.0) as i16
        })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

fn options(lora: Option<LoraConfig>) -> Ge2eOptions {
    Ge2eOptions {
        lora,
        seed: 5,
        ..Default::default()
    }
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        // alpha ≠ rank, so a wrong scale in merge would show.
        alpha: 12.0,
        dropout: 0.1,
        targets: vec!["ih".into(), "hh".into(), "linear".into()],
    }
}

/// Two clips (22.05 kHz WAV, resampled) and a row without one.
fn batch(encoder: &Ge2eEncoder) -> Prepared {
    let column = RawColumn::Files(vec![
        Some(FileValue::new(
            "a/rising.wav",
            chirp_wav(22050, 1.0, 200.0, 900.0),
        )),
        None,
        Some(FileValue::new(
            "b/falling.wav",
            chirp_wav(22050, 2.0, 1500.0, 300.0),
        )),
    ]);
    encoder.prepare(&column).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn every_adapter_learns_and_merge_and_save_agree() {
    let mut encoder = Ge2eEncoder::load(ge2e_dir(), &options(Some(lora()))).unwrap();
    let vars = encoder.adapter_vars();
    assert_eq!(
        vars.len(),
        (3 * 2 + 1) * 2,
        "3 layers × (ih, hh) + linear, × (A, B)"
    );
    for layer in 0..3 {
        for path in [format!("lstm.ih_l{layer}"), format!("lstm.hh_l{layer}")] {
            let name = format!("base_model.model.{path}.lora_B.weight");
            assert!(vars.iter().any(|(n, _)| *n == name), "missing {name}");
        }
    }

    let input = batch(&encoder);
    let Prepared::Dense(dense) = &input else {
        panic!("audio prepares a dense batch")
    };
    assert_eq!(
        dense.present.to_vec1::<f32>().unwrap(),
        vec![1.0, 0.0, 1.0],
        "the row without a clip is marked absent"
    );
    // 1 s → 1 partial; 2 s → 2 partials.
    assert_eq!(
        dense.mask.as_ref().unwrap().to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 0.0], vec![0.0, 0.0], vec![1.0, 1.0]]
    );

    let probe = SeededRng::new(3)
        .uniform((3, 256), -1.0, 1.0, &Device::Cpu)
        .unwrap();
    let loss = |encoder: &Ge2eEncoder| {
        let encoded = encoder.forward(&input, true).unwrap();
        (encoded.pooled * &probe).unwrap().sum_all().unwrap()
    };
    // Step 0: B = 0, so A's gradient is exactly zero and B's is not (LoRA's design).
    let grads = loss(&encoder).backward().unwrap();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        if name.contains("lora_A") {
            assert_eq!(norm(g), 0.0, "{name}");
        } else {
            assert!(norm(g) > 0.0, "{name}: zero gradient at step 0");
        }
    }
    let step = |var: &Var, g: &Tensor| {
        var.set(&(var.as_tensor() - (g * 0.5).unwrap()).unwrap())
            .unwrap()
    };
    for (_, var) in vars.iter().filter(|(n, _)| n.contains("lora_B")) {
        step(var, grads.get(var.as_tensor()).unwrap());
    }
    let grads = loss(&encoder).backward().unwrap();
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor()).unwrap();
        assert!(norm(g) > 0.0, "{name}: zero gradient after one step");
    }
    // The hidden adapters really change the output (the recurrence passes their gradient).
    let before = encoder.forward(&input, false).unwrap().pooled;
    let base = Ge2eEncoder::load(ge2e_dir(), &options(None)).unwrap();
    let frozen = base.forward(&input, false).unwrap().pooled;
    let moved = max_diff(&before, &frozen);
    assert!(
        moved > 1e-4,
        "the adapters moved the embeddings by only {moved}"
    );

    // Merge: the same outputs from the folded weights; unmerge restores them.
    encoder.merge_adapters().unwrap();
    let merged = encoder.forward(&input, false).unwrap().pooled;
    let diff = max_diff(&before, &merged);
    // (f32 rounding of the folded weights, carried through 160 steps of 3 layers.)
    assert!(diff < 5e-5, "merged outputs differ by {diff}");
    encoder.unmerge_adapters().unwrap();
    let diff = max_diff(&before, &encoder.forward(&input, false).unwrap().pooled);
    assert!(diff < 5e-5, "unmerged outputs differ by {diff}");

    // Save, load into a fresh encoder: the same outputs.
    let files = encoder.save_adapter("FEATURE_EXTRACTION").unwrap();
    let adapter = peft::load(&files.config_json, &files.safetensors, &Device::Cpu).unwrap();
    assert_eq!(adapter.config.r, 4);
    assert_eq!(adapter.config.lora_alpha, 12.0);
    let loaded = Ge2eEncoder::load_with_adapter(ge2e_dir(), &adapter, &options(None)).unwrap();
    let diff = max_diff(&before, &loaded.forward(&input, false).unwrap().pooled);
    assert!(diff < 1e-6, "loaded adapter differs by {diff}");

    // Another base (same shapes, other weights) refuses it, naming the weights.
    let other = Ge2eEncoder::from_source(
        &|name: &str, shape: &[usize]| {
            Ok(SeededRng::new(name.len() as u64).uniform(shape, -0.1, 0.1, &Device::Cpu)?)
        },
        "0".repeat(64),
        "random".into(),
        &options(Some(lora())),
    )
    .unwrap();
    let err = other.apply_adapter(&adapter).unwrap_err();
    assert!(
        matches!(&err, AdapterError::Mismatch(msg) if msg.contains("SHA-256")),
        "{err}"
    );
}

#[test]
fn unknown_targets_and_files_are_named() {
    let bad = LoraConfig {
        targets: vec!["query".into()],
        ..lora()
    };
    let err = format!(
        "{:#}",
        Ge2eEncoder::load(ge2e_dir(), &options(Some(bad)))
            .err()
            .unwrap()
    );
    assert!(err.contains("`query`"), "{err}");

    let encoder = Ge2eEncoder::load(ge2e_dir(), &options(None)).unwrap();
    assert!(encoder.adapter_vars().is_empty() && encoder.trained_vars().is_empty());
    let mut cut = chirp_wav(16000, 1.0, 300.0, 600.0);
    cut.truncate(cut.len() / 2);
    let err = encoder
        .prepare(&RawColumn::Files(vec![Some(FileValue::new(
            "clips/cut.wav",
            cut,
        ))]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("clips/cut.wav") && err.contains("truncated"),
        "{err}"
    );
    let err = encoder
        .prepare(&RawColumn::Text(vec!["hello".into()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("audio files"), "{err}");

    // A checkpoint without the LSTM's tensors is refused with the tensor named.
    let dir = std::env::temp_dir().join(format!("ge2e-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tensors = std::collections::HashMap::new();
    tensors.insert(
        "model_state.lstm.weight_ih_l0".to_string(),
        Tensor::zeros((1024, 40), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, dir.join("pretrained.pt")).unwrap();
    let err = format!(
        "{:#}",
        Ge2eEncoder::load(&dir, &options(None)).err().unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
    assert!(err.contains("lstm.weight_hh_l0"), "{err}");
}
