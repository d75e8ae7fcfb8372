//! `pointcloud/pointnet` learns shapes: points on the surface of a sphere, a cube or a
//! cylinder, generated here with a random rotation, scale, offset, point count and noise,
//! written as binary PLY, ASCII PLY, XYZ and PCD files and read through the real parsers.

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

fn surface_point(shape: usize, rng: &mut ChaCha8Rng) -> [f32; 3] {
    let u: f32 = rng.random_range(-1.0..1.0);
    let a: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    match shape {
        // Sphere: uniform on the unit sphere.
        0 => {
            let r = (1.0 - u * u).sqrt();
            [r * a.cos(), r * a.sin(), u]
        }
        // Cube: a random face, a random point on it.
        1 => {
            let face = rng.random_range(0..6);
            let (s, t): (f32, f32) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
            let sign = if face % 2 == 0 { 1.0 } else { -1.0 };
            match face / 2 {
                0 => [sign, s, t],
                1 => [s, sign, t],
                _ => [s, t, sign],
            }
        }
        // Cylinder: the side (radius 1, height 2) and its two caps.
        _ => {
            if rng.random_bool(0.7) {
                [a.cos(), a.sin(), u]
            } else {
                let r = rng.random_range(0.0f32..1.0).sqrt();
                [r * a.cos(), r * a.sin(), if u > 0.0 { 1.0 } else { -1.0 }]
            }
        }
    }
}

/// A random rotation (Euler angles).
fn rotate(p: [f32; 3], angles: [f32; 3]) -> [f32; 3] {
    let [a, b, c] = angles;
    let (x, y, z) = (p[0], p[1], p[2]);
    let (y, z) = (y * a.cos() - z * a.sin(), y * a.sin() + z * a.cos());
    let (x, z) = (x * b.cos() + z * b.sin(), -x * b.sin() + z * b.cos());
    let (x, y) = (x * c.cos() - y * c.sin(), x * c.sin() + y * c.cos());
    [x, y, z]
}

fn file(i: usize, points: &[[f32; 3]]) -> FileValue {
    let n = points.len();
    let bytes = match i % 4 {
        0 => {
            let mut b = format!(
                "ply\nformat binary_little_endian 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
            )
            .into_bytes();
            for p in points {
                for v in p {
                    b.extend(v.to_le_bytes());
                }
            }
            b
        }
        1 => {
            let mut s = format!(
                "ply\nformat ascii 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
            );
            for p in points {
                s.push_str(&format!("{} {} {}\n", p[0], p[1], p[2]));
            }
            s.into_bytes()
        }
        2 => points
            .iter()
            .map(|p| format!("{} {} {}\n", p[0], p[1], p[2]))
            .collect::<String>()
            .into_bytes(),
        _ => {
            let mut b = format!(
                "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {n}\nHEIGHT 1\nPOINTS {n}\nDATA binary\n"
            )
            .into_bytes();
            for p in points {
                for v in p {
                    b.extend(v.to_le_bytes());
                }
            }
            b
        }
    };
    let ext = ["ply", "ply", "xyz", "pcd"][i % 4];
    FileValue::new(format!("scan{i}.{ext}"), bytes)
}

fn shapes(n: usize, seed: u64) -> Examples {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows = (0..n)
        .map(|i| {
            let class = i % 3;
            let angles = [
                rng.random_range(0.0..6.3),
                rng.random_range(0.0..6.3),
                rng.random_range(0.0..6.3),
            ];
            let scale: f32 = rng.random_range(0.5..3.0);
            let offset: [f32; 3] = [
                rng.random_range(-5.0..5.0),
                rng.random_range(-5.0..5.0),
                rng.random_range(-5.0..5.0),
            ];
            let count = rng.random_range(80..300);
            let points: Vec<[f32; 3]> = (0..count)
                .map(|_| {
                    let p = rotate(surface_point(class, &mut rng), angles);
                    let mut q = [0f32; 3];
                    for k in 0..3 {
                        q[k] = p[k] * scale + offset[k] + rng.random_range(-0.03..0.03) * scale;
                    }
                    q
                })
                .collect();
            Row {
                inputs: vec![InputValue::File(file(i, &points))],
                targets: vec![Target::Class(class)],
            }
        })
        .collect();
    Examples {
        labels: vec![vec!["sphere".into(), "cube".into(), "cylinder".into()]],
        rows,
    }
}

#[test]
fn pointnet_tells_spheres_cubes_and_cylinders_apart() {
    let data = shapes(210, 1);
    let test = shapes(90, 2);
    let bp = Blueprint::from_json(
        &serde_json::json!({
            "name": "parts",
            "inputs": [{ "name": "scan", "modality": "pointcloud",
                         "encoder": { "module": "pointcloud/pointnet", "points": 128 } }],
            "outputs": [{ "name": "shape", "task": "classification",
                          "decoder": { "module": "head/linear" } }],
            "adaptation": { "method": "none" },
            "training": { "epochs": 20, "batch_size": 16, "head_learning_rate": 0.003, "seed": 4 }
        })
        .to_string(),
    )
    .unwrap();
    let schema = DatasetSchema::new([
        (
            "scan",
            ColumnType::File {
                modality: Modality::PointCloud,
            },
        ),
        ("shape", ColumnType::Category),
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
        "pointcloud/pointnet, 3 shapes, {} test clouds: accuracy {:.3}, macro F1 {:.3}; train loss {first:.3} → {last:.3}",
        report.test_rows, m.accuracy, m.macro_f1
    );
    assert!(
        last < first * 0.6,
        "the loss did not fall: {first} → {last}"
    );
    assert!(
        m.accuracy >= 0.7,
        "accuracy {:.3} (chance 0.333)",
        m.accuracy
    );
}
