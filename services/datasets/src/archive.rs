//! ZIP archives of files (images, audio, …) described by a manifest table.
//!
//! Safety comes first: every entry name is checked (no `..`, no absolute paths, no
//! symbolic links), the number of entries is capped, and every entry is actually
//! unpacked (into nothing) to measure its size, so a ZIP bomb is refused whatever its
//! headers claim. Then the manifest is validated like any table, and each row's file
//! must be in the archive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};
use zip::ZipArchive;

use base64::Engine;
use tailor_media::check::{Kind, Summary};

use crate::DatasetError;
use crate::media::{FileCheck, THUMBNAIL_SIDE, THUMBNAILS_MADE};
use crate::profile::{ArchiveProfile, TableFormat};
use crate::schema::Modality;
use crate::validator::{
    ArchiveIndex, DatasetReport, Limits, ValidationOptions, Validator, validate_table,
};
use crate::warnings::{Warning, WarningKind};

/// Validates a ZIP archive whose manifest (`manifest.csv`, `manifest.tsv` or
/// `manifest.jsonl` at the top level — or the only table there) names each file and
/// its labels.
///
/// The archive needs `Read + Seek` (the ZIP directory is at its end): spool the upload to
/// a temporary file and pass the file. It is read twice: once to hash it, once to check it.
/// Paths in the manifest are relative to the manifest's folder. If everything in the
/// archive sits in one top-level folder (as "Compress folder" makes), that folder is the
/// top level. `__MACOSX/`, `.DS_Store` and similar entries are ignored.
///
/// The report's `sha256` and `bytes` are those of the archive file; its profile is the
/// manifest's, with [`Profile::archive`](crate::Profile::archive) filled in.
pub fn validate_archive<R: Read + Seek>(
    mut reader: R,
    options: ValidationOptions,
) -> Result<DatasetReport, DatasetError> {
    let limits = options.limits.clone();
    reader.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        bytes += n as u64;
        if bytes > limits.max_bytes {
            return Err(DatasetError::TooLarge {
                limit: limits.max_bytes,
            });
        }
        hasher.update(&buf[..n]);
    }
    if bytes == 0 {
        return Err(DatasetError::Empty);
    }
    let sha256 = hex::encode(hasher.finalize());
    reader.seek(SeekFrom::Start(0))?;
    if let Some(entries) = declared_entries(&mut reader)?
        && entries > limits.max_archive_entries as u64
    {
        return Err(DatasetError::TooManyEntries {
            limit: limits.max_archive_entries,
        });
    }
    reader.seek(SeekFrom::Start(0))?;

    let mut zip = ZipArchive::new(reader).map_err(|e| DatasetError::NotAZip {
        reason: e.to_string(),
    })?;
    if zip.len() > limits.max_archive_entries {
        return Err(DatasetError::TooManyEntries {
            limit: limits.max_archive_entries,
        });
    }

    let mut files = Vec::new();
    let mut checks: HashMap<String, FileCheck> = HashMap::new();
    let mut thumbnails: HashMap<String, String> = HashMap::new();
    let mut unpacked = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| DatasetError::CorruptEntry {
            path: format!("number {}", i + 1),
            reason: e.to_string(),
        })?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        check_entry_name(&name)?;
        if entry.is_symlink() {
            return Err(DatasetError::Symlink { path: name });
        }
        if entry.is_dir() {
            continue;
        }
        // Unpack, at most one byte past the budget: the size is measured, not taken from
        // the headers. A media file's first bytes (up to its own limit) are kept to be
        // decoded; the rest of every entry goes into nothing.
        let budget = limits.max_unpacked_bytes - unpacked;
        let corrupt = |e: io::Error| DatasetError::CorruptEntry {
            path: name.clone(),
            reason: e.to_string(),
        };
        let media = !is_ignored(&name) && Kind::of_path(&name).is_some();
        let mut kept = Vec::new();
        if media {
            let keep = (budget + 1).min(limits.media.max_bytes.saturating_add(1));
            (&mut entry)
                .take(keep)
                .read_to_end(&mut kept)
                .map_err(corrupt)?;
        }
        let n = kept.len() as u64
            + io::copy(
                &mut (&mut entry).take(budget + 1 - kept.len() as u64),
                &mut io::sink(),
            )
            .map_err(corrupt)?;
        unpacked += n;
        if n > budget {
            return Err(DatasetError::UnpackedTooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        if media {
            let check = if n > limits.media.max_bytes {
                FileCheck::Failed(
                    tailor_media::MediaError::too_large(
                        "the file",
                        format!("{n} bytes"),
                        format!("{} bytes", limits.media.max_bytes),
                    )
                    .to_string(),
                )
            } else {
                match tailor_media::check::check(&name, &kept, &limits.media) {
                    Ok(summary) => {
                        if matches!(summary, Summary::Image { .. })
                            && thumbnails.len() < THUMBNAILS_MADE
                            && let Some(uri) = thumbnail(&kept, &limits.media)
                        {
                            thumbnails.insert(name.clone(), uri);
                        }
                        FileCheck::Decoded(summary)
                    }
                    Err(e) => FileCheck::Failed(e.to_string()),
                }
            };
            checks.insert(name.clone(), check);
        }
        if !is_ignored(&name) {
            files.push(name);
        }
    }

    let root = common_root(&files);
    let manifest = find_manifest(&files, &root)?;

    let index = ArchiveIndex {
        manifest: manifest.clone(),
        files: files
            .iter()
            .filter(|f| **f != manifest)
            .map(|f| f[root.len()..].to_string())
            .collect(),
        referenced: HashSet::new(),
        checks: checks
            .into_iter()
            .filter_map(|(f, c)| Some((f.strip_prefix(root.as_str())?.to_string(), c)))
            .collect(),
        thumbnails: thumbnails
            .into_iter()
            .filter_map(|(f, t)| Some((f.strip_prefix(root.as_str())?.to_string(), t)))
            .collect(),
    };
    let mut manifest_options = options;
    manifest_options.format = TableFormat::from_file_name(&manifest);
    let mut validator = Validator::with_archive(manifest_options, Some(index));
    let mut entry = zip
        .by_name(&manifest)
        .map_err(|e| DatasetError::CorruptEntry {
            path: manifest.clone(),
            reason: e.to_string(),
        })?;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(DatasetError::CorruptEntry {
                    path: manifest.clone(),
                    reason: e.to_string(),
                });
            }
        };
        validator.feed(&buf[..n])?;
    }
    let (mut report, index) = validator.finish_inner()?;
    let index = index.expect("the validator was given the archive index");

    let mut by_modality: BTreeMap<Modality, u64> = BTreeMap::new();
    for file in &index.files {
        *by_modality.entry(Modality::from_path(file)).or_default() += 1;
    }
    let mut unreferenced: Vec<&String> = index
        .files
        .iter()
        .filter(|f| !index.referenced.contains(*f))
        .collect();
    if !unreferenced.is_empty() {
        unreferenced.sort();
        report
            .warnings
            .push(Warning::new(WarningKind::UnreferencedFiles {
                count: unreferenced.len() as u64,
                examples: unreferenced.iter().take(5).map(|s| s.to_string()).collect(),
            }));
    }
    report.sha256 = sha256;
    report.bytes = bytes;
    report.profile.archive = Some(ArchiveProfile {
        manifest,
        files: index.files.len() as u64,
        unpacked_bytes: unpacked,
        files_by_modality: by_modality.into_iter().collect(),
        unreferenced_files: unreferenced.len() as u64,
    });
    Ok(report)
}

/// An archive's manifest and files, unpacked for training: paths are relative to the
/// manifest's folder (the paths its rows give).
#[derive(Debug, Clone)]
pub struct ArchiveContents {
    /// Path of the manifest inside the archive (its extension says the table format).
    pub manifest_path: String,
    pub manifest: Vec<u8>,
    /// Every other file (OS litter left out), by path relative to the manifest's folder.
    pub files: Vec<(String, Vec<u8>)>,
}

/// Unpacks a ZIP archive that [`validate_archive`] accepted: finds its manifest the same
/// way and reads every file into memory (at most `limits.max_unpacked_bytes`, measured),
/// with the same refusals of unsafe names, symbolic links and bombs.
pub fn read_archive<R: Read + Seek>(
    mut reader: R,
    limits: &Limits,
) -> Result<ArchiveContents, DatasetError> {
    reader.seek(SeekFrom::Start(0))?;
    let mut zip = ZipArchive::new(reader).map_err(|e| DatasetError::NotAZip {
        reason: e.to_string(),
    })?;
    if zip.len() > limits.max_archive_entries {
        return Err(DatasetError::TooManyEntries {
            limit: limits.max_archive_entries,
        });
    }
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut unpacked = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| DatasetError::CorruptEntry {
            path: format!("number {}", i + 1),
            reason: e.to_string(),
        })?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        check_entry_name(&name)?;
        if entry.is_symlink() {
            return Err(DatasetError::Symlink { path: name });
        }
        if entry.is_dir() || is_ignored(&name) {
            continue;
        }
        let budget = limits.max_unpacked_bytes - unpacked;
        let mut bytes = Vec::new();
        (&mut entry)
            .take(budget + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| DatasetError::CorruptEntry {
                path: name.clone(),
                reason: e.to_string(),
            })?;
        unpacked += bytes.len() as u64;
        if bytes.len() as u64 > budget {
            return Err(DatasetError::UnpackedTooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        entries.push((name, bytes));
    }
    let names: Vec<String> = entries.iter().map(|(n, _)| n.clone()).collect();
    let root = common_root(&names);
    let manifest_path = find_manifest(&names, &root)?;
    let mut manifest = Vec::new();
    let mut files = Vec::new();
    for (name, bytes) in entries {
        if name == manifest_path {
            manifest = bytes;
        } else {
            files.push((name[root.len()..].to_string(), bytes));
        }
    }
    Ok(ArchiveContents {
        manifest_path,
        manifest,
        files,
    })
}

/// The manifest among `files`: `manifest.*` at the top level (`root`), or the only table
/// there.
fn find_manifest(files: &[String], root: &str) -> Result<String, DatasetError> {
    let mut tables: Vec<&String> = files
        .iter()
        .filter(|f| {
            f.strip_prefix(root).is_some_and(|rest| !rest.contains('/'))
                && !f.to_ascii_lowercase().ends_with(".txt")
                && TableFormat::from_file_name(f).is_some()
        })
        .collect();
    let manifests: Vec<&String> = tables
        .iter()
        .copied()
        .filter(|f| {
            f[root.len()..]
                .to_ascii_lowercase()
                .starts_with("manifest.")
        })
        .collect();
    if !manifests.is_empty() {
        tables = manifests;
    }
    match tables.as_slice() {
        [] => Err(DatasetError::NoManifest),
        [one] => Ok((*one).clone()),
        many => Err(DatasetError::AmbiguousManifest {
            candidates: many.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

/// Validates an upload of either kind: a ZIP archive (recognized by its first bytes) goes
/// to [`validate_archive`], anything else to [`validate_table`] — with the format taken
/// from `file_name`'s extension when `options.format` is not set.
///
/// This is the one call the portal needs once the upload is in a temporary file.
pub fn validate_upload<R: Read + Seek>(
    mut reader: R,
    file_name: Option<&str>,
    mut options: ValidationOptions,
) -> Result<DatasetReport, DatasetError> {
    reader.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        match reader.read(&mut magic[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    reader.seek(SeekFrom::Start(0))?;
    if magic == *b"PK\x03\x04" || magic == *b"PK\x05\x06" {
        return validate_archive(reader, options);
    }
    if options.format.is_none() {
        options.format = file_name.and_then(TableFormat::from_file_name);
    }
    validate_table(reader, options)
}

/// A small PNG of an image as a data URI, when the image can be decoded and shrunk.
fn thumbnail(bytes: &[u8], limits: &tailor_media::Limits) -> Option<String> {
    let png = tailor_media::check::thumbnail_png(bytes, limits, THUMBNAIL_SIDE).ok()??;
    Some(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// Refuses entry names that could write outside a folder they are unpacked into.
fn check_entry_name(name: &str) -> Result<(), DatasetError> {
    let unsafe_path = |reason| {
        Err(DatasetError::UnsafePath {
            path: name.to_string(),
            reason,
        })
    };
    if name.contains('\0') {
        return unsafe_path("has a NUL character in its name");
    }
    let bytes = name.as_bytes();
    if name.starts_with('/')
        || name.starts_with('\\')
        || (bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':')
    {
        return unsafe_path("is an absolute path");
    }
    if name.split(['/', '\\']).any(|part| part == "..") {
        return unsafe_path("points outside the archive (\"..\")");
    }
    Ok(())
}

/// Entries that operating systems add and that are not part of a dataset.
fn is_ignored(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    name.starts_with("__MACOSX/")
        || base.starts_with("._")
        || matches!(base, ".DS_Store" | "Thumbs.db" | "desktop.ini")
}

/// `"folder/"` when every file is inside that one top-level folder, else `""`.
fn common_root(files: &[String]) -> String {
    let mut first: Option<&str> = None;
    for file in files {
        let Some((top, _)) = file.split_once('/') else {
            return String::new();
        };
        match first {
            None => first = Some(top),
            Some(f) if f == top => {}
            Some(_) => return String::new(),
        }
    }
    first.map(|f| format!("{f}/")).unwrap_or_default()
}

/// The entry count the end-of-central-directory record declares, read before the ZIP
/// reader allocates anything for the entries. `None` when no record is found (the ZIP
/// reader then reports the archive as unreadable).
fn declared_entries<R: Read + Seek>(reader: &mut R) -> Result<Option<u64>, DatasetError> {
    let len = reader.seek(SeekFrom::End(0))?;
    let tail_len = len.min(65_557);
    reader.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    reader.read_exact(&mut tail)?;
    let Some(at) = tail.windows(4).rposition(|w| w == b"PK\x05\x06") else {
        return Ok(None);
    };
    let Some(record) = tail.get(at..at + 22) else {
        return Ok(None);
    };
    let entries = u16::from_le_bytes([record[10], record[11]]);
    if entries != u16::MAX {
        return Ok(Some(u64::from(entries)));
    }
    // ZIP64: the locator just before the record gives where the ZIP64 record is.
    let Some(locator) = at.checked_sub(20).and_then(|l| tail.get(l..l + 20)) else {
        return Ok(None);
    };
    if &locator[..4] != b"PK\x06\x07" {
        return Ok(None);
    }
    let offset = u64::from_le_bytes(locator[8..16].try_into().expect("8 bytes"));
    if offset.saturating_add(56) > len {
        return Ok(None);
    }
    reader.seek(SeekFrom::Start(offset))?;
    let mut record = [0u8; 56];
    reader.read_exact(&mut record)?;
    if &record[..4] != b"PK\x06\x06" {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(
        record[32..40].try_into().expect("8 bytes"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_that_escape_are_refused() {
        assert!(check_entry_name("images/a.png").is_ok());
        assert!(check_entry_name("a..b/c.png").is_ok());
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "C:\\x.png",
            "a\\..\\b",
        ] {
            assert_eq!(
                check_entry_name(bad).unwrap_err().code(),
                "unsafe_path",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_single_top_folder_is_the_root() {
        assert_eq!(
            common_root(&["d/manifest.csv".into(), "d/a/1.png".into()]),
            "d/"
        );
        assert_eq!(common_root(&["manifest.csv".into(), "d/1.png".into()]), "");
        assert_eq!(common_root(&["d/m.csv".into(), "e/1.png".into()]), "");
    }
}
