//! Training with an honest report: the tuned model and a baseline — the same blueprint
//! with the frozen encoder (no adapters) and the same head trained alone, same seed, same
//! rows — are both scored on rows neither has seen, so the report shows what fine-tuning
//! bought.
//!
//! The held-out rows are the dataset's test split when it has one; otherwise a stratified
//! share (the blueprint's `validation_split`) is set aside before training, and the
//! validation rows for early stopping are carved from the rest.

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::blueprint::CompiledBlueprint;
use crate::catalog::Task;
use crate::metrics::{self, Metrics};
use crate::train::{
    EncoderFactory, EpochProgress, Event, Examples, Model, StopReason, TrainOptions, TrainOutcome,
    TrainState, stratified_split, train,
};

/// Where the rows of the report came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeldOut {
    /// The dataset's own test split.
    Given,
    /// A stratified share of the rows, set aside before training.
    Carved { fraction: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub stop: StopReason,
    pub epochs_run: usize,
    pub best_epoch: Option<usize>,
    pub steps: usize,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub history: Vec<EpochProgress>,
}

impl RunSummary {
    fn of(o: &TrainOutcome) -> Self {
        Self {
            stop: o.stop,
            epochs_run: o.history.len(),
            best_epoch: o.best_epoch,
            steps: o.steps,
            train_rows: o.train_rows,
            validation_rows: o.validation_rows,
            history: o.history.clone(),
        }
    }
}

/// Tuned against baseline for one output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputReport {
    pub name: String,
    pub task: Task,
    pub tuned: Metrics,
    pub baseline: Metrics,
    /// The task's headline metric, its two values and tuned − baseline.
    pub headline: String,
    pub tuned_value: f64,
    pub baseline_value: f64,
    pub gain: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    pub blueprint: String,
    /// Task and metrics of the first output (the whole list is in `outputs`).
    pub task: Task,
    pub tuned: Metrics,
    pub baseline: Metrics,
    pub outputs: Vec<OutputReport>,
    pub held_out: HeldOut,
    pub test_rows: usize,
    pub seed: u64,
    /// `false` when the blueprint asks for no adaptation: tuned and baseline are then the
    /// same run.
    pub adapted: bool,
    pub tuned_run: RunSummary,
    pub baseline_run: RunSummary,
}

/// Options of [`train_and_evaluate`]; cancel and checkpoints apply to the tuned run.
#[derive(Default)]
pub struct EvaluateOptions<'a> {
    pub cancel: Option<&'a AtomicBool>,
    pub checkpoint_every: Option<usize>,
    pub resume: Option<TrainState>,
}

pub enum Evaluation {
    Done {
        model: Box<Model>,
        report: Box<EvaluationReport>,
    },
    /// Stopped by the callback or the cancel flag; `state` resumes the tuned run.
    Cancelled { state: Option<Box<TrainState>> },
}

/// Trains the tuned model and the baseline and scores both on held-out rows.
pub fn train_and_evaluate(
    blueprint: &CompiledBlueprint,
    data: &Examples,
    test: Option<&Examples>,
    factory: &EncoderFactory,
    options: EvaluateOptions,
    on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
) -> anyhow::Result<Evaluation> {
    let settings = &blueprint.training;
    let (pool, held, held_out) = match test {
        Some(t) => (data.clone(), t.clone(), HeldOut::Given),
        None => {
            // Another seed than the validation carve's, so the two splits are independent.
            let (kept, held) = stratified_split(
                &data.rows,
                settings.validation_split,
                settings.seed ^ 0x7e57,
            );
            (
                data.subset(&kept),
                data.subset(&held),
                HeldOut::Carved {
                    fraction: settings.validation_split,
                },
            )
        }
    };
    let adapted = blueprint.adaptation.is_some();
    let batch = settings.batch_size;
    // The baseline runs first: its heads, trained on the frozen encoder, are where the
    // tuned run starts (linear probing, then fine-tuning: LP-FT). Adapters then refine a
    // model that already predicts as well as the baseline instead of pulling the encoder
    // towards a randomly initialised head, which on 50-500 rows costs more than it buys.
    let baseline = if adapted {
        let base = train(
            blueprint,
            &pool,
            None,
            factory,
            TrainOptions {
                adapters: false,
                cancel: options.cancel,
                ..Default::default()
            },
            on_event,
        )?;
        if base.stop == StopReason::Cancelled {
            return Ok(Evaluation::Cancelled { state: None });
        }
        Some(base)
    } else {
        None
    };
    let init = match &baseline {
        Some(base) => Some(
            base.model
                .trainable()
                .into_iter()
                .map(|(name, var, _)| Ok((name, var.as_tensor().copy()?)))
                .collect::<candle_core::Result<Vec<_>>>()?,
        ),
        None => None,
    };
    let tuned = train(
        blueprint,
        &pool,
        None,
        factory,
        TrainOptions {
            adapters: true,
            cancel: options.cancel,
            checkpoint_every: options.checkpoint_every,
            resume: options.resume,
            init,
        },
        on_event,
    )?;
    if tuned.stop == StopReason::Cancelled {
        return Ok(Evaluation::Cancelled {
            state: Some(Box::new(tuned.state)),
        });
    }
    let tuned_metrics = tuned.model.score(&held, batch)?;
    let (baseline_metrics, baseline_run) = match &baseline {
        Some(base) => (base.model.score(&held, batch)?, RunSummary::of(base)),
        None => (tuned_metrics.clone(), RunSummary::of(&tuned)),
    };
    let outputs: Vec<OutputReport> = blueprint
        .outputs
        .iter()
        .zip(tuned_metrics.iter().zip(&baseline_metrics))
        .map(|(o, (t, b))| {
            let headline = metrics::headline(o.task);
            let tv = t.get(headline).unwrap_or(f64::NAN);
            let bv = b.get(headline).unwrap_or(f64::NAN);
            OutputReport {
                name: o.name.clone(),
                task: o.task,
                tuned: t.clone(),
                baseline: b.clone(),
                headline: headline.to_string(),
                tuned_value: tv,
                baseline_value: bv,
                gain: tv - bv,
            }
        })
        .collect();
    let report = EvaluationReport {
        blueprint: blueprint.name.clone(),
        task: outputs[0].task,
        tuned: outputs[0].tuned.clone(),
        baseline: outputs[0].baseline.clone(),
        outputs,
        held_out,
        test_rows: held.rows.len(),
        seed: settings.seed,
        adapted,
        tuned_run: RunSummary::of(&tuned),
        baseline_run,
    };
    Ok(Evaluation::Done {
        model: Box::new(tuned.model),
        report: Box::new(report),
    })
}
