//! Timing of the MiniLM encoder and its building blocks, for profiling work on the
//! forward and backward paths (the comparison with PyTorch is `bench/ml.sh`):
//!
//!     cargo run --release -p tailor-modules --example bench_ops
//!
//! Batch 32 of 128 tokens: inference, and a training step's forward + backward with LoRA on
//! query/value.

#[path = "../tests/text_support/mod.rs"]
mod text_support;

use std::time::Instant;

use candle_core::Tensor;
use tailor_modules::encoder::Encoder;
use tailor_modules::lora::LoraConfig;
use tailor_modules::text::{Pooling, TextEncoder, TextEncoderOptions};
use text_support::minilm;

fn batch() -> Vec<String> {
    // Long enough to be truncated at 128 tokens, so every row has exactly 128.
    let words =
        "the tenant shall pay the rent monthly in advance and keep the premises in good repair ";
    (0..32)
        .map(|i| format!("{i} {}", words.repeat(12)))
        .collect()
}

/// CPU seconds this process has used (user + system), from /proc: less sensitive than wall
/// time to other processes on a shared machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn time<T>(label: &str, runs: usize, mut f: impl FnMut() -> T) -> f64 {
    f(); // warm-up
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..runs {
        f();
    }
    let secs = start.elapsed().as_secs_f64() / runs as f64;
    let cpu = (cpu_seconds() - cpu) / runs as f64;
    println!(
        "{label}: {:.1} ms wall, {:.1} ms CPU per batch; {:.1} sequences/s",
        secs * 1e3,
        cpu * 1e3,
        32.0 / secs
    );
    secs
}

fn minilm_batch_32_by_128_tokens() {
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.1,
        targets: vec!["query".into(), "value".into()],
    };
    let options = TextEncoderOptions {
        pooling: Pooling::Mean,
        max_tokens: 128,
        lora: Some(lora),
        seed: 7,
        ..Default::default()
    };
    let mut encoder = TextEncoder::load(minilm(), &options).unwrap();
    let input = encoder.tokenize(&batch()).unwrap();
    assert_eq!(input.ids.dims(), &[32, 128]);
    let vars = encoder.adapter_vars();

    time("tokenize", 5, || encoder.tokenize(&batch()).unwrap());
    time("eval forward (LoRA unmerged)", 3, || {
        encoder.encode_tokenized(&input, false).unwrap()
    });
    time("train forward", 3, || {
        encoder.encode_tokenized(&input, true).unwrap()
    });
    time("train forward + backward", 3, || {
        let pooled = encoder.encode_tokenized(&input, true).unwrap().pooled;
        let grads = pooled.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<&Tensor> = vars
            .iter()
            .filter_map(|(_, v)| grads.get(v.as_tensor()))
            .collect();
        assert_eq!(g.len(), vars.len());
    });
    encoder.merge_adapters().unwrap();
    time("eval forward (LoRA merged)", 3, || {
        encoder.encode_tokenized(&input, false).unwrap()
    });
}

fn encoder_building_blocks() {
    use candle_core::{DType, Device};
    use tailor_modules::ops;
    let dev = Device::Cpu;
    let rng = tailor_modules::ops::SeededRng::new(1);
    let x = rng.uniform((32, 128, 384), -1.0, 1.0, &dev).unwrap();
    let w = rng.uniform((384, 384), -0.05, 0.05, &dev).unwrap();
    let w_t = w.t().unwrap().contiguous().unwrap();
    let wi = rng.uniform((1536, 384), -0.05, 0.05, &dev).unwrap();
    let h = rng.uniform((32, 128, 1536), -1.0, 1.0, &dev).unwrap();
    let scores = rng.uniform((32, 12, 128, 128), -1.0, 1.0, &dev).unwrap();
    let q = rng.uniform((32, 12, 128, 32), -1.0, 1.0, &dev).unwrap();
    let lnw = Tensor::ones(384, DType::F32, &dev).unwrap();
    let lnb = Tensor::zeros(384, DType::F32, &dev).unwrap();
    let flops = |secs: f64, f: f64| println!("    {:.1} GFLOP/s", f / secs / 1e9);
    let s = time("matmul_t 4096x384 · (384x384)^T", 5, || {
        ops::matmul_t(&x, &w).unwrap()
    });
    flops(s, 2.0 * 4096.0 * 384.0 * 384.0);
    time("matmul with pre-transposed contiguous weight", 5, || {
        x.reshape((4096, 384)).unwrap().matmul(&w_t).unwrap()
    });
    time("broadcast_matmul (candle-nn Linear style)", 5, || {
        x.broadcast_matmul(&w.t().unwrap()).unwrap()
    });
    time("matmul_t 4096x384 · (1536x384)^T", 3, || {
        ops::matmul_t(&x, &wi).unwrap()
    });
    time("q k^T (32x12 batched 128x32x128)", 3, || {
        q.matmul(&q.t().unwrap()).unwrap()
    });
    time("q k^T with contiguous k^T", 3, || {
        q.matmul(&q.t().unwrap().contiguous().unwrap()).unwrap()
    });
    time("gelu_erf 4096x1536", 3, || ops::gelu(&h).unwrap());
    time("layer_norm 4096x384", 5, || {
        ops::layer_norm(&x, &lnw, &lnb, 1e-12).unwrap()
    });
    time("softmax 32x12x128x128", 3, || {
        ops::softmax_last_dim(&scores).unwrap()
    });
    time("fused softmax 32x12x128x128", 3, || {
        candle_nn::ops::softmax_last_dim(&scores).unwrap()
    });
    time("transpose(1,2)+contiguous 32x128x12x32", 5, || {
        x.reshape((32, 128, 12, 32))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    });
}

fn backward_building_blocks() {
    use candle_core::{DType, Device, Var};
    use tailor_modules::ops;
    let dev = Device::Cpu;
    let rng = tailor_modules::ops::SeededRng::new(1);
    let x = Var::from_tensor(&rng.uniform((32, 128, 384), -1.0, 1.0, &dev).unwrap()).unwrap();
    let h = Var::from_tensor(&rng.uniform((32, 128, 1536), -1.0, 1.0, &dev).unwrap()).unwrap();
    let scores =
        Var::from_tensor(&rng.uniform((32, 12, 128, 128), -1.0, 1.0, &dev).unwrap()).unwrap();
    let wi = rng.uniform((1536, 384), -0.05, 0.05, &dev).unwrap();
    let lnw = Tensor::ones(384, DType::F32, &dev).unwrap();
    let lnb = Tensor::zeros(384, DType::F32, &dev).unwrap();
    time("layer_norm f+b", 3, || {
        ops::layer_norm(&x, &lnw, &lnb, 1e-12)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    });
    time("softmax f+b", 3, || {
        ops::softmax_last_dim(&scores)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    });
    time("gelu f+b", 3, || {
        ops::gelu(&h)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    });
    let wi_t = wi.clone();
    time(
        "ffn plain broadcast_matmul f+b (candle computes dW too)",
        3,
        || {
            x.broadcast_matmul(&wi_t.t().unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        },
    );
    let frozen = tailor_modules::ops::Linear::new(wi.clone(), None);
    time("ffn frozen Linear f+b (dx only)", 3, || {
        candle_core::Module::forward(&frozen, &x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    });
    time("ffn matmul f+b", 3, || {
        ops::matmul_t(&x, &wi)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    });
}

fn lora_layer_overhead() {
    use candle_core::{Device, Module};
    use tailor_modules::lora::{LoraConfig, LoraLinear};
    use tailor_modules::ops::{self, Linear};
    let dev = Device::Cpu;
    let rng = tailor_modules::ops::SeededRng::new(1);
    let x = rng.uniform((32, 128, 384), -1.0, 1.0, &dev).unwrap();
    let w = rng.uniform((384, 384), -0.05, 0.05, &dev).unwrap();
    let a = rng.uniform((8, 384), -0.05, 0.05, &dev).unwrap();
    let b = rng.uniform((384, 8), -0.05, 0.05, &dev).unwrap();
    let cfg = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.1,
        targets: vec!["query".into()],
    };
    let lora = LoraLinear::new(Linear::new(w.clone(), None), &cfg, &rng).unwrap();
    time("base", 5, || ops::matmul_t(&x, &w).unwrap());
    time("x A^T", 5, || ops::matmul_t(&x, &a).unwrap());
    let low = ops::matmul_t(&x, &a).unwrap();
    time("low B^T", 5, || ops::matmul_t(&low, &b).unwrap());
    time("lora eval", 5, || lora.forward_t(&x, false).unwrap());
    time("lora train", 5, || lora.forward_t(&x, true).unwrap());
    time("add 4096x384", 5, || (&x + &x).unwrap());
    let _ = lora.forward(&x);
}

fn frozen_vs_adapted_eval_interleaved() {
    let lora = LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.1,
        targets: vec!["query".into(), "value".into()],
    };
    let options = TextEncoderOptions {
        pooling: Pooling::Mean,
        max_tokens: 128,
        lora: Some(lora),
        seed: 7,
        ..Default::default()
    };
    let encoder = TextEncoder::load(minilm(), &options).unwrap();
    let frozen = TextEncoder::load_frozen(minilm(), Pooling::Mean, 128).unwrap();
    let input = encoder.tokenize(&batch()).unwrap();
    for _ in 0..3 {
        time("frozen eval", 1, || {
            frozen.encode_tokenized(&input, false).unwrap()
        });
        time("lora eval", 1, || {
            encoder.encode_tokenized(&input, false).unwrap()
        });
    }
}

fn main() {
    minilm_batch_32_by_128_tokens();
    encoder_building_blocks();
    backward_building_blocks();
    lora_layer_overhead();
    frozen_vs_adapted_eval_interleaved();
}
