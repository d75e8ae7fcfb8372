//! Parsing, validation and profiling of uploaded datasets, apart from HTTP, SQL and
//! object storage: bytes in, typed results out.
//!
//! - Tables: CSV and TSV (delimiter detected or given) and JSONL, in UTF-8 (with or
//!   without BOM) or GB18030 (detected). Push chunks into a [`Validator`] (or hand a
//!   reader to [`validate_table`]); memory stays bounded whatever the size.
//! - Archives: a ZIP of files (images, audio, …) with a `manifest.csv` / `manifest.jsonl`
//!   naming each file and its labels: [`validate_archive`], which needs `Read + Seek`
//!   (give it the temporary file the upload was spooled to).
//!
//! Problems come in two kinds (see [`error`]): a [`DatasetError`] means the upload is not a
//! readable dataset at all; [`RowError`]s belong to rows, and any of them makes the
//! [`DatasetReport`] [`Status::Rejected`]. Warnings never reject.
//!
//! To let a user change column types, take [`DatasetReport::schema`], edit it, and validate
//! the same bytes again with [`ValidationOptions::schema`] set.

mod archive;
mod decode;
pub mod error;
mod parse;
mod profile;
mod schema;
mod validator;
mod warnings;

pub use archive::validate_archive;
pub use decode::TextEncoding;
pub use error::{DatasetError, RowError};
pub use profile::{
    ArchiveProfile, ColumnProfile, LengthBin, LengthStats, NumberStats, Profile, SampleRow,
    TableFormat, TypeSource, ValueCount,
};
pub use schema::{ColumnSchema, ColumnType, Modality, Schema};
pub use validator::{
    DatasetReport, Limits, RetainedState, Status, ValidationOptions, Validator, validate_table,
};
pub use warnings::{
    DuplicateRow, LabelConflict, LineValue, MIN_EXAMPLES_PER_CLASS, Warning, WarningKind,
};
