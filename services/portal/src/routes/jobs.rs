//! Training jobs: start (page form and JSON, idempotent), list, the job page with live
//! progress over server-sent events, cancel and retry.
//!
//! Starting checks the blueprint against the dataset version (`assembly::prepare_job`)
//! and then writes the job and its outbox row in one transaction (`jobs::submit`); the
//! same idempotency key in the same organization is the same job, so a double click or
//! a retried request never starts two.
//!
//! Live progress: `GET /api/v1/jobs/{id}/events` replays the job's events after
//! `Last-Event-ID` (or `?after=`), then follows new ones. It wakes on Postgres
//! `NOTIFY tailor_job_events` (payload: the job id; one `LISTEN` connection per portal
//! worker thread, shared by all streams) and polls every second besides, so a missed
//! notification only delays an event. The stream ends once the job is final.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, get, http::header, post, web};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgPool, postgres::PgListener};
use tailor_core::{
    Error, OrgId,
    error::OrNotFound,
    jobs::{self, Job, JobState, Submission},
    models,
};
use tokio::sync::{OnceCell, broadcast, mpsc};
use uuid::Uuid;

use super::{PageResult, member_context, page, redirect};
use crate::{
    assembly,
    auth::{CsrfForm, CurrentMember},
    i18n::Lang,
    state::AppState,
};

/// How often a stream looks for new events when no notification came.
const POLL: Duration = Duration::from_secs(1);
/// A comment line this often, so that a closed connection is noticed.
const KEEPALIVE_EVERY: u32 = 15;
/// Events read per query while replaying.
const PAGE: i64 = 500;
/// Prefix of the idempotency key of a retry: `retry-of:{job id}`. A job is retried once;
/// asking again answers the same new job.
const RETRY_KEY: &str = "retry-of:";

pub fn configure_api(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(EventsHub::default()))
        .service(api_start)
        .service(api_list)
        .service(api_get)
        .service(api_events)
        .service(api_cancel)
        .service(api_retry);
}

pub fn configure_pages(cfg: &mut web::ServiceConfig) {
    cfg.service(list_page)
        .service(start_form)
        .service(job_page)
        .service(cancel_form)
        .service(retry_form);
}

// ---- starting ----

/// A client-chosen key: 1 to 200 visible characters.
fn parse_key(raw: Option<&str>) -> Result<Option<String>, Error> {
    let Some(key) = raw.map(str::trim).filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    if key.chars().count() > 200 || key.chars().any(char::is_control) {
        return Err(Error::validation(
            "idempotency_key",
            "The idempotency key must be 1 to 200 characters without control characters.",
        ));
    }
    Ok(Some(key.to_owned()))
}

async fn job_by_key(pool: &PgPool, org: OrgId, key: &str) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT id FROM jobs WHERE org_id = $1 AND idempotency_key = $2")
        .bind(org)
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// A saved blueprint's spec, in `org`.
async fn blueprint_spec(pool: &PgPool, org: OrgId, id: Uuid) -> Result<Value, Error> {
    let spec: Option<sqlx::types::Json<Value>> =
        sqlx::query_scalar("SELECT spec FROM blueprints WHERE org_id = $1 AND id = $2")
            .bind(org)
            .bind(id)
            .fetch_optional(pool)
            .await?;
    spec.map(|s| s.0).ok_or_else(|| {
        Error::validation(
            "blueprint_id",
            "This blueprint does not exist in your organization.",
        )
    })
}

struct Start {
    blueprint_id: Option<Uuid>,
    blueprint: Option<Value>,
    dataset_version_id: Uuid,
    key: Option<String>,
}

/// Starts a job (or finds the one its key names): `(job id, created)`.
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn start(state: &AppState, member: &CurrentMember, s: Start) -> Result<(Uuid, bool), Error> {
    member.require_writer()?;
    if let Some(key) = &s.key
        && let Some(id) = job_by_key(&state.pool, member.org_id, key).await?
    {
        return Ok((id, false));
    }
    let spec = match (s.blueprint_id, s.blueprint) {
        (Some(id), None) => blueprint_spec(&state.pool, member.org_id, id).await?,
        (None, Some(spec)) => spec,
        (Some(_), Some(_)) => {
            return Err(Error::validation(
                "blueprint",
                "Send either blueprint_id or an inline blueprint, not both.",
            ));
        }
        (None, None) => {
            return Err(Error::validation(
                "blueprint_id",
                "Choose a blueprint (blueprint_id) or send one inline (blueprint).",
            ));
        }
    };
    let prepared = assembly::prepare_job(state, member.org_id, &spec, s.dataset_version_id).await?;
    let submitted = jobs::submit(
        &state.pool,
        &Submission {
            org: member.org_id,
            user: Some(member.user_id),
            model_name: prepared.model_name,
            blueprint_id: s.blueprint_id,
            blueprint: prepared.blueprint,
            dataset_version_id: s.dataset_version_id,
            idempotency_key: s.key,
            max_attempts: state.settings.jobs.max_attempts,
            estimate: Some(serde_json::to_value(&prepared.estimate).map_err(anyhow::Error::from)?),
        },
    )
    .await?;
    if submitted.created {
        tracing::info!(job_id = %submitted.job_id, "job submitted");
    }
    Ok((submitted.job_id, submitted.created))
}

#[derive(Deserialize)]
struct StartBody {
    blueprint_id: Option<Uuid>,
    blueprint: Option<Value>,
    dataset_version_id: Uuid,
    idempotency_key: Option<String>,
}

#[post("/jobs")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_start(
    state: web::Data<AppState>,
    member: CurrentMember,
    req: HttpRequest,
    body: web::Json<StartBody>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    let header_key = req
        .headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map_err(|_| {
                Error::validation("Idempotency-Key", "The Idempotency-Key header is not text.")
            })
        })
        .transpose()?;
    let key = parse_key(body.idempotency_key.as_deref().or(header_key))?;
    let (id, created) = start(
        &state,
        &member,
        Start {
            blueprint_id: body.blueprint_id,
            blueprint: body.blueprint,
            dataset_version_id: body.dataset_version_id,
            key,
        },
    )
    .await?;
    let view = job_view(&state, member.org_id, id).await?;
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response
        .insert_header((header::LOCATION, format!("/api/v1/jobs/{id}")))
        .json(view))
}

#[derive(Deserialize)]
struct StartForm {
    blueprint_id: String,
    dataset_version_id: String,
    #[serde(default)]
    idempotency_key: String,
}

#[post("/jobs")]
#[tracing::instrument(skip_all)]
async fn start_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: CsrfForm<StartForm>,
) -> PageResult {
    let CsrfForm { user, form } = form;
    let member = CurrentMember::resolve(&state, &req, user).await?;
    let uuid = |field: &str, raw: &str, message: &str| {
        Uuid::parse_str(raw.trim()).map_err(|_| Error::validation(field, message))
    };
    let blueprint_id = uuid(
        "blueprint_id",
        &form.blueprint_id,
        "Choose a blueprint to train.",
    )?;
    let dataset_version_id = uuid(
        "dataset_version_id",
        &form.dataset_version_id,
        "Choose the dataset version to train on.",
    )?;
    let (id, _) = start(
        &state,
        &member,
        Start {
            blueprint_id: Some(blueprint_id),
            blueprint: None,
            dataset_version_id,
            key: parse_key(Some(&form.idempotency_key))?,
        },
    )
    .await?;
    Ok(redirect(&format!("/jobs/{id}")))
}

// ---- reading ----

/// A job as the API and the page show it.
#[derive(Serialize)]
struct JobView {
    #[serde(flatten)]
    job: Job,
    /// Seconds since it started (to its end when final).
    elapsed_seconds: Option<f64>,
    /// The worker's estimate of the time left, while it runs.
    remaining_seconds: Option<f64>,
    /// The failed or cancelled job this one retries.
    retry_of: Option<Uuid>,
    /// The job that retried this one.
    retried_as: Option<Uuid>,
    /// The model version this job produced.
    model_version: Option<i32>,
}

async fn job_view(state: &AppState, org: OrgId, id: Uuid) -> Result<JobView, Error> {
    let job = jobs::find(&state.pool, org, id).await?.or_not_found()?;
    let key: Option<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM jobs WHERE org_id = $1 AND id = $2")
            .bind(org)
            .bind(id)
            .fetch_one(&state.pool)
            .await?;
    let retry_of = key
        .as_deref()
        .and_then(|k| k.strip_prefix(RETRY_KEY))
        .and_then(|k| Uuid::parse_str(k).ok());
    let retried_as = job_by_key(&state.pool, org, &format!("{RETRY_KEY}{id}")).await?;
    let model_version = models::version_of_job(&state.pool, org, id)
        .await?
        .map(|v| v.version);
    Ok(view_of(job, retry_of, retried_as, model_version))
}

fn view_of(
    job: Job,
    retry_of: Option<Uuid>,
    retried_as: Option<Uuid>,
    model_version: Option<i32>,
) -> JobView {
    let elapsed_seconds = job.started_at.map(|start| {
        let end = job.finished_at.unwrap_or_else(chrono::Utc::now);
        ((end - start).num_milliseconds().max(0) as f64) / 1000.0
    });
    let remaining_seconds = if job.state == JobState::Running {
        job.progress
            .as_ref()
            .and_then(|p| p.0.get("eta_seconds"))
            .and_then(Value::as_f64)
    } else {
        None
    };
    JobView {
        job,
        elapsed_seconds,
        remaining_seconds,
        retry_of,
        retried_as,
        model_version,
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

#[get("/jobs")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_list(
    state: web::Data<AppState>,
    member: CurrentMember,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Error> {
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let list: Vec<JobView> = jobs::list(&state.pool, member.org_id, limit)
        .await?
        .into_iter()
        .map(|j| view_of(j, None, None, None))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

#[get("/jobs/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_get(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(job_view(&state, member.org_id, path.into_inner()).await?))
}

// ---- cancel and retry ----

/// Cancels a job: a queued one at once (state, event and flag in one transaction), a
/// running one by setting the flag its worker checks every step.
#[tracing::instrument(skip(pool))]
async fn cancel(pool: &PgPool, org: OrgId, id: Uuid) -> Result<JobState, Error> {
    let mut tx = pool.begin().await?;
    let job_state: JobState =
        sqlx::query_scalar("SELECT state FROM jobs WHERE org_id = $1 AND id = $2 FOR UPDATE")
            .bind(org)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .or_not_found()?;
    let now = match job_state {
        JobState::Queued => {
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', cancel_requested = true,
                        finished_at = now(), updated_at = now(),
                        lease_owner = NULL, lease_expires_at = NULL
                 WHERE org_id = $1 AND id = $2",
            )
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            jobs::record_event_tx(
                &mut tx,
                org,
                id,
                "state",
                &serde_json::json!({ "state": JobState::Cancelled, "reason": "cancelled before it started" }),
            )
            .await?;
            JobState::Cancelled
        }
        JobState::Running => {
            sqlx::query(
                "UPDATE jobs SET cancel_requested = true, updated_at = now()
                 WHERE org_id = $1 AND id = $2",
            )
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            jobs::record_event_tx(
                &mut tx,
                org,
                id,
                "log",
                &serde_json::json!({ "message": "Cancel requested; the worker stops after the current step." }),
            )
            .await?;
            JobState::Running
        }
        done => {
            return Err(Error::conflict(
                "state",
                format!(
                    "This job has already ended ({}); there is nothing to cancel.",
                    done.as_str()
                ),
            ));
        }
    };
    jobs::notify_event_tx(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(job_id = %id, state = now.as_str(), "cancel requested");
    Ok(now)
}

/// Starts a failed or cancelled job again as a new job with the same blueprint snapshot
/// and dataset version. Returns the new job's id, and `false` when this job had been
/// retried already (the same new job).
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn retry(state: &AppState, member: &CurrentMember, id: Uuid) -> Result<(Uuid, bool), Error> {
    let job = jobs::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_writer()?;
    let key = format!("{RETRY_KEY}{id}");
    if let Some(again) = job_by_key(&state.pool, member.org_id, &key).await? {
        return Ok((again, false));
    }
    if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
        return Err(Error::conflict(
            "state",
            format!(
                "Only a failed or cancelled job can be retried; this one is {}.",
                job.state.as_str()
            ),
        ));
    }
    let submitted = jobs::submit(
        &state.pool,
        &Submission {
            org: member.org_id,
            user: Some(member.user_id),
            model_name: job.model_name.clone(),
            blueprint_id: job.blueprint_id,
            blueprint: job.blueprint.0.clone(),
            dataset_version_id: job.dataset_version_id,
            idempotency_key: Some(key),
            max_attempts: state.settings.jobs.max_attempts,
            estimate: job.estimate.as_ref().map(|e| e.0.clone()),
        },
    )
    .await?;
    if submitted.created {
        let mut tx = state.pool.begin().await?;
        jobs::record_event_tx(
            &mut tx,
            member.org_id,
            submitted.job_id,
            "log",
            &serde_json::json!({ "message": format!("Retry of job {id}."), "retry_of": id }),
        )
        .await?;
        jobs::notify_event_tx(&mut tx, submitted.job_id).await?;
        tx.commit().await?;
        tracing::info!(job_id = %submitted.job_id, retry_of = %id, "job retried");
    }
    Ok((submitted.job_id, submitted.created))
}

#[post("/jobs/{id}/cancel")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_cancel(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    jobs::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_writer()?;
    cancel(&state.pool, member.org_id, id).await?;
    Ok(HttpResponse::Ok().json(job_view(&state, member.org_id, id).await?))
}

#[post("/jobs/{id}/retry")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_retry(
    state: web::Data<AppState>,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, Error> {
    let (new, created) = retry(&state, &member, path.into_inner()).await?;
    let mut response = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response
        .insert_header((header::LOCATION, format!("/api/v1/jobs/{new}")))
        .json(job_view(&state, member.org_id, new).await?))
}

#[derive(Deserialize)]
struct Empty {}

#[post("/jobs/{id}/cancel")]
#[tracing::instrument(skip_all)]
async fn cancel_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: CsrfForm<Empty>,
    path: web::Path<Uuid>,
) -> PageResult {
    let member = CurrentMember::resolve(&state, &req, form.user).await?;
    let id = path.into_inner();
    jobs::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    member.require_writer()?;
    cancel(&state.pool, member.org_id, id).await?;
    Ok(redirect(&format!("/jobs/{id}")))
}

#[post("/jobs/{id}/retry")]
#[tracing::instrument(skip_all)]
async fn retry_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: CsrfForm<Empty>,
    path: web::Path<Uuid>,
) -> PageResult {
    let member = CurrentMember::resolve(&state, &req, form.user).await?;
    let (new, _) = retry(&state, &member, path.into_inner()).await?;
    Ok(redirect(&format!("/jobs/{new}")))
}

// ---- live events ----

/// One `LISTEN tailor_job_events` connection per portal worker thread, fanned out to every
/// stream of that thread. `None` inside: listening failed, streams poll only.
#[derive(Default)]
pub struct EventsHub {
    sender: OnceCell<Option<broadcast::Sender<Uuid>>>,
}

impl EventsHub {
    async fn subscribe(&self, pool: &PgPool) -> Option<broadcast::Receiver<Uuid>> {
        let sender = self
            .sender
            .get_or_init(|| async {
                let mut listener = match PgListener::connect_with(pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for job events; polling only");
                        return None;
                    }
                };
                if let Err(e) = listener.listen(jobs::EVENTS_CHANNEL).await {
                    tracing::warn!(error = %e, "cannot LISTEN for job events; polling only");
                    return None;
                }
                let (sender, _) = broadcast::channel(1024);
                let out = sender.clone();
                actix_web::rt::spawn(async move {
                    loop {
                        match listener.recv().await {
                            Ok(n) => {
                                if let Ok(id) = Uuid::parse_str(n.payload()) {
                                    let _ = out.send(id);
                                }
                            }
                            // PgListener reconnects on the next recv; the streams poll
                            // meanwhile.
                            Err(e) => {
                                tracing::warn!(error = %e, "job events listener");
                                tokio::time::sleep(POLL).await;
                            }
                        }
                    }
                });
                Some(sender)
            })
            .await;
        sender.as_ref().map(|s| s.subscribe())
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
}

/// `id: …`, `event: …`, `data: …` of one job event (the data is one line of JSON).
fn frame(event: &jobs::JobEvent) -> Bytes {
    let data = serde_json::json!({
        "id": event.id, "at": event.at, "kind": event.kind, "data": event.data.0,
    });
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        event.id, event.kind, data
    ))
}

#[get("/jobs/{id}/events")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn api_events(
    state: web::Data<AppState>,
    hub: web::Data<EventsHub>,
    member: CurrentMember,
    req: HttpRequest,
    path: web::Path<Uuid>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, Error> {
    let id = path.into_inner();
    jobs::find(&state.pool, member.org_id, id)
        .await?
        .or_not_found()?;
    let after = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(query.after)
        .unwrap_or(0)
        .max(0);
    let notifications = hub.subscribe(&state.pool).await;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    actix_web::rt::spawn(follow(
        state.pool.clone(),
        member.org_id,
        id,
        after,
        notifications,
        tx,
    ));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// Sends the job's events after `after`, then new ones as they come, until the job is
/// final (then an `end` event) or the client has gone.
async fn follow(
    pool: PgPool,
    org: OrgId,
    job: Uuid,
    mut after: i64,
    mut notifications: Option<broadcast::Receiver<Uuid>>,
    tx: mpsc::Sender<Bytes>,
) {
    let result: Result<(), Error> = async {
        if tx
            .send(Bytes::from_static(b"retry: 2000\n\n"))
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut quiet = 0u32;
        loop {
            // Everything new, page by page.
            let mut sent = false;
            loop {
                let events = jobs::events_after(&pool, org, job, after, PAGE).await?;
                for event in &events {
                    if tx.send(frame(event)).await.is_err() {
                        return Ok(());
                    }
                    after = event.id;
                    sent = true;
                }
                if (events.len() as i64) < PAGE {
                    break;
                }
            }
            let state: Option<JobState> =
                sqlx::query_scalar("SELECT state FROM jobs WHERE org_id = $1 AND id = $2")
                    .bind(org)
                    .bind(job)
                    .fetch_optional(&pool)
                    .await?;
            let Some(state) = state else {
                return Ok(());
            };
            if state.is_final() {
                // The final state's own events may have committed after the read above.
                for event in jobs::events_after(&pool, org, job, after, i64::MAX).await? {
                    if tx.send(frame(&event)).await.is_err() {
                        return Ok(());
                    }
                }
                let end = serde_json::json!({ "state": state });
                let _ = tx
                    .send(Bytes::from(format!("event: end\ndata: {end}\n\n")))
                    .await;
                return Ok(());
            }
            quiet = if sent { 0 } else { quiet + 1 };
            if quiet >= KEEPALIVE_EVERY {
                quiet = 0;
                if tx
                    .send(Bytes::from_static(b": keepalive\n\n"))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            if tx.is_closed() {
                return Ok(());
            }
            // Wait for a notification about this job, or the poll period.
            let deadline = tokio::time::Instant::now() + POLL;
            match notifications.as_mut() {
                Some(rx) => loop {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Ok(id)) if id == job => break,
                        Ok(Ok(_)) => continue,
                        Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                        Ok(Err(broadcast::error::RecvError::Closed)) => {
                            tokio::time::sleep_until(deadline).await;
                            break;
                        }
                        Err(_) => break,
                    }
                },
                None => tokio::time::sleep_until(deadline).await,
            }
        }
    }
    .await;
    if let Err(e) = result {
        if let Error::Unexpected(e) = &e {
            tracing::error!(error = format!("{e:#}"), job_id = %job, "job event stream");
        }
        let _ = tx
            .send(Bytes::from_static(
                b"event: error\ndata: {\"message\":\"The event stream broke; reload the page.\"}\n\n",
            ))
            .await;
    }
}

// ---- pages ----

#[derive(Serialize, sqlx::FromRow)]
struct Choice {
    id: Uuid,
    label: String,
}

#[get("/jobs")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn list_page(state: web::Data<AppState>, lang: Lang, member: CurrentMember) -> PageResult {
    let list: Vec<JobView> = jobs::list(&state.pool, member.org_id, 200)
        .await?
        .into_iter()
        .map(|j| view_of(j, None, None, None))
        .collect();
    let blueprints: Vec<Choice> = sqlx::query_as(
        "SELECT id, name AS label FROM blueprints WHERE org_id = $1 ORDER BY updated_at DESC",
    )
    .bind(member.org_id)
    .fetch_all(&state.pool)
    .await?;
    let versions: Vec<Choice> = sqlx::query_as(
        "SELECT v.id, d.name || ' v' || v.version AS label
         FROM dataset_versions v JOIN datasets d ON d.id = v.dataset_id
         WHERE v.org_id = $1 ORDER BY d.name, v.version DESC",
    )
    .bind(member.org_id)
    .fetch_all(&state.pool)
    .await?;
    let mut context = member_context(&state, &member).await?;
    context.insert("jobs", &list);
    context.insert("blueprints", &blueprints);
    context.insert("dataset_versions", &versions);
    context.insert("can_write", &member.role.can_write());
    context.insert("idempotency_key", &Uuid::new_v4().to_string());
    page(&state, lang, "jobs.html", &context)
}

#[get("/jobs/{id}")]
#[tracing::instrument(skip_all, fields(org_id = %member.org_id))]
async fn job_page(
    state: web::Data<AppState>,
    lang: Lang,
    member: CurrentMember,
    path: web::Path<Uuid>,
) -> PageResult {
    let id = path.into_inner();
    let view = job_view(&state, member.org_id, id).await?;
    let dataset: Option<(Uuid, String, i32)> = sqlx::query_as(
        "SELECT d.id, d.name, v.version FROM dataset_versions v
         JOIN datasets d ON d.id = v.dataset_id WHERE v.org_id = $1 AND v.id = $2",
    )
    .bind(member.org_id)
    .bind(view.job.dataset_version_id)
    .fetch_optional(&state.pool)
    .await?;
    let started_by: Option<String> = match view.job.created_by {
        Some(user) => {
            sqlx::query_scalar("SELECT display_name FROM users WHERE id = $1")
                .bind(user)
                .fetch_optional(&state.pool)
                .await?
        }
        None => None,
    };
    let mut context = member_context(&state, &member).await?;
    context.insert(
        "blueprint_json",
        &serde_json::to_string_pretty(&view.job.blueprint.0).unwrap_or_default(),
    );
    context.insert("job", &view);
    context.insert("dataset", &dataset);
    context.insert("started_by", &started_by);
    context.insert("can_write", &member.role.can_write());
    context.insert("is_final", &view.job.state.is_final());
    context.insert(
        "can_retry",
        &(matches!(view.job.state, JobState::Failed | JobState::Cancelled)
            && view.retried_as.is_none()),
    );
    page(&state, lang, "job.html", &context)
}
