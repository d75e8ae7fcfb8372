//! GE2E's network: a 3-layer LSTM (40 → 256), then `Linear(256, 256)`, ReLU and L2
//! normalization of the last hidden state, with optional LoRA adapters on each layer's
//! input projection (`W_ih`), hidden projection (`W_hh`) and the final linear layer.
//!
//! The recurrence runs as one custom op per layer ([`Recurrence`]) with a hand-written
//! backward pass (backpropagation through time): written with per-step tensor ops, 160 steps
//! × 3 layers would make a graph thousands of ops deep, which candle walks and drops
//! recursively (a stack overflow on a small thread) and slowly. The op takes the input
//! projection of every step (`x W_ihᵀ + b_ih + b_hh`, computed for the whole sequence by an
//! ordinary, possibly LoRA-adapted, linear layer) and the hidden weight `W_hh`, and returns
//! the hidden states; its backward gives the gradients of both, so a LoRA update of `W_hh`
//! (`W_hh + scale · B A`, built from ordinary ops) is trained through it. LoRA dropout
//! applies to the input projections and the final layer; the hidden adapter has none (its
//! input is the recurrent state).
//!
//! Gate order and equations are PyTorch's `nn.LSTM`: `i, f, g, o` blocks of the 4H rows,
//! `c' = σ(f) c + σ(i) tanh(g)`, `h' = σ(o) tanh(c')`, starting from zero states.

use candle_core::{CpuStorage, CustomOp2, D, Device, Layout, Result, Shape, Tensor};

use crate::lora::{LoraConfig, LoraLinear, MaybeLora};
use crate::ops::{Linear, SeededRng};

/// Mel bands in, hidden width, embedding width, layers: resemblyzer's hparams.
pub const INPUT: usize = 40;
pub const HIDDEN: usize = 256;
pub const EMBEDDING: usize = 256;
pub const LAYERS: usize = 3;

/// The LoRA targets this network has: every layer's input or hidden projection, one
/// layer's (`ih_l0`, `hh_2` …), or the final linear layer.
pub const LORA_TARGETS: [&str; 3] = ["ih", "hh", "linear"];

/// Every target name [`check_targets`] accepts: the three groups, then each layer's.
pub fn all_targets() -> Vec<String> {
    let mut all: Vec<String> = LORA_TARGETS.map(String::from).to_vec();
    for l in 0..LAYERS {
        all.push(format!("ih_l{l}"));
        all.push(format!("hh_l{l}"));
    }
    all
}

/// Reads one tensor of the checkpoint by its name in resemblyzer's state dict
/// (`lstm.weight_ih_l0` …) with the shape the network expects; the error names it.
pub type TensorSource<'a> = dyn Fn(&str, &[usize]) -> anyhow::Result<Tensor> + 'a;

/// Checks LoRA targets against [`LORA_TARGETS`] and the layer-specific forms.
pub fn check_targets(targets: &[String]) -> std::result::Result<(), String> {
    for target in targets {
        let ok = LORA_TARGETS.contains(&target.as_str())
            || (0..LAYERS).any(|l| *target == format!("ih_l{l}") || *target == format!("hh_l{l}"));
        if !ok {
            return Err(format!(
                "the audio encoder has no LoRA target `{target}` (it has `ih`, `hh` and \
                 `linear`, or one layer's `ih_l0`…`hh_l2`)"
            ));
        }
    }
    Ok(())
}

fn targeted(targets: &[String], kind: &str, layer: Option<usize>) -> bool {
    targets
        .iter()
        .any(|t| t == kind || layer.is_some_and(|l| *t == format!("{kind}_l{l}")))
}

/// One LSTM layer.
#[derive(Debug, Clone)]
pub struct LstmLayer {
    /// `W_ih` with both biases (`b_ih + b_hh`) folded into its bias.
    ih: MaybeLora,
    /// `W_hh`, no bias.
    hh: MaybeLora,
}

impl LstmLayer {
    /// The effective hidden weight (4H, H): with the adapter's update unless merged.
    fn hidden_weight(&self) -> Result<Tensor> {
        match &self.hh {
            MaybeLora::Frozen(linear) => Ok(linear.weight().clone()),
            MaybeLora::Lora(lora) if lora.is_merged() => Ok(lora.base().weight().clone()),
            MaybeLora::Lora(lora) => {
                let delta = (lora.b().as_tensor().matmul(lora.a().as_tensor())? * lora.scale())?;
                lora.base().weight() + delta
            }
        }
    }

    /// (batch, steps, in) → hidden states (batch, steps, H).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let projected = self.ih.forward_t(xs, train)?.contiguous()?;
        let weight = self.hidden_weight()?.contiguous()?;
        projected.apply_op2(&weight, Recurrence)
    }
}

/// The whole network: LSTM layers, then linear, ReLU, L2 norm.
#[derive(Debug, Clone)]
pub struct Ge2eNet {
    layers: Vec<LstmLayer>,
    linear: MaybeLora,
}

impl Ge2eNet {
    /// Builds the network from resemblyzer's tensor names (`lstm.weight_ih_l0`,
    /// `lstm.bias_hh_l2`, `linear.weight` …), with adapters where `lora` targets them.
    pub fn load(
        get: &TensorSource,
        lora: Option<&LoraConfig>,
        rng: &SeededRng,
    ) -> anyhow::Result<Self> {
        let wrap = |linear: Linear, on: bool| -> anyhow::Result<MaybeLora> {
            Ok(match lora {
                Some(cfg) if on => MaybeLora::Lora(LoraLinear::new(linear, cfg, rng)?),
                _ => MaybeLora::Frozen(linear),
            })
        };
        let targets: &[String] = lora.map(|l| l.targets.as_slice()).unwrap_or(&[]);
        let mut layers = Vec::with_capacity(LAYERS);
        for l in 0..LAYERS {
            let input = if l == 0 { INPUT } else { HIDDEN };
            let w_ih = get(&format!("lstm.weight_ih_l{l}"), &[4 * HIDDEN, input])?;
            let w_hh = get(&format!("lstm.weight_hh_l{l}"), &[4 * HIDDEN, HIDDEN])?;
            let b_ih = get(&format!("lstm.bias_ih_l{l}"), &[4 * HIDDEN])?;
            let b_hh = get(&format!("lstm.bias_hh_l{l}"), &[4 * HIDDEN])?;
            let bias = (b_ih + b_hh)?;
            layers.push(LstmLayer {
                ih: wrap(
                    Linear::new(w_ih, Some(bias)),
                    targeted(targets, "ih", Some(l)),
                )?,
                hh: wrap(Linear::new(w_hh, None), targeted(targets, "hh", Some(l)))?,
            });
        }
        let linear = Linear::new(
            get("linear.weight", &[EMBEDDING, HIDDEN])?,
            Some(get("linear.bias", &[EMBEDDING])?),
        );
        let linear = wrap(linear, targeted(targets, "linear", None))?;
        Ok(Self { layers, linear })
    }

    /// Partial utterances (n, frames, 40) → their embeddings (n, 256): non-negative, unit
    /// length.
    pub fn forward_t(&self, mels: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = mels.clone();
        for layer in &self.layers {
            xs = layer.forward_t(&xs, train)?;
        }
        let steps = xs.dim(1)?;
        let last = xs.narrow(1, steps - 1, 1)?.squeeze(1)?;
        let raw = self.linear.forward_t(&last, train)?.relu()?;
        l2_normalize(&raw)
    }

    /// Every adapted layer with its path (`lstm.ih_l0`, `lstm.hh_l2`, `linear`).
    pub fn lora_layers(&self) -> Vec<(String, &LoraLinear)> {
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            if let Some(lora) = layer.ih.lora() {
                out.push((format!("lstm.ih_l{l}"), lora));
            }
            if let Some(lora) = layer.hh.lora() {
                out.push((format!("lstm.hh_l{l}"), lora));
            }
        }
        if let Some(lora) = self.linear.lora() {
            out.push(("linear".to_string(), lora));
        }
        out
    }

    fn lora_layers_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut out = Vec::new();
        for layer in &mut self.layers {
            out.extend(layer.ih.lora_mut());
            out.extend(layer.hh.lora_mut());
        }
        out.extend(self.linear.lora_mut());
        out
    }

    pub fn merge_adapters(&mut self) -> Result<()> {
        self.lora_layers_mut()
            .into_iter()
            .try_for_each(|l| l.merge())
    }

    pub fn unmerge_adapters(&mut self) -> Result<()> {
        self.lora_layers_mut()
            .into_iter()
            .try_for_each(|l| l.unmerge())
    }
}

/// `x / ‖x‖` over the last dimension (a zero row stays zero).
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = (xs.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    xs.broadcast_div(&norm)
}

/// The LSTM recurrence of one layer as a custom op: `(projected (N, T, 4H), W_hh (4H, H))
/// → hidden states (N, T, H)`.
pub struct Recurrence;

/// Everything the forward pass computed, kept for the backward pass (step-major).
struct Trace {
    batch: usize,
    steps: usize,
    hidden: usize,
    /// (T, N, 4H): σ(i), σ(f), tanh(g), σ(o).
    gates: Vec<f32>,
    /// (T, N, H) cell states.
    cells: Vec<f32>,
    /// (T, N, H) hidden states.
    hiddens: Vec<f32>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `a (m × k) · b` for a CPU tensor `b` (k × n), as a flat row-major vector.
fn matmul(a: &[f32], m: usize, k: usize, b: &Tensor) -> Result<Vec<f32>> {
    Tensor::from_slice(a, (m, k), &Device::Cpu)?
        .matmul(b)?
        .flatten_all()?
        .to_vec1::<f32>()
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("the LSTM recurrence runs in f32")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("the LSTM recurrence needs contiguous inputs"),
    }
}

impl Recurrence {
    fn dims(l1: &Layout, l2: &Layout) -> Result<(usize, usize, usize)> {
        let (batch, steps, four_h) = l1.shape().dims3()?;
        let (rows, hidden) = l2.shape().dims2()?;
        if four_h != 4 * hidden || rows != four_h {
            candle_core::bail!(
                "LSTM recurrence: projections {:?} do not fit hidden weight {:?}",
                l1.shape(),
                l2.shape()
            )
        }
        Ok((batch, steps, hidden))
    }

    /// Runs the recurrence, keeping every gate, cell and hidden state.
    fn trace(
        projected: &[f32],
        weight: &[f32],
        (batch, steps, hidden): (usize, usize, usize),
    ) -> Result<Trace> {
        let g4 = 4 * hidden;
        // h (N, H) · W_hhᵀ (H, 4H)
        let weight_t = Tensor::from_slice(weight, (g4, hidden), &Device::Cpu)?
            .t()?
            .contiguous()?;
        let mut gates = vec![0f32; steps * batch * g4];
        let mut cells = vec![0f32; steps * batch * hidden];
        let mut hiddens = vec![0f32; steps * batch * hidden];
        let state = batch * hidden;
        for t in 0..steps {
            let recurrent = if t == 0 {
                vec![0f32; batch * g4]
            } else {
                matmul(
                    &hiddens[(t - 1) * state..t * state],
                    batch,
                    hidden,
                    &weight_t,
                )?
            };
            let (done, rest) = cells.split_at_mut(t * state);
            let c_prev = if t == 0 {
                None
            } else {
                Some(&done[(t - 1) * state..])
            };
            let c_now = &mut rest[..state];
            let h_now = &mut hiddens[t * state..(t + 1) * state];
            for b in 0..batch {
                let p = &projected[(b * steps + t) * g4..][..g4];
                let r = &recurrent[b * g4..][..g4];
                let a = &mut gates[(t * batch + b) * g4..][..g4];
                for j in 0..hidden {
                    a[j] = sigmoid(p[j] + r[j]);
                    a[hidden + j] = sigmoid(p[hidden + j] + r[hidden + j]);
                    a[2 * hidden + j] = (p[2 * hidden + j] + r[2 * hidden + j]).tanh();
                    a[3 * hidden + j] = sigmoid(p[3 * hidden + j] + r[3 * hidden + j]);
                }
                for j in 0..hidden {
                    let prev = c_prev.map_or(0.0, |c| c[b * hidden + j]);
                    let c = a[hidden + j] * prev + a[j] * a[2 * hidden + j];
                    c_now[b * hidden + j] = c;
                    h_now[b * hidden + j] = a[3 * hidden + j] * c.tanh();
                }
            }
        }
        Ok(Trace {
            batch,
            steps,
            hidden,
            gates,
            cells,
            hiddens,
        })
    }
}

impl Trace {
    /// The hidden states as (N, T, H).
    fn outputs(&self) -> Vec<f32> {
        let (n, t, h) = (self.batch, self.steps, self.hidden);
        let mut out = vec![0f32; n * t * h];
        for step in 0..t {
            for b in 0..n {
                out[(b * t + step) * h..][..h]
                    .copy_from_slice(&self.hiddens[(step * n + b) * h..][..h]);
            }
        }
        out
    }

    /// Backpropagation through time: from dL/dh (N, T, H) to dL/dprojected (N, T, 4H) and
    /// dL/dW_hh (4H, H).
    fn backward(&self, grad: &[f32], weight: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        let (n, steps, h) = (self.batch, self.steps, self.hidden);
        let g4 = 4 * h;
        let state = n * h;
        let mut d_gates = vec![0f32; steps * n * g4];
        let mut dh_next = vec![0f32; state];
        let mut dc_next = vec![0f32; state];
        for t in (0..steps).rev() {
            for b in 0..n {
                let a = &self.gates[(t * n + b) * g4..][..g4];
                let d = &mut d_gates[(t * n + b) * g4..][..g4];
                for j in 0..h {
                    let k = b * h + j;
                    let dh = grad[(b * steps + t) * h + j] + dh_next[k];
                    let c = self.cells[t * state + k];
                    let c_prev = if t == 0 {
                        0.0
                    } else {
                        self.cells[(t - 1) * state + k]
                    };
                    let (i, f, g, o) = (a[j], a[h + j], a[2 * h + j], a[3 * h + j]);
                    let tc = c.tanh();
                    let dc = dh * o * (1.0 - tc * tc) + dc_next[k];
                    dc_next[k] = dc * f;
                    d[j] = dc * g * i * (1.0 - i);
                    d[h + j] = dc * c_prev * f * (1.0 - f);
                    d[2 * h + j] = dc * i * (1.0 - g * g);
                    d[3 * h + j] = dh * tc * o * (1.0 - o);
                }
            }
            // dL/dh_{t-1} through the recurrent weight: d_gates_t (N, 4H) · W_hh (4H, H).
            dh_next = if t > 0 {
                matmul(&d_gates[t * n * g4..(t + 1) * n * g4], n, g4, weight)?
            } else {
                vec![0f32; state]
            };
        }
        // dW_hh = Σ_t d_gates_tᵀ h_{t-1} over steps 1.., as one product.
        let d_weight = if steps > 1 {
            let rows = (steps - 1) * n;
            let dg = Tensor::from_slice(&d_gates[n * g4..], (rows, g4), &Device::Cpu)?;
            let hp = Tensor::from_slice(&self.hiddens[..rows * h], (rows, h), &Device::Cpu)?;
            dg.t()?.matmul(&hp)?.flatten_all()?.to_vec1::<f32>()?
        } else {
            vec![0f32; g4 * h]
        };
        // (T, N, 4H) → (N, T, 4H)
        let mut d_projected = vec![0f32; n * steps * g4];
        for t in 0..steps {
            for b in 0..n {
                d_projected[(b * steps + t) * g4..][..g4]
                    .copy_from_slice(&d_gates[(t * n + b) * g4..][..g4]);
            }
        }
        Ok((d_projected, d_weight))
    }
}

impl CustomOp2 for Recurrence {
    fn name(&self) -> &'static str {
        "tailor-lstm-recurrence"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Self::dims(l1, l2)?;
        let trace = Self::trace(contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?, dims)?;
        let (batch, steps, hidden) = dims;
        Ok((
            CpuStorage::F32(trace.outputs()),
            Shape::from((batch, steps, hidden)),
        ))
    }

    fn bwd(
        &self,
        projected: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (batch, steps, four_h) = projected.dims3()?;
        let hidden = four_h / 4;
        let p = projected
            .detach()
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let w = weight.detach().contiguous()?;
        let w_flat = w.flatten_all()?.to_vec1::<f32>()?;
        let trace = Self::trace(&p, &w_flat, (batch, steps, hidden))?;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (d_projected, d_weight) = trace.backward(&g, &w)?;
        Ok((
            Some(Tensor::from_vec(
                d_projected,
                (batch, steps, four_h),
                projected.device(),
            )?),
            Some(Tensor::from_vec(
                d_weight,
                (four_h, hidden),
                weight.device(),
            )?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The same recurrence from per-step tensor ops, differentiated by candle itself.
    fn reference(projected: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let (n, steps, four_h) = projected.dims3()?;
        let h = four_h / 4;
        let sig = |x: &Tensor| -> Result<Tensor> { (x.neg()?.exp()? + 1.0)?.recip() };
        let mut hs = Tensor::zeros((n, h), projected.dtype(), projected.device())?;
        let mut cs = hs.clone();
        let mut outs = Vec::new();
        for t in 0..steps {
            let gates = (projected.narrow(1, t, 1)?.squeeze(1)? + hs.matmul(&weight.t()?)?)?;
            let i = sig(&gates.narrow(1, 0, h)?)?;
            let f = sig(&gates.narrow(1, h, h)?)?;
            let g = gates.narrow(1, 2 * h, h)?.tanh()?;
            let o = sig(&gates.narrow(1, 3 * h, h)?)?;
            cs = ((f * &cs)? + (i * g)?)?;
            hs = (o * cs.tanh()?)?;
            outs.push(hs.clone());
        }
        Tensor::stack(&outs, 1)
    }

    #[test]
    fn the_recurrence_and_its_backward_match_candles_autograd() {
        let rng = SeededRng::new(11);
        let (n, steps, h) = (3, 7, 5);
        let dev = Device::Cpu;
        let projected =
            Var::from_tensor(&rng.uniform((n, steps, 4 * h), -1.5, 1.5, &dev).unwrap()).unwrap();
        let weight = Var::from_tensor(&rng.uniform((4 * h, h), -0.8, 0.8, &dev).unwrap()).unwrap();
        let probe = rng.uniform((n, steps, h), -1.0, 1.0, &dev).unwrap();

        let ours = projected
            .as_tensor()
            .apply_op2(weight.as_tensor(), Recurrence)
            .unwrap();
        let theirs = reference(projected.as_tensor(), weight.as_tensor()).unwrap();
        let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);

        let g1 = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (theirs * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&projected, &weight] {
            let a = g1.get(var.as_tensor()).unwrap();
            let b = g2.get(var.as_tensor()).unwrap();
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(scale > 1e-3, "the probe reaches the input");
            assert!(diff < 1e-5 * scale.max(1.0), "gradient differs by {diff}");
        }
    }
}
