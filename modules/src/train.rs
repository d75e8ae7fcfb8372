//! The training loop: encoders (with or without LoRA) + fusion + heads, trained with a
//! hand-written AdamW over the adapter and head tensors only.
//!
//! - Learning rate: warm-up then linear/cosine decay, set every step; adapters and heads
//!   have their own base rates.
//! - Gradients are clipped by their global norm before the optimizer sees them.
//! - Weight decay is decoupled (AdamW: `θ ← θ(1 − lr·wd) − lr·m̂/(√v̂ + ε)`), and, as in
//!   Hugging Face's Trainer, not applied to biases.
//! - A validation split is carved (stratified, seeded) when the dataset has none; after
//!   every epoch the chosen metric is checked, the best epoch's weights are kept, and
//!   training stops after `patience` epochs without improvement — but not before a third
//!   of the planned epochs has run.
//! - Every random choice comes from ChaCha streams derived from the seed and the position
//!   (split, epoch order, step dropout), so the rng position is just (epoch, step): a
//!   [`TrainState`] checkpoint resumes to exactly the run that was not interrupted.
//! - A run on a frozen encoder (the baseline) encodes its rows once and trains the heads
//!   on the cached vectors, so it can take many epochs cheaply.
//! - A progress callback sees every step and epoch; it, or an `AtomicBool`, cancels the
//!   run within one step.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::blueprint::{ClassWeighting, CompiledBlueprint, CompiledInput, HeadKind, LoraSettings};
use crate::catalog::Task;
use crate::encoder::{Cell, Encoded, Encoder, FileValue, Prepared, RawColumn};
use crate::fusion::{FusionInput, FusionLayer};
use crate::heads::{HeadConfig, Heads, Prediction, Target, serialize_f32};
use crate::metrics::{self, Metrics};
use crate::schedule::Schedule;

// ---------------------------------------------------------------------------------------
// Data.

/// The value of one input column in one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputValue {
    Text(String),
    /// A file of the dataset's archive (image, audio, signal, point cloud, frames).
    File(FileValue),
    /// The cells of a tabular input, in the input's column order.
    Cells(Vec<Cell>),
    /// The row has no value for this input: encoders mark it absent and fusion masks it.
    Missing,
}

impl InputValue {
    /// What the value is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            InputValue::Text(_) => "text",
            InputValue::File(_) => "a file",
            InputValue::Cells(_) => "table cells",
            InputValue::Missing => "nothing",
        }
    }
}

/// The values of input `i` in `rows` as one column for its encoder. Text stays text (a
/// missing text is empty); files and cells keep their gaps as `None` and
/// [`Cell::Missing`], so the encoder can mark them absent.
pub fn raw_column(rows: &[&Row], i: usize) -> candle_core::Result<RawColumn> {
    fn value(r: &Row, i: usize) -> candle_core::Result<&InputValue> {
        r.inputs
            .get(i)
            .ok_or_else(|| candle_core::Error::Msg(format!("row has no value for input {i}")))
    }
    let first = rows
        .iter()
        .map(|r| value(r, i))
        .find(|v| !matches!(v, Ok(InputValue::Missing)))
        .transpose()?;
    let mismatch = |got: &InputValue, want: &str| {
        candle_core::Error::Msg(format!(
            "input {i} holds {want} in one row and {} in another",
            got.kind()
        ))
    };
    match first {
        None | Some(InputValue::Text(_)) => rows
            .iter()
            .map(|r| match value(r, i)? {
                InputValue::Text(t) => Ok(t.clone()),
                InputValue::Missing => Ok(String::new()),
                other => Err(mismatch(other, "text")),
            })
            .collect::<candle_core::Result<_>>()
            .map(RawColumn::Text),
        Some(InputValue::File(_)) => rows
            .iter()
            .map(|r| match value(r, i)? {
                InputValue::File(f) => Ok(Some(f.clone())),
                InputValue::Missing => Ok(None),
                other => Err(mismatch(other, "a file")),
            })
            .collect::<candle_core::Result<_>>()
            .map(RawColumn::Files),
        Some(InputValue::Cells(_)) => rows
            .iter()
            .map(|r| match value(r, i)? {
                InputValue::Cells(c) => Ok(c.clone()),
                InputValue::Missing => Ok(Vec::new()),
                other => Err(mismatch(other, "table cells")),
            })
            .collect::<candle_core::Result<_>>()
            .map(RawColumn::Cells),
        Some(InputValue::Missing) => unreachable!("missing values were skipped"),
    }
}

/// One labelled row: inputs and targets in the blueprint's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub inputs: Vec<InputValue>,
    pub targets: Vec<Target>,
}

/// Labelled rows and, per output, its label vocabulary (classes, labels or tags; empty
/// for regression). Tagging texts are words separated by spaces, one tag per word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Examples {
    pub labels: Vec<Vec<String>>,
    pub rows: Vec<Row>,
}

impl Examples {
    pub fn subset(&self, indices: &[usize]) -> Examples {
        Examples {
            labels: self.labels.clone(),
            rows: indices.iter().map(|&i| self.rows[i].clone()).collect(),
        }
    }
}

/// Builds the encoder of an input: with LoRA when `lora` is given, frozen (the baseline)
/// when it is `None`; `seed` seeds adapter init and dropout.
pub type EncoderFactory<'a> =
    dyn Fn(&CompiledInput, Option<&LoraSettings>, u64) -> anyhow::Result<Box<dyn Encoder>> + 'a;

/// Splits row indices into (kept, held out), stratified by the first output's target:
/// each class (or, for regression, each fifth of the sorted targets) gives its share.
pub fn stratified_split(rows: &[Row], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut strata: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let numbers: Vec<f64> = rows
        .iter()
        .filter_map(|r| match r.targets.first() {
            Some(Target::Number(y)) => Some(*y),
            _ => None,
        })
        .collect();
    let mut sorted = numbers.clone();
    sorted.sort_by(f64::total_cmp);
    for (i, row) in rows.iter().enumerate() {
        let key = match row.targets.first() {
            Some(Target::Class(c)) => *c,
            Some(Target::Labels(ls)) => ls.first().map_or(usize::MAX, |l| *l),
            Some(Target::Number(y)) => {
                let rank = sorted.partition_point(|v| v < y);
                rank * 5 / sorted.len().max(1)
            }
            _ => 0,
        };
        strata.entry(key).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1);
    // Largest remainder: each stratum gives floor(len × fraction), the rows still missing to
    // round(n × fraction) come from the strata with the largest remainders. A stratum
    // always keeps one row for training.
    let mut strata: Vec<Vec<usize>> = strata.into_values().collect();
    for members in &mut strata {
        members.shuffle(&mut rng);
    }
    let want = (rows.len() as f64 * fraction).round() as usize;
    let cap = |len: usize| len.saturating_sub(1);
    let mut take: Vec<usize> = strata
        .iter()
        .map(|m| ((m.len() as f64 * fraction) as usize).min(cap(m.len())))
        .collect();
    let mut by_remainder: Vec<usize> = (0..strata.len()).collect();
    by_remainder.sort_by(|&a, &b| {
        let rem = |i: usize| {
            strata[i].len() as f64 * fraction - (strata[i].len() as f64 * fraction).floor()
        };
        rem(b).total_cmp(&rem(a)).then(a.cmp(&b))
    });
    let mut missing = want.saturating_sub(take.iter().sum());
    for i in by_remainder {
        if missing == 0 {
            break;
        }
        if take[i] < cap(strata[i].len()) {
            take[i] += 1;
            missing -= 1;
        }
    }
    let (mut kept, mut held) = (Vec::new(), Vec::new());
    for (members, n) in strata.iter().zip(take) {
        held.extend_from_slice(&members[..n]);
        kept.extend_from_slice(&members[n..]);
    }
    // Tiny sets: hold out at least one row, keep at least one.
    if held.is_empty() && kept.len() > 1 {
        held.push(kept.pop().expect("more than one row"));
    }
    kept.sort_unstable();
    held.sort_unstable();
    (kept, held)
}

// ---------------------------------------------------------------------------------------
// The assembled model.

/// Encoders, fusion and heads of a compiled blueprint.
pub struct Model {
    pub blueprint: CompiledBlueprint,
    pub encoders: Vec<Box<dyn Encoder>>,
    /// Joins the encoders' outputs; the attention fusion has trainable tensors.
    pub fusion: FusionLayer,
    pub heads: Heads,
}

struct Forward {
    outs: Vec<Tensor>,
    word_ids: Option<Vec<Vec<Option<usize>>>>,
}

impl Model {
    /// Builds encoders through `factory` and fresh heads sized for `data`.
    pub fn build(
        blueprint: &CompiledBlueprint,
        data: &Examples,
        factory: &EncoderFactory,
        adapters: bool,
    ) -> anyhow::Result<Self> {
        let seed = blueprint.training.seed;
        let lora = if adapters {
            blueprint.adaptation.as_ref()
        } else {
            None
        };
        let encoders = blueprint
            .inputs
            .iter()
            .map(|input| {
                factory(input, lora, seed)
                    .with_context(|| format!("building the encoder of {}", input.name))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // What encoders learn from the data (statistics, vocabularies) comes from the
        // training rows only.
        let rows: Vec<&Row> = data.rows.iter().collect();
        for (i, (enc, input)) in encoders.iter().zip(&blueprint.inputs).enumerate() {
            enc.fit(&raw_column(&rows, i)?)
                .with_context(|| format!("fitting the encoder of {} to the data", input.name))?;
        }
        let widths: Vec<usize> = encoders.iter().map(|e| e.width()).collect();
        let fusion = Self::fusion_for(blueprint, &encoders)?;
        let pooled_width = fusion.width();
        if data.labels.len() != blueprint.outputs.len() {
            bail!(
                "the data has labels for {} outputs, the blueprint has {}",
                data.labels.len(),
                blueprint.outputs.len()
            );
        }
        let configs = blueprint
            .outputs
            .iter()
            .enumerate()
            .map(|(o, out)| {
                let labels = data.labels[o].clone();
                let (mut mean, mut std) = (0.0, 1.0);
                if out.task == Task::Regression {
                    let ys: Vec<f64> = data
                        .rows
                        .iter()
                        .filter_map(|r| match r.targets.get(o) {
                            Some(Target::Number(y)) => Some(*y),
                            _ => None,
                        })
                        .collect();
                    let n = ys.len().max(1) as f64;
                    mean = ys.iter().sum::<f64>() / n;
                    let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / n;
                    std = if var > 1e-12 { var.sqrt() } else { 1.0 };
                }
                let class_weights = (out.task == Task::Classification
                    && blueprint.training.class_weights == ClassWeighting::Balanced)
                    .then(|| balanced_weights(data, o, labels.len()));
                HeadConfig {
                    name: out.name.clone(),
                    task: out.task,
                    kind: out.head,
                    dropout: out.dropout,
                    in_width: if out.head == HeadKind::Token {
                        widths[0]
                    } else {
                        pooled_width
                    },
                    labels,
                    class_weights,
                    target_mean: mean,
                    target_std: std,
                }
            })
            .collect();
        let heads = Heads::new(configs, seed, &Device::Cpu)?;
        Ok(Self {
            blueprint: blueprint.clone(),
            encoders,
            fusion,
            heads,
        })
    }

    /// A fresh fusion layer for `blueprint` over `encoders` (seeded by the run's seed).
    fn fusion_for(
        blueprint: &CompiledBlueprint,
        encoders: &[Box<dyn Encoder>],
    ) -> candle_core::Result<FusionLayer> {
        let inputs: Vec<FusionInput> = blueprint
            .inputs
            .iter()
            .zip(encoders)
            .map(|(input, enc)| FusionInput {
                modality: input.modality,
                width: enc.width(),
            })
            .collect();
        FusionLayer::new(blueprint.fusion, &inputs, blueprint.training.seed)
    }

    /// A model from loaded parts, with a fresh fusion layer: a loaded version then sets
    /// the trained tensors with [`Model::set_trained`].
    pub fn assemble(
        blueprint: CompiledBlueprint,
        encoders: Vec<Box<dyn Encoder>>,
        heads: Heads,
    ) -> candle_core::Result<Self> {
        let fusion = Self::fusion_for(&blueprint, &encoders)?;
        Ok(Self {
            blueprint,
            encoders,
            fusion,
            heads,
        })
    }

    /// The tensors trained in full outside the adapters and heads, by their names in
    /// [`Model::trainable`]: every encoder's `trained_vars` (`encoders.{i}.{name}`, with
    /// fitted statistics such as a tabular input's `stats.*`) and the fusion's
    /// (`fusion.{name}`). A package stores these (e.g. in `encoders.safetensors`) and
    /// gives them back to [`Model::set_trained`].
    pub fn trained_tensors(&self) -> Vec<(String, Var)> {
        self.trainable()
            .into_iter()
            .filter(|(name, _, _)| name.starts_with("encoders.") || name.starts_with("fusion."))
            .map(|(name, var, _)| (name, var))
            .collect()
    }

    /// Sets every tensor of [`Model::trained_tensors`] from `saved` by name; a tensor that
    /// is missing or of another shape is an error naming it.
    pub fn set_trained(&self, saved: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        for (name, var) in self.trained_tensors() {
            let t = saved
                .get(&name)
                .with_context(|| format!("the saved model lacks the tensor {name}"))?;
            if t.dims() != var.dims() {
                bail!(
                    "the saved tensor {name} has shape {:?}, the model needs {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Adapter tensors of every encoder, then the tensors encoders train in full (at the
    /// heads' rate: they start from scratch or from a fresh projection), then head
    /// tensors, each with its group.
    pub fn trainable(&self) -> Vec<(String, Var, Group)> {
        let mut out = Vec::new();
        for (i, enc) in self.encoders.iter().enumerate() {
            for (name, var) in enc.adapter_vars() {
                out.push((format!("inputs.{i}.{name}"), var, Group::Adapter));
            }
        }
        for (i, enc) in self.encoders.iter().enumerate() {
            for (name, var) in enc.trained_vars() {
                out.push((format!("encoders.{i}.{name}"), var, Group::Head));
            }
        }
        for (name, var) in self.fusion.vars() {
            out.push((format!("fusion.{name}"), var, Group::Head));
        }
        for (name, var) in self.heads.vars() {
            out.push((format!("heads.{name}"), var, Group::Head));
        }
        out
    }

    /// True when every head reads the fused pooled vector (no token tagging), so that a
    /// frozen encoder's output can be computed once per row and reused.
    fn pooled_only(&self) -> bool {
        self.heads
            .heads
            .iter()
            .all(|h| h.config.kind != HeadKind::Token)
    }

    /// True when no encoder carries trainable tensors (the baseline): its outputs do not
    /// change while the heads train.
    fn frozen(&self) -> bool {
        self.fusion.vars().is_empty()
            && self
                .encoders
                .iter()
                .all(|e| e.adapter_vars().is_empty() && e.trained_vars().is_empty())
    }

    /// The fused pooled vectors of `rows` in evaluation mode, `(rows, width)`.
    pub(crate) fn pooled_features(
        &self,
        rows: &[Row],
        batch_size: usize,
    ) -> candle_core::Result<Tensor> {
        let mut parts = Vec::new();
        for chunk in rows.chunks(batch_size.max(1)) {
            let refs: Vec<&Row> = chunk.iter().collect();
            parts.push(self.fuse(&refs, false)?.0);
        }
        if parts.is_empty() {
            // No rows: nothing will be looked up.
            return Tensor::zeros((0, 1), candle_core::DType::F32, &Device::Cpu);
        }
        Tensor::cat(&parts, 0)
    }

    /// Runs the encoders and fuses their pooled vectors; also returns the first input's
    /// encoding and preparation (token states and word ids for tagging).
    fn fuse(&self, rows: &[&Row], train: bool) -> candle_core::Result<(Tensor, Encoded, Prepared)> {
        let mut encoded = Vec::new();
        let mut first_prepared = None;
        for (i, enc) in self.encoders.iter().enumerate() {
            let prepared = enc.prepare(&raw_column(rows, i)?)?;
            encoded.push(enc.forward(&prepared, train)?);
            if i == 0 {
                first_prepared = Some(prepared);
            }
        }
        let prepared = first_prepared
            .ok_or_else(|| candle_core::Error::Msg("a model needs an input".into()))?;
        // Missing inputs are masked inside the fusion (see `crate::fusion`).
        let fused = self.fusion.forward(&encoded)?;
        Ok((fused, encoded.swap_remove(0), prepared))
    }

    /// The heads' outputs for `rows`; `features` are their fused pooled vectors when
    /// already computed (a frozen encoder, pooled heads only), else the encoders run.
    fn forward(
        &self,
        rows: &[&Row],
        mut rng: Option<&mut ChaCha8Rng>,
        features: Option<Tensor>,
    ) -> candle_core::Result<Forward> {
        if let Some(fused) = features {
            let outs = self
                .heads
                .heads
                .iter()
                .map(|head| head.forward(&fused, rng.as_deref_mut()))
                .collect::<candle_core::Result<Vec<_>>>()?;
            return Ok(Forward {
                outs,
                word_ids: None,
            });
        }
        let (fused, first, prepared) = self.fuse(rows, rng.is_some())?;
        let mut outs = Vec::new();
        for head in &self.heads.heads {
            let xs = if head.config.kind == HeadKind::Token {
                &first.tokens
            } else {
                &fused
            };
            outs.push(head.forward(xs, rng.as_deref_mut())?);
        }
        let word_ids = match prepared {
            Prepared::Text(t) => Some(t.word_ids),
            Prepared::Dense(_) => None,
        };
        let tagging = self
            .heads
            .heads
            .iter()
            .any(|h| h.config.kind == HeadKind::Token);
        let word_ids = match word_ids {
            Some(ids) if tagging => Some(self.whitespace_word_ids(rows, ids)?),
            other => other,
        };
        Ok(Forward { outs, word_ids })
    }

    /// Word ids that count whitespace-separated words, as tagging targets do. A tokenizer
    /// may split words further (BERT's pre-tokenizer makes `smith,` two words); then each of
    /// its words is mapped back to the whitespace word it lies in, so a label still lands on
    /// its word's first sub-token and the labels after it do not shift.
    fn whitespace_word_ids(
        &self,
        rows: &[&Row],
        ids: Vec<Vec<Option<usize>>>,
    ) -> candle_core::Result<Vec<Vec<Option<usize>>>> {
        let enc = &self.encoders[0];
        let words_in = |texts: Vec<String>| -> candle_core::Result<Vec<usize>> {
            let Prepared::Text(t) = enc.prepare(&RawColumn::Text(texts))? else {
                return Err(candle_core::Error::Msg(
                    "token tagging needs a text encoder as the first input".into(),
                ));
            };
            Ok(t.word_ids
                .iter()
                .map(|item| {
                    item.iter()
                        .flatten()
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                })
                .collect())
        };
        // Probe once per batch: does this encoder split "a,b" into more than one word?
        if words_in(vec!["a,b".into()])?.first().copied().unwrap_or(1) <= 1 {
            return Ok(ids);
        }
        rows.iter()
            .zip(ids)
            .map(|(row, item)| {
                let Some(InputValue::Text(text)) = row.inputs.first() else {
                    return Ok(item);
                };
                let words: Vec<String> = text.split_whitespace().map(String::from).collect();
                if words.is_empty() {
                    return Ok(item);
                }
                let mut map = Vec::new();
                for (w, n) in words_in(words)?.into_iter().enumerate() {
                    map.extend(std::iter::repeat_n(w, n));
                }
                Ok(item
                    .into_iter()
                    .map(|id| id.and_then(|i| map.get(i).copied()))
                    .collect())
            })
            .collect()
    }

    fn summed_loss(&self, rows: &[&Row], f: &Forward) -> candle_core::Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for (o, (head, out)) in self.heads.heads.iter().zip(&f.outs).enumerate() {
            let targets: Vec<&Target> = rows.iter().map(|r| &r.targets[o]).collect();
            let l = head.loss(out, &targets, f.word_ids.as_deref())?;
            total = Some(match total {
                None => l,
                Some(t) => (t + l)?,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("a model needs an output".into()))
    }

    /// The summed loss of all outputs on a batch; `rng` turns training mode (dropout) on.
    pub fn loss(&self, rows: &[&Row], rng: Option<&mut ChaCha8Rng>) -> candle_core::Result<Tensor> {
        let f = self.forward(rows, rng, None)?;
        self.summed_loss(rows, &f)
    }

    /// Predictions (indexed `[output][row]`) and, when `with_loss`, the mean loss, from
    /// one evaluation-mode pass. `features`: the rows' fused pooled vectors when already
    /// computed.
    fn run_eval(
        &self,
        rows: &[Row],
        batch_size: usize,
        with_loss: bool,
        features: Option<&Tensor>,
    ) -> candle_core::Result<(Vec<Vec<Prediction>>, f64)> {
        let mut out = vec![Vec::with_capacity(rows.len()); self.heads.heads.len()];
        let mut loss_sum = 0.0;
        let batch_size = batch_size.max(1);
        for (c, chunk) in rows.chunks(batch_size).enumerate() {
            let refs: Vec<&Row> = chunk.iter().collect();
            let cached = features
                .map(|f| f.narrow(0, c * batch_size, chunk.len()))
                .transpose()?;
            let f = self.forward(&refs, None, cached)?;
            if with_loss {
                loss_sum +=
                    self.summed_loss(&refs, &f)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            }
            let words: Vec<usize> = chunk
                .iter()
                .map(|r| match r.inputs.first() {
                    Some(InputValue::Text(t)) => t.split_whitespace().count(),
                    _ => 0,
                })
                .collect();
            for (o, (head, logits)) in self.heads.heads.iter().zip(&f.outs).enumerate() {
                out[o].extend(head.predict(logits, f.word_ids.as_deref(), Some(&words))?);
            }
        }
        Ok((
            out,
            if rows.is_empty() {
                0.0
            } else {
                loss_sum / rows.len() as f64
            },
        ))
    }

    /// Predictions for `rows`, indexed `[output][row]`.
    pub fn predict(
        &self,
        rows: &[Row],
        batch_size: usize,
    ) -> candle_core::Result<Vec<Vec<Prediction>>> {
        Ok(self.run_eval(rows, batch_size, false, None)?.0)
    }

    /// Metrics of every output on `data` and its mean loss, from one pass.
    pub fn score_with_loss(
        &self,
        data: &Examples,
        batch_size: usize,
    ) -> candle_core::Result<(Vec<Metrics>, f64)> {
        self.score_with_loss_cached(data, batch_size, None)
    }

    fn score_with_loss_cached(
        &self,
        data: &Examples,
        batch_size: usize,
        features: Option<&Tensor>,
    ) -> candle_core::Result<(Vec<Metrics>, f64)> {
        let (preds, loss) = self.run_eval(&data.rows, batch_size, true, features)?;
        let metrics = self
            .heads
            .heads
            .iter()
            .enumerate()
            .map(|(o, head)| {
                score_output(head.config.task, &data.labels[o], &data.rows, o, &preds[o])
            })
            .collect();
        Ok((metrics, loss))
    }

    /// Predictions for unlabelled rows (one value per input each), indexed `[output][row]`.
    pub fn predict_inputs(
        &self,
        inputs: &[Vec<InputValue>],
        batch_size: usize,
    ) -> candle_core::Result<Vec<Vec<Prediction>>> {
        let rows: Vec<Row> = inputs
            .iter()
            .map(|i| Row {
                inputs: i.clone(),
                targets: Vec::new(),
            })
            .collect();
        self.predict(&rows, batch_size)
    }

    /// Metrics of every output on `data`.
    pub fn score(&self, data: &Examples, batch_size: usize) -> candle_core::Result<Vec<Metrics>> {
        let preds = self.predict(&data.rows, batch_size)?;
        Ok(self
            .heads
            .heads
            .iter()
            .enumerate()
            .map(|(o, head)| {
                score_output(head.config.task, &data.labels[o], &data.rows, o, &preds[o])
            })
            .collect())
    }

    /// Mean loss over `data` in evaluation mode.
    pub fn mean_loss(&self, data: &Examples, batch_size: usize) -> candle_core::Result<f64> {
        let (mut sum, mut n) = (0.0, 0usize);
        for chunk in data.rows.chunks(batch_size.max(1)) {
            let refs: Vec<&Row> = chunk.iter().collect();
            sum += self.loss(&refs, None)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            n += chunk.len();
        }
        Ok(if n == 0 { 0.0 } else { sum / n as f64 })
    }
}

fn balanced_weights(data: &Examples, output: usize, classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    for r in &data.rows {
        if let Some(Target::Class(c)) = r.targets.get(output) {
            counts[*c] += 1;
        }
    }
    let present = counts.iter().filter(|&&c| c > 0).count().max(1);
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                1.0
            } else {
                n as f32 / (present as f32 * c as f32)
            }
        })
        .collect()
}

/// Scores one output's predictions against the rows' targets.
pub fn score_output(
    task: Task,
    labels: &[String],
    rows: &[Row],
    output: usize,
    preds: &[Prediction],
) -> Metrics {
    match task {
        Task::Classification => {
            let truth: Vec<usize> = rows
                .iter()
                .map(|r| match &r.targets[output] {
                    Target::Class(c) => *c,
                    _ => 0,
                })
                .collect();
            let pred: Vec<usize> = preds
                .iter()
                .map(|p| match p {
                    Prediction::Class { index, .. } => *index,
                    _ => 0,
                })
                .collect();
            Metrics::Classification(metrics::classification(&truth, &pred, labels))
        }
        Task::MultiLabel => {
            let hot = |ls: &[usize]| {
                let mut v = vec![false; labels.len()];
                for &l in ls {
                    v[l] = true;
                }
                v
            };
            let truth: Vec<Vec<bool>> = rows
                .iter()
                .map(|r| match &r.targets[output] {
                    Target::Labels(ls) => hot(ls),
                    _ => hot(&[]),
                })
                .collect();
            let pred: Vec<Vec<bool>> = preds
                .iter()
                .map(|p| match p {
                    Prediction::Labels { indices, .. } => hot(indices),
                    _ => hot(&[]),
                })
                .collect();
            Metrics::MultiLabel(metrics::multi_label(&truth, &pred, labels))
        }
        Task::Regression => {
            let truth: Vec<f64> = rows
                .iter()
                .map(|r| match &r.targets[output] {
                    Target::Number(y) => *y,
                    _ => 0.0,
                })
                .collect();
            let pred: Vec<f64> = preds
                .iter()
                .map(|p| match p {
                    Prediction::Number(y) => *y,
                    _ => 0.0,
                })
                .collect();
            Metrics::Regression(metrics::regression(&truth, &pred))
        }
        Task::Tagging => {
            let name = |i: &usize| labels[*i].clone();
            let truth: Vec<Vec<String>> = rows
                .iter()
                .map(|r| match &r.targets[output] {
                    Target::Tags(t) => t.iter().map(name).collect(),
                    _ => vec![],
                })
                .collect();
            let pred: Vec<Vec<String>> = preds
                .iter()
                .map(|p| match p {
                    Prediction::Tags { tags, .. } => tags.clone(),
                    _ => vec![],
                })
                .collect();
            Metrics::Tagging(metrics::tagging(&truth, &pred))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Optimizer and clipping.

/// Which learning rate a tensor trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Adapter,
    Head,
}

struct Param {
    name: String,
    var: Var,
    group: Group,
    m: Tensor,
    v: Tensor,
}

/// Tensors by name.
pub type NamedTensors = Vec<(String, Tensor)>;

/// AdamW over named `Var`s with one learning rate per [`Group`].
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken (for bias correction).
    pub t: usize,
    params: Vec<Param>,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var, Group)>, weight_decay: f64) -> candle_core::Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var, group)| {
                let m = var.as_tensor().zeros_like()?;
                let v = var.as_tensor().zeros_like()?;
                Ok(Param {
                    name,
                    var,
                    group,
                    m,
                    v,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            params,
        })
    }

    /// One update from `grads`; tensors without a gradient are left alone.
    pub fn step(
        &mut self,
        grads: &GradStore,
        lr_adapter: f64,
        lr_head: f64,
    ) -> candle_core::Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let lr = match p.group {
                Group::Adapter => lr_adapter,
                Group::Head => lr_head,
            };
            p.m = (p.m.affine(self.beta1, 0.0)? + g.affine(1.0 - self.beta1, 0.0)?)?;
            p.v = (p.v.affine(self.beta2, 0.0)? + g.sqr()?.affine(1.0 - self.beta2, 0.0)?)?;
            let update =
                (p.m.affine(1.0 / bc1, 0.0)? / (p.v.affine(1.0 / bc2, 0.0)?.sqrt()? + self.eps)?)?;
            let decay = if p.name.ends_with("bias") {
                0.0
            } else {
                self.weight_decay
            };
            let theta = p.var.as_tensor().affine(1.0 - lr * decay, 0.0)?;
            p.var.set(&(theta - update.affine(lr, 0.0)?)?)?;
        }
        Ok(())
    }

    fn moments(&self) -> candle_core::Result<(NamedTensors, NamedTensors)> {
        let m = self
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), p.m.copy()?)))
            .collect::<candle_core::Result<_>>()?;
        let v = self
            .params
            .iter()
            .map(|p| Ok((p.name.clone(), p.v.copy()?)))
            .collect::<candle_core::Result<_>>()?;
        Ok((m, v))
    }

    fn set_moments(
        &mut self,
        m: &HashMap<String, Tensor>,
        v: &HashMap<String, Tensor>,
        t: usize,
    ) -> anyhow::Result<()> {
        for p in &mut self.params {
            p.m = m
                .get(&p.name)
                .with_context(|| format!("checkpoint lacks m of {}", p.name))?
                .clone();
            p.v = v
                .get(&p.name)
                .with_context(|| format!("checkpoint lacks v of {}", p.name))?
                .clone();
        }
        self.t = t;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars`.
pub fn global_norm(grads: &GradStore, vars: &[Var]) -> candle_core::Result<f64> {
    let mut sq = 0.0;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(sq.sqrt())
}

/// Scales the gradients of `vars` so their global norm is at most `max_norm`; returns the
/// norm before clipping.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[Var],
    max_norm: f64,
) -> candle_core::Result<f64> {
    let norm = global_norm(grads, vars)?;
    if norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), g.affine(scale, 0.0)?);
            }
        }
    }
    Ok(norm)
}

// ---------------------------------------------------------------------------------------
// Progress, checkpoints, outcome.

/// Whether a run trains the adapters (the tuned model) or the head alone (the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Tuned,
    Baseline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepProgress {
    pub phase: Phase,
    /// 1-based count of optimizer steps taken.
    pub step: usize,
    pub total_steps: usize,
    /// 0-based epoch.
    pub epoch: usize,
    pub loss: f64,
    /// Learning rate of the adapters (of the heads in a baseline run) at this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    pub phase: Phase,
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub validation_loss: f64,
    /// Headline metrics per output name.
    pub validation: BTreeMap<String, BTreeMap<String, f64>>,
    /// The early-stopping metric and its value this epoch.
    pub metric: String,
    pub value: f64,
    pub best_epoch: usize,
    pub improved: bool,
}

/// What the callback sees.
#[derive(Debug)]
pub enum Event<'a> {
    Step(&'a StepProgress),
    Epoch(&'a EpochProgress),
    /// A resumable checkpoint (after every epoch, and every `checkpoint_every` steps).
    Checkpoint(&'a TrainState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Completed,
    EarlyStopped,
    Cancelled,
}

/// Everything needed to continue a run exactly where it stopped.
#[derive(Debug, Clone)]
pub struct TrainState {
    pub seed: u64,
    /// Optimizer steps taken.
    pub step: usize,
    pub epoch: usize,
    /// Batches of `epoch` already taken.
    pub batch_in_epoch: usize,
    pub epoch_loss_sum: f64,
    pub bad_epochs: usize,
    /// Best epoch so far and its metric value.
    pub best: Option<(usize, f64)>,
    pub history: Vec<EpochProgress>,
    pub adam_t: usize,
    /// Adapter and head tensors (`inputs.{i}.{peft name}`, `heads.{name}`).
    pub params: Vec<(String, Tensor)>,
    pub adam_m: Vec<(String, Tensor)>,
    pub adam_v: Vec<(String, Tensor)>,
    /// The best epoch's tensors, restored at the end.
    pub best_params: Vec<(String, Tensor)>,
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    seed: u64,
    step: usize,
    epoch: usize,
    batch_in_epoch: usize,
    epoch_loss_sum: f64,
    bad_epochs: usize,
    best: Option<(usize, f64)>,
    history: Vec<EpochProgress>,
    adam_t: usize,
}

const STATE_KEY: &str = "tailor.train_state";

impl TrainState {
    /// A safetensors file: tensors under `param/`, `m/`, `v/`, `best/`, the rest as JSON
    /// in the header.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let meta = StateMeta {
            seed: self.seed,
            step: self.step,
            epoch: self.epoch,
            batch_in_epoch: self.batch_in_epoch,
            epoch_loss_sum: self.epoch_loss_sum,
            bad_epochs: self.bad_epochs,
            best: self.best,
            history: self.history.clone(),
            adam_t: self.adam_t,
        };
        let mut tensors = Vec::new();
        for (prefix, list) in [
            ("param", &self.params),
            ("m", &self.adam_m),
            ("v", &self.adam_v),
            ("best", &self.best_params),
        ] {
            tensors.extend(
                list.iter()
                    .map(|(n, t)| (format!("{prefix}/{n}"), t.clone())),
            );
        }
        let header = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(&meta)?)]);
        Ok(serialize_f32(&tensors, header)?)
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .context("reading a checkpoint header")?;
        let meta: StateMeta = serde_json::from_str(
            header
                .metadata()
                .as_ref()
                .and_then(|m| m.get(STATE_KEY))
                .context("not a training checkpoint")?,
        )?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let mut lists: [Vec<(String, Tensor)>; 4] = Default::default();
        let mut sorted: Vec<_> = tensors.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in sorted {
            let (prefix, rest) = name.split_once('/').context("bad checkpoint tensor name")?;
            let slot = match prefix {
                "param" => 0,
                "m" => 1,
                "v" => 2,
                "best" => 3,
                _ => bail!("unknown checkpoint tensor {name}"),
            };
            lists[slot].push((rest.to_string(), t));
        }
        let [params, adam_m, adam_v, best_params] = lists;
        Ok(Self {
            seed: meta.seed,
            step: meta.step,
            epoch: meta.epoch,
            batch_in_epoch: meta.batch_in_epoch,
            epoch_loss_sum: meta.epoch_loss_sum,
            bad_epochs: meta.bad_epochs,
            best: meta.best,
            history: meta.history,
            adam_t: meta.adam_t,
            params,
            adam_m,
            adam_v,
            best_params,
        })
    }
}

/// How to run [`train`].
pub struct TrainOptions<'a> {
    /// Train LoRA adapters (the tuned model); `false` trains the heads on the frozen
    /// encoder (the baseline).
    pub adapters: bool,
    pub cancel: Option<&'a AtomicBool>,
    /// Also emit a checkpoint every this many steps (one is always emitted per epoch).
    pub checkpoint_every: Option<usize>,
    pub resume: Option<TrainState>,
    /// Starting values for some trainable tensors (by their names in
    /// [`Model::trainable`]), e.g. the heads of the baseline run, so that the tuned run
    /// starts from the linear-probe solution (LP-FT). Ignored when resuming.
    pub init: Option<Vec<(String, Tensor)>>,
}

impl Default for TrainOptions<'_> {
    fn default() -> Self {
        Self {
            adapters: true,
            cancel: None,
            checkpoint_every: None,
            resume: None,
            init: None,
        }
    }
}

pub struct TrainOutcome {
    /// With the best epoch's weights (unless cancelled: then the latest).
    pub model: Model,
    pub stop: StopReason,
    pub history: Vec<EpochProgress>,
    pub best_epoch: Option<usize>,
    pub steps: usize,
    /// The state at the end, to resume a cancelled run.
    pub state: TrainState,
    pub train_rows: usize,
    pub validation_rows: usize,
}

/// The seed of an encoder's dropout at `step` (SplitMix64 of seed and step).
fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn snapshot(params: &[(String, Var, Group)]) -> candle_core::Result<Vec<(String, Tensor)>> {
    params
        .iter()
        .map(|(n, v, _)| Ok((n.clone(), v.as_tensor().copy()?)))
        .collect()
}

fn restore(params: &[(String, Var, Group)], saved: &[(String, Tensor)]) -> anyhow::Result<()> {
    let saved: HashMap<&str, &Tensor> = saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, var, _) in params {
        var.set(
            saved
                .get(name.as_str())
                .with_context(|| format!("checkpoint lacks {name}"))?,
        )?;
    }
    Ok(())
}

/// Trains `blueprint` on `data`. Validation rows come from `validation`, or are carved
/// from `data` (stratified, `validation_split`) when it is `None`. With `epochs: 0` no
/// step is taken and no event is sent: the model keeps its initial (or `init`) values and
/// the history is empty.
pub fn train(
    blueprint: &CompiledBlueprint,
    data: &Examples,
    validation: Option<&Examples>,
    factory: &EncoderFactory,
    options: TrainOptions,
    on_event: &mut dyn FnMut(Event<'_>) -> ControlFlow<()>,
) -> anyhow::Result<TrainOutcome> {
    let settings = &blueprint.training;
    let seed = settings.seed;
    let (train_data, val_data) = match validation {
        Some(v) => (data.clone(), v.clone()),
        None => {
            let (kept, held) = stratified_split(&data.rows, settings.validation_split, seed);
            (data.subset(&kept), data.subset(&held))
        }
    };
    if train_data.rows.is_empty() {
        bail!("no rows to train on");
    }
    let phase = if options.adapters && blueprint.adaptation.is_some() {
        Phase::Tuned
    } else {
        Phase::Baseline
    };
    let model = Model::build(blueprint, &train_data, factory, options.adapters)?;
    let params = model.trainable();
    if let (Some(init), None) = (&options.init, &options.resume) {
        let init: HashMap<&str, &Tensor> = init.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, var, _) in &params {
            if let Some(t) = init.get(name.as_str()) {
                var.set(t)
                    .with_context(|| format!("starting {name} from the given values"))?;
            }
        }
    }
    let vars: Vec<Var> = params.iter().map(|(_, v, _)| v.clone()).collect();
    let mut opt = AdamW::new(params.clone(), settings.weight_decay)?;

    let batch = settings.batch_size;
    let n = train_data.rows.len();
    let epochs = settings.epochs_for(n);
    let steps_per_epoch = n.div_ceil(batch);
    let total_steps = epochs * steps_per_epoch;
    let schedule = Schedule::new(settings.schedule, settings.warmup_ratio, total_steps);
    let metric = settings.early_stopping.metric.clone();
    let higher = metrics::higher_is_better(&metric);
    // Early stopping may end a run only once a third of its epochs (and so the warm-up)
    // are done: on 50-500 rows an epoch is a handful of steps, the validation split a
    // few dozen rows, and "no better for 3 epochs" otherwise fires while the rate is
    // still warming up, leaving a barely trained head. The best epoch is still kept.
    let min_epochs = epochs.div_ceil(3);

    let mut st = match options.resume {
        Some(state) => {
            if state.seed != seed {
                bail!(
                    "the checkpoint was made with seed {}, the blueprint has {seed}",
                    state.seed
                );
            }
            restore(&params, &state.params)?;
            let m: HashMap<String, Tensor> = state.adam_m.iter().cloned().collect();
            let v: HashMap<String, Tensor> = state.adam_v.iter().cloned().collect();
            opt.set_moments(&m, &v, state.adam_t)?;
            state
        }
        None => TrainState {
            seed,
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            epoch_loss_sum: 0.0,
            bad_epochs: 0,
            best: None,
            history: Vec::new(),
            adam_t: 0,
            params: Vec::new(),
            adam_m: Vec::new(),
            adam_v: Vec::new(),
            best_params: Vec::new(),
        },
    };
    let capture = |st: &TrainState, opt: &AdamW| -> anyhow::Result<TrainState> {
        let (m, v) = opt.moments()?;
        Ok(TrainState {
            params: snapshot(&params)?,
            adam_m: m,
            adam_v: v,
            adam_t: opt.t,
            ..st.clone()
        })
    };
    let cancelled = |flow: ControlFlow<()>| {
        flow.is_break() || options.cancel.is_some_and(|c| c.load(Ordering::SeqCst))
    };

    // A frozen encoder (the baseline) gives every row the same vector in every epoch:
    // encode the training and validation rows once and train the heads on those vectors
    // (evaluation mode, as a linear probe does), instead of re-running the encoder every
    // step. Tagging heads read token states and keep the full forward.
    let cache = if epochs > 0 && model.frozen() && model.pooled_only() {
        Some((
            model.pooled_features(&train_data.rows, batch)?,
            model.pooled_features(&val_data.rows, batch)?,
        ))
    } else {
        None
    };

    let mut stop = StopReason::Completed;
    'epochs: while st.epoch < epochs {
        let mut order: Vec<usize> = (0..n).collect();
        let mut shuffle = ChaCha8Rng::seed_from_u64(seed);
        shuffle.set_stream((1 << 40) + st.epoch as u64);
        order.shuffle(&mut shuffle);
        let batches: Vec<&[usize]> = order.chunks(batch).collect();
        while st.batch_in_epoch < batches.len() {
            if cancelled(ControlFlow::Continue(())) {
                stop = StopReason::Cancelled;
                break 'epochs;
            }
            let rows: Vec<&Row> = batches[st.batch_in_epoch]
                .iter()
                .map(|&i| &train_data.rows[i])
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream((2 << 40) + st.step as u64);
            for enc in &model.encoders {
                enc.reseed(step_seed(seed, st.step));
            }
            let features = match &cache {
                Some((train_features, _)) => {
                    let idx: Vec<u32> = batches[st.batch_in_epoch]
                        .iter()
                        .map(|&i| i as u32)
                        .collect();
                    let idx = Tensor::new(idx.as_slice(), &Device::Cpu)?;
                    Some(train_features.index_select(&idx, 0)?)
                }
                None => None,
            };
            let f = model.forward(&rows, Some(&mut rng), features)?;
            let loss = model.summed_loss(&rows, &f)?;
            let mut grads = loss.backward()?;
            let grad_norm = clip_grad_norm(&mut grads, &vars, settings.max_grad_norm)?;
            let factor = schedule.factor(st.step);
            let (lr_a, lr_h) = (
                settings.learning_rate * factor,
                settings.head_learning_rate * factor,
            );
            opt.step(&grads, lr_a, lr_h)?;
            let loss = loss.to_scalar::<f32>()? as f64;
            st.step += 1;
            st.batch_in_epoch += 1;
            st.epoch_loss_sum += loss;
            let progress = StepProgress {
                phase,
                step: st.step,
                total_steps,
                epoch: st.epoch,
                loss,
                lr: if phase == Phase::Tuned { lr_a } else { lr_h },
                grad_norm,
            };
            let mut flow = on_event(Event::Step(&progress));
            if let Some(every) = options.checkpoint_every
                && every > 0
                && st.step.is_multiple_of(every)
                && st.batch_in_epoch < batches.len()
            {
                let state = capture(&st, &opt)?;
                if on_event(Event::Checkpoint(&state)).is_break() {
                    flow = ControlFlow::Break(());
                }
            }
            if cancelled(flow) {
                stop = StopReason::Cancelled;
                break 'epochs;
            }
        }

        // End of the epoch: validate, keep the best weights, maybe stop.
        let train_loss = st.epoch_loss_sum / batches.len() as f64;
        let (scores, validation_loss) =
            model.score_with_loss_cached(&val_data, batch, cache.as_ref().map(|c| &c.1))?;
        let value = if metric == "loss" {
            validation_loss
        } else {
            let vals: Vec<f64> = scores.iter().filter_map(|m| m.get(&metric)).collect();
            vals.iter().sum::<f64>() / vals.len().max(1) as f64
        };
        let improved = match st.best {
            None => true,
            Some((_, best)) => {
                if higher {
                    value > best + 1e-12
                } else {
                    value < best - 1e-12
                }
            }
        };
        if improved {
            st.best = Some((st.epoch, value));
            st.best_params = snapshot(&params)?;
            st.bad_epochs = 0;
        } else {
            st.bad_epochs += 1;
        }
        let progress = EpochProgress {
            phase,
            epoch: st.epoch,
            epochs,
            train_loss,
            validation_loss,
            validation: blueprint
                .outputs
                .iter()
                .zip(&scores)
                .map(|(o, m)| (o.name.clone(), m.summary()))
                .collect(),
            metric: metric.clone(),
            value,
            best_epoch: st.best.map_or(st.epoch, |b| b.0),
            improved,
        };
        st.history.push(progress.clone());
        st.epoch += 1;
        st.batch_in_epoch = 0;
        st.epoch_loss_sum = 0.0;
        let patience = settings.early_stopping.patience;
        let early = patience > 0 && st.bad_epochs >= patience && st.epoch >= min_epochs;
        let mut flow = on_event(Event::Epoch(&progress));
        let state = capture(&st, &opt)?;
        if on_event(Event::Checkpoint(&state)).is_break() {
            flow = ControlFlow::Break(());
        }
        if early {
            stop = StopReason::EarlyStopped;
            break;
        }
        if cancelled(flow) && st.epoch < epochs {
            stop = StopReason::Cancelled;
            break;
        }
    }

    let state = capture(&st, &opt)?;
    if stop != StopReason::Cancelled && !st.best_params.is_empty() {
        restore(&params, &st.best_params)?;
    }
    Ok(TrainOutcome {
        model,
        stop,
        history: st.history.clone(),
        best_epoch: st.best.map(|b| b.0),
        steps: st.step,
        state,
        train_rows: train_data.rows.len(),
        validation_rows: val_data.rows.len(),
    })
}
