//! The model registry: models, their versions, and what users do with them — publish,
//! archive, roll back, compare, and download the PEFT adapter.
//!
//! A version row is written by the worker after its files (manifest last) are in the
//! object store (DESIGN.md §3). `models.published_version` is the version the gateway
//! serves; publishing, archiving and rolling back lock the model row first, so two
//! clicks at once cannot leave an archived version published.
//!
//! Every query filters on the caller's [`OrgId`] (see [`crate::tenancy`]); another
//! organization's model or version is simply not found.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::{error::Error, storage::Store, tenancy::OrgId};

/// File names inside a model version (the same as `tailor_modules::package` and
/// `tailor_modules::artifact`; core does not depend on the ML crate).
pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_FORMAT: &str = "tailor-model-version/1";
pub const CARD_FILE: &str = "model_card.md";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const HEADS_FILE: &str = "heads.safetensors";
pub const HEADS_CONFIG_FILE: &str = "heads.json";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Model {
    pub id: Uuid,
    pub name: String,
    pub published_version: Option<i32>,
    pub created_at: DateTime<Utc>,
    /// Versions of any status.
    pub version_count: i64,
    pub latest_version: Option<i32>,
    /// The published version's headline metric, tuned against baseline.
    #[sqlx(skip)]
    pub published_headline: Option<Headline>,
    #[serde(skip)]
    published_metrics: Option<Json<serde_json::Value>>,
}

impl Model {
    fn with_headline(mut self) -> Model {
        self.published_headline = self.published_metrics.take().map(|m| headline(&m.0));
        self
    }
}

const MODEL_COLUMNS: &str = "m.id, m.name, m.published_version, m.created_at,
    (SELECT count(*) FROM model_versions v WHERE v.model_id = m.id) AS version_count,
    (SELECT max(version) FROM model_versions v WHERE v.model_id = m.id) AS latest_version,
    (SELECT metrics FROM model_versions v
      WHERE v.model_id = m.id AND v.version = m.published_version) AS published_metrics";

/// The organization's models, by name.
#[tracing::instrument(skip(pool))]
pub async fn list(pool: &PgPool, org: OrgId) -> sqlx::Result<Vec<Model>> {
    let models: Vec<Model> = sqlx::query_as(&format!(
        "SELECT {MODEL_COLUMNS} FROM models m WHERE m.org_id = $1 ORDER BY m.name"
    ))
    .bind(org)
    .fetch_all(pool)
    .await?;
    Ok(models.into_iter().map(Model::with_headline).collect())
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, org: OrgId, id: Uuid) -> sqlx::Result<Option<Model>> {
    let model: Option<Model> = sqlx::query_as(&format!(
        "SELECT {MODEL_COLUMNS} FROM models m WHERE m.org_id = $1 AND m.id = $2"
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(model.map(Model::with_headline))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum VersionStatus {
    Ready,
    Archived,
}

/// A model version with what it came from (dataset, job, author) joined in.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ModelVersion {
    pub id: Uuid,
    pub model_id: Uuid,
    pub model_name: String,
    pub version: i32,
    pub status: VersionStatus,
    /// Whether this is the model's published version.
    pub published: bool,
    pub job_id: Uuid,
    #[serde(skip)]
    pub object_prefix: String,
    pub manifest_sha256: String,
    /// `modules::evaluate::EvaluationReport`.
    pub metrics: Json<serde_json::Value>,
    pub blueprint: Json<serde_json::Value>,
    pub dataset_version_id: Uuid,
    pub dataset_id: Uuid,
    pub dataset_name: String,
    pub dataset_version: i32,
    pub dataset_sha256: String,
    pub base_checkpoints: Json<serde_json::Value>,
    pub created_by: Option<Uuid>,
    /// Display name of who started the job.
    pub created_by_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

const VERSION_COLUMNS: &str = "v.id, v.model_id, m.name AS model_name, v.version, v.status,
    (m.published_version IS NOT DISTINCT FROM v.version) AS published, v.job_id,
    v.object_prefix, v.manifest_sha256, v.metrics, v.blueprint, v.dataset_version_id,
    dv.dataset_id, d.name AS dataset_name, dv.version AS dataset_version, v.dataset_sha256,
    v.base_checkpoints, v.created_by, u.display_name AS created_by_name, v.created_at
    FROM model_versions v
    JOIN models m ON m.id = v.model_id
    JOIN dataset_versions dv ON dv.id = v.dataset_version_id
    JOIN datasets d ON d.id = dv.dataset_id
    LEFT JOIN users u ON u.id = v.created_by";

/// A model's versions, newest first.
#[tracing::instrument(skip(pool))]
pub async fn versions(pool: &PgPool, org: OrgId, model: Uuid) -> sqlx::Result<Vec<ModelVersion>> {
    sqlx::query_as(&format!(
        "SELECT {VERSION_COLUMNS} WHERE v.org_id = $1 AND v.model_id = $2 ORDER BY v.version DESC"
    ))
    .bind(org)
    .bind(model)
    .fetch_all(pool)
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn find_version(
    pool: &PgPool,
    org: OrgId,
    model: Uuid,
    version: i32,
) -> sqlx::Result<Option<ModelVersion>> {
    sqlx::query_as(&format!(
        "SELECT {VERSION_COLUMNS} WHERE v.org_id = $1 AND v.model_id = $2 AND v.version = $3"
    ))
    .bind(org)
    .bind(model)
    .bind(version)
    .fetch_optional(pool)
    .await
}

/// The version a job produced, if it produced one.
#[tracing::instrument(skip(pool))]
pub async fn version_of_job(
    pool: &PgPool,
    org: OrgId,
    job: Uuid,
) -> sqlx::Result<Option<ModelVersion>> {
    sqlx::query_as(&format!(
        "SELECT {VERSION_COLUMNS} WHERE v.org_id = $1 AND v.job_id = $2"
    ))
    .bind(org)
    .bind(job)
    .fetch_optional(pool)
    .await
}

/// Locks the model row and the version row (in that order, as every action does) and
/// returns the version's status and the model's published version.
async fn lock(
    tx: &mut sqlx::PgConnection,
    org: OrgId,
    model: Uuid,
    version: i32,
) -> Result<(VersionStatus, Option<i32>), Error> {
    let published: Option<Option<i32>> = sqlx::query_scalar(
        "SELECT published_version FROM models WHERE org_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(org)
    .bind(model)
    .fetch_optional(&mut *tx)
    .await?;
    let published = published.ok_or(Error::NotFound)?;
    let status: VersionStatus = sqlx::query_scalar(
        "SELECT status FROM model_versions
         WHERE org_id = $1 AND model_id = $2 AND version = $3 FOR UPDATE",
    )
    .bind(org)
    .bind(model)
    .bind(version)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    Ok((status, published))
}

/// Makes `version` the one the gateway serves. Publishing an older version is a rollback.
#[tracing::instrument(skip(pool))]
pub async fn publish(pool: &PgPool, org: OrgId, model: Uuid, version: i32) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let (status, _) = lock(&mut tx, org, model, version).await?;
    if status == VersionStatus::Archived {
        return Err(Error::conflict(
            "version",
            format!(
                "Version {version} is archived, and an archived version cannot be published. \
                 Publish a version that is not archived."
            ),
        ));
    }
    sqlx::query("UPDATE models SET published_version = $3 WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(model)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%model, version, "model version published");
    Ok(())
}

/// Archives a version: it stays in the registry but can no longer be published.
#[tracing::instrument(skip(pool))]
pub async fn archive(pool: &PgPool, org: OrgId, model: Uuid, version: i32) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let (status, published) = lock(&mut tx, org, model, version).await?;
    if published == Some(version) {
        return Err(Error::conflict(
            "version",
            format!(
                "Version {version} is the published version and cannot be archived. \
                 Publish another version (or roll back) first."
            ),
        ));
    }
    if status != VersionStatus::Archived {
        sqlx::query(
            "UPDATE model_versions SET status = 'archived'
             WHERE org_id = $1 AND model_id = $2 AND version = $3",
        )
        .bind(org)
        .bind(model)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(%model, version, "model version archived");
    Ok(())
}

/// Publishes the newest version older than the published one that is not archived;
/// returns its number.
#[tracing::instrument(skip(pool))]
pub async fn roll_back(pool: &PgPool, org: OrgId, model: Uuid) -> Result<i32, Error> {
    let mut tx = pool.begin().await?;
    let published: Option<Option<i32>> = sqlx::query_scalar(
        "SELECT published_version FROM models WHERE org_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(org)
    .bind(model)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = published.ok_or(Error::NotFound)? else {
        return Err(Error::conflict(
            "version",
            "No version of this model is published, so there is nothing to roll back.",
        ));
    };
    let previous: Option<i32> = sqlx::query_scalar(
        "SELECT version FROM model_versions
         WHERE org_id = $1 AND model_id = $2 AND version < $3 AND status = 'ready'
         ORDER BY version DESC LIMIT 1 FOR UPDATE",
    )
    .bind(org)
    .bind(model)
    .bind(current)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(previous) = previous else {
        return Err(Error::conflict(
            "version",
            format!(
                "There is no version older than the published version {current} that is not \
                 archived to roll back to."
            ),
        ));
    };
    sqlx::query("UPDATE models SET published_version = $3 WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(model)
        .bind(previous)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%model, from = current, to = previous, "model rolled back");
    Ok(previous)
}

// ---- files of a version ----

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json` (the format of `tailor_modules::artifact::Manifest`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub files: Vec<ManifestEntry>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn key(version: &ModelVersion, file: &str) -> Path {
    Path::from(format!(
        "{}/{file}",
        version.object_prefix.trim_end_matches('/')
    ))
}

/// Why a version's files cannot be served: the detail goes to the log, the user reads
/// that the files are damaged.
fn damaged(message: String) -> Error {
    tracing::error!(detail = %message, "model version files do not match their manifest");
    Error::Conflict {
        field: None,
        message: "The files of this model version do not match its manifest (damaged or \
                  changed in the object store), so they are not served."
            .into(),
    }
}

/// Reads and checks `manifest.json`: its own hash against the version row, its format tag,
/// and its file names. Returns it parsed and as stored.
pub async fn read_manifest(
    store: &Store,
    version: &ModelVersion,
) -> Result<(Manifest, bytes::Bytes), Error> {
    let bytes = store
        .get(&key(version, MANIFEST_FILE))
        .await
        .with_context(|| format!("reading the manifest of {}", version.object_prefix))?
        .bytes()
        .await
        .context("reading the manifest")?;
    let found = sha256_hex(&bytes);
    if !found.eq_ignore_ascii_case(&version.manifest_sha256) {
        return Err(damaged(format!(
            "manifest.json of {} has SHA-256 {found}, the registry recorded {}",
            version.object_prefix, version.manifest_sha256
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(format!("manifest.json does not parse: {e}")))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(damaged(format!(
            "manifest.json has format {:?}",
            manifest.format
        )));
    }
    for entry in &manifest.files {
        let bad = entry.path.is_empty()
            || entry.path.starts_with('/')
            || entry.path.contains('\\')
            || entry
                .path
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..");
        if bad {
            return Err(damaged(format!("manifest.json names {:?}", entry.path)));
        }
    }
    Ok((manifest, bytes))
}

/// Reads the files the manifest lists for which `wanted` says yes, each checked against
/// its recorded SHA-256 and size. Returns them with `manifest.json` itself.
pub async fn read_verified(
    store: &Store,
    version: &ModelVersion,
    wanted: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let (manifest, manifest_bytes) = read_manifest(store, version).await?;
    let mut files = BTreeMap::new();
    for entry in manifest.files.iter().filter(|e| wanted(&e.path)) {
        let bytes = store
            .get(&key(version, &entry.path))
            .await
            .with_context(|| format!("reading {} of {}", entry.path, version.object_prefix))?
            .bytes()
            .await
            .with_context(|| format!("reading {}", entry.path))?;
        let found = sha256_hex(&bytes);
        if found != entry.sha256 || bytes.len() as u64 != entry.bytes {
            return Err(damaged(format!(
                "{} does not match manifest.json (SHA-256 {found}, expected {})",
                entry.path, entry.sha256
            )));
        }
        files.insert(entry.path.clone(), bytes.to_vec());
    }
    files.insert(MANIFEST_FILE.to_owned(), manifest_bytes.to_vec());
    Ok(files)
}

/// The files of the PEFT adapter download: the adapter(s) in PEFT's layout, the heads and
/// the manifest.
pub fn is_adapter_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    matches!(
        name,
        ADAPTER_CONFIG_FILE | ADAPTER_WEIGHTS_FILE | HEADS_FILE | HEADS_CONFIG_FILE
    )
}

/// The model card (Markdown) of a version, checked against the manifest; `None` when the
/// version has none.
pub async fn model_card(store: &Store, version: &ModelVersion) -> Result<Option<String>, Error> {
    let files = read_verified(store, version, |p| p == CARD_FILE).await?;
    Ok(files
        .get(CARD_FILE)
        .map(|b| String::from_utf8_lossy(b).into_owned()))
}

/// Builds a stored (uncompressed) ZIP archive in memory. Safetensors do not compress.
pub fn zip_stored(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    // A minimal writer: local headers, data, central directory, end record (no ZIP64;
    // adapters are far below 4 GiB).
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let crc = crc32(data);
        let offset = out.len() as u32;
        let name = name.as_bytes();
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed
        out.extend_from_slice(&0x0800u16.to_le_bytes()); // UTF-8 names
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&0u16.to_le_bytes()); // time
        out.extend_from_slice(&0x0021u16.to_le_bytes()); // date 1980-01-01
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // made by
        central.extend_from_slice(&20u16.to_le_bytes()); // needed
        central.extend_from_slice(&0x0800u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&0x0021u16.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // extra
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attrs
        central.extend_from_slice(&0u32.to_le_bytes()); // external attrs
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name);
    }
    let central_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(files.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// CRC-32 (IEEE), as ZIP needs it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---- comparing versions ----

/// One setting of the blueprint (a JSON path) whose value differs between two versions.
#[derive(Debug, Clone, Serialize)]
pub struct SettingDiff {
    pub path: String,
    pub a: Option<serde_json::Value>,
    pub b: Option<serde_json::Value>,
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        serde_json::Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// The blueprint settings that differ between two versions, by path.
pub fn setting_diffs(a: &serde_json::Value, b: &serde_json::Value) -> Vec<SettingDiff> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten("", a, &mut fa);
    flatten("", b, &mut fb);
    let mut paths: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| fa.get(*p) != fb.get(*p))
        .map(|p| SettingDiff {
            path: p.clone(),
            a: fa.get(p).cloned(),
            b: fb.get(p).cloned(),
        })
        .collect()
}

/// The headline of a version's report: metric name, tuned and baseline values (of the
/// first output), for lists.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Headline {
    pub metric: Option<String>,
    pub tuned: Option<f64>,
    pub baseline: Option<f64>,
    pub gain: Option<f64>,
}

pub fn headline(metrics: &serde_json::Value) -> Headline {
    let first = metrics
        .get("outputs")
        .and_then(|o| o.as_array())
        .and_then(|o| o.first());
    let Some(first) = first else {
        return Headline::default();
    };
    Headline {
        metric: first
            .get("headline")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        tuned: first.get("tuned_value").and_then(|v| v.as_f64()),
        baseline: first.get("baseline_value").and_then(|v| v.as_f64()),
        gain: first.get("gain").and_then(|v| v.as_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn setting_diffs_name_changed_paths() {
        let a = serde_json::json!({ "training": { "epochs": 3, "seed": 7 },
            "inputs": [{ "name": "t", "encoder": { "max_tokens": 64 } }] });
        let b = serde_json::json!({ "training": { "epochs": 5, "seed": 7 },
            "inputs": [{ "name": "t", "encoder": { "max_tokens": 64 } }], "x": true });
        let d = setting_diffs(&a, &b);
        let paths: Vec<_> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["training.epochs", "x"]);
    }
}
