//! `image/efficientnet-lite0` learns through the platform's training loop (catalog →
//! `load_encoder` → `train_and_evaluate`, LoRA on its 1×1 convolutions) on real data:
//! scikit-learn's 8×8 handwritten digits (`digits.csv.gz`), each rendered to a PNG file
//! upscaled to 32×32, against the frozen encoder with a trained head (the baseline) and
//! chance (0.1). Small on purpose (a few rows per class, 32-pixel images) so that it runs
//! in seconds; `--ignored` runs a larger version that prints the numbers.

use std::io::Read;
use std::ops::ControlFlow;
use std::path::PathBuf;

use tailor_modules::blueprint::{Blueprint, ColumnType, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, Modality, load_encoder};
use tailor_modules::encoder::FileValue;
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::Target;
use tailor_modules::metrics::Metrics;
use tailor_modules::train::{Event, Examples, InputValue, Phase, Row};

fn assets() -> PathBuf {
    std::env::var_os("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tailor-assets"))
}

/// The 1797 digits: 64 pixel values (0–16) and the label, per row.
fn digits() -> Vec<(Vec<u8>, usize)> {
    let file = std::fs::File::open(assets().join("sklearn/digits.csv.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|line| {
            let values: Vec<u8> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
            assert_eq!(values.len(), 65, "{line}");
            (values[..64].to_vec(), values[64] as usize)
        })
        .collect()
}

/// An 8×8 digit as a 32×32 grey PNG (dark ink on white, each cell 4×4 pixels).
fn png(pixels: &[u8]) -> Vec<u8> {
    let image = image::GrayImage::from_fn(32, 32, |x, y| {
        let v = pixels[(y / 4 * 8 + x / 4) as usize] as u32;
        image::Luma([(255 - v * 255 / 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `per_class` rows of each digit, taken in file order after skipping `skip` of each.
fn examples(all: &[(Vec<u8>, usize)], skip: usize, per_class: usize) -> Examples {
    let mut seen = [0usize; 10];
    let mut rows = Vec::new();
    for (i, (pixels, label)) in all.iter().enumerate() {
        seen[*label] += 1;
        if seen[*label] <= skip || seen[*label] > skip + per_class {
            continue;
        }
        rows.push(Row {
            inputs: vec![InputValue::File(FileValue::new(
                format!("digits/{i}.png"),
                png(pixels),
            ))],
            targets: vec![Target::Class(*label)],
        });
    }
    Examples {
        labels: vec![(0..10).map(|d| d.to_string()).collect()],
        rows,
    }
}

/// Trains LoRA and the frozen baseline; returns (tuned, baseline) accuracy and the tuned
/// run's training loss by epoch.
fn run(
    train_per_class: usize,
    test_per_class: usize,
    image_size: usize,
    epochs: usize,
) -> (f64, f64, Vec<f64>) {
    let all = digits();
    assert_eq!(all.len(), 1797);
    let train = examples(&all, 0, train_per_class);
    let test = examples(&all, train_per_class, test_per_class);
    let bp = Blueprint::from_json(
        &serde_json::json!({
            "name": "digits",
            "inputs": [{ "name": "digit", "modality": "image",
                         "encoder": { "module": "image/efficientnet-lite0",
                                      "image_size": image_size } }],
            "outputs": [{ "name": "label", "task": "classification",
                          "decoder": { "module": "head/linear" } }],
            "adaptation": { "method": "lora", "rank": 4, "alpha": 8 },
            "training": { "epochs": epochs, "batch_size": 10, "learning_rate": 0.003,
                          "head_learning_rate": 0.01, "seed": 3 }
        })
        .to_string(),
    )
    .unwrap();
    let schema = DatasetSchema::new(vec![
        (
            "digit".to_string(),
            ColumnType::File {
                modality: Modality::Image,
            },
        ),
        ("label".to_string(), ColumnType::Category),
    ]);
    let catalog = Catalog::builtin();
    let compiled = compile(&bp, &catalog, &schema).unwrap();
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
    assert_eq!(report.test_rows, 10 * test_per_class);
    (tuned.accuracy, baseline.accuracy, losses)
}

#[test]
fn efficientnet_with_lora_learns_digits() {
    let started = std::time::Instant::now();
    let (tuned, baseline, losses) = run(6, 5, 32, 6);
    eprintln!(
        "digits, 60 train / 50 test at 32 px: LoRA accuracy {tuned:.3}, frozen + head \
         {baseline:.3}, chance 0.1; tuned loss by epoch {losses:.3?}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let first = losses[0];
    let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(
        best < first * 0.7,
        "the training loss did not fall: {losses:?}"
    );
    assert!(
        tuned >= 0.4,
        "accuracy {tuned:.3} is not clearly above chance (0.1)"
    );
}

#[test]
#[ignore = "a few minutes: run with --ignored --nocapture to print the numbers"]
fn digits_at_scale() {
    let started = std::time::Instant::now();
    let (tuned, baseline, losses) = run(30, 20, 64, 8);
    eprintln!(
        "digits, 300 train / 200 test at 64 px: LoRA accuracy {tuned:.3}, frozen + head \
         {baseline:.3}, chance 0.1; tuned loss by epoch {losses:.3?}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
