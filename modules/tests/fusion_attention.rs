//! The cross-modal attention fusion learns a task that needs both inputs together: the
//! class is whether two numbers, each read by its own tabular input, have the same sign
//! (XOR of the signs). Either input alone says nothing about the class (chance), so only a
//! fusion that mixes them — here through a linear head, so the mixing is the fusion's —
//! can score well.

use std::ops::ControlFlow;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tailor_modules::blueprint::{
    Blueprint, ColumnType, CompiledInput, DatasetSchema, LoraSettings, compile,
};
use tailor_modules::catalog::{Catalog, load_encoder};
use tailor_modules::encoder::{Cell, Encoder};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::Target;
use tailor_modules::metrics::Metrics;
use tailor_modules::train::{Examples, InputValue, Row};

fn factory(
    input: &CompiledInput,
    lora: Option<&LoraSettings>,
    seed: u64,
) -> anyhow::Result<Box<dyn Encoder>> {
    load_encoder(
        &Catalog::builtin(),
        Path::new("/nonexistent"),
        input,
        lora,
        seed,
    )
}

fn xor_data(n: usize, seed: u64) -> Examples {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows = (0..n)
        .map(|_| {
            let a: f64 = rng.random_range(-1.0..1.0);
            let b: f64 = rng.random_range(-1.0..1.0);
            Row {
                inputs: vec![
                    InputValue::Cells(vec![Cell::Number(a)]),
                    InputValue::Cells(vec![Cell::Number(b)]),
                ],
                targets: vec![Target::Class(usize::from(a * b > 0.0))],
            }
        })
        .collect();
    Examples {
        labels: vec![vec!["differ".into(), "same".into()]],
        rows,
    }
}

/// Test accuracy of a blueprint reading inputs `inputs` (by position) with `fusion`.
fn accuracy(inputs: &[usize], fusion: &str, data: &Examples, test: &Examples) -> f64 {
    let names = ["a", "b"];
    let bp = Blueprint::from_json(
        &serde_json::json!({
            "name": "xor",
            "inputs": inputs.iter().map(|&i| serde_json::json!({
                "name": names[i], "modality": "tabular", "encoder": { "module": "tabular/mlp", "hidden": 32 }
            })).collect::<Vec<_>>(),
            "fusion": { "kind": fusion },
            "outputs": [{ "name": "y", "task": "classification", "decoder": { "module": "head/linear" } }],
            "adaptation": { "method": "none" },
            "training": { "epochs": 40, "batch_size": 32, "head_learning_rate": 0.003, "seed": 3,
                          "early_stopping": { "patience": 0 } }
        })
        .to_string(),
    )
    .unwrap();
    let schema = DatasetSchema::new([
        ("a", ColumnType::Number),
        ("b", ColumnType::Number),
        ("y", ColumnType::Category),
    ]);
    let compiled = compile(&bp, &Catalog::builtin(), &schema).unwrap();
    let pick = |ex: &Examples| Examples {
        labels: ex.labels.clone(),
        rows: ex
            .rows
            .iter()
            .map(|r| Row {
                inputs: inputs.iter().map(|&i| r.inputs[i].clone()).collect(),
                targets: r.targets.clone(),
            })
            .collect(),
    };
    let Evaluation::Done { report, .. } = train_and_evaluate(
        &compiled,
        &pick(data),
        Some(&pick(test)),
        &factory,
        EvaluateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap() else {
        panic!("not cancelled")
    };
    let Metrics::Classification(m) = &report.tuned else {
        panic!("classification")
    };
    m.accuracy
}

#[test]
fn attention_fusion_learns_what_needs_both_inputs() {
    let data = xor_data(400, 1);
    let test = xor_data(200, 2);
    let both = accuracy(&[0, 1], "attention", &data, &test);
    let only_a = accuracy(&[0], "attention", &data, &test);
    let only_b = accuracy(&[1], "attention", &data, &test);
    eprintln!(
        "XOR of signs, 200 test rows: both {both:.3}, a alone {only_a:.3}, b alone {only_b:.3}"
    );
    assert!(
        only_a < 0.65 && only_b < 0.65,
        "one input alone should be near chance"
    );
    assert!(both >= 0.85, "attention fusion reached only {both:.3}");
    assert!(both >= only_a.max(only_b) + 0.2);
}
