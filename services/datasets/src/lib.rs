//! Parsing, validation and profiling of uploaded datasets, apart from HTTP, SQL and
//! object storage: bytes in, typed results out.
//!
//! - Tables: CSV and TSV (delimiter detected or given) and JSONL, in UTF-8 (with or
//!   without BOM) or GB18030 (detected). Push chunks into a [`Validator`] (or hand a
//!   reader to [`validate_table`]); memory stays bounded whatever the size.
//! - [`validate_upload`] takes either kind from a `Read + Seek` (a temporary file) and
//!   picks by the first bytes: the simplest entry point for the portal.
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
//!
//! Validation is CPU work: call it from a blocking thread (`spawn_blocking`), not on the
//! async executor. A [`Validator`] is `Send`, so it can be fed from one.
//!
//! ```
//! use tailor_datasets::{ColumnType, Status, TableFormat, ValidationOptions, Validator};
//!
//! let options = ValidationOptions {
//!     format: TableFormat::from_file_name("reviews.csv"), // or None: detected
//!     ..Default::default()
//! };
//! let mut validator = Validator::new(options.clone());
//! for chunk in [&b"text,rating\ngreat drug,9\n"[..], b"made me dizzy,ten\n"] {
//!     validator.feed(chunk)?; // a DatasetError here: refuse the upload, show err.to_string()
//! }
//! let report = validator.finish()?;
//! assert_eq!(report.status, Status::Accepted); // "ten" made `rating` a text column
//!
//! // The user says `rating` is a number: check every row again with that type.
//! let mut schema = report.schema();
//! schema.columns[1].column_type = ColumnType::Number;
//! let again = tailor_datasets::validate_table(
//!     &b"text,rating\ngreat drug,9\nmade me dizzy,ten\n"[..],
//!     ValidationOptions { schema: Some(schema), ..options },
//! )?;
//! assert_eq!(again.status, Status::Rejected);
//! assert_eq!(again.errors[0].to_string(), "line 3, column \"rating\": \"ten\" is not a number");
//! let _stored = serde_json::to_string(&again)?; // profile, errors and warnings as JSON
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod archive;
mod decode;
pub mod error;
mod media;
mod parse;
mod profile;
mod schema;
mod validator;
mod warnings;

pub use archive::{ArchiveContents, read_archive, validate_archive, validate_upload};
pub use decode::TextEncoding;
pub use error::{DatasetError, RowError};
pub use media::{AudioSummary, ImageSummary, MediaProfile, SignalSummary, Thumbnail};
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
