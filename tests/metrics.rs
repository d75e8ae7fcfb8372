//! Prometheus metrics end to end: a real job trained by a worker and a real prediction
//! through the gateway, with `/metrics` of the portal, the worker's own listener and the
//! gateway scraped before and after, and the counters, histograms and gauges that must
//! have moved checked. Real Postgres, RabbitMQ, object store and MiniLM weights.

mod common;
mod worker_support;

use std::net::TcpListener;

use reqwest::StatusCode;
use serde_json::json;
use tailor_core::api_keys::{self, Action, NewApiKey};
use tailor_core::jobs::JobState;
use tailor_core::{OrgId, outbox, queue};
use worker_support::*;

/// The sum of the samples of `name` whose labels include every pair of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn scrape(address: &str) -> String {
    let response = reqwest::get(format!("{address}/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_a_job_and_a_prediction() {
    let app = spawn_worker_app().await;
    let training_queue = queue::Topology::new(&app.settings.rabbitmq).queue;

    // The worker's own listener: /metrics, /healthz, /readyz.
    let worker = tailor_workers::Worker::build(app.settings.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = worker.serve_http(listener).unwrap();
    let worker_address = format!("http://127.0.0.1:{}", http.port());
    let health = reqwest::get(format!("{worker_address}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = reqwest::get(format!("{worker_address}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "{:?}", ready.text().await);
    let before = scrape(&worker_address).await;

    // A job: uploaded through the portal, relayed, trained, published.
    let session = app.sign_up("ada@example.com").await;
    let dataset = upload_dataset(&app, &session, "drug-reviews", reviews_jsonl(4)).await;
    let job = submit(&app, &session, classifier(2), dataset).await;
    outbox::drain(&app.pool, &app.settings).await.unwrap();
    let waiting = scrape(&worker_address).await;
    assert_eq!(
        sample(
            &waiting,
            "tailor_queue_messages",
            &[("queue", &training_queue)]
        ),
        1.0,
        "one message waits in {training_queue}"
    );
    assert_eq!(sample(&waiting, "tailor_jobs", &[("state", "queued")]), 1.0);
    assert_eq!(until_final(&app, job, 10).await, JobState::Succeeded);

    let after = scrape(&worker_address).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert!(
        moved("tailor_training_step_seconds_count", &[("phase", "tuned")]) >= 1.0,
        "{after}"
    );
    assert!(moved("tailor_training_step_seconds_sum", &[("phase", "tuned")]) > 0.0);
    assert!(
        moved("tailor_checkpoint_seconds_count", &[]) >= 1.0,
        "{after}"
    );
    assert_eq!(moved("tailor_publish_seconds_count", &[]), 1.0, "{after}");
    assert_eq!(
        moved(
            "tailor_job_attempt_seconds_count",
            &[("outcome", "succeeded")]
        ),
        1.0
    );
    // Gauges read on scrape from this test's database and queue.
    assert_eq!(
        sample(&after, "tailor_jobs", &[("state", "succeeded")]),
        1.0
    );
    assert_eq!(sample(&after, "tailor_jobs", &[("state", "queued")]), 0.0);
    assert_eq!(
        sample(
            &after,
            "tailor_queue_messages",
            &[("queue", &training_queue)]
        ),
        0.0
    );
    assert_eq!(
        sample(&after, "tailor_scrape_source_up", &[("source", "rabbitmq")]),
        1.0
    );
    // The worker's listener counts its own requests by route pattern.
    assert!(
        sample(
            &after,
            "tailor_http_requests_total",
            &[
                ("service", "worker"),
                ("route", "/readyz"),
                ("status", "200")
            ]
        ) >= 1.0
    );

    // The portal counted the upload under its route pattern, not its raw path.
    let portal = scrape(&app.address).await;
    assert!(
        sample(
            &portal,
            "tailor_http_requests_total",
            &[
                ("service", "portal"),
                ("method", "POST"),
                ("route", "/api/v1/datasets"),
                ("status", "201")
            ]
        ) >= 1.0,
        "{portal}"
    );
    assert!(
        sample(
            &portal,
            "tailor_http_request_duration_seconds_count",
            &[("service", "portal"), ("route", "/api/v1/datasets")]
        ) >= 1.0
    );
    assert!(
        !portal.contains(&dataset.to_string()),
        "no raw ids in labels"
    );
    let answered = app.get("/healthz", &common::Auth::None).await;
    assert!(answered.headers().contains_key("x-request-id"));

    // A prediction through the gateway, twice: a cache miss and load, then a hit.
    let gateway = common::spawn_gateway(&app).await;
    let (_, key) = api_keys::create(
        &app.pool,
        OrgId(session.org_id),
        session.user_id,
        &NewApiKey {
            name: "metrics".into(),
            models: None,
            actions: vec![Action::Predict],
            expires_at: None,
            rate_limit_per_minute: None,
        },
    )
    .await
    .unwrap();
    let before = scrape(&gateway).await;
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(format!("{gateway}/v1/models/review-rating/predict"))
            .bearer_auth(key.expose())
            .header("x-request-id", "metrics-test-1")
            .json(&json!({ "inputs": [{ "review": "It worked well." }, { "review": "Awful." }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-request-id"], "metrics-test-1");
    }
    let after = scrape(&gateway).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(
        moved(
            "tailor_http_requests_total",
            &[
                ("service", "gateway"),
                ("route", "/v1/models/{model}/predict"),
                ("status", "200")
            ]
        ),
        2.0,
        "{after}"
    );
    assert_eq!(moved("tailor_gateway_cache_misses_total", &[]), 1.0);
    assert_eq!(moved("tailor_gateway_cache_hits_total", &[]), 1.0);
    assert_eq!(moved("tailor_gateway_adapter_load_seconds_count", &[]), 1.0);
    assert!(moved("tailor_gateway_batch_rows_count", &[("kind", "predict")]) >= 1.0);
    assert!(moved("tailor_gateway_batch_rows_sum", &[("kind", "predict")]) >= 4.0);
    assert!(sample(&after, "tailor_gateway_cache", &[("figure", "versions")]) >= 1.0);

    http.stop().await;
    delete_queues(&app.settings).await;
}
