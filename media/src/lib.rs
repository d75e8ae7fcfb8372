//! Decoding of the files an organization uploads: images, audio clips, sensor signals,
//! point clouds and archives of video frames, into plain arrays.
//!
//! Everything here reads untrusted bytes, so every decoder runs under [`Limits`] (bytes,
//! pixels, duration, samples, points) checked before the large allocation they guard, and
//! through [`guarded`], which turns a panic inside a third-party decoder into an error
//! instead of taking the service down. Errors name the file's problem in words a user can
//! act on ("the image is 40000×40000 pixels; the limit is 50 megapixels").
//!
//! This crate knows nothing of tensors: the dataset validator uses it to check each file
//! of an upload, and the encoders of `tailor-modules` to prepare their input.

pub mod audio;
pub mod check;
pub mod image;
pub mod pointcloud;
pub mod signal;

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Bounds on what one file may decode to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Size of the encoded file.
    pub max_bytes: u64,
    /// Width × height of a decoded image (each frame of a clip).
    pub max_pixels: u64,
    /// Longest side of a decoded image.
    pub max_side: u32,
    /// Length of an audio clip or a sensor recording, in seconds.
    pub max_seconds: f64,
    /// Samples of a signal over all its channels (sensor recordings, decoded audio).
    pub max_samples: u64,
    /// Channels of a sensor recording.
    pub max_channels: usize,
    /// Points of a point cloud.
    pub max_points: u64,
    /// Frames of a clip.
    pub max_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_side: 16_384,
            max_seconds: 600.0,
            max_samples: 50_000_000,
            max_channels: 256,
            max_points: 5_000_000,
            max_frames: 2_000,
        }
    }
}

/// Why a file could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MediaError {
    /// The format is not one this decoder reads (by extension or content).
    #[error("unsupported format: {0}")]
    Unsupported(String),
    /// The file is broken: truncated, corrupt, or not what its extension says.
    #[error("the file cannot be read: {0}")]
    Malformed(String),
    /// The file is valid but exceeds a limit; names the limit.
    #[error("{what} is {actual}; the limit is {limit}")]
    TooLarge {
        what: String,
        actual: String,
        limit: String,
    },
    /// A decoder panicked; the panic was caught and the file refused.
    #[error("the decoder failed on this file ({0})")]
    DecoderPanic(String),
}

impl MediaError {
    pub fn malformed(message: impl std::fmt::Display) -> Self {
        MediaError::Malformed(message.to_string())
    }

    pub fn too_large(
        what: impl Into<String>,
        actual: impl std::fmt::Display,
        limit: impl std::fmt::Display,
    ) -> Self {
        MediaError::TooLarge {
            what: what.into(),
            actual: actual.to_string(),
            limit: limit.to_string(),
        }
    }
}

/// Refuses bytes over `limits.max_bytes` before any decoding.
pub fn check_size(bytes: &[u8], limits: &Limits) -> Result<(), MediaError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(MediaError::too_large(
            "the file",
            format!("{} bytes", bytes.len()),
            format!("{} bytes", limits.max_bytes),
        ));
    }
    Ok(())
}

/// Runs a decoder so that a panic inside it becomes [`MediaError::DecoderPanic`].
pub fn guarded<T>(decode: impl FnOnce() -> Result<T, MediaError>) -> Result<T, MediaError> {
    match catch_unwind(AssertUnwindSafe(decode)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(MediaError::DecoderPanic(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_decoder_is_an_error() {
        let err = guarded::<()>(|| panic!("index out of bounds")).unwrap_err();
        assert_eq!(err, MediaError::DecoderPanic("index out of bounds".into()));
        assert_eq!(guarded(|| Ok(3)), Ok(3));
    }

    #[test]
    fn oversized_files_name_the_limit() {
        let limits = Limits {
            max_bytes: 4,
            ..Limits::default()
        };
        let err = check_size(b"12345", &limits).unwrap_err();
        assert_eq!(err.to_string(), "the file is 5 bytes; the limit is 4 bytes");
        assert!(check_size(b"1234", &limits).is_ok());
    }
}
