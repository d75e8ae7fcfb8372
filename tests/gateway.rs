//! The inference gateway end to end: a real model version (a tiny real training through
//! the worker), API keys made with `tailor_core::api_keys`, predictions compared with the
//! ML core's, versions published while the gateway runs, and every refusal (401, 403,
//! 404, 413, 422, 429) in the one error shape. Real Postgres, RabbitMQ and object store.

mod common;
mod worker_support;

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tailor_core::api_keys::{self, Action, ApiKey, NewApiKey};
use tailor_core::jobs::JobState;
use tailor_core::{OrgId, models, storage};
use tailor_modules::package::TunedModel;
use uuid::Uuid;
use worker_support::*;

use common::{TestApp, assert_error, spawn_gateway};

/// A key of `org` made as the portal makes it; returns (id, key text).
async fn new_key(
    app: &TestApp,
    org: Uuid,
    user: Uuid,
    models: Option<Vec<Uuid>>,
    actions: &[Action],
    change: impl FnOnce(&mut NewApiKey),
) -> (Uuid, String) {
    let mut new = NewApiKey {
        name: format!("key {}", Uuid::new_v4().simple()),
        models,
        actions: actions.to_vec(),
        expires_at: None,
        rate_limit_per_minute: None,
    };
    change(&mut new);
    let (record, key) = api_keys::create(&app.pool, OrgId(org), user, &new)
        .await
        .unwrap();
    (record.id, key.expose().to_owned())
}

async fn call(gateway: &str, key: Option<&str>, model: &str, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{gateway}/v1/models/{model}/predict"))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

fn items(texts: &[&str]) -> Value {
    json!({ "inputs": texts.iter().map(|t| json!({ "review": t })).collect::<Vec<_>>() })
}

/// What the ML core predicts for `texts` with the version, loaded alone from the store.
async fn core_predictions(
    app: &TestApp,
    org: Uuid,
    model: Uuid,
    version: i32,
    texts: &[&str],
) -> Value {
    let store = storage::build(&app.settings.object_store).unwrap();
    let version = models::find_version(&app.pool, OrgId(org), model, version)
        .await
        .unwrap()
        .unwrap();
    let files = models::read_verified(&store, &version, |_| true)
        .await
        .unwrap();
    let assets = app.settings.jobs.assets_dir.clone();
    let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let model = TunedModel::load(files, &assets).unwrap();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let rows = model.predict_texts(&texts, texts.len()).unwrap();
        Value::Array(
            rows.into_iter()
                .map(|row| {
                    let p = &row[0];
                    json!({ p.output.clone(): { "label": p.label, "scores": p.scores } })
                })
                .collect(),
        )
    })
    .await
    .unwrap()
}

/// Same labels, scores within 1e-5.
fn assert_same_predictions(got: &Value, want: &Value) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (&g["rating"], &w["rating"]);
        assert_eq!(g["label"], w["label"], "{g} vs {w}");
        let (gs, ws) = (
            g["scores"].as_object().unwrap(),
            w["scores"].as_object().unwrap(),
        );
        assert_eq!(gs.len(), ws.len());
        assert_eq!(gs.len(), 3, "{gs:?}");
        for (label, want) in ws {
            let got = gs[label].as_f64().unwrap();
            assert!(
                (got - want.as_f64().unwrap()).abs() < 1e-5,
                "{label}: {got} vs {want}"
            );
        }
    }
}

async fn model_id(app: &TestApp, org: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT id FROM models WHERE org_id = $1 AND name = 'review-rating'")
        .bind(org)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

const TEXTS: [&str; 3] = [
    "This medicine worked wonders, no side effects at all.",
    "Terrible. I felt sick for weeks and it did nothing.",
    "It was okay; some days better than others.",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_tuned_versions_like_the_ml_core_behind_api_keys() {
    let app = spawn_worker_app().await;
    let ada = app.sign_up("ada@example.com").await;
    let dataset = upload_dataset(&app, &ada, "drug-reviews", reviews_jsonl(4)).await;
    let job = submit(&app, &ada, classifier(1), dataset).await;
    assert_eq!(until_final(&app, job, 10).await, JobState::Succeeded);
    let model = model_id(&app, ada.org_id).await;

    let gateway = spawn_gateway(&app).await;
    let (key_id, key) = new_key(
        &app,
        ada.org_id,
        ada.user_id,
        None,
        &[Action::Predict],
        |_| {},
    )
    .await;

    // The published version (1, the first) by default, equal to the ML core's answer.
    let response = call(&gateway, Some(&key), "review-rating", &items(&TEXTS)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "review-rating");
    assert_eq!(body["version"], 1);
    let v1 = core_predictions(&app, ada.org_id, model, 1, &TEXTS).await;
    assert_same_predictions(&body["predictions"], &v1);

    // `name@version`, and the `text` shorthand.
    let response = call(
        &gateway,
        Some(&key),
        "review-rating@1",
        &json!({ "text": TEXTS[1] }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 1);
    assert_same_predictions(&body["predictions"], &json!([v1[1].clone()]));

    // A version that does not exist, and a model that does not exist.
    assert_error(
        call(&gateway, Some(&key), "review-rating@2", &items(&TEXTS)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        call(&gateway, Some(&key), "no-such-model", &items(&TEXTS)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Limits, each named.
    let many: Vec<&str> = std::iter::repeat_n(TEXTS[0], 65).collect();
    let body = assert_error(
        call(&gateway, Some(&key), "review-rating", &items(&many)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("64 items"),
        "{body}"
    );
    let long = "a".repeat(10_001);
    let body = assert_error(
        call(
            &gateway,
            Some(&key),
            "review-rating",
            &items(&[TEXTS[0], &long]),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(body["error"]["field"], "inputs[1].review");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10000 characters"),
        "{body}"
    );
    let body = assert_error(
        call(
            &gateway,
            Some(&key),
            "review-rating",
            &json!({ "inputs": [{ "text": "x" }] }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
    )
    .await;
    assert_eq!(body["error"]["field"], "inputs[0].text");
    let huge = "b".repeat(1024 * 1024);
    let body = assert_error(
        call(
            &gateway,
            Some(&key),
            "review-rating",
            &json!({ "text": huge }),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1048576 bytes"),
        "{body}"
    );

    // A second version trained while the gateway runs: served by name@2 at once, and by
    // default once published — no restart.
    let job = submit(&app, &ada, classifier(2), dataset).await;
    assert_eq!(until_final(&app, job, 10).await, JobState::Succeeded);
    let v2 = core_predictions(&app, ada.org_id, model, 2, &TEXTS).await;
    let response = call(&gateway, Some(&key), "review-rating@2", &items(&TEXTS)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_same_predictions(&body["predictions"], &v2);
    let body: Value = call(&gateway, Some(&key), "review-rating", &items(&TEXTS))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["version"], 1, "not published yet");
    models::publish(&app.pool, OrgId(ada.org_id), model, 2)
        .await
        .unwrap();
    let response = call(&gateway, Some(&key), "review-rating", &items(&TEXTS)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_same_predictions(&body["predictions"], &v2);
    // Version 1 is still served by name, from the same shared base.
    let body: Value = call(&gateway, Some(&key), "review-rating@1", &items(&TEXTS))
        .await
        .json()
        .await
        .unwrap();
    assert_same_predictions(&body["predictions"], &v1);

    // Another organization's key cannot reach this model, even by its exact name.
    let bob = app.sign_up("bob@example.com").await;
    assert_ne!(bob.org_id, ada.org_id);
    let (_, bob_key) = new_key(
        &app,
        bob.org_id,
        bob.user_id,
        None,
        &[Action::Predict],
        |_| {},
    )
    .await;
    assert_error(
        call(&gateway, Some(&bob_key), "review-rating", &items(&TEXTS)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // A key restricted to another model of the same organization: 404 as well.
    let other: Uuid = sqlx::query_scalar(
        "INSERT INTO models (id, org_id, name) VALUES ($1, $2, 'other') RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(ada.org_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let (_, scoped) = new_key(
        &app,
        ada.org_id,
        ada.user_id,
        Some(vec![other]),
        &[Action::Predict],
        |_| {},
    )
    .await;
    assert_error(
        call(&gateway, Some(&scoped), "review-rating", &items(&TEXTS)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // A key for this very model but without the predict action: 403.
    let (_, embed_only) = new_key(
        &app,
        ada.org_id,
        ada.user_id,
        Some(vec![model]),
        &[Action::Embed],
        |_| {},
    )
    .await;
    assert_error(
        call(&gateway, Some(&embed_only), "review-rating", &items(&TEXTS)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // Calls are metered and audited (written off the request path: wait for them).
    let mut audited = 0i64;
    for _ in 0..100 {
        audited = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE key_id = $1")
            .bind(key_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if audited >= 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(audited, 12);
    let (requests, items_, errors): (i64, i64, i64) = sqlx::query_as(
        "SELECT sum(requests)::bigint, sum(items)::bigint, sum(errors)::bigint
         FROM api_key_usage WHERE key_id = $1",
    )
    .bind(key_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((requests, errors), (12, 6));
    // Items answered: 3 + 1 (v1), 3 (v2 by name), 3 (v1 by default), 3 (v2 published),
    // 3 (v1 by name); refused calls count none.
    assert_eq!(items_, 16);
    let bodies: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE key_id = $1 AND request_body IS NOT NULL",
    )
    .bind(key_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        bodies, 0,
        "request bodies are not kept unless the organization asks"
    );

    // A gateway whose cache holds one version at a time: versions are evicted and loaded
    // again from the store, answering the same.
    let mut small = app.settings.clone();
    small.gateway.cache_bytes = 1;
    let tight = tailor_gateway::Application::build(small).await.unwrap();
    let tight_address = format!("http://127.0.0.1:{}", tight.port());
    tokio::spawn(tight.run_until_stopped());
    for (name, want) in [
        ("review-rating@1", &v1),
        ("review-rating@2", &v2),
        ("review-rating@1", &v1),
    ] {
        let response = call(&tight_address, Some(&key), name, &items(&TEXTS)).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_same_predictions(&body["predictions"], want);
    }
    // Version 2 (evicted) changed in the store: refused against its manifest, not served.
    let prefix: String = sqlx::query_scalar(
        "SELECT object_prefix FROM model_versions WHERE model_id = $1 AND version = 2",
    )
    .bind(model)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let heads = app
        .settings
        .object_store
        .local_root
        .join(&prefix)
        .join("heads.json");
    let mut bytes = std::fs::read(&heads).unwrap();
    bytes.push(b' ');
    std::fs::write(&heads, bytes).unwrap();
    assert_error(
        call(
            &tight_address,
            Some(&key),
            "review-rating@2",
            &items(&TEXTS),
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "model_unavailable",
    )
    .await;

    delete_queues(&app.settings).await;
}

#[tokio::test]
async fn bad_keys_get_401s_a_busy_key_429_and_the_api_is_described() {
    let app = common::spawn_app().await;
    let ada = app.sign_up("ada@example.com").await;
    let gateway = spawn_gateway(&app).await;
    let body = json!({ "text": "hello" });

    // No key, not a key, a mistyped key, a key that was never made.
    assert_error(
        call(&gateway, None, "m", &body).await,
        StatusCode::UNAUTHORIZED,
        "key_malformed",
    )
    .await;
    assert_error(
        call(&gateway, Some("sk-not-a-tailor-key"), "m", &body).await,
        StatusCode::UNAUTHORIZED,
        "key_malformed",
    )
    .await;
    let (_, key) = new_key(
        &app,
        ada.org_id,
        ada.user_id,
        None,
        &[Action::Predict],
        |_| {},
    )
    .await;
    let mut typo: Vec<char> = key.chars().collect();
    typo[10] = if typo[10] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    assert_error(
        call(&gateway, Some(&typo), "m", &body).await,
        StatusCode::UNAUTHORIZED,
        "key_bad_checksum",
    )
    .await;
    let (_, unknown) = ApiKey::generate();
    assert_error(
        call(&gateway, Some(&unknown), "m", &body).await,
        StatusCode::UNAUTHORIZED,
        "key_unknown",
    )
    .await;

    // A valid key passes authentication (the model is what is missing).
    assert_error(
        call(&gateway, Some(&key), "m", &body).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Expired.
    let (_, expired) = new_key(
        &app,
        ada.org_id,
        ada.user_id,
        None,
        &[Action::Predict],
        |k| {
            k.expires_at = Some(Utc::now() - chrono::Duration::minutes(1));
        },
    )
    .await;
    assert_error(
        call(&gateway, Some(&expired), "m", &body).await,
        StatusCode::UNAUTHORIZED,
        "key_expired",
    )
    .await;

    // Revoked after use: refused within the grant cache's few seconds.
    let (revoked_id, revoked) = new_key(
        &app,
        ada.org_id,
        ada.user_id,
        None,
        &[Action::Predict],
        |_| {},
    )
    .await;
    assert_eq!(
        call(&gateway, Some(&revoked), "m", &body).await.status(),
        StatusCode::NOT_FOUND
    );
    api_keys::revoke(&app.pool, OrgId(ada.org_id), revoked_id)
        .await
        .unwrap();
    let mut status = StatusCode::NOT_FOUND;
    for _ in 0..100 {
        let response = call(&gateway, Some(&revoked), "m", &body).await;
        status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "key_revoked");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a revoked key stays refused"
    );

    // Rate limit: 2 a minute, the third answers 429 with Retry-After.
    let (_, limited) = new_key(
        &app,
        ada.org_id,
        ada.user_id,
        None,
        &[Action::Predict],
        |k| {
            k.rate_limit_per_minute = Some(2);
        },
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            call(&gateway, Some(&limited), "m", &body).await.status(),
            StatusCode::NOT_FOUND
        );
    }
    let response = call(&gateway, Some(&limited), "m", &body).await;
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    // The OpenAPI description parses and lists the routes.
    let response = reqwest::get(format!("{gateway}/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let spec: Value = response.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    for path in [
        "/v1/models/{model}/predict",
        "/v1/openapi.json",
        "/healthz",
        "/readyz",
    ] {
        assert!(spec["paths"].get(path).is_some(), "{path}");
    }
    assert!(spec["paths"]["/v1/models/{model}/predict"]["post"]["responses"]["429"].is_object());

    // Unknown routes answer in the same error shape.
    let response = reqwest::get(format!("{gateway}/v1/nothing")).await.unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_embeds_like_the_ml_core_for_keys_with_the_embed_action() {
    let app = spawn_worker_app().await;
    let ada = app.sign_up("ada@example.com").await;
    let dataset = upload_dataset(&app, &ada, "drug-reviews", reviews_jsonl(4)).await;
    let job = submit(&app, &ada, classifier(1), dataset).await;
    assert_eq!(until_final(&app, job, 10).await, JobState::Succeeded);
    let model = model_id(&app, ada.org_id).await;
    let gateway = spawn_gateway(&app).await;
    let embed = |key: String, model: &'static str, body: Value| {
        let gateway = gateway.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{gateway}/v1/models/{model}/embed"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let (key_id, key) = new_key(
        &app,
        ada.org_id,
        ada.user_id,
        None,
        &[Action::Embed],
        |_| {},
    )
    .await;

    // The same vectors as the ML core's for the version (loaded alone, adapters merged).
    let response = embed(key.clone(), "review-rating@1", items(&TEXTS)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (&body["model"], &body["version"], &body["dimensions"]),
        (&json!("review-rating"), &json!(1), &json!(384))
    );
    let store = storage::build(&app.settings.object_store).unwrap();
    let version = models::find_version(&app.pool, OrgId(ada.org_id), model, 1)
        .await
        .unwrap()
        .unwrap();
    let files = models::read_verified(&store, &version, |_| true)
        .await
        .unwrap();
    let assets = app.settings.jobs.assets_dir.clone();
    let want = tokio::task::spawn_blocking(move || {
        TunedModel::load(files, &assets)
            .unwrap()
            .embed_texts(&TEXTS, TEXTS.len())
            .unwrap()
    })
    .await
    .unwrap();
    let got = body["embeddings"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let g = g.as_array().unwrap();
        assert_eq!(g.len(), 384);
        for (g, w) in g.iter().zip(w) {
            assert!((g.as_f64().unwrap() - *w as f64).abs() < 1e-5, "{g} vs {w}");
        }
    }
    // `text` for a one-input model, the published version by default.
    let body: Value = embed(key.clone(), "review-rating", json!({ "text": TEXTS[1] }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["embeddings"].as_array().unwrap().len(), 1);
    assert_eq!(body["version"], 1);

    // A key without the embed action (predict only, or generate) gets 403.
    for actions in [&[Action::Predict][..], &[Action::Generate]] {
        let (_, other) = new_key(&app, ada.org_id, ada.user_id, None, actions, |_| {}).await;
        assert_error(
            embed(other, "review-rating", items(&TEXTS)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }

    // Embed calls are metered and audited like predictions.
    let mut audited = 0i64;
    for _ in 0..100 {
        audited = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE key_id = $1")
            .bind(key_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if audited >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(audited, 2);
    let items_: i64 =
        sqlx::query_scalar("SELECT sum(items)::bigint FROM api_key_usage WHERE key_id = $1")
            .bind(key_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(items_, 4);
}
