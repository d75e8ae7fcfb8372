//! The two kinds of problems an upload can have.
//!
//! - A [`DatasetError`] is *fatal*: the upload cannot be read as a dataset at all (bad
//!   encoding, not a ZIP, no header, no rows, an unsafe archive, over a limit). Validation
//!   stops at once and there is no report.
//! - A [`RowError`] belongs to one row (or archive entry). Every row is still read, the
//!   first errors are kept with their line numbers, all of them are counted, and a
//!   dataset with any row error is [`Status::Rejected`](crate::Status::Rejected): the
//!   user fixes the rows and uploads again.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A problem that stops validation: the upload is not a dataset Tailor can read.
///
/// `Display` is a sentence a domain expert can act on; [`DatasetError::code`] is a stable
/// machine-readable code for the API.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("the upload is larger than the limit of {}", human_bytes(*limit))]
    TooLarge { limit: u64 },
    #[error("the file is empty")]
    Empty,
    #[error(
        "byte {offset} (line {line}) is not valid {expected}; save the file as UTF-8 \
         (in Excel: \"CSV UTF-8\") and upload it again"
    )]
    BadEncoding {
        /// 0-based offset of the first bad byte in the uploaded file.
        offset: u64,
        /// 1-based line where it occurs.
        line: u64,
        expected: &'static str,
    },
    #[error(
        "the file is UTF-16 text; save it as UTF-8 (in Excel: \"CSV UTF-8\") and upload it again"
    )]
    Utf16,
    #[error("this looks like a binary file, not a CSV, TSV or JSONL text file")]
    Binary,
    #[error(
        "this is a ZIP archive (an Excel .xlsx file is one too): save a spreadsheet as \
         \"CSV UTF-8\", or upload an archive of files as an archive"
    )]
    ArchiveGiven,
    #[error("{message}")]
    UnsupportedFormat { message: String },
    #[error("line {line} should be a header naming the columns, but {reason}")]
    MissingHeader { line: u64, reason: String },
    #[error("line {line}: the column name \"{name}\" appears more than once in the header")]
    DuplicateColumn { line: u64, name: String },
    #[error("line {line}: more than {limit} columns")]
    TooManyColumns { line: u64, limit: usize },
    #[error(
        "line {line}: a row is longer than {}; usually a quote (\") was opened and never closed",
        human_bytes(*limit as u64)
    )]
    RowTooLong { line: u64, limit: usize },
    #[error("the file has no rows of data")]
    NoRows,
    #[error("the chosen types name a column \"{name}\", but the file has only: {}", found.join(", "))]
    MissingColumn { name: String, found: Vec<String> },
    #[error("this is not a readable ZIP archive ({reason})")]
    NotAZip { reason: String },
    #[error("the archive entry \"{path}\" {reason}; the archive is refused for safety")]
    UnsafePath { path: String, reason: &'static str },
    #[error(
        "the archive entry \"{path}\" is a symbolic link; put the real file in the archive instead"
    )]
    Symlink { path: String },
    #[error("the archive has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error(
        "the archive unpacks to more than {}; it is either a ZIP bomb or too large to train on",
        human_bytes(*limit)
    )]
    UnpackedTooLarge { limit: u64 },
    #[error("the archive entry \"{path}\" cannot be read ({reason}); the archive may be damaged")]
    CorruptEntry { path: String, reason: String },
    #[error(
        "the archive has no manifest: add a manifest.csv (or manifest.jsonl) at the top \
         level, with one row per file naming the file and its labels"
    )]
    NoManifest,
    #[error(
        "the archive has several tables at the top level ({}); name the one that lists the files manifest.csv",
        candidates.join(", ")
    )]
    AmbiguousManifest { candidates: Vec<String> },
    #[error("the upload could not be read")]
    Io(#[from] std::io::Error),
}

impl DatasetError {
    /// A stable code for the API and for tests (`"too_large"`, `"bad_encoding"`, …).
    pub fn code(&self) -> &'static str {
        match self {
            DatasetError::TooLarge { .. } => "too_large",
            DatasetError::Empty => "empty",
            DatasetError::BadEncoding { .. } => "bad_encoding",
            DatasetError::Utf16 => "utf16",
            DatasetError::Binary => "binary",
            DatasetError::ArchiveGiven => "archive_given",
            DatasetError::UnsupportedFormat { .. } => "unsupported_format",
            DatasetError::MissingHeader { .. } => "missing_header",
            DatasetError::DuplicateColumn { .. } => "duplicate_column",
            DatasetError::TooManyColumns { .. } => "too_many_columns",
            DatasetError::RowTooLong { .. } => "row_too_long",
            DatasetError::NoRows => "no_rows",
            DatasetError::MissingColumn { .. } => "missing_column",
            DatasetError::NotAZip { .. } => "not_a_zip",
            DatasetError::UnsafePath { .. } => "unsafe_path",
            DatasetError::Symlink { .. } => "symlink",
            DatasetError::TooManyEntries { .. } => "too_many_entries",
            DatasetError::UnpackedTooLarge { .. } => "unpacked_too_large",
            DatasetError::CorruptEntry { .. } => "corrupt_entry",
            DatasetError::NoManifest => "no_manifest",
            DatasetError::AmbiguousManifest { .. } => "ambiguous_manifest",
            DatasetError::Io(_) => "io",
        }
    }
}

/// Serialized as `{ "code": "...", "message": "..." }` so the portal can store and show it.
impl Serialize for DatasetError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("DatasetError", 2)?;
        s.serialize_field("code", self.code())?;
        s.serialize_field("message", &self.to_string())?;
        s.end()
    }
}

/// A problem with one row of a table (or one entry of an archive).
///
/// `Display` gives e.g. `line 3, column "rating": "ten" is not a number`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    /// The archive path of the manifest (or entry) the error is in; `None` for a plain file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based line number where the row starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The column the problem is in, when it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// What is wrong, in words a domain expert can act on (without the location).
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(file) = &self.file {
            parts.push(file.clone());
        }
        if let Some(line) = self.line {
            parts.push(format!("line {line}"));
        }
        if let Some(column) = &self.column {
            parts.push(format!("column \"{column}\""));
        }
        if parts.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", parts.join(", "), self.message)
        }
    }
}

/// `1048576` → `"1 MiB"`; used in messages about limits.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_error_reads_like_a_sentence() {
        let e = RowError {
            file: None,
            line: Some(3),
            column: Some("rating".into()),
            message: "\"ten\" is not a number".into(),
        };
        assert_eq!(
            e.to_string(),
            "line 3, column \"rating\": \"ten\" is not a number"
        );
    }

    #[test]
    fn fatal_errors_serialize_with_code_and_message() {
        let json = serde_json::to_value(DatasetError::TooLarge { limit: 1 << 20 }).unwrap();
        assert_eq!(json["code"], "too_large");
        assert_eq!(
            json["message"],
            "the upload is larger than the limit of 1 MiB"
        );
    }
}
