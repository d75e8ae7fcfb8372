//! Decoders ("heads"): small layers trained from scratch on top of an encoder, one per
//! blueprint output, with the loss and the prediction of each task.
//!
//! - classification: linear or MLP on the pooled vector; cross-entropy, optionally
//!   class-weighted (PyTorch's weighted mean: `Σ w_y·nll / Σ w_y`);
//! - multi-label: one logit per label; binary cross-entropy with logits, in the stable
//!   form `max(x,0) − x·y + log(1 + e^−|x|)`;
//! - regression: one output; MSE on standardized targets, de-standardized at prediction;
//! - tagging: a linear layer on every token state; a word's label sits on its first
//!   sub-token (via `Tokenized::word_ids`), all other tokens are ignored by the loss.
//!
//! Every loss is built from plain differentiable tensor ops (no fused softmax: candle-nn's
//! has no backward). Heads live in a [`VarMap`] so they save to and load from safetensors.

use std::collections::HashMap;

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::blueprint::HeadKind;
use crate::catalog::Task;

/// The target of one output for one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Index into the output's labels.
    Class(usize),
    /// Indices into the output's labels.
    Labels(Vec<usize>),
    Number(f64),
    /// One index into the output's tags per whitespace-separated word.
    Tags(Vec<usize>),
}

/// What a head predicts for one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Class {
        index: usize,
        label: String,
        probabilities: Vec<f32>,
    },
    Labels {
        indices: Vec<usize>,
        labels: Vec<String>,
        probabilities: Vec<f32>,
    },
    Number(f64),
    /// One tag per word of the input.
    Tags {
        indices: Vec<usize>,
        tags: Vec<String>,
    },
}

/// Everything needed to rebuild a head besides its weights; stored beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// The output's name; also the prefix of its tensors.
    pub name: String,
    pub task: Task,
    pub kind: HeadKind,
    pub dropout: f64,
    /// Width of the vectors it reads.
    pub in_width: usize,
    /// Class names, label names or tags (empty for regression).
    pub labels: Vec<String>,
    /// Per-class loss weights (classification and tagging); `None` weighs all alike.
    pub class_weights: Option<Vec<f32>>,
    /// Mean and standard deviation of the training targets (regression).
    pub target_mean: f64,
    pub target_std: f64,
}

impl HeadConfig {
    fn out_width(&self) -> usize {
        match self.task {
            Task::Regression => 1,
            _ => self.labels.len(),
        }
    }
}

struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(vb: &VarBuilder, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let vb = vb.pp(name);
        // Placeholder init: [`Heads::new`] overwrites every tensor from a seeded rng,
        // because candle's CPU rng cannot be seeded.
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
        let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.broadcast_matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)
    }
}

/// One output's decoder.
pub struct Head {
    pub config: HeadConfig,
    hidden: Option<Dense>,
    out: Dense,
}

/// Inverted dropout with a mask from our seeded rng (candle's CPU rng cannot be seeded).
pub fn dropout(xs: &Tensor, p: f64, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let Some(rng) = rng else {
        return Ok(xs.clone());
    };
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..xs.elem_count())
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    xs * Tensor::from_vec(mask, xs.shape(), xs.device())?
}

/// `log_softmax` over the last dimension from differentiable ops; the max is detached
/// (softmax is shift-invariant, so its gradient is zero anyway).
pub fn log_softmax(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Weighted mean negative log-likelihood: `logits` (n, k), `targets` class indices or
/// `None` to ignore a position, `weights` per class (all 1 when `None`).
pub fn cross_entropy(
    logits: &Tensor,
    targets: &[Option<usize>],
    weights: Option<&[f32]>,
) -> Result<Tensor> {
    let device = logits.device();
    let lp = log_softmax(logits)?;
    let idx: Vec<u32> = targets.iter().map(|t| t.unwrap_or(0) as u32).collect();
    let w: Vec<f32> = targets
        .iter()
        .map(|t| match t {
            None => 0.0,
            Some(c) => weights.map_or(1.0, |w| w[*c]),
        })
        .collect();
    let total: f32 = w.iter().sum();
    if total <= 0.0 {
        // Nothing to learn from in this batch (every position ignored): a zero that still
        // depends on the logits, so backward works.
        return lp.sum_all()?.affine(0.0, 0.0);
    }
    let n = idx.len();
    let picked = lp
        .gather(&Tensor::from_vec(idx, (n, 1), device)?, 1)?
        .squeeze(1)?;
    let w = Tensor::from_vec(w, n, device)?;
    (picked * w)?.sum_all()?.affine(-1.0 / total as f64, 0.0)
}

/// Mean binary cross-entropy with logits over every element, in the stable form.
pub fn binary_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let relu = logits.relu()?;
    let log1p = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((relu - (logits * targets)?)? + log1p)?.mean_all()
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// For each item, the token position of each word's first sub-token.
pub fn first_subtokens(word_ids: &[Vec<Option<usize>>]) -> Vec<HashMap<usize, usize>> {
    word_ids
        .iter()
        .map(|ids| {
            let mut first = HashMap::new();
            for (pos, w) in ids.iter().enumerate() {
                if let Some(w) = w {
                    first.entry(*w).or_insert(pos);
                }
            }
            first
        })
        .collect()
}

impl Head {
    fn new(vb: &VarBuilder, config: HeadConfig) -> Result<Self> {
        let vb = vb.pp(&config.name);
        let out_width = config.out_width();
        let (hidden, out) = match config.kind {
            HeadKind::Mlp { hidden } => (
                Some(Dense::new(&vb, "hidden", config.in_width, hidden)?),
                Dense::new(&vb, "out", hidden, out_width)?,
            ),
            HeadKind::Linear | HeadKind::Token => {
                (None, Dense::new(&vb, "out", config.in_width, out_width)?)
            }
        };
        Ok(Self {
            config,
            hidden,
            out,
        })
    }

    /// Logits (or the standardized number) from pooled (b, w) or token (b, s, w) states;
    /// `rng` turns dropout on (training).
    pub fn forward(&self, xs: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let mut xs = dropout(xs, self.config.dropout, rng)?;
        if let Some(hidden) = &self.hidden {
            xs = crate::ops::gelu(&hidden.forward(&xs)?)?;
        }
        self.out.forward(&xs)
    }

    /// The loss of `out` (from [`Head::forward`]) against the rows' targets. Tagging needs
    /// the tokenizer's `word_ids` for the batch.
    pub fn loss(
        &self,
        out: &Tensor,
        targets: &[&Target],
        word_ids: Option<&[Vec<Option<usize>>]>,
    ) -> Result<Tensor> {
        let device = out.device();
        let weights = self.config.class_weights.as_deref();
        match self.config.task {
            Task::Classification => {
                let t: Vec<Option<usize>> = targets
                    .iter()
                    .map(|t| match t {
                        Target::Class(c) => Ok(Some(*c)),
                        other => Err(wrong_target(other, "a class")),
                    })
                    .collect::<Result<_>>()?;
                cross_entropy(out, &t, weights)
            }
            Task::MultiLabel => {
                let k = self.config.labels.len();
                let mut hot = vec![0f32; targets.len() * k];
                for (i, t) in targets.iter().enumerate() {
                    let Target::Labels(ls) = t else {
                        return Err(wrong_target(t, "a label set"));
                    };
                    for l in ls {
                        hot[i * k + l] = 1.0;
                    }
                }
                binary_cross_entropy(out, &Tensor::from_vec(hot, (targets.len(), k), device)?)
            }
            Task::Regression => {
                let (m, s) = (self.config.target_mean, self.config.target_std);
                let z: Vec<f32> = targets
                    .iter()
                    .map(|t| match t {
                        Target::Number(y) => Ok(((y - m) / s) as f32),
                        other => Err(wrong_target(other, "a number")),
                    })
                    .collect::<Result<_>>()?;
                let z = Tensor::from_vec(z, (targets.len(), 1), device)?;
                (out - z)?.sqr()?.mean_all()
            }
            Task::Tagging => {
                let word_ids = word_ids
                    .ok_or_else(|| candle_core::Error::Msg("tagging needs word ids".into()))?;
                let (b, s, k) = out.dims3()?;
                let mut flat = vec![None; b * s];
                for (i, (t, first)) in targets.iter().zip(first_subtokens(word_ids)).enumerate() {
                    let Target::Tags(tags) = t else {
                        return Err(wrong_target(t, "word tags"));
                    };
                    for (w, pos) in first {
                        if let Some(tag) = tags.get(w)
                            && pos < s
                        {
                            flat[i * s + pos] = Some(*tag);
                        }
                    }
                }
                cross_entropy(&out.reshape((b * s, k))?, &flat, weights)
            }
        }
    }

    /// Predictions of a batch. Tagging needs `word_ids` and each row's word count.
    pub fn predict(
        &self,
        out: &Tensor,
        word_ids: Option<&[Vec<Option<usize>>]>,
        words: Option<&[usize]>,
    ) -> Result<Vec<Prediction>> {
        let labels = &self.config.labels;
        match self.config.task {
            Task::Classification => {
                let probs = log_softmax(out)?.exp()?.to_vec2::<f32>()?;
                Ok(probs
                    .into_iter()
                    .map(|p| {
                        let index = argmax(&p);
                        Prediction::Class {
                            index,
                            label: labels[index].clone(),
                            probabilities: p,
                        }
                    })
                    .collect())
            }
            Task::MultiLabel => Ok(out
                .to_vec2::<f32>()?
                .into_iter()
                .map(|row| {
                    let probabilities: Vec<f32> = row.into_iter().map(sigmoid).collect();
                    let indices: Vec<usize> = (0..probabilities.len())
                        .filter(|&l| probabilities[l] >= 0.5)
                        .collect();
                    Prediction::Labels {
                        labels: indices.iter().map(|&l| labels[l].clone()).collect(),
                        indices,
                        probabilities,
                    }
                })
                .collect()),
            Task::Regression => Ok(out
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|z| {
                    Prediction::Number(z as f64 * self.config.target_std + self.config.target_mean)
                })
                .collect()),
            Task::Tagging => {
                let (word_ids, words) = word_ids
                    .zip(words)
                    .ok_or_else(|| candle_core::Error::Msg("tagging needs word ids".into()))?;
                let scores = out.to_vec3::<f32>()?;
                // Words cut off by `max_tokens` are predicted "O" (or the first tag).
                let outside = labels.iter().position(|l| l == "O").unwrap_or(0);
                Ok(scores
                    .into_iter()
                    .zip(first_subtokens(word_ids))
                    .zip(words)
                    .map(|((tokens, first), &n)| {
                        let indices: Vec<usize> = (0..n)
                            .map(|w| first.get(&w).map_or(outside, |&pos| argmax(&tokens[pos])))
                            .collect();
                        Prediction::Tags {
                            tags: indices.iter().map(|&i| labels[i].clone()).collect(),
                            indices,
                        }
                    })
                    .collect())
            }
        }
    }
}

fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .fold(0, |best, (i, x)| if *x > xs[best] { i } else { best })
}

fn wrong_target(t: &Target, wanted: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("expected {wanted} as target, got {t:?}"))
}

/// The heads of all outputs, their tensors in one [`VarMap`].
pub struct Heads {
    pub heads: Vec<Head>,
    varmap: VarMap,
}

impl Heads {
    /// Builds the heads with weights drawn from `seed`: uniform in ±1/√fan_in (PyTorch's
    /// `nn.Linear` default), biases zero.
    pub fn new(configs: Vec<HeadConfig>, seed: u64, device: &Device) -> Result<Self> {
        use rand::SeedableRng;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let heads = configs
            .into_iter()
            .map(|c| Head::new(&vb, c))
            .collect::<Result<Vec<_>>>()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(0x4845_4144); // "HEAD": independent of the shuffling streams.
        let this = Self { heads, varmap };
        for (name, var) in this.vars() {
            if name.ends_with(".weight") {
                let (_, fan_in) = var.dims2()?;
                let bound = 1.0 / (fan_in as f64).sqrt();
                let values: Vec<f32> = (0..var.elem_count())
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                var.set(&Tensor::from_vec(values, var.shape(), device)?)?;
            }
        }
        Ok(this)
    }

    /// Trainable tensors by name (`clause_type.out.weight` …), sorted.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    pub fn configs(&self) -> Vec<HeadConfig> {
        self.heads.iter().map(|h| h.config.clone()).collect()
    }

    /// The heads' tensors as a safetensors file, with their configs in the metadata.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let vars = self.vars();
        let meta = HashMap::from([(
            "tailor.heads".to_string(),
            serde_json::to_string(&self.configs())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
        )]);
        let tensors: Vec<(String, Tensor)> = vars
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        serialize_f32(&tensors, meta)
    }

    /// Rebuilds heads saved by [`Heads::to_safetensors`].
    pub fn from_safetensors(bytes: &[u8], device: &Device) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let configs: Vec<HeadConfig> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("tailor.heads"))
            .ok_or_else(|| candle_core::Error::Msg("no head configs in the file".into()))
            .and_then(|s| {
                serde_json::from_str(s).map_err(|e| candle_core::Error::Msg(e.to_string()))
            })?;
        let heads = Self::new(configs, 0, device)?;
        heads.load_tensors(&candle_core::safetensors::load_buffer(bytes, device)?)?;
        Ok(heads)
    }

    /// Sets every head tensor from `tensors` (all must be present).
    pub fn load_tensors(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.vars() {
            let t = tensors
                .get(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("head tensor {name} is missing")))?;
            var.set(t)?;
        }
        Ok(())
    }
}

struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for F32View {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Named tensors as an f32 safetensors file with `metadata` in its header.
pub fn serialize_f32(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((
                name.as_str(),
                F32View {
                    shape: t.dims().to_vec(),
                    bytes,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}
