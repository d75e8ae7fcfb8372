//! `audio/ge2e` learns through the platform's own training loop (catalog → `load_encoder` →
//! `train_and_evaluate`, LoRA on the LSTM) on synthetic clips whose classes differ only in
//! how their pitch moves over time: rising chirps, falling chirps and warbles, all in the
//! same random band, with random amplitude, phase, second harmonic, length and noise. The
//! average spectrum of a clip does not tell the classes apart; the order of its frames does.

use std::ops::ControlFlow;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tailor_modules::blueprint::{Blueprint, ColumnType, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, Modality, load_encoder};
use tailor_modules::encoder::FileValue;
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::Target;
use tailor_modules::metrics::Metrics;
use tailor_modules::train::{Event, Examples, InputValue, Phase, Row};

const RATE: u32 = 16000;
const CLASSES: [&str; 3] = ["rising", "falling", "warble"];

fn assets() -> PathBuf {
    std::env::var_os("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tailor-assets"))
}

fn wav(samples: &[f64]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    out
}

/// One clip of class `class` (0 rising, 1 falling, 2 warble).
fn clip(class: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let seconds = rng.random_range(1.0..1.5);
    let n = (seconds * RATE as f64) as usize;
    let lo = rng.random_range(300.0..900.0);
    let hi = lo + rng.random_range(400.0..900.0);
    let amp = rng.random_range(0.05..0.5);
    let second = rng.random_range(0.0..0.5);
    let noise = amp * rng.random_range(0.05..0.3);
    let warble_rate = rng.random_range(3.0..6.0);
    let warble_phase = rng.random_range(0.0..std::f64::consts::TAU);
    let mut phase = rng.random_range(0.0..std::f64::consts::TAU);
    (0..n)
        .map(|i| {
            let u = i as f64 / n as f64;
            let t = i as f64 / RATE as f64;
            let f = match class {
                0 => lo + (hi - lo) * u,
                1 => hi - (hi - lo) * u,
                _ => {
                    (lo + hi) / 2.0
                        + (hi - lo) / 2.0
                            * (std::f64::consts::TAU * warble_rate * t + warble_phase).sin()
                }
            };
            phase += std::f64::consts::TAU * f / RATE as f64;
            amp * (phase.sin() + second * (2.0 * phase).sin()) + noise * rng.random_range(-1.0..1.0)
        })
        .collect()
}

fn examples(per_class: usize, seed: u64) -> Examples {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::new();
    for i in 0..per_class {
        for class in 0..CLASSES.len() {
            let bytes = wav(&clip(class, &mut rng));
            rows.push(Row {
                inputs: vec![InputValue::File(FileValue::new(
                    format!("clips/{seed}-{i}-{class}.wav"),
                    bytes,
                ))],
                targets: vec![Target::Class(class)],
            });
        }
    }
    Examples {
        labels: vec![CLASSES.map(String::from).to_vec()],
        rows,
    }
}

#[test]
fn ge2e_with_lora_learns_which_way_the_pitch_moves() {
    let started = std::time::Instant::now();
    let train = examples(16, 1);
    let test = examples(10, 2);
    let bp = Blueprint::from_json(
        &serde_json::json!({
            "name": "pitch-direction",
            "inputs": [{ "name": "clip", "modality": "audio",
                         "encoder": { "module": "audio/ge2e" } }],
            "outputs": [{ "name": "kind", "task": "classification",
                          "decoder": { "module": "head/linear" } }],
            "adaptation": { "method": "lora", "rank": 4, "alpha": 8 },
            "training": { "epochs": 8, "batch_size": 8, "learning_rate": 0.003,
                          "head_learning_rate": 0.01, "seed": 3 }
        })
        .to_string(),
    )
    .unwrap();
    let schema = DatasetSchema::new(vec![
        (
            "clip".to_string(),
            ColumnType::File {
                modality: Modality::Audio,
            },
        ),
        ("kind".to_string(), ColumnType::Category),
    ]);
    let catalog = Catalog::builtin();
    let compiled = compile(&bp, &catalog, &schema).unwrap();
    // The catalog's default targets: the last LSTM layer's projections and the linear layer.
    let lora = compiled.adaptation.as_ref().expect("LoRA");
    assert_eq!(lora.targets, ["ih_l2", "hh_l2", "linear"]);
    let models = assets();
    let factory = |input: &tailor_modules::blueprint::CompiledInput,
                   lora: Option<&tailor_modules::blueprint::LoraSettings>,
                   seed: u64| load_encoder(&catalog, &models, input, lora, seed);

    let mut losses = Vec::new();
    let result = train_and_evaluate(
        &compiled,
        &train,
        Some(&test),
        &factory,
        EvaluateOptions::default(),
        &mut |e| {
            if let Event::Epoch(p) = e
                && p.phase == Phase::Tuned
            {
                losses.push(p.train_loss);
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let Evaluation::Done { report, .. } = result else {
        panic!("not cancelled")
    };
    let (Metrics::Classification(tuned), Metrics::Classification(baseline)) =
        (&report.tuned, &report.baseline)
    else {
        panic!("a classification report")
    };
    eprintln!(
        "pitch direction, {} test clips: LoRA accuracy {:.3} (macro F1 {:.3}), frozen GE2E + head \
         {:.3}; chance 0.333; tuned train loss by epoch {losses:.3?}; {:.1} s",
        report.test_rows,
        tuned.accuracy,
        tuned.macro_f1,
        baseline.accuracy,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report.test_rows, 30);
    let (first, best) = (
        losses[0],
        losses.iter().copied().fold(f64::INFINITY, f64::min),
    );
    assert!(
        best < first * 0.7,
        "the training loss did not fall: {losses:?}"
    );
    assert!(
        tuned.accuracy >= 0.6,
        "accuracy {:.3} is not clearly above chance (0.333)",
        tuned.accuracy
    );
}
