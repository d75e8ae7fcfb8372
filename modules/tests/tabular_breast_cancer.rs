//! `tabular/mlp` on real data: scikit-learn's bundled breast cancer table (569 tumours, 30
//! measurements, malignant or benign), trained and scored through the library's own
//! `train_and_evaluate` on a held-out fifth, against the majority class.
//!
//! A tenth of the cells are blanked (seeded) to make missing values part of the test, and
//! a category column is derived from a measurement, so both kinds of cells go through the
//! encoder. The trained version is then rebuilt from its saved tensors alone
//! (`Model::trained_tensors` → `Model::set_trained`), as a package would, and must predict
//! the same.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tailor_modules::blueprint::{Blueprint, ColumnType, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, load_encoder};
use tailor_modules::encoder::Cell;
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::{Heads, Target};
use tailor_modules::metrics::Metrics;
use tailor_modules::train::{Examples, InputValue, Model, Row};

const FEATURES: [&str; 30] = [
    "mean radius",
    "mean texture",
    "mean perimeter",
    "mean area",
    "mean smoothness",
    "mean compactness",
    "mean concavity",
    "mean concave points",
    "mean symmetry",
    "mean fractal dimension",
    "radius error",
    "texture error",
    "perimeter error",
    "area error",
    "smoothness error",
    "compactness error",
    "concavity error",
    "concave points error",
    "symmetry error",
    "fractal dimension error",
    "worst radius",
    "worst texture",
    "worst perimeter",
    "worst area",
    "worst smoothness",
    "worst compactness",
    "worst concavity",
    "worst concave points",
    "worst symmetry",
    "worst fractal dimension",
];

fn assets() -> PathBuf {
    std::env::var("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/tmp/tailor-assets"))
}

/// The table: scikit-learn's file starts with `569,30,malignant,benign` (rows, features,
/// the names of targets 0 and 1), then 30 numbers and the target per line.
fn load() -> (Vec<String>, Vec<(Vec<f64>, usize)>) {
    let path = assets().join("sklearn/breast_cancer.csv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} (run scripts/fetch-assets): {e}", path.display()));
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (n, f): (usize, usize) = (head[0].parse().unwrap(), head[1].parse().unwrap());
    assert_eq!(f, FEATURES.len());
    let labels = head[2..].iter().map(|s| s.to_string()).collect();
    let rows: Vec<(Vec<f64>, usize)> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<&str> = l.split(',').collect();
            let x = v[..f].iter().map(|s| s.parse().unwrap()).collect();
            (x, v[f].trim().parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), n);
    (labels, rows)
}

/// A coarse size band, so the table has a category column too.
fn band(mean_area: f64) -> &'static str {
    match mean_area {
        a if a < 450.0 => "small",
        a if a < 800.0 => "medium",
        _ => "large",
    }
}

fn factory(
    input: &tailor_modules::blueprint::CompiledInput,
    lora: Option<&tailor_modules::blueprint::LoraSettings>,
    seed: u64,
) -> anyhow::Result<Box<dyn tailor_modules::encoder::Encoder>> {
    load_encoder(
        &Catalog::builtin(),
        Path::new("/nonexistent"),
        input,
        lora,
        seed,
    )
}

#[test]
fn tabular_mlp_learns_breast_cancer_well_above_the_majority_class() {
    let (labels, table) = load();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut blanked = 0;
    let rows: Vec<Row> = table
        .iter()
        .map(|(x, y)| {
            let mut cells: Vec<Cell> = x
                .iter()
                .map(|v| {
                    if rng.random_bool(0.1) {
                        blanked += 1;
                        Cell::Missing
                    } else {
                        Cell::Number(*v)
                    }
                })
                .collect();
            cells.push(Cell::Category(band(x[3]).into()));
            Row {
                inputs: vec![InputValue::Cells(cells)],
                targets: vec![Target::Class(*y)],
            }
        })
        .collect();
    assert!(blanked > 1000, "{blanked} cells blanked");
    let data = Examples {
        labels: vec![labels],
        rows,
    };

    let mut columns: Vec<String> = FEATURES.iter().map(|s| s.to_string()).collect();
    columns.push("size band".into());
    let bp = Blueprint::from_json(
        &serde_json::json!({
            "name": "breast-cancer",
            "inputs": [{ "name": "measurements", "modality": "tabular",
                         "encoder": { "module": "tabular/mlp", "columns": columns } }],
            "outputs": [{ "name": "diagnosis", "task": "classification",
                          "decoder": { "module": "head/linear" } }],
            "adaptation": { "method": "none" },
            "training": { "epochs": 20, "batch_size": 32, "head_learning_rate": 0.003, "seed": 5 }
        })
        .to_string(),
    )
    .unwrap();
    let mut schema: Vec<(String, ColumnType)> = FEATURES
        .iter()
        .map(|f| (f.to_string(), ColumnType::Number))
        .collect();
    schema.push(("size band".into(), ColumnType::Category));
    schema.push(("diagnosis".into(), ColumnType::Category));
    let compiled = compile(&bp, &Catalog::builtin(), &DatasetSchema::new(schema)).unwrap();

    let mut first_loss = None;
    let mut last_loss = 0.0;
    let result = train_and_evaluate(
        &compiled,
        &data,
        None,
        &factory,
        EvaluateOptions::default(),
        &mut |e| {
            if let tailor_modules::train::Event::Epoch(p) = e {
                first_loss.get_or_insert(p.train_loss);
                last_loss = p.train_loss;
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let Evaluation::Done { model, report } = result else {
        panic!("not cancelled")
    };
    let Metrics::Classification(m) = &report.tuned else {
        panic!("a classification report")
    };
    let majority = 357.0 / 569.0;
    eprintln!(
        "breast cancer, {} held-out rows: accuracy {:.3}, macro F1 {:.3} (majority class {majority:.3}); train loss {:.3} → {last_loss:.3}",
        report.test_rows,
        m.accuracy,
        m.macro_f1,
        first_loss.unwrap()
    );
    assert!(report.test_rows >= 100);
    assert!(
        last_loss < first_loss.unwrap() * 0.5,
        "the loss did not fall"
    );
    assert!(
        m.accuracy >= majority + 0.25,
        "accuracy {:.3} is not clearly above the majority class {majority:.3}",
        m.accuracy
    );
    assert!(m.macro_f1 >= 0.85, "macro F1 {:.3}", m.macro_f1);

    // Rebuilt from saved tensors alone, the model predicts the same.
    let saved: HashMap<String, candle_core::Tensor> = model
        .trained_tensors()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
        .collect();
    assert!(saved.contains_key("encoders.0.stats.mean"));
    assert!(saved.contains_key("encoders.0.stats.vocab"));
    let heads = Heads::from_safetensors(
        &model.heads.to_safetensors().unwrap(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let fresh = factory(&compiled.inputs[0], None, 999).unwrap();
    let loaded = Model::assemble(compiled.clone(), vec![fresh], heads).unwrap();
    let probe = &data.rows[..64];
    let before = loaded.predict(probe, 32).unwrap();
    loaded.set_trained(&saved).unwrap();
    let after = loaded.predict(probe, 32).unwrap();
    let expected = model.predict(probe, 32).unwrap();
    assert_eq!(format!("{after:?}"), format!("{expected:?}"));
    assert_ne!(
        format!("{before:?}"),
        format!("{expected:?}"),
        "an unfitted, untrained encoder should not already predict the same"
    );
    let mut wrong = saved.clone();
    wrong.remove("encoders.0.stats.std");
    let err = loaded.set_trained(&wrong).unwrap_err().to_string();
    assert!(err.contains("encoders.0.stats.std"), "{err}");
}
