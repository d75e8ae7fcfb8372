//! Health and readiness of portal and gateway, and the error mapping seen over HTTP.

mod common;

use common::{Auth, PASSWORD, assert_error, spawn_app, spawn_app_with, spawn_gateway};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

#[tokio::test]
async fn healthz_and_readyz_answer_200_on_portal_and_gateway() {
    let app = spawn_app().await;
    let gateway = spawn_gateway(&app).await;
    for base in [app.address.clone(), gateway] {
        let health = app
            .client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let ready = app
            .client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "{base}");
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["ready"], true);
        assert_eq!(body["checks"].as_array().unwrap().len(), 3);
    }
}

#[tokio::test]
async fn readyz_names_what_is_down() {
    // RabbitMQ on a port where nothing listens, and a database that does not exist.
    let app = spawn_app_with(|s| {
        s.rabbitmq.url = SecretString::from("amqp://guest:guest@127.0.0.1:1/%2f");
    })
    .await;
    let gateway = spawn_gateway(&app).await;
    for base in [app.address.clone(), gateway] {
        let ready = app
            .client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["down"], json!(["rabbitmq"]), "{body}");
        // The process itself is fine.
        let health = app
            .client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }

    let no_db = spawn_app_with(|s| {
        s.database.url = SecretString::from("postgres://postgres@127.0.0.1:5432/tailor_no_such_db");
        s.database.acquire_timeout_seconds = 1;
    })
    .await;
    let ready = no_db.get("/readyz", &Auth::None).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["down"], json!(["postgres"]), "{body}");
}

#[tokio::test]
async fn each_error_kind_has_its_status_and_json_shape() {
    let app = spawn_app().await;
    let user = app.sign_up("err@example.com").await;
    let session = Auth::Session(&user);

    assert_error(
        app.get("/api/v1/nothing-here", &Auth::None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get("/api/v1/me", &Auth::None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let invalid = app
        .post("/api/v1/orgs", &session, &json!({ "name": "  " }))
        .await;
    let body = assert_error(invalid, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "name");
    let conflict = app
        .sign_up_raw(&json!({ "email": "err@example.com", "password": PASSWORD }))
        .await;
    assert_error(conflict, StatusCode::CONFLICT, "conflict").await;
    let forbidden = app
        .post(
            "/api/v1/orgs",
            &Auth::SessionNoCsrf(&user),
            &json!({ "name": "x" }),
        )
        .await;
    assert_error(forbidden, StatusCode::FORBIDDEN, "forbidden").await;
    let huge = json!({ "name": "x".repeat(2 * 1024 * 1024) });
    assert_error(
        app.post("/api/v1/orgs", &session, &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    let not_json = app
        .request(reqwest::Method::POST, "/api/v1/orgs", &session)
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_error(not_json, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;

    // Break the database on purpose: a 500 that says nothing of the cause.
    sqlx::query("DROP TABLE api_tokens")
        .execute(&app.pool)
        .await
        .unwrap();
    let broken = app.get("/api/v1/tokens", &session).await;
    let body = assert_error(broken, StatusCode::INTERNAL_SERVER_ERROR, "unexpected").await;
    let text = body.to_string();
    assert!(
        !text.contains("api_tokens") && !text.contains("relation"),
        "{text}"
    );
}

#[tokio::test]
async fn every_page_script_and_style_is_served_and_nothing_else() {
    let app = spawn_app().await;
    for (file, kind) in [
        ("app.css", "text/css"),
        ("datasets.js", "application/javascript"),
        ("blueprints.js", "application/javascript"),
        ("jobs.js", "application/javascript"),
        ("models.css", "text/css"),
        ("api_keys.css", "text/css"),
    ] {
        let r = app.get(&format!("/static/{file}"), &Auth::None).await;
        assert_eq!(r.status(), StatusCode::OK, "{file}");
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with(kind), "{file}: {content_type}");
        assert!(!r.text().await.unwrap().is_empty(), "{file}");
    }
    for missing in ["nope.js", "..%2Fapp.css", "app.css.map"] {
        let r = app.get(&format!("/static/{missing}"), &Auth::None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{missing}");
    }
}
