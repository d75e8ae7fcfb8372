//! The machine's matmul ceiling as candle's CPU backend reaches it: a 1024×1024 f32 matmul,
//! 3 warm-up repetitions, then the best of 5 rounds of 10 (a ceiling is the best the machine
//! gives, and a shared machine disturbs single rounds), as `torch_reference.py matmul`.
//! Threads follow `RAYON_NUM_THREADS`. Prints one JSON line. Run through `bench/ml.sh`.

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    for _ in 0..3 {
        a.matmul(&b)?;
    }
    let reps = 10;
    let mut seconds = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..reps {
            a.matmul(&b)?;
        }
        seconds = seconds.min(start.elapsed().as_secs_f64());
    }
    let flops = 2.0 * (n as f64).powi(3) * reps as f64;
    println!(
        "{}",
        serde_json::json!({
            "what": "matmul",
            "impl": "candle",
            "gflops": flops / seconds / 1e9,
            "threads": candle_core::utils::get_num_threads(),
        })
    );
    Ok(())
}
