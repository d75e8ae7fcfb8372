//! The training loop on the real all-MiniLM-L6-v2 checkpoint (from `scripts/fetch-assets`):
//! every LoRA adapter receives a gradient through the whole stack, and a short run with its
//! baseline produces a report. Small on purpose: a few steps on a few rows.

use std::ops::ControlFlow;
use std::path::PathBuf;

use tailor_modules::blueprint::{Blueprint, ColumnType, CompiledBlueprint, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, load_encoder};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::Target;
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

fn clauses() -> Examples {
    let texts = [
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
    Examples {
        labels: vec![vec!["payment".into(), "termination".into()]],
        rows: texts
            .iter()
            .map(|(t, c)| Row {
                inputs: vec![InputValue::Text(t.to_string())],
                targets: vec![Target::Class(*c)],
            })
            .collect(),
    }
}

fn blueprint() -> CompiledBlueprint {
    let bp: Blueprint = serde_json::from_value(serde_json::json!({ "name": "clauses",
        "inputs": [{ "name": "clause", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 32 } }],
        "outputs": [{ "name": "clause_type", "task": "classification", "decoder": { "module": "head/linear" } }],
        "adaptation": { "rank": 4, "alpha": 8, "targets": ["query", "value"] },
        "training": { "epochs": 2, "batch_size": 8, "seed": 3, "validation_split": 0.25 } }))
    .unwrap();
    let schema = DatasetSchema::new([
        ("clause", ColumnType::Text),
        ("clause_type", ColumnType::Category),
    ]);
    compile(&bp, &Catalog::builtin(), &schema).unwrap()
}

#[test]
fn minilm_adapters_get_gradients_and_a_run_reports_against_the_baseline() {
    let catalog = Catalog::builtin();
    let dir = models_dir();
    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(&catalog, &dir, input, lora, seed);
    let bp = blueprint();
    let data = clauses();

    let model = Model::build(&bp, &data, &factory, true).unwrap();
    let rows: Vec<&Row> = data.rows.iter().take(4).collect();
    let grads = model.loss(&rows, None).unwrap().backward().unwrap();
    let adapters: Vec<_> = model
        .trainable()
        .into_iter()
        .filter(|(n, _, _)| n.contains("lora_B"))
        .collect();
    assert_eq!(adapters.len(), 6 * 2, "query and value in 6 layers");
    for (name, var, _) in &adapters {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let n = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "zero gradient for {name}");
    }
    let frozen = Model::build(&bp, &data, &factory, false).unwrap();
    assert!(
        frozen
            .trainable()
            .iter()
            .all(|(n, _, _)| n.starts_with("heads."))
    );

    let result = train_and_evaluate(
        &bp,
        &data,
        None,
        &factory,
        EvaluateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let Evaluation::Done { report, .. } = result else {
        panic!("not cancelled")
    };
    assert_eq!(report.test_rows, 3);
    assert!(
        report
            .tuned_run
            .history
            .iter()
            .all(|h| h.train_loss.is_finite())
    );
    assert!(report.baseline_run.steps > 0);
    assert!(
        report.outputs[0].tuned_value.is_finite() && report.outputs[0].baseline_value.is_finite()
    );
}

#[test]
fn minilm_tagging_predicts_one_tag_per_whitespace_word() {
    let catalog = Catalog::builtin();
    let dir = models_dir();
    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(&catalog, &dir, input, lora, seed);
    let bp: Blueprint = serde_json::from_value(serde_json::json!({ "name": "entities",
        "inputs": [{ "name": "clause", "modality": "text", "encoder": { "module": "text/minilm-l6", "max_tokens": 64 } }],
        "outputs": [{ "name": "parties", "task": "tagging", "decoder": { "module": "head/token" } }] }))
    .unwrap();
    let schema = DatasetSchema::new([("clause", ColumnType::Text), ("parties", ColumnType::Tags)]);
    let bp = compile(&bp, &Catalog::builtin(), &schema).unwrap();
    // BERT splits "Mr." "Smith," "U.S." into several words; the dataset counts 6.
    let text = "Mr. Smith, of U.S. Steel signs";
    let data = Examples {
        labels: vec![vec!["O".into(), "B-PARTY".into(), "I-PARTY".into()]],
        rows: vec![Row {
            inputs: vec![InputValue::Text(text.into())],
            targets: vec![Target::Tags(vec![1, 2, 0, 1, 2, 0])],
        }],
    };
    let model = Model::build(&bp, &data, &factory, true).unwrap();
    let preds = model.predict(&data.rows, 1).unwrap();
    let tailor_modules::heads::Prediction::Tags { tags, .. } = &preds[0][0] else {
        panic!()
    };
    assert_eq!(tags.len(), 6);
    let rows: Vec<&Row> = data.rows.iter().collect();
    assert!(
        model
            .loss(&rows, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .is_finite()
    );
}
