//! Small trainable layers for the parts Tailor trains from scratch: the tabular, sensor and
//! point-cloud encoders and the attention fusion.
//!
//! Every tensor is a `Var` registered under a stable, dotted name (`mlp.0.weight`), so the
//! training loop can optimize it ([`crate::encoder::Encoder::trained_vars`]) and a package
//! can save it and set it back by name. Initialization is seeded (ChaCha), so the same seed
//! gives the same model; linear weights are drawn as PyTorch's default (`U(±1/√in)`), and
//! everything is built from ops with a backward pass (the layer norm is [`ops::layer_norm`]).

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ops;

/// Creates named, seeded `Var`s and remembers them.
pub struct Init {
    rng: ChaCha8Rng,
    prefix: String,
    vars: Vec<(String, Var)>,
}

impl Init {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            prefix: String::new(),
            vars: Vec::new(),
        }
    }

    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `build` with `name.` prepended to the names it gives.
    pub fn scope<T>(
        &mut self,
        name: &str,
        build: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let before = self.prefix.clone();
        self.prefix = format!("{before}{name}.");
        let out = build(self);
        self.prefix = before;
        out
    }

    fn register(&mut self, name: &str, tensor: Tensor) -> Result<Var> {
        let var = Var::from_tensor(&tensor)?;
        self.vars.push((self.name(name), var.clone()));
        Ok(var)
    }

    /// Values drawn uniformly from `[-bound, bound)`.
    pub fn uniform(&mut self, name: &str, shape: &[usize], bound: f32) -> Result<Var> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-bound..bound))
            .collect();
        self.register(name, Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Var> {
        let t = (Tensor::ones(shape, DType::F32, &Device::Cpu)? * value as f64)?;
        self.register(name, t)
    }

    /// `y = x Wᵀ + b`, `W` (out × in).
    pub fn linear(&mut self, name: &str, in_dim: usize, out_dim: usize) -> Result<Dense> {
        let bound = 1.0 / (in_dim.max(1) as f32).sqrt();
        self.scope(name, |s| {
            Ok(Dense {
                weight: s.uniform("weight", &[out_dim, in_dim], bound)?,
                bias: s.constant("bias", &[out_dim], 0.0)?,
            })
        })
    }

    pub fn layer_norm(&mut self, name: &str, width: usize) -> Result<Norm> {
        self.scope(name, |s| {
            Ok(Norm {
                weight: s.constant("weight", &[width], 1.0)?,
                bias: s.constant("bias", &[width], 0.0)?,
            })
        })
    }

    /// The vars created so far, by name.
    pub fn finish(self) -> Vec<(String, Var)> {
        self.vars
    }
}

/// A trainable linear layer over the last dimension.
#[derive(Clone)]
pub struct Dense {
    pub weight: Var,
    pub bias: Var,
}

impl Dense {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::matmul_t(xs, self.weight.as_tensor())?.broadcast_add(self.bias.as_tensor())
    }
}

/// A trainable layer norm over the last dimension (differentiable, see [`ops::layer_norm`]).
#[derive(Clone)]
pub struct Norm {
    pub weight: Var,
    pub bias: Var,
}

impl Norm {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::layer_norm(xs, self.weight.as_tensor(), self.bias.as_tensor(), 1e-5)
    }
}

/// The mean of `xs` (batch, steps, width) over the steps where `mask` (batch, steps) is 1.
/// A row with no real step gives zeros.
pub fn masked_mean(xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(2)?;
    let count = m.sum(1)?.clamp(1.0, f64::MAX)?;
    xs.broadcast_mul(&m)?.sum(1)?.broadcast_div(&count)
}

/// The maximum of `xs` (batch, steps, width) over the steps where `mask` is 1 (padding
/// pushed far below any real value first). A row with no real step gives zeros.
pub fn masked_max(xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(2)?;
    let shifted = xs.broadcast_add(&((m.ones_like()? - &m)? * -1e9)?)?;
    let any = mask.max_keepdim(1)?;
    shifted.max(1)?.broadcast_mul(&any)
}

/// Sets `var` to `values` (a fitted statistic), keeping its shape.
pub fn set_values(var: &Var, values: Vec<f32>) -> Result<()> {
    let t = Tensor::from_vec(values, var.shape(), &Device::Cpu)?;
    var.set(&t)
}
