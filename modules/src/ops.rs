//! Differentiable building blocks for training on CPU.
//!
//! candle-nn 0.11's fused `layer_norm`, `rms_norm` and `softmax_last_dim` have no backward
//! pass, and `candle_nn::LayerNorm::forward` takes the fused path whenever its input is
//! contiguous: gradients then stop silently at every layer norm and the LoRA adapters below
//! it never learn (DESIGN.md §5). Everything here is composed of plain tensor ops that do
//! have a backward pass, so a model built from these pieces can be trained end to end.
//!
//! Randomness (adapter init, dropout) comes from a [`SeededRng`] rather than candle's CPU
//! generator, which cannot be seeded: the same seed must reproduce the same loss curve.

use std::sync::{Arc, Mutex};

use candle_core::{D, DType, Device, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seeded random generator shared by the layers of one model (init and dropout masks).
///
/// Cloning shares the generator, so a whole model draws from one reproducible stream.
#[derive(Clone, Debug)]
pub struct SeededRng(Arc<Mutex<StdRng>>);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    /// A tensor of `shape` with values drawn uniformly from `[lo, hi)`.
    pub fn uniform(
        &self,
        shape: impl Into<Shape>,
        lo: f32,
        hi: f32,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        let mut rng = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("rng lock poisoned".into()))?;
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        Tensor::from_vec(values, shape, device)
    }

    /// A dropout mask: each element is `0` with probability `p`, else `1 / (1 - p)`.
    fn dropout_mask(&self, shape: &Shape, p: f32, device: &Device) -> Result<Tensor> {
        let keep = 1.0 / (1.0 - p);
        let mut rng = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("rng lock poisoned".into()))?;
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
            .collect();
        Tensor::from_vec(values, shape.clone(), device)
    }
}

/// Layer norm over the last dimension, built from mean/variance ops so it has a backward
/// pass (unlike candle-nn's fused kernel).
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension from `exp`/`sum`, with a backward pass (unlike
/// `candle_nn::ops::softmax_last_dim`).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    // Subtracting the row maximum keeps `exp` finite; softmax is shift-invariant, so the
    // maximum is detached: its gradient contribution is exactly zero anyway.
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// GELU in the exact erf form that BERT uses (`hidden_act: "gelu"`). candle's `gelu_erf`
/// has a backward pass in 0.11 (checked by a test against finite differences).
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    xs.gelu_erf()
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales the
/// rest by `1 / (1 - p)`; outside training (or with `p == 0`) it returns the input as is.
pub fn dropout(xs: &Tensor, p: f32, train: bool, rng: &SeededRng) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(xs.clone());
    }
    if p >= 1.0 {
        candle_core::bail!("dropout probability must be in [0, 1), got {p}")
    }
    let mask = rng
        .dropout_mask(xs.shape(), p, xs.device())?
        .to_dtype(xs.dtype())?;
    xs * mask
}

/// A layer norm whose forward pass is differentiable; loads `weight` and `bias` as plain
/// (frozen) tensors. Older checkpoints that name them `gamma`/`beta` load too.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        let (weight, bias) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
            (vb.get(size, "weight")?, vb.get(size, "bias")?)
        } else {
            (vb.get(size, "gamma")?, vb.get(size, "beta")?)
        };
        Ok(Self::new(weight, bias, eps))
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

/// A frozen linear layer: `y = x W^T + b`, with `W` (out × in) and `b` as plain tensors
/// (never `Var`s, so an optimizer over the model's vars can never touch them).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Ok(Self::new(weight, Some(bias)))
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub(crate) fn set_weight(&mut self, weight: Tensor) {
        self.weight = weight;
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = matmul_t(xs, &self.weight)?;
        match &self.bias {
            Some(bias) => ys.broadcast_add(bias),
            None => Ok(ys),
        }
    }
}

/// `xs W^T` for `xs` of shape (…, in) and `W` of shape (out, in).
///
/// The leading dimensions are flattened into one so that a single 2-D GEMM runs (instead of
/// a batched matmul over a broadcast copy of `W`); `W^T` is a strided view, which the CPU
/// GEMM reads without copying.
pub fn matmul_t(xs: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = xs.dims();
    let in_dim = *dims
        .last()
        .ok_or_else(|| candle_core::Error::Msg("matmul of a scalar".into()))?;
    let rows = xs.elem_count() / in_dim.max(1);
    let xs2 = xs.reshape((rows, in_dim))?;
    let ys = xs2.matmul(&w.t()?)?;
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = w.dim(0)?;
    }
    ys.reshape(out_dims)
}

/// The dtype all of Tailor's CPU training runs in.
pub const DTYPE: DType = DType::F32;
