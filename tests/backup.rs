//! Backup and restore end to end: train and publish a model version, back it up with
//! `scripts/backup`, restore it with `scripts/restore` into a fresh database and a fresh
//! object store folder, and serve the same model version from the restored copy: the
//! gateway over it answers the same predictions for the same API key. Real Postgres,
//! RabbitMQ, object store, MiniLM weights, pg_dump and pg_restore.

mod common;
mod worker_support;

use std::process::Command;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use tailor_core::api_keys::{self, Action, NewApiKey};
use tailor_core::jobs::JobState;
use tailor_core::{OrgId, Settings};
use worker_support::*;

fn script(name: &str) -> Command {
    Command::new(format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR")))
}

/// Runs `command`; returns whether it succeeded and what it said on stderr.
fn run(mut command: Command) -> (bool, String) {
    let out = command.output().expect("running a script");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn predict(gateway: &str, key: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{gateway}/v1/models/review-rating/predict"))
        .bearer_auth(key)
        .json(&json!({ "inputs": [
            { "review": "This medicine worked wonders, no side effects at all." },
            { "review": "Terrible. I felt sick for weeks and it did nothing." },
        ] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_serves_the_same_model_version() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("ada@example.com").await;
    let dataset = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(4)).await;
    let job = submit(&app, &session, classifier(1), dataset).await;
    assert_eq!(until_final(&app, job, 10).await, JobState::Succeeded);
    let (_, key) = api_keys::create(
        &app.pool,
        OrgId(session.org_id),
        session.user_id,
        &NewApiKey {
            name: "backup".into(),
            models: None,
            actions: vec![Action::Predict],
            expires_at: None,
            rate_limit_per_minute: None,
        },
    )
    .await
    .unwrap();
    let key = key.expose().to_owned();
    let original = predict(&common::spawn_gateway(&app).await, &key).await;
    assert_eq!(original["version"], 1, "{original}");

    // Back up.
    let backups = tempfile::tempdir().unwrap();
    let dest = backups.path().join("tailor-backup");
    let objects = &app.settings.object_store.local_root;
    let database_url = app.settings.database.url.expose_secret().to_owned();
    let mut backup = script("backup");
    backup
        .arg(&dest)
        .env("TAILOR_DATABASE_URL", &database_url)
        .env("TAILOR_OBJECTS", objects);
    let (ok, said) = run(backup);
    assert!(ok, "scripts/backup: {said}");
    let manifest = std::fs::read_to_string(dest.join("MANIFEST")).unwrap();
    assert!(manifest.contains("./database.dump"), "{manifest}");
    assert!(
        manifest.contains("/manifest.json"),
        "the model version's files are in the backup: {manifest}"
    );

    // A damaged backup is refused before anything is restored.
    let damaged = backups.path().join("damaged");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(&dest)
        .arg(&damaged)
        .status()
        .unwrap();
    let adapter = std::fs::read_to_string(damaged.join("MANIFEST"))
        .unwrap()
        .lines()
        .find(|l| l.ends_with("adapter_model.safetensors"))
        .map(|l| l.split_once("  ").unwrap().1.to_owned())
        .expect("the adapter is in the manifest");
    std::fs::write(damaged.join(&adapter), b"not the adapter").unwrap();

    // Restore into a fresh database and a fresh folder.
    let restored_db = format!("tailor_restore_{}", uuid::Uuid::new_v4().simple());
    let (base, _) = database_url.rsplit_once('/').unwrap();
    let restored_url = format!("{base}/{restored_db}");
    let restored_objects = tempfile::tempdir().unwrap();
    let restore = |from: &std::path::Path| {
        let mut restore = script("restore");
        restore
            .arg(from)
            .arg("--database-url")
            .arg(&restored_url)
            .arg("--objects")
            .arg(restored_objects.path());
        restore
    };
    let (ok, said) = run(restore(&damaged));
    assert!(!ok && said.contains("damaged"), "{said}");
    let (ok, said) = run(restore(&dest));
    assert!(ok, "scripts/restore: {said}");
    // Restoring again over the restored copy is refused without --clean.
    let (ok, said) = run(restore(&dest));
    assert!(!ok && said.contains("--clean"), "{said}");

    // The gateway over the restored copy only: same version, same predictions.
    let mut settings: Settings = app.settings.clone();
    settings.database.url = SecretString::from(restored_url.clone());
    settings.object_store.local_root = restored_objects.path().to_path_buf();
    settings.gateway.port = 0;
    let gateway = tailor_gateway::Application::build(settings)
        .await
        .expect("a gateway over the restored copy");
    let address = format!("http://127.0.0.1:{}", gateway.port());
    tokio::spawn(gateway.run_until_stopped());
    let restored = predict(&address, &key).await;
    assert_eq!(restored["version"], original["version"]);
    assert_eq!(restored["predictions"], original["predictions"]);

    delete_queues(&app.settings).await;
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    admin
        .execute(format!("DROP DATABASE IF EXISTS {restored_db} WITH (FORCE)").as_str())
        .await
        .unwrap();
}
