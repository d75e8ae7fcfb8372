//! Authentication attacks: forged session JWTs beyond those of tests/accounts.rs
//! (algorithm confusion, not yet valid, a tampered payload under the old signature), a
//! signed-out session whose copied cookie is replayed on pages and the API, and sign-in
//! throttling per account and per client address (429 with `Retry-After`).

mod common;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{Auth, PASSWORD, SESSION_COOKIE, TestApp, assert_error, spawn_app};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{StatusCode, header};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tailor_core::accounts::throttle::LIMITS;

fn claims_of(session: &common::Session) -> Value {
    let payload = session.jwt().split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn secret(app: &TestApp) -> Vec<u8> {
    app.settings
        .auth
        .jwt_secret()
        .expose_secret()
        .as_bytes()
        .to_vec()
}

fn cookie(token: &str) -> Auth<'static> {
    Auth::Cookie(format!("{SESSION_COOKIE}={token}"))
}

/// `header.payload.signature` with the HMAC-SHA256 signature of our key under any `alg`
/// header: the classic algorithm confusion.
fn hmac_under(alg: &str, claims: &Value, key: &[u8]) -> String {
    let head = URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "typ": "JWT" }).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{head}.{body}");
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(key),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

#[tokio::test]
async fn forged_session_tokens_are_refused() {
    let app = spawn_app().await;
    let eve = app.sign_up("eve@example.com").await;
    let victim = app.sign_up("victim@example.com").await;
    let claims = claims_of(&eve);
    let key = secret(&app);
    let now = chrono::Utc::now().timestamp();

    // Control: the claims re-signed as we sign them pass, so each case below fails only
    // because of what it changes.
    let good = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key),
    )
    .unwrap();
    assert_eq!(app.me(&cookie(&good)).await.status(), StatusCode::OK);
    assert_eq!(
        app.me(&cookie(&hmac_under("HS256", &claims, &key)))
            .await
            .status(),
        StatusCode::OK
    );

    let resign = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &c,
            &EncodingKey::from_secret(&key),
        )
        .unwrap()
    };
    // The payload swapped for the victim's ids, the signature kept.
    let mut theirs = claims.clone();
    theirs["sub"] = json!(victim.user_id);
    let [head, _, signature] = eve.jwt().split('.').collect::<Vec<_>>()[..] else {
        panic!("a JWT has three parts")
    };
    let tampered = format!(
        "{head}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(theirs.to_string())
    );
    let cases = [
        (
            "RS256 header over an HMAC of our key",
            hmac_under("RS256", &claims, &key),
        ),
        (
            "ES256 header over an HMAC of our key",
            hmac_under("ES256", &claims, &key),
        ),
        (
            "alg None, capitalised",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"None","typ":"JWT"}"#),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            ),
        ),
        (
            "not valid for another hour",
            resign(&|c| c["nbf"] = json!(now + 3600)),
        ),
        (
            "no nbf",
            resign(&|c| {
                c.as_object_mut().unwrap().remove("nbf");
            }),
        ),
        (
            "no audience",
            resign(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "the victim's sub under the signer's session",
            resign(&|c| c["sub"] = json!(victim.user_id)),
        ),
        ("a tampered payload under the old signature", tampered),
        (
            "an empty signature",
            format!("{head}.{}.", eve.jwt().split('.').nth(1).unwrap()),
        ),
    ];
    for (name, token) in cases {
        let response = app.me(&cookie(&token)).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{name} was accepted"
        );
        // Pages send the browser to sign in instead.
        let page = app.get("/dashboard", &cookie(&token)).await;
        assert_eq!(page.status(), StatusCode::SEE_OTHER, "{name} opened a page");
        assert_eq!(page.headers()[header::LOCATION], "/signin", "{name}");
    }
}

#[tokio::test]
async fn a_copied_cookie_is_dead_after_sign_out_on_pages_and_the_api() {
    let app = spawn_app().await;
    app.sign_up("ada@example.com").await;
    let session = app.sign_in("ada@example.com", PASSWORD).await;
    let other = app.sign_in("ada@example.com", PASSWORD).await;
    let copied = Auth::Cookie(session.cookie.clone());
    assert_eq!(
        app.get("/dashboard", &copied).await.status(),
        StatusCode::OK
    );

    // Sign out through the page's form.
    let out = app
        .client
        .post(app.url("/signout"))
        .header(header::COOKIE, &session.cookie)
        .form(&[("csrf_token", session.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let cleared = common::set_cookie_header(&out, SESSION_COOKIE).unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // The copied cookie: its JWT is unexpired and well signed, but the session is revoked.
    let page = app.get("/dashboard", &copied).await;
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_error(
        app.me(&copied).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let write = app
        .post(
            "/api/v1/orgs",
            &Auth::Session(&session),
            &json!({ "name": "x" }),
        )
        .await;
    assert_error(write, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Signing out one browser leaves the user's other sessions alone.
    assert_eq!(
        app.me(&Auth::Session(&other)).await.status(),
        StatusCode::OK
    );
}

async fn sign_in_from(
    app: &TestApp,
    email: &str,
    password: &str,
    address: &str,
) -> reqwest::Response {
    // The portal counts the TCP peer; give each "address" its own loopback address.
    let client = reqwest::Client::builder()
        .local_address(address.parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    client
        .post(app.url("/api/v1/signin"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn guessing_one_accounts_password_is_throttled_with_retry_after() {
    let app = spawn_app().await;
    app.sign_up("grace@example.com").await;
    let here = "127.0.0.1";
    for i in 0..LIMITS.per_account {
        let r = sign_in_from(&app, "grace@example.com", &format!("guess {i}"), here).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    // Past the limit even the right password is refused, with how long to wait.
    let r = sign_in_from(&app, "GRACE@example.com", PASSWORD, here).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&r);
    assert!(
        wait > LIMITS.window.as_secs() - 60 && wait <= LIMITS.window.as_secs(),
        "Retry-After {wait}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this account"),
        "{body}"
    );
    // From another address too: the limit is the account's.
    let r = sign_in_from(&app, "grace@example.com", PASSWORD, "127.0.0.2").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // The sign-in form says so in the page, with the same status and header.
    let page = app.get("/signin", &Auth::None).await;
    let csrf = common::set_cookie(&page, "__Host-tailor_csrf").unwrap();
    let html = page.text().await.unwrap();
    let token = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let form = app
        .client
        .post(app.url("/signin"))
        .header(header::COOKIE, csrf)
        .form(&[
            ("csrf_token", token),
            ("email", "grace@example.com"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&form) > 0);
    assert!(
        form.text()
            .await
            .unwrap()
            .contains("Too many failed sign-ins")
    );

    // Other accounts are untouched; once the window has passed, the right password works
    // again and clears the count.
    app.sign_up("heidi@example.com").await;
    assert_eq!(
        sign_in_from(&app, "heidi@example.com", PASSWORD, here)
            .await
            .status(),
        StatusCode::OK
    );
    sqlx::query("UPDATE sign_in_failures SET at = at - interval '16 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        sign_in_from(&app, "grace@example.com", PASSWORD, here)
            .await
            .status(),
        StatusCode::OK
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sign_in_failures WHERE email = 'grace@example.com'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn guessing_across_accounts_from_one_address_is_throttled() {
    let app = spawn_app().await;
    app.sign_up("ivan@example.com").await;
    let attacker = "127.0.0.3";
    // Spraying: one guess at each of many accounts, known or not.
    for i in 0..LIMITS.per_address {
        let r = sign_in_from(
            &app,
            &format!("user{i}@example.com"),
            "Winter2026!",
            attacker,
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let r = sign_in_from(&app, "ivan@example.com", PASSWORD, attacker).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&r) > 0);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("your address"),
        "{body}"
    );
    // Ivan signing in from his own address is not affected.
    assert_eq!(
        sign_in_from(&app, "ivan@example.com", PASSWORD, "127.0.0.4")
            .await
            .status(),
        StatusCode::OK
    );
}
