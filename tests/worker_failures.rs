//! The training worker when things go wrong: a worker killed mid-training, a lease taken
//! over, a job that always crashes, a cancel while training. Real Postgres, RabbitMQ,
//! object store, MiniLM weights, and (for the kill) a worker child process.

mod common;
mod worker_support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tailor_core::jobs::{self, ClaimOutcome, ClaimRequest, JobState, Lease, NewModelVersion};
use worker_support::*;

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_job_resumes_from_its_checkpoint_and_succeeds_exactly_once() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("kill@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(14)).await;
    let job = submit(&app, &session, classifier(2), version).await;
    tailor_core::outbox::drain(&app.pool, &app.settings)
        .await
        .unwrap();

    let mut child = spawn_worker_process(&app.settings);

    // Kill -9 once the tuned run has stored a checkpoint.
    let pool = app.pool.clone();
    wait_for("a checkpoint", Duration::from_secs(600), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM job_events WHERE job_id = $1 AND kind = 'checkpoint')",
            )
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    })
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        state(&app, job).await,
        JobState::Running,
        "the job ended before the worker could be killed; nothing to resume"
    );
    let (checkpoint_step, checkpoint_key): (Option<i32>, Option<String>) =
        sqlx::query_as("SELECT checkpoint_step, checkpoint_key FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let checkpoint_step = checkpoint_step.expect("a checkpoint step");
    assert!(
        checkpoint_key
            .unwrap()
            .contains(&format!("jobs/{job}/checkpoints/"))
    );

    // Its lease expires, the reaper re-queues it, another worker resumes it.
    assert_eq!(until_final(&app, job, 60).await, JobState::Succeeded);

    let events = events(&app, job).await;
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2, "{events:#?}");
    let succeeded = events
        .iter()
        .filter(|(k, d)| k == "state" && d["state"] == "succeeded")
        .count();
    assert_eq!(succeeded, 1);
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions WHERE job_id = $1")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, 1);
    assert!(
        events.iter().any(|(k, d)| k == "state"
            && d["state"] == "queued"
            && d["reason"].as_str().is_some_and(|r| r.contains("expired"))),
        "{events:#?}"
    );
    // The second attempt says it resumed, and its tuned run starts after the checkpoint.
    let resumed = events
        .iter()
        .position(|(k, d)| k == "log" && d["resumed_from_step"] == checkpoint_step)
        .unwrap_or_else(|| panic!("no resume event for step {checkpoint_step}: {events:#?}"));
    let first_tuned_step = events[resumed..]
        .iter()
        .find(|(k, d)| k == "step" && d["phase"] == "tuned")
        .map(|(_, d)| d["step"].as_i64().unwrap())
        .expect("tuned steps after the resume");
    assert_eq!(
        first_tuned_step,
        i64::from(checkpoint_step) + 1,
        "{events:#?}"
    );

    delete_queues(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_lease_was_taken_over_can_no_longer_write() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("fence@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(4)).await;
    let job = submit(&app, &session, classifier(1), version).await;
    let request = |owner| ClaimRequest {
        job_id: job,
        owner,
        lease_seconds: 30,
        org_concurrency: 2,
    };
    let ClaimOutcome::Claimed(a) = jobs::claim(&app.pool, &request("a")).await.unwrap() else {
        panic!("the first claim takes the job");
    };
    // A live lease: another delivery is a duplicate.
    assert!(matches!(
        jobs::claim(&app.pool, &request("b")).await.unwrap(),
        ClaimOutcome::Duplicate { .. }
    ));
    // The lease runs out (a stalled worker); the next claim takes the job over.
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(job)
        .execute(&app.pool)
        .await
        .unwrap();
    let ClaimOutcome::Claimed(b) = jobs::claim(&app.pool, &request("b")).await.unwrap() else {
        panic!("an expired lease is taken over");
    };
    assert_eq!(b.fence.token, a.fence.token + 1);
    assert_eq!(b.attempt, 2);
    let progress = json!({ "phase": "tuned", "step": 3 });
    assert_eq!(
        jobs::report_progress(&app.pool, b.fence, &progress)
            .await
            .unwrap(),
        Lease::Held {
            cancel_requested: false
        }
    );

    // Every write with the old fence changes nothing.
    let before: Vec<(String, Value)> = events(&app, job).await;
    let old = a.fence;
    assert_eq!(
        jobs::heartbeat(&app.pool, old, 30).await.unwrap(),
        Lease::Lost
    );
    assert_eq!(
        jobs::report_progress(&app.pool, old, &json!({ "step": 99 }))
            .await
            .unwrap(),
        Lease::Lost
    );
    assert_eq!(
        jobs::record_event(&app.pool, old, "log", &json!({ "message": "stale" }), None)
            .await
            .unwrap(),
        Lease::Lost
    );
    assert_eq!(
        jobs::record_checkpoint(&app.pool, old, "stale-key", 99)
            .await
            .unwrap(),
        Lease::Lost
    );
    assert!(!jobs::fail_attempt(&app.pool, old, "stale").await.unwrap());
    assert!(!jobs::release(&app.pool, old, "stale").await.unwrap());
    assert!(!jobs::finish_cancelled(&app.pool, old).await.unwrap());
    assert!(jobs::begin_publish(&app.pool, old).await.unwrap().is_none());
    let row: (JobState, i64, sqlx::types::Json<Value>, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT state, fencing_token, progress, checkpoint_key, lease_owner FROM jobs WHERE id = $1",
        )
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(row.0, JobState::Running);
    assert_eq!(row.1, b.fence.token);
    assert_eq!(row.2.0, progress);
    assert_eq!(row.3, None);
    assert_eq!(row.4.as_deref(), Some("b"));
    assert_eq!(events(&app, job).await, before);

    // The new claim publishes; the old one still cannot, before or after.
    let publication = jobs::begin_publish(&app.pool, b.fence)
        .await
        .unwrap()
        .unwrap();
    assert!(jobs::begin_publish(&app.pool, old).await.unwrap().is_none());
    publication
        .commit(&NewModelVersion {
            manifest_sha256: "0".repeat(64),
            metrics: json!({}),
            blueprint: b.blueprint.clone(),
            dataset_version_id: b.dataset.version_id,
            dataset_sha256: b.dataset.sha256.clone(),
            base_checkpoints: json!({}),
            created_by: None,
        })
        .await
        .unwrap();
    assert!(jobs::begin_publish(&app.pool, old).await.unwrap().is_none());
    assert!(
        jobs::begin_publish(&app.pool, b.fence)
            .await
            .unwrap()
            .is_none()
    );
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, 1);
    assert_eq!(state(&app, job).await, JobState::Succeeded);

    // A claim whose job the reaper re-queued (same token, no longer running) is lost too.
    let job2 = submit(&app, &session, classifier(1), version).await;
    let ClaimOutcome::Claimed(c) = jobs::claim(
        &app.pool,
        &ClaimRequest {
            job_id: job2,
            owner: "c",
            lease_seconds: 30,
            org_concurrency: 2,
        },
    )
    .await
    .unwrap() else {
        panic!("claims the second job");
    };
    sqlx::query("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(job2)
        .execute(&app.pool)
        .await
        .unwrap();
    let reaped = tailor_workers::Worker::build(app.settings.clone())
        .unwrap()
        .reap_once()
        .await
        .unwrap();
    assert_eq!(reaped.expired, vec![job2]);
    assert_eq!(state(&app, job2).await, JobState::Queued);
    assert_eq!(
        jobs::heartbeat(&app.pool, c.fence, 30).await.unwrap(),
        Lease::Lost
    );
    assert!(
        jobs::begin_publish(&app.pool, c.fence)
            .await
            .unwrap()
            .is_none()
    );

    delete_queues(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_over_its_quota_waits_and_is_offered_again() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("quota@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(4)).await;
    let first = submit(&app, &session, classifier(1), version).await;
    let second = submit(&app, &session, classifier(1), version).await;
    let request = |job_id| ClaimRequest {
        job_id,
        owner: "w",
        lease_seconds: 30,
        org_concurrency: 1,
    };
    assert!(matches!(
        jobs::claim(&app.pool, &request(first)).await.unwrap(),
        ClaimOutcome::Claimed(_)
    ));
    assert!(matches!(
        jobs::claim(&app.pool, &request(second)).await.unwrap(),
        ClaimOutcome::Deferred {
            running: 1,
            limit: 1
        }
    ));
    assert_eq!(state(&app, second).await, JobState::Queued);
    // Publish the submit messages, so that only the deferral keeps the job waiting.
    sqlx::query("UPDATE outbox SET published_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET deferred_at = now() - interval '1 hour' WHERE id = $1")
        .bind(second)
        .execute(&app.pool)
        .await
        .unwrap();
    let reaped = tailor_workers::Worker::build(app.settings.clone())
        .unwrap()
        .reap_once()
        .await
        .unwrap();
    assert_eq!(reaped.reoffered, vec![second]);
    // A new message (the portal's relay may already have published it).
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE job_id = $1")
        .bind(second)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(messages, 2);
    let log = events(&app, second).await;
    assert!(
        log.iter()
            .any(|(k, d)| k == "log" && d["message"].as_str().is_some_and(|m| m.contains("limit"))),
        "{log:#?}"
    );

    delete_queues(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_always_crashes_fails_with_its_reason_and_is_dead_lettered() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("poison@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(4)).await;
    let job = submit(&app, &session, classifier(1), version).await;
    // The dataset's file disappears from the object store: every attempt fails.
    let key: String = sqlx::query_scalar("SELECT object_key FROM dataset_versions WHERE id = $1")
        .bind(version)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    std::fs::remove_file(app.settings.object_store.local_root.join(&key)).unwrap();

    assert_eq!(until_final(&app, job, 20).await, JobState::Failed);

    let (attempts, error): (i32, String) =
        sqlx::query_as("SELECT attempts, error FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 3);
    assert!(
        error.starts_with("gave up after 3 attempts: reading dataset `drug-reviews` version 1"),
        "{error}"
    );
    let events = events(&app, job).await;
    assert_eq!(
        events.last().unwrap().1,
        json!({ "state": "failed", "error": error })
    );
    let retried = events
        .iter()
        .filter(|(k, d)| k == "state" && d["state"] == "queued" && d["error"].is_string())
        .count();
    assert_eq!(retried, 3, "{events:#?}");
    let dead = dead_letters(&app.settings).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["job_id"], job.to_string());
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, 0);

    delete_queues(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_training_within_one_step() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("cancel@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(14)).await;
    let job = submit(&app, &session, classifier(3), version).await;
    tailor_core::outbox::drain(&app.pool, &app.settings)
        .await
        .unwrap();
    let worker = tokio::spawn(
        tailor_workers::Worker::build(app.settings.clone())
            .unwrap()
            .run_until_idle(),
    );

    // Once the tuned run has taken a step, ask to cancel, as the portal does.
    let pool = app.pool.clone();
    wait_for("a tuned step", Duration::from_secs(600), || {
        let pool = pool.clone();
        async move {
            let phase: Option<String> =
                sqlx::query_scalar("SELECT progress->>'phase' FROM jobs WHERE id = $1")
                    .bind(job)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            phase.as_deref() == Some("tuned")
        }
    })
    .await;
    let (requested_at, phase): (i32, String) = sqlx::query_as(
        "UPDATE jobs SET cancel_requested = true WHERE id = $1
         RETURNING (progress->>'step')::int, progress->>'phase'",
    )
    .bind(job)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(phase, "tuned");
    worker.await.unwrap().unwrap();

    let events = events(&app, job).await;
    assert_eq!(state(&app, job).await, JobState::Cancelled, "{events:#?}");
    let last_step = events
        .iter()
        .rev()
        .find(|(k, _)| k == "step")
        .map(|(_, d)| d.clone())
        .unwrap();
    assert_eq!(last_step["phase"], "tuned");
    let total = last_step["total_steps"].as_i64().unwrap();
    let stopped_at = last_step["step"].as_i64().unwrap();
    assert!(
        stopped_at <= i64::from(requested_at) + 1,
        "cancel requested after step {requested_at}, training went on to step {stopped_at}"
    );
    assert!(stopped_at < total, "the run finished instead of stopping");
    assert_eq!(events.last().unwrap().1["state"], "cancelled");
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, 0);

    delete_queues(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_gives_its_job_back_with_the_exact_state() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("sigterm@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(14)).await;
    let job = submit(&app, &session, classifier(2), version).await;
    tailor_core::outbox::drain(&app.pool, &app.settings)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        tailor_workers::Worker::build(app.settings.clone())
            .unwrap()
            .with_grace(Duration::ZERO)
            .run_until(async {
                stopped.await.ok();
            }),
    );
    let pool = app.pool.clone();
    wait_for("two tuned steps", Duration::from_secs(600), || {
        let pool = pool.clone();
        async move {
            let step: Option<i32> = sqlx::query_scalar(
                "SELECT (progress->>'step')::int FROM jobs
                 WHERE id = $1 AND progress->>'phase' = 'tuned'",
            )
            .bind(job)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .flatten();
            step.is_some_and(|s| s >= 2)
        }
    })
    .await;
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    // Released: queued, the attempt not counted, its state kept as a checkpoint.
    let (state, attempts, checkpoint_step): (JobState, i32, Option<i32>) =
        sqlx::query_as("SELECT state, attempts, checkpoint_step FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let log = events(&app, job).await;
    assert_eq!(state, JobState::Queued, "{log:#?}");
    assert_eq!(attempts, 0);
    let checkpoint_step = checkpoint_step.expect("the released state is a checkpoint");
    let last_step = log
        .iter()
        .rev()
        .find(|(k, _)| k == "step")
        .map(|(_, d)| d["step"].as_i64().unwrap())
        .unwrap();
    assert_eq!(i64::from(checkpoint_step), last_step, "{log:#?}");
    assert!(log.iter().any(|(k, d)| {
        k == "state"
            && d["state"] == "queued"
            && d["reason"]
                .as_str()
                .is_some_and(|r| r.contains("worker stopped"))
    }));

    // The next worker resumes exactly there and finishes.
    assert_eq!(until_final(&app, job, 20).await, JobState::Succeeded);
    let log = events(&app, job).await;
    assert!(
        log.iter()
            .any(|(k, d)| k == "log" && d["resumed_from_step"] == checkpoint_step),
        "{log:#?}"
    );
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1);

    delete_queues(&app.settings).await;
}

/// `rabbitmqctl` output lines, tab-separated, without headers.
fn rabbitmqctl(args: &[&str]) -> Vec<Vec<String>> {
    let out = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl (the broker runs on this machine)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// The broker connection of the consumer of `queue`, if it has one.
fn consumer_connection(queue: &str) -> Option<String> {
    let channel = rabbitmqctl(&[
        "list_consumers",
        "--no-table-headers",
        "queue_name",
        "channel_pid",
    ])
    .into_iter()
    .find(|l| l[0] == queue)
    .map(|l| l[1].clone())?;
    rabbitmqctl(&["list_channels", "--no-table-headers", "pid", "connection"])
        .into_iter()
        .find(|l| l[0] == channel)
        .map(|l| l[1].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_after_losing_the_broker_and_training_goes_on() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("broker@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(8)).await;
    let first = submit(&app, &session, classifier(2), version).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        tailor_workers::Worker::build(app.settings.clone())
            .unwrap()
            .run_until(async {
                stopped.await.ok();
            }),
    );
    // The worker's connection, found through its consumer while it is idle (a busy
    // worker cancels its consumer).
    let queue = tailor_core::queue::Topology::new(&app.settings.rabbitmq).queue;
    let mut connection = None;
    wait_for("the worker's consumer", Duration::from_secs(60), || {
        connection = consumer_connection(&queue);
        std::future::ready(connection.is_some())
    })
    .await;
    let connection = connection.unwrap();
    tailor_core::outbox::drain(&app.pool, &app.settings)
        .await
        .unwrap();
    let pool = app.pool.clone();
    wait_for("training", Duration::from_secs(600), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT progress->>'phase' FROM jobs WHERE id = $1",
            )
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap()
            .is_some()
        }
    })
    .await;
    // As a broker restart would.
    rabbitmqctl(&[
        "close_connection",
        &connection,
        "test: broker connection lost",
    ]);

    // Training goes on, and the consumer comes back for the next job.
    let second = submit(&app, &session, classifier(1), version).await;
    tailor_core::outbox::drain(&app.pool, &app.settings)
        .await
        .unwrap();
    let app = &app;
    for job in [first, second] {
        wait_for("the jobs to end", Duration::from_secs(600), || async move {
            state(app, job).await.is_final()
        })
        .await;
        assert_eq!(state(app, job).await, JobState::Succeeded);
    }
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM jobs WHERE id = $1")
        .bind(first)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the first job was not interrupted");
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();

    delete_queues(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_job_finish_within_the_grace_period() {
    let app = spawn_worker_app().await;
    let session = app.sign_up("term@example.com").await;
    let version = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(8)).await;
    let job = submit(&app, &session, classifier(1), version).await;
    tailor_core::outbox::drain(&app.pool, &app.settings)
        .await
        .unwrap();
    let mut child = spawn_worker_process(&app.settings);
    let pool = app.pool.clone();
    wait_for("a tuned step", Duration::from_secs(600), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT progress->>'phase' FROM jobs WHERE id = $1",
            )
            .bind(job)
            .fetch_one(&pool)
            .await
            .unwrap()
            .as_deref()
                == Some("tuned")
        }
    })
    .await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the worker exited with {status}");
    // A short job ends within the grace period: it finished rather than being released.
    assert_eq!(state(&app, job).await, JobState::Succeeded);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1);

    delete_queues(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organization_at_its_quota_does_not_hold_up_another() {
    let app = worker_support::spawn_worker_app_with(|s| {
        s.jobs.worker_concurrency = 2;
        s.jobs.org_concurrency = 1;
    })
    .await;
    let busy = app.sign_up("busy@example.com").await;
    let other = app.sign_up("other@example.com").await;
    let busy_data = upload_dataset(&app, &busy, "drug-reviews", reviews_jsonl(6)).await;
    let other_data = upload_dataset(&app, &other, "drug-reviews", reviews_jsonl(6)).await;
    let first = submit(&app, &busy, classifier(1), busy_data).await;
    let second = submit(&app, &busy, classifier(1), busy_data).await;
    let theirs = submit(&app, &other, classifier(1), other_data).await;

    for job in [first, second, theirs] {
        assert_eq!(until_final(&app, job, 30).await, JobState::Succeeded);
    }
    // One of the busy organization's jobs waited for the other; the other organization's
    // job ran beside the busy one meanwhile.
    let mut waited = None;
    for job in [first, second] {
        let log = events(&app, job).await;
        if log
            .iter()
            .any(|(k, d)| k == "log" && d["message"].as_str().is_some_and(|m| m.contains("limit")))
        {
            waited = Some(job);
        }
    }
    let waited = waited.expect("a job of the busy organization waited for its quota");
    let ran = if waited == first { second } else { first };
    let times = |job| {
        sqlx::query_as::<_, (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>(
            "SELECT started_at, finished_at FROM jobs WHERE id = $1",
        )
        .bind(job)
        .fetch_one(&app.pool)
    };
    let (ran_start, ran_end) = times(ran).await.unwrap();
    let (waited_start, _) = times(waited).await.unwrap();
    let (theirs_start, _) = times(theirs).await.unwrap();
    assert!(waited_start >= ran_end, "the quota let both run at once");
    assert!(theirs_start < ran_end, "the other organization waited");
    assert!(theirs_start >= ran_start);

    delete_queues(&app.settings).await;
}
