//! EfficientNet-Lite0 on the real checkpoint against an independent torch implementation
//! of the same network (modules/tests/reference/efficientnet_reference.py, which also
//! agrees with the `efficientnet_lite_pytorch` package's own model to 5e-7): pooled
//! features and ImageNet logits of synthetic images at 224 and 96 pixels.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use tailor_modules::image::efficientnet::EfficientNet;
use tailor_modules::image::{ImageEncoder, ImageEncoderOptions, PIXEL_MEAN, PIXEL_STD};

fn assets() -> PathBuf {
    std::env::var_os("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tailor-assets"))
}

/// The reference script's pixel formulas.
fn pixel(kind: u64, x: usize, y: usize, c: usize, size: usize) -> f32 {
    let v = if kind == 0 {
        (x * 7 + y * 13 + c * 50 + (x * y) % 31) % 256
    } else {
        let (cx, cy) = ((size / 2) as i64, (size / 2) as i64);
        let d2 = (x as i64 - cx).pow(2) + (y as i64 - cy).pow(2);
        let r = (d2 as f64).sqrt().floor() as usize;
        (r * 9 + c * 80) % 256
    };
    v as f32
}

fn image(kind: u64, size: usize) -> Tensor {
    let mut values = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                values.push((pixel(kind, x, y, c, size) - PIXEL_MEAN) / PIXEL_STD);
            }
        }
    }
    Tensor::from_vec(values, (1, size, size, 3), &Device::Cpu).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Largest difference relative to the largest reference magnitude.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

#[test]
fn pooled_features_and_logits_match_the_torch_reference() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/efficientnet_lite0.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(reference["normalization"]["mean"], 127.0);
    assert_eq!(reference["normalization"]["std"], 128.0);
    let encoder = ImageEncoder::load(
        assets().join("efficientnet-lite0"),
        &ImageEncoderOptions::default(),
    )
    .unwrap();
    for item in reference["images"].as_array().unwrap() {
        let name = item["name"].as_str().unwrap();
        let size = item["size"].as_u64().unwrap() as usize;
        let pixels = image(item["kind"].as_u64().unwrap(), size);
        let encoded = encoder.encode_pixels(&pixels, None, false).unwrap();
        let pooled: Vec<f32> = encoded.pooled.flatten_all().unwrap().to_vec1().unwrap();
        let err = relative_error(&pooled, &floats(&item["pooled"]));
        println!("{name} ({size}px): pooled relative error {err:e}");
        assert!(err < 1e-4, "{name}: pooled features off by {err}");
        let logits = encoder
            .network()
            .logits(&encoded.pooled)
            .unwrap()
            .expect("the checkpoint has its classifier");
        let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let err = relative_error(&logits, &floats(&item["logits"]));
        println!("{name} ({size}px): logits relative error {err:e}");
        assert!(err < 1e-4, "{name}: logits off by {err}");
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top5: Vec<u64> = order[..5].iter().map(|&i| i as u64).collect();
        let want: Vec<u64> = item["top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(top5, want, "{name}: top-5 classes");
        // The token states are the head's feature map, whose mean is the pooled vector.
        let (b, positions, width) = encoded.tokens.dims3().unwrap();
        let side = size.div_ceil(32);
        assert_eq!((b, positions, width), (1, side * side, 1280));
        let mean =
            EfficientNet::pool(&encoded.tokens.reshape((1, side, side, 1280)).unwrap()).unwrap();
        let diff = (mean - &encoded.pooled)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6);
    }
}
