//! Every LoRA matrix in every layer of the real MiniLM checkpoint receives a gradient, and
//! nothing else does (DESIGN.md §5: a fused op without backward would silently stop it).

mod text_support;

use candle_core::{Device, Tensor, Var};
use tailor_modules::encoder::Encoder;
use tailor_modules::lora::LoraConfig;
use tailor_modules::ops::SeededRng;
use tailor_modules::text::{Pooling, TextEncoder, TextEncoderOptions};
use text_support::{minilm, texts};

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

#[test]
fn every_lora_matrix_in_all_six_layers_gets_a_non_zero_gradient() {
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        // Every linear layer: query, key, value and the three `dense` layers.
        targets: vec!["query".into(), "key".into(), "value".into(), "dense".into()],
    };
    let options = TextEncoderOptions {
        pooling: Pooling::Mean,
        max_tokens: 32,
        lora: Some(lora),
        seed: 7,
        ..Default::default()
    };
    let encoder = TextEncoder::load(minilm(), &options).unwrap();
    let vars = encoder.adapter_vars();
    assert_eq!(vars.len(), 6 * 6 * 2, "6 layers × 6 linear layers × (A, B)");

    let input = encoder
        .tokenize(&texts(&[
            "The contract ends in May.",
            "Payment is due within thirty days.",
        ]))
        .unwrap();
    // A fixed random direction: the loss is the pooled vectors projected on it.
    let probe = SeededRng::new(3)
        .uniform((2, 384), -1.0, 1.0, &Device::Cpu)
        .unwrap();
    let loss = |train: bool| {
        let encoded = encoder.encode_tokenized(&input, train).unwrap();
        (encoded.pooled * &probe).unwrap().sum_all().unwrap()
    };

    // Step 0: B is zero, so dL/dA = scale · B^T (dL/dy)^T x = 0 exactly, while dL/dB =
    // scale · (dL/dy)^T (x A^T) is not. One SGD step on B makes it non-zero; from then
    // on A learns too. That is LoRA's design, not a broken gradient.
    let grads = loss(true).backward().unwrap();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        if name.contains("lora_A") {
            assert_eq!(norm(g), 0.0, "{name}: A's gradient is zero while B is zero");
        } else {
            assert!(norm(g) > 0.0, "{name}: B's gradient is zero at step 0");
        }
    }
    // The frozen base weights are plain tensors: no gradient is computed for them.
    let (_, first) = &encoder.model().lora_layers()[0];
    assert!(
        grads.get(first.base().weight()).is_none(),
        "the base weight must stay frozen"
    );

    let lr = 0.1;
    let step = |var: &Var, g: &Tensor| {
        var.set(&(var.as_tensor() - (g * lr).unwrap()).unwrap())
            .unwrap()
    };
    for (_, var) in vars.iter().filter(|(n, _)| n.contains("lora_B")) {
        step(var, grads.get(var.as_tensor()).unwrap());
    }

    let grads = loss(true).backward().unwrap();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        assert!(norm(g) > 0.0, "{name}: zero gradient after one step");
    }
    // The names are PEFT's: one A and one B per adapted module in every layer.
    for layer in 0..6 {
        for path in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ] {
            for which in ["lora_A", "lora_B"] {
                let name = format!("base_model.model.encoder.layer.{layer}.{path}.{which}.weight");
                assert!(vars.iter().any(|(n, _)| *n == name), "missing {name}");
            }
        }
    }
}

#[test]
fn the_same_seed_reproduces_a_training_forward_pass() {
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.2,
        targets: vec!["query".into(), "value".into()],
    };
    let load = || {
        let options = TextEncoderOptions {
            lora: Some(lora.clone()),
            seed: 42,
            max_tokens: 32,
            ..Default::default()
        };
        TextEncoder::load(minilm(), &options).unwrap()
    };
    let batch = texts(&["Dropout draws from the seeded generator."]);
    let a = load()
        .encode(&batch, true)
        .unwrap()
        .pooled
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = load()
        .encode(&batch, true)
        .unwrap()
        .pooled
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    let eval = load()
        .encode(&batch, false)
        .unwrap()
        .pooled
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(a, eval, "training mode applies dropout");
}

/// The whole backward pass (fused layer norm, softmax, GELU, frozen linear layers, LoRA)
/// against finite differences of the loss, on a tiny random BERT.
#[test]
fn adapter_gradients_match_finite_differences() {
    let dir = text_support::TinyBert {
        layers: 2,
        ..Default::default()
    }
    .write("tiny-fd");
    let lora = LoraConfig {
        rank: 2,
        alpha: 6.0,
        dropout: 0.0,
        targets: vec!["query".into(), "value".into(), "dense".into()],
    };
    let options = TextEncoderOptions {
        pooling: Pooling::Mean,
        max_tokens: 16,
        lora: Some(lora),
        seed: 5,
        ..Default::default()
    };
    let encoder = TextEncoder::load(&dir, &options).unwrap();
    let vars = encoder.adapter_vars();
    let rng = SeededRng::new(17);
    for (_, var) in vars.iter().filter(|(n, _)| n.contains("lora_B")) {
        var.set(&rng.uniform(var.shape(), -0.5, 0.5, &Device::Cpu).unwrap())
            .unwrap();
    }
    let input = encoder
        .tokenize(&texts(&[
            "a short one",
            "and a somewhat longer second text",
        ]))
        .unwrap();
    let probe = rng.uniform((2, 16), -1.0, 1.0, &Device::Cpu).unwrap();
    let loss = || {
        let encoded = encoder.encode_tokenized(&input, false).unwrap();
        // Squared, so the loss is not linear in the pooled vector.
        (encoded.pooled * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .sqr()
            .unwrap()
    };
    let grads = loss().backward().unwrap();

    let eps = 1e-2f32;
    let mut checked = 0;
    for (name, var) in vars.iter().filter(|(n, _)| {
        n.contains("layer.0.attention.self.query") || n.contains("layer.1.output.dense")
    }) {
        let grad = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let original = var.as_tensor().copy().unwrap();
        for index in [0usize, 3] {
            let at = |delta: f32| {
                let mut values = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                values[index] += delta;
                var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss().to_scalar::<f32>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            var.set(&original).unwrap();
            let tol = 1e-2 * numeric.abs().max(grad[index].abs()) + 1e-4;
            assert!(
                (grad[index] - numeric).abs() <= tol,
                "{name}[{index}]: backward {} vs numeric {numeric}",
                grad[index]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
    text_support::rm(&dir);
}

#[test]
fn reseeding_repeats_the_dropout_masks() {
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.2,
        targets: vec!["query".into()],
    };
    let options = TextEncoderOptions {
        lora: Some(lora),
        seed: 1,
        max_tokens: 32,
        ..Default::default()
    };
    let encoder = TextEncoder::load(minilm(), &options).unwrap();
    let batch = texts(&["Resuming a run draws the same masks."]);
    let step = |seed: u64| {
        encoder.reseed(seed);
        encoder
            .encode(&batch, true)
            .unwrap()
            .pooled
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let first = step(5);
    let other = step(6);
    assert_ne!(first, other);
    assert_eq!(step(5), first, "the same step seed gives the same dropout");
}
