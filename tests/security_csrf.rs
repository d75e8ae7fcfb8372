//! CSRF, generated from the route table: every route of the portal that changes state
//! (any method but GET) is called four ways a hostile page could manage — without the CSRF
//! token, with a wrong one, with the right one but from another site's `Origin`, and with
//! `Sec-Fetch-Site: cross-site` — and each is refused with 403; then the same request as
//! the portal's own page sends it (token, same origin) works. A route missing from
//! [`prepare`] fails the test.

mod common;
mod security_support;

use common::{Auth, PASSWORD, Session, TestApp, set_cookie, spawn_app_with};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use security_support::{CLAUSES, Org, blueprint, fill, portal_routes};
use serde_json::{Value, json};
use tailor_core::OrgId;
use uuid::Uuid;

const EVIL: &str = "https://evil.example";

/// What a request sends besides its credentials.
#[derive(Clone)]
enum Body {
    Json(Value),
    Csv,
    /// Form fields; `csrf_token` is added (or not) by the caller.
    Form(Vec<(String, String)>),
}

/// Who sends it: a signed-in browser, or an anonymous one (sign-in and sign-up), whose
/// forms carry the double-submit token of the pre-session cookie.
#[derive(Clone)]
enum Who {
    Browser(Session),
    Anonymous,
}

#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    body: Body,
    who: Who,
}

/// How a cross-site page might try it, or the portal's own page.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Attempt {
    NoToken,
    WrongToken,
    ForeignOrigin,
    CrossSiteFetch,
    OwnPage,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

fn form(fields: &[(&str, &str)]) -> Body {
    Body::Form(
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

async fn ok_json(response: Response, what: &str) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{what}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A fresh member of `org`: (their session, their `org_members` id).
async fn fresh_member(app: &TestApp, org: &Org) -> (Session, Uuid) {
    let email = format!("{}@example.com", unique("member"));
    let invitation = ok_json(app.invite(&org.owner, &email, "member").await, "invite").await;
    let session = app.sign_up(&email).await;
    let token = invitation["token"].as_str().unwrap();
    ok_json(app.accept(&session, token).await, "accept").await;
    let members = ok_json(
        app.get("/api/v1/members", &Auth::Session(&org.owner)).await,
        "members",
    )
    .await;
    let id = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == json!(session.user_id))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (session, id)
}

/// A pending invitation of `org` for a new user: (that user's session, the link token).
async fn fresh_invitation(app: &TestApp, org: &Org) -> (Session, String) {
    let email = format!("{}@example.com", unique("invitee"));
    let invitation = ok_json(app.invite(&org.owner, &email, "viewer").await, "invite").await;
    let session = app.sign_up(&email).await;
    (session, invitation["token"].as_str().unwrap().to_owned())
}

async fn fresh_blueprint(app: &TestApp, org: &Org) -> Uuid {
    let body = ok_json(
        app.post(
            "/api/v1/blueprints",
            &Auth::Session(&org.owner),
            &json!({ "spec": blueprint(&unique("bp")), "dataset_version_id": org.dataset_version_id }),
        )
        .await,
        "blueprint",
    )
    .await;
    body["id"].as_str().unwrap().parse().unwrap()
}

/// A queued job; cancelled at once when `cancelled`.
async fn fresh_job(app: &TestApp, org: &Org, cancelled: bool) -> Uuid {
    let auth = Auth::Session(&org.owner);
    let body = ok_json(
        app.post(
            "/api/v1/jobs",
            &auth,
            &json!({ "blueprint_id": org.blueprint_id, "dataset_version_id": org.dataset_version_id }),
        )
        .await,
        "job",
    )
    .await;
    let id: Uuid = body["id"].as_str().unwrap().parse().unwrap();
    if cancelled {
        let cancelled = ok_json(
            app.post(&format!("/api/v1/jobs/{id}/cancel"), &auth, &json!({}))
                .await,
            "cancel",
        )
        .await;
        assert_eq!(cancelled["state"], "cancelled");
    }
    id
}

/// A model of `org` with `versions` ready versions, none published.
async fn fresh_model(app: &TestApp, org: &Org, versions: i32) -> Uuid {
    let model = Uuid::now_v7();
    sqlx::query("INSERT INTO models (id, org_id, name) VALUES ($1, $2, $3)")
        .bind(model)
        .bind(org.org_id())
        .bind(unique("model"))
        .execute(&app.pool)
        .await
        .unwrap();
    for n in 1..=versions {
        let job = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO jobs (id, org_id, model_id, blueprint, dataset_version_id, state)
             VALUES ($1, $2, $3, '{}', $4, 'succeeded')",
        )
        .bind(job)
        .bind(org.org_id())
        .bind(model)
        .bind(org.dataset_version_id)
        .execute(&app.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO model_versions (id, org_id, model_id, version, job_id, object_prefix,
                 manifest_sha256, metrics, blueprint, dataset_version_id, dataset_sha256,
                 base_checkpoints)
             VALUES ($1, $2, $3, $4, $5, 'p', 'x', '{}', '{}', $6, 'x', '{}')",
        )
        .bind(Uuid::now_v7())
        .bind(org.org_id())
        .bind(model)
        .bind(n)
        .bind(job)
        .bind(org.dataset_version_id)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    model
}

async fn publish(app: &TestApp, org: &Org, model: Uuid, version: i32) {
    tailor_core::models::publish(&app.pool, OrgId(org.org_id()), model, version)
        .await
        .unwrap();
}

async fn fresh_key(app: &TestApp, org: &Org) -> Uuid {
    let body = ok_json(
        app.post(
            "/api/v1/api-keys",
            &Auth::Session(&org.owner),
            &json!({ "name": unique("key"), "models": "all", "actions": ["predict"] }),
        )
        .await,
        "key",
    )
    .await;
    body["api_key"]["id"].as_str().unwrap().parse().unwrap()
}

/// A request to `route` that the portal's own page would send and that succeeds, with
/// whatever it acts on made fresh (so that each route is tried on something of its own).
async fn prepare(app: &TestApp, org: &Org, method: &str, route: &str) -> Call {
    let owner = Who::Browser(org.owner.clone());
    let mut values = org.placeholders(route);
    let mut path_suffix = String::new();
    let spec = |name: &str| json!({ "spec": blueprint(name), "dataset_version_id": org.dataset_version_id });
    let (who, body) = match (method, route) {
        ("POST", "/api/v1/signup") => (
            Who::Anonymous,
            Body::Json(
                json!({ "email": format!("{}@example.com", unique("new")), "password": PASSWORD }),
            ),
        ),
        ("POST", "/signup") => (
            Who::Anonymous,
            form(&[
                ("email", &format!("{}@example.com", unique("new"))),
                ("password", PASSWORD),
            ]),
        ),
        ("POST", "/api/v1/signin") => (
            Who::Anonymous,
            Body::Json(json!({ "email": org.owner.email, "password": PASSWORD })),
        ),
        ("POST", "/signin") => (
            Who::Anonymous,
            form(&[("email", &org.owner.email), ("password", PASSWORD)]),
        ),
        ("POST", "/api/v1/signout") => (
            Who::Browser(app.sign_in(&org.owner.email, PASSWORD).await),
            Body::Json(json!({})),
        ),
        ("POST", "/signout") => (
            Who::Browser(app.sign_in(&org.owner.email, PASSWORD).await),
            form(&[]),
        ),
        ("POST", "/api/v1/orgs") => (owner, Body::Json(json!({ "name": unique("org") }))),
        ("POST", "/orgs") => (owner, form(&[("name", &unique("org"))])),
        ("POST", "/api/v1/orgs/{org_id}/switch") => (owner, Body::Json(json!({}))),
        ("POST", "/orgs/switch") => (owner, form(&[("org_id", &org.org_id().to_string())])),
        ("PATCH", "/api/v1/members/{id}") => {
            let (_, id) = fresh_member(app, org).await;
            values.insert("id", id.to_string());
            (owner, Body::Json(json!({ "role": "viewer" })))
        }
        ("DELETE", "/api/v1/members/{id}") => {
            let (_, id) = fresh_member(app, org).await;
            values.insert("id", id.to_string());
            (owner, Body::Json(json!({})))
        }
        ("POST", "/api/v1/invitations") => (
            owner,
            Body::Json(
                json!({ "email": format!("{}@example.com", unique("i")), "role": "member" }),
            ),
        ),
        ("POST", "/invitations") => (
            owner,
            form(&[
                ("email", &format!("{}@example.com", unique("i"))),
                ("role", "member"),
            ]),
        ),
        ("DELETE", "/api/v1/invitations/{id}") => {
            let invitation = ok_json(
                app.invite(
                    &org.owner,
                    &format!("{}@example.com", unique("d")),
                    "viewer",
                )
                .await,
                "invite",
            )
            .await;
            values.insert(
                "id",
                invitation["invitation"]["id"].as_str().unwrap().into(),
            );
            (owner, Body::Json(json!({})))
        }
        ("POST", "/api/v1/invitations/accept") => {
            let (invitee, token) = fresh_invitation(app, org).await;
            (Who::Browser(invitee), Body::Json(json!({ "token": token })))
        }
        ("POST", "/invitations/{token}/accept") => {
            let (invitee, token) = fresh_invitation(app, org).await;
            values.insert("token", token);
            (Who::Browser(invitee), form(&[]))
        }
        ("POST", "/api/v1/tokens") => (owner, Body::Json(json!({ "name": unique("t") }))),
        ("DELETE", "/api/v1/tokens/{id}") => {
            let (id, _) = app.create_token(&org.owner, &unique("t")).await;
            values.insert("id", id.to_string());
            (owner, Body::Json(json!({})))
        }
        ("POST", "/api/v1/datasets") => {
            let name = unique("data");
            path_suffix = format!("?name={name}&file_name={name}.csv");
            (owner, Body::Csv)
        }
        ("PATCH", "/api/v1/datasets/{id}/versions/{version}/schema") => (
            owner,
            Body::Json(json!({ "columns": [{ "name": "clause_type", "type": "text" }] })),
        ),
        ("POST", "/api/v1/blueprints/validate") => (owner, Body::Json(spec("check"))),
        ("POST", "/api/v1/blueprints") => (owner, Body::Json(spec(&unique("bp")))),
        ("PUT", "/api/v1/blueprints/{id}") => (owner, Body::Json(spec(&unique("bp")))),
        ("DELETE", "/api/v1/blueprints/{id}") => {
            values.insert("id", fresh_blueprint(app, org).await.to_string());
            (owner, Body::Json(json!({})))
        }
        ("POST", "/blueprints/{id}/delete") => {
            values.insert("id", fresh_blueprint(app, org).await.to_string());
            (owner, form(&[]))
        }
        ("POST", "/api/v1/jobs") => (
            owner,
            Body::Json(
                json!({ "blueprint_id": org.blueprint_id, "dataset_version_id": org.dataset_version_id }),
            ),
        ),
        ("POST", "/jobs") => (
            owner,
            form(&[
                ("blueprint_id", &org.blueprint_id.to_string()),
                ("dataset_version_id", &org.dataset_version_id.to_string()),
                ("idempotency_key", &unique("click")),
            ]),
        ),
        ("POST", "/api/v1/jobs/{id}/cancel") | ("POST", "/jobs/{id}/cancel") => {
            values.insert("id", fresh_job(app, org, false).await.to_string());
            (
                owner,
                if route.starts_with("/api/") {
                    Body::Json(json!({}))
                } else {
                    form(&[])
                },
            )
        }
        ("POST", "/api/v1/jobs/{id}/retry") | ("POST", "/jobs/{id}/retry") => {
            values.insert("id", fresh_job(app, org, true).await.to_string());
            (
                owner,
                if route.starts_with("/api/") {
                    Body::Json(json!({}))
                } else {
                    form(&[])
                },
            )
        }
        ("POST", "/api/v1/models/{id}/versions/{version}/publish")
        | ("POST", "/models/{id}/versions/{version}/publish") => {
            values.insert("id", fresh_model(app, org, 1).await.to_string());
            (
                owner,
                if route.starts_with("/api/") {
                    Body::Json(json!({}))
                } else {
                    form(&[])
                },
            )
        }
        ("POST", "/api/v1/models/{id}/versions/{version}/archive")
        | ("POST", "/models/{id}/versions/{version}/archive") => {
            let model = fresh_model(app, org, 2).await;
            publish(app, org, model, 1).await;
            values.insert("id", model.to_string());
            values.insert("version", "2".into());
            (
                owner,
                if route.starts_with("/api/") {
                    Body::Json(json!({}))
                } else {
                    form(&[])
                },
            )
        }
        ("POST", "/api/v1/models/{id}/rollback") | ("POST", "/models/{id}/rollback") => {
            let model = fresh_model(app, org, 2).await;
            publish(app, org, model, 1).await;
            publish(app, org, model, 2).await;
            values.insert("id", model.to_string());
            (
                owner,
                if route.starts_with("/api/") {
                    Body::Json(json!({}))
                } else {
                    form(&[])
                },
            )
        }
        ("POST", "/api/v1/api-keys") => (
            owner,
            Body::Json(json!({ "name": unique("key"), "models": "all", "actions": ["predict"] })),
        ),
        ("POST", "/api-keys") => (
            owner,
            form(&[
                ("name", &unique("key")),
                ("models", "all"),
                ("action:predict", "on"),
            ]),
        ),
        ("POST", "/api/v1/api-keys/{id}/revoke") | ("POST", "/api-keys/{id}/revoke") => {
            values.insert("id", fresh_key(app, org).await.to_string());
            (
                owner,
                if route.starts_with("/api/") {
                    Body::Json(json!({}))
                } else {
                    form(&[])
                },
            )
        }
        ("POST", "/api/v1/audit-log/settings") => {
            (owner, Body::Json(json!({ "audit_request_bodies": true })))
        }
        ("POST", "/audit-log/settings") => (owner, form(&[("audit_request_bodies", "on")])),
        _ => panic!(
            "{method} {route} changes state but tests/security_csrf.rs has no case for it: \
             add one to prepare()"
        ),
    };
    Call {
        method: method.parse().unwrap(),
        path: format!("{}{path_suffix}", fill(route, &values)),
        body,
        who,
    }
}

/// The pre-session form token: `(cookie header, token)` from a fresh sign-in page.
async fn pre_session_token(app: &TestApp) -> (String, String) {
    let page = app.get("/signin", &Auth::None).await;
    let cookie = set_cookie(&page, "__Host-tailor_csrf").expect("a form token cookie");
    let html = page.text().await.unwrap();
    let token = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (cookie, token)
}

async fn send(app: &TestApp, call: &Call, attempt: Attempt) -> Response {
    let own_origin = app.address.clone();
    let mut request: RequestBuilder = app.client.request(call.method.clone(), app.url(&call.path));
    // The token the form or script would send, and the cookies the browser attaches.
    let (cookie, token) = match &call.who {
        Who::Browser(s) => (s.cookie.clone(), s.csrf.clone()),
        Who::Anonymous => pre_session_token(app).await,
    };
    let token = match attempt {
        Attempt::NoToken => None,
        Attempt::WrongToken => Some("not-the-token".to_owned()),
        _ => Some(token),
    };
    request = request.header(header::COOKIE, cookie);
    let (origin, site) = match attempt {
        Attempt::ForeignOrigin => (EVIL.to_owned(), None),
        Attempt::CrossSiteFetch => (own_origin.clone(), Some("cross-site")),
        _ => (own_origin.clone(), Some("same-origin")),
    };
    request = request.header(header::ORIGIN, origin);
    if let Some(site) = site {
        request = request.header("Sec-Fetch-Site", site);
    }
    match &call.body {
        Body::Json(v) => {
            if let (Some(t), Who::Browser(_)) = (&token, &call.who) {
                request = request.header("X-CSRF-Token", t);
            }
            request = request.json(v);
        }
        Body::Csv => {
            if let Some(t) = &token {
                request = request.header("X-CSRF-Token", t);
            }
            request = request.body(CLAUSES);
        }
        Body::Form(fields) => {
            let mut fields = fields.clone();
            if let Some(t) = token {
                fields.push(("csrf_token".into(), t));
            }
            request = request.form(&fields);
        }
    }
    request.send().await.unwrap()
}

/// A 2xx, or the redirect of a form that went through (to the sign-in page only when
/// the form was the sign-out).
fn worked(response: &Response, call: &Call) -> bool {
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let signing_out = call.path == "/signout";
    status.is_success()
        || (status == StatusCode::SEE_OTHER && (location == "/signin") == signing_out)
}

#[tokio::test]
async fn every_state_change_is_refused_cross_site_and_works_from_the_portal() {
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let app = spawn_app_with(move |s| {
        s.rabbitmq.queue_prefix = prefix;
        s.jobs.relay_enabled = false;
    })
    .await;
    let org = Org::create(&app, "alpha").await;
    let mut routes = 0;
    for (method, route) in portal_routes() {
        if method == "GET" {
            continue;
        }
        let call = prepare(&app, &org, &method, &route).await;
        let what = format!("{method} {}", call.path);
        for attempt in [
            Attempt::NoToken,
            Attempt::WrongToken,
            Attempt::ForeignOrigin,
            Attempt::CrossSiteFetch,
        ] {
            // Sign-in and sign-up over JSON have no session and so no token: the JSON
            // content type (which a cross-site form cannot send) and the origin checks
            // guard them.
            let tokenless =
                matches!(call.who, Who::Anonymous) && matches!(call.body, Body::Json(_));
            if tokenless && matches!(attempt, Attempt::NoToken | Attempt::WrongToken) {
                continue;
            }
            let response = send(&app, &call, attempt).await;
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{what} {attempt:?} was not refused: {body}"
            );
        }
        let response = send(&app, &call, Attempt::OwnPage).await;
        let status = response.status();
        let ok = worked(&response, &call);
        let body = response.text().await.unwrap();
        assert!(
            ok,
            "{what} from the portal's own page did not work: {status} {body}"
        );
        if call.path.ends_with("/signout")
            && let Who::Browser(session) = &call.who
        {
            let me = app.me(&Auth::Session(session)).await;
            assert_eq!(me.status(), StatusCode::UNAUTHORIZED, "{what} signed out");
        }
        routes += 1;
    }
    assert!(routes >= 40, "only {routes} state-changing routes");

    // Bearer calls are exempt: a script's personal API token, whatever the origin header.
    let scripted = app
        .request(Method::POST, "/api/v1/orgs", &Auth::Bearer(&org.token))
        .header(header::ORIGIN, EVIL)
        .header("Sec-Fetch-Site", "cross-site")
        .json(&json!({ "name": "Scripted" }))
        .send()
        .await
        .unwrap();
    assert_eq!(scripted.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_session_cookie_is_host_only_http_only_and_same_site() {
    let app = spawn_app_with(|_| {}).await;
    let response = app
        .sign_up_raw(&json!({ "email": "c@example.com", "password": PASSWORD }))
        .await;
    let cookie = common::set_cookie_header(&response, common::SESSION_COOKIE).unwrap();
    assert!(cookie.starts_with("__Host-"), "{cookie}");
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    let page = app.get("/signin", &Auth::None).await;
    let csrf = common::set_cookie_header(&page, "__Host-tailor_csrf").unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(csrf.contains(attribute), "{csrf} lacks {attribute}");
    }
}
