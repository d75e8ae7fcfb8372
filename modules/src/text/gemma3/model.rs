//! The Gemma 3 text architecture on candle, read from a GGUF checkpoint by its GGUF tensor
//! names (`token_embd.weight`, `blk.N.attn_q.weight`, …), dequantized to f32, with LoRA
//! injectable on the seven projections of every block and every op differentiable.
//!
//! One block: `h = x + post_attention_norm(attn(attn_norm(x)))`, then
//! `out = h + post_ffw_norm(down(gelu_tanh(gate(n)) · up(n)))` with `n = ffn_norm(h)`.
//! Attention is grouped-query with RMS-normed queries and keys, rotary positions (a local
//! base for sliding-window layers, the global base for the others) and a causal mask,
//! limited to the last `sliding_window` positions on local layers. Every
//! `sliding_window_pattern`-th layer is global. Embeddings are scaled by `sqrt(hidden)` and
//! tied to the output projection.
//!
//! RMSNorm: Gemma computes `x / rms(x) · (1 + w)`. llama.cpp's converter stores `1 + w` in
//! the GGUF, so the stored weight is used as it is.
//!
//! # LoRA targets
//!
//! PEFT's names for Hugging Face's `Gemma3ForCausalLM` (so an adapter written here loads in
//! PEFT): `q_proj`, `k_proj`, `v_proj`, `o_proj` (`self_attn.*`) and `gate_proj`,
//! `up_proj`, `down_proj` (`mlp.*`), in the layers chosen by `layers`.

use candle_core::{D, DType, Device, IndexOp, Result, Tensor};

use crate::gguf::{GgufError, GgufFile};
use crate::lora::{LoraConfig, LoraLinear, MaybeLora};
use crate::ops::{self, Linear, SeededRng};

pub const ARCHITECTURE: &str = "gemma3";

/// The linear layers of one block: PEFT path inside `model.layers.N`, GGUF tensor name
/// inside `blk.N`.
pub const PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Every LoRA target name Gemma 3 accepts.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Checks that every target names a projection (PEFT's suffix rule); returns them sorted.
pub fn normalize_targets(targets: &[String]) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for target in targets {
        if !PROJECTIONS
            .iter()
            .any(|(path, _)| target_matches(target, path))
        {
            return Err(format!(
                "adaptation.targets: `{target}` is not a projection of Gemma 3 (known: {})",
                LORA_TARGETS.join(", ")
            ));
        }
        out.push(target.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn target_matches(target: &str, path: &str) -> bool {
    path == target || path.ends_with(&format!(".{target}"))
}

/// The feed-forward activation. Gemma 3 uses tanh-approximated GELU; SiLU exists only so
/// that a test can line this implementation up with candle-transformers' quantized Gemma 3,
/// which applies SiLU there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluTanh,
    Silu,
}

/// The hyper-parameters of a Gemma 3 checkpoint, from its GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_local_theta: f64,
    pub sliding_window: usize,
    /// Every this-many-th layer (1-based) attends globally; the others use the window.
    pub sliding_window_pattern: usize,
    pub context_length: usize,
    /// `1 / sqrt(query_pre_attn_scalar)` scales the scores (llama.cpp: the head width for
    /// every Gemma 3 size but 27B).
    pub query_pre_attn_scalar: f64,
    pub activation: Activation,
}

impl Config {
    /// Reads the `gemma3.*` metadata; a key that is missing or of the wrong type is named.
    pub fn from_gguf(gguf: &GgufFile) -> std::result::Result<Self, GgufError> {
        let arch = gguf.get_str("general.architecture")?;
        if arch != ARCHITECTURE {
            return Err(GgufError::Metadata {
                path: gguf.path().display().to_string(),
                key: "general.architecture".into(),
                message: format!("is `{arch}`, not `{ARCHITECTURE}`"),
            });
        }
        let key = |k: &str| format!("{ARCHITECTURE}.{k}");
        let int = |k: &str| gguf.get_usize(&key(k));
        let num_heads = int("attention.head_count")?;
        let head_dim = int("attention.key_length")?;
        let vocab_size = match gguf.get_strings("tokenizer.ggml.tokens") {
            Ok(tokens) => tokens.len(),
            Err(_) => gguf
                .tensor_info("token_embd.weight")
                .map(|(shape, _)| shape[0])
                .unwrap_or(0),
        };
        let float_or = |k: &str, default: f64| {
            if gguf.has(&key(k)) {
                gguf.get_f64(&key(k))
            } else {
                Ok(default)
            }
        };
        let cfg = Self {
            vocab_size,
            hidden_size: int("embedding_length")?,
            num_layers: int("block_count")?,
            intermediate_size: int("feed_forward_length")?,
            num_heads,
            num_kv_heads: int("attention.head_count_kv")?,
            head_dim,
            rms_norm_eps: gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: float_or("rope.freq_base", 1_000_000.0)?,
            rope_local_theta: float_or("rope.local_freq_base", 10_000.0)?,
            sliding_window: int("attention.sliding_window")?,
            sliding_window_pattern: if gguf.has(&key("attention.sliding_window_type")) {
                int("attention.sliding_window_type")?
            } else {
                6
            },
            context_length: int("context_length")?,
            query_pre_attn_scalar: head_dim as f64,
            activation: Activation::GeluTanh,
        };
        if cfg.num_kv_heads == 0 || !cfg.num_heads.is_multiple_of(cfg.num_kv_heads) {
            return Err(GgufError::Metadata {
                path: gguf.path().display().to_string(),
                key: key("attention.head_count_kv"),
                message: format!(
                    "{} query heads cannot be grouped over {} key/value heads",
                    cfg.num_heads, cfg.num_kv_heads
                ),
            });
        }
        if !head_dim.is_multiple_of(2) || cfg.sliding_window_pattern == 0 {
            return Err(GgufError::Metadata {
                path: gguf.path().display().to_string(),
                key: key("attention.key_length"),
                message: "must be even (rotary positions)".into(),
            });
        }
        Ok(cfg)
    }

    /// Whether layer `i` (0-based) attends only within the sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(self.sliding_window_pattern)
    }

    /// Every tensor the architecture reads, with the shape it must have (candle order).
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let (q, kv) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let mut out = vec![
            ("token_embd.weight".to_string(), vec![self.vocab_size, h]),
            ("output_norm.weight".to_string(), vec![h]),
        ];
        for layer in 0..self.num_layers {
            let t = |name: &str, shape: Vec<usize>| (format!("blk.{layer}.{name}.weight"), shape);
            out.extend([
                t("attn_norm", vec![h]),
                t("attn_q", vec![q, h]),
                t("attn_k", vec![kv, h]),
                t("attn_v", vec![kv, h]),
                t("attn_q_norm", vec![self.head_dim]),
                t("attn_k_norm", vec![self.head_dim]),
                t("attn_output", vec![h, q]),
                t("post_attention_norm", vec![h]),
                t("ffn_norm", vec![h]),
                t("ffn_gate", vec![i, h]),
                t("ffn_up", vec![i, h]),
                t("ffn_down", vec![h, i]),
                t("post_ffw_norm", vec![h]),
            ]);
        }
        out
    }

    /// Refuses a checkpoint that lacks a tensor or has one of another shape, naming it,
    /// before any weight is read.
    pub fn check(&self, gguf: &GgufFile) -> std::result::Result<(), GgufError> {
        for (name, shape) in self.expected_tensors() {
            gguf.check_tensor(&name, &shape, ARCHITECTURE)?;
        }
        Ok(())
    }
}

/// Where LoRA goes: which projections (PEFT target names) in which layers.
#[derive(Debug, Clone)]
pub struct LoraPlan {
    pub config: LoraConfig,
    /// Layer indices that get adapters (PEFT's `layers_to_transform`); `None`: all layers.
    pub layers: Option<Vec<usize>>,
}

impl LoraPlan {
    fn adapts(&self, layer: usize, path: &str) -> bool {
        self.layers.as_ref().is_none_or(|l| l.contains(&layer))
            && self.config.targets.iter().any(|t| target_matches(t, path))
    }
}

/// RMS normalization over the last dimension: `x / sqrt(mean(x²) + eps) · weight`, composed
/// of differentiable tensor ops (candle-nn's fused `rms_norm` has no backward).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if !xs.track_op() {
            // Inference: candle's fused kernel, the same numbers faster.
            return candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps as f32);
        }
        let ms = xs.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xs.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)
    }
}

/// The cos/sin tables of rotary positions for one base.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(head_dim: usize, theta: f64, max_len: usize, device: &Device) -> Result<Self> {
        let inv: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f64 / head_dim as f64) as f32)
            .collect();
        let inv = Tensor::from_vec(inv, (1, head_dim / 2), device)?;
        let pos = Tensor::arange(0u32, max_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_len, 1))?;
        let freqs = pos.matmul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    /// Rotates `xs` (batch, heads, seq, head_dim) for positions `offset..offset + seq`.
    fn apply(&self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        let seq = xs.dim(2)?;
        if offset + seq > self.cos.dim(0)? {
            candle_core::bail!(
                "position {} is past the {} positions this model was set up for",
                offset + seq,
                self.cos.dim(0)?
            )
        }
        let cos = self.cos.narrow(0, offset, seq)?.contiguous()?;
        let sin = self.sin.narrow(0, offset, seq)?.contiguous()?;
        if xs.track_op() {
            // candle-nn's fused rope has no backward; this is the same rotation in tensor ops.
            candle_nn::rotary_emb::rope_slow(xs, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin)
        }
    }
}

/// Keys and values of earlier positions, per layer (generation).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// How many positions are cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Attention {
    q: MaybeLora,
    k: MaybeLora,
    v: MaybeLora,
    o: MaybeLora,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    sliding_window: Option<usize>,
}

/// Additive mask (queries, keys) for queries at `offset..offset + q` over keys `0..offset + q`:
/// 0 where a query may look, a large negative number elsewhere.
fn causal_bias(q: usize, offset: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let k = offset + q;
    let mut bias = vec![0f32; q * k];
    for i in 0..q {
        let pos = offset + i;
        for j in 0..k {
            let hidden = j > pos || window.is_some_and(|w| pos - j.min(pos) >= w);
            if hidden {
                bias[i * k + j] = -1e9;
            }
        }
    }
    Tensor::from_vec(bias, (q, k), device)
}

impl Attention {
    fn forward(
        &self,
        xs: &Tensor,
        rope: &Rope,
        offset: usize,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let d = self.head_dim;
        let split = |ys: Tensor, heads: usize| -> Result<Tensor> {
            ys.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let q = split(self.q.forward_t(xs, train)?, self.heads)?;
        let k = split(self.k.forward_t(xs, train)?, self.kv_heads)?;
        let v = split(self.v.forward_t(xs, train)?, self.kv_heads)?;
        let q = rope.apply(&self.q_norm.forward(&q)?, offset)?;
        let k = rope.apply(&self.k_norm.forward(&k)?, offset)?;
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let keys = k.dim(2)?;
        let groups = self.heads / self.kv_heads;
        // Grouped-query attention without copying keys: the `groups` query heads that share
        // a key/value head are stacked along the query axis.
        let q = q.reshape((b, self.kv_heads, groups * t, d))?;
        let scores = q.matmul(&k.t()?)?.affine(self.scale, 0.0)?;
        let bias = causal_bias(t, keys - t, self.sliding_window, xs.device())?;
        let scores = scores
            .reshape((b, self.kv_heads, groups, t, keys))?
            .broadcast_add(&bias)?
            .reshape((b, self.kv_heads, groups * t, keys))?;
        let probs = ops::softmax_last_dim(&scores)?;
        let ctx = probs
            .matmul(&v.contiguous()?)?
            .reshape((b, self.heads, t, d))?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * d))?;
        self.o.forward_t(&ctx, train)
    }
}

struct Block {
    attn_norm: RmsNorm,
    attention: Attention,
    post_attention_norm: RmsNorm,
    ffn_norm: RmsNorm,
    gate: MaybeLora,
    up: MaybeLora,
    down: MaybeLora,
    post_ffw_norm: RmsNorm,
    activation: Activation,
    sliding: bool,
}

impl Block {
    fn forward(
        &self,
        xs: &Tensor,
        rope: &Rope,
        offset: usize,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor> {
        let attended =
            self.attention
                .forward(&self.attn_norm.forward(xs)?, rope, offset, cache, train)?;
        let h = (xs + self.post_attention_norm.forward(&attended)?)?;
        let n = self.ffn_norm.forward(&h)?;
        let gate = self.gate.forward_t(&n, train)?;
        let gate = match self.activation {
            Activation::GeluTanh => gate.gelu()?,
            Activation::Silu => gate.silu()?,
        };
        let hidden = (gate * self.up.forward_t(&n, train)?)?;
        let out = self.down.forward_t(&hidden, train)?;
        h + self.post_ffw_norm.forward(&out)?
    }

    fn projections(&self) -> [&MaybeLora; 7] {
        [
            &self.attention.q,
            &self.attention.k,
            &self.attention.v,
            &self.attention.o,
            &self.gate,
            &self.up,
            &self.down,
        ]
    }

    fn projections_mut(&mut self) -> [&mut MaybeLora; 7] {
        [
            &mut self.attention.q,
            &mut self.attention.k,
            &mut self.attention.v,
            &mut self.attention.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
}

/// The Gemma 3 decoder stack with tied embeddings.
pub struct Gemma3Model {
    cfg: Config,
    /// (vocab, hidden), also the output projection.
    embed: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    rope_local: Rope,
    rope_global: Rope,
    device: Device,
}

impl Gemma3Model {
    /// Loads every tensor from `gguf` (after checking all of them), dequantized to f32.
    /// `max_positions` bounds the rotary tables (the longest sequence the model will see).
    pub fn load(
        gguf: &GgufFile,
        cfg: &Config,
        lora: Option<&LoraPlan>,
        rng: &SeededRng,
        max_positions: usize,
    ) -> anyhow::Result<Self> {
        cfg.check(gguf)?;
        if let Some(plan) = lora {
            plan.config.validate().map_err(anyhow::Error::msg)?;
            normalize_targets(&plan.config.targets).map_err(anyhow::Error::msg)?;
            if let Some(bad) = plan.layers.iter().flatten().find(|&&l| l >= cfg.num_layers) {
                anyhow::bail!(
                    "adaptation layer {bad} does not exist (the model has {} layers)",
                    cfg.num_layers
                );
            }
        }
        let device = Device::Cpu;
        let get = |name: &str, shape: &[usize]| gguf.tensor_f32(name, shape, ARCHITECTURE);
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q_dim, kv_dim) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        let norm = |name: &str, n: usize| -> anyhow::Result<RmsNorm> {
            Ok(RmsNorm::new(get(name, &[n])?, cfg.rms_norm_eps))
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for layer in 0..cfg.num_layers {
            let p = |name: &str| format!("blk.{layer}.{name}.weight");
            let linear = |peft: &str, gguf_name: &str, out: usize, inp: usize| {
                let base = Linear::new(get(&p(gguf_name), &[out, inp])?, None);
                anyhow::Ok(match lora {
                    Some(plan) if plan.adapts(layer, peft) => {
                        MaybeLora::Lora(LoraLinear::new(base, &plan.config, rng)?)
                    }
                    _ => MaybeLora::Frozen(base),
                })
            };
            let sliding = cfg.is_sliding(layer);
            layers.push(Block {
                attn_norm: norm(&p("attn_norm"), h)?,
                attention: Attention {
                    q: linear("self_attn.q_proj", "attn_q", q_dim, h)?,
                    k: linear("self_attn.k_proj", "attn_k", kv_dim, h)?,
                    v: linear("self_attn.v_proj", "attn_v", kv_dim, h)?,
                    o: linear("self_attn.o_proj", "attn_output", h, q_dim)?,
                    q_norm: norm(&p("attn_q_norm"), cfg.head_dim)?,
                    k_norm: norm(&p("attn_k_norm"), cfg.head_dim)?,
                    heads: cfg.num_heads,
                    kv_heads: cfg.num_kv_heads,
                    head_dim: cfg.head_dim,
                    scale: 1.0 / cfg.query_pre_attn_scalar.sqrt(),
                    sliding_window: sliding.then_some(cfg.sliding_window),
                },
                post_attention_norm: norm(&p("post_attention_norm"), h)?,
                ffn_norm: norm(&p("ffn_norm"), h)?,
                gate: linear("mlp.gate_proj", "ffn_gate", i, h)?,
                up: linear("mlp.up_proj", "ffn_up", i, h)?,
                down: linear("mlp.down_proj", "ffn_down", h, i)?,
                post_ffw_norm: norm(&p("post_ffw_norm"), h)?,
                activation: cfg.activation,
                sliding,
            });
        }
        let max_positions = max_positions.clamp(1, cfg.context_length.max(1));
        Ok(Self {
            embed: get("token_embd.weight", &[cfg.vocab_size, h])?,
            norm: norm("output_norm.weight", h)?,
            rope_local: Rope::new(cfg.head_dim, cfg.rope_local_theta, max_positions, &device)?,
            rope_global: Rope::new(cfg.head_dim, cfg.rope_theta, max_positions, &device)?,
            layers,
            cfg: cfg.clone(),
            device,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The scaled token embeddings (batch, seq, hidden) of `ids` (batch, seq) u32.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let rows = self.embed.index_select(&ids.flatten_all()?, 0)?;
        rows.reshape((b, t, self.cfg.hidden_size))?
            .affine((self.cfg.hidden_size as f64).sqrt(), 0.0)
    }

    /// Runs layers `from..to` on `xs` (batch, seq, hidden) at positions starting at
    /// `offset`, with the key/value cache when given.
    pub fn run_layers(
        &self,
        xs: &Tensor,
        from: usize,
        to: usize,
        offset: usize,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (index, layer) in self.layers.iter().enumerate().take(to).skip(from) {
            let rope = if layer.sliding {
                &self.rope_local
            } else {
                &self.rope_global
            };
            let slot = match cache.as_deref_mut() {
                Some(c) => {
                    if c.layers.len() != self.layers.len() {
                        c.layers = vec![None; self.layers.len()];
                    }
                    Some(&mut c.layers[index])
                }
                None => None,
            };
            xs = layer.forward(&xs, rope, offset, slot, train)?;
        }
        Ok(xs)
    }

    /// The final RMS norm.
    pub fn final_norm(&self, xs: &Tensor) -> Result<Tensor> {
        self.norm.forward(xs)
    }

    /// Final-normed hidden states (batch, seq, hidden) of `ids` (batch, seq).
    pub fn forward_hidden(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.embed(ids)?;
        let xs = self.run_layers(&xs, 0, self.layers.len(), 0, None, train)?;
        self.final_norm(&xs)
    }

    /// Logits over the vocabulary of final-normed states (…, hidden), through the tied
    /// embedding matrix.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        ops::matmul_t(hidden, &self.embed)
    }

    /// Logits (batch, seq, vocab) for `ids` at positions from the cache's length on,
    /// extending the cache (generation).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let offset = cache.len();
        let xs = self.embed(ids)?;
        let xs = self.run_layers(&xs, 0, self.layers.len(), offset, Some(cache), false)?;
        self.logits(&self.final_norm(&xs)?)
    }

    /// The adapted projections with their PEFT paths (`model.layers.N.self_attn.q_proj`).
    pub fn lora_layers(&self) -> Vec<(String, &LoraLinear)> {
        let mut out = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            for ((path, _), proj) in PROJECTIONS.iter().zip(layer.projections()) {
                if let Some(lora) = proj.lora() {
                    out.push((format!("model.layers.{index}.{path}"), lora));
                }
            }
        }
        out
    }

    /// The first layer that carries an adapter (every layer below it is frozen, so its
    /// output can be cached); the layer count when none does.
    pub fn first_adapted_layer(&self) -> usize {
        self.layers
            .iter()
            .position(|l| l.projections().iter().any(|p| p.lora().is_some()))
            .unwrap_or(self.layers.len())
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn merge_adapters(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for proj in layer.projections_mut() {
                if let Some(lora) = proj.lora_mut() {
                    lora.merge()?;
                }
            }
        }
        Ok(())
    }

    pub fn unmerge_adapters(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for proj in layer.projections_mut() {
                if let Some(lora) = proj.lora_mut() {
                    lora.unmerge()?;
                }
            }
        }
        Ok(())
    }

    /// Logits of the last position only, for `ids` (batch, seq).
    pub fn last_logits(&self, ids: &Tensor) -> Result<Tensor> {
        let hidden = self.forward_hidden(ids, false)?;
        let t = hidden.dim(1)?;
        self.logits(&hidden.i((.., t - 1, ..))?)
    }
}
