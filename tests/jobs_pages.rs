//! Starting, listing, cancelling and retrying jobs through the portal, and the live event
//! stream of the job page — against real Postgres (no worker runs here: jobs stay queued
//! unless a test moves them, the way a worker would, through the job tables' contract).

mod common;

use std::time::Duration;

use common::{Auth, Session, TestApp, assert_error, spawn_app_with};
use reqwest::{Method, Response, StatusCode, header};
use serde_json::{Value, json};
use tailor_core::{OrgId, jobs};
use uuid::Uuid;

const CLAUSES: &str = "clause,clause_type\n\
\"The tenant shall pay rent on the first day of each month.\",payment\n\
\"Rent is due monthly in advance without deduction.\",payment\n\
\"Late payment of rent incurs a fee of five percent.\",payment\n\
\"The lessee pays the agreed rent by bank transfer.\",payment\n\
\"Payment of the rent is owed on the first business day.\",payment\n\
\"Rent increases are limited to three percent per year.\",payment\n\
\"Either party may terminate this agreement with thirty days notice.\",termination\n\
\"This contract ends automatically after twelve months.\",termination\n\
\"The landlord may terminate the lease for material breach.\",termination\n\
\"Termination requires written notice to the other party.\",termination\n\
\"The agreement may be cancelled by mutual consent.\",termination\n\
\"Upon termination the tenant must vacate the premises.\",termination\n";

fn blueprint() -> Value {
    json!({ "name": "clauses",
        "inputs": [{ "name": "clause", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 32 } }],
        "outputs": [{ "name": "clause_type", "task": "classification", "decoder": { "module": "head/linear" } }],
        "adaptation": { "method": "lora", "rank": 4, "alpha": 8, "targets": ["query", "value"] },
        "training": { "epochs": 1, "batch_size": 8, "seed": 3, "validation_split": 0.25 } })
}

/// The portal with queue names of its own and without its outbox relay: these tests stop
/// at the outbox row (tests/relay.rs follows it to the broker), and no worker runs.
async fn app() -> TestApp {
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    spawn_app_with(move |s| {
        s.rabbitmq.queue_prefix = prefix;
        s.jobs.relay_enabled = false;
    })
    .await
}

/// Uploads the clauses; returns the dataset version's id.
async fn dataset(app: &TestApp, session: &Session) -> Uuid {
    let response = app
        .request(
            Method::POST,
            "/api/v1/datasets?name=clauses&file_name=clauses.csv",
            &Auth::Session(session),
        )
        .body(CLAUSES)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["version"]["id"].as_str().unwrap().parse().unwrap()
}

async fn start(app: &TestApp, auth: &Auth<'_>, version: Uuid, key: Option<&str>) -> Response {
    let mut request = app
        .request(Method::POST, "/api/v1/jobs", auth)
        .json(&json!({ "blueprint": blueprint(), "dataset_version_id": version }));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

/// Starts a job and returns its id.
async fn started(app: &TestApp, s: &Session, version: Uuid) -> Uuid {
    let r = start(app, &Auth::Session(s), version, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    body["id"].as_str().unwrap().parse().unwrap()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// Makes `email` a viewer of `owner`'s organization; returns a token for it.
async fn viewer(app: &TestApp, owner: &Session, email: &str) -> String {
    let invited: Value = app
        .invite(owner, email, "viewer")
        .await
        .json()
        .await
        .unwrap();
    let viewer = app.sign_up(email).await;
    let r = app
        .accept(&viewer, invited["token"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.create_token(&viewer, "read").await.1
}

#[tokio::test]
async fn starting_a_job_writes_one_job_and_one_outbox_row_once_per_key() {
    let app = app().await;
    let owner = app.sign_up("owner@example.com").await;
    let version = dataset(&app, &owner).await;

    let first = start(&app, &Auth::Session(&owner), version, Some("click-1")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["state"], "queued");
    assert_eq!(first["model_name"], "clauses");
    let again = start(&app, &Auth::Session(&owner), version, Some("click-1")).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 1);
    assert_eq!(
        count(&app, "SELECT count(*) FROM job_events WHERE kind = 'state'").await,
        1
    );

    // The page form: a saved blueprint, the key of the rendered form sent twice.
    let blueprint_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO blueprints (id, org_id, name, spec, created_by) VALUES ($1, $2, 'clauses', $3, $4)",
    )
    .bind(blueprint_id)
    .bind(owner.org_id)
    .bind(sqlx::types::Json(blueprint()))
    .bind(owner.user_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let page = app.get("/jobs", &Auth::Session(&owner)).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&blueprint_id.to_string()),
        "the start form offers it"
    );
    let mut locations = Vec::new();
    for _ in 0..2 {
        let r = app
            .request(Method::POST, "/jobs", &Auth::SessionNoCsrf(&owner))
            .form(&[
                ("csrf_token", owner.csrf.as_str()),
                ("blueprint_id", &blueprint_id.to_string()),
                ("dataset_version_id", &version.to_string()),
                ("idempotency_key", "form-key-1"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        locations.push(r.headers()[header::LOCATION].to_str().unwrap().to_owned());
    }
    assert_eq!(locations[0], locations[1]);
    assert!(locations[0].starts_with("/jobs/"));
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 2);
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 2);
    let job_page = app.get(&locations[0], &Auth::Session(&owner)).await;
    assert_eq!(job_page.status(), StatusCode::OK);
    let html = job_page.text().await.unwrap();
    assert!(
        html.contains("id=\"job-estimate\""),
        "the estimate is shown"
    );
    assert!(html.contains(&format!("/blueprints/{blueprint_id}")));
    let list: Value = app
        .get("/api/v1/jobs", &Auth::Session(&owner))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // A blueprint the data cannot support is refused with the field named; no job.
    let r = app
        .post(
            "/api/v1/jobs",
            &Auth::Session(&owner),
            &json!({ "blueprint": { "name": "x", "inputs": [], "outputs": [] }, "dataset_version_id": version }),
        )
        .await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 2);
}

#[tokio::test]
async fn a_viewer_cannot_start_cancel_or_retry_a_job() {
    let app = app().await;
    let owner = app.sign_up("owner@example.com").await;
    let version = dataset(&app, &owner).await;
    let job = started(&app, &owner, version).await;
    let token = viewer(&app, &owner, "viewer@example.com").await;
    let as_viewer = |method: Method, path: &str| {
        app.request(method, path, &Auth::Bearer(&token))
            .header("X-Tailor-Org", owner.org_id.to_string())
    };
    let r = as_viewer(Method::POST, "/api/v1/jobs")
        .json(&json!({ "blueprint": blueprint(), "dataset_version_id": version }))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = as_viewer(Method::POST, &format!("/api/v1/jobs/{job}/cancel"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    // A viewer reads.
    let r = as_viewer(Method::GET, &format!("/api/v1/jobs/{job}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 1);
}

#[tokio::test]
async fn a_queued_job_is_cancelled_at_once_and_a_retry_starts_a_linked_new_job() {
    let app = app().await;
    let owner = app.sign_up("owner@example.com").await;
    let version = dataset(&app, &owner).await;
    let job = started(&app, &owner, version).await;
    let auth = Auth::Session(&owner);

    // Retrying a queued job is refused.
    let r = app
        .post(&format!("/api/v1/jobs/{job}/retry"), &auth, &json!({}))
        .await;
    assert_error(r, StatusCode::CONFLICT, "conflict").await;

    let r = app
        .post(&format!("/api/v1/jobs/{job}/cancel"), &auth, &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["state"], "cancelled");
    assert_eq!(body["cancel_requested"], true);
    assert!(body["finished_at"].is_string());
    let states: Vec<Value> = sqlx::query_scalar(
        "SELECT data FROM job_events WHERE job_id = $1 AND kind = 'state' ORDER BY id",
    )
    .bind(job)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(states.len(), 2);
    assert_eq!(states[1]["state"], "cancelled");
    // Cancelling again: it has ended.
    let r = app
        .post(&format!("/api/v1/jobs/{job}/cancel"), &auth, &json!({}))
        .await;
    assert_error(r, StatusCode::CONFLICT, "conflict").await;

    // Retry through the page's form: a new job, same snapshot, linked both ways.
    let r = app
        .request(
            Method::POST,
            &format!("/jobs/{job}/retry"),
            &Auth::SessionNoCsrf(&owner),
        )
        .form(&[("csrf_token", owner.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let new: Uuid = location.trim_start_matches("/jobs/").parse().unwrap();
    assert_ne!(new, job);
    let new_job: Value = app
        .get(&format!("/api/v1/jobs/{new}"), &auth)
        .await
        .json()
        .await
        .unwrap();
    let old_job: Value = app
        .get(&format!("/api/v1/jobs/{job}"), &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(new_job["state"], "queued");
    assert_eq!(new_job["retry_of"], job.to_string());
    assert_eq!(old_job["retried_as"], new.to_string());
    assert_eq!(new_job["blueprint"], old_job["blueprint"]);
    assert_eq!(new_job["dataset_version_id"], old_job["dataset_version_id"]);
    assert_eq!(new_job["model_id"], old_job["model_id"]);
    // Asking again gives the same new job.
    let r = app
        .post(&format!("/api/v1/jobs/{job}/retry"), &auth, &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["id"], new.to_string());
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 2);
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 2);
    let page = app.get(&format!("/jobs/{new}"), &auth).await;
    assert!(page.text().await.unwrap().contains(&job.to_string()));

    // A running job is only flagged: its worker stops it.
    sqlx::query("UPDATE jobs SET state = 'running', started_at = now() WHERE id = $1")
        .bind(new)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app
        .post(&format!("/api/v1/jobs/{new}/cancel"), &auth, &json!({}))
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["state"], "running");
    assert_eq!(body["cancel_requested"], true);
}

#[tokio::test]
async fn another_organizations_job_is_not_found_anywhere() {
    let app = app().await;
    let owner = app.sign_up("owner@example.com").await;
    let version = dataset(&app, &owner).await;
    let job = started(&app, &owner, version).await;
    let other = app.sign_up("other@example.com").await;
    let auth = Auth::Session(&other);
    for path in [
        format!("/api/v1/jobs/{job}"),
        format!("/api/v1/jobs/{job}/events"),
    ] {
        assert_error(
            app.get(&path, &auth).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    for path in [
        format!("/api/v1/jobs/{job}/cancel"),
        format!("/api/v1/jobs/{job}/retry"),
    ] {
        let r = app.post(&path, &auth, &json!({})).await;
        assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    let r = app.get(&format!("/jobs/{job}"), &auth).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Starting on another organization's dataset version is refused too.
    let r = start(&app, &auth, version, None).await;
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let list: Value = app.get("/api/v1/jobs", &auth).await.json().await.unwrap();
    assert_eq!(list, json!([]));
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "queued");
}

/// One server-sent event: its id (if any), name and data.
#[derive(Debug)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: String,
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut sse = Sse {
                id: None,
                event: "message".into(),
                data: String::new(),
            };
            let mut any = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    sse.id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    sse.event = v.into();
                    any = true;
                } else if let Some(v) = line.strip_prefix("data: ") {
                    sse.data = v.into();
                }
            }
            any.then_some(sse)
        })
        .collect()
}

/// Writes an event as a worker does (the job_events contract) and wakes the streams.
async fn record(app: &TestApp, org: Uuid, job: Uuid, kind: &str, data: Value) -> i64 {
    let mut tx = app.pool.begin().await.unwrap();
    let id = jobs::record_event_tx(&mut tx, OrgId(org), job, kind, &data)
        .await
        .unwrap();
    jobs::notify_event_tx(&mut tx, job).await.unwrap();
    tx.commit().await.unwrap();
    id
}

/// Ends a job as a worker does: the final state and its event in one transaction.
async fn finish(app: &TestApp, org: Uuid, job: Uuid, state: &str) {
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE jobs SET state = $2, finished_at = now() WHERE id = $1")
        .bind(job)
        .bind(state)
        .execute(&mut *tx)
        .await
        .unwrap();
    jobs::record_event_tx(
        &mut tx,
        OrgId(org),
        job,
        "state",
        &json!({ "state": state }),
    )
    .await
    .unwrap();
    jobs::notify_event_tx(&mut tx, job).await.unwrap();
    tx.commit().await.unwrap();
}

/// The whole stream (it ends by itself once the job is final); the timeout only keeps a
/// broken stream from hanging the test run.
async fn read_stream(response: Response) -> String {
    tokio::time::timeout(Duration::from_secs(120), response.text())
        .await
        .expect("the stream ends once the job is final")
        .unwrap()
}

#[tokio::test]
async fn the_event_stream_replays_then_follows_and_ends_when_the_job_is_final() {
    let app = app().await;
    let owner = app.sign_up("owner@example.com").await;
    let version = dataset(&app, &owner).await;
    let job = started(&app, &owner, version).await;
    let org = owner.org_id;
    sqlx::query("UPDATE jobs SET state = 'running', started_at = now() WHERE id = $1")
        .bind(job)
        .execute(&app.pool)
        .await
        .unwrap();
    record(&app, org, job, "state", json!({ "state": "running" })).await;
    let step = record(
        &app,
        org,
        job,
        "step",
        json!({ "phase": "tuned", "step": 1, "total_steps": 4, "epoch": 1, "loss": 0.69 }),
    )
    .await;
    record(
        &app,
        org,
        job,
        "epoch",
        json!({ "phase": "tuned", "epoch": 1, "epochs": 2, "train_loss": 0.6,
                "validation_loss": 0.65, "metric": "macro_f1", "value": 0.5 }),
    )
    .await;

    // Open the stream while the job runs: it replays, then waits for more.
    let path = format!("/api/v1/jobs/{job}/events");
    let mut live = app.get(&path, &Auth::Session(&owner)).await;
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(live.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut seen = String::new();
    // Read until the replayed epoch event has arrived.
    while !seen.contains("event: epoch") {
        let chunk = live.chunk().await.unwrap().expect("more events");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The portal listens for the workers' notifications (and polls besides).
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%tailor_job_events%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        listening, 1,
        "one LISTEN connection for the portal's streams"
    );
    // New events are followed, and the stream ends with the final state.
    record(
        &app,
        org,
        job,
        "log",
        json!({ "message": "checkpoint written" }),
    )
    .await;
    finish(&app, org, job, "succeeded").await;
    let rest = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(chunk) = live.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream ends once the job is final");
    let events = parse_sse(&seen);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        ["state", "state", "step", "epoch", "log", "state", "end"],
        "{seen}"
    );
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    let last: Value = serde_json::from_str(&events[5].data).unwrap();
    assert_eq!(last["data"]["state"], "succeeded");
    let end: Value = serde_json::from_str(&events[6].data).unwrap();
    assert_eq!(end["state"], "succeeded");

    // Reconnecting with Last-Event-ID replays only what came after it, then ends.
    let replay = app
        .request(Method::GET, &path, &Auth::Session(&owner))
        .header("Last-Event-ID", step.to_string())
        .send()
        .await
        .unwrap();
    let replayed = parse_sse(&read_stream(replay).await);
    let kinds: Vec<&str> = replayed.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["epoch", "log", "state", "end"]);
    assert!(replayed.iter().filter_map(|e| e.id).all(|id| id > step));
    // ?after= does the same.
    let after = app
        .get(&format!("{path}?after={step}"), &Auth::Session(&owner))
        .await;
    assert_eq!(parse_sse(&read_stream(after).await).len(), 4);
}
