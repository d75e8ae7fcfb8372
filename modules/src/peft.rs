//! Adapters in the layout Hugging Face PEFT reads and writes: `adapter_config.json` and
//! `adapter_model.safetensors`.
//!
//! Tensor names are PEFT's saved names: `base_model.model.<module path>.lora_A.weight` and
//! `.lora_B.weight` (PEFT drops the adapter name, `default`, when it saves). What the adapter
//! was trained on (architecture, layer count, width and the SHA-256 of the base checkpoint's
//! `model.safetensors`) is kept in the safetensors header's `__metadata__` under `tailor.*`
//! keys, which PEFT ignores, so `adapter_config.json` holds only keys PEFT knows and stays
//! loadable by every PEFT version.
//!
//! Functions take and return bytes (the platform writes them to object storage); the
//! `*_dir` helpers read and write a folder.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::lora::LoraConfig;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// PEFT's saved name for one LoRA matrix of the module at `path` (`which` is `lora_A` or
/// `lora_B`), e.g. `base_model.model.encoder.layer.0.attention.self.query.lora_A.weight`.
pub fn peft_name(path: &str, which: &str) -> String {
    format!("base_model.model.{path}.{which}.weight")
}

#[derive(Debug, Error)]
pub enum AdapterError {
    /// The files are not a readable LoRA adapter.
    #[error("invalid adapter: {0}")]
    Invalid(String),
    /// The adapter is readable but was not trained for this base encoder.
    #[error("adapter does not fit this base model: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What identifies the base an adapter belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFingerprint {
    pub architecture: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    /// SHA-256 (hex) of the base checkpoint's `model.safetensors`.
    pub sha256: String,
}

impl BaseFingerprint {
    fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            // PEFT (through transformers' safetensors helpers) writes this key.
            ("format".to_string(), "pt".to_string()),
            ("tailor.architecture".to_string(), self.architecture.clone()),
            ("tailor.num_layers".to_string(), self.num_layers.to_string()),
            (
                "tailor.hidden_size".to_string(),
                self.hidden_size.to_string(),
            ),
            ("tailor.base_sha256".to_string(), self.sha256.clone()),
        ])
    }

    fn from_metadata(meta: &HashMap<String, String>) -> Result<Self, AdapterError> {
        let get = |key: &str| {
            meta.get(key).cloned().ok_or_else(|| {
                AdapterError::Invalid(format!(
                    "{WEIGHTS_FILE} has no `{key}` metadata (not written by Tailor?)"
                ))
            })
        };
        let number = |key: &str| -> Result<usize, AdapterError> {
            get(key)?.parse().map_err(|_| {
                AdapterError::Invalid(format!("{WEIGHTS_FILE}: `{key}` is not a number"))
            })
        };
        Ok(Self {
            architecture: get("tailor.architecture")?,
            num_layers: number("tailor.num_layers")?,
            hidden_size: number("tailor.hidden_size")?,
            sha256: get("tailor.base_sha256")?,
        })
    }
}

/// `adapter_config.json` with the keys PEFT (0.13–0.17) writes for a LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub base_model_name_or_path: Option<String>,
    pub revision: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    pub target_modules: Vec<String>,
    pub bias: String,
    pub fan_in_fan_out: bool,
    pub inference_mode: bool,
    #[serde(default = "default_true")]
    pub init_lora_weights: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    #[serde(default)]
    pub layers_pattern: Option<String>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub auto_mapping: Option<serde_json::Value>,
}

fn default_true() -> bool {
    true
}

impl AdapterConfig {
    pub fn new(lora: &LoraConfig, base_model_name_or_path: &str, task_type: &str) -> Self {
        Self {
            peft_type: "LORA".into(),
            task_type: Some(task_type.into()),
            base_model_name_or_path: Some(base_model_name_or_path.into()),
            revision: None,
            r: lora.rank,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            target_modules: lora.targets.clone(),
            bias: "none".into(),
            fan_in_fan_out: false,
            inference_mode: true,
            init_lora_weights: true,
            use_rslora: false,
            use_dora: false,
            modules_to_save: None,
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            auto_mapping: None,
        }
    }

    /// The LoRA config to build the encoder with; refuses what Tailor does not implement.
    pub fn lora_config(&self) -> Result<LoraConfig, AdapterError> {
        let unsupported = |what: &str| {
            Err(AdapterError::Invalid(format!(
                "{CONFIG_FILE}: {what} is not supported"
            )))
        };
        if self.peft_type != "LORA" {
            return unsupported(&format!("peft_type `{}`", self.peft_type));
        }
        if self.bias != "none" {
            return unsupported(&format!("bias `{}`", self.bias));
        }
        if self.fan_in_fan_out {
            return unsupported("fan_in_fan_out");
        }
        if self.use_rslora || self.use_dora {
            return unsupported("rsLoRA/DoRA");
        }
        if !self.rank_pattern.is_empty()
            || !self.alpha_pattern.is_empty()
            || self.layers_to_transform.is_some()
        {
            return unsupported("per-layer rank, alpha or layer selection");
        }
        let lora = LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.target_modules.clone(),
        };
        lora.validate()
            .map_err(|msg| AdapterError::Invalid(format!("{CONFIG_FILE}: {msg}")))?;
        Ok(lora)
    }
}

/// The two files of an adapter, as bytes.
#[derive(Debug, Clone)]
pub struct AdapterFiles {
    pub config_json: Vec<u8>,
    pub safetensors: Vec<u8>,
}

/// Serializes the adapter of an encoder: `vars` as [`crate::encoder::Encoder::adapter_vars`]
/// returns them, `base` the fingerprint of the encoder's base checkpoint.
pub fn save(
    lora: &LoraConfig,
    base: &BaseFingerprint,
    base_model_name_or_path: &str,
    task_type: &str,
    vars: &[(String, Var)],
) -> Result<AdapterFiles, AdapterError> {
    if vars.is_empty() {
        return Err(AdapterError::Invalid(
            "the encoder has no adapter to save (frozen baseline)".into(),
        ));
    }
    let config = AdapterConfig::new(lora, base_model_name_or_path, task_type);
    let config_json =
        serde_json::to_vec_pretty(&config).map_err(|e| AdapterError::Invalid(e.to_string()))?;
    let views = vars
        .iter()
        .map(|(name, var)| Ok((name.clone(), F32View::new(var.as_tensor())?)))
        .collect::<Result<Vec<_>, AdapterError>>()?;
    let safetensors = safetensors::serialize(views, Some(base.to_metadata()))
        .map_err(|e| AdapterError::Invalid(format!("writing {WEIGHTS_FILE}: {e}")))?;
    Ok(AdapterFiles {
        config_json,
        safetensors,
    })
}

/// A LoRA adapter read back from its files.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: AdapterConfig,
    pub base: BaseFingerprint,
    pub tensors: HashMap<String, Tensor>,
}

/// Parses the two files of an adapter.
pub fn load(config_json: &[u8], weights: &[u8], device: &Device) -> Result<Adapter, AdapterError> {
    let config: AdapterConfig = serde_json::from_slice(config_json)
        .map_err(|e| AdapterError::Invalid(format!("{CONFIG_FILE}: {e}")))?;
    config.lora_config()?;
    let (_, header) = safetensors::SafeTensors::read_metadata(weights)
        .map_err(|e| AdapterError::Invalid(format!("{WEIGHTS_FILE}: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let base = BaseFingerprint::from_metadata(&metadata)?;
    let tensors = candle_core::safetensors::load_buffer(weights, device)
        .map_err(|e| AdapterError::Invalid(format!("{WEIGHTS_FILE}: {e}")))?;
    Ok(Adapter {
        config,
        base,
        tensors,
    })
}

impl Adapter {
    /// Checks that this adapter was trained for the base `base` and has exactly the tensors
    /// of `vars` (names and shapes). The first difference found is the error.
    pub fn check_fits(
        &self,
        base: &BaseFingerprint,
        vars: &[(String, Var)],
    ) -> Result<(), AdapterError> {
        let mismatch = |msg: String| Err(AdapterError::Mismatch(msg));
        let (ours, theirs) = (&self.base, base);
        if ours.architecture != theirs.architecture {
            return mismatch(format!(
                "it was trained on a `{}` encoder, this base is `{}`",
                ours.architecture, theirs.architecture
            ));
        }
        if ours.num_layers != theirs.num_layers {
            return mismatch(format!(
                "it was trained on a base with {} layers, this base has {}",
                ours.num_layers, theirs.num_layers
            ));
        }
        if ours.hidden_size != theirs.hidden_size {
            return mismatch(format!(
                "it was trained on a base {} wide, this base is {} wide",
                ours.hidden_size, theirs.hidden_size
            ));
        }
        for (name, var) in vars {
            let Some(tensor) = self.tensors.get(name) else {
                return mismatch(format!(
                    "it has no tensor `{name}` (were its target modules different?)"
                ));
            };
            if tensor.dims() != var.dims() {
                return mismatch(format!(
                    "tensor `{name}` has shape {:?}, this encoder expects {:?} (rank or width differ)",
                    tensor.dims(),
                    var.dims()
                ));
            }
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|name| !vars.iter().any(|(n, _)| n == *name))
        {
            return mismatch(format!(
                "it has a tensor `{extra}` this encoder has no place for"
            ));
        }
        if ours.sha256 != theirs.sha256 {
            return mismatch(format!(
                "it was trained on base weights with SHA-256 {}, these weights have {}",
                ours.sha256, theirs.sha256
            ));
        }
        Ok(())
    }

    /// Checks the fit, then copies the adapter's values into `vars`.
    pub fn apply(
        &self,
        base: &BaseFingerprint,
        vars: &[(String, Var)],
    ) -> Result<(), AdapterError> {
        self.check_fits(base, vars)?;
        for (name, var) in vars {
            var.set(&self.tensors[name].to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// Writes the two files into `dir` (created if missing).
pub fn write_dir(dir: impl AsRef<Path>, files: &AdapterFiles) -> Result<(), AdapterError> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(CONFIG_FILE), &files.config_json)?;
    std::fs::write(dir.join(WEIGHTS_FILE), &files.safetensors)?;
    Ok(())
}

/// Reads and parses the adapter in `dir`.
pub fn read_dir(dir: impl AsRef<Path>, device: &Device) -> Result<Adapter, AdapterError> {
    let dir = dir.as_ref();
    load(
        &std::fs::read(dir.join(CONFIG_FILE))?,
        &std::fs::read(dir.join(WEIGHTS_FILE))?,
        device,
    )
}

/// A tensor's f32 bytes for `safetensors::serialize` (the workspace's safetensors crate is
/// not the version candle implements `View` for).
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32View {
    fn new(tensor: &Tensor) -> Result<Self, AdapterError> {
        let values = tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(Self {
            shape: tensor.dims().to_vec(),
            bytes,
        })
    }
}

impl safetensors::View for F32View {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
