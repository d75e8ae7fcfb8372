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

use candle_core::cpu::erf::erf_f32;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, D, DType, Device, Layout, Module, Result, Shape, Tensor,
};
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

    /// Restarts the shared stream from `seed` (every clone sees it): the training loop
    /// re-seeds before each step so a resumed run draws the same dropout masks.
    pub fn reseed(&self, seed: u64) {
        // A poisoned lock only means another thread panicked mid-draw; the state is
        // replaced wholesale, so it is safe to take over.
        let mut rng = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *rng = StdRng::seed_from_u64(seed);
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
        // Raw 32-bit draws filled in blocks are several times cheaper than one float draw
        // per element; an element is dropped when its draw falls below `p · 2³²`.
        let mut bits = vec![0u32; shape.elem_count()];
        rng.fill(&mut bits[..]);
        let threshold = (p as f64 * 4_294_967_296.0) as u64;
        let values: Vec<f32> = bits
            .iter()
            .map(|&b| if (b as u64) < threshold { 0.0 } else { keep })
            .collect();
        Tensor::from_vec(values, shape.clone(), device)
    }
}

/// Layer norm over the last dimension, with a backward pass (unlike candle-nn's fused
/// kernel). On CPU f32 the normalization is one fused op with a hand-written backward
/// ([`Normalize`]); the affine `x̂ · weight + bias` stays in plain ops, so a `Var` weight or
/// bias (in a head) gets its gradient too.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_path(xs) && xs.track_op() && !weight.track_op() && !bias.track_op() {
        // Frozen affine (the encoder's own layer norms): candle's backward would also
        // compute the unused gradients of `weight` and `bias`; only `dx` is attached.
        let x = xs.detach().contiguous()?;
        let ys = x
            .apply_op1_no_bwd(&Normalize { eps })?
            .broadcast_mul(weight)?
            .broadcast_add(bias)?;
        let weight = weight.clone();
        return with_input_grad(xs, &ys, "tailor-layer-norm-frozen-affine", move |g| {
            x.apply_op2_no_bwd(
                &g.broadcast_mul(&weight)?.contiguous()?,
                &NormalizeBackward { eps },
            )
        });
    }
    let normed = if fused_path(xs) {
        xs.contiguous()?.apply_op1(Normalize { eps })?
    } else {
        normalize_composed(xs, eps)?
    };
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// The same as [`layer_norm`] from mean/variance tensor ops only (any device or dtype;
/// the reference the fused op is tested against).
pub fn layer_norm_composed(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    normalize_composed(xs, eps)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

fn normalize_composed(xs: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Softmax over the last dimension, with a backward pass (unlike
/// `candle_nn::ops::softmax_last_dim`): one fused op with a hand-written backward on CPU
/// f32, plain tensor ops elsewhere.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if fused_path(xs) {
        xs.contiguous()?.apply_op1(Softmax)
    } else {
        softmax_last_dim_composed(xs)
    }
}

/// Softmax from `exp`/`sum` tensor ops only.
pub fn softmax_last_dim_composed(xs: &Tensor) -> Result<Tensor> {
    // Subtracting the row maximum keeps `exp` finite; softmax is shift-invariant, so the
    // maximum is detached: its gradient contribution is exactly zero anyway.
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// GELU in the exact erf form that BERT uses (`hidden_act: "gelu"`). candle's `gelu_erf`
/// has a correct backward pass in 0.11, but composes it from eight element-wise ops; on CPU
/// f32 this is one fused op with a one-pass backward.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    if fused_path(xs) {
        xs.contiguous()?.apply_op1(GeluErf)
    } else {
        xs.gelu_erf()
    }
}

fn fused_path(xs: &Tensor) -> bool {
    xs.device().is_cpu()
        && xs.dtype() == DType::F32
        && xs.rank() > 0
        && xs.dim(D::Minus1).is_ok_and(|d| d > 0)
}

/// The f32 values of a contiguous CPU tensor's storage.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused op on a non-contiguous tensor"),
    }
}

fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

/// Applies `f` to each row (last dimension) of one contiguous f32 input, writing the
/// output row of the same shape.
fn map_rows(
    storage: &CpuStorage,
    layout: &Layout,
    mut f: impl FnMut(&[f32], &mut [f32]),
) -> Result<(CpuStorage, Shape)> {
    let xs = f32_slice(storage, layout)?;
    let dim = last_dim(layout);
    let mut out = vec![0f32; xs.len()];
    for (row, out) in xs.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        f(row, out);
    }
    Ok((CpuStorage::F32(out), layout.shape().clone()))
}

/// Like [`map_rows`] over the matching rows of two inputs of one shape (a backward pass:
/// the forward's input or output, and the incoming gradient).
fn map_rows2(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    mut f: impl FnMut(&[f32], &[f32], &mut [f32]),
) -> Result<(CpuStorage, Shape)> {
    let (xs, gs) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
    let dim = last_dim(l1);
    let mut out = vec![0f32; xs.len()];
    for ((row, g), out) in xs
        .chunks_exact(dim)
        .zip(gs.chunks_exact(dim))
        .zip(out.chunks_exact_mut(dim))
    {
        f(row, g, out);
    }
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

/// `(x - mean) / sqrt(var + eps)` per row of the last dimension.
struct Normalize {
    eps: f64,
}

/// Mean and `1 / sqrt(var + eps)` of a row, in f64 for accuracy.
fn row_stats(row: &[f32], eps: f64) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "tailor-normalize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        map_rows(storage, layout, |row, out| {
            let (mean, inv_std) = row_stats(row, self.eps);
            for (o, &v) in out.iter_mut().zip(row) {
                *o = ((v as f64 - mean) * inv_std) as f32;
            }
        })
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &NormalizeBackward { eps: self.eps },
        )?))
    }
}

/// `dx = (g - mean(g) - x̂ · mean(g · x̂)) / σ`, from the input `x` and the gradient `g`.
struct NormalizeBackward {
    eps: f64,
}

impl CustomOp2 for NormalizeBackward {
    fn name(&self) -> &'static str {
        "tailor-normalize-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_rows2((s1, l1), (s2, l2), |row, g, out| {
            let (mean, inv_std) = row_stats(row, self.eps);
            let n = row.len() as f64;
            let (mut g_mean, mut gx_mean) = (0f64, 0f64);
            for (&v, &g) in row.iter().zip(g) {
                g_mean += g as f64;
                gx_mean += g as f64 * (v as f64 - mean) * inv_std;
            }
            g_mean /= n;
            gx_mean /= n;
            for ((o, &v), &g) in out.iter_mut().zip(row).zip(g) {
                let x_hat = (v as f64 - mean) * inv_std;
                *o = ((g as f64 - g_mean - x_hat * gx_mean) * inv_std) as f32;
            }
        })
    }
}

/// Softmax over the last dimension.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "tailor-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        map_rows(storage, layout, |row, out| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in out.iter_mut().zip(row) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|o| *o *= inv);
        })
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &SoftmaxBackward { scale: 1.0 },
        )?))
    }
}

/// `dx = scale · y · (g - Σ g·y)` from the softmax output `y` and the gradient `g`
/// (`scale` is the factor the logits were multiplied by, 1 for a plain softmax).
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "tailor-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_rows2((s1, l1), (s2, l2), |y, g, out| {
            let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
            for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
                *o = self.scale * y * (g - dot);
            }
        })
    }
}

/// Attention weights: softmax over keys of `scale · scores`, with padding keys (mask 0)
/// pushed to a large negative logit so they get zero weight. `scores` is
/// (batch, heads, queries, keys), `mask` (batch, keys) with 1 for real tokens. On CPU f32 the
/// scale, mask and softmax are one op with a one-pass backward; the gradient goes to
/// `scores` only.
pub fn attention_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, _, k) = scores.dims4()?;
    if fused_path(scores) {
        let mask = mask.to_dtype(DType::F32)?.contiguous()?;
        if mask.dims() != [b, k] {
            candle_core::bail!(
                "attention mask {:?} does not fit scores {:?}",
                mask.dims(),
                scores.dims()
            )
        }
        return scores.contiguous()?.apply_op2(
            &mask,
            AttentionSoftmax {
                scale: scale as f32,
            },
        );
    }
    let bias = ((mask.to_dtype(scores.dtype())? - 1.0)? * MASKED_LOGIT)?.reshape((b, 1, 1, k))?;
    softmax_last_dim_composed(&(scores * scale)?.broadcast_add(&bias)?)
}

/// What a padding key's logit becomes (its weight underflows to exactly zero).
const MASKED_LOGIT: f64 = 1e9;

struct AttentionSoftmax {
    scale: f32,
}

impl CustomOp2 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "tailor-attention-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, mask) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let keys = last_dim(l1);
        let batch = l1.dims()[0].max(1);
        let rows_per_item = xs.len() / keys.max(1) / batch;
        let mut out = vec![0f32; xs.len()];
        for (r, (row, out)) in xs
            .chunks_exact(keys)
            .zip(out.chunks_exact_mut(keys))
            .enumerate()
        {
            let m = &mask[(r / rows_per_item.max(1)) * keys..][..keys];
            let mut max = f32::NEG_INFINITY;
            for ((o, &x), &m) in out.iter_mut().zip(row).zip(m) {
                *o = self.scale * x + (m - 1.0) * MASKED_LOGIT as f32;
                max = max.max(*o);
            }
            let mut sum = 0f32;
            for o in out.iter_mut() {
                *o = (*o - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            out.iter_mut().for_each(|o| *o *= inv);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx =
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

/// `x Φ(x)`, Φ the standard normal CDF.
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "tailor-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout)?;
        let out = xs
            .iter()
            .map(|&v| (erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v)
            .collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfBackward)?,
        ))
    }
}

/// `g · (Φ(x) + x φ(x))`, φ the standard normal density.
struct GeluErfBackward;

impl CustomOp2 for GeluErfBackward {
    fn name(&self) -> &'static str {
        "tailor-gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (xs, gs) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        // 1 / sqrt(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let out = xs
            .iter()
            .zip(gs)
            .map(|(&x, &g)| {
                let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
                g * (cdf + x * pdf)
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
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
    if fused_path(xs) && xs.track_op() {
        // Only `dx = g · mask`: a plain product would also compute the mask's gradient.
        let ys = (xs.detach() * &mask)?;
        return with_input_grad(xs, &ys, "tailor-dropout", move |g| g * &mask);
    }
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

impl Linear {
    fn forward_untracked(&self, xs: &Tensor) -> Result<Tensor> {
        let ys = matmul_t(xs, &self.weight)?;
        match &self.bias {
            Some(bias) => ys.broadcast_add(bias),
            None => Ok(ys),
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !(fused_path(xs) && xs.track_op()) || self.weight.track_op() {
            return self.forward_untracked(xs);
        }
        // candle's matmul backward computes the gradient of both operands, so a frozen
        // weight would cost a second, discarded GEMM (and a bias reduction) per layer in
        // every backward pass. Only `dx = g W` is attached instead.
        let ys = self.forward_untracked(&xs.detach())?;
        let (weight, in_dims) = (self.weight.clone(), xs.dims().to_vec());
        with_input_grad(xs, &ys, "tailor-frozen-linear", move |g| {
            let out_dim = weight.dim(0)?;
            let rows = g.elem_count() / out_dim.max(1);
            g.reshape((rows, out_dim))?
                .matmul(&weight)?
                .reshape(in_dims.as_slice())
        })
    }
}

type InputGradFn = dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync;

/// Returns `ys` (computed without tracking from `xs`) as a tensor whose backward pass
/// sends `backward(grad of ys)` to `xs` and nothing anywhere else.
fn with_input_grad(
    xs: &Tensor,
    ys: &Tensor,
    name: &'static str,
    backward: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    xs.apply_op2(
        &ys.contiguous()?,
        InputGrad {
            name,
            backward: Box::new(backward),
        },
    )
}

struct InputGrad {
    name: &'static str,
    backward: Box<InputGradFn>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        self.name
    }

    /// The result is the precomputed `ys` (a copy: a custom op must return new storage).
    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(f32_slice(s2, l2)?.to_vec()),
            l2.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _xs: &Tensor,
        _ys: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.backward)(grad)?), None))
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
