//! Accounts end to end: sign-up, sign-in, sessions, JWT validation, CSRF, API tokens, pages.

mod common;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{
    Auth, PASSWORD, SESSION_COOKIE, assert_error, set_cookie, set_cookie_header, spawn_app,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

#[tokio::test]
async fn sign_up_sign_in_me_and_sign_out_revokes_the_session() {
    let app = spawn_app().await;
    let response = app
        .sign_up_raw(
            &json!({ "email": "Ada@Example.com", "password": PASSWORD, "display_name": "Ada" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let header = set_cookie_header(&response, SESSION_COOKIE).unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(header.contains(attribute), "{header} lacks {attribute}");
    }
    assert!(!header.contains("Domain"), "{header}");

    let session = app.sign_in("ada@example.com", PASSWORD).await;
    let me = app.me(&Auth::Session(&session)).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["user"]["email"], "ada@example.com");
    assert_eq!(me["role"], "owner");
    assert_eq!(me["orgs"].as_array().unwrap().len(), 1);

    let out = app.sign_out(&session).await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    // The JWT is still unexpired and well signed, but its session row is revoked.
    assert_error(
        app.me(&Auth::Session(&session)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_refused_alike() {
    let app = spawn_app().await;
    app.sign_up("bob@example.com").await;
    let wrong = app.sign_in_raw("bob@example.com", "not the password").await;
    assert!(set_cookie(&wrong, SESSION_COOKIE).is_none());
    assert_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let unknown = app.sign_in_raw("nobody@example.com", PASSWORD).await;
    assert_error(unknown, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn duplicate_email_is_a_conflict_naming_the_field() {
    let app = spawn_app().await;
    app.sign_up("carol@example.com").await;
    let again = app
        .sign_up_raw(&json!({ "email": "CAROL@example.com", "password": PASSWORD }))
        .await;
    let body = assert_error(again, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(body["error"]["field"], "email");
}

#[tokio::test]
async fn invalid_sign_up_input_names_the_field() {
    let app = spawn_app().await;
    let bad_email = app
        .sign_up_raw(&json!({ "email": "not-an-email", "password": PASSWORD }))
        .await;
    let body = assert_error(bad_email, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "email");
    let short = app
        .sign_up_raw(&json!({ "email": "d@example.com", "password": "short" }))
        .await;
    let body = assert_error(short, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "password");
}

fn claims_of(session: &common::Session) -> Value {
    let payload = session.jwt().split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn sign(claims: &Value, algorithm: Algorithm, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(key),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_and_invalid_session_tokens_are_refused() {
    let app = spawn_app().await;
    let session = app.sign_up("eve@example.com").await;
    let claims = claims_of(&session);
    let secret = app
        .settings
        .auth
        .jwt_secret()
        .expose_secret()
        .as_bytes()
        .to_vec();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        c
    };
    let now = chrono::Utc::now().timestamp();

    // Control: the same claims re-signed with the right key pass, so each case below
    // fails only because of what it changes.
    let good = sign(&claims, Algorithm::HS256, &secret);
    let me = app
        .me(&Auth::Cookie(format!("{SESSION_COOKIE}={good}")))
        .await;
    assert_eq!(me.status(), StatusCode::OK);

    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let cases = [
        (
            "wrong key",
            sign(
                &claims,
                Algorithm::HS256,
                b"some-other-key-of-enough-length-000",
            ),
        ),
        ("alg none", alg_none),
        (
            "HS512 with the right key",
            sign(&claims, Algorithm::HS512, &secret),
        ),
        (
            "expired",
            sign(
                &with(&|c| {
                    c["exp"] = json!(now - 3600);
                }),
                Algorithm::HS256,
                &secret,
            ),
        ),
        (
            "wrong audience",
            sign(
                &with(&|c| {
                    c["aud"] = json!("someone-else");
                }),
                Algorithm::HS256,
                &secret,
            ),
        ),
        (
            "wrong issuer",
            sign(
                &with(&|c| {
                    c["iss"] = json!("evil");
                }),
                Algorithm::HS256,
                &secret,
            ),
        ),
        (
            "no exp",
            sign(
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                Algorithm::HS256,
                &secret,
            ),
        ),
        (
            "other session id",
            sign(
                &with(&|c| {
                    c["sid"] = json!(uuid::Uuid::new_v4());
                }),
                Algorithm::HS256,
                &secret,
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, token) in cases {
        let response = app
            .me(&Auth::Cookie(format!("{SESSION_COOKIE}={token}")))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{name} was accepted"
        );
    }
}

#[tokio::test]
async fn cookie_requests_that_change_state_need_the_csrf_token() {
    let app = spawn_app().await;
    let session = app.sign_up("frank@example.com").await;
    let body = json!({ "name": "Second org" });

    let missing = app
        .post("/api/v1/orgs", &Auth::SessionNoCsrf(&session), &body)
        .await;
    assert_error(missing, StatusCode::FORBIDDEN, "forbidden").await;
    let wrong = app
        .request(
            reqwest::Method::POST,
            "/api/v1/orgs",
            &Auth::SessionNoCsrf(&session),
        )
        .header("X-CSRF-Token", "guess")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(wrong, StatusCode::FORBIDDEN, "forbidden").await;
    let orgs: Value = app
        .get("/api/v1/orgs", &Auth::SessionNoCsrf(&session))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(orgs.as_array().unwrap().len(), 1, "nothing was created");

    let right = app
        .post("/api/v1/orgs", &Auth::Session(&session), &body)
        .await;
    assert_eq!(right.status(), StatusCode::CREATED);

    // Sign-out without the token neither signs out nor answers 2xx.
    let out = app
        .post(
            "/api/v1/signout",
            &Auth::SessionNoCsrf(&session),
            &json!({}),
        )
        .await;
    assert_eq!(out.status(), StatusCode::FORBIDDEN);
    // An HTML form without its hidden token is refused too.
    let form = app
        .client
        .post(app.url("/signout"))
        .header(reqwest::header::COOKIE, &session.cookie)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("csrf_token=")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.me(&Auth::Session(&session)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn personal_api_tokens_work_until_revoked() {
    let app = spawn_app().await;
    let session = app.sign_up("grace@example.com").await;
    let (id, token) = app.create_token(&session, "nightly script").await;
    assert!(token.starts_with("tlrp_"));

    let me = app.me(&Auth::Bearer(&token)).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["user"]["email"], "grace@example.com");
    // Bearer calls are exempt from CSRF.
    let created = app
        .post(
            "/api/v1/orgs",
            &Auth::Bearer(&token),
            &json!({ "name": "Scripted" }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);

    // Only the hash is stored.
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM api_tokens WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_ne!(stored, token);
    assert_eq!(stored, tailor_core::auth::sha256_hex(&token));

    let revoked = app
        .delete(&format!("/api/v1/tokens/{id}"), &Auth::Session(&session))
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.me(&Auth::Bearer(&token)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let list: Value = app
        .get("/api/v1/tokens", &Auth::Session(&session))
        .await
        .json()
        .await
        .unwrap();
    assert!(list[0]["revoked_at"].is_string(), "{list}");

    // Another user cannot revoke my token: 404.
    let other = app.sign_up("heidi@example.com").await;
    let (mine, _) = app.create_token(&session, "second").await;
    let theirs = app
        .delete(&format!("/api/v1/tokens/{mine}"), &Auth::Session(&other))
        .await;
    assert_error(theirs, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn sign_in_form_sets_the_session_and_shows_the_dashboard_in_the_chosen_language() {
    let app = spawn_app().await;
    app.sign_up("ivan@example.com").await;

    let page = app
        .client
        .get(app.url("/signin"))
        .header("Accept-Language", "zh-CN,zh;q=0.9,en;q=0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csrf_cookie = set_cookie(&page, "__Host-tailor_csrf").expect("a form token cookie");
    let html = page.text().await.unwrap();
    assert!(html.contains("<h1>登录</h1>"), "{html}");
    let token = html
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    // Without the form token cookie: refused.
    let forged = app
        .client
        .post(app.url("/signin"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("email", "ivan@example.com"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    let signed_in = app
        .client
        .post(app.url("/signin"))
        .header(reqwest::header::COOKIE, &csrf_cookie)
        .form(&[
            ("csrf_token", token.as_str()),
            ("email", "ivan@example.com"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(signed_in.headers()["location"], "/dashboard");
    let session = set_cookie(&signed_in, SESSION_COOKIE).unwrap();

    // The language cookie wins over Accept-Language.
    let dashboard = app
        .client
        .get(app.url("/dashboard"))
        .header(
            reqwest::header::COOKIE,
            format!("{session}; tailor_lang=en"),
        )
        .header("Accept-Language", "zh-CN")
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), StatusCode::OK);
    let html = dashboard.text().await.unwrap();
    assert!(
        html.contains("ivan@example.com") && html.contains("Sign out"),
        "{html}"
    );

    let zh = app
        .client
        .get(app.url("/dashboard"))
        .header(
            reqwest::header::COOKIE,
            format!("{session}; tailor_lang=zh-CN"),
        )
        .send()
        .await
        .unwrap();
    assert!(zh.text().await.unwrap().contains("退出登录"));

    // Signed out, pages send the browser to the sign-in page.
    let anonymous = app.get("/dashboard", &Auth::None).await;
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()["location"], "/signin");
}
