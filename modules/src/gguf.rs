//! GGUF checkpoints (llama.cpp's single-file format): metadata, and tensors read by their
//! GGUF names and dequantized to f32 for training.
//!
//! candle's `gguf_file` parses the container; this module adds what a loader needs on top:
//! typed metadata getters whose errors name the key, and tensor reads that check the shape
//! the architecture expects and name the tensor when it is missing or misshapen.
//!
//! Shapes are given the way candle (and PyTorch) lay tensors out, row-major with the
//! slowest dimension first: a linear layer's weight is `(out, in)`. GGUF writes dimensions
//! the other way round (`ne0` first); candle's reader already reverses them.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file is not a readable GGUF container.
    #[error("{path}: not a readable GGUF file: {message}")]
    Format { path: String, message: String },
    /// A metadata key the architecture needs is absent or of another type.
    #[error("{path}: metadata `{key}`: {message}")]
    Metadata {
        path: String,
        key: String,
        message: String,
    },
    /// A tensor the architecture needs is not in the file.
    #[error("{path}: tensor `{name}` is missing (not a {architecture} checkpoint?)")]
    MissingTensor {
        path: String,
        name: String,
        architecture: String,
    },
    /// A tensor has another shape than the architecture expects.
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        path: String,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: tensor `{name}`: {source}")]
    Tensor {
        path: String,
        name: String,
        // Boxed: candle's error is large, and every `Result` here would carry its size.
        source: Box<candle_core::Error>,
    },
}

/// An open GGUF file: its parsed header, with tensors read on demand.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("metadata", &self.content.metadata.len())
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens `path` and reads its header (metadata and tensor index, not the tensor data).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let mut file = File::open(&path).map_err(|source| GgufError::Io {
            path: shown.clone(),
            source,
        })?;
        let content = Content::read(&mut file).map_err(|e| GgufError::Format {
            path: shown,
            message: e.to_string(),
        })?;
        Ok(Self {
            path,
            file,
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    fn value(&self, key: &str) -> Result<&Value, GgufError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.meta_error(key, "missing"))
    }

    fn meta_error(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.shown(),
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    /// An unsigned integer (any unsigned or non-negative signed width).
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self.value(key)?;
        let n: Option<u64> = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.meta_error(key, format!("is not a non-negative integer: {v:?}")))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        match self.value(key)? {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            other => Err(self.meta_error(key, format!("is not a number: {other:?}"))),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.value(key)? {
            Value::Bool(b) => Ok(*b),
            other => Err(self.meta_error(key, format!("is not a boolean: {other:?}"))),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.value(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.meta_error(key, format!("is not a string: {other:?}"))),
        }
    }

    fn array(&self, key: &str) -> Result<&Vec<Value>, GgufError> {
        match self.value(key)? {
            Value::Array(items) => Ok(items),
            _ => Err(self.meta_error(key, "is not an array")),
        }
    }

    pub fn get_strings(&self, key: &str) -> Result<Vec<String>, GgufError> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.to_string()
                    .cloned()
                    .map_err(|_| self.meta_error(key, format!("item {i} is not a string")))
            })
            .collect()
    }

    pub fn get_f32s(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                _ => Err(self.meta_error(key, format!("item {i} is not a number"))),
            })
            .collect()
    }

    pub fn get_i32s(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::I32(x) => Ok(*x),
                Value::U32(x) => i32::try_from(*x)
                    .map_err(|_| self.meta_error(key, format!("item {i} is out of range"))),
                Value::U8(x) => Ok(*x as i32),
                Value::I8(x) => Ok(*x as i32),
                _ => Err(self.meta_error(key, format!("item {i} is not an integer"))),
            })
            .collect()
    }

    /// The tensor names in the file, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .content
            .tensor_infos
            .keys()
            .map(|s| s.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// The shape (candle order) and storage type of a tensor, if the file has it.
    pub fn tensor_info(&self, name: &str) -> Option<(&[usize], GgmlDType)> {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| (info.shape.dims(), info.ggml_dtype))
    }

    /// Checks that `name` exists with shape `expected`, naming the tensor otherwise.
    pub fn check_tensor(
        &self,
        name: &str,
        expected: &[usize],
        architecture: &str,
    ) -> Result<(), GgufError> {
        let Some((actual, _)) = self.tensor_info(name) else {
            return Err(GgufError::MissingTensor {
                path: self.shown(),
                name: name.into(),
                architecture: architecture.into(),
            });
        };
        if actual != expected {
            return Err(GgufError::TensorShape {
                path: self.shown(),
                name: name.into(),
                expected: expected.to_vec(),
                actual: actual.to_vec(),
            });
        }
        Ok(())
    }

    /// The tensor as stored (quantized or not), after checking its shape.
    pub fn qtensor(
        &self,
        name: &str,
        expected: &[usize],
        architecture: &str,
    ) -> Result<QTensor, GgufError> {
        self.check_tensor(name, expected, architecture)?;
        let mut reader = &self.file;
        self.content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|source| GgufError::Tensor {
                path: self.shown(),
                name: name.into(),
                source: Box::new(source),
            })
    }

    /// The tensor dequantized to f32, after checking its shape.
    pub fn tensor_f32(
        &self,
        name: &str,
        expected: &[usize],
        architecture: &str,
    ) -> Result<Tensor, GgufError> {
        self.qtensor(name, expected, architecture)?
            .dequantize(&Device::Cpu)
            .map_err(|source| GgufError::Tensor {
                path: self.shown(),
                name: name.into(),
                source: Box::new(source),
            })
    }

    /// SHA-256 (hex) of the whole file: what an adapter records as its base.
    pub fn sha256(&self) -> Result<String, GgufError> {
        let io = |source| GgufError::Io {
            path: self.shown(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Writes a GGUF file (tests and tools build small checkpoints with it).
pub fn write(
    path: impl AsRef<Path>,
    metadata: &[(&str, Value)],
    tensors: &[(&str, QTensor)],
) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(File::create(path.as_ref())?);
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    candle_core::quantized::gguf_file::write(&mut file, &metadata, &tensors)?;
    std::io::Write::flush(&mut file)?;
    Ok(())
}
