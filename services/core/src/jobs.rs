//! Training jobs: the contract between the portal (which starts them), the relay (which
//! publishes them) and the workers (which run them). Postgres is the truth; the queue
//! only wakes workers (DESIGN.md §3).
//!
//! - [`submit`] writes the model (created on first use), the job and its outbox row in one
//!   transaction; an idempotency key makes a double click the same job.
//! - Workers claim with a lease and a fencing token; every later write carries the token
//!   ([`Fence`]), so a worker whose lease was taken over changes nothing.
//!
//! Every query filters on the caller's [`OrgId`] (see [`crate::tenancy`]), except the
//! worker's, which address a job by id and its fencing token.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::{error::Error, tenancy::OrgId};

/// The routing key (and, with the prefix, the queue) of training jobs.
pub const TRAINING: &str = "training";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// No worker will touch the job again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// The message on the queue: small, the job itself lives in Postgres.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: Uuid,
    /// W3C `traceparent` of the request that started the job, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The right of one claim of a job to write: its id and the fencing token of the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub job_id: Uuid,
    pub token: i64,
}

/// What the portal asks for when it starts a job. The blueprint has been compiled
/// against the catalog and the dataset version's schema before this is called.
#[derive(Debug, Clone)]
pub struct Submission {
    pub org: OrgId,
    pub user: Option<Uuid>,
    /// The model the version will belong to (created when the organization has none of
    /// this name).
    pub model_name: String,
    pub blueprint_id: Option<Uuid>,
    pub blueprint: serde_json::Value,
    pub dataset_version_id: Uuid,
    pub idempotency_key: Option<String>,
    pub max_attempts: i32,
    pub estimate: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Submitted {
    pub job_id: Uuid,
    pub model_id: Uuid,
    /// `false` when the idempotency key named a job that already existed.
    pub created: bool,
}

/// Writes the model (if new), the job and its outbox row in one transaction.
pub async fn submit(pool: &PgPool, s: &Submission) -> Result<Submitted, Error> {
    let mut tx = pool.begin().await?;
    if let Some(key) = &s.idempotency_key {
        // Serialise submissions with the same key so that two concurrent clicks do not
        // both miss the lookup below.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
            .bind(s.org.0.to_string())
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let existing: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT id, model_id FROM jobs WHERE org_id = $1 AND idempotency_key = $2",
        )
        .bind(s.org.0)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((job_id, model_id)) = existing {
            return Ok(Submitted {
                job_id,
                model_id,
                created: false,
            });
        }
    }
    let version_ok: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM dataset_versions WHERE org_id = $1 AND id = $2)",
    )
    .bind(s.org.0)
    .bind(s.dataset_version_id)
    .fetch_one(&mut *tx)
    .await?;
    if !version_ok {
        return Err(Error::validation(
            "dataset_version",
            "That dataset version does not exist in this organization.",
        ));
    }
    let model_id: Uuid = sqlx::query_scalar(
        "INSERT INTO models (id, org_id, name, created_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (org_id, name) DO UPDATE SET name = EXCLUDED.name
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(s.org.0)
    .bind(&s.model_name)
    .bind(s.user)
    .fetch_one(&mut *tx)
    .await?;
    let job_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, org_id, model_id, blueprint_id, blueprint, dataset_version_id,
                           idempotency_key, max_attempts, estimate, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(job_id)
    .bind(s.org.0)
    .bind(model_id)
    .bind(s.blueprint_id)
    .bind(Json(&s.blueprint))
    .bind(s.dataset_version_id)
    .bind(&s.idempotency_key)
    .bind(s.max_attempts)
    .bind(s.estimate.as_ref().map(Json))
    .bind(s.user)
    .execute(&mut *tx)
    .await?;
    record_event_tx(
        &mut tx,
        s.org,
        job_id,
        "state",
        &serde_json::json!({ "state": JobState::Queued }),
    )
    .await?;
    enqueue_tx(&mut tx, job_id, None).await?;
    tx.commit().await?;
    Ok(Submitted {
        job_id,
        model_id,
        created: true,
    })
}

/// Adds the outbox row that (re)publishes `job_id` once the transaction commits.
pub async fn enqueue_tx(
    tx: &mut sqlx::PgConnection,
    job_id: Uuid,
    traceparent: Option<String>,
) -> sqlx::Result<()> {
    let message = JobMessage {
        job_id,
        traceparent,
    };
    sqlx::query("INSERT INTO outbox (job_id, routing_key, payload) VALUES ($1, $2, $3)")
        .bind(job_id)
        .bind(TRAINING)
        .bind(Json(&message))
        .execute(tx)
        .await?;
    Ok(())
}

/// Appends an event to a job's log (inside the caller's transaction).
pub async fn record_event_tx(
    tx: &mut sqlx::PgConnection,
    org: OrgId,
    job_id: Uuid,
    kind: &str,
    data: &serde_json::Value,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO job_events (job_id, org_id, kind, data) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(job_id)
    .bind(org.0)
    .bind(kind)
    .bind(Json(data))
    .fetch_one(tx)
    .await
}

/// A job as the portal shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub org_id: Uuid,
    pub model_id: Uuid,
    pub model_name: String,
    pub blueprint_id: Option<Uuid>,
    pub blueprint: Json<serde_json::Value>,
    pub dataset_version_id: Uuid,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    pub progress: Option<Json<serde_json::Value>>,
    pub estimate: Option<Json<serde_json::Value>>,
    pub checkpoint_step: Option<i32>,
    pub error: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

const JOB_COLUMNS: &str = "j.id, j.org_id, j.model_id, m.name AS model_name, j.blueprint_id,
    j.blueprint, j.dataset_version_id, j.state, j.attempts, j.max_attempts,
    j.cancel_requested, j.progress, j.estimate, j.checkpoint_step, j.error, j.created_by,
    j.created_at, j.started_at, j.finished_at, j.updated_at";

pub async fn find(pool: &PgPool, org: OrgId, id: Uuid) -> sqlx::Result<Option<Job>> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs j JOIN models m ON m.id = j.model_id
         WHERE j.org_id = $1 AND j.id = $2"
    ))
    .bind(org.0)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The organization's jobs, newest first.
pub async fn list(pool: &PgPool, org: OrgId, limit: i64) -> sqlx::Result<Vec<Job>> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs j JOIN models m ON m.id = j.model_id
         WHERE j.org_id = $1 ORDER BY j.created_at DESC LIMIT $2"
    ))
    .bind(org.0)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub data: Json<serde_json::Value>,
}

/// A job's events after `after` (an event id; 0 for all), oldest first.
pub async fn events_after(
    pool: &PgPool,
    org: OrgId,
    job_id: Uuid,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<JobEvent>> {
    sqlx::query_as(
        "SELECT id, at, kind, data FROM job_events
         WHERE org_id = $1 AND job_id = $2 AND id > $3 ORDER BY id LIMIT $4",
    )
    .bind(org.0)
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
