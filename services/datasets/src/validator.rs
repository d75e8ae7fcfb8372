//! The streaming validator: bytes in, counters and a report out.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decode::{StartError, TextDecoder};
use crate::media::{FileCheck, MediaStats};
use crate::parse::{CsvParser, JsonlParser, RecordSink, sniff_delimiter};
use crate::profile::{
    ColumnProfile, ColumnStats, MAX_DISTINCT, Profile, SampleRow, TOP_K, TableFormat, TypeSource,
    parse_number, top_k, truncate,
};
use crate::schema::{ColumnType, Modality, Schema};
use crate::warnings::{
    DuplicateRow, LabelConflict, LineValue, MIN_EXAMPLES_PER_CLASS, Warning, WarningKind,
};
use crate::{DatasetError, RowError};

/// Limits that keep validation safe and its memory bounded. The defaults suit the
/// "small labelled dataset" Tailor is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest upload (table file, or ZIP file) in bytes; past it: [`DatasetError::TooLarge`].
    pub max_bytes: u64,
    /// Longest row in bytes (a guard against a quote that never closes).
    pub max_row_bytes: usize,
    pub max_columns: usize,
    /// Row errors kept with their details; all are counted.
    pub max_errors: usize,
    /// Rows kept as a sample for the portal to show.
    pub sample_rows: usize,
    /// Most entries (files and folders) a ZIP archive may have.
    pub max_archive_entries: usize,
    /// Most bytes a ZIP archive may unpack to, measured by unpacking.
    pub max_unpacked_bytes: u64,
    /// Rows whose hashes are kept to find duplicates and conflicting labels
    /// (about 24 bytes per row and per label column).
    pub max_tracked_rows: u64,
    /// Bounds on what each file of an archive may decode to (bytes, pixels, seconds,
    /// samples, points, frames).
    pub media: tailor_media::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_row_bytes: 1 << 20,
            max_columns: 500,
            max_errors: 100,
            sample_rows: 20,
            max_archive_entries: 100_000,
            max_unpacked_bytes: 4 << 30,
            max_tracked_rows: 10_000_000,
            media: tailor_media::Limits::default(),
        }
    }
}

/// How to read and check an upload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationOptions {
    /// `None`: JSONL if the first character is `{`, CSV otherwise. Use
    /// [`TableFormat::from_file_name`] when the upload's name is known.
    pub format: Option<TableFormat>,
    /// CSV delimiter (a single ASCII byte). `None`: the most used of `,` `\t` `;` `|` in the
    /// header line (always `\t` for TSV).
    pub delimiter: Option<u8>,
    /// Column types chosen by the user; every row is checked against them.
    pub schema: Option<Schema>,
    pub limits: Limits,
}

/// Whether the dataset can be used for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No row errors (there may be warnings).
    Accepted,
    /// At least one row error: the user fixes the rows and uploads again.
    Rejected,
}

/// The result of validating a dataset that could be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetReport {
    pub status: Status,
    /// SHA-256 (hex) of the uploaded bytes, as they streamed in.
    pub sha256: String,
    /// Size of the upload in bytes.
    pub bytes: u64,
    /// Row errors in total.
    pub error_count: u64,
    /// The first row errors (at most `Limits::max_errors`), in line order.
    pub errors: Vec<RowError>,
    pub warnings: Vec<Warning>,
    pub profile: Profile,
}

impl DatasetReport {
    /// What was uploaded: `"zip"` for an archive, else the table format (`"csv"`, …).
    pub fn upload_format(&self) -> &'static str {
        if self.profile.archive.is_some() {
            "zip"
        } else {
            self.profile.format.as_str()
        }
    }

    /// The column types as validated: the starting point for a user who wants to change
    /// them and validate again with [`ValidationOptions::schema`].
    pub fn schema(&self) -> Schema {
        Schema {
            columns: self
                .profile
                .columns
                .iter()
                .map(|c| crate::ColumnSchema {
                    name: c.name.clone(),
                    column_type: c.column_type,
                    required: false,
                })
                .collect(),
        }
    }
}

/// What a validator holds at the moment: every number here is bounded by a limit, not by
/// the size of the input (except `tracked_rows`, bounded by `Limits::max_tracked_rows`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedState {
    pub errors: usize,
    pub sample_rows: usize,
    /// Distinct values remembered, summed over columns.
    pub distinct_values: usize,
    /// Rows held while the column types are first decided (at most 100).
    pub buffered_rows: usize,
    /// Row hashes kept for duplicate detection.
    pub tracked_rows: usize,
}

/// Rows looked at before column roles (file columns, text and label columns) are decided.
const WARMUP_ROWS: usize = 100;
const WARMUP_BYTES: usize = 1 << 20;
/// Decoded text looked at to pick the format and delimiter.
const SNIFF_BYTES: usize = 64 * 1024;
const MAX_LABEL_COLUMNS_TRACKED: usize = 8;

/// Validates a CSV, TSV or JSONL table pushed to it in chunks of any size.
///
/// ```
/// use tailor_datasets::{Status, ValidationOptions, Validator};
///
/// let mut validator = Validator::new(ValidationOptions::default());
/// validator.feed(b"text,label\nthe fee is due,payment\n")?;
/// validator.feed(b"the term ends,term\n")?;
/// let report = validator.finish()?;
/// assert_eq!(report.status, Status::Accepted);
/// assert_eq!(report.profile.rows, 2);
/// # Ok::<(), tailor_datasets::DatasetError>(())
/// ```
///
/// After `feed` returns an error, the upload is refused: drop the validator.
pub struct Validator {
    max_bytes: u64,
    bytes: u64,
    hasher: Sha256,
    decoder: TextDecoder,
    text: Vec<u8>,
    parser: Parser,
    sink: Sink,
}

enum Parser {
    /// Text seen before the format and delimiter are known.
    Pending(Vec<u8>),
    Csv(CsvParser),
    Jsonl(JsonlParser),
}

impl Validator {
    pub fn new(options: ValidationOptions) -> Validator {
        Validator::with_archive(options, None)
    }

    pub(crate) fn with_archive(
        options: ValidationOptions,
        archive: Option<ArchiveIndex>,
    ) -> Validator {
        Validator {
            max_bytes: options.limits.max_bytes,
            bytes: 0,
            hasher: Sha256::new(),
            decoder: TextDecoder::new(),
            text: Vec::new(),
            parser: Parser::Pending(Vec::new()),
            sink: Sink::new(options, archive),
        }
    }

    /// Takes the next chunk of the upload.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), DatasetError> {
        self.bytes += chunk.len() as u64;
        if self.bytes > self.max_bytes {
            return Err(DatasetError::TooLarge {
                limit: self.max_bytes,
            });
        }
        self.hasher.update(chunk);
        self.decode(chunk, false)
    }

    /// Ends the input and returns the report.
    pub fn finish(self) -> Result<DatasetReport, DatasetError> {
        self.finish_inner().map(|(report, _)| report)
    }

    /// What the validator holds now (to show that memory stays bounded).
    pub fn retained(&self) -> RetainedState {
        RetainedState {
            errors: self.sink.errors.len(),
            sample_rows: self.sink.sample.len(),
            distinct_values: self.sink.stats.iter().map(|s| s.values.len()).sum(),
            buffered_rows: self.sink.warmup.len(),
            tracked_rows: self.sink.seen_rows.len(),
        }
    }

    pub(crate) fn finish_inner(
        mut self,
    ) -> Result<(DatasetReport, Option<ArchiveIndex>), DatasetError> {
        self.decode(&[], true)?;
        if let Parser::Pending(buf) = &mut self.parser {
            let buf = std::mem::take(buf);
            self.start_parser(buf)?;
        }
        match &mut self.parser {
            Parser::Csv(p) => p.finish(&mut self.sink)?,
            Parser::Jsonl(p) => p.finish(&mut self.sink)?,
            Parser::Pending(_) => unreachable!("started above"),
        }
        if self.bytes == 0 {
            return Err(DatasetError::Empty);
        }
        let sha256 = hex::encode(self.hasher.finalize());
        let encoding = self.decoder.encoding();
        self.sink.finish(sha256, self.bytes, encoding)
    }

    fn decode(&mut self, chunk: &[u8], last: bool) -> Result<(), DatasetError> {
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        let result = self.decoder.decode(chunk, last, &mut text);
        let fed = self.push_text(&text, last);
        self.text = text;
        fed?;
        match result {
            Ok(()) => Ok(()),
            Err(Ok(e)) => Err(DatasetError::BadEncoding {
                offset: e.offset,
                line: self.line(),
                expected: e.expected,
            }),
            Err(Err(StartError::Utf16)) => Err(DatasetError::Utf16),
            Err(Err(StartError::Zip)) => Err(DatasetError::ArchiveGiven),
            Err(Err(StartError::Binary)) => Err(DatasetError::Binary),
        }
    }

    fn line(&self) -> u64 {
        match &self.parser {
            Parser::Pending(buf) => 1 + memchr::memchr_iter(b'\n', buf).count() as u64,
            Parser::Csv(p) => p.line(),
            Parser::Jsonl(p) => p.line(),
        }
    }

    fn push_text(&mut self, text: &[u8], last: bool) -> Result<(), DatasetError> {
        match &mut self.parser {
            Parser::Csv(p) => p.feed(text, &mut self.sink),
            Parser::Jsonl(p) => p.feed(text, &mut self.sink),
            Parser::Pending(buf) => {
                buf.extend_from_slice(text);
                let start = buf.iter().position(|b| !b.is_ascii_whitespace());
                let has_line = start.is_some_and(|s| memchr::memchr(b'\n', &buf[s..]).is_some());
                if has_line || buf.len() >= SNIFF_BYTES || last {
                    let buf = std::mem::take(buf);
                    self.start_parser(buf)?;
                }
                Ok(())
            }
        }
    }

    /// Picks the format and delimiter from the first line, then parses what was held.
    fn start_parser(&mut self, buf: Vec<u8>) -> Result<(), DatasetError> {
        let start = buf.iter().position(|b| !b.is_ascii_whitespace());
        let first = start.map(|s| buf[s]);
        let format = match self.sink.options.format {
            Some(format) => format,
            None if first == Some(b'{') => TableFormat::Jsonl,
            None if first == Some(b'[') => {
                return Err(DatasetError::UnsupportedFormat {
                    message: "this looks like one JSON array; upload JSON Lines instead: one \
                              {…} object per line"
                        .into(),
                });
            }
            None => TableFormat::Csv,
        };
        self.sink.format = format;
        let max_row = self.sink.options.limits.max_row_bytes;
        self.parser = match format {
            TableFormat::Jsonl => Parser::Jsonl(JsonlParser::new(max_row)),
            TableFormat::Csv | TableFormat::Tsv => {
                let delimiter = self.sink.options.delimiter.unwrap_or_else(|| {
                    if format == TableFormat::Tsv {
                        b'\t'
                    } else {
                        sniff_delimiter(&buf[start.unwrap_or(0)..])
                    }
                });
                self.sink.delimiter = Some(delimiter);
                Parser::Csv(CsvParser::new(delimiter, max_row))
            }
        };
        match &mut self.parser {
            Parser::Csv(p) => p.feed(&buf, &mut self.sink),
            Parser::Jsonl(p) => p.feed(&buf, &mut self.sink),
            Parser::Pending(_) => unreachable!("replaced above"),
        }
    }
}

/// Reads a CSV, TSV or JSONL table from `reader` and validates it.
///
/// Memory stays bounded whatever the size of the input (see [`Limits`]).
pub fn validate_table<R: Read>(
    mut reader: R,
    options: ValidationOptions,
) -> Result<DatasetReport, DatasetError> {
    let mut validator = Validator::new(options);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        validator.feed(&buf[..n])?;
    }
    validator.finish()
}

/// Files of an archive that manifest rows may name.
#[derive(Debug, Default)]
pub(crate) struct ArchiveIndex {
    /// Path of the manifest inside the archive (for error locations).
    pub manifest: String,
    /// Paths of files, relative to the manifest's folder.
    pub files: HashSet<String>,
    /// Files named by some row.
    pub referenced: HashSet<String>,
    /// What each media file decoded to (by path relative to the manifest's folder).
    pub checks: HashMap<String, FileCheck>,
    /// PNG data URIs of the first images, by path.
    pub thumbnails: HashMap<String, String>,
}

/// A value of one column in one row.
#[derive(Debug, Clone)]
enum Cell<'a> {
    Missing,
    Text(Cow<'a, str>),
    List(Vec<String>),
}

impl Cell<'_> {
    fn from_text(s: &str) -> Cell<'_> {
        if is_missing(s) {
            Cell::Missing
        } else {
            Cell::Text(Cow::Borrowed(s))
        }
    }

    fn display(&self) -> Option<Cow<'_, str>> {
        match self {
            Cell::Missing => None,
            Cell::Text(s) => Some(Cow::Borrowed(s.as_ref())),
            Cell::List(items) => Some(Cow::Owned(items.join("|"))),
        }
    }

    fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Missing => Cell::Missing,
            Cell::Text(s) => Cell::Text(Cow::Owned(s.into_owned())),
            Cell::List(items) => Cell::List(items),
        }
    }
}

/// Values that mean "no value" in spreadsheets.
fn is_missing(s: &str) -> bool {
    matches!(s.trim(), "" | "NA" | "N/A" | "#N/A" | "null" | "NULL")
}

/// A hash of the normalized (trimmed) values, used for duplicates and conflicts.
fn hash_values<'a>(values: impl Iterator<Item = Option<&'a str>>) -> [u64; 2] {
    let mut a = DefaultHasher::new();
    let mut b = DefaultHasher::new();
    b.write_u8(0x5A);
    for value in values {
        let v = value.map(str::trim).unwrap_or("");
        a.write(v.as_bytes());
        b.write(v.as_bytes());
        // 0xFF never occurs in UTF-8: an unambiguous separator.
        a.write_u8(0xFF);
        b.write_u8(0xFF);
    }
    [a.finish(), b.finish()]
}

/// 32 bits are plenty to tell the few labels of one input apart.
fn hash_label(label: &str) -> u32 {
    let mut h = DefaultHasher::new();
    h.write(label.trim().as_bytes());
    h.finish() as u32
}

/// Column roles decided after the first rows: which columns are checked and how.
struct Roles {
    /// Columns checked row by row: (column, type, required).
    checks: Vec<(usize, ColumnType, bool)>,
    file_columns: HashSet<usize>,
    input_columns: Vec<usize>,
    conflicts: Vec<ConflictTracker>,
    /// Files per modality, per column (for `file` columns).
    modalities: HashMap<usize, HashMap<Modality, u64>>,
}

struct ConflictTracker {
    label_column: usize,
    /// Input hash (64 bits) → (label hash, first line): 16 bytes per row.
    seen: HashMap<u64, (u32, u32)>,
    count: u64,
    /// (first line, first label hash, line, label)
    examples: Vec<(u64, u32, u64, String)>,
}

struct Sink {
    options: ValidationOptions,
    format: TableFormat,
    delimiter: Option<u8>,
    archive: Option<ArchiveIndex>,
    header_seen: bool,
    columns: Vec<String>,
    column_index: HashMap<String, usize>,
    stats: Vec<ColumnStats>,
    rows: u64,
    /// Rows whose values went into the statistics.
    parsed_rows: u64,
    rows_with_errors: u64,
    empty_rows: u64,
    first_empty_line: u64,
    errors: Vec<RowError>,
    error_count: u64,
    sample: Vec<SampleRow>,
    seen_rows: HashMap<[u64; 2], u32>,
    duplicate_rows: u64,
    duplicate_examples: Vec<DuplicateRow>,
    tracking_limited: bool,
    roles: Option<Roles>,
    warmup: Vec<(u64, Vec<Cell<'static>>)>,
    warmup_bytes: usize,
    /// Names given to header cells that were empty.
    unnamed_columns: Vec<String>,
    /// What the files of each `file` column decoded to.
    media: HashMap<usize, MediaStats>,
}

impl Sink {
    fn new(options: ValidationOptions, archive: Option<ArchiveIndex>) -> Sink {
        Sink {
            format: options.format.unwrap_or(TableFormat::Csv),
            options,
            delimiter: None,
            archive,
            header_seen: false,
            columns: Vec::new(),
            column_index: HashMap::new(),
            stats: Vec::new(),
            rows: 0,
            parsed_rows: 0,
            rows_with_errors: 0,
            empty_rows: 0,
            first_empty_line: 0,
            errors: Vec::new(),
            error_count: 0,
            sample: Vec::new(),
            seen_rows: HashMap::new(),
            duplicate_rows: 0,
            duplicate_examples: Vec::new(),
            tracking_limited: false,
            roles: None,
            warmup: Vec::new(),
            warmup_bytes: 0,
            unnamed_columns: Vec::new(),
            media: HashMap::new(),
        }
    }

    /// Records a row error; `failed` tracks whether this row already had one.
    fn row_error(&mut self, line: u64, column: Option<usize>, message: String, failed: &mut bool) {
        self.error_count += 1;
        if !*failed {
            *failed = true;
            self.rows_with_errors += 1;
        }
        if self.errors.len() < self.options.limits.max_errors {
            self.errors.push(RowError {
                file: self.archive.as_ref().map(|a| a.manifest.clone()),
                line: Some(line),
                column: column.map(|c| self.columns[c].clone()),
                message,
            });
        }
    }

    fn empty_row(&mut self, line: u64) {
        if self.empty_rows == 0 {
            self.first_empty_line = line;
        }
        self.empty_rows += 1;
    }

    fn add_column(&mut self, name: String, line: u64) -> Result<usize, DatasetError> {
        if self.columns.len() >= self.options.limits.max_columns {
            return Err(DatasetError::TooManyColumns {
                line,
                limit: self.options.limits.max_columns,
            });
        }
        let index = self.columns.len();
        if let Some(roles) = &mut self.roles {
            // A JSONL key first seen after the roles were decided.
            if let Some(column) = self.options.schema.as_ref().and_then(|s| s.column(&name)) {
                roles
                    .checks
                    .push((index, column.column_type, column.required));
                if column.column_type == ColumnType::File {
                    roles.file_columns.insert(index);
                }
            }
        }
        self.column_index.insert(name.clone(), index);
        self.columns.push(name);
        self.stats.push(ColumnStats::default());
        Ok(index)
    }

    fn header(&mut self, line: u64, fields: &[&str]) -> Result<(), DatasetError> {
        let mut names: Vec<&str> = fields.iter().map(|f| f.trim()).collect();
        while names.last() == Some(&"") && names.len() > 1 {
            names.pop();
        }
        if names.iter().all(|n| n.is_empty()) {
            return Err(DatasetError::MissingHeader {
                line,
                reason: "it has no column names".into(),
            });
        }
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                // Pandas writes its row index under an empty name: name it and warn.
                let generated = format!("column_{}", i + 1);
                if self.column_index.contains_key(&generated) {
                    return Err(DatasetError::DuplicateColumn {
                        line,
                        name: generated,
                    });
                }
                self.unnamed_columns.push(generated.clone());
                self.add_column(generated, line)?;
                continue;
            }
            if parse_number(name).is_some() {
                return Err(DatasetError::MissingHeader {
                    line,
                    reason: format!(
                        "\"{name}\" looks like a value, not a column name; add a first line \
                         with the column names (e.g. text,label)"
                    ),
                });
            }
            if self.column_index.contains_key(*name) {
                return Err(DatasetError::DuplicateColumn {
                    line,
                    name: name.to_string(),
                });
            }
            self.add_column(name.to_string(), line)?;
        }
        if let Some(schema) = &self.options.schema {
            for column in &schema.columns {
                if !self.column_index.contains_key(&column.name) {
                    return Err(DatasetError::MissingColumn {
                        name: column.name.clone(),
                        found: self.columns.clone(),
                    });
                }
            }
        }
        self.header_seen = true;
        Ok(())
    }

    fn data_row(&mut self, line: u64, cells: Vec<Cell<'_>>) {
        self.rows += 1;
        self.parsed_rows += 1;
        if self.sample.len() < self.options.limits.sample_rows {
            self.sample.push(SampleRow {
                line,
                values: cells
                    .iter()
                    .map(|c| c.display().map(|v| truncate(&v, 200)))
                    .collect(),
            });
        }
        for (stats, cell) in self.stats.iter_mut().zip(&cells) {
            if let Some(value) = cell.display() {
                stats.observe(line, &value, matches!(cell, Cell::List(_)));
            }
        }
        if (self.seen_rows.len() as u64) < self.options.limits.max_tracked_rows {
            let values: Vec<Option<Cow<'_, str>>> = cells.iter().map(Cell::display).collect();
            let key = hash_values(values.iter().map(|v| v.as_deref()));
            match self.seen_rows.entry(key) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    self.duplicate_rows += 1;
                    if self.duplicate_examples.len() < 5 {
                        self.duplicate_examples.push(DuplicateRow {
                            line,
                            first_line: u64::from(*first.get()),
                        });
                    }
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(u32::try_from(line).unwrap_or(u32::MAX));
                }
            }
        } else {
            self.tracking_limited = true;
        }
        if self.roles.is_some() {
            self.typed_pass(line, &cells);
        } else {
            self.warmup_bytes += cells
                .iter()
                .map(|c| c.display().map_or(0, |v| v.len()))
                .sum::<usize>();
            self.warmup
                .push((line, cells.into_iter().map(Cell::into_owned).collect()));
            if self.warmup.len() >= WARMUP_ROWS || self.warmup_bytes >= WARMUP_BYTES {
                self.decide_roles();
            }
        }
    }

    /// Decides provisional column types from the rows so far, then checks the held rows.
    fn decide_roles(&mut self) {
        let n = self.columns.len();
        let schema = self.options.schema.clone().unwrap_or_default();
        let mut kinds = Vec::with_capacity(n);
        let mut checks = Vec::new();
        let mut file_columns = HashSet::new();
        for i in 0..n {
            let kind = if let Some(column) = schema.column(&self.columns[i]) {
                checks.push((i, column.column_type, column.required));
                column.column_type
            } else if self.looks_like_file_column(i) {
                checks.push((i, ColumnType::File, false));
                ColumnType::File
            } else {
                self.stats[i].infer(self.delimiter)
            };
            if kind == ColumnType::File {
                file_columns.insert(i);
            }
            kinds.push(kind);
        }
        let input_columns: Vec<usize> = (0..n)
            .filter(|&i| matches!(kinds[i], ColumnType::Text | ColumnType::File))
            .collect();
        let conflicts = if input_columns.is_empty() {
            Vec::new()
        } else {
            (0..n)
                .filter(|&i| kinds[i].is_label())
                .take(MAX_LABEL_COLUMNS_TRACKED)
                .map(|label_column| ConflictTracker {
                    label_column,
                    seen: HashMap::new(),
                    count: 0,
                    examples: Vec::new(),
                })
                .collect()
        };
        self.roles = Some(Roles {
            checks,
            file_columns,
            input_columns,
            conflicts,
            modalities: HashMap::new(),
        });
        for (line, cells) in std::mem::take(&mut self.warmup) {
            self.typed_pass(line, &cells);
        }
        self.warmup_bytes = 0;
    }

    /// In an archive: every value of the held rows has a file extension, and most are
    /// files in the archive or have a media extension (`.png`, `.wav`, …).
    fn looks_like_file_column(&self, column: usize) -> bool {
        let Some(archive) = &self.archive else {
            return false;
        };
        let mut values = 0;
        let mut found = 0;
        let mut media = 0;
        for (_, cells) in &self.warmup {
            if let Some(Cell::Text(v)) = cells.get(column) {
                values += 1;
                if Modality::from_path(v.trim()) != Modality::Other {
                    media += 1;
                }
                let has_extension = v.trim().rsplit_once('.').is_some_and(|(_, ext)| {
                    (1..=5).contains(&ext.len()) && ext.chars().all(|c| c.is_ascii_alphanumeric())
                });
                if !has_extension {
                    return false;
                }
                if normalize_path(v).is_some_and(|p| archive.files.contains(&p)) {
                    found += 1;
                }
            }
        }
        // Image/audio/… names count even when missing: those rows must be errors, not a
        // text column that silently trains on file names.
        values > 0 && (found * 2 >= values || media * 2 >= values)
    }

    /// Checks one row against the column roles: chosen types, file references, conflicts.
    fn typed_pass(&mut self, line: u64, cells: &[Cell<'_>]) {
        let mut roles = self
            .roles
            .take()
            .expect("roles are decided before rows are checked");
        let mut failed = false;
        for &(column, column_type, required) in &roles.checks {
            let cell = cells.get(column).unwrap_or(&Cell::Missing);
            let problem = match (column_type, cell) {
                (_, Cell::Missing) => {
                    required.then(|| "is empty, but this column needs a value".to_string())
                }
                (ColumnType::MultiLabel, _) => None,
                (_, Cell::List(_)) => Some(format!(
                    "holds a list, but this column takes a single {}",
                    column_type.as_str()
                )),
                (ColumnType::Number, Cell::Text(v)) => parse_number(v)
                    .is_none()
                    .then(|| format!("\"{}\" is not a number", truncate(v, 60))),
                (ColumnType::File, Cell::Text(v)) => {
                    self.check_file(column, v, &mut roles.modalities)
                }
                _ => None,
            };
            if let Some(message) = problem {
                self.row_error(line, Some(column), message, &mut failed);
            }
        }
        if !roles.conflicts.is_empty() && !self.tracking_limited {
            let inputs: Vec<Option<Cow<'_, str>>> = roles
                .input_columns
                .iter()
                .map(|&i| cells.get(i).and_then(Cell::display))
                .collect();
            if inputs.iter().any(Option::is_some) {
                let key = hash_values(inputs.iter().map(|v| v.as_deref()));
                for tracker in &mut roles.conflicts {
                    let Some(label) = cells.get(tracker.label_column).and_then(Cell::display)
                    else {
                        continue;
                    };
                    let label_hash = hash_label(&label);
                    match tracker.seen.entry(key[0]) {
                        std::collections::hash_map::Entry::Occupied(first) => {
                            let (first_hash, first_line) = *first.get();
                            if first_hash != label_hash {
                                tracker.count += 1;
                                if tracker.examples.len() < 5 {
                                    tracker.examples.push((
                                        u64::from(first_line),
                                        first_hash,
                                        line,
                                        label.trim().to_string(),
                                    ));
                                }
                            }
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert((label_hash, u32::try_from(line).unwrap_or(u32::MAX)));
                        }
                    }
                }
            }
        }
        self.roles = Some(roles);
    }

    fn check_file(
        &mut self,
        column: usize,
        value: &str,
        modalities: &mut HashMap<usize, HashMap<Modality, u64>>,
    ) -> Option<String> {
        let Some(archive) = &mut self.archive else {
            return Some(format!(
                "\"{}\": file columns can only be checked in a ZIP archive that holds the files",
                truncate(value, 80)
            ));
        };
        let Some(path) = normalize_path(value) else {
            return Some(format!(
                "\"{}\" points outside the archive; name files by their path inside it",
                truncate(value, 80)
            ));
        };
        if !archive.files.contains(&path) {
            return Some(format!(
                "file \"{}\" is not in the archive",
                truncate(value.trim(), 120)
            ));
        }
        *modalities
            .entry(column)
            .or_default()
            .entry(Modality::from_path(&path))
            .or_default() += 1;
        let problem = match archive.checks.get(&path) {
            Some(FileCheck::Failed(reason)) => {
                Some(format!("file \"{}\": {reason}", truncate(&path, 120)))
            }
            Some(FileCheck::Decoded(summary)) => {
                self.media.entry(column).or_default().observe(
                    &path,
                    summary,
                    archive.thumbnails.get(&path),
                );
                None
            }
            None => None,
        };
        if !archive.referenced.contains(&path) {
            archive.referenced.insert(path);
        }
        problem
    }

    fn finish(
        mut self,
        sha256: String,
        bytes: u64,
        encoding: crate::TextEncoding,
    ) -> Result<(DatasetReport, Option<ArchiveIndex>), DatasetError> {
        if self.columns.is_empty() && self.rows == 0 && self.error_count == 0 {
            return Err(if self.format == TableFormat::Jsonl || !self.header_seen {
                DatasetError::Empty
            } else {
                DatasetError::NoRows
            });
        }
        if self.rows == 0 {
            return Err(DatasetError::NoRows);
        }
        if let Some(schema) = &self.options.schema {
            for column in &schema.columns {
                if !self.column_index.contains_key(&column.name) {
                    return Err(DatasetError::MissingColumn {
                        name: column.name.clone(),
                        found: self.columns.clone(),
                    });
                }
            }
        }
        if self.roles.is_none() {
            self.decide_roles();
        }
        let roles = self.roles.take().expect("decided above");
        let schema = self.options.schema.clone().unwrap_or_default();
        let mut warnings = Vec::new();
        if self.empty_rows > 0 {
            warnings.push(Warning::new(WarningKind::EmptyRows {
                count: self.empty_rows,
                first_line: self.first_empty_line,
            }));
        }
        if !self.unnamed_columns.is_empty() {
            warnings.push(Warning::new(WarningKind::UnnamedColumns {
                columns: std::mem::take(&mut self.unnamed_columns),
            }));
        }
        if self.duplicate_rows > 0 {
            warnings.push(Warning::new(WarningKind::DuplicateRows {
                count: self.duplicate_rows,
                examples: std::mem::take(&mut self.duplicate_examples),
            }));
        }
        if self.tracking_limited {
            warnings.push(Warning::new(WarningKind::TrackingLimited {
                rows: self.options.limits.max_tracked_rows,
            }));
        }

        let mut columns = Vec::with_capacity(self.columns.len());
        for (i, name) in self.columns.iter().enumerate() {
            let stats = &self.stats[i];
            let (column_type, type_source) = match schema.column(name) {
                Some(c) => (c.column_type, TypeSource::Schema),
                None if roles.file_columns.contains(&i) => (ColumnType::File, TypeSource::Inferred),
                None => (stats.infer(self.delimiter), TypeSource::Inferred),
            };
            let missing = self.parsed_rows.saturating_sub(stats.present);
            let mut profile = ColumnProfile {
                name: name.clone(),
                column_type,
                type_source,
                modality: None,
                present: stats.present,
                missing,
                distinct: (!stats.overflow).then_some(stats.values.len() as u64),
                top_values: Vec::new(),
                length: None,
                number: None,
                media: self.media.remove(&i).map(MediaStats::finish),
            };
            if stats.present == 0 {
                warnings.push(Warning::new(WarningKind::EmptyColumn {
                    column: name.clone(),
                }));
            }
            match column_type {
                ColumnType::Text => {
                    profile.length = stats.length_stats();
                    let not_numbers = stats.present - stats.numeric;
                    if type_source == TypeSource::Inferred
                        && stats.numeric > 0
                        && stats.lists == 0
                        && not_numbers * 10 <= stats.present
                    {
                        warnings.push(Warning::new(WarningKind::MostlyNumbers {
                            column: name.clone(),
                            not_numbers,
                            examples: stats
                                .non_numeric
                                .iter()
                                .map(|(line, value)| LineValue {
                                    line: *line,
                                    value: value.clone(),
                                })
                                .collect(),
                        }));
                    }
                }
                ColumnType::Number => {
                    profile.number = stats.number_stats();
                    let distinct = stats.values.len();
                    if type_source == TypeSource::Inferred
                        && !stats.overflow
                        && stats.integers == stats.numeric
                        && (2..=10).contains(&distinct)
                        && stats.present >= 2 * distinct as u64
                    {
                        let mut values: Vec<(f64, String)> = stats
                            .values
                            .keys()
                            .map(|v| (parse_number(v).unwrap_or(0.0), v.trim().to_string()))
                            .collect();
                        values.sort_by(|a, b| a.0.total_cmp(&b.0));
                        values.dedup_by(|a, b| a.0 == b.0);
                        warnings.push(Warning::new(WarningKind::NumbersLookLikeClasses {
                            column: name.clone(),
                            values: values.into_iter().map(|(_, v)| v).collect(),
                        }));
                    }
                }
                ColumnType::Category | ColumnType::MultiLabel => {
                    let counts = if column_type == ColumnType::MultiLabel {
                        stats
                            .list_separator(self.delimiter)
                            .map_or_else(|| stats.item_counts('|'), |sep| stats.item_counts(sep))
                    } else {
                        (!stats.overflow).then(|| stats.values.clone())
                    };
                    if let Some(counts) = counts {
                        profile.distinct = Some(counts.len() as u64);
                        profile.top_values = top_k(&counts, TOP_K);
                        class_warnings(name, &counts, &mut warnings);
                    } else {
                        profile.distinct = None;
                    }
                }
                ColumnType::File => {
                    if let Some(counts) = roles.modalities.get(&i) {
                        profile.modality = counts
                            .iter()
                            .max_by_key(|(m, c)| (**c, std::cmp::Reverse(**m)))
                            .map(|(m, _)| *m);
                        if counts.keys().filter(|m| **m != Modality::Other).count() > 1 {
                            warnings.push(Warning::new(WarningKind::MixedModalities {
                                column: name.clone(),
                            }));
                        }
                    }
                }
            }
            columns.push(profile);
        }

        for tracker in &roles.conflicts {
            let label_type = columns[tracker.label_column].column_type;
            if tracker.count == 0 || !label_type.is_label() {
                continue;
            }
            let stats = &self.stats[tracker.label_column];
            let label_of = |hash: u32| {
                stats
                    .values
                    .keys()
                    .find(|v| hash_label(v) == hash)
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            warnings.push(Warning::new(WarningKind::ConflictingLabels {
                input_columns: roles
                    .input_columns
                    .iter()
                    .map(|&i| self.columns[i].clone())
                    .collect(),
                label_column: self.columns[tracker.label_column].clone(),
                count: tracker.count,
                examples: tracker
                    .examples
                    .iter()
                    .map(|(first_line, first_hash, line, label)| LabelConflict {
                        first_line: *first_line,
                        first_label: label_of(*first_hash),
                        line: *line,
                        label: label.clone(),
                    })
                    .collect(),
            }));
        }

        let n = self.columns.len();
        for row in &mut self.sample {
            row.values.resize(n, None);
        }
        self.errors.sort_by_key(|e| e.line);
        let report = DatasetReport {
            status: if self.error_count == 0 {
                Status::Accepted
            } else {
                Status::Rejected
            },
            sha256,
            bytes,
            error_count: self.error_count,
            errors: self.errors,
            warnings,
            profile: Profile {
                format: self.format,
                encoding,
                delimiter: match self.format {
                    TableFormat::Jsonl => None,
                    _ => self.delimiter.map(char::from),
                },
                rows: self.rows,
                valid_rows: self.rows - self.rows_with_errors,
                rows_with_errors: self.rows_with_errors,
                empty_rows: self.empty_rows,
                duplicate_rows: self.duplicate_rows,
                columns,
                sample: self.sample,
                archive: None,
            },
        };
        Ok((report, self.archive))
    }
}

/// Warnings about the classes of one label column.
fn class_warnings(column: &str, counts: &HashMap<String, u64>, warnings: &mut Vec<Warning>) {
    if counts.len() == 1 {
        let value = counts.keys().next().cloned().unwrap_or_default();
        warnings.push(Warning::new(WarningKind::SingleClass {
            column: column.to_string(),
            value,
        }));
    }
    let mut rare: Vec<_> = top_k(counts, MAX_DISTINCT)
        .into_iter()
        .filter(|c| c.count < MIN_EXAMPLES_PER_CLASS)
        .collect();
    if !rare.is_empty() {
        rare.sort_by(|a, b| a.count.cmp(&b.count).then_with(|| a.value.cmp(&b.value)));
        let total = rare.len() as u64;
        rare.truncate(10);
        warnings.push(Warning::new(WarningKind::RareClasses {
            column: column.to_string(),
            classes: rare,
            total,
        }));
    }
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for value in counts.keys() {
        let key = value
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        groups.entry(key).or_default().push(value.clone());
    }
    let mut similar: Vec<Vec<String>> = groups
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    if !similar.is_empty() {
        similar.sort();
        similar.truncate(10);
        warnings.push(Warning::new(WarningKind::SimilarLabels {
            column: column.to_string(),
            groups: similar,
        }));
    }
}

/// A manifest value as a path inside the archive: `\` → `/`, no leading `./`; `None` if
/// it is absolute or leaves the archive.
pub(crate) fn normalize_path(value: &str) -> Option<String> {
    let path = value.trim().replace('\\', "/");
    if path.starts_with('/') || path.as_bytes().get(1) == Some(&b':') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// One JSONL line: an object with its keys in file order (so columns keep the order the
/// user wrote them in), or what was found instead.
enum JsonRow {
    Object(Vec<(String, serde_json::Value)>),
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for JsonRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = JsonRow;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonRow, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(JsonRow::Object(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonRow, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(JsonRow::Other("a list [...]"))
            }
            fn visit_str<E>(self, _: &str) -> Result<JsonRow, E> {
                Ok(JsonRow::Other("a string"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<JsonRow, E> {
                Ok(JsonRow::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<JsonRow, E> {
                Ok(JsonRow::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<JsonRow, E> {
                Ok(JsonRow::Other("a number"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<JsonRow, E> {
                Ok(JsonRow::Other("true or false"))
            }
            fn visit_unit<E>(self) -> Result<JsonRow, E> {
                Ok(JsonRow::Other("null"))
            }
        }
        deserializer.deserialize_any(RowVisitor)
    }
}

impl RecordSink for Sink {
    fn csv_record(&mut self, line: u64, fields: &[&str]) -> Result<(), DatasetError> {
        let blank = fields.iter().all(|f| f.trim().is_empty());
        if !self.header_seen {
            return if blank {
                Ok(())
            } else {
                self.header(line, fields)
            };
        }
        if blank {
            self.empty_row(line);
            return Ok(());
        }
        let n = self.columns.len();
        let fits = fields.len() == n
            || (fields.len() > n && fields[n..].iter().all(|f| f.trim().is_empty()));
        if !fits {
            self.rows += 1;
            let names = if n <= 4 {
                self.columns.join(", ")
            } else {
                format!("{}, …", self.columns[..3].join(", "))
            };
            let mut message = format!("expected {n} columns ({names}) but found {}", fields.len());
            if fields.len() > n {
                match self.delimiter {
                    Some(b',') => {
                        message.push_str("; a value that contains a comma must be in double quotes")
                    }
                    Some(b';') => message
                        .push_str("; a value that contains a semicolon must be in double quotes"),
                    _ => {}
                }
            }
            self.row_error(line, None, message, &mut false);
            return Ok(());
        }
        let cells = fields[..n].iter().map(|f| Cell::from_text(f)).collect();
        self.data_row(line, cells);
        Ok(())
    }

    fn json_line(&mut self, line: u64, text: &str) -> Result<(), DatasetError> {
        if text.trim().is_empty() {
            self.empty_row(line);
            return Ok(());
        }
        let row: JsonRow = match serde_json::from_str(text) {
            Ok(row) => row,
            Err(e) => {
                self.rows += 1;
                let full = e.to_string();
                let reason = full
                    .split(" at line ")
                    .next()
                    .unwrap_or(&full)
                    .replace('`', "'");
                let message = format!("invalid JSON: {reason} at column {}", e.column());
                self.row_error(line, None, message, &mut false);
                return Ok(());
            }
        };
        let object = match row {
            JsonRow::Object(object) => object,
            JsonRow::Other(found) => {
                self.rows += 1;
                let message = format!("expected a JSON object {{…}} but found {found}");
                self.row_error(line, None, message, &mut false);
                return Ok(());
            }
        };
        if object.is_empty() {
            self.empty_row(line);
            return Ok(());
        }
        let mut cells: Vec<Cell<'_>> = vec![Cell::Missing; self.columns.len()];
        let mut failed = false;
        let mut problems = Vec::new();
        for (key, value) in object {
            let index = match self.column_index.get(&key) {
                Some(&i) => i,
                None => {
                    let i = self.add_column(key, line)?;
                    cells.push(Cell::Missing);
                    i
                }
            };
            cells[index] = match value {
                serde_json::Value::Null => Cell::Missing,
                serde_json::Value::String(s) if is_missing(&s) => Cell::Missing,
                serde_json::Value::String(s) => Cell::Text(Cow::Owned(s)),
                serde_json::Value::Number(n) => Cell::Text(Cow::Owned(n.to_string())),
                serde_json::Value::Bool(b) => {
                    Cell::Text(Cow::Borrowed(if b { "true" } else { "false" }))
                }
                serde_json::Value::Array(items) => {
                    let mut list = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            serde_json::Value::String(s) => list.push(s),
                            serde_json::Value::Number(n) => list.push(n.to_string()),
                            serde_json::Value::Bool(b) => list.push(b.to_string()),
                            _ => {
                                problems.push((
                                    index,
                                    "a list may hold only text, numbers and true/false".to_string(),
                                ));
                                break;
                            }
                        }
                    }
                    Cell::List(list)
                }
                serde_json::Value::Object(_) => {
                    problems.push((
                        index,
                        "holds a nested object {…}; put its fields in separate keys".to_string(),
                    ));
                    Cell::Missing
                }
            };
        }
        if !problems.is_empty() {
            self.rows += 1;
            for (column, message) in problems {
                self.row_error(line, Some(column), message, &mut failed);
            }
            return Ok(());
        }
        self.data_row(line, cells);
        Ok(())
    }

    fn unterminated_quote(&mut self, line: u64) {
        self.rows += 1;
        let message = "a value opened with a quote (\") on this line is never closed, so the \
                       rest of the file was read as part of it"
            .to_string();
        self.row_error(line, None, message, &mut false);
    }
}
