//! LoRA on EfficientNet-Lite0's 1×1 convolutions (the real checkpoint): every adapter
//! matrix gets a gradient, merging agrees with the unmerged forward (alpha ≠ rank), and a
//! saved adapter loads back to the same outputs. Images are small (48 px) to stay fast.

use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use tailor_modules::encoder::Encoder;
use tailor_modules::image::{ImageEncoder, ImageEncoderOptions};
use tailor_modules::lora::LoraConfig;
use tailor_modules::ops::SeededRng;
use tailor_modules::peft;

fn dir() -> PathBuf {
    std::env::var_os("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tailor-assets"))
        .join("efficientnet-lite0")
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 2,
        alpha: 6.0,
        dropout: 0.0,
        targets: vec![
            "_expand_conv".into(),
            "_project_conv".into(),
            "_conv_head".into(),
        ],
    }
}

fn load(seed: u64) -> ImageEncoder {
    let options = ImageEncoderOptions {
        image_size: 48,
        lora: Some(lora()),
        seed,
        ..Default::default()
    };
    ImageEncoder::load(dir(), &options).unwrap()
}

fn pixels() -> Tensor {
    SeededRng::new(5)
        .uniform((2, 48, 48, 3), -1.0, 1.0, &Device::Cpu)
        .unwrap()
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

fn pooled(encoder: &ImageEncoder, xs: &Tensor) -> Vec<f32> {
    encoder
        .encode_pixels(xs, None, false)
        .unwrap()
        .pooled
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Gives every B a small random value, so the adapters change the output.
fn perturb(vars: &[(String, Var)]) {
    let rng = SeededRng::new(11);
    for (name, var) in vars.iter().filter(|(n, _)| n.contains("lora_B")) {
        let value = rng.uniform(var.shape(), -0.05, 0.05, &Device::Cpu).unwrap();
        var.set(&value).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn every_adapter_matrix_gets_a_gradient() {
    let encoder = load(1);
    let vars = encoder.adapter_vars();
    // 15 expanding blocks + 16 projections + the head, each with A and B.
    assert_eq!(vars.len(), (15 + 16 + 1) * 2);
    let shape = |name: &str| {
        let (_, var) = vars
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name}"));
        var.dims().to_vec()
    };
    // PEFT's Conv2d LoRA shapes: A (rank, in, 1, 1), B (out, rank, 1, 1).
    assert_eq!(
        shape("base_model.model._blocks.1._expand_conv.lora_A.weight"),
        [2, 16, 1, 1]
    );
    assert_eq!(
        shape("base_model.model._blocks.1._expand_conv.lora_B.weight"),
        [96, 2, 1, 1]
    );
    assert_eq!(
        shape("base_model.model._blocks.0._project_conv.lora_A.weight"),
        [2, 32, 1, 1]
    );
    assert_eq!(
        shape("base_model.model._conv_head.lora_B.weight"),
        [1280, 2, 1, 1]
    );
    let xs = pixels();
    let probe = SeededRng::new(3)
        .uniform((2, 1280), -1.0, 1.0, &Device::Cpu)
        .unwrap();
    let loss = || {
        let encoded = encoder.encode_pixels(&xs, None, true).unwrap();
        (encoded.pooled * &probe).unwrap().sum_all().unwrap()
    };
    // B starts at zero: A's gradient is zero, B's is not.
    let grads = loss().backward().unwrap();
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
    for (_, var) in vars.iter().filter(|(n, _)| n.contains("lora_B")) {
        let g = grads.get(var.as_tensor()).unwrap();
        var.set(&(var.as_tensor() - (g * 0.01).unwrap()).unwrap())
            .unwrap();
    }
    let grads = loss().backward().unwrap();
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor()).unwrap();
        assert!(norm(g) > 0.0, "{name}: zero gradient after one step");
    }
}

#[test]
fn merging_agrees_with_the_unmerged_forward() {
    let mut encoder = load(2);
    let xs = pixels();
    let base = pooled(&encoder, &xs);
    perturb(&encoder.adapter_vars());
    let adapted = pooled(&encoder, &xs);
    assert!(
        max_diff(&adapted, &base) > 1e-3,
        "the adapters change nothing"
    );
    encoder.merge_adapters().unwrap();
    let merged = pooled(&encoder, &xs);
    assert!(
        max_diff(&merged, &adapted) < 1e-4,
        "{}",
        max_diff(&merged, &adapted)
    );
    encoder.unmerge_adapters().unwrap();
    let unmerged = pooled(&encoder, &xs);
    assert!(max_diff(&unmerged, &adapted) < 1e-4);
}

#[test]
fn a_saved_adapter_loads_back_to_the_same_outputs() {
    let encoder = load(3);
    perturb(&encoder.adapter_vars());
    // Train A a little too, so both matrices carry values.
    for (_, var) in encoder
        .adapter_vars()
        .iter()
        .filter(|(n, _)| n.contains("lora_A"))
    {
        var.set(&(var.as_tensor() * 1.5).unwrap()).unwrap();
    }
    let xs = pixels();
    let want = pooled(&encoder, &xs);
    let files = encoder.save_adapter("FEATURE_EXTRACTION").unwrap();
    let adapter = peft::load(&files.config_json, &files.safetensors, &Device::Cpu).unwrap();
    assert_eq!(adapter.config.r, 2);
    assert_eq!(adapter.config.lora_alpha, 6.0);
    let other = load(99);
    assert!(max_diff(&pooled(&other, &xs), &want) > 1e-3);
    other.apply_adapter(&adapter).unwrap();
    assert_eq!(pooled(&other, &xs), want);
    // A frozen encoder has nothing to save and no trainable tensors.
    let frozen = ImageEncoder::load(
        dir(),
        &ImageEncoderOptions {
            image_size: 48,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(frozen.adapter_vars().is_empty() && frozen.trained_vars().is_empty());
    assert!(frozen.save_adapter("FEATURE_EXTRACTION").is_err());
}

#[test]
fn unknown_targets_are_refused() {
    let options = ImageEncoderOptions {
        lora: Some(LoraConfig {
            targets: vec!["query".into()],
            ..lora()
        }),
        ..Default::default()
    };
    let err = ImageEncoder::load(dir(), &options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`query` is not a 1×1 convolution"), "{err}");
}
