//! Checkpoints in every format Tailor reads, checked against what PyTorch itself reads from
//! the same files (modules/tests/reference/checkpoint_reference.py → checkpoints.json):
//! the two real legacy-format checkpoints (EfficientNet-Lite0, resemblyzer's GE2E with its
//! nested `model_state`) and small fixtures of one nested dict in the zip, legacy,
//! safetensors and GGUF formats.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::Value;
use tailor_modules::checkpoint::{Checkpoint, CheckpointError, Format};

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(reference_dir().join("checkpoints.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assets() -> PathBuf {
    std::env::var_os("TAILOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/tailor-assets"))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

/// Every tensor PyTorch found is there with the same shape, sum and first/last elements,
/// and no other tensor is.
fn check_against(ckpt: &Checkpoint, expected: &serde_json::Map<String, Value>) {
    let names: Vec<&str> = ckpt.names().collect();
    let mut want: Vec<&str> = expected.keys().map(String::as_str).collect();
    want.sort();
    assert_eq!(names, want, "{}: tensor names", ckpt.path().display());
    for (name, facts) in expected {
        let shape: Vec<usize> = facts["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let tensor = ckpt.get(name, shape.clone()).unwrap();
        assert_eq!(tensor.dims(), shape.as_slice(), "{name}");
        let values: Vec<f64> = tensor
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let sum: f64 = values.iter().sum();
        assert!(
            close(sum, facts["sum"].as_f64().unwrap(), 1e-9),
            "{name}: sum {sum} vs {}",
            facts["sum"]
        );
        // Compared in f32 (exact for every dtype here): JSON's decimal text of an f64 may
        // parse back one f64 ulp off.
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        let first = f32s(&floats(&facts["first"]));
        let last = f32s(&floats(&facts["last"]));
        assert_eq!(f32s(&values[..first.len()]), first, "{name}: first");
        assert_eq!(
            f32s(&values[values.len() - last.len()..]),
            last,
            "{name}: last"
        );
    }
}

#[test]
fn the_real_efficientnet_lite0_checkpoint_reads_as_pytorch_reads_it() {
    let path = assets().join("efficientnet-lite0/efficientnet-lite0.pth");
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.format(), Format::TorchLegacy);
    let reference = reference();
    let expected = reference["real"]["efficientnet-lite0"].as_object().unwrap();
    assert_eq!(expected.len(), 296);
    // Its convolution kernels are stored channels-last: the strided copy must reorder them.
    assert_eq!(
        expected["_conv_stem.weight"]["contiguous"],
        Value::Bool(false)
    );
    check_against(&ckpt, expected);
    assert_eq!(ckpt.meta("_bn0.num_batches_tracked").unwrap().dtype, "long");
}

#[test]
fn the_real_ge2e_checkpoint_reaches_its_nested_state_dict() {
    let path = assets().join("ge2e/pretrained.pt");
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.format(), Format::TorchLegacy);
    let reference = reference();
    check_against(&ckpt, reference["real"]["ge2e"].as_object().unwrap());

    // Through a VarBuilder, the way a module loads it.
    let vb = Checkpoint::open(&path)
        .unwrap()
        .var_builder(DType::F32, &Device::Cpu);
    let w = vb
        .pp("model_state")
        .pp("lstm")
        .get((1024, 40), "weight_ih_l0")
        .unwrap();
    let first: Vec<f32> = w
        .flatten_all()
        .unwrap()
        .narrow(0, 0, 2)
        .unwrap()
        .to_vec1()
        .unwrap();
    let want = floats(&reference["real"]["ge2e"]["model_state.lstm.weight_ih_l0"]["first"]);
    assert_eq!(first, vec![want[0] as f32, want[1] as f32]);
    // A misshapen request through the VarBuilder names the tensor and both shapes.
    let err = vb
        .pp("model_state")
        .get((256, 40), "lstm.weight_ih_l0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`model_state.lstm.weight_ih_l0`"), "{err}");
    assert!(
        err.contains("[1024, 40]") && err.contains("[256, 40]"),
        "{err}"
    );
}

#[test]
fn a_missing_or_misshapen_tensor_is_refused_by_name() {
    let ckpt = Checkpoint::open(assets().join("ge2e/pretrained.pt")).unwrap();
    match ckpt.get("model_state.lstm.weight_ih_l3", (1024, 256)) {
        Err(CheckpointError::Missing { name, closest, .. }) => {
            assert_eq!(name, "model_state.lstm.weight_ih_l3");
            let closest = closest.unwrap();
            assert!(
                closest.starts_with("model_state.lstm.weight_ih_l"),
                "{closest}"
            );
        }
        other => panic!("expected a missing tensor, got {other:?}"),
    }
    let err = ckpt
        .get("model_state.linear.weight", (256, 128))
        .unwrap_err();
    assert!(matches!(err, CheckpointError::Shape { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "tensor `model_state.linear.weight` in {} has shape [256, 256]; the module expects [256, 128]",
            ckpt.path().display()
        )
    );
    let err = ckpt
        .require([
            ("model_state.linear.bias", &[256][..]),
            ("model_state.projection.weight", &[256, 256][..]),
        ])
        .unwrap_err();
    assert!(
        err.to_string().contains("`model_state.projection.weight`"),
        "{err}"
    );
}

#[test]
fn the_zip_legacy_and_safetensors_fixtures_read_alike() {
    let reference = reference();
    let expected = reference["fixture"].as_object().unwrap();
    for (file, format) in [
        ("checkpoint_fixture.pt", Format::TorchZip),
        ("checkpoint_fixture_legacy.pt", Format::TorchLegacy),
        ("checkpoint_fixture.safetensors", Format::Safetensors),
    ] {
        let ckpt = Checkpoint::open(reference_dir().join(file)).unwrap();
        assert_eq!(ckpt.format(), format, "{file}");
        check_against(&ckpt, expected);
        let half = ckpt.get("model_state.half", 3).unwrap();
        assert_eq!(half.dtype(), DType::F16, "{file}");
        let steps = ckpt.get("model_state.steps", ()).unwrap();
        assert_eq!(steps.to_scalar::<i64>().unwrap(), 7, "{file}");
    }
}

#[test]
fn gguf_tensors_are_dequantized() {
    let reference = reference();
    let ckpt = Checkpoint::open(reference_dir().join("checkpoint_fixture.gguf")).unwrap();
    assert_eq!(ckpt.format(), Format::Gguf);
    for name in ["linear.weight", "quantized"] {
        let facts = &reference["gguf"][name];
        let shape: Vec<usize> = facts["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let values: Vec<f32> = ckpt
            .get(name, shape)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = floats(&facts["values"]).iter().map(|&v| v as f32).collect();
        assert_eq!(values, want, "{name}");
    }
    assert_eq!(ckpt.meta("quantized").unwrap().dtype, "q8_0");
}

#[test]
fn broken_files_are_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("tailor-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Not a checkpoint at all.
    let text = dir.join("notes.pth");
    std::fs::write(&text, b"hello, this is not a checkpoint").unwrap();
    assert!(matches!(
        Checkpoint::open(&text),
        Err(CheckpointError::UnknownFormat { .. })
    ));
    // A legacy file cut inside its storages.
    let real = std::fs::read(reference_dir().join("checkpoint_fixture_legacy.pt")).unwrap();
    let cut = dir.join("cut.pth");
    for end in [real.len() - 1, real.len() - 20] {
        std::fs::write(&cut, &real[..end]).unwrap();
        let err = Checkpoint::open(&cut).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Malformed { .. })
                && err.to_string().contains("the file ends"),
            "{err}"
        );
    }
    // Cut inside the pickles.
    std::fs::write(&cut, &real[..200]).unwrap();
    let err = Checkpoint::open(&cut).unwrap_err();
    assert!(matches!(err, CheckpointError::Malformed { .. }), "{err}");
    // Missing file.
    let err = Checkpoint::open(dir.join("absent.pth")).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
