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

// ---------------------------------------------------------------------------------------
// The worker's side: claim, heartbeat, fenced writes, finish, publish, reaper.
//
// Every write after the claim carries the claim's [`Fence`] and matches
// `fencing_token = $token AND state = 'running'`: a claim that was taken over (token
// bumped) or released by the reaper (state back to queued) updates no row, and the
// functions say so (`Lease::Lost`, `false`, `None`) instead of writing.

/// The Postgres channel that carries a job id after each of its events is committed, so
/// that the portal can follow a job without polling `job_events`.
pub const EVENTS_CHANNEL: &str = "tailor_job_events";

/// Notifies [`EVENTS_CHANNEL`] listeners of a new event of `job_id` when the transaction
/// commits.
pub async fn notify_event_tx(tx: &mut sqlx::PgConnection, job_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(job_id.to_string())
        .execute(tx)
        .await?;
    Ok(())
}

/// Records an event and notifies listeners (inside the caller's transaction).
async fn event_tx(
    tx: &mut sqlx::PgConnection,
    org: OrgId,
    job_id: Uuid,
    kind: &str,
    data: &serde_json::Value,
) -> sqlx::Result<i64> {
    let id = record_event_tx(&mut *tx, org, job_id, kind, data).await?;
    notify_event_tx(tx, job_id).await?;
    Ok(id)
}

/// What a worker needs to know about a job it claimed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub fence: Fence,
    pub org: OrgId,
    pub model_id: Uuid,
    pub model_name: String,
    /// 1 for the first claim.
    pub attempt: i32,
    pub max_attempts: i32,
    pub blueprint: serde_json::Value,
    pub created_by: Option<Uuid>,
    /// The newest checkpoint of an earlier attempt, to resume from.
    pub checkpoint_key: Option<String>,
    pub checkpoint_step: Option<i32>,
    pub dataset: ClaimedDataset,
}

/// The dataset version a claimed job trains on.
#[derive(Debug, Clone)]
pub struct ClaimedDataset {
    pub version_id: Uuid,
    pub name: String,
    pub version: i32,
    pub object_key: String,
    pub format: String,
    pub sha256: String,
    pub row_count: i64,
    /// Column names and their type names (`text`, `category`, `number`, `multi_label`,
    /// `file`), in the order of the stored schema.
    pub columns: Vec<(String, String)>,
}

/// What became of a delivery.
#[derive(Debug, Clone)]
pub enum ClaimOutcome {
    /// This worker now holds the job: train it.
    Claimed(Box<Claim>),
    /// Nothing to do (the job is final, gone, or held by a live lease): a duplicate
    /// message; ack and drop it.
    Duplicate { reason: String },
    /// The job's organization already runs `limit` jobs: the job stays queued, marked
    /// deferred, and the reaper offers it again later.
    Deferred { running: i64, limit: i64 },
    /// The job was cancelled before it ran.
    Cancelled,
    /// Out of attempts: the job is failed now with `reason`; dead-letter the message.
    GaveUp { reason: String },
}

/// Who claims and for how long.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub job_id: Uuid,
    /// The worker's name, kept in `lease_owner` for operators.
    pub owner: &'a str,
    pub lease_seconds: u64,
    /// Running jobs (with a live lease) an organization may have, over all workers.
    pub org_concurrency: i64,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    org_id: Uuid,
    state: JobState,
    attempts: i32,
    max_attempts: i32,
    cancel_requested: bool,
    live: bool,
    error: Option<String>,
    deferred: bool,
}

/// Claims a job for a delivery of its message: in one transaction, decides whether the
/// message is a duplicate, the job is cancelled, out of attempts or over its
/// organization's quota, and otherwise takes the job: `running`, `attempts + 1`, a new
/// fencing token and a lease. Ack the delivery only after this returned.
#[tracing::instrument(skip(pool, request), fields(job_id = %request.job_id))]
pub async fn claim(pool: &PgPool, request: &ClaimRequest<'_>) -> sqlx::Result<ClaimOutcome> {
    let job_id = request.job_id;
    let mut tx = pool.begin().await?;
    let row: Option<ClaimRow> = sqlx::query_as(
        "SELECT org_id, state, attempts, max_attempts, cancel_requested, error,
                COALESCE(lease_expires_at > now(), false) AS live,
                deferred_at IS NOT NULL AS deferred
         FROM jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(ClaimOutcome::Duplicate {
            reason: "no such job".into(),
        });
    };
    let org = OrgId(row.org_id);
    if row.state.is_final() {
        return Ok(ClaimOutcome::Duplicate {
            reason: format!("the job is already {}", row.state.as_str()),
        });
    }
    if row.state == JobState::Running && row.live {
        return Ok(ClaimOutcome::Duplicate {
            reason: "another claim of the job holds a live lease".into(),
        });
    }
    if row.cancel_requested {
        end_tx(&mut tx, org, job_id, JobState::Cancelled, None).await?;
        tx.commit().await?;
        return Ok(ClaimOutcome::Cancelled);
    }
    if row.attempts >= row.max_attempts {
        let last = row
            .error
            .unwrap_or_else(|| "the worker stopped without reporting an error".into());
        let reason = format!("gave up after {} attempts: {last}", row.attempts);
        end_tx(&mut tx, org, job_id, JobState::Failed, Some(&reason)).await?;
        tx.commit().await?;
        return Ok(ClaimOutcome::GaveUp { reason });
    }
    // Serialise claims within one organization so that two workers cannot both see a
    // free slot.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('tailor.org_quota:' || $1, 0))")
        .bind(org.0.to_string())
        .execute(&mut *tx)
        .await?;
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs
         WHERE org_id = $1 AND state = 'running' AND lease_expires_at > now() AND id <> $2",
    )
    .bind(org.0)
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await?;
    if running >= request.org_concurrency {
        sqlx::query("UPDATE jobs SET deferred_at = now() WHERE id = $1")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        if !row.deferred {
            event_tx(
                &mut tx,
                org,
                job_id,
                "log",
                &serde_json::json!({
                    "message": format!(
                        "waiting: the organization already runs {running} job(s), its limit"
                    ),
                    "running": running,
                    "limit": request.org_concurrency,
                }),
            )
            .await?;
        }
        tx.commit().await?;
        return Ok(ClaimOutcome::Deferred {
            running,
            limit: request.org_concurrency,
        });
    }
    let (token, attempt): (i64, i32) = sqlx::query_as(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1,
                fencing_token = fencing_token + 1, lease_owner = $2,
                lease_expires_at = now() + make_interval(secs => $3),
                started_at = COALESCE(started_at, now()), deferred_at = NULL,
                updated_at = now()
         WHERE id = $1
           AND (state = 'queued' OR (state = 'running' AND lease_expires_at < now()))
           AND cancel_requested = false
         RETURNING fencing_token, attempts",
    )
    .bind(job_id)
    .bind(request.owner)
    .bind(request.lease_seconds as f64)
    .fetch_one(&mut *tx)
    .await?;
    event_tx(
        &mut tx,
        org,
        job_id,
        "state",
        &serde_json::json!({
            "state": JobState::Running,
            "attempt": attempt,
            "max_attempts": row.max_attempts,
            "worker": request.owner,
        }),
    )
    .await?;
    let claim = claimed(&mut tx, job_id, Fence { job_id, token }).await?;
    tx.commit().await?;
    Ok(ClaimOutcome::Claimed(Box::new(claim)))
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    org_id: Uuid,
    model_id: Uuid,
    model_name: String,
    attempts: i32,
    max_attempts: i32,
    blueprint: Json<serde_json::Value>,
    created_by: Option<Uuid>,
    checkpoint_key: Option<String>,
    checkpoint_step: Option<i32>,
    version_id: Uuid,
    dataset_name: String,
    version: i32,
    object_key: String,
    format: String,
    sha256: String,
    row_count: i64,
    schema: Json<tailor_datasets::Schema>,
}

async fn claimed(tx: &mut sqlx::PgConnection, job_id: Uuid, fence: Fence) -> sqlx::Result<Claim> {
    let r: ClaimedRow = sqlx::query_as(
        "SELECT j.org_id, j.model_id, m.name AS model_name, j.attempts, j.max_attempts,
                j.blueprint, j.created_by, j.checkpoint_key, j.checkpoint_step,
                v.id AS version_id, d.name AS dataset_name, v.version, v.object_key, v.format,
                v.sha256, v.row_count, v.schema
         FROM jobs j
         JOIN models m ON m.id = j.model_id
         JOIN dataset_versions v ON v.id = j.dataset_version_id
         JOIN datasets d ON d.id = v.dataset_id
         WHERE j.id = $1",
    )
    .bind(job_id)
    .fetch_one(tx)
    .await?;
    Ok(Claim {
        fence,
        org: OrgId(r.org_id),
        model_id: r.model_id,
        model_name: r.model_name,
        attempt: r.attempts,
        max_attempts: r.max_attempts,
        blueprint: r.blueprint.0,
        created_by: r.created_by,
        checkpoint_key: r.checkpoint_key,
        checkpoint_step: r.checkpoint_step,
        dataset: ClaimedDataset {
            version_id: r.version_id,
            name: r.dataset_name,
            version: r.version,
            object_key: r.object_key,
            format: r.format,
            sha256: r.sha256,
            row_count: r.row_count,
            columns: r
                .schema
                .0
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.column_type.as_str().to_owned()))
                .collect(),
        },
    })
}

/// Ends a job (cancelled or failed) in the caller's transaction, with its state event.
async fn end_tx(
    tx: &mut sqlx::PgConnection,
    org: OrgId,
    job_id: Uuid,
    state: JobState,
    error: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE jobs SET state = $2, error = COALESCE($3, error), finished_at = now(),
                lease_owner = NULL, lease_expires_at = NULL, deferred_at = NULL,
                updated_at = now()
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(state)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    let mut data = serde_json::json!({ "state": state });
    if let Some(error) = error {
        data["error"] = error.into();
    }
    event_tx(tx, org, job_id, "state", &data).await?;
    Ok(())
}

/// Marks a queued job as deferred without claiming it (the worker that got its message
/// had no free slot); the reaper offers it again. A job in any other state is left alone.
pub async fn defer(pool: &PgPool, job_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET deferred_at = now() WHERE id = $1 AND state = 'queued'")
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether a claim still holds its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The claim holds the job; `cancel_requested` is the job's cancel flag.
    Held { cancel_requested: bool },
    /// The job was taken over or released: write nothing more.
    Lost,
}

impl Lease {
    fn of(row: Option<bool>) -> Self {
        match row {
            Some(cancel_requested) => Lease::Held { cancel_requested },
            None => Lease::Lost,
        }
    }
}

/// Renews the lease of a claim for `lease_seconds`.
pub async fn heartbeat(pool: &PgPool, fence: Fence, lease_seconds: u64) -> sqlx::Result<Lease> {
    let row: Option<bool> = sqlx::query_scalar(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3), updated_at = now()
         WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING cancel_requested",
    )
    .bind(fence.job_id)
    .bind(fence.token)
    .bind(lease_seconds as f64)
    .fetch_optional(pool)
    .await?;
    Ok(Lease::of(row))
}

/// Sets the job's latest progress (phase, epoch, step, loss, metric, elapsed, eta).
pub async fn report_progress(
    pool: &PgPool,
    fence: Fence,
    progress: &serde_json::Value,
) -> sqlx::Result<Lease> {
    let row: Option<bool> = sqlx::query_scalar(
        "UPDATE jobs SET progress = $3, updated_at = now()
         WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING cancel_requested",
    )
    .bind(fence.job_id)
    .bind(fence.token)
    .bind(Json(progress))
    .fetch_optional(pool)
    .await?;
    Ok(Lease::of(row))
}

/// Appends an event of a claim (and, when given, sets the latest progress), then
/// notifies [`EVENTS_CHANNEL`]. Nothing is written when the claim lost the job.
pub async fn record_event(
    pool: &PgPool,
    fence: Fence,
    kind: &str,
    data: &serde_json::Value,
    progress: Option<&serde_json::Value>,
) -> sqlx::Result<Lease> {
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, bool)> = sqlx::query_as(
        "UPDATE jobs SET progress = COALESCE($3, progress), updated_at = now()
         WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING org_id, cancel_requested",
    )
    .bind(fence.job_id)
    .bind(fence.token)
    .bind(progress.map(Json))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((org, cancel_requested)) = row else {
        return Ok(Lease::Lost);
    };
    event_tx(&mut tx, OrgId(org), fence.job_id, kind, data).await?;
    tx.commit().await?;
    Ok(Lease::Held { cancel_requested })
}

/// Records a checkpoint stored at `key` (the newest one, to resume from) with its event.
pub async fn record_checkpoint(
    pool: &PgPool,
    fence: Fence,
    key: &str,
    step: i32,
) -> sqlx::Result<Lease> {
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, bool)> = sqlx::query_as(
        "UPDATE jobs SET checkpoint_key = $3, checkpoint_step = $4, updated_at = now()
         WHERE id = $1 AND fencing_token = $2 AND state = 'running'
         RETURNING org_id, cancel_requested",
    )
    .bind(fence.job_id)
    .bind(fence.token)
    .bind(key)
    .bind(step)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((org, cancel_requested)) = row else {
        return Ok(Lease::Lost);
    };
    event_tx(
        &mut tx,
        OrgId(org),
        fence.job_id,
        "checkpoint",
        &serde_json::json!({ "step": step, "key": key }),
    )
    .await?;
    tx.commit().await?;
    Ok(Lease::Held { cancel_requested })
}

/// Locks the claimed job's row if the claim still holds it; `None` when it lost it.
async fn lock_fenced(
    tx: &mut sqlx::PgConnection,
    fence: Fence,
) -> sqlx::Result<Option<(OrgId, i32)>> {
    let row: Option<(Uuid, i32)> = sqlx::query_as(
        "SELECT org_id, attempts FROM jobs
         WHERE id = $1 AND fencing_token = $2 AND state = 'running' FOR UPDATE",
    )
    .bind(fence.job_id)
    .bind(fence.token)
    .fetch_optional(tx)
    .await?;
    Ok(row.map(|(org, attempts)| (OrgId(org), attempts)))
}

/// Ends an attempt that failed with `error`: the job goes back to `queued` with the error
/// kept and a new outbox row, so that the next delivery retries it — or, once it is out
/// of attempts, fails it and dead-letters the message. `false` when the claim had lost
/// the job (nothing written).
pub async fn fail_attempt(pool: &PgPool, fence: Fence, error: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let Some((org, attempt)) = lock_fenced(&mut tx, fence).await? else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE jobs SET state = 'queued', error = $2, lease_owner = NULL,
                lease_expires_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(fence.job_id)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    event_tx(
        &mut tx,
        org,
        fence.job_id,
        "state",
        &serde_json::json!({ "state": JobState::Queued, "attempt": attempt, "error": error }),
    )
    .await?;
    enqueue_tx(&mut tx, fence.job_id, None).await?;
    tx.commit().await?;
    Ok(true)
}

/// Gives a job back (the worker is shutting down): `queued` with its checkpoint, the
/// attempt not counted, and a new outbox row. `false` when the claim had lost the job.
pub async fn release(pool: &PgPool, fence: Fence, reason: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let Some((org, _)) = lock_fenced(&mut tx, fence).await? else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE jobs SET state = 'queued', attempts = GREATEST(attempts - 1, 0),
                lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(fence.job_id)
    .execute(&mut *tx)
    .await?;
    event_tx(
        &mut tx,
        org,
        fence.job_id,
        "state",
        &serde_json::json!({ "state": JobState::Queued, "reason": reason }),
    )
    .await?;
    enqueue_tx(&mut tx, fence.job_id, None).await?;
    tx.commit().await?;
    Ok(true)
}

/// Ends a claimed job as cancelled (its cancel flag stopped the training). `false` when
/// the claim had lost the job.
pub async fn finish_cancelled(pool: &PgPool, fence: Fence) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let Some((org, _)) = lock_fenced(&mut tx, fence).await? else {
        return Ok(false);
    };
    end_tx(&mut tx, org, fence.job_id, JobState::Cancelled, None).await?;
    tx.commit().await?;
    Ok(true)
}

/// A model version being published: the claimed job's row and its model's row are
/// locked (no other claim can take the job, no other job can take the version number)
/// until [`Publication::commit`] or drop (rollback). Write the files under `prefix`,
/// `manifest.json` last, between the two.
pub struct Publication {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    fence: Fence,
    pub org: OrgId,
    pub model_id: Uuid,
    /// The version number this publication will have.
    pub version: i32,
    /// `orgs/{org}/models/{model}/v{version}`
    pub prefix: String,
    first: bool,
}

/// What a published version records beside its files.
#[derive(Debug, Clone)]
pub struct NewModelVersion {
    pub manifest_sha256: String,
    /// `modules::evaluate::EvaluationReport` as JSON.
    pub metrics: serde_json::Value,
    pub blueprint: serde_json::Value,
    pub dataset_version_id: Uuid,
    pub dataset_sha256: String,
    /// Module id → SHA-256 of its base checkpoint.
    pub base_checkpoints: serde_json::Value,
    pub created_by: Option<Uuid>,
}

/// Starts publishing the claimed job's model version; `None` when the claim lost the job
/// (then nothing may be written).
pub async fn begin_publish(pool: &PgPool, fence: Fence) -> sqlx::Result<Option<Publication>> {
    let mut tx = pool.begin().await?;
    if lock_fenced(&mut tx, fence).await?.is_none() {
        return Ok(None);
    }
    let (org, model_id, published): (Uuid, Uuid, Option<i32>) = sqlx::query_as(
        "SELECT m.org_id, m.id, m.published_version FROM models m
         JOIN jobs j ON j.model_id = m.id WHERE j.id = $1 FOR UPDATE OF m",
    )
    .bind(fence.job_id)
    .fetch_one(&mut *tx)
    .await?;
    let version: i32 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE model_id = $1",
    )
    .bind(model_id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Some(Publication {
        tx,
        fence,
        org: OrgId(org),
        model_id,
        version,
        prefix: format!("orgs/{org}/models/{model_id}/v{version}"),
        first: published.is_none(),
    }))
}

impl Publication {
    /// Records the version (its files are written), publishes it when the model has no
    /// published version yet, and ends the job as succeeded — one transaction.
    pub async fn commit(mut self, new: &NewModelVersion) -> sqlx::Result<Uuid> {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO model_versions (id, org_id, model_id, version, job_id, object_prefix,
                 manifest_sha256, metrics, blueprint, dataset_version_id, dataset_sha256,
                 base_checkpoints, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(id)
        .bind(self.org.0)
        .bind(self.model_id)
        .bind(self.version)
        .bind(self.fence.job_id)
        .bind(&self.prefix)
        .bind(&new.manifest_sha256)
        .bind(Json(&new.metrics))
        .bind(Json(&new.blueprint))
        .bind(new.dataset_version_id)
        .bind(&new.dataset_sha256)
        .bind(Json(&new.base_checkpoints))
        .bind(new.created_by)
        .execute(&mut *self.tx)
        .await?;
        if self.first {
            sqlx::query("UPDATE models SET published_version = $2 WHERE id = $1")
                .bind(self.model_id)
                .bind(self.version)
                .execute(&mut *self.tx)
                .await?;
        }
        sqlx::query(
            "UPDATE jobs SET state = 'succeeded', error = NULL, finished_at = now(),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(self.fence.job_id)
        .execute(&mut *self.tx)
        .await?;
        event_tx(
            &mut self.tx,
            self.org,
            self.fence.job_id,
            "state",
            &serde_json::json!({
                "state": JobState::Succeeded,
                "model_version": self.version,
                "model_version_id": id,
                "published": self.first,
            }),
        )
        .await?;
        self.tx.commit().await?;
        Ok(id)
    }
}

/// What one pass of the reaper did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Running jobs whose lease had expired, now queued again (or cancelled, when a
    /// cancel was requested).
    pub expired: Vec<Uuid>,
    /// Queued jobs offered again: deferred by the quota, or published long ago and never
    /// claimed.
    pub reoffered: Vec<Uuid>,
}

/// How the reaper decides.
#[derive(Debug, Clone, Copy)]
pub struct ReapPolicy {
    /// Offer a job deferred by the organization quota again after this long.
    pub deferred_after_seconds: u64,
    /// Offer a queued job again when its newest message was published this long ago and
    /// nobody claimed it (a message lost with a deleted queue, say). Duplicates are
    /// harmless: a claim drops them.
    pub stale_after_seconds: u64,
    /// At most this many jobs of each kind per pass.
    pub limit: i64,
}

/// One pass of the reaper, in one transaction: expired leases back to `queued` with an
/// event and a new outbox row; deferred and stale queued jobs offered again.
pub async fn reap(pool: &PgPool, policy: ReapPolicy) -> sqlx::Result<Reaped> {
    let mut tx = pool.begin().await?;
    let expired: Vec<(Uuid, Uuid, Option<String>, bool)> = sqlx::query_as(
        "SELECT id, org_id, lease_owner, cancel_requested FROM jobs
         WHERE state = 'running' AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(policy.limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut reaped = Reaped::default();
    for (id, org, owner, cancel) in expired {
        let org = OrgId(org);
        if cancel {
            end_tx(&mut tx, org, id, JobState::Cancelled, None).await?;
        } else {
            sqlx::query(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                        updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            event_tx(
                &mut tx,
                org,
                id,
                "state",
                &serde_json::json!({
                    "state": JobState::Queued,
                    "reason": format!(
                        "the lease of {} expired",
                        owner.as_deref().unwrap_or("its worker")
                    ),
                }),
            )
            .await?;
            enqueue_tx(&mut tx, id, None).await?;
        }
        reaped.expired.push(id);
    }
    let waiting: Vec<(Uuid, Uuid, bool)> = sqlx::query_as(
        "SELECT j.id, j.org_id, j.cancel_requested FROM jobs j
         WHERE j.state = 'queued'
           AND NOT EXISTS (SELECT 1 FROM outbox o
                           WHERE o.job_id = j.id AND o.published_at IS NULL)
           AND (j.cancel_requested
                OR j.deferred_at < now() - make_interval(secs => $1)
                OR (j.updated_at < now() - make_interval(secs => $2)
                    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id
                                    AND o.published_at > now() - make_interval(secs => $2))))
         ORDER BY j.updated_at LIMIT $3 FOR UPDATE OF j SKIP LOCKED",
    )
    .bind(policy.deferred_after_seconds as f64)
    .bind(policy.stale_after_seconds as f64)
    .bind(policy.limit)
    .fetch_all(&mut *tx)
    .await?;
    for (id, org, cancel) in waiting {
        if cancel {
            end_tx(&mut tx, OrgId(org), id, JobState::Cancelled, None).await?;
            continue;
        }
        sqlx::query("UPDATE jobs SET deferred_at = NULL, updated_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        enqueue_tx(&mut tx, id, None).await?;
        reaped.reoffered.push(id);
    }
    tx.commit().await?;
    Ok(reaped)
}
