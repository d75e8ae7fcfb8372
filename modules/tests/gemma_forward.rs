//! The Gemma 3 architecture on the real 270M checkpoint, dequantized to f32, against
//! (1) transformers' own Gemma 3 on the same GGUF (`tests/reference/gemma3_forward_reference.py`,
//! committed as `gemma3_forward.json`) and (2) candle-transformers' quantized Gemma 3.

use std::sync::OnceLock;

use candle_core::{Device, IndexOp, Tensor};
use serde::Deserialize;
use tailor_modules::gguf::{GgufError, GgufFile};
use tailor_modules::ops::SeededRng;
use tailor_modules::text::gemma3::model::{Activation, Config, Gemma3Model};

#[derive(Deserialize)]
struct Reference {
    dims: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    hidden_first_dims: Vec<Vec<f32>>,
    hidden_norms: Vec<f32>,
    pooled_first_dims: Vec<f32>,
    last_logits_top_ids: Vec<u32>,
    last_logits_top_values: Vec<f32>,
}

fn gguf_path() -> std::path::PathBuf {
    let assets = std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into());
    std::path::Path::new(&assets).join("gemma3-270m/gemma-3-270m-q4_k_m.gguf")
}

fn model() -> &'static Gemma3Model {
    static MODEL: OnceLock<Gemma3Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let gguf = GgufFile::open(gguf_path()).unwrap();
        let cfg = Config::from_gguf(&gguf).unwrap();
        Gemma3Model::load(&gguf, &cfg, None, &SeededRng::new(0), 256).unwrap()
    })
}

#[test]
fn config_comes_from_the_gguf_metadata() {
    let gguf = GgufFile::open(gguf_path()).unwrap();
    let cfg = Config::from_gguf(&gguf).unwrap();
    assert_eq!(
        (
            cfg.vocab_size,
            cfg.hidden_size,
            cfg.num_layers,
            cfg.intermediate_size
        ),
        (262_144, 640, 18, 2048)
    );
    assert_eq!((cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), (4, 1, 256));
    assert_eq!(cfg.sliding_window, 512);
    let global: Vec<usize> = (0..18).filter(|&l| !cfg.is_sliding(l)).collect();
    assert_eq!(
        global,
        vec![5, 11, 17],
        "every sixth layer attends globally"
    );
    cfg.check(&gguf).unwrap();
}

/// Hidden states and logits equal transformers' on the same checkpoint within 2e-3 of the
/// largest magnitude (f32 sums in another order); the top-10 next tokens are the same.
#[test]
fn forward_matches_transformers_on_the_dequantized_checkpoint() {
    let reference: Reference =
        serde_json::from_str(include_str!("reference/gemma3_forward.json")).unwrap();
    let model = model();
    for case in &reference.cases {
        let ids = Tensor::new(case.ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = model.forward_hidden(&ids, false).unwrap().i(0).unwrap();
        let got = hidden
            .narrow(1, 0, reference.dims)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let norms = hidden
            .sqr()
            .unwrap()
            .sum(1)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut worst = 0f32;
        for (pos, (row, want)) in got.iter().zip(&case.hidden_first_dims).enumerate() {
            let scale = case.hidden_norms[pos].max(1.0);
            for (g, w) in row.iter().zip(want) {
                worst = worst.max((g - w).abs() / scale);
            }
            let rel = (norms[pos] - case.hidden_norms[pos]).abs() / case.hidden_norms[pos];
            assert!(
                rel < 1e-3,
                "{:?} position {pos}: norm {} vs {}",
                case.text,
                norms[pos],
                case.hidden_norms[pos]
            );
        }
        assert!(
            worst < 2e-3,
            "{:?}: hidden states differ by {worst} (relative to the row norm)",
            case.text
        );

        let pooled = hidden
            .narrow(0, 1, case.ids.len() - 1)
            .unwrap()
            .mean(0)
            .unwrap();
        for (i, (g, w)) in pooled
            .narrow(0, 0, reference.dims)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(&case.pooled_first_dims)
            .enumerate()
        {
            assert!(
                (g - w).abs() < 2e-3 * w.abs().max(1.0),
                "{:?} pooled[{i}]: {g} vs {w}",
                case.text
            );
        }

        let logits = model
            .logits(&hidden.i(case.ids.len() - 1).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let top: Vec<u32> = order[..10].iter().map(|&i| i as u32).collect();
        assert_eq!(
            top[..5],
            case.last_logits_top_ids[..5],
            "{:?}: top next tokens",
            case.text
        );
        for (&id, &want) in case
            .last_logits_top_ids
            .iter()
            .zip(&case.last_logits_top_values)
        {
            let got = logits[id as usize];
            assert!(
                (got - want).abs() < 2e-2 * want.abs().max(1.0),
                "{:?}: logit of {id}: {got} vs {want}",
                case.text
            );
        }
    }
}

/// candle-transformers' `quantized_gemma3` (0.11) runs the quantized matmuls directly (its
/// CPU kernels quantize activations to 8 bits) and uses SiLU in the feed-forward where
/// Gemma 3 has GELU-tanh. With the activation set to SiLU, this f32 implementation gives
/// the same last-position logits within the noise of that activation quantization.
#[test]
fn forward_matches_candle_transformers_quantized_gemma3() {
    let path = gguf_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut quantized = candle_transformers::models::quantized_gemma3::ModelWeights::from_gguf(
        content,
        &mut file,
        &Device::Cpu,
    )
    .unwrap();

    let gguf = GgufFile::open(&path).unwrap();
    let mut cfg = Config::from_gguf(&gguf).unwrap();
    cfg.activation = Activation::Silu;
    let ours = Gemma3Model::load(&gguf, &cfg, None, &SeededRng::new(0), 64).unwrap();

    let reference: Reference =
        serde_json::from_str(include_str!("reference/gemma3_forward.json")).unwrap();
    for case in &reference.cases {
        let ids = Tensor::new(case.ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = quantized
            .forward(&ids, 0)
            .unwrap()
            .i(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = ours
            .last_logits(&ids)
            .unwrap()
            .i(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let spread = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let diff = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        eprintln!(
            "{:?}: max |logit difference| {diff} (largest logit {spread})",
            case.text
        );
        assert_eq!(argmax(&got), argmax(&want), "{:?}: next token", case.text);
        assert!(
            diff < 0.05 * spread,
            "{:?}: logits differ by {diff} (largest {spread})",
            case.text
        );
    }
}

#[test]
fn a_checkpoint_that_is_not_gemma3_is_refused_naming_the_tensor() {
    let gguf = GgufFile::open(gguf_path()).unwrap();
    let mut cfg = Config::from_gguf(&gguf).unwrap();
    cfg.intermediate_size = 4096;
    let err = cfg.check(&gguf).unwrap_err();
    assert!(
        matches!(&err, GgufError::TensorShape { name, .. } if name == "blk.0.ffn_gate.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("blk.0.ffn_gate.weight"), "{err}");

    let mut cfg = Config::from_gguf(&gguf).unwrap();
    cfg.num_layers = 19;
    let err = cfg.check(&gguf).unwrap_err();
    assert!(err.to_string().contains("blk.18.attn_norm.weight"), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}
