//! Saving, loading, merging and refusing LoRA adapters in PEFT's file layout.

mod text_support;

use candle_core::{Device, Tensor};
use tailor_modules::encoder::Encoder;
use tailor_modules::lora::LoraConfig;
use tailor_modules::ops::SeededRng;
use tailor_modules::peft::{self, AdapterError};
use tailor_modules::text::{Pooling, TextEncoder, TextEncoderOptions};
use text_support::{TinyBert, max_abs_diff, minilm, rm, texts};

fn lora(rank: usize, alpha: f64, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        rank,
        alpha,
        dropout: 0.1,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    }
}

fn adapted(dir: &std::path::Path, lora: LoraConfig) -> TextEncoder {
    let options = TextEncoderOptions {
        pooling: Pooling::Mean,
        max_tokens: 32,
        lora: Some(lora),
        seed: 1,
        ..Default::default()
    };
    TextEncoder::load(dir, &options).unwrap()
}

/// Gives every B a random non-zero value, as training would (B starts at zero, and a zero
/// B would make merged, unmerged and reloaded outputs trivially equal).
fn train_somewhat(encoder: &TextEncoder) {
    let rng = SeededRng::new(99);
    for (name, var) in encoder.adapter_vars() {
        if name.contains("lora_B") {
            var.set(&rng.uniform(var.shape(), -0.2, 0.2, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

fn batch() -> Vec<String> {
    texts(&[
        "Terminate the lease with notice.",
        "Refunds are issued in 14 days.",
        "ok",
    ])
}

fn pooled(encoder: &TextEncoder) -> Tensor {
    encoder.encode(&batch(), false).unwrap().pooled
}

fn round_trip(dir: &std::path::Path, targets: &[&str]) {
    // alpha ≠ rank: a scale applied twice, or not at all, on any path shows.
    let mut encoder = adapted(dir, lora(4, 16.0, targets));
    let frozen = TextEncoder::load_frozen(dir, Pooling::Mean, 32).unwrap();
    train_somewhat(&encoder);
    let unmerged = pooled(&encoder);
    assert!(
        max_abs_diff(&unmerged, &pooled(&frozen)) > 1e-3,
        "the adapter changes the output"
    );

    let files = encoder.save_adapter("FEATURE_EXTRACTION").unwrap();

    encoder.merge_adapters().unwrap();
    let merged = pooled(&encoder);
    assert!(
        max_abs_diff(&merged, &unmerged) < 1e-5,
        "merged vs unmerged: {}",
        max_abs_diff(&merged, &unmerged)
    );
    encoder.unmerge_adapters().unwrap();
    let again = pooled(&encoder);
    assert!(
        max_abs_diff(&again, &unmerged) < 1e-5,
        "unmerged again: {}",
        max_abs_diff(&again, &unmerged)
    );

    let adapter_dir = text_support::temp_dir("adapter");
    peft::write_dir(&adapter_dir, &files).unwrap();
    let adapter = peft::read_dir(&adapter_dir, &Device::Cpu).unwrap();
    let mut loaded = TextEncoder::load_with_adapter(dir, &adapter, Pooling::Mean, 32).unwrap();
    let reloaded = pooled(&loaded);
    assert!(
        max_abs_diff(&reloaded, &unmerged) < 1e-5,
        "save → load: {}",
        max_abs_diff(&reloaded, &unmerged)
    );
    loaded.merge_adapters().unwrap();
    assert!(
        max_abs_diff(&pooled(&loaded), &unmerged) < 1e-5,
        "save → load → merge"
    );
    rm(&adapter_dir);
}

#[test]
fn merged_unmerged_and_reloaded_adapters_agree_on_a_tiny_bert() {
    let dir = TinyBert {
        layers: 3,
        ..Default::default()
    }
    .write("tiny-roundtrip");
    round_trip(&dir, &["query", "value", "dense"]);
    rm(&dir);
}

#[test]
fn checkpoints_with_a_bert_prefix_load_and_round_trip() {
    let dir = TinyBert {
        bert_prefix: true,
        ..Default::default()
    }
    .write("tiny-prefix");
    round_trip(&dir, &["key", "intermediate"]);
    rm(&dir);
}

#[test]
fn merged_unmerged_and_reloaded_adapters_agree_on_minilm() {
    round_trip(&minilm(), &["query", "value"]);
}

#[test]
fn adapter_files_use_peft_names_and_config_keys() {
    let dir = TinyBert::default().write("tiny-peft");
    let encoder = adapted(&dir, lora(4, 16.0, &["query", "value", "intermediate"]));
    let files = encoder.save_adapter("SEQ_CLS").unwrap();

    let config: serde_json::Value = serde_json::from_slice(&files.config_json).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 16.0);
    assert!((config["lora_dropout"].as_f64().unwrap() - 0.1).abs() < 1e-6);
    // `intermediate` is PEFT's container module: stored as the linear layer inside it.
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["intermediate.dense", "query", "value"])
    );
    assert_eq!(config["bias"], "none");
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["fan_in_fan_out"], false);
    assert_eq!(config["inference_mode"], true);
    assert_eq!(
        config["base_model_name_or_path"],
        dir.file_name().unwrap().to_str().unwrap()
    );
    for key in [
        "init_lora_weights",
        "use_rslora",
        "use_dora",
        "modules_to_save",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
    ] {
        assert!(
            config.get(key).is_some(),
            "adapter_config.json lacks `{key}`"
        );
    }
    assert!(config.get("tailor").is_none(), "only keys PEFT knows");

    let st = safetensors::SafeTensors::deserialize(&files.safetensors).unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort();
    let mut want = Vec::new();
    for layer in 0..2 {
        for path in [
            "attention.self.query",
            "attention.self.value",
            "intermediate.dense",
        ] {
            for which in ["lora_A", "lora_B"] {
                want.push(format!(
                    "base_model.model.encoder.layer.{layer}.{path}.{which}.weight"
                ));
            }
        }
    }
    want.sort();
    assert_eq!(names, want);
    let a = st
        .tensor("base_model.model.encoder.layer.1.intermediate.dense.lora_A.weight")
        .unwrap();
    let b = st
        .tensor("base_model.model.encoder.layer.1.intermediate.dense.lora_B.weight")
        .unwrap();
    assert_eq!(
        (a.dtype(), a.shape()),
        (safetensors::Dtype::F32, &[4usize, 16][..]),
        "A is (r, in)"
    );
    assert_eq!(b.shape(), &[32, 4], "B is (out, r)");

    let (_, header) = safetensors::SafeTensors::read_metadata(&files.safetensors).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["tailor.base_sha256"], encoder.fingerprint().sha256);
    assert_eq!(meta["tailor.num_layers"], "2");
    rm(&dir);
}

fn expect_mismatch(result: Result<(), AdapterError>, needle: &str) {
    match result {
        Err(AdapterError::Mismatch(msg)) => {
            assert!(msg.contains(needle), "`{msg}` should mention `{needle}`")
        }
        other => panic!("expected a mismatch about `{needle}`, got {other:?}"),
    }
}

#[test]
fn adapters_that_do_not_fit_the_base_are_refused() {
    let base = TinyBert::default().write("tiny-base");
    let trained = adapted(&base, lora(4, 16.0, &["query", "value"]));
    train_somewhat(&trained);
    let files = trained.save_adapter("FEATURE_EXTRACTION").unwrap();
    let adapter = peft::load(&files.config_json, &files.safetensors, &Device::Cpu).unwrap();
    adapter
        .check_fits(trained.fingerprint(), &trained.adapter_vars())
        .unwrap();

    // Wrong layer count.
    let deeper = TinyBert {
        layers: 3,
        ..Default::default()
    }
    .write("tiny-deeper");
    expect_mismatch(
        adapted(&deeper, lora(4, 16.0, &["query", "value"])).apply_adapter(&adapter),
        "2 layers, this base has 3",
    );
    let err = TextEncoder::load_with_adapter(&deeper, &adapter, Pooling::Mean, 32)
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("layers"), "{err:#}");

    // Wrong width.
    let wider = TinyBert {
        hidden: 24,
        heads: 2,
        ..Default::default()
    }
    .write("tiny-wider");
    expect_mismatch(
        adapted(&wider, lora(4, 16.0, &["query", "value"])).apply_adapter(&adapter),
        "16 wide, this base is 24 wide",
    );

    // Wrong shape: same base, another rank.
    expect_mismatch(
        adapted(&base, lora(8, 16.0, &["query", "value"])).apply_adapter(&adapter),
        "shape [4, 16]",
    );

    // Other targets.
    expect_mismatch(
        adapted(&base, lora(4, 16.0, &["key", "value"])).apply_adapter(&adapter),
        "has no tensor",
    );
    expect_mismatch(
        adapted(&base, lora(4, 16.0, &["query"])).apply_adapter(&adapter),
        "no place for",
    );

    // Same architecture and shapes, other weights: the base checkpoint's hash differs.
    let other = TinyBert {
        seed: 2,
        ..Default::default()
    }
    .write("tiny-other");
    expect_mismatch(
        adapted(&other, lora(4, 16.0, &["query", "value"])).apply_adapter(&adapter),
        "SHA-256",
    );

    // A refused adapter leaves the encoder's own adapter untouched.
    let fresh = adapted(&other, lora(4, 16.0, &["query", "value"]));
    let _ = fresh.apply_adapter(&adapter);
    for (name, var) in fresh
        .adapter_vars()
        .iter()
        .filter(|(n, _)| n.contains("lora_B"))
    {
        assert_eq!(
            var.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0,
            "{name} changed"
        );
    }

    // Not written by Tailor (no fingerprint in the metadata), or not a LoRA adapter.
    let bare = safetensors::serialize(
        Vec::<(String, safetensors::tensor::TensorView)>::new(),
        None,
    )
    .unwrap();
    assert!(
        matches!(peft::load(&files.config_json, &bare, &Device::Cpu), Err(AdapterError::Invalid(m)) if m.contains("tailor."))
    );
    let ia3 = String::from_utf8(files.config_json.clone())
        .unwrap()
        .replace("\"LORA\"", "\"IA3\"");
    assert!(
        matches!(peft::load(ia3.as_bytes(), &files.safetensors, &Device::Cpu), Err(AdapterError::Invalid(m)) if m.contains("IA3"))
    );

    for dir in [base, deeper, wider, other] {
        rm(&dir);
    }
}

#[test]
fn unknown_targets_and_the_frozen_baseline_are_explained() {
    let dir = TinyBert::default().write("tiny-targets");
    let options = TextEncoderOptions {
        lora: Some(lora(4, 8.0, &["query", "pooler"])),
        ..Default::default()
    };
    let err = TextEncoder::load(&dir, &options).err().unwrap().to_string();
    assert!(
        err.contains("adaptation.targets")
            && err.contains("pooler")
            && err.contains("query, key, value"),
        "{err}"
    );

    let frozen = TextEncoder::load_frozen(&dir, Pooling::Cls, 32).unwrap();
    assert!(frozen.adapter_vars().is_empty());
    assert!(matches!(
        frozen.save_adapter("FEATURE_EXTRACTION"),
        Err(AdapterError::Invalid(_))
    ));
    rm(&dir);
}
