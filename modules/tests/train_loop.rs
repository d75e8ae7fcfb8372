//! The training loop and evaluation on a tiny, seeded toy encoder (an embedding bag over
//! bytes with a LoRA-like adapter), so these tests need no checkpoint and run in seconds.

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tailor_modules::blueprint::{
    Blueprint, ClassWeighting, ColumnType, CompiledBlueprint, CompiledInput, DatasetSchema,
    LoraSettings, compile,
};
use tailor_modules::catalog::Catalog;
use tailor_modules::encoder::{Encoded, Encoder, Prepared, RawColumn, Tokenized};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, HeldOut, train_and_evaluate};
use tailor_modules::heads::Target;
use tailor_modules::metrics::Metrics;
use tailor_modules::train::{
    Event, Examples, InputValue, Model, Row, StopReason, TrainOptions, TrainOutcome, TrainState,
    clip_grad_norm, global_norm, train,
};

const WIDTH: usize = 16;
const RANK: usize = 4;

/// Mean of fixed random byte embeddings, plus a LoRA-like trainable `A[ids]·B` (B starts at
/// zero, so the adapter starts as a no-op, as LoRA does).
struct ToyEncoder {
    table: Tensor,
    lora: Option<(Var, Var)>,
    /// Dropout on the adapter's output in training, re-seeded by the loop every step.
    rng: Mutex<ChaCha8Rng>,
    split_punct: bool,
}

impl ToyEncoder {
    fn new(lora: Option<&LoraSettings>, seed: u64) -> Result<Self> {
        // The frozen "pretrained" table does not depend on the run's seed.
        let mut rng = ChaCha8Rng::seed_from_u64(1234);
        let table: Vec<f32> = (0..256 * WIDTH)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let table = Tensor::from_vec(table, (256, WIDTH), &Device::Cpu)?;
        let lora = match lora {
            None => None,
            Some(_) => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let a: Vec<f32> = (0..256 * RANK)
                    .map(|_| rng.random_range(-0.5..0.5))
                    .collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (256, RANK), &Device::Cpu)?)?;
                let b = Var::zeros((RANK, WIDTH), DType::F32, &Device::Cpu)?;
                Some((a, b))
            }
        };
        Ok(Self {
            table,
            lora,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            split_punct: false,
        })
    }
}

impl Encoder for ToyEncoder {
    fn width(&self) -> usize {
        WIDTH
    }

    fn prepare(&self, raw: &RawColumn) -> Result<Prepared> {
        let RawColumn::Text(texts) = raw else {
            panic!("the toy encoder reads text");
        };
        let len = texts
            .iter()
            .map(|t| t.len().min(64))
            .max()
            .unwrap_or(1)
            .max(1);
        let (mut ids, mut mask, mut word_ids) = (vec![], vec![], vec![]);
        for t in texts {
            let bytes = &t.as_bytes()[..t.len().min(64)];
            // Words as BERT's pre-tokenizer makes them when `split_punct`: each
            // punctuation mark is a word of its own.
            let mut words = vec![];
            let (mut next, mut cur) = (0usize, None);
            for &b in bytes {
                if b == b' ' {
                    cur = None;
                    words.push(None);
                } else if self.split_punct && b.is_ascii_punctuation() {
                    words.push(Some(next));
                    next += 1;
                    cur = None;
                } else {
                    if cur.is_none() {
                        cur = Some(next);
                        next += 1;
                    }
                    words.push(cur);
                }
            }
            for i in 0..len {
                ids.push(bytes.get(i).map_or(0u32, |&b| b as u32));
                mask.push(if i < bytes.len() { 1f32 } else { 0.0 });
            }
            words.resize(len, None);
            word_ids.push(words);
        }
        let b = texts.len();
        Ok(Prepared::Text(Tokenized {
            ids: Tensor::from_vec(ids, (b, len), &Device::Cpu)?,
            type_ids: Tensor::zeros((b, len), DType::U32, &Device::Cpu)?,
            mask: Tensor::from_vec(mask, (b, len), &Device::Cpu)?,
            word_ids,
        }))
    }

    fn forward(&self, input: &Prepared, train: bool) -> Result<Encoded> {
        let Prepared::Text(t) = input else {
            panic!("the toy encoder runs on text");
        };
        let (b, s) = t.ids.dims2()?;
        let flat = t.ids.flatten_all()?;
        let mut tokens = self.table.index_select(&flat, 0)?;
        if let Some((a, bb)) = &self.lora {
            let mut picked = a.as_tensor().index_select(&flat, 0)?;
            if train {
                let mut rng = self.rng.lock().unwrap();
                let mask: Vec<f32> = (0..picked.elem_count())
                    .map(|_| if rng.random_bool(0.9) { 1.0 / 0.9 } else { 0.0 })
                    .collect();
                let mask = Tensor::from_vec(mask, picked.shape(), &Device::Cpu)?;
                picked = (picked * mask)?;
            }
            tokens = (tokens + picked.matmul(bb.as_tensor())?)?;
        }
        let tokens = tokens.reshape((b, s, WIDTH))?;
        let m = t.mask.unsqueeze(2)?;
        let pooled = tokens
            .broadcast_mul(&m)?
            .sum(1)?
            .broadcast_div(&m.sum(1)?)?;
        Ok(Encoded {
            tokens,
            mask: t.mask.clone(),
            pooled,
            present: None,
        })
    }

    fn reseed(&self, seed: u64) {
        *self.rng.lock().unwrap() = ChaCha8Rng::seed_from_u64(seed);
    }

    fn adapter_vars(&self) -> Vec<(String, Var)> {
        match &self.lora {
            None => vec![],
            Some((a, b)) => vec![
                ("toy.lora_A.weight".into(), a.clone()),
                ("toy.lora_B.weight".into(), b.clone()),
            ],
        }
    }
}

fn toy_factory(
    _: &CompiledInput,
    lora: Option<&LoraSettings>,
    seed: u64,
) -> anyhow::Result<Box<dyn Encoder>> {
    Ok(Box::new(ToyEncoder::new(lora, seed)?))
}

fn toy_punct_factory(
    _: &CompiledInput,
    lora: Option<&LoraSettings>,
    seed: u64,
) -> anyhow::Result<Box<dyn Encoder>> {
    let mut enc = ToyEncoder::new(lora, seed)?;
    enc.split_punct = true;
    Ok(Box::new(enc))
}

/// Rows whose class is the keyword among random filler words.
fn keyword_data(n: usize, seed: u64, imbalance: bool) -> Examples {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keywords = ["good", "bad", "meh"];
    let rows = (0..n)
        .map(|i| {
            let class = if imbalance {
                usize::from(i % 5 == 0)
            } else {
                i % 3
            };
            let mut words: Vec<String> = (0..3)
                .map(|_| {
                    (0..rng.random_range(3..6))
                        .map(|_| rng.random_range(b'p'..=b'z') as char)
                        .collect()
                })
                .collect();
            words.insert(rng.random_range(0..=3), keywords[class].to_string());
            Row {
                inputs: vec![InputValue::Text(words.join(" "))],
                targets: vec![Target::Class(class)],
            }
        })
        .collect();
    Examples {
        labels: vec![keywords.iter().map(|s| s.to_string()).collect()],
        rows,
    }
}

fn blueprint(extra: serde_json::Value) -> CompiledBlueprint {
    let mut bp = serde_json::json!({ "name": "toy",
        "inputs": [{ "name": "text", "modality": "text", "encoder": { "module": "text/bert", "folder": "toy" } }],
        "outputs": [{ "name": "label", "task": "classification", "decoder": { "module": "head/linear", "dropout": 0.0 } }],
        "adaptation": { "rank": 4, "alpha": 8 },
        "training": { "epochs": 6, "batch_size": 8, "learning_rate": 0.05, "head_learning_rate": 0.05, "seed": 7,
                      "early_stopping": { "metric": "accuracy", "patience": 0 } } });
    if let serde_json::Value::Object(extra) = extra {
        for (section, fields) in extra {
            match fields {
                serde_json::Value::Object(fields) => {
                    for (k, v) in fields {
                        bp[&section][k] = v;
                    }
                }
                v => bp[&section] = v,
            }
        }
    }
    let bp: Blueprint = serde_json::from_value(bp).unwrap();
    let schema = DatasetSchema::new([("text", ColumnType::Text), ("label", ColumnType::Category)]);
    compile(&bp, &Catalog::builtin(), &schema).unwrap()
}

/// Runs `train` and returns the outcome with every step's loss.
fn run(bp: &CompiledBlueprint, data: &Examples, options: TrainOptions) -> (TrainOutcome, Vec<f64>) {
    let mut losses = vec![];
    let outcome = train(bp, data, None, &toy_factory, options, &mut |e| {
        if let Event::Step(s) = e {
            losses.push(s.loss);
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    (outcome, losses)
}

fn params(model: &Model) -> Vec<(String, Vec<f32>)> {
    model
        .trainable()
        .into_iter()
        .map(|(n, v, _)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

fn accuracy(m: &Metrics) -> f64 {
    m.get("accuracy").unwrap()
}

#[test]
fn the_loss_falls_on_a_learnable_task() {
    let data = keyword_data(120, 1, false);
    let bp = blueprint(serde_json::json!({}));
    let (outcome, _) = run(&bp, &data, TrainOptions::default());
    let h = &outcome.history;
    assert_eq!(outcome.stop, StopReason::Completed);
    assert!(
        h.last().unwrap().train_loss < 0.5 * h[0].train_loss,
        "{h:#?}"
    );
    let test = keyword_data(60, 99, false);
    let scores = outcome.model.score(&test, 16).unwrap();
    assert!(accuracy(&scores[0]) > 0.9, "{scores:#?}");
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    let data = keyword_data(24, 1, false);
    let bp = blueprint(serde_json::json!({}));
    let model = Model::build(&bp, &data, &toy_factory, true).unwrap();
    let trainable = model.trainable();
    assert_eq!(trainable.len(), 4, "A, B, head weight and bias");
    let rows: Vec<&Row> = data.rows.iter().collect();
    let grads = model.loss(&rows, None).unwrap().backward().unwrap();
    for (name, var, _) in &trainable {
        // LoRA's A has a zero gradient while B is still zero (by design); B has one.
        if name.contains("lora_A") {
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn the_same_seed_gives_the_same_curve_and_another_seed_another() {
    let data = keyword_data(40, 1, false);
    let bp = blueprint(serde_json::json!({ "training": { "epochs": 2 } }));
    let (_, a) = run(&bp, &data, TrainOptions::default());
    let (_, b) = run(&bp, &data, TrainOptions::default());
    assert_eq!(a, b);
    let other = blueprint(serde_json::json!({ "training": { "epochs": 2, "seed": 8 } }));
    let (_, c) = run(&other, &data, TrainOptions::default());
    assert_ne!(a, c);
}

#[test]
fn early_stopping_keeps_the_best_epoch() {
    // Validation rows with the keywords' classes rotated: the better the model learns the
    // training rows, the worse it does on these, so the best epoch is an early one.
    let data = keyword_data(90, 1, false);
    let mut val = keyword_data(30, 2, false);
    for r in &mut val.rows {
        if let Target::Class(c) = &mut r.targets[0] {
            *c = (*c + 1) % 3;
        }
    }
    let bp = blueprint(serde_json::json!({ "training": { "epochs": 30,
        "early_stopping": { "metric": "loss", "patience": 2 } } }));
    let outcome = train(
        &bp,
        &data,
        Some(&val),
        &toy_factory,
        TrainOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(outcome.stop, StopReason::EarlyStopped);
    let best = outcome.best_epoch.unwrap();
    assert_eq!(
        outcome.history.len(),
        (best + 1 + 2).max(10),
        "stops after patience epochs without improvement, not before a third of the 30"
    );
    let best_loss = outcome.history[best].validation_loss;
    assert!(
        outcome
            .history
            .iter()
            .all(|h| h.validation_loss >= best_loss)
    );
    // The returned model has the best epoch's weights, not the last one's.
    let now = outcome.model.mean_loss(&val, 8).unwrap();
    assert!((now - best_loss).abs() < 1e-5, "{now} vs best {best_loss}");
    assert!(outcome.history.last().unwrap().validation_loss > best_loss);
}

#[test]
fn the_callback_cancels_within_one_step() {
    let data = keyword_data(60, 1, false);
    let bp = blueprint(serde_json::json!({}));
    let mut seen = 0;
    let outcome = train(
        &bp,
        &data,
        None,
        &toy_factory,
        TrainOptions::default(),
        &mut |e| {
            if let Event::Step(s) = e {
                seen = s.step;
                if s.step == 3 {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Cancelled);
    assert_eq!((outcome.steps, seen), (3, 3));

    let flag = AtomicBool::new(false);
    let options = TrainOptions {
        cancel: Some(&flag),
        ..Default::default()
    };
    let outcome = train(&bp, &data, None, &toy_factory, options, &mut |e| {
        if let Event::Step(s) = e
            && s.step == 5
        {
            flag.store(true, Ordering::SeqCst);
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Cancelled);
    assert_eq!(outcome.steps, 5);
}

#[test]
fn resuming_a_checkpoint_equals_the_uninterrupted_run() {
    let data = keyword_data(50, 1, false);
    let bp = blueprint(serde_json::json!({ "training": { "epochs": 4, "batch_size": 8 } }));
    let (full, full_losses) = run(&bp, &data, TrainOptions::default());

    // Stop mid-epoch (40 training rows → 5 steps per epoch), through bytes, and resume.
    for stop_at in [7usize, 10] {
        let mut first = vec![];
        let cut = train(
            &bp,
            &data,
            None,
            &toy_factory,
            TrainOptions::default(),
            &mut |e| {
                if let Event::Step(s) = e {
                    first.push(s.loss);
                    if s.step == stop_at {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(cut.stop, StopReason::Cancelled);
        let state = TrainState::from_bytes(&cut.state.to_bytes().unwrap()).unwrap();
        let (resumed, rest) = run(
            &bp,
            &data,
            TrainOptions {
                resume: Some(state),
                ..Default::default()
            },
        );
        first.extend(rest);
        assert_eq!(first, full_losses, "stopped at {stop_at}");
        assert_eq!(params(&resumed.model), params(&full.model));
        assert_eq!(resumed.history, full.history);
        assert_eq!(resumed.best_epoch, full.best_epoch);
    }
}

#[test]
fn checkpoints_are_emitted_every_epoch_and_every_n_steps() {
    let data = keyword_data(50, 1, false);
    let bp = blueprint(serde_json::json!({ "training": { "epochs": 2 } }));
    let mut at = vec![];
    train(
        &bp,
        &data,
        None,
        &toy_factory,
        TrainOptions {
            checkpoint_every: Some(2),
            ..Default::default()
        },
        &mut |e| {
            if let Event::Checkpoint(s) = e {
                at.push((s.step, s.epoch, s.batch_in_epoch));
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(
        at,
        vec![
            (2, 0, 2),
            (4, 0, 4),
            (5, 1, 0),
            (6, 1, 1),
            (8, 1, 3),
            (10, 2, 0)
        ]
    );
}

#[test]
fn class_weights_change_the_loss() {
    let data = keyword_data(40, 1, true);
    let rows: Vec<&Row> = data.rows.iter().collect();
    let loss = |w: &str| {
        let bp = blueprint(serde_json::json!({ "training": { "class_weights": w } }));
        assert_eq!(
            bp.training.class_weights,
            if w == "none" {
                ClassWeighting::None
            } else {
                ClassWeighting::Balanced
            }
        );
        let model = Model::build(&bp, &data, &toy_factory, true).unwrap();
        model.loss(&rows, None).unwrap().to_scalar::<f32>().unwrap()
    };
    assert_ne!(loss("none"), loss("balanced"));
}

#[test]
fn clipping_bounds_the_global_norm() {
    let data = keyword_data(24, 1, false);
    let bp = blueprint(serde_json::json!({}));
    let model = Model::build(&bp, &data, &toy_factory, true).unwrap();
    let vars: Vec<Var> = model.trainable().into_iter().map(|(_, v, _)| v).collect();
    let rows: Vec<&Row> = data.rows.iter().collect();
    let mut grads = model
        .loss(&rows, None)
        .unwrap()
        .affine(1000.0, 0.0)
        .unwrap()
        .backward()
        .unwrap();
    let before = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
    assert!(before > 1.0);
    let after = global_norm(&grads, &vars).unwrap();
    assert!((after - 1.0).abs() < 1e-3, "{after}");
    // Below the bound nothing changes.
    let mut small = model
        .loss(&rows, None)
        .unwrap()
        .affine(1e-6, 0.0)
        .unwrap()
        .backward()
        .unwrap();
    let n = clip_grad_norm(&mut small, &vars, 1.0).unwrap();
    assert!((global_norm(&small, &vars).unwrap() - n).abs() < 1e-9);
}

#[test]
fn evaluation_compares_the_tuned_model_with_the_frozen_baseline() {
    let data = keyword_data(100, 1, false);
    let bp = blueprint(serde_json::json!({ "training": { "epochs": 4 } }));
    let mut phases = std::collections::BTreeSet::new();
    let result = train_and_evaluate(
        &bp,
        &data,
        None,
        &toy_factory,
        EvaluateOptions::default(),
        &mut |e| {
            if let Event::Epoch(p) = e {
                phases.insert(format!("{:?}", p.phase));
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let Evaluation::Done { model, report } = result else {
        panic!("not cancelled")
    };
    assert_eq!(phases.len(), 2, "tuned and baseline runs: {phases:?}");
    assert_eq!(report.held_out, HeldOut::Carved { fraction: 0.2 });
    assert_eq!(report.test_rows, 20);
    assert!(report.adapted);
    assert_eq!(report.outputs[0].headline, "macro_f1");
    assert!(report.outputs[0].gain.is_finite());
    assert!(
        model
            .trainable()
            .iter()
            .any(|(n, _, _)| n.contains("lora_B"))
    );
    assert_eq!(
        report.tuned_run.train_rows + report.tuned_run.validation_rows + report.test_rows,
        100
    );
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"baseline\""));

    // With a given test split, that split is what gets scored.
    let test = keyword_data(30, 5, false);
    let result = train_and_evaluate(
        &bp,
        &data,
        Some(&test),
        &toy_factory,
        EvaluateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let Evaluation::Done { report, .. } = result else {
        panic!("not cancelled")
    };
    assert_eq!((report.held_out, report.test_rows), (HeldOut::Given, 30));
}

#[test]
fn zero_epochs_takes_no_step_and_still_reports() {
    let data = keyword_data(40, 1, false);
    let bp = blueprint(serde_json::json!({ "training": { "epochs": 0 } }));
    let untrained = Model::build(&bp, &data, &toy_factory, true).unwrap();
    let mut events = 0;
    let outcome = train(
        &bp,
        &data,
        None,
        &toy_factory,
        TrainOptions::default(),
        &mut |_| {
            events += 1;
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(events, 0, "no step, no epoch, no checkpoint");
    assert_eq!(outcome.stop, StopReason::Completed);
    assert_eq!((outcome.steps, outcome.best_epoch), (0, None));
    assert!(outcome.history.is_empty());
    assert_eq!(
        params(&outcome.model),
        params(&untrained),
        "the heads and adapters keep their initial values"
    );

    let Evaluation::Done { model, report } = train_and_evaluate(
        &bp,
        &data,
        None,
        &toy_factory,
        EvaluateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap() else {
        panic!("not cancelled")
    };
    assert!(report.adapted);
    assert_eq!(
        (report.tuned_run.epochs_run, report.tuned_run.steps),
        (0, 0)
    );
    assert_eq!(
        (report.baseline_run.epochs_run, report.baseline_run.steps),
        (0, 0)
    );
    assert!(report.tuned_run.history.is_empty());
    assert_eq!(report.test_rows, 8);
    // The adapters start as a no-op (B = 0), so tuned and baseline are the same model.
    assert_eq!(report.tuned, report.baseline);
    assert_eq!(report.outputs[0].gain, 0.0);
    assert!(report.tuned.get("accuracy").unwrap().is_finite());
    assert!(
        model
            .trainable()
            .iter()
            .any(|(n, _, _)| n.contains("lora_B"))
    );
}

#[test]
fn tagging_learns_word_tags() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let tags: Vec<String> = ["O", "B-NAME", "I-NAME"].map(String::from).to_vec();
    let rows: Vec<Row> = (0..80)
        .map(|_| {
            let mut words = vec![];
            let mut t = vec![];
            for _ in 0..5 {
                if rng.random_bool(0.3) {
                    words.extend(["mr".to_string(), "smith".to_string()]);
                    t.extend([1, 2]);
                } else {
                    words.push(
                        (0..4)
                            .map(|_| rng.random_range(b'a'..=b'l') as char)
                            .collect(),
                    );
                    t.push(0);
                }
            }
            Row {
                inputs: vec![InputValue::Text(words.join(" "))],
                targets: vec![Target::Tags(t)],
            }
        })
        .collect();
    let data = Examples {
        labels: vec![tags],
        rows,
    };
    let bp: Blueprint = serde_json::from_value(serde_json::json!({ "name": "tags",
        "inputs": [{ "name": "text", "modality": "text", "encoder": { "module": "text/bert", "folder": "toy" } }],
        "outputs": [{ "name": "entities", "task": "tagging", "decoder": { "module": "head/token", "dropout": 0.0 } }],
        "training": { "epochs": 8, "batch_size": 8, "learning_rate": 0.05, "head_learning_rate": 0.05 } }))
    .unwrap();
    let schema = DatasetSchema::new([("text", ColumnType::Text), ("entities", ColumnType::Tags)]);
    let bp = compile(&bp, &Catalog::builtin(), &schema).unwrap();
    assert_eq!(bp.training.early_stopping.metric, "entity_f1");
    let (outcome, _) = run(&bp, &data, TrainOptions::default());
    let scores = outcome.model.score(&data, 16).unwrap();
    assert!(scores[0].get("entity_f1").unwrap() > 0.9, "{scores:#?}");
}

#[test]
fn multi_label_and_regression_train_end_to_end() {
    let base = keyword_data(90, 4, false);
    // Multi-label: the keyword's label, plus "long" for texts over 22 bytes.
    // Regression: the class index times 10 plus 5.
    let rows: Vec<Row> = base
        .rows
        .iter()
        .map(|r| {
            let Target::Class(c) = r.targets[0] else {
                unreachable!()
            };
            let InputValue::Text(t) = &r.inputs[0] else {
                unreachable!()
            };
            let mut labels = vec![c];
            if t.len() > 22 {
                labels.push(3);
            }
            Row {
                inputs: r.inputs.clone(),
                targets: vec![
                    Target::Labels(labels),
                    Target::Number(c as f64 * 10.0 + 5.0),
                ],
            }
        })
        .collect();
    let mut names = base.labels[0].clone();
    names.push("long".into());
    let data = Examples {
        labels: vec![names, vec![]],
        rows,
    };
    let bp: Blueprint = serde_json::from_value(serde_json::json!({ "name": "two",
        "inputs": [{ "name": "text", "modality": "text", "encoder": { "module": "text/bert", "folder": "toy" } }],
        "outputs": [{ "name": "tags", "task": "multi_label", "decoder": { "module": "head/mlp", "hidden": 16, "dropout": 0.0 } },
                    { "name": "score", "task": "regression", "decoder": { "module": "head/linear", "dropout": 0.0 } }],
        "training": { "epochs": 15, "batch_size": 8, "learning_rate": 0.05, "head_learning_rate": 0.02, "seed": 1 } }))
    .unwrap();
    let schema = DatasetSchema::new([
        ("text", ColumnType::Text),
        ("tags", ColumnType::MultiLabel),
        ("score", ColumnType::Number),
    ]);
    let bp = compile(&bp, &Catalog::builtin(), &schema).unwrap();
    assert_eq!(
        bp.training.early_stopping.metric, "loss",
        "mixed tasks watch the loss"
    );
    let (outcome, _) = run(&bp, &data, TrainOptions::default());
    let scores = outcome.model.score(&data, 16).unwrap();
    assert!(scores[0].get("micro_f1").unwrap() > 0.8, "{:#?}", scores[0]);
    // Predictions come back in the targets' units (5, 15, 25), not standardized.
    assert!(scores[1].get("rmse").unwrap() < 4.0, "{:#?}", scores[1]);
    assert!(scores[1].get("r2").unwrap() > 0.8, "{:#?}", scores[1]);
}

#[test]
fn adamw_takes_a_hand_checked_step_and_the_lr_follows_the_schedule() {
    use tailor_modules::train::{AdamW, Group};
    let w = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
    let b = Var::from_vec(vec![1.0f32], 1, &Device::Cpu).unwrap();
    let mut opt = AdamW::new(
        vec![
            ("w.weight".into(), w.clone(), Group::Head),
            ("w.bias".into(), b.clone(), Group::Head),
        ],
        0.01,
    )
    .unwrap();
    let g = Tensor::new(&[3.0f32, -0.5], &Device::Cpu).unwrap();
    let loss = (w.as_tensor() * &g).unwrap().sum_all().unwrap() + b.as_tensor().sum_all().unwrap();
    let grads = loss.unwrap().backward().unwrap();
    opt.step(&grads, 0.0, 0.1).unwrap();
    // First step: m̂ = g, v̂ = g², so the update is sign(g); decay multiplies θ by
    // 1 − lr·wd = 0.999, except for biases.
    let got = w.as_tensor().to_vec1::<f32>().unwrap();
    assert!((got[0] - (0.999 - 0.1)).abs() < 1e-6, "{got:?}");
    assert!((got[1] - (-2.0 * 0.999 + 0.1)).abs() < 1e-6, "{got:?}");
    assert!((b.as_tensor().to_vec1::<f32>().unwrap()[0] - 0.9).abs() < 1e-6);

    // The reported lr: warm-up over the first 10% of steps, then linear decay to 0.
    let data = keyword_data(50, 1, false);
    let bp = blueprint(serde_json::json!({ "training": { "epochs": 4, "learning_rate": 0.01 } }));
    let mut lrs = vec![];
    train(
        &bp,
        &data,
        None,
        &toy_factory,
        TrainOptions::default(),
        &mut |e| {
            if let Event::Step(s) = e {
                lrs.push((s.lr, s.total_steps));
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let total = lrs[0].1;
    assert_eq!((lrs.len(), total), (20, 20));
    assert!(
        (lrs[0].0 - 0.005).abs() < 1e-12 && (lrs[1].0 - 0.01).abs() < 1e-12,
        "{lrs:?}"
    );
    assert!(
        (lrs[19].0 - 0.01 * (1.0 - 17.0 / 18.0)).abs() < 1e-12,
        "{lrs:?}"
    );
}

#[test]
fn tagging_labels_stay_on_their_words_when_the_tokenizer_splits_punctuation() {
    // "smith," is one tagged word to the dataset but two words ("smith" ",") to an encoder
    // that splits punctuation like BERT; every label after it must not shift.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let tags: Vec<String> = ["O", "B-NAME", "I-NAME"].map(String::from).to_vec();
    let rows: Vec<Row> = (0..80)
        .map(|_| {
            let (mut words, mut t) = (vec![], vec![]);
            for _ in 0..5 {
                if rng.random_bool(0.3) {
                    words.extend(["mr".to_string(), "smith,".to_string()]);
                    t.extend([1, 2]);
                } else {
                    let w: String = (0..4)
                        .map(|_| rng.random_range(b'a'..=b'l') as char)
                        .collect();
                    words.push(if rng.random_bool(0.3) {
                        format!("{w}.")
                    } else {
                        w
                    });
                    t.push(0);
                }
            }
            Row {
                inputs: vec![InputValue::Text(words.join(" "))],
                targets: vec![Target::Tags(t)],
            }
        })
        .collect();
    let data = Examples {
        labels: vec![tags],
        rows,
    };
    let bp: Blueprint = serde_json::from_value(serde_json::json!({ "name": "tags",
        "inputs": [{ "name": "text", "modality": "text", "encoder": { "module": "text/bert", "folder": "toy" } }],
        "outputs": [{ "name": "entities", "task": "tagging", "decoder": { "module": "head/token", "dropout": 0.0 } }],
        "training": { "epochs": 8, "batch_size": 8, "learning_rate": 0.05, "head_learning_rate": 0.05 } }))
    .unwrap();
    let schema = DatasetSchema::new([("text", ColumnType::Text), ("entities", ColumnType::Tags)]);
    let bp = compile(&bp, &Catalog::builtin(), &schema).unwrap();
    let outcome = train(
        &bp,
        &data,
        None,
        &toy_punct_factory,
        TrainOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let preds = outcome.model.predict(&data.rows[..4], 4).unwrap();
    for (p, r) in preds[0].iter().zip(&data.rows) {
        let tailor_modules::heads::Prediction::Tags { indices, .. } = p else {
            panic!()
        };
        let Target::Tags(t) = &r.targets[0] else {
            panic!()
        };
        assert_eq!(indices.len(), t.len(), "one tag per whitespace word");
    }
    let scores = outcome.model.score(&data, 16).unwrap();
    assert!(scores[0].get("entity_f1").unwrap() > 0.9, "{scores:#?}");
}

#[test]
fn the_validation_split_is_stratified_and_seeded() {
    use tailor_modules::train::stratified_split;
    // 60 / 30 / 10 rows of three classes.
    let rows: Vec<Row> = (0..100)
        .map(|i| Row {
            inputs: vec![InputValue::Text(String::new())],
            targets: vec![Target::Class(if i < 60 {
                0
            } else if i < 90 {
                1
            } else {
                2
            })],
        })
        .collect();
    let (kept, held) = stratified_split(&rows, 0.2, 7);
    assert_eq!((kept.len(), held.len()), (80, 20));
    let count = |idx: &[usize], c: usize| {
        idx.iter()
            .filter(|&&i| rows[i].targets[0] == Target::Class(c))
            .count()
    };
    assert_eq!(
        (count(&held, 0), count(&held, 1), count(&held, 2)),
        (12, 6, 2)
    );
    assert_eq!(
        stratified_split(&rows, 0.2, 7),
        (kept.clone(), held.clone())
    );
    assert_ne!(stratified_split(&rows, 0.2, 8).1, held);
    // A class with a single row stays in training.
    let tiny = vec![rows[0].clone(), rows[1].clone(), rows[95].clone()];
    let (kept, held) = stratified_split(&tiny, 0.5, 1);
    assert!(kept.contains(&2) && held.len() == 1);
}
