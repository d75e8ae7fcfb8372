//! Security headers on every response: each GET route of the portal (from its route
//! configuration, filled with the ids of a real organization's things), error answers of
//! the pages and of the JSON API, and every gateway route.

mod common;
mod security_support;

use common::{Auth, spawn_app, spawn_gateway};
use reqwest::{Method, Response, StatusCode};
use security_support::{Org, fill, gateway_routes, portal_routes};
use serde_json::json;

/// The portal's headers: (name, a part the value must contain).
const PORTAL: &[(&str, &str)] = &[
    ("content-security-policy", "default-src 'self'"),
    ("content-security-policy", "script-src 'self';"),
    ("content-security-policy", "frame-ancestors 'none'"),
    ("content-security-policy", "object-src 'none'"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
];

fn assert_portal_headers(what: &str, response: &Response) {
    for (name, part) in PORTAL {
        let value = response
            .headers()
            .get(*name)
            .unwrap_or_else(|| panic!("{what}: no {name} header ({})", response.status()))
            .to_str()
            .unwrap();
        assert!(value.contains(part), "{what}: {name}: {value} lacks {part}");
    }
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
}

#[tokio::test]
async fn every_portal_response_carries_the_security_headers() {
    let app = spawn_app().await;
    let org = Org::create(&app, "alpha").await;
    let session = Auth::Session(&org.owner);
    let mut checked = 0;
    for (method, route) in portal_routes() {
        if method != "GET" {
            continue;
        }
        let path = fill(&route, &org.placeholders(&route));
        for auth in [&session, &Auth::None] {
            // The job event stream stays open: its headers are all this needs.
            let response = app
                .request(Method::GET, &path, auth)
                .timeout(std::time::Duration::from_secs(20))
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert!(
                !response.status().is_server_error(),
                "GET {path}: {}",
                response.status()
            );
            assert_portal_headers(&format!("GET {path}"), &response);
            checked += 1;
        }
    }
    assert!(checked > 60, "checked only {checked} responses");

    // Pages that were signed in answered 200 with HTML.
    let page = app.get("/datasets", &session).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_portal_headers("GET /datasets", &page);

    // Errors too: unknown page, unknown API path, refused CSRF, malformed JSON.
    assert_portal_headers("a 404 page", &app.get("/no/such/page", &session).await);
    assert_portal_headers("a 404 API", &app.get("/api/v1/nothing", &session).await);
    let refused = app
        .post(
            "/api/v1/orgs",
            &Auth::SessionNoCsrf(&org.owner),
            &json!({ "name": "x" }),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_portal_headers("a CSRF refusal", &refused);
    let malformed = app
        .request(Method::POST, "/api/v1/blueprints", &session)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_portal_headers("a malformed body", &malformed);

    // Only the static assets may be cached; signed-in answers are not.
    let asset = app.get("/static/app.css", &Auth::None).await;
    assert!(
        asset.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    assert_eq!(
        page_cache(&app.get("/api/v1/me", &session).await),
        "no-store"
    );
}

fn page_cache(response: &Response) -> &str {
    response.headers()["cache-control"].to_str().unwrap()
}

#[tokio::test]
async fn every_gateway_response_carries_nosniff_and_no_framing() {
    let app = spawn_app().await;
    let gateway = spawn_gateway(&app).await;
    let org = Org::create(&app, "alpha").await;
    let client = reqwest::Client::new();
    let mut checked = 0;
    for (method, route) in gateway_routes() {
        let path = fill(&route, &org.placeholders(&route));
        for key in [None, Some(org.api_key.as_str())] {
            let mut request = client.request(method.parse().unwrap(), format!("{gateway}{path}"));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            if method == "POST" {
                request = request.json(&json!({ "inputs": [] }));
            }
            let response = request.send().await.unwrap();
            let what = format!("{method} {path} ({})", response.status());
            assert_eq!(
                response
                    .headers()
                    .get("x-content-type-options")
                    .map(|v| v.to_str().unwrap()),
                Some("nosniff"),
                "{what}"
            );
            let csp = response.headers()["content-security-policy"]
                .to_str()
                .unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "checked only {checked} responses");
    let unknown = client
        .get(format!("{gateway}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(unknown.headers()["x-content-type-options"], "nosniff");
}
