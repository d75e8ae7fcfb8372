//! Helpers of the worker tests: an app with its own queue names and short leases, a
//! small drug-review dataset, a classifier job, and running relay and worker until the
//! job is final. Real Postgres, RabbitMQ and object store.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use secrecy::ExposeSecret;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tailor_core::jobs::{self, JobState, Submission};
use tailor_core::{OrgId, Settings, outbox, queue};
use uuid::Uuid;

use crate::common::{Auth, Session, TestApp, spawn_app_with};

/// An app whose jobs use their own queues, short leases and frequent checkpoints.
pub async fn spawn_worker_app() -> TestApp {
    spawn_worker_app_with(|_| {}).await
}

/// [`spawn_worker_app`] with `change` applied to its settings afterwards.
pub async fn spawn_worker_app_with(change: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(|s| {
        s.rabbitmq.queue_prefix = format!("test-{}", Uuid::new_v4().simple());
        s.jobs.lease_seconds = 3;
        s.jobs.heartbeat_seconds = 1;
        s.jobs.reaper_seconds = 1;
        s.jobs.checkpoint_every = 2;
        s.jobs.max_attempts = 3;
        s.jobs.worker_concurrency = 1;
        change(s);
    })
    .await
}

/// `per_class` reviews of each rating (positive, negative, neutral) from the drug review
/// training file, as JSONL with the columns `review` and `rating`.
pub fn reviews_jsonl(per_class: usize) -> String {
    let path = std::path::Path::new(
        &std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into()),
    )
    .join("drugreview/drugsComTrain.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-assets)", path.display()));
    let records = tailor_modules::package::read_table("drugsComTrain.tsv", &text).unwrap();
    let mut out = String::new();
    for class in ["positive", "negative", "neutral"] {
        for r in records
            .iter()
            .filter(|r| r["rating"] == class)
            .take(per_class)
        {
            let review = r["review"].trim().trim_matches('"').replace("&#039;", "'");
            out.push_str(&json!({ "review": review, "rating": class }).to_string());
            out.push('\n');
        }
    }
    out
}

/// Uploads `body` as a JSONL dataset; returns the id of its version.
pub async fn upload_dataset(app: &TestApp, session: &Session, name: &str, body: String) -> Uuid {
    let response = app
        .request(
            Method::POST,
            &format!("/api/v1/datasets?name={name}&file_name=reviews.jsonl"),
            &Auth::Session(session),
        )
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    let dataset: Uuid = answer["dataset_id"].as_str().unwrap().parse().unwrap();
    sqlx::query_scalar(
        "SELECT id FROM dataset_versions WHERE dataset_id = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(dataset)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// A review classifier: MiniLM (32 tokens) with LoRA r 4 on query and value.
pub fn classifier(epochs: usize) -> Value {
    json!({
        "name": "review-rating",
        "inputs": [{ "name": "review", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 32 } }],
        "outputs": [{ "name": "rating", "task": "classification",
                      "decoder": { "module": "head/linear" } }],
        "adaptation": { "method": "lora", "rank": 4, "alpha": 8, "targets": ["query", "value"] },
        "training": { "epochs": epochs, "batch_size": 8, "seed": 7, "validation_split": 0.2 }
    })
}

/// Starts a job (job row and outbox row, as the portal does); returns its id.
pub async fn submit(app: &TestApp, session: &Session, blueprint: Value, version: Uuid) -> Uuid {
    let submitted = jobs::submit(
        &app.pool,
        &Submission {
            org: OrgId(session.org_id),
            user: Some(session.user_id),
            model_name: "review-rating".into(),
            blueprint_id: None,
            blueprint,
            dataset_version_id: version,
            idempotency_key: None,
            max_attempts: app.settings.jobs.max_attempts,
            estimate: None,
        },
    )
    .await
    .unwrap();
    submitted.job_id
}

pub async fn state(app: &TestApp, job: Uuid) -> JobState {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// A job's events as (kind, data), oldest first.
pub async fn events(app: &TestApp, job: Uuid) -> Vec<(String, Value)> {
    let rows: Vec<(String, sqlx::types::Json<Value>)> =
        sqlx::query_as("SELECT kind, data FROM job_events WHERE job_id = $1 ORDER BY id")
            .bind(job)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(k, d)| (k, d.0)).collect()
}

/// Publishes pending outbox rows, then runs an in-process worker until the queue is empty
/// and it runs nothing.
pub async fn relay_and_work(settings: &Settings, pool: &sqlx::PgPool) {
    outbox::drain(pool, settings).await.expect("relay drain");
    tailor_workers::Worker::build(settings.clone())
        .unwrap()
        .run_until_idle()
        .await
        .expect("worker");
}

/// Relays and works (and reaps) until the job is final, at most `rounds` times.
pub async fn until_final(app: &TestApp, job: Uuid, rounds: usize) -> JobState {
    for _ in 0..rounds {
        relay_and_work(&app.settings, &app.pool).await;
        let s = state(app, job).await;
        if s.is_final() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        tailor_workers::Worker::build(app.settings.clone())
            .unwrap()
            .reap_once()
            .await
            .unwrap();
    }
    state(app, job).await
}

/// Messages waiting in the dead-letter queue, taken off it (their payloads).
pub async fn dead_letters(settings: &Settings) -> Vec<Value> {
    let connection = queue::connect(&settings.rabbitmq).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = queue::Topology::new(&settings.rabbitmq);
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(
            &topology.dead_queue,
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        out.push(serde_json::from_slice(&message.delivery.data).unwrap());
    }
    connection.close(200, "test done").await.ok();
    out
}

/// Deletes the test's exchanges and queues.
pub async fn delete_queues(settings: &Settings) {
    let connection = queue::connect(&settings.rabbitmq).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    queue::delete(&channel, &queue::Topology::new(&settings.rabbitmq))
        .await
        .ok();
    connection.close(200, "test done").await.ok();
}

/// `tailor worker` as a child process, configured like the test app.
pub fn spawn_worker_process(s: &Settings) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tailor"))
        .arg("worker")
        .env("TAILOR_ENV", "test")
        .env(
            "TAILOR_CONFIG_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config"),
        )
        .env("TAILOR__DATABASE__URL", s.database.url.expose_secret())
        .env("TAILOR__RABBITMQ__QUEUE_PREFIX", &s.rabbitmq.queue_prefix)
        .env(
            "TAILOR__OBJECT_STORE__LOCAL_ROOT",
            &s.object_store.local_root,
        )
        .env("TAILOR__JOBS__ASSETS_DIR", &s.jobs.assets_dir)
        .env(
            "TAILOR__JOBS__LEASE_SECONDS",
            s.jobs.lease_seconds.to_string(),
        )
        .env(
            "TAILOR__JOBS__HEARTBEAT_SECONDS",
            s.jobs.heartbeat_seconds.to_string(),
        )
        .env(
            "TAILOR__JOBS__REAPER_SECONDS",
            s.jobs.reaper_seconds.to_string(),
        )
        .env(
            "TAILOR__JOBS__CHECKPOINT_EVERY",
            s.jobs.checkpoint_every.to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting `tailor worker`")
}
