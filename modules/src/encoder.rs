//! The seam between encoders (text now; image, audio, sensor and point clouds later) and
//! the decoders and training loop that sit on top of them.
//!
//! An encoder turns one input column of a batch into per-item token states and a pooled
//! vector. Everything above this trait (heads, training, evaluation, artifacts) works on
//! [`Encoded`] alone, so a new modality only has to implement [`Encoder`].

use std::sync::Arc;

use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::peft::{AdapterError, AdapterFiles};

/// A file from a dataset's archive as one input value: its path in the archive (the
/// extension names the format) and its bytes, shared rather than copied when rows are.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct FileValue {
    pub path: String,
    pub bytes: Arc<[u8]>,
}

impl FileValue {
    pub fn new(path: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        Self {
            path: path.into(),
            bytes: bytes.into(),
        }
    }

    /// The lower-cased extension of the path (`"png"`, `"wav"` …), empty when it has none.
    pub fn extension(&self) -> String {
        std::path::Path::new(&self.path)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase()
    }
}

impl std::fmt::Debug for FileValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileValue({:?}, {} bytes)", self.path, self.bytes.len())
    }
}

/// One table cell of a tabular input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    Number(f64),
    Category(String),
    Missing,
}

/// The raw values of one input column for a batch of rows, before any preparation.
#[derive(Debug, Clone)]
pub enum RawColumn {
    Text(Vec<String>),
    /// One file per row (an image, a clip, a signal, a point cloud, an archive of frames);
    /// `None` where the row has none: the input is missing there, and the encoder marks it
    /// absent rather than inventing a value.
    Files(Vec<Option<FileValue>>),
    /// The cells of a tabular input, one list per row in the input's column order.
    Cells(Vec<Vec<Cell>>),
}

impl RawColumn {
    /// What the column holds, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            RawColumn::Text(_) => "text",
            RawColumn::Files(_) => "files",
            RawColumn::Cells(_) => "table cells",
        }
    }

    pub fn len(&self) -> usize {
        match self {
            RawColumn::Text(v) => v.len(),
            RawColumn::Files(v) => v.len(),
            RawColumn::Cells(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One input column prepared for the encoder (tokenized, decoded, resampled …).
#[derive(Debug, Clone)]
pub enum Prepared {
    Text(Tokenized),
    /// A batch the encoder laid out itself: pixels, mel frames, signals, points, features.
    Dense(DenseBatch),
}

/// A prepared batch of a non-text input.
#[derive(Debug, Clone)]
pub struct DenseBatch {
    /// The encoder's input, batch first; its layout is the encoder's own.
    pub xs: Tensor,
    /// (batch, steps) f32 for items of varying length (frames of a clip, windows of a
    /// recording): 1 for a real step, 0 for padding. `None` when every item fills `xs`.
    pub mask: Option<Tensor>,
    /// (batch) f32: 1 where the row has this input, 0 where it is missing.
    pub present: Tensor,
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
    /// (batch) f32: 1 where the row has this input, 0 where it is missing (its `pooled`
    /// row is then meaningless and fusion must mask it). `None`: every row has it.
    pub present: Option<Tensor>,
}

/// A pretrained encoder that may carry LoRA adapters.
pub trait Encoder: Send + Sync {
    /// Width of the pooled vector and of each token state.
    fn width(&self) -> usize;

    /// Learns what the encoder takes from the data before the first step (normalization
    /// statistics, category vocabularies) from the training rows' column; `Model::build`
    /// calls it once, never with validation or test rows. What it learns must live in
    /// [`Encoder::trained_vars`] (with no gradient), so a loaded version has it. Default:
    /// nothing to learn.
    fn fit(&self, _raw: &RawColumn) -> Result<()> {
        Ok(())
    }

    /// Turns raw column values into the encoder's input.
    fn prepare(&self, raw: &RawColumn) -> Result<Prepared>;

    /// Runs the encoder. `train` turns dropout (base and LoRA) on.
    fn forward(&self, input: &Prepared, train: bool) -> Result<Encoded>;

    /// The trainable adapter tensors, each with the name PEFT gives it in
    /// `adapter_model.safetensors` (e.g.
    /// `base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`). Empty when
    /// the encoder is frozen (the baseline).
    fn adapter_vars(&self) -> Vec<(String, Var)>;

    /// Tensors trained in full rather than through an adapter: an encoder trained from
    /// scratch (sensor, point cloud, tabular), a trainable last stage, a temporal layer, a
    /// projection. Each has a stable name; the package stores them in
    /// `encoders.safetensors` (not in the PEFT adapter) and sets them back by name when it
    /// loads the version. The encoder decides what it trains: a factory asked for a frozen
    /// encoder (the baseline) of a pretrained module returns none, while a module with
    /// nothing pretrained trains its weights in both runs.
    fn trained_vars(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

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
