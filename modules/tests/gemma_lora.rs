//! LoRA on the real Gemma 3 270M: every adapter matrix gets a gradient, merging and
//! unmerging keep the outputs, an adapter saved in PEFT's layout loads back to the same
//! outputs, and the cache of frozen-layer states changes nothing.

use candle_core::{Device, Tensor, Var};
use tailor_modules::encoder::Encoder;
use tailor_modules::lora::LoraConfig;
use tailor_modules::ops::SeededRng;
use tailor_modules::peft;
use tailor_modules::text::gemma3::{GemmaEncoder, GemmaEncoderOptions};

fn model_dir() -> std::path::PathBuf {
    let assets = std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into());
    std::path::Path::new(&assets).join("gemma3-270m")
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
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

const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

fn options(cache_bytes: usize) -> GemmaEncoderOptions {
    GemmaEncoderOptions {
        max_tokens: 32,
        lora: Some(LoraConfig {
            rank: 4,
            alpha: 12.0,
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
        adapted_layers: Some(2),
        seed: 5,
        base_name: None,
        cache_bytes,
    }
}

#[test]
fn lora_on_gemma3_trains_merges_and_round_trips() {
    let mut encoder = GemmaEncoder::load(model_dir(), &options(1 << 26)).unwrap();
    let vars = encoder.adapter_vars();
    assert_eq!(vars.len(), 2 * 7 * 2, "2 layers × 7 projections × (A, B)");
    for layer in [16, 17] {
        for path in PROJECTIONS {
            for which in ["lora_A", "lora_B"] {
                let name = format!("base_model.model.model.layers.{layer}.{path}.{which}.weight");
                assert!(vars.iter().any(|(n, _)| *n == name), "missing {name}");
            }
        }
    }
    let batch = texts(&[
        "第一条 为了保护民事主体的合法权益",
        "The contract ends in May.",
    ]);
    let input = encoder.tokenize(&batch).unwrap();
    let probe = SeededRng::new(3)
        .uniform((2, 640), -1.0, 1.0, &Device::Cpu)
        .unwrap();
    let loss = |encoder: &GemmaEncoder| {
        let pooled = encoder.encode_tokenized(&input, true).unwrap().pooled;
        (pooled * &probe).unwrap().sum_all().unwrap()
    };

    // Step 0: B is zero, so A's gradient is exactly zero and B's is not.
    let grads = loss(&encoder).backward().unwrap();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        if name.contains("lora_A") {
            assert_eq!(norm(g), 0.0, "{name}");
        } else {
            assert!(norm(g) > 0.0, "{name}: zero gradient at step 0");
        }
    }
    let step = |var: &Var, g: &Tensor| {
        var.set(&(var.as_tensor() - (g * 0.05).unwrap()).unwrap())
            .unwrap()
    };
    for (_, var) in vars.iter().filter(|(n, _)| n.contains("lora_B")) {
        step(var, grads.get(var.as_tensor()).unwrap());
    }
    let grads = loss(&encoder).backward().unwrap();
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(norm(g) > 0.0, "{name}: zero gradient after one step");
    }

    // The adapters now change the output.
    let tuned = encoder.encode_tokenized(&input, false).unwrap().pooled;
    let uncached = GemmaEncoder::load(model_dir(), &options(0)).unwrap();
    let fresh = uncached.encode_tokenized(&input, false).unwrap().pooled;
    assert!(
        max_diff(&tuned, &fresh) > 1e-3,
        "the adapters change the output"
    );

    // The cached frozen-layer states give what a full pass gives, alone or batched.
    for (name, var) in uncached.adapter_vars() {
        let (_, ours) = vars.iter().find(|(n, _)| *n == name).unwrap();
        var.set(ours.as_tensor()).unwrap();
    }
    let full = uncached.encode_tokenized(&input, false).unwrap().pooled;
    assert!(
        max_diff(&tuned, &full) < 1e-4,
        "cache vs full pass: {}",
        max_diff(&tuned, &full)
    );
    let alone = encoder.encode(&batch[1..], false).unwrap().pooled;
    let second = tuned.get(1).unwrap().unsqueeze(0).unwrap();
    assert!(
        max_diff(&alone, &second) < 1e-4,
        "a row does not depend on its batch"
    );

    // Merge and unmerge keep the outputs (alpha ≠ rank).
    encoder.merge_adapters().unwrap();
    let merged = encoder.encode_tokenized(&input, false).unwrap().pooled;
    assert!(
        max_diff(&tuned, &merged) < 1e-3,
        "merged: {}",
        max_diff(&tuned, &merged)
    );
    encoder.unmerge_adapters().unwrap();
    let unmerged = encoder.encode_tokenized(&input, false).unwrap().pooled;
    assert!(
        max_diff(&tuned, &unmerged) < 1e-3,
        "unmerged: {}",
        max_diff(&tuned, &unmerged)
    );

    // Save in PEFT's layout, load onto a fresh base: the same outputs.
    let files = encoder.save_adapter("SEQ_CLS").unwrap();
    let config: serde_json::Value = serde_json::from_slice(&files.config_json).unwrap();
    assert_eq!(config["r"], 4);
    let adapter = peft::load(&files.config_json, &files.safetensors, &Device::Cpu).unwrap();
    assert_eq!(adapter.tensors.len(), 28);
    assert!(
        adapter
            .tensors
            .keys()
            .all(|n| n.contains("layers.16.") || n.contains("layers.17."))
    );
    drop(uncached);
    let loaded = GemmaEncoder::load_with_adapter(model_dir(), &adapter, 32).unwrap();
    let again = loaded.encode_tokenized(&input, false).unwrap().pooled;
    assert!(
        max_diff(&tuned, &again) < 1e-5,
        "reloaded: {}",
        max_diff(&tuned, &again)
    );
}

#[test]
fn a_target_gemma_does_not_have_is_refused() {
    let mut opts = options(0);
    if let Some(lora) = opts.lora.as_mut() {
        lora.targets = vec!["query".into()];
    }
    let err = GemmaEncoder::load(model_dir(), &opts)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("`query`") && err.contains("q_proj"), "{err}");
}
