//! A tuned model as a package: the files of a version, loading them back (merged, and
//! unmerged over a shared base), and refusing tampered files or a base that does not fit.
//! Uses the real all-MiniLM-L6-v2 checkpoint (from `scripts/fetch-assets`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use tailor_modules::blueprint::{Blueprint, ColumnType, CompiledBlueprint, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, load_encoder};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, EvaluationReport, train_and_evaluate};
use tailor_modules::heads::{Prediction, Target};
use tailor_modules::package::{
    self, DatasetInfo, OutputPrediction, PackageError, PackageInfo, SharedBase, TunedModel,
};
use tailor_modules::peft::AdapterError;
use tailor_modules::train::{Examples, InputValue, Model, Row};

fn models_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into()),
    );
    assert!(
        dir.join("minilm-l6/model.safetensors").exists(),
        "{} has no minilm-l6: run scripts/fetch-assets (or set TAILOR_ASSETS)",
        dir.display()
    );
    dir
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tailor-package-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const TEXTS: [(&str, usize); 12] = [
    (
        "The tenant shall pay rent on the first day of each month.",
        0,
    ),
    ("Rent is due monthly in advance without deduction.", 0),
    ("Late payment of rent incurs a fee of five percent.", 0),
    ("The lessee pays the agreed rent by bank transfer.", 0),
    ("Payment of the rent is owed on the first business day.", 0),
    ("Rent increases are limited to three percent per year.", 0),
    (
        "Either party may terminate this agreement with thirty days notice.",
        1,
    ),
    ("This contract ends automatically after twelve months.", 1),
    (
        "The landlord may terminate the lease for material breach.",
        1,
    ),
    ("Termination requires written notice to the other party.", 1),
    ("The agreement may be cancelled by mutual consent.", 1),
    ("Upon termination the tenant must vacate the premises.", 1),
];

fn clauses() -> Examples {
    Examples {
        labels: vec![vec!["payment".into(), "termination".into()]],
        rows: TEXTS
            .iter()
            .map(|(t, c)| Row {
                inputs: vec![InputValue::Text(t.to_string())],
                targets: vec![Target::Class(*c)],
            })
            .collect(),
    }
}

fn blueprint(alpha: f64, seed: u64) -> CompiledBlueprint {
    let bp: Blueprint = serde_json::from_value(serde_json::json!({ "name": "clauses",
        "inputs": [{ "name": "clause", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 32 } }],
        "outputs": [{ "name": "clause_type", "task": "classification", "decoder": { "module": "head/linear" } }],
        "adaptation": { "rank": 4, "alpha": alpha, "targets": ["query", "value"] },
        "training": { "epochs": 1, "batch_size": 8, "seed": seed, "validation_split": 0.25 } }))
    .unwrap();
    let schema = DatasetSchema::new([
        ("clause", ColumnType::Text),
        ("clause_type", ColumnType::Category),
    ]);
    compile(&bp, &Catalog::builtin(), &schema).unwrap()
}

/// A briefly trained model whose adapters are then pushed well away from zero, so that
/// merging, unmerging and the alpha scale all change the predictions measurably.
fn trained(alpha: f64, seed: u64) -> (Model, EvaluationReport) {
    let catalog = Catalog::builtin();
    let dir = models_dir();
    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(&catalog, &dir, input, lora, seed);
    let Evaluation::Done { model, report } = train_and_evaluate(
        &blueprint(alpha, seed),
        &clauses(),
        None,
        &factory,
        EvaluateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap() else {
        panic!("not cancelled")
    };
    for (i, (name, var, _)) in model.trainable().into_iter().enumerate() {
        if name.contains("lora_B") {
            let noise = Tensor::randn(0f32, 0.05, var.shape(), var.device()).unwrap();
            let _ = i;
            var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        }
    }
    (*model, *report)
}

fn info() -> PackageInfo {
    PackageInfo {
        dataset: DatasetInfo {
            name: "lease clauses".into(),
            version: "3".into(),
            sha256: "ab".repeat(32),
            rows: 12,
        },
        base_license: None,
    }
}

fn files_of(model: &Model, report: &EvaluationReport, dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let set = package::build(model, report, &info()).unwrap();
    package::write_dir(&set, dir).unwrap();
    package::read_dir(dir).unwrap()
}

fn probabilities(preds: &[Vec<OutputPrediction>]) -> Vec<f32> {
    preds
        .iter()
        .flat_map(|row| match &row[0].prediction {
            Prediction::Class { probabilities, .. } => probabilities.clone(),
            other => panic!("not a class: {other:?}"),
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn texts() -> Vec<&'static str> {
    let mut t: Vec<&str> = TEXTS.iter().map(|(t, _)| *t).collect();
    t.push("The deposit is returned within two weeks after the keys are handed back.");
    t
}

#[test]
fn a_zero_epoch_run_still_makes_a_version() {
    let catalog = Catalog::builtin();
    let dir = models_dir();
    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(&catalog, &dir, input, lora, seed);
    let mut bp = blueprint(8.0, 3);
    bp.training.epochs = Some(0);
    let Evaluation::Done { model, report } = train_and_evaluate(
        &bp,
        &clauses(),
        None,
        &factory,
        EvaluateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap() else {
        panic!("not cancelled")
    };
    assert_eq!(
        (report.tuned_run.steps, report.tuned_run.epochs_run),
        (0, 0)
    );
    let files = files_of(&model, &report, &scratch("zero"));
    for name in [
        "adapter_model.safetensors",
        "heads.safetensors",
        "metrics.json",
        "model_card.md",
    ] {
        assert!(files.contains_key(name), "the version has no {name}");
    }
}

#[test]
fn a_version_saves_loads_and_serves_merged_or_on_a_shared_base() {
    let base = models_dir();
    let (model, report) = trained(8.0, 3);
    let dir = scratch("a");
    let files = files_of(&model, &report, &dir);
    for name in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "heads.safetensors",
        "heads.json",
        "blueprint.json",
        "metrics.json",
        "model_card.md",
        "manifest.json",
    ] {
        assert!(files.contains_key(name), "the version has no {name}");
    }
    let config: serde_json::Value = serde_json::from_slice(&files["adapter_config.json"]).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    let heads: serde_json::Value = serde_json::from_slice(&files["heads.json"]).unwrap();
    assert_eq!(
        heads["heads"][0]["labels"],
        serde_json::json!(["payment", "termination"])
    );
    let card = String::from_utf8(files["model_card.md"].clone()).unwrap();
    for needle in [
        "payment, termination",
        "baseline",
        &"ab".repeat(32),
        "Apache-2.0",
        "Limits",
    ] {
        assert!(
            card.contains(needle),
            "the model card lacks {needle:?}:\n{card}"
        );
    }

    // What the trained (unmerged) model predicts, row by row.
    let rows: Vec<Vec<InputValue>> = texts()
        .iter()
        .map(|t| vec![InputValue::Text(t.to_string())])
        .collect();
    let direct: Vec<f32> = model.predict_inputs(&rows, 4).unwrap()[0]
        .iter()
        .flat_map(|p| match p {
            Prediction::Class { probabilities, .. } => probabilities.clone(),
            _ => unreachable!(),
        })
        .collect();

    // Loaded back, adapters merged: the same predictions, with label names and scores.
    let merged = TunedModel::load(files.clone(), &base).unwrap();
    let preds = merged.predict_texts(&texts(), 5).unwrap();
    assert_eq!(preds.len(), texts().len());
    for row in &preds {
        assert_eq!(row.len(), 1);
        assert_eq!(row[0].output, "clause_type");
        assert!(["payment", "termination"].contains(&row[0].label.as_str()));
        let keys: Vec<&str> = row[0].scores.keys().map(String::as_str).collect();
        assert_eq!(keys, ["payment", "termination"]);
        let sum: f32 = row[0].scores.values().sum();
        assert!((sum - 1.0).abs() < 1e-4, "scores sum to {sum}");
        assert_eq!(
            row[0].label,
            row[0]
                .scores
                .iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
                .clone()
        );
    }
    let merged_p = probabilities(&preds);
    let d = max_diff(&direct, &merged_p);
    assert!(d < 1e-5, "saved and loaded predictions differ by {d}");
    assert!(merged.report.is_some());

    // A second version with another alpha (and seed), both on one shared base, requests
    // interleaved: each agrees with its merged self.
    let (model_b, report_b) = trained(2.0, 11);
    let files_b = files_of(&model_b, &report_b, &scratch("b"));
    let merged_b = TunedModel::load(files_b.clone(), &base).unwrap();
    let merged_b_p = probabilities(&merged_b.predict_texts(&texts(), 5).unwrap());
    assert!(
        max_diff(&merged_p, &merged_b_p) > 1e-3,
        "the two versions should predict differently"
    );
    let shared = SharedBase::new(&base);
    let a = shared.add(files.clone()).unwrap();
    let b = shared.add(files_b).unwrap();
    for _ in 0..2 {
        let pa = probabilities(&a.predict_texts(&texts(), 4).unwrap());
        let pb = probabilities(&b.predict_texts(&texts(), 3).unwrap());
        let (da, db) = (max_diff(&merged_p, &pa), max_diff(&merged_b_p, &pb));
        assert!(
            da < 1e-5,
            "version a: merged and shared-base predictions differ by {da}"
        );
        assert!(
            db < 1e-5,
            "version b: merged and shared-base predictions differ by {db}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tampered_files_and_a_base_that_does_not_fit_are_refused() {
    let base = models_dir();
    let (model, report) = trained(8.0, 5);
    let dir = scratch("t");
    let files = files_of(&model, &report, &dir);

    let mut tampered = files.clone();
    let weights = tampered.get_mut("adapter_model.safetensors").unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 0x01;
    let err = TunedModel::load(tampered, &base)
        .err()
        .expect("tampered file refused");
    assert!(matches!(err, PackageError::Artifact(_)), "{err}");
    assert!(
        err.to_string().contains("adapter_model.safetensors"),
        "{err}"
    );

    let mut no_manifest = files.clone();
    no_manifest.remove("manifest.json");
    let err = TunedModel::load(no_manifest, &base)
        .err()
        .expect("no manifest refused");
    assert!(matches!(err, PackageError::Artifact(_)), "{err}");

    let mut extra = files.clone();
    extra.insert("extra.bin".into(), vec![1, 2, 3]);
    assert!(TunedModel::load(extra, &base).is_err());

    // The same checkpoint with one weight changed: a different base.
    let other = scratch("base");
    let folder = other.join("minilm-l6");
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(base.join("minilm-l6").join(name), folder.join(name)).unwrap();
    }
    let mut weights = std::fs::read(base.join("minilm-l6/model.safetensors")).unwrap();
    let last = weights.len() - 1;
    weights[last] ^= 0x01;
    std::fs::write(folder.join("model.safetensors"), weights).unwrap();
    let err = TunedModel::load(files.clone(), &other)
        .err()
        .expect("other base refused");
    assert!(
        matches!(err, PackageError::Adapter(AdapterError::Mismatch(_))),
        "{err}"
    );
    assert!(err.to_string().contains("SHA-256"), "{err}");
    let err = SharedBase::new(&other)
        .add(files.clone())
        .err()
        .expect("refused");
    assert!(
        matches!(err, PackageError::Adapter(AdapterError::Mismatch(_))),
        "{err}"
    );

    // A version with another rank cannot join a shared base built for rank 4.
    let shared = SharedBase::new(&base);
    shared.add(files).unwrap();
    let mut bp8: Blueprint = serde_json::from_value(serde_json::json!({ "name": "clauses",
        "inputs": [{ "name": "clause", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 32 } }],
        "outputs": [{ "name": "clause_type", "task": "classification", "decoder": { "module": "head/linear" } }],
        "adaptation": { "rank": 8, "alpha": 8, "targets": ["query", "value"] },
        "training": { "epochs": 1, "batch_size": 8, "seed": 1 } }))
    .unwrap();
    bp8.name = "clauses-r8".into();
    let schema = DatasetSchema::new([
        ("clause", ColumnType::Text),
        ("clause_type", ColumnType::Category),
    ]);
    let bp8 = compile(&bp8, &Catalog::builtin(), &schema).unwrap();
    let catalog = Catalog::builtin();
    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(&catalog, &base, input, lora, seed);
    let model8 = Model::build(&bp8, &clauses(), &factory, true).unwrap();
    let files8 = files_of(&model8, &report, &scratch("r8"));
    let err = shared.add(files8).err().expect("other rank refused");
    assert!(err.to_string().contains("rank"), "{err}");

    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn an_embedding_is_what_the_heads_read_merged_or_on_a_shared_base() {
    let base = models_dir();
    let (model, report) = trained(8.0, 7);
    let dir = scratch("e");
    let files = files_of(&model, &report, &dir);
    let texts = texts();

    let merged = TunedModel::load(files.clone(), &base).unwrap();
    let embeddings = merged.embed_texts(&texts, 5).unwrap();
    assert_eq!(merged.embedding_width(), 384);
    assert_eq!(embeddings.len(), texts.len());
    assert!(embeddings.iter().all(|e| e.len() == 384));

    // The linear head applied by hand to the embeddings gives predict's scores.
    let flat: Vec<f32> = embeddings.iter().flatten().copied().collect();
    let x = Tensor::from_vec(flat, (texts.len(), 384), &candle_core::Device::Cpu).unwrap();
    let logits: Vec<Vec<f32>> = model.heads.heads[0]
        .forward(&x, None)
        .unwrap()
        .to_vec2()
        .unwrap();
    let by_hand: Vec<f32> = logits
        .iter()
        .flat_map(|row| {
            let max = row.iter().copied().fold(f32::MIN, f32::max);
            let exp: Vec<f32> = row.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            exp.into_iter().map(move |e| e / sum)
        })
        .collect();
    let predicted = probabilities(&merged.predict_texts(&texts, 5).unwrap());
    let d = max_diff(&by_hand, &predicted);
    assert!(
        d < 1e-5,
        "the head on the embeddings and predict differ by {d}"
    );

    // The same version over a shared base (beside another version, requests interleaved)
    // embeds the same, and empty input embeds nothing.
    let shared = SharedBase::new(&base);
    let (model_b, report_b) = trained(2.0, 11);
    let other = shared
        .add(files_of(&model_b, &report_b, &scratch("f")))
        .unwrap();
    let on_shared = shared.add(files).unwrap();
    for _ in 0..2 {
        let got = on_shared.embed_texts(&texts, 4).unwrap();
        let d = max_diff(&flat_of(&embeddings), &flat_of(&got));
        assert!(d < 1e-5, "merged and shared-base embeddings differ by {d}");
        let theirs = other.embed_texts(&texts[..2], 2).unwrap();
        assert!(max_diff(&flat_of(&embeddings[..2]), &flat_of(&theirs)) > 1e-4);
    }
    assert!(on_shared.embed_texts(&[], 4).unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

fn flat_of(rows: &[Vec<f32>]) -> Vec<f32> {
    rows.iter().flatten().copied().collect()
}
