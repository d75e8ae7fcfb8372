//! Fusion: how the encoders' outputs of a row become the one vector the heads read.
//!
//! Inputs other than text may be missing in some rows (`Encoded::present` is 0 there: no
//! image for this report, no vitals for this patient). Fusion masks them; it never lets a
//! missing input's (meaningless) vector reach the heads:
//!
//! - `concat`: the pooled vectors side by side. A missing input's vector is replaced by
//!   zeros **and** a presence indicator (1 present, 0 missing) is appended per non-text
//!   input, so "missing" is a feature of its own, not a silent zero vector. The heads' first
//!   layer is linear, so its weights on the indicator are exactly a learned substitute
//!   vector (`W·m·(1 − present)`), without parameters in the fusion itself — which keeps a
//!   frozen baseline's fused vectors cacheable. A text input is never missing (an absent
//!   text is empty) and adds no indicator, so a text-only model is the plain concatenation.
//! - `mean`: the average of the pooled vectors of the inputs present in the row.
//! - `attention`: every input becomes a set of tokens — its token states when its encoder
//!   gives more than one, else its pooled vector as one token — projected to a common width
//!   (64) with a learned per-input ("modality") embedding added. A learned fusion token is
//!   put in front, and one pre-norm transformer layer (4-head self-attention, then a GELU
//!   MLP, differentiable layer norms) runs over all tokens with a key mask that hides
//!   padding and every token of a missing input. The fusion token's final state,
//!   layer-normed, is the fused vector. Its weights train with the heads.
//!
//! The attention fusion's tensors are [`FusionLayer::vars`], named `fusion.{name}` in
//! `Model::trainable` (e.g. `fusion.layer.qkv.weight`, `fusion.inputs.1.proj.weight`);
//! `concat` and `mean` have none.

use candle_core::{D, DType, Device, Result, Tensor, Var};

use crate::blueprint::Fusion;
use crate::catalog::{Modality, ModuleKind, ModuleSpec, WeightSource};
use crate::encoder::Encoded;
use crate::layers::{Dense, Init, Norm};
use crate::ops;

/// Width of the attention fusion's tokens and of its output.
pub const ATTENTION_WIDTH: usize = 64;
const HEADS: usize = 4;
const MLP_WIDTH: usize = 128;

/// One input as fusion sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusionInput {
    pub modality: Modality,
    pub width: usize,
}

impl FusionInput {
    /// Text is never missing (an absent text is empty); everything else may be.
    fn may_be_missing(&self) -> bool {
        self.modality != Modality::Text
    }
}

/// The catalog entry of the `attention` fusion.
pub fn attention_spec() -> ModuleSpec {
    ModuleSpec {
        id: "attention".into(),
        kind: ModuleKind::Fusion,
        title: "Cross-modal attention".into(),
        description: "Each input as tokens with a learned modality embedding, one trainable \
                      transformer layer over all of them; missing inputs are masked."
            .into(),
        modality: None,
        output_width: Some(ATTENTION_WIDTH),
        tasks: vec![],
        lora_targets: vec![],
        default_lora_targets: vec![],
        params: vec![],
        weights: WeightSource::None,
    }
}

/// The width of the fused vector.
pub fn fused_width(kind: Fusion, inputs: &[FusionInput]) -> usize {
    match kind {
        Fusion::Concat => inputs
            .iter()
            .map(|i| i.width + usize::from(i.may_be_missing()))
            .sum(),
        Fusion::Mean => inputs.first().map_or(0, |i| i.width),
        Fusion::Attention => ATTENTION_WIDTH,
    }
}

struct InputProjection {
    proj: Dense,
    modality: Var,
}

struct Attention {
    cls: Var,
    inputs: Vec<InputProjection>,
    norm1: Norm,
    qkv: Dense,
    out: Dense,
    norm2: Norm,
    mlp0: Dense,
    mlp1: Dense,
    norm: Norm,
}

/// The fusion of a model, with its trainable tensors (attention only).
pub struct FusionLayer {
    kind: Fusion,
    inputs: Vec<FusionInput>,
    attention: Option<Attention>,
    vars: Vec<(String, Var)>,
}

impl FusionLayer {
    pub fn new(kind: Fusion, inputs: &[FusionInput], seed: u64) -> Result<Self> {
        if inputs.is_empty() {
            candle_core::bail!("fusion needs at least one input");
        }
        if kind == Fusion::Mean && inputs.windows(2).any(|w| w[0].width != w[1].width) {
            let widths: Vec<usize> = inputs.iter().map(|i| i.width).collect();
            candle_core::bail!("mean fusion needs encoders of equal width, got {widths:?}");
        }
        let mut init = Init::new(seed ^ 0xF0_5E_F0_5E);
        let attention = match kind {
            Fusion::Attention => {
                let d = ATTENTION_WIDTH;
                let cls = init.uniform("cls", &[1, 1, d], 0.1)?;
                let projections = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, input)| {
                        init.scope(&format!("inputs.{i}"), |s| {
                            Ok(InputProjection {
                                proj: s.linear("proj", input.width, d)?,
                                modality: s.uniform("modality", &[d], 0.1)?,
                            })
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let (norm1, qkv, out, norm2, mlp0, mlp1) = init.scope("layer", |s| {
                    Ok((
                        s.layer_norm("norm1", d)?,
                        s.linear("qkv", d, 3 * d)?,
                        s.linear("out", d, d)?,
                        s.layer_norm("norm2", d)?,
                        s.linear("mlp.0", d, MLP_WIDTH)?,
                        s.linear("mlp.1", MLP_WIDTH, d)?,
                    ))
                })?;
                let norm = init.layer_norm("norm", d)?;
                Some(Attention {
                    cls,
                    inputs: projections,
                    norm1,
                    qkv,
                    out,
                    norm2,
                    mlp0,
                    mlp1,
                    norm,
                })
            }
            Fusion::Concat | Fusion::Mean => None,
        };
        Ok(Self {
            kind,
            inputs: inputs.to_vec(),
            attention,
            vars: init.finish(),
        })
    }

    pub fn kind(&self) -> Fusion {
        self.kind
    }

    /// Width of the fused vector.
    pub fn width(&self) -> usize {
        fused_width(self.kind, &self.inputs)
    }

    /// The trainable tensors, by stable name (empty for `concat` and `mean`).
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    /// Fuses one batch: `encoded[i]` is input `i`'s output. Returns (batch, width).
    pub fn forward(&self, encoded: &[Encoded]) -> Result<Tensor> {
        if encoded.len() != self.inputs.len() {
            candle_core::bail!(
                "fusion was built for {} inputs, got {}",
                self.inputs.len(),
                encoded.len()
            );
        }
        let b = encoded[0].pooled.dim(0)?;
        let present = |e: &Encoded| -> Result<Tensor> {
            match &e.present {
                Some(p) => p.to_dtype(DType::F32)?.reshape((b, 1)),
                None => Tensor::ones((b, 1), DType::F32, &Device::Cpu),
            }
        };
        match self.kind {
            Fusion::Concat => {
                let mut parts = Vec::new();
                for (e, input) in encoded.iter().zip(&self.inputs) {
                    if input.may_be_missing() {
                        let p = present(e)?;
                        parts.push(e.pooled.broadcast_mul(&p)?);
                        parts.push(p);
                    } else {
                        parts.push(e.pooled.clone());
                    }
                }
                if parts.len() == 1 {
                    return Ok(parts.remove(0));
                }
                Tensor::cat(&parts, 1)
            }
            Fusion::Mean => {
                let mut sum: Option<Tensor> = None;
                let mut count: Option<Tensor> = None;
                for e in encoded {
                    let p = present(e)?;
                    let v = e.pooled.broadcast_mul(&p)?;
                    sum = Some(match sum {
                        None => v,
                        Some(s) => (s + v)?,
                    });
                    count = Some(match count {
                        None => p,
                        Some(c) => (c + p)?,
                    });
                }
                let (sum, count) = (sum.expect("one input"), count.expect("one input"));
                sum.broadcast_div(&count.clamp(1.0, f64::MAX)?)
            }
            Fusion::Attention => {
                let att = self
                    .attention
                    .as_ref()
                    .ok_or_else(|| candle_core::Error::Msg("attention weights missing".into()))?;
                att.forward(encoded, b, present)
            }
        }
    }
}

impl Attention {
    fn forward(
        &self,
        encoded: &[Encoded],
        b: usize,
        present: impl Fn(&Encoded) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let d = ATTENTION_WIDTH;
        let mut tokens = vec![self.cls.as_tensor().broadcast_as((b, 1, d))?];
        let mut masks = vec![Tensor::ones((b, 1), DType::F32, &Device::Cpu)?];
        for (e, p) in encoded.iter().zip(&self.inputs) {
            let (states, mask) = if e.tokens.dim(1)? > 1 {
                (e.tokens.clone(), e.mask.to_dtype(DType::F32)?)
            } else {
                (
                    e.pooled.unsqueeze(1)?,
                    Tensor::ones((b, 1), DType::F32, &Device::Cpu)?,
                )
            };
            let x = p
                .proj
                .forward(&states)?
                .broadcast_add(p.modality.as_tensor())?;
            tokens.push(x);
            masks.push(mask.broadcast_mul(&present(e)?)?);
        }
        let xs = Tensor::cat(&tokens, 1)?;
        let mask = Tensor::cat(&masks, 1)?;
        let s = xs.dim(1)?;
        let dh = d / HEADS;

        // Self-attention (pre-norm), keys masked.
        let qkv = self.qkv.forward(&self.norm1.forward(&xs)?)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * d, d)?
                .reshape((b, s, HEADS, dh))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
        let weights = ops::attention_softmax(&scores, &mask, 1.0 / (dh as f64).sqrt())?;
        let ctx = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, d))?;
        let xs = (xs + self.out.forward(&ctx)?)?;

        // MLP (pre-norm).
        let h = ops::gelu(&self.mlp0.forward(&self.norm2.forward(&xs)?)?)?;
        let xs = (&xs + self.mlp1.forward(&h)?)?;

        // The fusion token's state.
        self.norm.forward(&xs.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(values: &[[f32; 3]], present: &[f32]) -> Encoded {
        let b = values.len();
        let flat: Vec<f32> = values.iter().flatten().copied().collect();
        let pooled = Tensor::from_vec(flat, (b, 3), &Device::Cpu).unwrap();
        Encoded {
            tokens: pooled.unsqueeze(1).unwrap(),
            mask: Tensor::ones((b, 1), DType::F32, &Device::Cpu).unwrap(),
            pooled,
            present: Some(Tensor::new(present, &Device::Cpu).unwrap()),
        }
    }

    fn inputs() -> Vec<FusionInput> {
        vec![
            FusionInput {
                modality: Modality::Tabular,
                width: 3,
            },
            FusionInput {
                modality: Modality::Sensor,
                width: 3,
            },
        ]
    }

    #[test]
    fn a_missing_input_does_not_reach_the_output() {
        let a = encoded(&[[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], &[1.0, 1.0]);
        // Row 1 lacks input b; its vector holds garbage that must not matter.
        let b1 = encoded(&[[0.3, 0.1, -0.2], [9.0, 9.0, 9.0]], &[1.0, 0.0]);
        let b2 = encoded(&[[0.3, 0.1, -0.2], [-7.0, 100.0, 0.0]], &[1.0, 0.0]);
        for kind in [Fusion::Concat, Fusion::Mean, Fusion::Attention] {
            let f = FusionLayer::new(kind, &inputs(), 3).unwrap();
            let y1 = f.forward(&[a.clone(), b1.clone()]).unwrap();
            let y2 = f.forward(&[a.clone(), b2.clone()]).unwrap();
            assert_eq!(y1.dims(), &[2, f.width()]);
            let y1 = y1.to_vec2::<f32>().unwrap();
            let y2 = y2.to_vec2::<f32>().unwrap();
            assert_eq!(y1[1], y2[1], "{kind:?}: a missing input changed the output");
            // A present input does change it (the check above is not vacuous).
            let b3 = encoded(&[[5.0, -5.0, 1.0], [9.0, 9.0, 9.0]], &[1.0, 0.0]);
            let y3 = f
                .forward(&[a.clone(), b3])
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_ne!(y1[0], y3[0], "{kind:?}: a present input was ignored");
        }
    }

    #[test]
    fn concat_marks_presence_and_mean_averages_present_inputs() {
        let a = encoded(&[[1.0, 2.0, 3.0]], &[1.0]);
        let b = encoded(&[[5.0, 5.0, 5.0]], &[0.0]);
        let f = FusionLayer::new(Fusion::Concat, &inputs(), 0).unwrap();
        assert!(f.vars().is_empty());
        let y = f
            .forward(&[a.clone(), b.clone()])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(y[0], vec![1.0, 2.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let f = FusionLayer::new(Fusion::Mean, &inputs(), 0).unwrap();
        let y = f.forward(&[a, b]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y[0], vec![1.0, 2.0, 3.0]);
        // A text-only concat is the plain vector, as before fusion knew of missing inputs.
        let text = [FusionInput {
            modality: Modality::Text,
            width: 3,
        }];
        assert_eq!(fused_width(Fusion::Concat, &text), 3);
    }

    #[test]
    fn every_attention_weight_gets_a_gradient() {
        let f = FusionLayer::new(Fusion::Attention, &inputs(), 5).unwrap();
        let a = encoded(&[[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], &[1.0, 1.0]);
        let b = encoded(&[[0.3, 0.1, -0.2], [9.0, 9.0, 9.0]], &[1.0, 0.0]);
        let y = f.forward(&[a, b]).unwrap();
        let target = Tensor::randn(0f32, 1.0, y.shape(), &Device::Cpu).unwrap();
        let loss = (y * target).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in f.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name} has a zero gradient");
        }
    }
}
