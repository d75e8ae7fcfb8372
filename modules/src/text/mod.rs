//! Text encoders: a BERT-family checkpoint folder (`config.json`, `tokenizer.json`,
//! `model.safetensors`) behind the [`Encoder`] seam, with optional LoRA adapters.
//!
//! Catalog modules: `text/bert` (any BERT-family folder) and `text/minilm-l6`
//! (all-MiniLM-L6-v2, the same code on that checkpoint).

pub mod bert;
pub mod gemma3;

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::encoder::{Encoded, Encoder, Prepared, RawColumn, Tokenized};
use crate::lora::LoraConfig;
use crate::ops::{DTYPE, SeededRng};
use crate::peft::{self, Adapter, AdapterError, AdapterFiles, BaseFingerprint, peft_name};
use bert::{BertModel, Config};

/// How token states become one vector per item. The pooled vector is not L2-normalized
/// (sentence-transformers normalizes for similarity search; heads get the raw mean).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over real (non-padding) tokens, what sentence-transformers models are trained for.
    #[default]
    Mean,
    /// The `[CLS]` token's state.
    Cls,
}

/// How to build a [`TextEncoder`] from a checkpoint folder.
#[derive(Debug, Clone)]
pub struct TextEncoderOptions {
    pub pooling: Pooling,
    /// Texts are truncated to this many tokens (special tokens included); capped at the
    /// checkpoint's `max_position_embeddings`.
    pub max_tokens: usize,
    /// `None` builds the frozen encoder (the baseline: no adapter, no trainable tensors).
    pub lora: Option<LoraConfig>,
    /// Seeds adapter init and dropout: the same seed gives the same run.
    pub seed: u64,
    /// Recorded as `base_model_name_or_path` in `adapter_config.json`; defaults to the
    /// folder's name.
    pub base_name: Option<String>,
}

impl Default for TextEncoderOptions {
    fn default() -> Self {
        Self {
            pooling: Pooling::Mean,
            max_tokens: 256,
            lora: None,
            seed: 0,
            base_name: None,
        }
    }
}

/// A BERT-family text encoder, frozen or with LoRA adapters.
pub struct TextEncoder {
    model: BertModel,
    config: Config,
    tokenizer: Tokenizer,
    pooling: Pooling,
    max_tokens: usize,
    lora: Option<LoraConfig>,
    fingerprint: BaseFingerprint,
    base_name: String,
    merged: bool,
    /// Shared with every layer: adapter init drew from it, dropout draws from it.
    rng: SeededRng,
}

impl TextEncoder {
    /// Loads the checkpoint in `dir` (`config.json`, `tokenizer.json`, `model.safetensors`).
    pub fn load(dir: impl AsRef<Path>, options: &TextEncoderOptions) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        let file = |name: &str| -> PathBuf { dir.join(name) };
        let config_bytes = std::fs::read(file("config.json"))
            .with_context(|| format!("reading {}", file("config.json").display()))?;
        let config: Config = serde_json::from_slice(&config_bytes)
            .with_context(|| format!("parsing {}", file("config.json").display()))?;
        config
            .check_supported()
            .map_err(|msg| anyhow!("{}: {msg}", file("config.json").display()))?;
        if let Some(model_type) = &config.model_type
            && !matches!(model_type.as_str(), "bert" | "minilm")
        {
            bail!(
                "{}: model_type `{model_type}` is not a BERT-family encoder",
                file("config.json").display()
            );
        }

        let mut tokenizer = Tokenizer::from_file(file("tokenizer.json"))
            .map_err(|e| anyhow!("reading {}: {e}", file("tokenizer.json").display()))?;
        let max_tokens = options.max_tokens.clamp(2, config.max_position_embeddings);
        let pad_token = tokenizer
            .id_to_token(config.pad_token_id)
            .unwrap_or_else(|| "[PAD]".into());
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("setting truncation: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id,
            pad_token,
            ..Default::default()
        }));

        let weights = std::fs::read(file("model.safetensors"))
            .with_context(|| format!("reading {}", file("model.safetensors").display()))?;
        let sha256 = hex::encode(Sha256::digest(&weights));
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DTYPE, &device)
            .with_context(|| format!("parsing {}", file("model.safetensors").display()))?;
        let lora = match &options.lora {
            Some(lora) => {
                lora.validate().map_err(|msg| anyhow!(msg))?;
                let targets = bert::normalize_targets(&lora.targets).map_err(|msg| anyhow!(msg))?;
                Some(LoraConfig {
                    targets,
                    ..lora.clone()
                })
            }
            None => None,
        };
        let rng = SeededRng::new(options.seed);
        let model = BertModel::load(vb, &config, lora.as_ref(), &rng)
            .with_context(|| format!("loading the BERT weights in {}", dir.display()))?;

        let fingerprint = BaseFingerprint {
            architecture: "bert".into(),
            num_layers: config.num_hidden_layers,
            hidden_size: config.hidden_size,
            sha256,
        };
        let base_name = options.base_name.clone().unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string())
        });
        Ok(Self {
            model,
            config,
            tokenizer,
            pooling: options.pooling,
            max_tokens,
            lora,
            fingerprint,
            base_name,
            merged: false,
            rng,
        })
    }

    /// The frozen encoder for the baseline: no adapters, nothing trainable.
    pub fn load_frozen(
        dir: impl AsRef<Path>,
        pooling: Pooling,
        max_tokens: usize,
    ) -> anyhow::Result<Self> {
        Self::load(
            dir,
            &TextEncoderOptions {
                pooling,
                max_tokens,
                ..Default::default()
            },
        )
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// The adapter config with targets as stored (aliases rewritten), if adapted.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// What an adapter must have been trained on to fit this encoder.
    pub fn fingerprint(&self) -> &BaseFingerprint {
        &self.fingerprint
    }

    /// The `base_model_name_or_path` for `adapter_config.json`.
    pub fn base_name(&self) -> &str {
        &self.base_name
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Folds the adapters into the base weights (serving: one matmul per layer). The
    /// adapter vars keep their values, so an adapter can still be saved after merging.
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

    /// The adapter as PEFT's two files. `task_type` is PEFT's (`FEATURE_EXTRACTION`,
    /// `SEQ_CLS`, `TOKEN_CLS`, …).
    pub fn save_adapter(&self, task_type: &str) -> std::result::Result<AdapterFiles, AdapterError> {
        let Some(lora) = &self.lora else {
            return Err(AdapterError::Invalid(
                "the encoder has no adapter to save (frozen baseline)".into(),
            ));
        };
        peft::save(
            lora,
            &self.fingerprint,
            &self.base_name,
            task_type,
            &self.adapter_vars(),
        )
    }

    /// Copies a saved adapter's values into this encoder's adapters, after checking that it
    /// fits (same architecture, layer count, width, tensors and base weights).
    pub fn apply_adapter(&self, adapter: &Adapter) -> std::result::Result<(), AdapterError> {
        if self.merged {
            return Err(AdapterError::Invalid(
                "unmerge the adapters before replacing them".into(),
            ));
        }
        adapter.apply(&self.fingerprint, &self.adapter_vars())
    }

    /// Loads the base in `dir` with the adapter's LoRA config and values (serving a tuned
    /// model version).
    pub fn load_with_adapter(
        dir: impl AsRef<Path>,
        adapter: &Adapter,
        pooling: Pooling,
        max_tokens: usize,
    ) -> anyhow::Result<Self> {
        let options = TextEncoderOptions {
            pooling,
            max_tokens,
            lora: Some(adapter.config.lora_config()?),
            seed: 0,
            base_name: adapter.config.base_model_name_or_path.clone(),
        };
        let encoder = Self::load(dir, &options)?;
        encoder.apply_adapter(adapter)?;
        Ok(encoder)
    }

    /// Tokenizes a batch, padded to its longest item, truncated at `max_tokens`.
    pub fn tokenize(&self, texts: &[String]) -> Result<Tokenized> {
        let device = self.model.device();
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| candle_core::Error::Msg(format!("tokenizing: {e}")))?;
        let batch = encodings.len();
        let seq = encodings.first().map(|e| e.get_ids().len()).unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * seq);
        let mut type_ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        let mut word_ids = Vec::with_capacity(batch);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            type_ids.extend_from_slice(encoding.get_type_ids());
            mask.extend(encoding.get_attention_mask().iter().map(|&m| m as f32));
            word_ids.push(
                encoding
                    .get_word_ids()
                    .iter()
                    .map(|w| w.map(|w| w as usize))
                    .collect(),
            );
        }
        Ok(Tokenized {
            ids: Tensor::from_vec(ids, (batch, seq), device)?,
            type_ids: Tensor::from_vec(type_ids, (batch, seq), device)?,
            mask: Tensor::from_vec(mask, (batch, seq), device)?,
            word_ids,
        })
    }

    /// Runs the encoder on a tokenized batch.
    pub fn encode_tokenized(&self, input: &Tokenized, train: bool) -> Result<Encoded> {
        let tokens = self
            .model
            .forward_t(&input.ids, &input.type_ids, &input.mask, train)?;
        let pooled = match self.pooling {
            Pooling::Mean => bert::mean_pool(&tokens, &input.mask)?,
            Pooling::Cls => bert::cls_pool(&tokens)?,
        };
        Ok(Encoded {
            tokens,
            mask: input.mask.to_dtype(DType::F32)?,
            pooled,
            present: None,
        })
    }

    /// Tokenizes and encodes texts in one call.
    pub fn encode(&self, texts: &[String], train: bool) -> Result<Encoded> {
        self.encode_tokenized(&self.tokenize(texts)?, train)
    }
}

impl Encoder for TextEncoder {
    fn width(&self) -> usize {
        self.config.hidden_size
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
