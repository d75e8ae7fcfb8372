//! How long a job will take and how much memory it needs, from the dataset's size and the
//! compiled blueprint — shown before the job starts, so nobody waits an hour by surprise.
//!
//! A job is what [`crate::evaluate::train_and_evaluate`] runs: rows are split into held-out
//! rows (the report), validation rows (early stopping) and training rows; the **baseline**
//! (frozen encoder, heads only) trains first, then the **tuned** run (LoRA adapters); each
//! epoch of both ends with a pass over the validation rows, and both are scored on the
//! held-out rows at the end. Early stopping can end a run sooner: the estimate is for every
//! epoch the blueprint allows, so it is an upper bound of the usual case.
//!
//! The cost model counts the floating-point work of the encoder (the heads are negligible):
//! a forward pass over one token of a BERT layer costs `2·(4h² + 2hi)` for its linear layers
//! plus `4·t·h` for attention (`h` hidden width, `i` intermediate width, `t` tokens of the
//! row). A baseline step costs one forward pass (the frozen encoder keeps no graph worth
//! differentiating), a tuned step a forward and a backward pass ([`TUNED_STEP_FACTOR`]
//! forward passes), evaluation one forward pass. Rows are padded to the longest row of their
//! batch, so a batch costs its longest row times its size; texts are cut at `max_tokens`.
//!
//! # Calibration
//!
//! The constants were measured on this project's 2-core development machine, in the dev
//! profile that `scripts/run` uses (`tailor-modules` and every dependency are built with
//! `opt-level = 3` there), on 2026-11-29 while other engineers were compiling on the same
//! machine (load 4–6; each run got 63% of the CPU) — the honest case for a shared worker:
//!
//! ```text
//! cargo build -p tailor-modules --example drugreview
//! DRUG_PER_CLASS=16 DRUG_EPOCHS=2 DRUG_MAX_TOKENS=64 DRUG_TEST_ROWS=60 \
//!   /usr/bin/time -v target/debug/examples/drugreview
//! DRUG_PER_CLASS=32 DRUG_EPOCHS=1 DRUG_MAX_TOKENS=128 DRUG_TEST_ROWS=40 \
//!   /usr/bin/time -v target/debug/examples/drugreview
//! ```
//!
//! MiniLM-L6, LoRA rank 8 on `query`/`value`, batch 16, drug reviews (all longer than the
//! token limit, so every row costs `max_tokens`):
//!
//! | run | rows train / val / test | baseline epoch | tuned epoch | wall | peak RSS |
//! | --- | --- | ---: | ---: | ---: | ---: |
//! | 64 tokens, 2 epochs | 38 / 10 / 60 | 4 s (7 s with loading) | 11 s | 44 s | 778 MiB |
//! | 128 tokens, 1 epoch | 77 / 19 / 40 | 21 s with loading | 45 s | 81 s | 1555 MiB |
//!
//! A baseline epoch (forward passes only) gives 14–17 GFLOP/s: [`FORWARD_GFLOPS`] = 15. The
//! tuned epochs then give a training step of 2.6–3.2 forward passes:
//! [`TUNED_STEP_FACTOR`] = 3. With these the model predicts 47 s and 86 s for the two runs.
//! The two peaks fit `PROCESS_BYTES + 2 × weights + ACTIVATION_FACTOR × activations` with
//! [`ACTIVATION_FACTOR`] = 2.5 and [`PROCESS_BYTES`] = 100 MiB. On an idle machine a job is
//! faster (about 1.6× here); a bigger or different CPU needs a new measurement.

use serde::{Deserialize, Serialize};

use crate::blueprint::CompiledBlueprint;
use crate::catalog::Modality;

/// Effective throughput of the encoder's forward pass on this machine, in GFLOP/s
/// (measured, see the module documentation).
pub const FORWARD_GFLOPS: f64 = 15.0;

/// A tuned training step (forward, backward through the frozen weights to the adapters,
/// optimizer) costs this many forward passes (measured; 3 in theory for full training,
/// a little less measured: the frozen weights get no gradients).
pub const TUNED_STEP_FACTOR: f64 = 3.0;

/// Saved activations per token and layer are `(8h + 2i + 3·heads·t)` floats in theory;
/// this factor covers the unfused ops' intermediates and allocator slack (measured).
pub const ACTIVATION_FACTOR: f64 = 2.5;

/// The process itself: tokenizer, runtime, data, allocator (measured).
pub const PROCESS_BYTES: u64 = 100 * 1024 * 1024;

/// Loading the encoder weights and the tokenizer, per run (seconds; about 3 s were seen
/// for the first baseline epoch, warm file cache).
pub const LOAD_SECONDS: f64 = 2.0;

/// English WordPiece averages about four characters a token.
const CHARS_PER_TOKEN: f64 = 4.0;

/// The shape of an encoder, what the cost model needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EncoderShape {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    /// All parameters, embeddings included (they are all in memory).
    pub parameters: u64,
}

impl EncoderShape {
    /// all-MiniLM-L6-v2: 6 layers, 384 wide, 1536 intermediate, 12 heads, 22.7 M parameters.
    pub const MINILM_L6: EncoderShape = EncoderShape {
        layers: 6,
        hidden: 384,
        intermediate: 1536,
        heads: 12,
        parameters: 22_713_216,
    };

    /// BERT-base: 12 layers, 768 wide, 3072 intermediate, 12 heads, 110 M parameters.
    pub const BERT_BASE: EncoderShape = EncoderShape {
        layers: 12,
        hidden: 768,
        intermediate: 3072,
        heads: 12,
        parameters: 109_482_240,
    };

    /// The shape of a catalog encoder; a folder checkpoint (`text/bert`) is assumed to be
    /// BERT-base, the common case.
    pub fn of(module: &str) -> EncoderShape {
        match module {
            "text/minilm-l6" => Self::MINILM_L6,
            _ => Self::BERT_BASE,
        }
    }

    /// Floating-point operations of one forward pass over one token of a `tokens`-long row.
    pub fn forward_flops_per_token(&self, tokens: usize) -> f64 {
        let h = self.hidden as f64;
        let i = self.intermediate as f64;
        let linear = 2.0 * (4.0 * h * h + 2.0 * h * i);
        let attention = 4.0 * tokens as f64 * h;
        self.layers as f64 * (linear + attention)
    }

    /// Trainable LoRA parameters for `rank` on `targets` (PEFT's names and aliases).
    pub fn lora_parameters(&self, rank: usize, targets: &[String]) -> u64 {
        let (h, i) = (self.hidden as u64, self.intermediate as u64);
        // (input width, output width) of each linear layer of a BERT layer.
        let layers: [(&str, u64, u64); 6] = [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", h, i),
            ("output.dense", i, h),
        ];
        let per_layer: u64 = layers
            .iter()
            .filter(|(path, _, _)| {
                targets.iter().any(|t| {
                    let t = if t == "intermediate" {
                        "intermediate.dense"
                    } else {
                        t.as_str()
                    };
                    *path == t || path.ends_with(&format!(".{t}"))
                })
            })
            .map(|(_, input, output)| rank as u64 * (input + output))
            .sum();
        per_layer * self.layers as u64
    }
}

/// A rough cost of one row through an encoder that is not a BERT-like text encoder: the
/// numbers are orders of magnitude from each architecture's published size (FLOPs of one
/// forward pass at the module's default input size), not measured on this machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoughCost {
    pub forward_flops: f64,
    pub parameters: u64,
    /// Activations a training step keeps for one row, in bytes.
    pub activation_bytes: f64,
}

/// The rough cost of one row of a non-text input, by modality (`frames`: frames a clip is
/// sampled to, `None`: the module's default of 8). `None` for text (modelled exactly).
pub fn rough_cost(modality: Modality, frames: Option<usize>) -> Option<RoughCost> {
    // EfficientNet-Lite0 at 224×224: 0.39 G multiply-adds, 4.7 M parameters.
    let image = RoughCost {
        forward_flops: 0.8e9,
        parameters: 4_700_000,
        activation_bytes: 40.0e6,
    };
    match modality {
        Modality::Text => None,
        Modality::Image => Some(image),
        Modality::Video => {
            let n = frames.unwrap_or(8).max(1) as f64;
            Some(RoughCost {
                forward_flops: image.forward_flops * n,
                parameters: image.parameters + 600_000,
                activation_bytes: image.activation_bytes * n,
            })
        }
        // GE2E: 3 LSTM layers of 256 over 40 mel bands, ~2.7 MFLOP a 10 ms frame; a clip
        // of ~10 s is 1000 frames.
        Modality::Audio => Some(RoughCost {
            forward_flops: 2.7e9,
            parameters: 1_420_000,
            activation_bytes: 30.0e6,
        }),
        // A small temporal convolution network over a few thousand steps.
        Modality::Sensor => Some(RoughCost {
            forward_flops: 0.05e9,
            parameters: 200_000,
            activation_bytes: 4.0e6,
        }),
        // PointNet over 1024 points: ~0.3 GFLOP.
        Modality::PointCloud => Some(RoughCost {
            forward_flops: 0.3e9,
            parameters: 800_000,
            activation_bytes: 10.0e6,
        }),
        // A small MLP over the row's cells.
        Modality::Tabular => Some(RoughCost {
            forward_flops: 0.2e6,
            parameters: 50_000,
            activation_bytes: 0.1e6,
        }),
    }
}

/// What the estimate needs to know of the dataset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataShape {
    /// Rows the job will train and evaluate on.
    pub rows: usize,
    /// Mean length in characters of each text input column, by column name, when known.
    #[serde(default)]
    pub mean_chars: Vec<(String, f64)>,
    /// Longest text in characters of each text input column, when known.
    #[serde(default)]
    pub max_chars: Vec<(String, f64)>,
    /// Rows of a separate test split (the report is scored on them instead of a share of
    /// `rows`).
    #[serde(default)]
    pub test_rows: Option<usize>,
}

/// Time and memory of one job, with the numbers it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub rows: usize,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Held-out rows the report is scored on.
    pub test_rows: usize,
    /// Tokens a row costs (all text inputs), after cutting at `max_tokens` and padding.
    pub tokens_per_row: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub steps_per_epoch: usize,
    /// Optimizer steps of the tuned run (the baseline takes as many).
    pub steps: usize,
    pub baseline_seconds: f64,
    pub tuned_seconds: f64,
    /// Validation after every epoch and the final scoring of both models.
    pub evaluation_seconds: f64,
    pub load_seconds: f64,
    pub total_seconds: f64,
    pub peak_memory_bytes: u64,
    pub encoder_parameters: u64,
    pub trainable_parameters: u64,
    /// False when the blueprint trains the heads only: there is no separate baseline run.
    pub adapted: bool,
    /// Inputs whose cost is a rough figure from the architecture's size ([`rough_cost`]),
    /// not calibrated on this machine: the estimate is only an order of magnitude then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rough_inputs: Vec<String>,
}

/// `(train, validation, test)` rows the way `train_and_evaluate` splits them: the test
/// share first (unless the dataset has a test split), validation from the rest; each keeps
/// at least one row when there are two or more.
pub fn split_rows(
    rows: usize,
    validation_split: f64,
    test_rows: Option<usize>,
) -> (usize, usize, usize) {
    let carve = |n: usize| -> usize {
        if n < 2 {
            return 0;
        }
        ((n as f64 * validation_split).round() as usize).clamp(1, n - 1)
    };
    let (pool, test) = match test_rows {
        Some(t) => (rows, t),
        None => {
            let t = carve(rows);
            (rows - t, t)
        }
    };
    let validation = carve(pool);
    (pool - validation, validation, test)
}

/// Estimates the time and memory of training `bp` on data of `data`'s shape.
pub fn estimate(bp: &CompiledBlueprint, data: &DataShape) -> Estimate {
    let settings = &bp.training;
    let (train_rows, validation_rows, test_rows) =
        split_rows(data.rows, settings.validation_split, data.test_rows);
    let epochs = settings.epochs_for(train_rows);
    let batch = settings.batch_size.max(1);
    let steps_per_epoch = train_rows.div_ceil(batch);

    // Forward FLOPs of one row, over all inputs; each input its own encoder.
    let mut row_flops = 0.0;
    let mut tokens_per_row = 0;
    let mut encoder_parameters = 0;
    let mut trainable = 0;
    let mut activation_bytes_per_row = 0.0;
    let mut rough_inputs = Vec::new();
    for input in &bp.inputs {
        let frames = input.int_param("frames").map(|f| f.max(1) as usize);
        if let Some(cost) = rough_cost(input.modality, frames) {
            rough_inputs.push(input.name.clone());
            encoder_parameters += cost.parameters;
            row_flops += cost.forward_flops;
            activation_bytes_per_row += cost.activation_bytes;
            // LoRA (or a trained stage) on a small share of the weights.
            trainable += cost.parameters / 20;
            continue;
        }
        let shape = EncoderShape::of(&input.module);
        encoder_parameters += shape.parameters;
        let max_tokens = input.int_param("max_tokens").unwrap_or(256).max(1) as usize;
        let tokens = match input.modality {
            Modality::Text => padded_tokens(data, &input.name, max_tokens, batch),
            _ => max_tokens,
        };
        tokens_per_row += tokens;
        row_flops += shape.forward_flops_per_token(tokens) * tokens as f64;
        if let Some(lora) = &bp.adaptation {
            trainable += shape.lora_parameters(lora.rank, &lora.targets);
        }
        let (h, i, heads) = (
            shape.hidden as f64,
            shape.intermediate as f64,
            shape.heads as f64,
        );
        let t = tokens as f64;
        activation_bytes_per_row +=
            t * shape.layers as f64 * (8.0 * h + 2.0 * i + 3.0 * heads * t) * 4.0;
    }
    let width: usize = bp
        .inputs
        .iter()
        .filter_map(|i| i.width)
        .sum::<usize>()
        .max(1);
    // Heads: a generous 2·width·64 per output (the class count is not known here).
    trainable += bp.outputs.len() as u64 * 2 * width as u64 * 64;

    let adapted = bp.adaptation.is_some();
    let seconds = |flops: f64| flops / (FORWARD_GFLOPS * 1e9);
    let epoch_rows = (steps_per_epoch * batch).min(train_rows.max(1)) as f64;
    let tuned_seconds = seconds(row_flops * epoch_rows * epochs as f64 * TUNED_STEP_FACTOR);
    let baseline_seconds = if adapted {
        seconds(row_flops * epoch_rows * epochs as f64)
    } else {
        0.0
    };
    let runs = if adapted { 2.0 } else { 1.0 };
    let evaluation_seconds =
        seconds(row_flops * runs * (validation_rows as f64 * epochs as f64 + test_rows as f64));
    let load_seconds = LOAD_SECONDS * runs;
    let total_seconds = tuned_seconds + baseline_seconds + evaluation_seconds + load_seconds;

    // Weights of both runs' encoders may be alive at once (the baseline's heads seed the
    // tuned run); activations of one training batch; AdamW keeps 4 copies of trainables.
    let weights = 2 * encoder_parameters * 4;
    let activations = activation_bytes_per_row * batch as f64 * ACTIVATION_FACTOR;
    let optimizer = trainable * 4 * 4;
    let peak_memory_bytes = PROCESS_BYTES + weights + activations as u64 + optimizer;

    Estimate {
        rows: data.rows,
        train_rows,
        validation_rows,
        test_rows,
        tokens_per_row,
        epochs,
        batch_size: batch,
        steps_per_epoch,
        steps: steps_per_epoch * epochs,
        baseline_seconds,
        tuned_seconds,
        evaluation_seconds,
        load_seconds,
        total_seconds,
        peak_memory_bytes,
        encoder_parameters,
        trainable_parameters: trainable,
        adapted,
        rough_inputs,
    }
}

/// Tokens a text column's rows cost in a batch of `batch`: the longest row of the batch
/// (padding), cut at `max_tokens`, plus `[CLS]` and `[SEP]`. Without length statistics,
/// every row is taken to fill `max_tokens`.
fn padded_tokens(data: &DataShape, column: &str, max_tokens: usize, batch: usize) -> usize {
    let find = |v: &[(String, f64)]| v.iter().find(|(c, _)| c == column).map(|(_, x)| *x);
    let (Some(mean), max) = (find(&data.mean_chars), find(&data.max_chars)) else {
        return max_tokens;
    };
    // The longest of `batch` rows is well above the mean: half-way to the longest text
    // for a full batch, the mean for a batch of one.
    let longest = max.unwrap_or(mean * 3.0).max(mean);
    let share = if batch > 1 { 0.5 } else { 0.0 };
    let chars = mean + (longest - mean) * share;
    ((chars / CHARS_PER_TOKEN).ceil() as usize + 2).clamp(3, max_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blueprint::{Blueprint, ColumnType, DatasetSchema, compile};
    use crate::catalog::Catalog;

    fn compiled(max_tokens: i64, epochs: i64, method: &str) -> CompiledBlueprint {
        let bp: Blueprint = serde_json::from_value(serde_json::json!({
            "name": "t",
            "inputs": [{ "name": "text", "modality": "text",
                         "encoder": { "module": "text/minilm-l6", "max_tokens": max_tokens } }],
            "outputs": [{ "name": "label", "task": "classification",
                          "decoder": { "module": "head/linear" } }],
            "adaptation": { "method": method },
            "training": { "epochs": epochs, "batch_size": 16 } }))
        .unwrap();
        let schema =
            DatasetSchema::new([("text", ColumnType::Text), ("label", ColumnType::Category)]);
        compile(&bp, &Catalog::builtin(), &schema).unwrap()
    }

    fn rows(n: usize) -> DataShape {
        DataShape {
            rows: n,
            ..Default::default()
        }
    }

    #[test]
    fn splits_like_train_and_evaluate() {
        assert_eq!(split_rows(100, 0.2, None), (64, 16, 20));
        assert_eq!(split_rows(100, 0.2, Some(30)), (80, 20, 30));
        // Tiny sets keep one row in each part.
        assert_eq!(split_rows(3, 0.2, None), (1, 1, 1));
        assert_eq!(split_rows(1, 0.2, None), (1, 0, 0));
    }

    #[test]
    fn grows_with_rows_epochs_and_tokens() {
        let small = estimate(&compiled(64, 2, "lora"), &rows(100));
        let more_rows = estimate(&compiled(64, 2, "lora"), &rows(1000));
        let more_epochs = estimate(&compiled(64, 4, "lora"), &rows(100));
        let longer = estimate(&compiled(256, 2, "lora"), &rows(100));
        assert!(more_rows.total_seconds > small.total_seconds * 5.0);
        assert!(more_epochs.total_seconds > small.total_seconds * 1.5);
        assert!(longer.total_seconds > small.total_seconds * 3.0);
        assert!(longer.peak_memory_bytes > small.peak_memory_bytes);
        assert_eq!(small.epochs, 2);
        assert_eq!(small.steps, small.steps_per_epoch * 2);
        assert_eq!(small.steps_per_epoch, 64usize.div_ceil(16));
    }

    #[test]
    fn the_baseline_run_and_evaluation_are_counted() {
        let e = estimate(&compiled(64, 3, "lora"), &rows(200));
        assert!(e.adapted);
        assert!(e.baseline_seconds > 0.0 && e.evaluation_seconds > 0.0);
        // A baseline step is a forward pass; a tuned step several.
        let ratio = e.tuned_seconds / e.baseline_seconds;
        assert!((ratio - TUNED_STEP_FACTOR).abs() < 1e-9, "{ratio}");
        let sum = e.tuned_seconds + e.baseline_seconds + e.evaluation_seconds + e.load_seconds;
        assert!((e.total_seconds - sum).abs() < 1e-9);

        let heads_only = estimate(&compiled(64, 3, "none"), &rows(200));
        assert!(!heads_only.adapted);
        assert_eq!(heads_only.baseline_seconds, 0.0);
        assert!(heads_only.total_seconds < e.total_seconds);
    }

    #[test]
    fn short_texts_cost_fewer_tokens_than_max_tokens() {
        let bp = compiled(256, 2, "lora");
        let short = DataShape {
            rows: 100,
            mean_chars: vec![("text".into(), 40.0)],
            max_chars: vec![("text".into(), 120.0)],
            test_rows: None,
        };
        let e = estimate(&bp, &short);
        // Half-way from 40 to 120 characters: 80 / 4 + 2.
        assert_eq!(e.tokens_per_row, 22);
        assert!(e.total_seconds < estimate(&bp, &rows(100)).total_seconds);
    }

    #[test]
    fn the_calibration_runs_are_reproduced() {
        // (max_tokens, epochs, rows, test rows, measured wall seconds, measured peak MiB)
        for (tokens, epochs, n, test, wall, peak) in
            [(64, 2, 48, 60, 44.0, 778.0), (128, 1, 96, 40, 81.0, 1555.0)]
        {
            let data = DataShape {
                rows: n,
                test_rows: Some(test),
                ..Default::default()
            };
            let e = estimate(&compiled(tokens, epochs, "lora"), &data);
            let mib = e.peak_memory_bytes as f64 / (1024.0 * 1024.0);
            assert!(
                (e.total_seconds / wall - 1.0).abs() < 0.15,
                "{tokens} tokens: {} s against {wall} s",
                e.total_seconds
            );
            assert!(
                (mib / peak - 1.0).abs() < 0.15,
                "{tokens} tokens: {mib} MiB against {peak} MiB"
            );
        }
    }

    #[test]
    fn lora_parameters_follow_rank_and_targets() {
        let m = EncoderShape::MINILM_L6;
        let qv = ["query".to_string(), "value".to_string()];
        // 6 layers × 2 linear layers × 8 × (384 + 384).
        assert_eq!(m.lora_parameters(8, &qv), 6 * 2 * 8 * 768);
        assert_eq!(m.lora_parameters(16, &qv), 2 * m.lora_parameters(8, &qv));
        let dense = ["dense".to_string()];
        assert_eq!(
            m.lora_parameters(8, &dense),
            6 * 8 * (768 + (384 + 1536) * 2)
        );
    }

    #[test]
    fn memory_holds_the_weights_and_a_batch_of_activations() {
        let e = estimate(&compiled(128, 2, "lora"), &rows(100));
        assert!(e.peak_memory_bytes > PROCESS_BYTES + 2 * EncoderShape::MINILM_L6.parameters * 4);
        assert!(e.peak_memory_bytes < 8 * 1024 * 1024 * 1024);
    }
}
