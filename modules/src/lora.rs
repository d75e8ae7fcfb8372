//! LoRA: a low-rank, trainable update beside a frozen linear layer.
//!
//! `y = x W^T + b + scale · (dropout(x) A^T) B^T` with `A` (rank × in), `B` (out × rank) and
//! `scale = alpha / rank`, as Hugging Face PEFT defines it. `A` starts Kaiming-uniform
//! (PEFT's `kaiming_uniform_(a = √5)`, i.e. `U(-1/√in, 1/√in)`), `B` starts at zero, so an
//! untrained adapter leaves the base model's outputs exactly as they were. Only `A` and `B`
//! are `Var`s; the base weight and bias are plain tensors.

use candle_core::{Module, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::ops::{self, Linear, SeededRng};

/// How a model is adapted: the blueprint's `adaptation` block (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f32,
    /// Module names as PEFT's `target_modules` takes them (matched as a suffix of a module
    /// path at a `.` boundary); each encoder documents the names it has.
    pub targets: Vec<String>,
}

/// The adapter a blueprint's `adaptation` asks for, as every encoder's LoRA layers take it.
impl From<&crate::blueprint::LoraSettings> for LoraConfig {
    fn from(l: &crate::blueprint::LoraSettings) -> Self {
        Self {
            rank: l.rank,
            alpha: l.alpha,
            dropout: l.dropout as f32,
            targets: l.targets.clone(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Refuses a configuration no adapter can be built from; names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.rank == 0 {
            return Err("adaptation.rank must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err("adaptation.alpha must be a positive number".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("adaptation.dropout must be in [0, 1)".into());
        }
        if self.targets.is_empty() {
            return Err("adaptation.targets must name at least one module".into());
        }
        Ok(())
    }
}

/// A frozen linear layer with a LoRA adapter beside it.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    /// (rank, in)
    a: Var,
    /// (out, rank)
    b: Var,
    scale: f64,
    dropout: f32,
    rng: SeededRng,
    merged: bool,
}

impl LoraLinear {
    /// Wraps `base` with a fresh adapter: `A` Kaiming-uniform from `rng`, `B` zeros.
    pub fn new(base: Linear, cfg: &LoraConfig, rng: &SeededRng) -> Result<Self> {
        if let Err(msg) = cfg.validate() {
            candle_core::bail!("{msg}")
        }
        let (out_dim, in_dim) = (base.out_dim(), base.in_dim());
        let device = base.weight().device().clone();
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a = Var::from_tensor(&rng.uniform((cfg.rank, in_dim), -bound, bound, &device)?)?;
        let b = Var::zeros((out_dim, cfg.rank), base.weight().dtype(), &device)?;
        Ok(Self {
            base,
            a,
            b,
            scale: cfg.scale(),
            dropout: cfg.dropout,
            rng: rng.clone(),
            merged: false,
        })
    }

    /// The `A` matrix (rank × in).
    pub fn a(&self) -> &Var {
        &self.a
    }

    /// The `B` matrix (out × rank).
    pub fn b(&self) -> &Var {
        &self.b
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn base(&self) -> &Linear {
        &self.base
    }

    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// `scale · B A` (out × in), the update the adapter adds to the base weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        (self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?
            .detach()
            .contiguous()
    }

    /// Folds the adapter into the base weight, so inference costs one matmul. Training a
    /// merged layer is not meaningful (the adapter path is skipped), so merge for serving.
    pub fn merge(&mut self) -> Result<()> {
        if !self.merged {
            let merged = (self.base.weight() + self.delta_weight()?)?;
            self.base.set_weight(merged);
            self.merged = true;
        }
        Ok(())
    }

    /// Takes the adapter back out of the base weight (the inverse of [`Self::merge`]).
    pub fn unmerge(&mut self) -> Result<()> {
        if self.merged {
            let unmerged = (self.base.weight() - self.delta_weight()?)?;
            self.base.set_weight(unmerged);
            self.merged = false;
        }
        Ok(())
    }

    /// Forward pass; `train` turns the adapter's input dropout on.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let base = self.base.forward(xs)?;
        if self.merged {
            return Ok(base);
        }
        let dropped = ops::dropout(xs, self.dropout, train, &self.rng)?;
        let low = ops::matmul_t(&dropped, self.a.as_tensor())?;
        let update = ops::matmul_t(&low, self.b.as_tensor())?;
        base + (update * self.scale)?
    }
}

impl Module for LoraLinear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_t(xs, false)
    }
}

/// A linear layer that is either frozen as loaded or carries a LoRA adapter.
#[derive(Debug, Clone)]
pub enum MaybeLora {
    Frozen(Linear),
    Lora(LoraLinear),
}

impl MaybeLora {
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Frozen(linear) => linear.forward(xs),
            Self::Lora(lora) => lora.forward_t(xs, train),
        }
    }

    pub fn lora(&self) -> Option<&LoraLinear> {
        match self {
            Self::Frozen(_) => None,
            Self::Lora(lora) => Some(lora),
        }
    }

    pub fn lora_mut(&mut self) -> Option<&mut LoraLinear> {
        match self {
            Self::Frozen(_) => None,
            Self::Lora(lora) => Some(lora),
        }
    }
}
