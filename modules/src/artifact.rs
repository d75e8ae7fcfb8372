//! The artifact format of a tuned model version: a set of named files (the PEFT adapter,
//! the heads, the blueprint, `metrics.json`, the model card) and `manifest.json`, written
//! last, that records the SHA-256 and size of every other file (DESIGN.md §3).
//!
//! A version without a valid manifest does not exist: [`verify`] checks that every file
//! the manifest names is present with the recorded hash, and that no file is missing
//! from the manifest, before anything is loaded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the manifest file inside a model version.
pub const MANIFEST: &str = "manifest.json";
/// Format tag recorded in every manifest, bumped when the layout changes.
pub const FORMAT: &str = "tailor-model-version/1";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArtifactError {
    #[error("manifest.json is missing: this model version was never completed")]
    MissingManifest,
    #[error("manifest.json is not valid: {0}")]
    BadManifest(String),
    #[error("manifest.json has format {found:?}, this Tailor reads {expected:?}")]
    UnknownFormat {
        found: String,
        expected: &'static str,
    },
    #[error("file {path} named in manifest.json is missing")]
    MissingFile { path: String },
    #[error(
        "file {path} does not match manifest.json (expected SHA-256 {expected}, found {found})"
    )]
    HashMismatch {
        path: String,
        expected: String,
        found: String,
    },
    #[error("file {path} is not listed in manifest.json")]
    Unlisted { path: String },
    #[error("file name {path:?} is not allowed in a model version")]
    BadName { path: String },
}

/// One file of a model version as the manifest records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub files: Vec<ManifestEntry>,
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The files of one model version, in memory, keyed by their relative path.
#[derive(Debug, Clone, Default)]
pub struct ArtifactSet {
    files: BTreeMap<String, Vec<u8>>,
}

impl ArtifactSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file. Names are plain relative paths (`heads/label.safetensors`); the
    /// manifest's own name, absolute paths and `..` are refused.
    pub fn insert(&mut self, path: &str, bytes: Vec<u8>) -> Result<(), ArtifactError> {
        check_name(path)?;
        if path == MANIFEST {
            return Err(ArtifactError::BadName { path: path.into() });
        }
        self.files.insert(path.to_string(), bytes);
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// The files in the order they must be written: every artifact, sorted by name. The
    /// manifest comes from [`ArtifactSet::manifest`] and is written after all of them.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The manifest of these files.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            format: FORMAT.to_string(),
            files: self
                .files
                .iter()
                .map(|(path, bytes)| ManifestEntry {
                    path: path.clone(),
                    sha256: sha256_hex(bytes),
                    bytes: bytes.len() as u64,
                })
                .collect(),
        }
    }

    /// `manifest.json` bytes (pretty, stable order).
    pub fn manifest_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.manifest()).expect("a manifest always serializes")
    }

    /// Reads a version back from its files (including `manifest.json`) and verifies it.
    pub fn from_files(mut files: BTreeMap<String, Vec<u8>>) -> Result<Self, ArtifactError> {
        let manifest_bytes = files
            .remove(MANIFEST)
            .ok_or(ArtifactError::MissingManifest)?;
        let manifest = parse_manifest(&manifest_bytes)?;
        verify(&manifest, |p| files.get(p).map(Vec::as_slice))?;
        if let Some(extra) = files
            .keys()
            .find(|k| !manifest.files.iter().any(|e| &e.path == *k))
        {
            return Err(ArtifactError::Unlisted {
                path: extra.clone(),
            });
        }
        Ok(Self { files })
    }
}

fn check_name(path: &str) -> Result<(), ArtifactError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(ArtifactError::BadName { path: path.into() });
    }
    Ok(())
}

/// Parses `manifest.json` and checks its format tag and file names.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ArtifactError> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| ArtifactError::BadManifest(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(ArtifactError::UnknownFormat {
            found: manifest.format,
            expected: FORMAT,
        });
    }
    for entry in &manifest.files {
        check_name(&entry.path)?;
    }
    Ok(manifest)
}

/// Checks every file the manifest names against its recorded SHA-256. `read` returns a
/// file's bytes, or None when it is absent (from memory, a folder or the object store).
pub fn verify<'a>(
    manifest: &Manifest,
    read: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<(), ArtifactError> {
    for entry in &manifest.files {
        let bytes = read(&entry.path).ok_or_else(|| ArtifactError::MissingFile {
            path: entry.path.clone(),
        })?;
        let found = sha256_hex(bytes);
        if found != entry.sha256 {
            return Err(ArtifactError::HashMismatch {
                path: entry.path.clone(),
                expected: entry.sha256.clone(),
                found,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ArtifactSet {
        let mut set = ArtifactSet::new();
        set.insert("adapter_config.json", b"{\"r\":8}".to_vec())
            .unwrap();
        set.insert("adapter_model.safetensors", vec![1, 2, 3])
            .unwrap();
        set.insert("heads/label.safetensors", vec![4, 5]).unwrap();
        set
    }

    fn with_manifest(set: &ArtifactSet) -> BTreeMap<String, Vec<u8>> {
        let mut files: BTreeMap<_, _> = set
            .files()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        files.insert(MANIFEST.into(), set.manifest_bytes());
        files
    }

    #[test]
    fn round_trip_verifies() {
        let set = sample();
        let back = ArtifactSet::from_files(with_manifest(&set)).unwrap();
        assert_eq!(back.get("heads/label.safetensors"), Some(&[4u8, 5][..]));
        let manifest = set.manifest();
        assert_eq!(manifest.files.len(), 3);
        assert_eq!(manifest.files[1].sha256, sha256_hex(&[1, 2, 3]));
        assert_eq!(manifest.files[1].bytes, 3);
    }

    #[test]
    fn a_version_without_manifest_does_not_exist() {
        let mut files = with_manifest(&sample());
        files.remove(MANIFEST);
        assert_eq!(
            ArtifactSet::from_files(files).unwrap_err(),
            ArtifactError::MissingManifest
        );
    }

    #[test]
    fn tampered_missing_and_unlisted_files_are_refused() {
        let mut files = with_manifest(&sample());
        files.insert("adapter_model.safetensors".into(), vec![9, 9, 9]);
        assert!(matches!(
            ArtifactSet::from_files(files).unwrap_err(),
            ArtifactError::HashMismatch { path, .. } if path == "adapter_model.safetensors"
        ));

        let mut files = with_manifest(&sample());
        files.remove("heads/label.safetensors");
        assert_eq!(
            ArtifactSet::from_files(files).unwrap_err(),
            ArtifactError::MissingFile {
                path: "heads/label.safetensors".into()
            }
        );

        let mut files = with_manifest(&sample());
        files.insert("extra.bin".into(), vec![0]);
        assert_eq!(
            ArtifactSet::from_files(files).unwrap_err(),
            ArtifactError::Unlisted {
                path: "extra.bin".into()
            }
        );
    }

    #[test]
    fn unsafe_names_and_unknown_formats_are_refused() {
        let mut set = ArtifactSet::new();
        for name in [
            "../x",
            "/etc/passwd",
            "a//b",
            "manifest.json",
            "",
            "a\\b",
            "./a",
        ] {
            assert!(set.insert(name, vec![]).is_err(), "{name:?} was accepted");
        }
        let mut manifest = sample().manifest();
        manifest.format = "something/9".into();
        let bytes = serde_json::to_vec(&manifest).unwrap();
        assert!(matches!(
            parse_manifest(&bytes),
            Err(ArtifactError::UnknownFormat { .. })
        ));
        assert!(matches!(
            parse_manifest(b"{"),
            Err(ArtifactError::BadManifest(_))
        ));
    }
}
