//! API keys: the key format and its checksum (checked before any database query), keys
//! shown once with only a hash stored, revocation and expiry, scopes, tenancy, roles,
//! usage (chart page and CSV) and the audit log. Real Postgres, the real portal.

mod common;

use std::time::Duration;

use common::{Auth, Session, TestApp, assert_error, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tailor_core::api_keys::{self, Action, ApiKey, KeyError};
use uuid::Uuid;

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

/// Creates a key through the JSON API; returns (id, key).
async fn create_key(app: &TestApp, s: &Session, body: Value) -> (Uuid, String) {
    let response = app.post("/api/v1/api-keys", &Auth::Session(s), &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = json_of(response).await;
    (
        body["api_key"]["id"].as_str().unwrap().parse().unwrap(),
        body["key"].as_str().unwrap().to_owned(),
    )
}

/// A model of `org` with one ready version (rows only: enough for scopes and usage).
async fn model_with_version(app: &TestApp, org: Uuid, name: &str) -> (Uuid, Uuid) {
    let pool = &app.pool;
    let dataset = Uuid::now_v7();
    sqlx::query("INSERT INTO datasets (id, org_id, name) VALUES ($1, $2, $3)")
        .bind(dataset)
        .bind(org)
        .bind(format!("{name}-data"))
        .execute(pool)
        .await
        .unwrap();
    let dataset_version = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO dataset_versions (id, org_id, dataset_id, version, object_key, format,
             sha256, bytes, row_count, schema, profile, warnings)
         VALUES ($1, $2, $3, 1, 'k', 'csv', 'x', 1, 1, '{}', '{}', '[]')",
    )
    .bind(dataset_version)
    .bind(org)
    .bind(dataset)
    .execute(pool)
    .await
    .unwrap();
    let model = Uuid::now_v7();
    sqlx::query("INSERT INTO models (id, org_id, name, published_version) VALUES ($1, $2, $3, 1)")
        .bind(model)
        .bind(org)
        .bind(name)
        .execute(pool)
        .await
        .unwrap();
    let job = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, org_id, model_id, blueprint, dataset_version_id, state)
         VALUES ($1, $2, $3, '{}', $4, 'succeeded')",
    )
    .bind(job)
    .bind(org)
    .bind(model)
    .bind(dataset_version)
    .execute(pool)
    .await
    .unwrap();
    let version = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO model_versions (id, org_id, model_id, version, job_id, object_prefix,
             manifest_sha256, metrics, blueprint, dataset_version_id, dataset_sha256,
             base_checkpoints)
         VALUES ($1, $2, $3, 1, $4, 'p', 'x', '{}', '{}', $5, 'x', '{}')",
    )
    .bind(version)
    .bind(org)
    .bind(model)
    .bind(job)
    .bind(dataset_version)
    .execute(pool)
    .await
    .unwrap();
    (model, version)
}

/// Signs up `email` and makes them `role` in `owner`'s organization.
async fn join(app: &TestApp, owner: &Session, email: &str, role: &str) -> Session {
    let invitation = json_of(app.invite(owner, email, role).await).await;
    let session = app.sign_up(email).await;
    let token = invitation["token"].as_str().unwrap();
    assert_eq!(app.accept(&session, token).await.status(), StatusCode::OK);
    Session {
        org_id: owner.org_id,
        ..session
    }
}

#[tokio::test]
async fn a_mistyped_key_is_refused_without_a_database_query() {
    let app = spawn_app().await;
    // A pool that can never run a query: any lookup fails with a database error.
    let closed = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy(&common_url(&app))
        .unwrap();
    closed.close().await;

    let (_, key) = ApiKey::generate();
    let last = key.chars().last().unwrap();
    let typo = format!(
        "{}{}",
        &key[..key.len() - 1],
        if last == 'a' { 'b' } else { 'a' }
    );
    assert!(matches!(
        api_keys::authenticate(&closed, &typo).await,
        Err(KeyError::BadChecksum)
    ));
    let swapped = {
        let mut chars: Vec<char> = key.chars().collect();
        let i = chars[5..].iter().position(|c| *c != chars[4]).unwrap() + 5;
        chars.swap(4, i);
        chars.into_iter().collect::<String>()
    };
    assert!(matches!(
        api_keys::authenticate(&closed, &swapped).await,
        Err(KeyError::BadChecksum)
    ));
    for malformed in ["", "Bearer", "tlr_short", &key[..20], &format!("{key}0")] {
        assert!(matches!(
            api_keys::authenticate(&closed, malformed).await,
            Err(KeyError::Malformed)
        ));
    }
    // The well-formed key does reach the database (here: the closed pool), which proves
    // that the two refusals above were decided before any query.
    assert!(matches!(
        api_keys::authenticate(&closed, &key).await,
        Err(KeyError::Database(_))
    ));
    // And against the real database, a well-formed key that was never issued is unknown.
    assert!(matches!(
        api_keys::authenticate(&app.pool, &key).await,
        Err(KeyError::Unknown)
    ));
}

fn common_url(app: &TestApp) -> String {
    use secrecy::ExposeSecret;
    app.settings.database.url.expose_secret().to_owned()
}

#[tokio::test]
async fn a_created_key_is_shown_once_and_only_its_hash_is_stored() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@a.example").await;
    let (id, key) = create_key(
        &app,
        &owner,
        json!({ "name": "crm", "models": "all", "actions": ["predict", "embed"],
                "rate_limit_per_minute": 600 }),
    )
    .await;
    assert!(ApiKey::parse(&key).is_ok());
    let grant = api_keys::authenticate(&app.pool, &key).await.unwrap();
    assert_eq!(grant.key_id, id);
    assert_eq!(grant.org.0, owner.org_id);
    assert_eq!(grant.models, None);
    assert_eq!(grant.actions, [Action::Predict, Action::Embed]);
    assert_eq!(grant.rate_limit_per_minute, Some(600));

    // Lists, the key's own JSON and pages show the prefix, never the key.
    let list = app.get("/api/v1/api-keys", &Auth::Session(&owner)).await;
    assert_eq!(list.status(), StatusCode::OK);
    let list = list.text().await.unwrap();
    assert!(!list.contains(&key), "{list}");
    assert!(list.contains(&key[..12]), "{list}");
    let one = app
        .get(&format!("/api/v1/api-keys/{id}"), &Auth::Session(&owner))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !one.contains(&key) && one.contains("\"state\":\"active\""),
        "{one}"
    );
    for page in ["/api-keys".to_owned(), format!("/api-keys/{id}")] {
        let html = app.get(&page, &Auth::Session(&owner)).await;
        assert_eq!(html.status(), StatusCode::OK, "{page}");
        let html = html.text().await.unwrap();
        assert!(!html.contains(&key), "{page}");
        assert!(html.contains(&key[..12]), "{page}");
    }

    // The create form shows its key once, on the answer to the POST.
    let created = app
        .request(
            reqwest::Method::POST,
            "/api-keys",
            &Auth::SessionNoCsrf(&owner),
        )
        .form(&[
            ("csrf_token", owner.csrf.as_str()),
            ("name", "website"),
            ("models", "all"),
            ("action:predict", "on"),
            ("rate_limit_per_minute", "60"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let html = created.text().await.unwrap();
    let start = html.find("value=\"tlr_").expect("the new key on the page") + 7;
    let page_key = &html[start..start + api_keys::KEY_LEN];
    let page_grant = api_keys::authenticate(&app.pool, page_key).await.unwrap();
    assert_eq!(page_grant.actions, [Action::Predict]);
    let again = app
        .get("/api-keys", &Auth::Session(&owner))
        .await
        .text()
        .await
        .unwrap();
    assert!(!again.contains(page_key));

    // Nothing stored is the key or anything that authenticates.
    let rows: Vec<Value> = sqlx::query_scalar("SELECT to_jsonb(k) FROM api_keys k")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        for (column, value) in row.as_object().unwrap() {
            let Some(text) = value.as_str() else { continue };
            assert!(!text.contains(&key) && !text.contains(page_key), "{column}");
            assert!(
                api_keys::authenticate(&app.pool, text).await.is_err(),
                "{column} authenticates"
            );
        }
    }
    // What is stored is the SHA-256 of the key.
    let hash: String = sqlx::query_scalar("SELECT hash FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(hash, ApiKey::parse(&key).unwrap().hash());
}

#[tokio::test]
async fn revoked_and_expired_keys_are_refused() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@a.example").await;
    let (id, key) = create_key(
        &app,
        &owner,
        json!({ "name": "k", "models": "all", "actions": ["predict"] }),
    )
    .await;
    api_keys::authenticate(&app.pool, &key).await.unwrap();
    let revoked = app
        .post(
            &format!("/api/v1/api-keys/{id}/revoke"),
            &Auth::Session(&owner),
            &json!({}),
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(json_of(revoked).await["state"], "revoked");
    assert!(matches!(
        api_keys::authenticate(&app.pool, &key).await,
        Err(KeyError::Revoked)
    ));

    // The page's revoke button needs the CSRF token.
    let (id2, key2) = create_key(
        &app,
        &owner,
        json!({ "name": "k2", "models": "all", "actions": ["predict"] }),
    )
    .await;
    let path = format!("/api-keys/{id2}/revoke");
    let forged = app
        .request(reqwest::Method::POST, &path, &Auth::SessionNoCsrf(&owner))
        .form(&[("csrf_token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    api_keys::authenticate(&app.pool, &key2).await.unwrap();
    let done = app
        .request(reqwest::Method::POST, &path, &Auth::SessionNoCsrf(&owner))
        .form(&[("csrf_token", owner.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert!(matches!(
        api_keys::authenticate(&app.pool, &key2).await,
        Err(KeyError::Revoked)
    ));

    // Expiry: the API refuses a past expiry, and a key past its expiry is refused.
    let past = app
        .post(
            "/api/v1/api-keys",
            &Auth::Session(&owner),
            &json!({ "name": "old", "models": "all", "actions": ["predict"],
                     "expires_at": "2020-01-01T00:00:00Z" }),
        )
        .await;
    let body = assert_error(past, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "expires_at");
    let soon = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let (id3, key3) = create_key(
        &app,
        &owner,
        json!({ "name": "soon", "models": "all", "actions": ["predict"], "expires_at": soon }),
    )
    .await;
    let grant = api_keys::authenticate(&app.pool, &key3).await.unwrap();
    assert!(!grant.is_expired(chrono::Utc::now()));
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(id3)
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(matches!(
        api_keys::authenticate(&app.pool, &key3).await,
        Err(KeyError::Expired)
    ));
    let list = json_of(app.get("/api/v1/api-keys", &Auth::Session(&owner)).await).await;
    let states: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "revoked").count(), 2);
    assert_eq!(states.iter().filter(|s| **s == "expired").count(), 1);
}

#[tokio::test]
async fn scopes_limit_models_and_actions() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@a.example").await;
    let (m1, _) = model_with_version(&app, owner.org_id, "clauses").await;
    let (m2, _) = model_with_version(&app, owner.org_id, "triage").await;
    let (_, key) = create_key(
        &app,
        &owner,
        json!({ "name": "scoped", "models": [m1], "actions": ["predict"] }),
    )
    .await;
    let grant = api_keys::authenticate(&app.pool, &key).await.unwrap();
    assert_eq!(grant.models, Some(vec![m1]));
    assert!(grant.allows(Action::Predict, m1));
    assert!(!grant.allows(Action::Embed, m1));
    assert!(!grant.allows(Action::Generate, m1));
    assert!(!grant.allows(Action::Predict, m2));

    let (_, all) = create_key(
        &app,
        &owner,
        json!({ "name": "all", "models": "all", "actions": ["embed", "generate"] }),
    )
    .await;
    let grant = api_keys::authenticate(&app.pool, &all).await.unwrap();
    assert!(grant.allows(Action::Embed, m2) && grant.allows(Action::Generate, m1));
    assert!(!grant.allows(Action::Predict, m2));

    // Every problem of the input is named.
    let bad = app
        .post(
            "/api/v1/api-keys",
            &Auth::Session(&owner),
            &json!({ "name": "", "models": [], "actions": ["train"],
                     "rate_limit_per_minute": 0 }),
        )
        .await;
    let body = assert_error(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["name", "actions[0]", "models", "rate_limit_per_minute"]
    );

    for (models, field) in [(json!("some"), "models"), (json!([m1, "x"]), "models[1]")] {
        let bad = app
            .post(
                "/api/v1/api-keys",
                &Auth::Session(&owner),
                &json!({ "name": "n", "models": models, "actions": ["predict"] }),
            )
            .await;
        let body = assert_error(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
        assert_eq!(body["error"]["field"], field);
    }

    // The page form answers 422 with the problems beside the form, keeps what was
    // entered, and creates nothing.
    let form = app
        .request(
            reqwest::Method::POST,
            "/api-keys",
            &Auth::SessionNoCsrf(&owner),
        )
        .form(&[
            ("csrf_token", owner.csrf.as_str()),
            ("name", "partner portal"),
            ("models", "some"),
            (&format!("model:{m2}"), "on"),
            ("rate_limit_per_minute", "lots"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html = form.text().await.unwrap();
    assert!(html.contains("rate_limit_per_minute"), "names the field");
    assert!(html.contains("value=\"partner portal\""), "keeps the name");
    assert!(
        html.contains(&format!("name=\"model:{m2}\" checked")),
        "keeps the model"
    );
    assert!(!html.contains("value=\"tlr_"));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);

    // A form with models and actions ticked creates a scoped key.
    let form = app
        .request(
            reqwest::Method::POST,
            "/api-keys",
            &Auth::SessionNoCsrf(&owner),
        )
        .form(&[
            ("csrf_token", owner.csrf.as_str()),
            ("name", "partner portal"),
            ("models", "some"),
            (&format!("model:{m2}"), "on"),
            ("action:embed", "on"),
            ("expires_on", "2999-12-31"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::CREATED);
    let html = form.text().await.unwrap();
    let start = html.find("value=\"tlr_").unwrap() + 7;
    let grant = api_keys::authenticate(&app.pool, &html[start..start + api_keys::KEY_LEN])
        .await
        .unwrap();
    assert_eq!(grant.models, Some(vec![m2]));
    assert_eq!(grant.actions, [Action::Embed]);
    assert_eq!(
        grant.expires_at.unwrap().to_rfc3339(),
        "2999-12-31T23:59:59+00:00"
    );
}

#[tokio::test]
async fn another_organizations_keys_are_not_found() {
    let app = spawn_app().await;
    let alice = app.sign_up("alice@a.example").await;
    let bob = app.sign_up("bob@b.example").await;
    let (b_model, _) = model_with_version(&app, bob.org_id, "bobs").await;
    let (b_key_id, b_key) = create_key(
        &app,
        &bob,
        json!({ "name": "bob's", "models": "all", "actions": ["predict"] }),
    )
    .await;
    let a = Auth::Session(&alice);
    assert_error(
        app.get(&format!("/api/v1/api-keys/{b_key_id}"), &a).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.post(
            &format!("/api/v1/api-keys/{b_key_id}/revoke"),
            &a,
            &json!({}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.get(&format!("/api/v1/api-keys/{b_key_id}/usage.csv"), &a)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(
        app.get(&format!("/api-keys/{b_key_id}"), &a).await.status(),
        StatusCode::NOT_FOUND
    );
    let revoke_page = app
        .request(
            reqwest::Method::POST,
            &format!("/api-keys/{b_key_id}/revoke"),
            &Auth::SessionNoCsrf(&alice),
        )
        .form(&[("csrf_token", alice.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoke_page.status(), StatusCode::NOT_FOUND);
    let list = json_of(app.get("/api/v1/api-keys", &a).await).await;
    assert_eq!(list, json!([]));
    // Still alive after all that.
    api_keys::authenticate(&app.pool, &b_key).await.unwrap();

    // Alice cannot scope a key to Bob's model.
    let response = app
        .post(
            "/api/v1/api-keys",
            &a,
            &json!({ "name": "x", "models": [b_model], "actions": ["predict"] }),
        )
        .await;
    let body = assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "models[0]");
}

#[tokio::test]
async fn members_read_keys_and_viewers_see_none() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@a.example").await;
    let (id, _) = create_key(
        &app,
        &owner,
        json!({ "name": "k", "models": "all", "actions": ["predict"] }),
    )
    .await;
    let member = join(&app, &owner, "member@a.example", "member").await;
    let viewer = join(&app, &owner, "viewer@a.example", "viewer").await;
    let admin = join(&app, &owner, "admin@a.example", "admin").await;
    let new_key = json!({ "name": "n", "models": "all", "actions": ["predict"] });

    // Viewers: nothing.
    let v = Auth::Session(&viewer);
    assert_error(
        app.get("/api/v1/api-keys", &v).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        app.post("/api/v1/api-keys", &v, &new_key).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(
        app.get("/api-keys", &v).await.status(),
        StatusCode::FORBIDDEN
    );
    let dashboard = app.get("/members", &v).await.text().await.unwrap();
    assert!(!dashboard.contains("href=\"/api-keys\""));

    // Members: read, no changes, no audit log.
    let m = Auth::Session(&member);
    assert_eq!(
        json_of(app.get("/api/v1/api-keys", &m).await)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_error(
        app.post("/api/v1/api-keys", &m, &new_key).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        app.post(&format!("/api/v1/api-keys/{id}/revoke"), &m, &json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let page = app.get("/api-keys", &m).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(!page.text().await.unwrap().contains("action=\"/api-keys\""));
    assert_eq!(
        app.get(&format!("/api/v1/api-keys/{id}/usage.csv"), &m)
            .await
            .status(),
        StatusCode::OK
    );
    assert_error(
        app.get("/api/v1/audit-log", &m).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // Admins: create and read the audit log, but only owners switch request bodies on.
    let ad = Auth::Session(&admin);
    create_key(&app, &admin, new_key.clone()).await;
    assert_eq!(
        app.get("/api/v1/audit-log", &ad).await.status(),
        StatusCode::OK
    );
    assert_error(
        app.post(
            "/api/v1/audit-log/settings",
            &ad,
            &json!({ "audit_request_bodies": true }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn usage_is_charted_exported_and_calls_are_audited() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@a.example").await;
    let (model, version) = model_with_version(&app, owner.org_id, "clauses").await;
    let (id, key) = create_key(
        &app,
        &owner,
        json!({ "name": "k", "models": [model], "actions": ["predict"] }),
    )
    .await;
    let grant = api_keys::authenticate(&app.pool, &key).await.unwrap();
    let ms = Duration::from_millis;
    api_keys::record_usage(&app.pool, &grant, Some(version), 3, 120, false, ms(40))
        .await
        .unwrap();
    api_keys::record_usage(&app.pool, &grant, Some(version), 5, 200, true, ms(90))
        .await
        .unwrap();
    api_keys::record_usage(&app.pool, &grant, None, 0, 0, true, ms(1))
        .await
        .unwrap();
    api_keys::touch_last_used(&app.pool, grant.key_id)
        .await
        .unwrap();

    let csv = app
        .get(
            &format!("/api/v1/api-keys/{id}/usage.csv"),
            &Auth::Session(&owner),
        )
        .await;
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "minute,model_version_id,model_version,requests,items,tokens,errors,latency_ms_sum,latency_ms_max,latency_ms_mean"
    );
    // The calls may straddle a minute; sum per version over all rows.
    let mut with_version = [0i64; 6];
    let mut without = [0i64; 6];
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 10, "{line}");
        let target = if cells[1].is_empty() {
            assert_eq!(cells[2], "");
            &mut without
        } else {
            assert_eq!(cells[1], version.to_string());
            assert_eq!(cells[2], "clauses v1");
            &mut with_version
        };
        for (i, cell) in cells[3..9].iter().enumerate() {
            let n: i64 = cell.parse().unwrap();
            target[i] = if i == 5 {
                target[i].max(n)
            } else {
                target[i] + n
            };
        }
    }
    // requests, items, tokens, errors, latency sum, latency max
    assert_eq!(with_version, [2, 8, 320, 1, 130, 90]);
    assert_eq!(without, [1, 0, 0, 1, 1, 1]);

    // The key page draws the chart; the list shows the last use.
    let page = app
        .get(&format!("/api-keys/{id}?range=1h"), &Auth::Session(&owner))
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("<svg") && page.contains("api-keys-requests"));
    assert!(page.contains("<strong>3</strong>"), "three requests");
    let one = json_of(
        app.get(&format!("/api/v1/api-keys/{id}"), &Auth::Session(&owner))
            .await,
    )
    .await;
    assert!(one["last_used_at"].is_string(), "{one}");

    // Audit: bodies only once the owner turned them on.
    let body = json!({ "inputs": [{ "clause": "secret text" }] });
    api_keys::audit(
        &app.pool,
        &grant,
        Some(version),
        "/v1/models/clauses/predict",
        200,
        Some(&body),
    )
    .await
    .unwrap();
    let log = json_of(app.get("/api/v1/audit-log", &Auth::Session(&owner)).await).await;
    assert_eq!(log["audit_request_bodies"], false);
    let entry = &log["entries"][0];
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["key_id"], id.to_string());
    assert_eq!(entry["model_version"], "clauses v1");
    assert!(entry["request_body"].is_null());
    let stored: Option<Value> = sqlx::query_scalar("SELECT request_body FROM audit_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, None, "no body is kept while the setting is off");

    let on = app
        .post(
            "/api/v1/audit-log/settings",
            &Auth::Session(&owner),
            &json!({ "audit_request_bodies": true }),
        )
        .await;
    assert_eq!(on.status(), StatusCode::OK);
    api_keys::audit(
        &app.pool,
        &grant,
        None,
        "/v1/models/nope/predict",
        404,
        Some(&body),
    )
    .await
    .unwrap();
    let log = json_of(
        app.get("/api/v1/audit-log?limit=10", &Auth::Session(&owner))
            .await,
    )
    .await;
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["status"], 404);
    assert_eq!(entries[0]["request_body"], body);
    assert!(entries[1]["request_body"].is_null());
    let html = app
        .get("/audit-log", &Auth::Session(&owner))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("nope") && html.contains("secret text"));
}

/// key, version, requests, items, tokens, errors, latency sum, latency max
type UsageSums = (Uuid, Option<Uuid>, i64, i64, i64, i64, i64, i32);

#[tokio::test]
async fn batched_usage_audit_and_last_use_add_up() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@a.example").await;
    let (_, version) = model_with_version(&app, owner.org_id, "clauses").await;
    let (a_id, a) = create_key(
        &app,
        &owner,
        json!({ "name": "a", "models": "all", "actions": ["predict"] }),
    )
    .await;
    let (b_id, b) = create_key(
        &app,
        &owner,
        json!({ "name": "b", "models": "all", "actions": ["predict"] }),
    )
    .await;
    let a = api_keys::authenticate(&app.pool, &a).await.unwrap();
    let b = api_keys::authenticate(&app.pool, &b).await.unwrap();

    let mut batch = api_keys::UsageBatch::new();
    for i in 0..10 {
        batch.add(
            &a,
            Some(version),
            2,
            0,
            i == 0,
            Duration::from_millis(10 + i),
        );
    }
    batch.add(&a, None, 0, 0, true, Duration::from_millis(1));
    batch.add(&b, Some(version), 1, 7, false, Duration::from_millis(5));
    assert_eq!(batch.calls(), 12);
    batch.flush(&app.pool).await.unwrap();
    assert!(batch.is_empty());
    // A second flush adds to the same rows.
    batch.add(&a, Some(version), 2, 0, false, Duration::from_millis(100));
    batch.flush(&app.pool).await.unwrap();

    let sums: Vec<UsageSums> = sqlx::query_as(
        "SELECT key_id, model_version_id, sum(requests)::bigint, sum(items)::bigint,
                sum(tokens)::bigint, sum(errors)::bigint, sum(latency_ms_sum)::bigint,
                max(latency_ms_max)
         FROM api_key_usage GROUP BY 1, 2 ORDER BY 1, 2 NULLS FIRST",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut expected = vec![
        (a_id, None, 1, 0, 0, 1, 1, 1),
        (a_id, Some(version), 11, 22, 0, 1, 245, 100),
        (b_id, Some(version), 1, 1, 7, 0, 5, 5),
    ];
    expected.sort_by_key(|r| (r.0, r.1.is_some()));
    assert_eq!(sums, expected);

    let body = json!({ "inputs": ["x"] });
    let record = |grant: &api_keys::KeyGrant, status| api_keys::AuditRecord {
        org: grant.org,
        key_id: grant.key_id,
        model_version_id: Some(version),
        route: "/v1/models/clauses/predict".into(),
        status,
        at: chrono::Utc::now(),
        request_body: Some(body.clone()),
    };
    api_keys::audit_many(&app.pool, &[record(&a, 200), record(&b, 429)])
        .await
        .unwrap();
    api_keys::set_audit_request_bodies(&app.pool, a.org, true)
        .await
        .unwrap();
    api_keys::audit_many(&app.pool, &[record(&a, 200)])
        .await
        .unwrap();
    let rows: Vec<(i32, Option<Value>)> =
        sqlx::query_as("SELECT status, request_body FROM audit_log ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [(200, None), (429, None), (200, Some(body.clone()))],
        "bodies only once turned on"
    );

    api_keys::touch_last_used_many(&app.pool, &[a_id, b_id, a_id])
        .await
        .unwrap();
    let used: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(used, 2);
}
