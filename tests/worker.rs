//! The training worker end to end: upload drug reviews, start a classifier job, relay its
//! message, let a worker train it, and load the published model version from the object
//! store. Real Postgres, RabbitMQ, object store and MiniLM weights.

mod common;
mod worker_support;

use std::collections::BTreeMap;

use serde_json::Value;
use tailor_core::jobs::JobState;
use tailor_modules::package::TunedModel;
use uuid::Uuid;
use worker_support::*;

/// Every file under `prefix` of the local object store, by its path below the prefix.
fn files_under(root: &std::path::Path, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let base = root.join(prefix);
    let mut out = BTreeMap::new();
    walk(&base, &base, &mut out);
    out
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    model_id: Uuid,
    version: i32,
    object_prefix: String,
    manifest_sha256: String,
    metrics: sqlx::types::Json<Value>,
    base_checkpoints: sqlx::types::Json<Value>,
    dataset_sha256: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_trains_and_publishes_a_model_version_that_loads_and_predicts() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("ada@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(14)).await;
    let job = submit(&app, &session, classifier(1), version).await;

    relay_and_work(&app.settings, &app.pool).await;

    let events = events(&app, job).await;
    assert_eq!(state(&app, job).await, JobState::Succeeded, "{events:#?}");
    let (attempts, progress, error): (i32, Option<sqlx::types::Json<Value>>, Option<String>) =
        sqlx::query_as("SELECT attempts, progress, error FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
    assert_eq!(error, None);
    let progress = progress.expect("progress").0;
    assert_eq!(progress["phase"], "tuned", "{progress}");
    assert!(progress["elapsed_seconds"].as_f64().unwrap() > 0.0);
    // The log: running, steps of both runs, an epoch with validation metrics, succeeded.
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains(&"step"), "{kinds:?}");
    let epoch = events
        .iter()
        .find(|(k, d)| k == "epoch" && d["phase"] == "tuned");
    assert!(epoch.expect("a tuned epoch event").1["validation"]["rating"].is_object());
    let last = &events.last().unwrap().1;
    assert_eq!(last["state"], "succeeded");
    assert_eq!(last["model_version"], 1);

    // One version, published (the model's first), with tuned and baseline metrics.
    let rows: Vec<VersionRow> = sqlx::query_as(
        "SELECT v.model_id, v.version, v.object_prefix, v.manifest_sha256, v.metrics,
                v.base_checkpoints, v.dataset_sha256
         FROM model_versions v WHERE v.job_id = $1",
    )
    .bind(job)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    let VersionRow {
        model_id,
        version: number,
        object_prefix: prefix,
        manifest_sha256,
        metrics,
        base_checkpoints: base,
        dataset_sha256,
    } = &rows[0];
    assert_eq!(*number, 1);
    assert!(metrics.0["tuned"]["macro_f1"].is_number(), "{}", metrics.0);
    assert!(
        metrics.0["baseline"]["macro_f1"].is_number(),
        "{}",
        metrics.0
    );
    assert_eq!(base.0["text/minilm-l6"].as_str().unwrap().len(), 64);
    assert_eq!(dataset_sha256.len(), 64);
    let published: Option<i32> =
        sqlx::query_scalar("SELECT published_version FROM models WHERE id = $1")
            .bind(model_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(published, Some(1));
    assert_eq!(
        prefix,
        &format!("orgs/{}/models/{model_id}/v1", session.org_id)
    );

    // The version loads from the object store (manifest verified) and predicts.
    let files = files_under(&app.settings.object_store.local_root, prefix);
    assert_eq!(
        &tailor_modules::artifact::sha256_hex(&files["manifest.json"]),
        manifest_sha256
    );
    assert!(
        files.contains_key("adapter_model.safetensors"),
        "{:?}",
        files.keys()
    );
    let model = TunedModel::load(files, &app.settings.jobs.assets_dir).expect("the version loads");
    let predictions = model
        .predict_texts(
            &["This medicine worked wonders, no side effects at all."],
            1,
        )
        .unwrap();
    let label = &predictions[0][0].label;
    assert!(
        ["positive", "negative", "neutral"].contains(&label.as_str()),
        "{label}"
    );
    // Checkpoints are removed once the version is published.
    let checkpoints = app
        .settings
        .object_store
        .local_root
        .join(format!("orgs/{}/jobs/{job}/checkpoints", session.org_id));
    assert!(
        std::fs::read_dir(&checkpoints).map_or(true, |d| d.count() == 0),
        "checkpoints left in {}",
        checkpoints.display()
    );

    // A duplicate message of a finished job is dropped: nothing changes.
    {
        let mut tx = app.pool.begin().await.unwrap();
        tailor_core::jobs::enqueue_tx(&mut tx, job, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    relay_and_work(&app.settings, &app.pool).await;
    assert_eq!(state(&app, job).await, JobState::Succeeded);
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, 1);

    delete_queues(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_epoch_job_only_evaluates_and_still_publishes() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("zero@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(4)).await;
    let job = submit(&app, &session, classifier(0), version).await;

    relay_and_work(&app.settings, &app.pool).await;

    let events = events(&app, job).await;
    assert_eq!(state(&app, job).await, JobState::Succeeded, "{events:#?}");
    assert!(!events.iter().any(|(k, _)| k == "step"), "{events:#?}");
    let metrics: sqlx::types::Json<Value> =
        sqlx::query_scalar("SELECT metrics FROM model_versions WHERE job_id = $1")
            .bind(job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(metrics.0["tuned"].is_object(), "{}", metrics.0);

    delete_queues(&app.settings).await;
}
