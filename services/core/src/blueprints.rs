//! Blueprints as saved: an assembled model (DESIGN.md §3) under a name, per organization,
//! tied to the dataset it was assembled for. The portal checks a blueprint against the
//! module catalog and the dataset before it calls [`create`] or [`update`]; this module
//! only stores it. A job keeps its own copy, so editing a blueprint never changes a job.
//!
//! Every query filters on the caller's [`OrgId`] (see [`crate::tenancy`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::{datasets::DatasetVersion, error::Error, tenancy::OrgId};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SavedBlueprint {
    pub id: Uuid,
    pub name: String,
    pub dataset_id: Option<Uuid>,
    /// Name of the dataset, for lists.
    pub dataset_name: Option<String>,
    pub spec: Json<serde_json::Value>,
    pub created_by: Option<Uuid>,
    /// Display name of who created it.
    pub created_by_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A blueprint name as a user typed it: trimmed, 1 to 100 characters, no control
/// characters. It is also the name of the model its jobs publish into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueprintName(String);

impl BlueprintName {
    pub fn parse(raw: &str) -> Result<BlueprintName, Error> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(Error::validation("name", "Give the blueprint a name."));
        }
        if name.chars().count() > 100 {
            return Err(Error::validation(
                "name",
                "A blueprint name has at most 100 characters.",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(Error::validation(
                "name",
                "A blueprint name cannot contain control characters.",
            ));
        }
        Ok(BlueprintName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What to store: the checked blueprint, its name (the blueprint's own `name`) and the
/// dataset it was assembled for.
#[derive(Debug, Clone)]
pub struct NewBlueprint {
    pub name: BlueprintName,
    pub dataset_id: Option<Uuid>,
    pub spec: serde_json::Value,
}

const COLUMNS: &str = "b.id, b.name, b.dataset_id, d.name AS dataset_name, b.spec, b.created_by,
    u.display_name AS created_by_name, b.created_at, b.updated_at
    FROM blueprints b
    LEFT JOIN datasets d ON d.id = b.dataset_id AND d.org_id = b.org_id
    LEFT JOIN users u ON u.id = b.created_by";

fn name_taken(e: sqlx::Error, name: &BlueprintName) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::conflict(
            "name",
            format!(
                "A blueprint called \"{}\" exists already; choose another name.",
                name.as_str()
            ),
        ),
        _ => e.into(),
    }
}

/// Checks that `dataset` (when given) belongs to `org`.
async fn check_dataset(pool: &PgPool, org: OrgId, dataset: Option<Uuid>) -> Result<(), Error> {
    if let Some(id) = dataset {
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM datasets WHERE org_id = $1 AND id = $2)",
        )
        .bind(org)
        .bind(id)
        .fetch_one(pool)
        .await?;
        if !found {
            return Err(Error::validation(
                "dataset_id",
                "This dataset does not exist in your organization.",
            ));
        }
    }
    Ok(())
}

#[tracing::instrument(skip(pool, new), fields(name = new.name.as_str()))]
pub async fn create(
    pool: &PgPool,
    org: OrgId,
    user: Uuid,
    new: &NewBlueprint,
) -> Result<SavedBlueprint, Error> {
    check_dataset(pool, org, new.dataset_id).await?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO blueprints (id, org_id, name, dataset_id, spec, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(org)
    .bind(new.name.as_str())
    .bind(new.dataset_id)
    .bind(Json(&new.spec))
    .bind(user)
    .execute(pool)
    .await
    .map_err(|e| name_taken(e, &new.name))?;
    find(pool, org, id).await?.ok_or(Error::NotFound)
}

/// Replaces the blueprint `id` of `org`; `NotFound` when it is not there.
#[tracing::instrument(skip(pool, new), fields(name = new.name.as_str()))]
pub async fn update(
    pool: &PgPool,
    org: OrgId,
    id: Uuid,
    new: &NewBlueprint,
) -> Result<SavedBlueprint, Error> {
    check_dataset(pool, org, new.dataset_id).await?;
    let updated = sqlx::query(
        "UPDATE blueprints SET name = $3, dataset_id = $4, spec = $5, updated_at = now()
         WHERE org_id = $1 AND id = $2",
    )
    .bind(org)
    .bind(id)
    .bind(new.name.as_str())
    .bind(new.dataset_id)
    .bind(Json(&new.spec))
    .execute(pool)
    .await
    .map_err(|e| name_taken(e, &new.name))?;
    if updated.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    find(pool, org, id).await?.ok_or(Error::NotFound)
}

/// Deletes the blueprint; jobs started from it keep their own copy.
#[tracing::instrument(skip(pool))]
pub async fn delete(pool: &PgPool, org: OrgId, id: Uuid) -> Result<(), Error> {
    let deleted = sqlx::query("DELETE FROM blueprints WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(id)
        .execute(pool)
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, org: OrgId, id: Uuid) -> sqlx::Result<Option<SavedBlueprint>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} WHERE b.org_id = $1 AND b.id = $2"
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn find_by_name(
    pool: &PgPool,
    org: OrgId,
    name: &str,
) -> sqlx::Result<Option<SavedBlueprint>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} WHERE b.org_id = $1 AND b.name = $2"
    ))
    .bind(org)
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// The organization's blueprints, most recently changed first.
#[tracing::instrument(skip(pool))]
pub async fn list(pool: &PgPool, org: OrgId) -> sqlx::Result<Vec<SavedBlueprint>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} WHERE b.org_id = $1 ORDER BY b.updated_at DESC, b.name"
    ))
    .bind(org)
    .fetch_all(pool)
    .await
}

/// A dataset version by its id, in `org` (a blueprint is checked against one).
#[tracing::instrument(skip(pool))]
pub async fn dataset_version(
    pool: &PgPool,
    org: OrgId,
    id: Uuid,
) -> sqlx::Result<Option<DatasetVersion>> {
    sqlx::query_as(
        "SELECT v.id, v.dataset_id, v.version, v.status, v.object_key, v.file_name, v.format,
                v.sha256, v.bytes, v.row_count, v.schema, v.profile, v.warnings,
                v.derived_from, v.uploaded_by, u.display_name AS uploaded_by_name, v.created_at
         FROM dataset_versions v LEFT JOIN users u ON u.id = v.uploaded_by
         WHERE v.org_id = $1 AND v.id = $2",
    )
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Every version of the organization's datasets, newest first, for the assembly page's
/// choice of data: `(dataset id, dataset name, version id, version, rows)`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct VersionChoice {
    pub dataset_id: Uuid,
    pub dataset_name: String,
    pub version_id: Uuid,
    pub version: i32,
    pub row_count: i64,
}

#[tracing::instrument(skip(pool))]
pub async fn version_choices(pool: &PgPool, org: OrgId) -> sqlx::Result<Vec<VersionChoice>> {
    sqlx::query_as(
        "SELECT d.id AS dataset_id, d.name AS dataset_name, v.id AS version_id, v.version,
                v.row_count
         FROM dataset_versions v JOIN datasets d ON d.id = v.dataset_id AND d.org_id = v.org_id
         WHERE v.org_id = $1 ORDER BY d.name, v.version DESC",
    )
    .bind(org)
    .fetch_all(pool)
    .await
}

/// The name of the demo blueprint (also the model its jobs publish into).
pub const DEMO_BLUEPRINT: &str = "Drug review sentiment";

/// The demo blueprint for a dataset whose label column is `label`: review text through
/// MiniLM with LoRA, small enough to train in a few minutes on two cores (64 tokens, 2
/// epochs).
pub fn demo_spec(label: &str) -> serde_json::Value {
    serde_json::json!({
        "name": DEMO_BLUEPRINT,
        "description": "How a patient felt about a drug, from the text of their review.",
        "inputs": [{ "name": "review", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 64, "pooling": "mean" } }],
        "fusion": { "kind": "concat" },
        "outputs": [{ "name": label, "task": "classification",
                      "decoder": { "module": "head/linear" } }],
        "adaptation": { "method": "lora", "rank": 8, "alpha": 16, "dropout": 0.05,
                        "targets": ["query", "value"] },
        "training": { "epochs": 2, "batch_size": 16, "learning_rate": 1e-3,
                      "head_learning_rate": 1e-2, "seed": 7, "validation_split": 0.2,
                      "early_stopping": { "metric": "macro_f1", "patience": 3 } }
    })
}

/// Gives the demo organization the demo blueprint for its "Drug reviews" dataset unless it
/// has a blueprint of that name. The label is `rating` when the dataset holds it as
/// categories (the drug reviews from the assets), else `condition` (the built-in sample,
/// whose ratings are numbers).
#[tracing::instrument(skip(pool))]
pub async fn ensure_demo_blueprint(pool: &PgPool, org: OrgId, user: Uuid) -> Result<(), Error> {
    if find_by_name(pool, org, DEMO_BLUEPRINT).await?.is_some() {
        return Ok(());
    }
    let latest: Option<(Uuid, Json<tailor_datasets::Schema>)> = sqlx::query_as(
        "SELECT d.id, v.schema FROM datasets d
         JOIN dataset_versions v ON v.dataset_id = d.id AND v.org_id = d.org_id
         WHERE d.org_id = $1 AND d.name = 'Drug reviews'
         ORDER BY v.version DESC LIMIT 1",
    )
    .bind(org)
    .fetch_optional(pool)
    .await?;
    let Some((dataset_id, schema)) = latest else {
        return Ok(());
    };
    let rating_is_category = schema
        .0
        .column("rating")
        .is_some_and(|c| c.column_type == tailor_datasets::ColumnType::Category);
    let label = if rating_is_category {
        "rating"
    } else {
        "condition"
    };
    sqlx::query(
        "INSERT INTO blueprints (id, org_id, name, dataset_id, spec, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (org_id, name) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(org)
    .bind(DEMO_BLUEPRINT)
    .bind(dataset_id)
    .bind(Json(demo_spec(label)))
    .bind(user)
    .execute(pool)
    .await?;
    tracing::info!(label, "demo blueprint ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(
            BlueprintName::parse("  triage ").unwrap().as_str(),
            "triage"
        );
        assert!(BlueprintName::parse("  ").is_err());
        assert!(BlueprintName::parse(&"x".repeat(101)).is_err());
        assert!(BlueprintName::parse("a\tb").is_err());
    }
}
