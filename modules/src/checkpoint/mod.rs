//! Reading pretrained checkpoints in Rust: PyTorch's legacy (non-zip) and zip `.pth`/`.pt`
//! files, safetensors and GGUF, behind one API.
//!
//! [`Checkpoint::open`] recognizes the format from the file's first bytes, lists every
//! tensor with its shape, and reads one on demand. A module asks for each tensor by name
//! with the shape it expects ([`Checkpoint::get`]); a checkpoint that is not what the module
//! expects is refused with the missing or misshapen tensor named. Nested state dicts
//! (`{"model_state": {...}, "optimizer_state": {...}}`, as resemblyzer saves its encoder)
//! are flattened with `.`, so `model_state.lstm.weight_ih_l0` names a tensor of the inner
//! dict, and [`Checkpoint::var_builder`] hands the tensors to candle's `VarBuilder`
//! (`vb.pp("model_state")`).
//!
//! PyTorch files are pickles. They are read with candle's pickle interpreter, which only
//! builds plain objects (it never runs code from the file); tensors are recognized by the
//! `torch._utils._rebuild_tensor_v2` calls that describe them and their storages by the
//! persistent ids that name them. Strided (e.g. channels-last) tensors are copied into
//! row-major order.

mod torch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

/// The file formats a checkpoint may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` before PyTorch 1.6 (or with `_use_new_zipfile_serialization=False`):
    /// five pickles, then the raw storages.
    TorchLegacy,
    /// `torch.save` since PyTorch 1.6: a zip of `data.pkl` and one entry per storage.
    TorchZip,
    Safetensors,
    Gguf,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::TorchLegacy => "PyTorch (legacy)",
            Format::TorchZip => "PyTorch (zip)",
            Format::Safetensors => "safetensors",
            Format::Gguf => "GGUF",
        }
    }
}

/// Why a checkpoint or one of its tensors cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a checkpoint Tailor reads (a PyTorch .pth/.pt, .safetensors or .gguf file)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path} is not a readable {format} checkpoint: {message}")]
    Malformed {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("the checkpoint {path} has no tensor `{name}`{}", suggestion(.closest))]
    Missing {
        path: PathBuf,
        name: String,
        closest: Option<String>,
    },
    #[error("tensor `{name}` in {path} has shape {actual:?}; the module expects {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` in {path} cannot be read: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
}

fn suggestion(closest: &Option<String>) -> String {
    match closest {
        Some(name) => format!(" (the closest is `{name}`)"),
        None => String::new(),
    }
}

/// What the checkpoint says about one tensor, before it is read.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub shape: Vec<usize>,
    /// The stored element type (`f32`, `i64`, `q4k` …).
    pub dtype: String,
}

/// An opened checkpoint: the list of its tensors and what is needed to read each.
pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    metas: BTreeMap<String, TensorMeta>,
    source: Source,
}

enum Source {
    Torch(torch::TorchTensors),
    Safetensors(candle_core::safetensors::BufferedSafetensors),
    Gguf(gguf_file::Content),
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.metas.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens the checkpoint at `path`, whatever its format (recognized from its content).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        let bytes = std::fs::read(&path).map_err(io)?;
        let format =
            detect(&bytes).ok_or_else(|| CheckpointError::UnknownFormat { path: path.clone() })?;
        let malformed = |message: String| CheckpointError::Malformed {
            path: path.clone(),
            format: format.as_str(),
            message,
        };
        let (metas, source) = match format {
            Format::TorchLegacy | Format::TorchZip => {
                let tensors = if format == Format::TorchLegacy {
                    torch::TorchTensors::legacy(bytes)
                } else {
                    torch::TorchTensors::zip(bytes)
                }
                .map_err(malformed)?;
                (tensors.metas(), Source::Torch(tensors))
            }
            Format::Safetensors => {
                let tensors = candle_core::safetensors::BufferedSafetensors::new(bytes)
                    .map_err(|e| malformed(e.to_string()))?;
                let metas = tensors
                    .tensors()
                    .into_iter()
                    .map(|(name, view)| {
                        let meta = TensorMeta {
                            shape: view.shape().to_vec(),
                            dtype: format!("{:?}", view.dtype()).to_lowercase(),
                        };
                        (name, meta)
                    })
                    .collect();
                (metas, Source::Safetensors(tensors))
            }
            Format::Gguf => {
                let content = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes))
                    .map_err(|e| malformed(e.to_string()))?;
                let metas = content
                    .tensor_infos
                    .iter()
                    .map(|(name, info)| {
                        let meta = TensorMeta {
                            shape: info.shape.dims().to_vec(),
                            dtype: format!("{:?}", info.ggml_dtype).to_lowercase(),
                        };
                        (name.clone(), meta)
                    })
                    .collect();
                // GGUF files can be large: their tensors are read from the file on demand.
                drop(bytes);
                (metas, Source::Gguf(content))
            }
        };
        Ok(Self {
            path,
            format,
            metas,
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Every tensor's name (nested dicts flattened with `.`), in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.metas.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.metas.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metas.contains_key(name)
    }

    /// The tensor `name` as stored (its own dtype), checked to have shape `expected`.
    pub fn get(&self, name: &str, expected: impl Into<Shape>) -> Result<Tensor, CheckpointError> {
        let expected: Shape = expected.into();
        let meta = self.meta_or_missing(name)?;
        if meta.shape != expected.dims() {
            return Err(CheckpointError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                actual: meta.shape.clone(),
                expected: expected.dims().to_vec(),
            });
        }
        self.read(name)
    }

    /// The tensor `name` whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor, CheckpointError> {
        self.meta_or_missing(name)?;
        self.read(name)
    }

    /// Checks that every `(name, shape)` is there with that shape, naming the first that is
    /// not; nothing is read.
    pub fn require<'a>(
        &self,
        expected: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<(), CheckpointError> {
        for (name, shape) in expected {
            let meta = self.meta_or_missing(name)?;
            if meta.shape != shape {
                return Err(CheckpointError::Shape {
                    path: self.path.clone(),
                    name: name.to_string(),
                    actual: meta.shape.clone(),
                    expected: shape.to_vec(),
                });
            }
        }
        Ok(())
    }

    /// Reads every tensor (converted to `dtype`) into a map.
    pub fn tensors(&self, dtype: DType) -> Result<HashMap<String, Tensor>, CheckpointError> {
        self.metas
            .keys()
            .map(|name| {
                let tensor = self.read(name)?;
                let tensor = tensor
                    .to_dtype(dtype)
                    .map_err(|e| self.tensor_error(name, e))?;
                Ok((name.clone(), tensor))
            })
            .collect()
    }

    /// A candle `VarBuilder` over this checkpoint: tensors are read when a layer asks for
    /// them, converted to `dtype`, and a missing or misshapen one is named in the error.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    fn meta_or_missing(&self, name: &str) -> Result<&TensorMeta, CheckpointError> {
        self.metas
            .get(name)
            .ok_or_else(|| CheckpointError::Missing {
                path: self.path.clone(),
                name: name.to_string(),
                closest: crate::catalog::closest(name, self.names()).map(String::from),
            })
    }

    fn tensor_error(&self, name: &str, e: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            message: e.to_string(),
        }
    }

    fn read(&self, name: &str) -> Result<Tensor, CheckpointError> {
        let device = Device::Cpu;
        match &self.source {
            Source::Torch(tensors) => tensors
                .read(name)
                .map_err(|message| self.tensor_error(name, message)),
            Source::Safetensors(tensors) => tensors
                .load(name, &device)
                .map_err(|e| self.tensor_error(name, e)),
            Source::Gguf(content) => {
                let mut file =
                    std::fs::File::open(&self.path).map_err(|source| CheckpointError::Io {
                        path: self.path.clone(),
                        source,
                    })?;
                content
                    .tensor(&mut file, name, &device)
                    .and_then(|q| q.dequantize(&device))
                    .map_err(|e| self.tensor_error(name, e))
            }
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for Checkpoint {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = Checkpoint::get(self, name, shape)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self
            .get_any(name)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        tensor.to_dtype(dtype)?.to_device(device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// The format of a checkpoint from its first bytes.
pub fn detect(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Some(Format::TorchZip);
    }
    if bytes.starts_with(b"GGUF") {
        return Some(Format::Gguf);
    }
    // A legacy PyTorch file starts with a protocol-2 pickle of its magic number.
    if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        return Some(Format::TorchLegacy);
    }
    // safetensors: an 8-byte little-endian header length, then a JSON object.
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let len = u64::from_le_bytes(bytes[..8].try_into().ok()?);
        if len > 1 && len <= bytes.len() as u64 - 8 {
            return Some(Format::Safetensors);
        }
    }
    None
}
