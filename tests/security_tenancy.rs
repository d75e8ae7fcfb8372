//! Tenant isolation, generated from the route tables: organization B gets one of
//! everything (dataset, blueprint, job with its event stream, model version, API key,
//! member, invitation, personal token), and every route of the portal, the JSON API and
//! the gateway is called with organization A's session, personal token or API key on B's
//! ids. Each answers 404 — the same as an id that does not exist — while B's own calls to
//! the same reads succeed, and B's things are unchanged afterwards. Routes without an id
//! (lists, the dashboard) must not mention anything of B. A route the test does not
//! classify fails it.

mod common;
mod security_support;

use std::time::Duration;

use common::{Auth, TestApp, spawn_app_with, spawn_gateway};
use reqwest::{Method, Response, StatusCode, header};
use security_support::{Org, fill, gateway_routes, portal_routes};
use serde_json::{Value, json};
use uuid::Uuid;

/// How a route relates to tenancy.
#[derive(Debug, PartialEq)]
enum Kind {
    /// Serves no organization's data (health, assets, sign-in and sign-up).
    Public,
    /// Acts on the caller's own session or account only.
    OwnSession,
    /// Names things by id in its path: another organization's id must be a 404.
    ById,
    /// Lists or creates within the caller's organization: must not show B's things; where
    /// the body can name another organization's things, `foreign_body` does.
    OwnOrg,
    /// The invitation link: its secret token is the capability (whoever holds it may see
    /// and accept it); a token that is not one must be a 404.
    InvitationLink,
}

fn kind(method: &str, route: &str) -> Kind {
    match (method, route) {
        ("GET", "/healthz" | "/readyz" | "/static/{file}" | "/lang/{code}" | "/")
        | ("GET" | "POST", "/signin" | "/signup")
        | ("POST", "/api/v1/signin" | "/api/v1/signup") => Kind::Public,
        ("POST", "/signout" | "/api/v1/signout") => Kind::OwnSession,
        ("GET" | "POST", "/invitations/{token}" | "/invitations/{token}/accept") => {
            Kind::InvitationLink
        }
        (_, r) if r.contains('{') => Kind::ById,
        _ => Kind::OwnOrg,
    }
}

/// A body for `route` that names B's things where the route takes ids in its body.
fn foreign_body(route: &str, b: &Org) -> Option<Value> {
    Some(match route {
        "/api/v1/jobs" => {
            json!({ "blueprint_id": b.blueprint_id, "dataset_version_id": b.dataset_version_id })
        }
        "/api/v1/blueprints" | "/api/v1/blueprints/validate" => {
            json!({ "spec": security_support::blueprint("x"), "dataset_version_id": b.dataset_version_id })
        }
        "/api/v1/api-keys" => {
            json!({ "name": "x", "models": [b.model_id], "actions": ["predict"] })
        }
        "/api/v1/invitations/accept" => json!({ "token": "not-a-token" }),
        _ => return None,
    })
}

/// The form fields naming B's things for the page forms that take ids.
fn foreign_form(route: &str, b: &Org) -> Option<Vec<(String, String)>> {
    let fields = match route {
        "/jobs" => vec![
            ("blueprint_id".into(), b.blueprint_id.to_string()),
            (
                "dataset_version_id".into(),
                b.dataset_version_id.to_string(),
            ),
            ("idempotency_key".into(), "k".into()),
        ],
        "/orgs/switch" => vec![("org_id".into(), b.org_id().to_string())],
        "/api-keys" => vec![
            ("name".into(), "x".into()),
            ("models".into(), "some".into()),
            (format!("model:{}", b.model_id), "on".into()),
            ("action:predict".into(), "on".into()),
        ],
        _ => return None,
    };
    Some(fields)
}

/// Sends `method path` as `who` would from the portal (cookie, CSRF token, same origin)
/// or as a script (bearer token, `X-Tailor-Org`).
async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    auth: &Auth<'_>,
    org_header: Option<Uuid>,
    body: Option<&Value>,
    form: Option<&[(String, String)]>,
) -> Response {
    let mut request = app
        .request(method.parse().unwrap(), path, auth)
        .header(header::ORIGIN, &app.address)
        .timeout(Duration::from_secs(20));
    if let Some(org) = org_header {
        request = request.header("X-Tailor-Org", org.to_string());
    }
    if let Auth::Session(s) = auth
        && let Some(fields) = form
    {
        let mut fields = fields.to_vec();
        fields.push(("csrf_token".into(), s.csrf.clone()));
        request = request.form(&fields);
    } else if let Some(body) = body {
        request = request.json(body);
    } else if method != "GET" {
        if path.starts_with("/api/") {
            request = request.json(&json!({}));
        } else if let Auth::Session(s) = auth {
            request = request.form(&[("csrf_token", s.csrf.as_str())]);
        }
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The text of a response, or `None` for the endless job event stream.
async fn text(response: Response) -> String {
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    if is_stream {
        return String::new();
    }
    response.text().await.unwrap_or_default()
}

fn assert_no_leak(what: &str, body: &str, b: &Org) {
    assert!(!body.contains("bravo"), "{what} shows B's names: {body}");
    for id in b.ids() {
        assert!(
            !body.contains(&id.to_string()),
            "{what} shows B's id {id}: {body}"
        );
    }
}

/// A body for a request that changes B's thing, so that a missing isolation check would
/// make the request succeed rather than fail validation.
fn valid_body(method: &str, route: &str) -> Option<Value> {
    Some(match (method, route) {
        ("PATCH", "/api/v1/members/{id}") => json!({ "role": "viewer" }),
        ("PATCH", "/api/v1/datasets/{id}/versions/{version}/schema") => {
            json!({ "columns": [{ "name": "clause_type", "type": "text" }] })
        }
        ("PUT", "/api/v1/blueprints/{id}") => {
            json!({ "spec": security_support::blueprint("hijacked") })
        }
        ("POST", "/api/v1/audit-log/settings") => json!({ "audit_request_bodies": true }),
        _ => return None,
    })
}

#[tokio::test]
async fn organization_a_cannot_reach_anything_of_organization_b() {
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let app = spawn_app_with(move |s| {
        s.rabbitmq.queue_prefix = prefix;
        s.jobs.relay_enabled = false;
    })
    .await;
    let gateway = spawn_gateway(&app).await;
    let a = Org::create(&app, "alpha").await;
    let b = Org::create(&app, "bravo").await;
    let a_session = Auth::Session(&a.owner);
    let a_token = Auth::Bearer(&a.token);
    let mut by_id = 0;

    for (method, route) in portal_routes() {
        let what = format!("{method} {route}");
        match kind(&method, &route) {
            Kind::Public | Kind::OwnSession => {}
            Kind::InvitationLink => {
                let path = fill(
                    &route,
                    &[("token", "tli_not-a-real-token".to_owned())].into(),
                );
                let r = call(&app, &method, &path, &a_session, None, None, None).await;
                assert_eq!(
                    r.status(),
                    StatusCode::NOT_FOUND,
                    "{what} with a made-up token"
                );
            }
            Kind::ById => {
                let mut path = fill(&route, &b.placeholders(&route));
                if route.ends_with("/compare") {
                    path.push_str("?a=1&b=1");
                }
                let body = valid_body(&method, &route);
                let api = route.starts_with("/api/");
                // A's browser, A's script in its own organization, and A's script naming
                // B's organization (A is no member of it).
                let mut attempts = vec![(&a_session, None)];
                // (Switching is for a browser's session; a token names its organization
                // per call and is refused before any lookup.)
                if api && !route.ends_with("/switch") {
                    attempts.push((&a_token, Some(a.org_id())));
                    attempts.push((&a_token, Some(b.org_id())));
                }
                for (auth, org) in attempts {
                    let r = call(&app, &method, &path, auth, org, body.as_ref(), None).await;
                    let status = r.status();
                    let body = text(r).await;
                    assert_eq!(
                        status,
                        StatusCode::NOT_FOUND,
                        "{what} as A ({org:?}) on B's ids: {body}"
                    );
                    assert_no_leak(&what, &body, &b);
                }
                // Control: the same read by B works, so the 404 above is isolation.
                if method == "GET" {
                    let r = call(
                        &app,
                        &method,
                        &path,
                        &Auth::Session(&b.owner),
                        None,
                        None,
                        None,
                    )
                    .await;
                    let status = r.status();
                    assert!(
                        status.is_success() || status == StatusCode::BAD_REQUEST,
                        "{what} as B on its own ids: {status} {}",
                        text(r).await
                    );
                }
                by_id += 1;
            }
            Kind::OwnOrg => {
                if method == "GET" {
                    let path = fill(&route, &a.placeholders(&route));
                    let mut attempts = vec![(&a_session, None)];
                    if route.starts_with("/api/") {
                        attempts.push((&a_token, Some(a.org_id())));
                    }
                    for (auth, org) in attempts {
                        let r = call(&app, &method, &path, auth, org, None, None).await;
                        let status = r.status();
                        let body = text(r).await;
                        assert!(status.is_success(), "{what} as A: {status} {body}");
                        assert_no_leak(&what, &body, &b);
                    }
                    if route.starts_with("/api/") {
                        let r = call(&app, &method, &path, &a_token, Some(b.org_id()), None, None)
                            .await;
                        let status = r.status();
                        // Organization-free routes (the user's own orgs and tokens) answer;
                        // the rest refuse an organization A is not in.
                        let body = text(r).await;
                        assert_no_leak(&what, &body, &b);
                        assert!(
                            status == StatusCode::NOT_FOUND || status.is_success(),
                            "{what} naming B's org: {status}"
                        );
                    }
                } else if let Some(body) = foreign_body(&route, &b) {
                    let r = call(&app, &method, &route, &a_session, None, Some(&body), None).await;
                    let status = r.status();
                    let text = text(r).await;
                    assert!(
                        status == StatusCode::NOT_FOUND
                            || status == StatusCode::UNPROCESSABLE_ENTITY,
                        "{what} naming B's things in its body: {status} {text}"
                    );
                    // The answer may repeat the id A sent ("no model …"), nothing more.
                    assert!(!text.contains("bravo"), "{what} shows B's names: {text}");
                } else if let Some(form) = foreign_form(&route, &b) {
                    let r = call(&app, &method, &route, &a_session, None, None, Some(&form)).await;
                    let status = r.status();
                    let text = text(r).await;
                    assert!(
                        status == StatusCode::NOT_FOUND
                            || status == StatusCode::UNPROCESSABLE_ENTITY,
                        "{what} naming B's things in its form: {status} {text}"
                    );
                    // The answer may repeat the id A sent ("no model …"), nothing more.
                    assert!(!text.contains("bravo"), "{what} shows B's names: {text}");
                }
            }
        }
    }
    assert!(by_id >= 30, "only {by_id} routes by id");

    // The gateway: A's key on B's model is a 404, like a model that does not exist; B's
    // own key gets past that point.
    let client = reqwest::Client::new();
    let mut gateway_checked = 0;
    for (method, route) in gateway_routes() {
        if !route.contains("{model}") {
            continue;
        }
        let url = |model: String| format!("{gateway}{}", fill(&route, &[("model", model)].into()));
        let body = json!({ "inputs": [{ "clause": "Rent is due monthly." }] });
        let send = |key: &str, model: String| {
            client
                .request(method.parse::<Method>().unwrap(), url(model))
                .bearer_auth(key.to_owned())
                .json(&body)
                .send()
        };
        let theirs = send(&a.api_key, format!("{}@1", b.model_name))
            .await
            .unwrap();
        let status = theirs.status();
        let text = theirs.text().await.unwrap();
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} {route}: A's key on B's model: {text}"
        );
        // The message repeats the model named in the path, and nothing else of B's.
        assert_no_leak(&route, &text.replace(&b.model_name, "…"), &b);
        let missing = send(&a.api_key, format!("{}@1", Uuid::now_v7()))
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let own = send(&b.api_key, format!("{}@1", b.model_name))
            .await
            .unwrap();
        assert_ne!(
            own.status(),
            StatusCode::NOT_FOUND,
            "{route}: B's key on B's model"
        );
        gateway_checked += 1;
    }
    assert!(gateway_checked >= 2);

    assert_b_is_intact(&app, &b).await;
}

/// B's things are as B made them: A's writes above changed nothing.
async fn assert_b_is_intact(app: &TestApp, b: &Org) {
    let auth = Auth::Session(&b.owner);
    let get = |path: String| {
        let auth = &auth;
        async move {
            let r = app.get(&path, auth).await;
            assert_eq!(r.status(), StatusCode::OK, "B's GET {path}");
            r.json::<Value>().await.unwrap()
        }
    };
    let bp = get(format!("/api/v1/blueprints/{}", b.blueprint_id)).await;
    assert_ne!(bp["spec"]["name"], "hijacked");
    let job = get(format!("/api/v1/jobs/{}", b.job_id)).await;
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["cancel_requested"], false);
    let key = get(format!("/api/v1/api-keys/{}", b.api_key_id)).await;
    assert!(key["revoked_at"].is_null(), "{key}");
    let members = get("/api/v1/members".into()).await;
    let member = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == json!(b.member_id))
        .expect("B's member is still there");
    assert_eq!(member["role"], "member");
    let invitations = get("/api/v1/invitations".into()).await;
    assert!(
        invitations
            .to_string()
            .contains(&b.invitation_id.to_string()),
        "{invitations}"
    );
    let dataset_versions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dataset_versions WHERE dataset_id = $1")
            .bind(b.dataset_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(dataset_versions, 1, "no schema change made a new version");
    let model: (Option<i32>,) =
        sqlx::query_as("SELECT published_version FROM models WHERE id = $1")
            .bind(b.model_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(model.0, None, "B's model was not published by A");
    let archived: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM model_versions WHERE model_id = $1 AND status = 'archived'",
    )
    .bind(b.model_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(archived, 0);
    let audit: bool = sqlx::query_scalar("SELECT audit_request_bodies FROM orgs WHERE id = $1")
        .bind(b.org_id())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!audit, "A turned on B's body auditing");
    let token_alive = app.me(&Auth::Bearer(&b.token)).await;
    assert_eq!(
        token_alive.status(),
        StatusCode::OK,
        "B's personal token still works"
    );
}
