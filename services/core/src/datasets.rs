//! Datasets: a name per organization, and immutable, validated versions of it.
//!
//! An upload streams into a temporary file (memory stays flat, and ZIP archives need
//! `Read + Seek`), is validated there by `tailor_datasets` on a blocking thread, and only
//! then is written to the object store at `orgs/{org}/datasets/{dataset}/v{n}/data.{ext}`
//! and recorded — dataset row and version row in one transaction. If anything fails after
//! the object was written, the object is deleted: a rejected or failed upload leaves no
//! object and no row.
//!
//! Changing column types never edits a version: the stored file is validated again with
//! the new types and, if every row passes, becomes a new version (`derived_from` the old).
//!
//! Every query filters on the caller's [`OrgId`] (see [`crate::tenancy`]).

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use object_store::{ObjectStore, WriteMultipart, path::Path};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, types::Json};
use tailor_datasets::{
    ColumnSchema, ColumnType, DatasetError, DatasetReport, Limits, Profile, RowError, Schema,
    Status, TableFormat, ValidationOptions, Warning,
};
use uuid::Uuid;

use crate::{
    error::{Error, OrNotFound},
    storage::{self, Store},
    tenancy::OrgId,
};

/// Most row errors an answer lists; all of them are counted.
pub const MAX_LISTED_ERRORS: usize = 100;
const PART_SIZE: usize = 8 * 1024 * 1024;

/// A dataset name as a user typed it: trimmed, 1 to 100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(raw: &str) -> Result<DatasetName, Error> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(Error::validation("name", "Give the dataset a name."));
        }
        if name.chars().count() > 100 {
            return Err(Error::validation(
                "name",
                "A dataset name has at most 100 characters.",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(Error::validation(
                "name",
                "A dataset name cannot contain control characters.",
            ));
        }
        Ok(DatasetName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Dataset {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Newest version number (every dataset has at least one).
    pub latest_version: i32,
    pub row_count: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DatasetVersion {
    pub id: Uuid,
    pub dataset_id: Uuid,
    pub version: i32,
    pub status: String,
    #[serde(skip)]
    pub object_key: String,
    pub file_name: Option<String>,
    pub format: String,
    pub sha256: String,
    pub bytes: i64,
    pub row_count: i64,
    pub schema: Json<Schema>,
    pub profile: Json<Profile>,
    pub warnings: Json<Vec<Warning>>,
    pub derived_from: Option<i32>,
    pub uploaded_by: Option<Uuid>,
    /// Display name of the uploader.
    pub uploaded_by_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Why an upload (or a schema change) was refused. Maps to 413 / 422 with the row errors.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Not a dataset that can be read at all (or over the size limit).
    #[error("{0}")]
    Unreadable(DatasetError),
    /// Readable, but some rows are wrong: the first ones with their lines, and the count.
    #[error("{error_count} rows have errors")]
    Rejected {
        error_count: u64,
        errors: Vec<RowError>,
    },
    #[error(transparent)]
    Other(#[from] Error),
}

impl From<sqlx::Error> for UploadError {
    fn from(e: sqlx::Error) -> Self {
        UploadError::Other(e.into())
    }
}

impl From<anyhow::Error> for UploadError {
    fn from(e: anyhow::Error) -> Self {
        UploadError::Other(e.into())
    }
}

fn sentence(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

impl actix_web::ResponseError for UploadError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self {
            UploadError::Unreadable(DatasetError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::Unreadable(DatasetError::Io(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            UploadError::Unreadable(_) | UploadError::Rejected { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            UploadError::Other(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let status = self.status_code();
        let body = match self {
            UploadError::Other(e) => return e.error_response(),
            UploadError::Unreadable(e @ DatasetError::Io(_)) => {
                tracing::error!(error = %e, "reading a spooled upload");
                serde_json::json!({ "error": { "code": "unexpected",
                    "message": "Something went wrong on our side." } })
            }
            UploadError::Unreadable(e) => {
                let mut body = serde_json::json!({ "error": {
                    "code": e.code(), "message": sentence(&e.to_string()) } });
                if let DatasetError::TooLarge { limit } = e {
                    body["error"]["limit_bytes"] = (*limit).into();
                }
                body
            }
            UploadError::Rejected {
                error_count,
                errors,
            } => serde_json::json!({
                "error": {
                    "code": "rows_rejected",
                    "message": format!(
                        "{error_count} row(s) have errors; fix them and upload the file again."
                    ),
                    "error_count": error_count,
                    "errors": errors,
                }
            }),
        };
        actix_web::HttpResponse::build(status).json(body)
    }
}

/// The validation limits for an upload of at most `max_bytes`.
/// An archive may unpack to 16 times the upload limit (at most the library's 4 GiB):
/// more than that is a ZIP bomb, or too much to train on.
pub fn limits(max_bytes: u64) -> Limits {
    let defaults = Limits::default();
    Limits {
        max_bytes,
        max_errors: MAX_LISTED_ERRORS,
        max_unpacked_bytes: defaults
            .max_unpacked_bytes
            .min(max_bytes.saturating_mul(16)),
        ..defaults
    }
}

/// Streams `body` into an anonymous temporary file, refusing it once it passes
/// `max_bytes`. Memory use is one chunk, whatever the size.
pub async fn spool<S, E>(mut body: S, max_bytes: u64) -> Result<std::fs::File, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use tokio::io::AsyncWriteExt;
    let file = tempfile::tempfile().context("creating a temporary file for an upload")?;
    let mut file = tokio::fs::File::from_std(file);
    let mut written: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| Error::validation("body", format!("The upload was interrupted ({e}).")))?;
        written += chunk.len() as u64;
        if written > max_bytes {
            return Err(UploadError::Unreadable(DatasetError::TooLarge {
                limit: max_bytes,
            }));
        }
        file.write_all(&chunk)
            .await
            .context("writing an upload to its temporary file")?;
    }
    file.flush().await.context("flushing an upload")?;
    Ok(file.into_std().await)
}

/// Validates the file on a blocking thread; gives the file back for storing.
async fn validate(
    mut file: std::fs::File,
    file_name: Option<String>,
    options: ValidationOptions,
) -> Result<(std::fs::File, DatasetReport), UploadError> {
    let span = tracing::Span::current();
    let (file, result) = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let result = tailor_datasets::validate_upload(&mut file, file_name.as_deref(), options);
        (file, result)
    })
    .await
    .context("the validation thread panicked")?;
    let report = result.map_err(UploadError::Unreadable)?;
    if report.status == Status::Rejected {
        let mut errors = report.errors;
        errors.truncate(MAX_LISTED_ERRORS);
        return Err(UploadError::Rejected {
            error_count: report.error_count,
            errors,
        });
    }
    Ok((file, report))
}

fn extension(report: &DatasetReport) -> &'static str {
    if report.profile.archive.is_some() {
        return "zip";
    }
    match report.profile.format {
        TableFormat::Csv => "csv",
        TableFormat::Tsv => "tsv",
        TableFormat::Jsonl => "jsonl",
    }
}

fn format_name(report: &DatasetReport) -> &'static str {
    extension(report)
}

/// Writes the file to `key` with a multipart put, one part in memory at a time.
async fn put_file(store: &Store, key: &Path, mut file: std::fs::File) -> anyhow::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let upload = store
        .put_multipart(key)
        .await
        .with_context(|| format!("starting the upload of {key}"))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut buffer = vec![0u8; 1024 * 1024];
    let copied: anyhow::Result<()> = async {
        loop {
            let n = read_some(&mut file, &mut buffer)?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(2).await?;
            writer.write(&buffer[..n]);
        }
        Ok(())
    }
    .await;
    match copied {
        Ok(()) => {
            writer
                .finish()
                .await
                .with_context(|| format!("finishing the upload of {key}"))?;
            Ok(())
        }
        Err(e) => {
            let _ = writer.abort().await;
            Err(e.context(format!("uploading {key}")))
        }
    }
}

fn read_some(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Deletes an object written for a version that was not recorded; logs, never fails.
async fn discard(store: &Store, key: &Path) {
    if let Err(e) = store.delete(key).await {
        tracing::error!(error = %e, %key, "could not delete the object of a failed upload");
    }
}

/// Who writes a dataset version, and in which organization.
#[derive(Debug, Clone, Copy)]
pub struct Author {
    pub org: OrgId,
    pub user: Uuid,
}

/// What to record for a new version.
struct NewVersion<'a> {
    org: OrgId,
    user: Uuid,
    file_name: Option<&'a str>,
    derived_from: Option<i32>,
    report: &'a DatasetReport,
    schema: Schema,
}

/// Stores the validated `file` as the next version of `dataset` (a name, created if new,
/// or an id) and records it, all or nothing.
async fn store_version(
    pool: &PgPool,
    store: &Store,
    dataset: DatasetRef<'_>,
    file: std::fs::File,
    new: NewVersion<'_>,
) -> Result<DatasetVersion, UploadError> {
    let mut tx = pool.begin().await?;
    let dataset_id: Uuid = match dataset {
        DatasetRef::Name(name) => {
            sqlx::query(
                "INSERT INTO datasets (id, org_id, name, created_by) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (org_id, name) DO NOTHING",
            )
            .bind(Uuid::now_v7())
            .bind(new.org)
            .bind(name.as_str())
            .bind(new.user)
            .execute(&mut *tx)
            .await?;
            // The row lock serialises concurrent uploads of one dataset: version numbers
            // stay dense and unique.
            sqlx::query_scalar("SELECT id FROM datasets WHERE org_id = $1 AND name = $2 FOR UPDATE")
                .bind(new.org)
                .bind(name.as_str())
                .fetch_one(&mut *tx)
                .await?
        }
        DatasetRef::Id(id) => {
            sqlx::query_scalar("SELECT id FROM datasets WHERE org_id = $1 AND id = $2 FOR UPDATE")
                .bind(new.org)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .or_not_found()?
        }
    };
    let version: i32 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM dataset_versions
         WHERE org_id = $1 AND dataset_id = $2",
    )
    .bind(new.org)
    .bind(dataset_id)
    .fetch_one(&mut *tx)
    .await?;
    let key = Path::from(format!(
        "{}/data.{}",
        storage::dataset_version_prefix(new.org, dataset_id, version),
        extension(new.report)
    ));
    put_file(store, &key, file).await?;
    let recorded: Result<Uuid, sqlx::Error> = async {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO dataset_versions (id, org_id, dataset_id, version, object_key, file_name,
                 format, sha256, bytes, row_count, schema, profile, warnings, derived_from,
                 uploaded_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(id)
        .bind(new.org)
        .bind(dataset_id)
        .bind(version)
        .bind(key.as_ref())
        .bind(new.file_name)
        .bind(format_name(new.report))
        .bind(&new.report.sha256)
        .bind(new.report.bytes as i64)
        .bind(new.report.profile.rows as i64)
        .bind(Json(&new.schema))
        .bind(Json(&new.report.profile))
        .bind(Json(&new.report.warnings))
        .bind(new.derived_from)
        .bind(new.user)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }
    .await;
    match recorded {
        Ok(_) => Ok(find_version(pool, new.org, dataset_id, version)
            .await?
            .or_not_found()?),
        Err(e) => {
            discard(store, &key).await;
            Err(e.into())
        }
    }
}

enum DatasetRef<'a> {
    Name(&'a DatasetName),
    Id(Uuid),
}

/// Validates an upload spooled to `file` and stores it as the next version of the
/// dataset called `name` (created on first upload).
#[tracing::instrument(skip(pool, store, file), fields(org_id = %author.org))]
pub async fn upload(
    pool: &PgPool,
    store: &Store,
    author: Author,
    name: &DatasetName,
    file_name: Option<&str>,
    file: std::fs::File,
    max_bytes: u64,
) -> Result<DatasetVersion, UploadError> {
    let options = ValidationOptions {
        limits: limits(max_bytes),
        ..Default::default()
    };
    let (file, report) = validate(file, file_name.map(str::to_owned), options).await?;
    let schema = report.schema();
    let new = NewVersion {
        org: author.org,
        user: author.user,
        file_name,
        derived_from: None,
        report: &report,
        schema,
    };
    store_version(pool, store, DatasetRef::Name(name), file, new).await
}

/// A change of column types asked for by a user: only the columns named change.
#[derive(Debug, Clone, Deserialize)]
pub struct SchemaChange {
    pub columns: Vec<ColumnTypeChange>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ColumnTypeChange {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: String,
}

fn parse_column_type(raw: &str) -> Option<ColumnType> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).ok()
}

/// Validates the file of version `version` again with changed column types; if every row
/// passes, records it as a new version. The old version is left as it was.
#[tracing::instrument(skip(pool, store, change), fields(org_id = %author.org))]
pub async fn change_schema(
    pool: &PgPool,
    store: &Store,
    author: Author,
    dataset: Uuid,
    version: i32,
    change: SchemaChange,
    max_bytes: u64,
) -> Result<DatasetVersion, UploadError> {
    let base = find_version(pool, author.org, dataset, version)
        .await?
        .or_not_found()?;
    let mut schema = base.schema.0.clone();
    let mut changed = false;
    for c in &change.columns {
        let column_type = parse_column_type(&c.column_type).ok_or_else(|| {
            Error::validation(
                "columns",
                format!(
                    "\"{}\" is not a column type; use text, category, number, multi_label or file.",
                    c.column_type
                ),
            )
        })?;
        let column = schema
            .columns
            .iter_mut()
            .find(|s| s.name == c.name)
            .ok_or_else(|| {
                Error::validation(
                    "columns",
                    format!("The dataset has no column \"{}\".", c.name),
                )
            })?;
        if column.column_type != column_type {
            changed = true;
        }
        *column = ColumnSchema {
            name: column.name.clone(),
            column_type,
            required: column.required,
        };
    }
    if !changed {
        return Err(Error::validation("columns", "No column type was changed.").into());
    }
    let file = download(store, &Path::from(base.object_key.as_str())).await?;
    let options = ValidationOptions {
        limits: limits(max_bytes.max(base.bytes as u64)),
        schema: Some(schema.clone()),
        ..Default::default()
    };
    let (file, report) = validate(file, base.file_name.clone(), options).await?;
    let new = NewVersion {
        org: author.org,
        user: author.user,
        file_name: base.file_name.as_deref(),
        derived_from: Some(base.version),
        report: &report,
        schema: report.schema(),
    };
    store_version(pool, store, DatasetRef::Id(dataset), file, new).await
}

/// Copies an object into an anonymous temporary file, chunk by chunk.
async fn download(store: &Store, key: &Path) -> anyhow::Result<std::fs::File> {
    let mut file = tempfile::tempfile().context("creating a temporary file")?;
    let mut stream = store
        .get(key)
        .await
        .with_context(|| format!("reading {key}"))?
        .into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {key}"))?;
        file.write_all(&chunk)?;
    }
    file.flush()?;
    Ok(file)
}

/// The stored file of a version, as a stream of chunks.
pub async fn open(
    store: &Store,
    version: &DatasetVersion,
) -> anyhow::Result<impl Stream<Item = Result<Bytes, object_store::Error>> + use<>> {
    let key = Path::from(version.object_key.as_str());
    Ok(store
        .get(&key)
        .await
        .with_context(|| format!("opening {key}"))?
        .into_stream())
}

const DATASET_COLUMNS: &str = "d.id, d.name, d.created_at, v.version AS latest_version,
    v.row_count, v.created_at AS updated_at
    FROM datasets d
    JOIN LATERAL (SELECT version, row_count, created_at FROM dataset_versions
                  WHERE org_id = d.org_id AND dataset_id = d.id
                  ORDER BY version DESC LIMIT 1) v ON true";

#[tracing::instrument(skip(pool))]
pub async fn list(pool: &PgPool, org: OrgId) -> sqlx::Result<Vec<Dataset>> {
    sqlx::query_as(&format!(
        "SELECT {DATASET_COLUMNS} WHERE d.org_id = $1 ORDER BY v.created_at DESC"
    ))
    .bind(org)
    .fetch_all(pool)
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, org: OrgId, id: Uuid) -> sqlx::Result<Option<Dataset>> {
    sqlx::query_as(&format!(
        "SELECT {DATASET_COLUMNS} WHERE d.org_id = $1 AND d.id = $2"
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
    .await
}

const VERSION_COLUMNS: &str = "v.id, v.dataset_id, v.version, v.status, v.object_key,
    v.file_name, v.format, v.sha256, v.bytes, v.row_count, v.schema, v.profile, v.warnings,
    v.derived_from, v.uploaded_by, u.display_name AS uploaded_by_name, v.created_at
    FROM dataset_versions v LEFT JOIN users u ON u.id = v.uploaded_by";

#[tracing::instrument(skip(pool))]
pub async fn find_version(
    pool: &PgPool,
    org: OrgId,
    dataset: Uuid,
    version: i32,
) -> sqlx::Result<Option<DatasetVersion>> {
    sqlx::query_as(&format!(
        "SELECT {VERSION_COLUMNS} WHERE v.org_id = $1 AND v.dataset_id = $2 AND v.version = $3"
    ))
    .bind(org)
    .bind(dataset)
    .bind(version)
    .fetch_optional(pool)
    .await
}

/// Versions of a dataset, newest first, without their profiles.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct VersionSummary {
    pub version: i32,
    pub row_count: i64,
    pub bytes: i64,
    pub sha256: String,
    pub file_name: Option<String>,
    pub derived_from: Option<i32>,
    pub uploaded_by_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[tracing::instrument(skip(pool))]
pub async fn versions(
    pool: &PgPool,
    org: OrgId,
    dataset: Uuid,
) -> sqlx::Result<Vec<VersionSummary>> {
    sqlx::query_as(
        "SELECT v.version, v.row_count, v.bytes, v.sha256, v.file_name, v.derived_from,
                u.display_name AS uploaded_by_name, v.created_at
         FROM dataset_versions v LEFT JOIN users u ON u.id = v.uploaded_by
         WHERE v.org_id = $1 AND v.dataset_id = $2 ORDER BY v.version DESC",
    )
    .bind(org)
    .bind(dataset)
    .fetch_all(pool)
    .await
}

/// A small built-in dataset for the demo when the drug reviews are not on disk.
const DEMO_CSV: &str = include_str!("datasets_demo.csv");

/// Gives the demo organization a dataset ("Drug reviews") unless it has one: the drug
/// reviews from `$TAILOR_ASSETS/drugreview/drugsComTrain.tsv` when present (assets default
/// to `/var/tmp/tailor-assets`), a small built-in CSV otherwise.
#[tracing::instrument(skip(pool, store))]
pub async fn ensure_demo_dataset(
    pool: &PgPool,
    store: &Store,
    org: OrgId,
    user: Uuid,
    max_bytes: u64,
) -> Result<(), UploadError> {
    let name = DatasetName::parse("Drug reviews")?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM datasets WHERE org_id = $1 AND name = $2)",
    )
    .bind(org)
    .bind(name.as_str())
    .fetch_one(pool)
    .await?;
    if exists {
        return Ok(());
    }
    let assets = std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into());
    let tsv = std::path::Path::new(&assets).join("drugreview/drugsComTrain.tsv");
    let author = Author { org, user };
    let from_assets = match std::fs::File::open(&tsv) {
        Ok(file) => {
            match upload(
                pool,
                store,
                author,
                &name,
                Some("drugsComTrain.tsv"),
                file,
                max_bytes,
            )
            .await
            {
                Ok(version) => Some(version),
                Err(e @ (UploadError::Unreadable(_) | UploadError::Rejected { .. })) => {
                    tracing::warn!(error = %e, path = %tsv.display(), "drug reviews refused; using the built-in sample");
                    None
                }
                Err(e) => return Err(e),
            }
        }
        Err(_) => None,
    };
    let version = match from_assets {
        Some(version) => version,
        None => {
            let mut file = tempfile::tempfile().context("creating a temporary file")?;
            file.write_all(DEMO_CSV.as_bytes())
                .context("writing the demo dataset")?;
            upload(
                pool,
                store,
                author,
                &name,
                Some("drug-reviews.csv"),
                file,
                max_bytes,
            )
            .await?
        }
    };
    tracing::info!(rows = version.row_count, "demo dataset ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(
            DatasetName::parse("  reviews ").unwrap().as_str(),
            "reviews"
        );
        assert!(DatasetName::parse("   ").is_err());
        assert!(DatasetName::parse(&"x".repeat(101)).is_err());
        assert!(DatasetName::parse("a\nb").is_err());
    }

    #[test]
    fn column_types_parse_by_their_json_names() {
        assert_eq!(parse_column_type("number"), Some(ColumnType::Number));
        assert_eq!(
            parse_column_type("multi_label"),
            Some(ColumnType::MultiLabel)
        );
        assert_eq!(parse_column_type("Number"), None);
    }

    #[tokio::test]
    async fn spooling_stops_past_the_limit_even_without_a_declared_length() {
        let chunks = |n: usize| {
            futures::stream::iter(
                (0..n).map(|_| Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'a'; 600]))),
            )
        };
        let err = spool(chunks(3), 1024).await.unwrap_err();
        assert!(matches!(
            err,
            UploadError::Unreadable(DatasetError::TooLarge { limit: 1024 })
        ));
        let mut file = spool(chunks(1), 1024).await.unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 600);
    }

    #[test]
    fn the_built_in_demo_dataset_is_accepted() {
        let report =
            tailor_datasets::validate_table(DEMO_CSV.as_bytes(), ValidationOptions::default())
                .unwrap();
        assert_eq!(report.status, Status::Accepted, "{:?}", report.errors);
        assert!(report.profile.rows >= 20);
    }
}
