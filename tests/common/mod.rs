//! Test harness: `spawn_app()` starts the real portal on port 0 against a fresh database
//! cloned from a migrated template, with its own object-store folder, and returns a
//! client with typed helpers. Real Postgres, RabbitMQ and object store; no mocks.
#![allow(dead_code)]

pub mod webdriver;

use std::{path::Path, str::FromStr};

use reqwest::{Response, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{
    Connection, Executor, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tailor_core::{Settings, db::MIGRATOR, settings::Environment};
use tokio::sync::OnceCell;
use uuid::Uuid;

pub const TEMPLATE_DB: &str = "tailor_test_template";
/// Serialises template (re)creation against clones, across test binaries and processes.
const TEMPLATE_LOCK: i64 = 7_312_025_001;
pub const PASSWORD: &str = "correct horse battery";

static TEMPLATE: OnceCell<()> = OnceCell::const_new();

fn base_settings() -> Settings {
    let mut settings =
        Settings::load_from(Path::new("config"), Environment::Test).expect("test settings");
    if std::env::var("TEST_LOG").is_ok() {
        tailor_core::telemetry::init(&settings.telemetry);
    }
    settings.application.port = 0;
    settings.gateway.port = 0;
    settings
}

fn options(settings: &Settings) -> PgConnectOptions {
    PgConnectOptions::from_str(settings.database.url.expose_secret()).expect("database url")
}

/// `url` with its database name replaced.
fn url_for(settings: &Settings, database: &str) -> String {
    let url = settings.database.url.expose_secret();
    let (base, _) = url.rsplit_once('/').expect("database url has a path");
    format!("{base}/{database}")
}

async fn admin(settings: &Settings) -> PgConnection {
    PgConnection::connect_with(&options(settings).database("postgres"))
        .await
        .expect("Postgres on 127.0.0.1:5432 (run scripts/services)")
}

/// Creates (or brings up to date) the template database once per test binary.
async fn ensure_template(settings: &Settings) {
    TEMPLATE
        .get_or_init(|| async {
            let mut conn = admin(settings).await;
            conn.execute(format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})").as_str())
                .await
                .unwrap();
            for attempt in 0..2 {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                )
                .bind(TEMPLATE_DB)
                .fetch_one(&mut conn)
                .await
                .unwrap();
                if !exists {
                    conn.execute(format!("CREATE DATABASE {TEMPLATE_DB}").as_str())
                        .await
                        .unwrap();
                }
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(options(settings).database(TEMPLATE_DB))
                    .await
                    .unwrap();
                let migrated = MIGRATOR.run(&pool).await;
                pool.close().await;
                match migrated {
                    Ok(()) => break,
                    // A migration changed since the template was made: start over.
                    Err(e) if attempt == 0 => {
                        eprintln!("recreating {TEMPLATE_DB}: {e}");
                        conn.execute(format!("DROP DATABASE {TEMPLATE_DB} WITH (FORCE)").as_str())
                            .await
                            .unwrap();
                    }
                    Err(e) => panic!("migrating {TEMPLATE_DB}: {e}"),
                }
            }
            conn.execute(format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})").as_str())
                .await
                .unwrap();
            conn.close().await.ok();
        })
        .await;
}

/// A fresh database cloned from the template; returns its name.
async fn fresh_database(settings: &Settings) -> String {
    ensure_template(settings).await;
    let name = format!("tailor_test_{}", Uuid::new_v4().simple());
    let mut conn = admin(settings).await;
    // Shared: clones may run together, but not while the template is being migrated.
    conn.execute(format!("SELECT pg_advisory_lock_shared({TEMPLATE_LOCK})").as_str())
        .await
        .unwrap();
    conn.execute(format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}").as_str())
        .await
        .expect("cloning the template database");
    conn.execute(format!("SELECT pg_advisory_unlock_shared({TEMPLATE_LOCK})").as_str())
        .await
        .unwrap();
    conn.close().await.ok();
    name
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub pool: PgPool,
    pub database: String,
    pub client: reqwest::Client,
    _objects: tempfile::TempDir,
}

/// Starts the portal against a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the portal after `change` adjusts its settings (e.g. to break a dependency).
pub async fn spawn_app_with(change: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = base_settings();
    let database = fresh_database(&settings).await;
    settings.database.url = SecretString::from(url_for(&settings, &database));
    let objects = tempfile::tempdir().unwrap();
    settings.object_store.local_root = objects.path().to_path_buf();
    change(&mut settings);
    let app = tailor_portal::Application::build(settings.clone())
        .await
        .expect("building the portal");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options(&settings).database(&database));
    TestApp {
        address,
        settings,
        pool,
        database,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        _objects: objects,
    }
}

/// Starts the gateway with the same settings as `app`; returns its address.
pub async fn spawn_gateway(app: &TestApp) -> String {
    let gateway = tailor_gateway::Application::build(app.settings.clone())
        .await
        .expect("building the gateway");
    let address = format!("http://127.0.0.1:{}", gateway.port());
    tokio::spawn(gateway.run_until_stopped());
    address
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Drop the test database from a thread of its own (no async in Drop).
        let settings = self.settings.clone();
        let database = self.database.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = admin(&settings).await;
                let _ = conn
                    .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
                    .await;
            });
        })
        .join();
    }
}

/// A signed-in browser: the session cookie (sent by hand, as reqwest's cookie store drops
/// `Secure` cookies on http) and the CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    /// `__Host-tailor_session=<jwt>`
    pub cookie: String,
    pub csrf: String,
    pub user_id: Uuid,
    pub org_id: Uuid,
    pub email: String,
}

impl Session {
    pub fn jwt(&self) -> &str {
        self.cookie.split_once('=').unwrap().1
    }
}

/// How a request authenticates.
pub enum Auth<'a> {
    None,
    Session(&'a Session),
    /// The session cookie without the CSRF header.
    SessionNoCsrf(&'a Session),
    Cookie(String),
    Bearer(&'a str),
}

/// The `name=value` of a `Set-Cookie` header of `response`.
pub fn set_cookie(response: &Response, name: &str) -> Option<String> {
    set_cookie_header(response, name).map(|h| h.split(';').next().unwrap().to_owned())
}

/// The whole `Set-Cookie` header for `name`, with its attributes.
pub fn set_cookie_header(response: &Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

pub const SESSION_COOKIE: &str = "__Host-tailor_session";

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: &Auth,
    ) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, self.url(path));
        match auth {
            Auth::None => builder,
            Auth::Session(s) => builder
                .header(header::COOKIE, &s.cookie)
                .header("X-CSRF-Token", &s.csrf),
            Auth::SessionNoCsrf(s) => builder.header(header::COOKIE, &s.cookie),
            Auth::Cookie(c) => builder.header(header::COOKIE, c),
            Auth::Bearer(t) => builder.bearer_auth(t),
        }
    }

    pub async fn get(&self, path: &str, auth: &Auth<'_>) -> Response {
        self.request(reqwest::Method::GET, path, auth)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, auth: &Auth<'_>, body: &Value) -> Response {
        self.request(reqwest::Method::POST, path, auth)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, path: &str, auth: &Auth<'_>, body: &Value) -> Response {
        self.request(reqwest::Method::PATCH, path, auth)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str, auth: &Auth<'_>) -> Response {
        self.request(reqwest::Method::DELETE, path, auth)
            .send()
            .await
            .unwrap()
    }

    pub async fn sign_up_raw(&self, body: &Value) -> Response {
        self.post("/api/v1/signup", &Auth::None, body).await
    }

    pub async fn sign_in_raw(&self, email: &str, password: &str) -> Response {
        self.post(
            "/api/v1/signin",
            &Auth::None,
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    /// Signs up `email` (password [`PASSWORD`]) and returns the session.
    pub async fn sign_up(&self, email: &str) -> Session {
        let response = self
            .sign_up_raw(&json!({ "email": email, "password": PASSWORD, "display_name": email }))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        session_of(response, email).await
    }

    /// Signs in and returns the new session.
    pub async fn sign_in(&self, email: &str, password: &str) -> Session {
        let response = self.sign_in_raw(email, password).await;
        assert_eq!(response.status(), StatusCode::OK);
        session_of(response, email).await
    }

    pub async fn me(&self, auth: &Auth<'_>) -> Response {
        self.get("/api/v1/me", auth).await
    }

    pub async fn sign_out(&self, session: &Session) -> Response {
        self.post("/api/v1/signout", &Auth::Session(session), &json!({}))
            .await
    }

    /// Invites `email` to the session's current organization; returns the JSON answer.
    pub async fn invite(&self, by: &Session, email: &str, role: &str) -> Response {
        self.post(
            "/api/v1/invitations",
            &Auth::Session(by),
            &json!({ "email": email, "role": role }),
        )
        .await
    }

    pub async fn accept(&self, session: &Session, token: &str) -> Response {
        self.post(
            "/api/v1/invitations/accept",
            &Auth::Session(session),
            &json!({ "token": token }),
        )
        .await
    }

    pub async fn create_token(&self, session: &Session, name: &str) -> (Uuid, String) {
        let response = self
            .post(
                "/api/v1/tokens",
                &Auth::Session(session),
                &json!({ "name": name }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        (
            body["api_token"]["id"].as_str().unwrap().parse().unwrap(),
            body["token"].as_str().unwrap().to_owned(),
        )
    }
}

async fn session_of(response: Response, email: &str) -> Session {
    let cookie = set_cookie(&response, SESSION_COOKIE).expect("a session cookie");
    let body: Value = response.json().await.unwrap();
    Session {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        user_id: body["user"]["id"].as_str().unwrap().parse().unwrap(),
        org_id: body["current_org_id"].as_str().unwrap().parse().unwrap(),
        email: email.to_owned(),
    }
}

/// Asserts the error shape and code; returns the body.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}
