//! `sensor/tcn` learns to tell recordings apart by frequency and by waveform shape, on
//! synthetic two-channel signals generated here: a 3 Hz sine, a 7 Hz sine and a 3 Hz
//! square wave (the same frequency as the first class, a different shape), each with a
//! random amplitude, phase, length and noise, and a second channel of pure noise. Half the
//! files are CSV (with a time column), half NPY, through the real decoders.

use std::ops::ControlFlow;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tailor_modules::blueprint::{
    Blueprint, ColumnType, CompiledInput, DatasetSchema, LoraSettings, compile,
};
use tailor_modules::catalog::{Catalog, Modality, load_encoder};
use tailor_modules::encoder::{Encoder, FileValue};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::Target;
use tailor_modules::metrics::Metrics;
use tailor_modules::train::{Event, Examples, InputValue, Row};

const RATE: f32 = 50.0;

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

fn npy(samples: &[[f32; 2]]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, 2), }}",
        samples.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for s in samples {
        out.extend(s[0].to_le_bytes());
        out.extend(s[1].to_le_bytes());
    }
    out
}

fn csv(samples: &[[f32; 2]]) -> Vec<u8> {
    let mut s = String::from("time,vibration,noise\n");
    for (t, v) in samples.iter().enumerate() {
        s.push_str(&format!("{:.4},{},{}\n", t as f32 / RATE, v[0], v[1]));
    }
    s.into_bytes()
}

fn signals(n: usize, seed: u64) -> Examples {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows = (0..n)
        .map(|i| {
            let class = i % 3;
            let freq = if class == 1 { 7.0 } else { 3.0 };
            let amp: f32 = rng.random_range(0.5..2.0);
            let phase: f32 = rng.random_range(0.0..std::f32::consts::TAU);
            let len = rng.random_range(100..160);
            let samples: Vec<[f32; 2]> = (0..len)
                .map(|t| {
                    let x = std::f32::consts::TAU * freq * t as f32 / RATE + phase;
                    let wave = if class == 2 {
                        x.sin().signum()
                    } else {
                        x.sin()
                    };
                    [
                        amp * wave + rng.random_range(-0.3..0.3),
                        rng.random_range(-1.0..1.0),
                    ]
                })
                .collect();
            let file = if i % 2 == 0 {
                FileValue::new(format!("rec{i}.csv"), csv(&samples))
            } else {
                FileValue::new(format!("rec{i}.npy"), npy(&samples))
            };
            Row {
                inputs: vec![InputValue::File(file)],
                targets: vec![Target::Class(class)],
            }
        })
        .collect();
    Examples {
        labels: vec![vec!["sine3".into(), "sine7".into(), "square3".into()]],
        rows,
    }
}

#[test]
fn tcn_tells_frequency_and_waveform_apart() {
    let data = signals(180, 1);
    let test = signals(90, 2);
    let bp = Blueprint::from_json(
        &serde_json::json!({
            "name": "vibration",
            "inputs": [{ "name": "recording", "modality": "sensor",
                         "encoder": { "module": "sensor/tcn", "channels": 2, "length": 128 } }],
            "outputs": [{ "name": "kind", "task": "classification",
                          "decoder": { "module": "head/linear" } }],
            "adaptation": { "method": "none" },
            "training": { "epochs": 12, "batch_size": 16, "head_learning_rate": 0.003, "seed": 2 }
        })
        .to_string(),
    )
    .unwrap();
    let schema = DatasetSchema::new([
        (
            "recording",
            ColumnType::File {
                modality: Modality::Sensor,
            },
        ),
        ("kind", ColumnType::Category),
    ]);
    let compiled = compile(&bp, &Catalog::builtin(), &schema).unwrap();
    let (mut first, mut last) = (None, 0.0);
    let Evaluation::Done { report, .. } = train_and_evaluate(
        &compiled,
        &data,
        Some(&test),
        &factory,
        EvaluateOptions::default(),
        &mut |e| {
            if let Event::Epoch(p) = e {
                first.get_or_insert(p.train_loss);
                last = p.train_loss;
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap() else {
        panic!("not cancelled")
    };
    let Metrics::Classification(m) = &report.tuned else {
        panic!("classification")
    };
    let first = first.unwrap();
    eprintln!(
        "sensor/tcn, 3 classes, {} test recordings: accuracy {:.3}, macro F1 {:.3}; train loss {first:.3} → {last:.3}",
        report.test_rows, m.accuracy, m.macro_f1
    );
    assert!(
        last < first * 0.6,
        "the loss did not fall: {first} → {last}"
    );
    assert!(
        m.accuracy >= 0.8,
        "accuracy {:.3} (chance 0.333)",
        m.accuracy
    );
}
