//! Audio encoders. `audio/ge2e`: resemblyzer's GE2E speaker encoder (a 3-layer LSTM over
//! 40-band mel frames, 256-wide embeddings) with its front end in Rust ([`frontend`]) and
//! optional LoRA adapters on the LSTM's input and hidden projections ([`lstm`]).
//!
//! A clip (WAV, FLAC, MP3, OGG/Vorbis) is decoded and downmixed by `tailor_media::audio`,
//! resampled to 16 kHz, cut to `max_seconds`, raised to −30 dBFS when quieter, and split
//! into 1.6 s partial utterances at `rate` per second, as resemblyzer's `embed_utterance`
//! does. Each partial is embedded; the clip's vector is the L2-normalized mean of its
//! partials' (the token states are the partial embeddings). A row without a file is marked
//! absent (`present` = 0).

pub mod frontend;
pub mod lstm;

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Result, Tensor, Var};
use sha2::{Digest, Sha256};
use tailor_media::Limits;

use crate::encoder::{DenseBatch, Encoded, Encoder, FileValue, Prepared, RawColumn};
use crate::lora::LoraConfig;
use crate::ops::SeededRng;
use crate::peft::{self, Adapter, AdapterError, AdapterFiles, BaseFingerprint, peft_name};
use frontend::{MEL_BANDS, PARTIAL_FRAMES, SAMPLE_RATE};
use lstm::{EMBEDDING, Ge2eNet, LAYERS, TensorSource};

/// The checkpoint file inside the module's folder (as the resemblyzer wheel ships it).
pub const CHECKPOINT_FILE: &str = "pretrained.pt";

/// How to build a [`Ge2eEncoder`].
#[derive(Debug, Clone)]
pub struct Ge2eOptions {
    /// Partial utterances per second (resemblyzer's `rate`, at least 0.625 so that the
    /// 1.6 s partials cover the clip).
    pub rate: f64,
    /// The last partial is kept when the clip covers this share of it.
    pub min_coverage: f64,
    /// Longer clips are cut to their first `max_seconds`.
    pub max_seconds: f64,
    /// `None`: the frozen encoder (the baseline).
    pub lora: Option<LoraConfig>,
    /// Seeds adapter init and dropout.
    pub seed: u64,
    /// `base_model_name_or_path` of a saved adapter.
    pub base_name: Option<String>,
    /// Bounds on the files decoded.
    pub limits: Limits,
}

impl Default for Ge2eOptions {
    fn default() -> Self {
        Self {
            rate: 1.3,
            min_coverage: 0.75,
            max_seconds: 10.0,
            lora: None,
            seed: 0,
            base_name: None,
            limits: Limits::default(),
        }
    }
}

impl Ge2eOptions {
    fn check(&self) -> anyhow::Result<()> {
        if !(0.625..=100.0).contains(&self.rate) {
            anyhow::bail!(
                "rate must be between 0.625 and 100 partials per second, not {}",
                self.rate
            );
        }
        if !(self.min_coverage > 0.0 && self.min_coverage <= 1.0) {
            anyhow::bail!("min_coverage must be in (0, 1], not {}", self.min_coverage);
        }
        if !(self.max_seconds.is_finite() && self.max_seconds > 0.0) {
            anyhow::bail!("max_seconds must be positive, not {}", self.max_seconds);
        }
        if let Some(lora) = &self.lora {
            lora.validate().map_err(anyhow::Error::msg)?;
            lstm::check_targets(&lora.targets).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}

/// resemblyzer's voice encoder behind the [`Encoder`] seam.
pub struct Ge2eEncoder {
    net: Ge2eNet,
    options: Ge2eOptions,
    fingerprint: BaseFingerprint,
    base_name: String,
    rng: SeededRng,
    merged: bool,
}

impl Ge2eEncoder {
    /// Loads `pretrained.pt` from `dir` (or `dir` itself when it is the file).
    pub fn load(dir: impl AsRef<Path>, options: &Ge2eOptions) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        let file = if dir.is_dir() {
            dir.join(CHECKPOINT_FILE)
        } else {
            dir.to_path_buf()
        };
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        drop(bytes);
        let checkpoint = crate::checkpoint::Checkpoint::open(&file)?;
        let get = |name: &str, shape: &[usize]| -> anyhow::Result<Tensor> {
            // resemblyzer saves {"step", "model_state": {...}, "optimizer_state": {...}}.
            Ok(checkpoint
                .get(&format!("model_state.{name}"), shape)?
                .to_dtype(DType::F32)?)
        };
        let base_name = options.base_name.clone().unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "ge2e".into())
        });
        Self::from_source(&get, sha256, base_name, options)
            .with_context(|| format!("loading the GE2E encoder from {}", file.display()))
    }

    /// Builds the encoder from tensors named as in resemblyzer's state dict (tests use
    /// random ones); `sha256` identifies the weights for saved adapters.
    pub fn from_source(
        get: &TensorSource,
        sha256: String,
        base_name: String,
        options: &Ge2eOptions,
    ) -> anyhow::Result<Self> {
        options.check()?;
        let rng = SeededRng::new(options.seed);
        let net = Ge2eNet::load(get, options.lora.as_ref(), &rng)?;
        Ok(Self {
            net,
            options: options.clone(),
            fingerprint: BaseFingerprint {
                architecture: "ge2e".into(),
                num_layers: LAYERS,
                hidden_size: EMBEDDING,
                sha256,
            },
            base_name,
            rng,
            merged: false,
        })
    }

    /// Loads the base with a saved adapter's config and values (a tuned model version).
    pub fn load_with_adapter(
        dir: impl AsRef<Path>,
        adapter: &Adapter,
        options: &Ge2eOptions,
    ) -> anyhow::Result<Self> {
        let options = Ge2eOptions {
            lora: Some(adapter.config.lora_config()?),
            base_name: adapter.config.base_model_name_or_path.clone(),
            ..options.clone()
        };
        let encoder = Self::load(dir, &options)?;
        encoder.apply_adapter(adapter)?;
        Ok(encoder)
    }

    pub fn net(&self) -> &Ge2eNet {
        &self.net
    }

    pub fn options(&self) -> &Ge2eOptions {
        &self.options
    }

    pub fn fingerprint(&self) -> &BaseFingerprint {
        &self.fingerprint
    }

    /// The mel partials of a 16 kHz clip (cut to `max_seconds`, volume-normalized).
    pub fn wav_partials(&self, wav: &[f32]) -> Result<Vec<Vec<f32>>> {
        let keep = ((self.options.max_seconds * SAMPLE_RATE as f64) as usize).min(wav.len());
        let mut wav = wav[..keep].to_vec();
        frontend::normalize_volume(&mut wav);
        frontend::partials(&wav, self.options.rate, self.options.min_coverage)
    }

    /// Decodes, resamples and cuts a file into mel partials; the error names the file.
    pub fn file_partials(&self, file: &FileValue) -> Result<Vec<Vec<f32>>> {
        let named = |e: &dyn std::fmt::Display| {
            candle_core::Error::Msg(format!("audio file {}: {e}", file.path))
        };
        let clip =
            tailor_media::audio::decode(&file.bytes, &file.extension(), &self.options.limits)
                .map_err(|e| named(&e))?;
        let clip = tailor_media::audio::resample(&clip, SAMPLE_RATE).map_err(|e| named(&e))?;
        self.wav_partials(&clip.samples)
    }

    /// Lays out the partials of each row (`None`: the row has no clip) as a batch:
    /// `xs` (all partials, 160, 40), `mask` (rows, most partials) saying which partial slots
    /// of each row are filled (in order), `present` (rows).
    pub fn batch(&self, rows: &[Option<Vec<Vec<f32>>>]) -> Result<DenseBatch> {
        let device = Device::Cpu;
        let most = rows
            .iter()
            .map(|r| r.as_ref().map_or(0, Vec::len))
            .max()
            .unwrap_or(0)
            .max(1);
        let total: usize = rows.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum();
        let mut xs = Vec::with_capacity(total * PARTIAL_FRAMES * MEL_BANDS);
        let mut mask = vec![0f32; rows.len() * most];
        let mut present = vec![0f32; rows.len()];
        for (i, row) in rows.iter().enumerate() {
            if let Some(partials) = row {
                present[i] = 1.0;
                for (j, p) in partials.iter().enumerate() {
                    xs.extend_from_slice(p);
                    mask[i * most + j] = 1.0;
                }
            }
        }
        Ok(DenseBatch {
            xs: Tensor::from_vec(xs, (total, PARTIAL_FRAMES, MEL_BANDS), &device)?,
            mask: Some(Tensor::from_vec(mask, (rows.len(), most), &device)?),
            present: Tensor::from_vec(present, rows.len(), &device)?,
        })
    }

    /// Runs the network on a batch laid out by [`Self::batch`].
    pub fn encode_batch(&self, batch: &DenseBatch, train: bool) -> Result<Encoded> {
        let mask = batch
            .mask
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("audio batch without its mask".into()))?;
        let (rows, most) = mask.dims2()?;
        let total = batch.xs.dim(0)?;
        let device = batch.xs.device();
        let zeros = Tensor::zeros((1, EMBEDDING), DType::F32, device)?;
        // Partial embeddings, with a zero row at index `total` for empty slots.
        let table = if total == 0 {
            zeros
        } else {
            Tensor::cat(&[self.net.forward_t(&batch.xs, train)?, zeros], 0)?
        };
        let flags = mask.flatten_all()?.to_vec1::<f32>()?;
        let mut next = 0u32;
        let index: Vec<u32> = flags
            .iter()
            .map(|&f| {
                if f > 0.0 {
                    next += 1;
                    next - 1
                } else {
                    total as u32
                }
            })
            .collect();
        if next as usize != total {
            candle_core::bail!("audio batch: the mask marks {next} partials, xs holds {total}")
        }
        let index = Tensor::from_vec(index, rows * most, device)?;
        let tokens = table
            .index_select(&index, 0)?
            .reshape((rows, most, EMBEDDING))?;
        let pooled = lstm::l2_normalize(&tokens.sum(1)?)?;
        Ok(Encoded {
            tokens,
            mask: mask.clone(),
            pooled,
            present: Some(batch.present.clone()),
        })
    }

    /// Embeds 16 kHz clips directly (resemblyzer's `embed_utterance` for each).
    pub fn embed_wavs(&self, wavs: &[&[f32]]) -> Result<Encoded> {
        let rows = wavs
            .iter()
            .map(|w| self.wav_partials(w).map(Some))
            .collect::<Result<Vec<_>>>()?;
        self.encode_batch(&self.batch(&rows)?, false)
    }

    pub fn merge_adapters(&mut self) -> Result<()> {
        self.net.merge_adapters()?;
        self.merged = true;
        Ok(())
    }

    pub fn unmerge_adapters(&mut self) -> Result<()> {
        self.net.unmerge_adapters()?;
        self.merged = false;
        Ok(())
    }

    /// The adapter as PEFT's two files.
    pub fn save_adapter(&self, task_type: &str) -> std::result::Result<AdapterFiles, AdapterError> {
        let Some(lora) = &self.options.lora else {
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

    /// Copies a saved adapter's values in, after checking it fits this base.
    pub fn apply_adapter(&self, adapter: &Adapter) -> std::result::Result<(), AdapterError> {
        if self.merged {
            return Err(AdapterError::Invalid(
                "unmerge the adapters before replacing them".into(),
            ));
        }
        adapter.apply(&self.fingerprint, &self.adapter_vars())
    }
}

impl Encoder for Ge2eEncoder {
    fn width(&self) -> usize {
        EMBEDDING
    }

    fn prepare(&self, raw: &RawColumn) -> Result<Prepared> {
        let RawColumn::Files(files) = raw else {
            candle_core::bail!("the audio encoder reads audio files, not {}", raw.kind())
        };
        let rows = files
            .iter()
            .map(|f| f.as_ref().map(|f| self.file_partials(f)).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(Prepared::Dense(self.batch(&rows)?))
    }

    fn forward(&self, input: &Prepared, train: bool) -> Result<Encoded> {
        match input {
            Prepared::Dense(batch) => self.encode_batch(batch, train),
            Prepared::Text(_) => candle_core::bail!("the audio encoder runs on audio clips"),
        }
    }

    fn adapter_vars(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for (path, lora) in self.net.lora_layers() {
            vars.push((peft_name(&path, "lora_A"), lora.a().clone()));
            vars.push((peft_name(&path, "lora_B"), lora.b().clone()));
        }
        vars
    }

    fn reseed(&self, seed: u64) {
        self.rng.reseed(seed);
    }

    fn adapter_files(
        &self,
        task_type: &str,
    ) -> Option<std::result::Result<AdapterFiles, AdapterError>> {
        Some(self.save_adapter(task_type))
    }
}

/// The catalog id of the GE2E encoder.
pub const MODULE_ID: &str = "audio/ge2e";

/// The catalog entry of `audio/ge2e`.
pub fn spec() -> crate::catalog::ModuleSpec {
    use crate::catalog::{Modality, ModuleKind, ModuleSpec, ParamKind, ParamSpec, WeightSource};
    ModuleSpec {
        id: MODULE_ID.into(),
        kind: ModuleKind::Encoder,
        title: "Voices and sounds (GE2E, resemblyzer)".into(),
        description: "resemblyzer's GE2E speaker encoder: 40-band mel frames of 16 kHz audio \
                      through a 3-layer LSTM, 256 wide; clips longer than 1.6 s are split \
                      into partials and averaged. Reads WAV, FLAC, MP3 and OGG/Vorbis."
            .into(),
        modality: Some(Modality::Audio),
        output_width: Some(EMBEDDING),
        tasks: vec![],
        lora_targets: lstm::all_targets(),
        // The last layer and the projection: the layers below then run without a backward
        // pass, a third of the cost of adapting all three.
        default_lora_targets: vec!["ih_l2".into(), "hh_l2".into(), "linear".into()],
        params: vec![
            ParamSpec {
                name: "rate".into(),
                description: "Partial utterances (1.6 s each) per second of audio; more \
                              overlap costs more time."
                    .into(),
                kind: ParamKind::Number {
                    min: 0.625,
                    max: 10.0,
                    default: 1.3,
                },
            },
            ParamSpec {
                name: "max_seconds".into(),
                description: "Clips are cut to their first this many seconds.".into(),
                kind: ParamKind::Number {
                    min: 1.0,
                    max: 60.0,
                    default: 10.0,
                },
            },
        ],
        weights: WeightSource::Pypi {
            package: "resemblyzer".into(),
            version: "0.1.4".into(),
            path_in_package: "resemblyzer".into(),
            folder: "ge2e".into(),
        },
    }
}

/// The encoder of a compiled `audio/ge2e` input, from the folder holding `pretrained.pt`.
pub fn encoder_for_input(
    dir: &Path,
    input: &crate::blueprint::CompiledInput,
    lora: Option<&crate::blueprint::LoraSettings>,
    seed: u64,
) -> anyhow::Result<Ge2eEncoder> {
    use crate::blueprint::ParamValue;
    let number = |name: &str, default: f64| match input.params.get(name) {
        Some(ParamValue::Number(v)) => *v,
        Some(ParamValue::Integer(v)) => *v as f64,
        _ => default,
    };
    let defaults = Ge2eOptions::default();
    let options = Ge2eOptions {
        rate: number("rate", defaults.rate),
        max_seconds: number("max_seconds", defaults.max_seconds),
        lora: lora.map(LoraConfig::from),
        seed,
        ..defaults
    };
    Ge2eEncoder::load(dir, &options)
}
