//! The seam between encoders (text now; image, audio, sensor and point clouds later) and
//! the decoders and training loop that sit on top of them.
//!
//! An encoder turns one input column of a batch into per-item token states and a pooled
//! vector. Everything above this trait (heads, training, evaluation, artifacts) works on
//! [`Encoded`] alone, so a new modality only has to implement [`Encoder`].

use candle_core::{Result, Tensor, Var};

use crate::peft::{AdapterError, AdapterFiles};

/// The raw values of one input column for a batch of rows, before any preparation.
#[derive(Debug, Clone)]
pub enum RawColumn {
    Text(Vec<String>),
}

/// One input column prepared for the encoder (tokenized, decoded, resampled …).
#[derive(Debug, Clone)]
pub enum Prepared {
    Text(Tokenized),
}

/// A tokenized batch of texts, padded to the longest item (capped at `max_tokens`).
#[derive(Debug, Clone)]
pub struct Tokenized {
    /// (batch, seq) u32 token ids.
    pub ids: Tensor,
    /// (batch, seq) u32 token type ids (all zero for single sentences).
    pub type_ids: Tensor,
    /// (batch, seq) f32: 1 for a real token, 0 for padding.
    pub mask: Tensor,
    /// For each item, for each token position, the index of the word it came from (None
    /// for special tokens and padding). Token tagging aligns word labels with this.
    pub word_ids: Vec<Vec<Option<usize>>>,
}

/// What an encoder hands to the decoders.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// (batch, seq, width) per-token states, for token tagging.
    pub tokens: Tensor,
    /// (batch, seq) f32 mask of real tokens.
    pub mask: Tensor,
    /// (batch, width) pooled vector (mean or CLS, as the blueprint asks).
    pub pooled: Tensor,
}

/// A pretrained encoder that may carry LoRA adapters.
pub trait Encoder: Send + Sync {
    /// Width of the pooled vector and of each token state.
    fn width(&self) -> usize;

    /// Turns raw column values into the encoder's input.
    fn prepare(&self, raw: &RawColumn) -> Result<Prepared>;

    /// Runs the encoder. `train` turns dropout (base and LoRA) on.
    fn forward(&self, input: &Prepared, train: bool) -> Result<Encoded>;

    /// The trainable adapter tensors, each with the name PEFT gives it in
    /// `adapter_model.safetensors` (e.g.
    /// `base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`). Empty when
    /// the encoder is frozen (the baseline).
    fn adapter_vars(&self) -> Vec<(String, Var)>;

    /// Re-seeds the encoder's own randomness (dropout masks). The training loop calls it
    /// before every step with a seed derived from the run's seed and the step number, so a
    /// run resumed from a checkpoint draws the same masks as one never interrupted, and
    /// the baseline and tuned runs do not depend on how many forwards came before. Encoders
    /// without randomness keep this no-op.
    fn reseed(&self, _seed: u64) {}

    /// The trained adapter as PEFT's two files (`task_type` is PEFT's: `SEQ_CLS` …), with
    /// what identifies the base it fits. `None` for encoders that cannot carry adapters.
    fn adapter_files(
        &self,
        _task_type: &str,
    ) -> Option<std::result::Result<AdapterFiles, AdapterError>> {
        None
    }
}
