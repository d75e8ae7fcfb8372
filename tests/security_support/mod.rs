//! Shared by the security test binaries: the route tables of the portal and the gateway,
//! read from the route configuration itself, and a world of two organizations with one of
//! everything.
//!
//! The route tables are built from the sources that register the routes (the handlers'
//! `#[get("…")]` attributes, the `configure_api` / `configure_pages` / `configure`
//! functions that register them, the `/api/v1` scope, and any `.route("…", web::get())`),
//! so a route added to the code and not to a security test's table fails that test.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::{Auth, Session, TestApp};

/// `(METHOD, path)` with the path's `{placeholders}` as written in the code.
pub type RouteKey = (String, String);

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Handler name → `(METHOD, path)` of every `#[method("path")]` handler in `source`.
fn handlers(source: &str) -> BTreeMap<String, RouteKey> {
    let mut out = BTreeMap::new();
    let mut pending: Option<RouteKey> = None;
    for line in source.lines() {
        let line = line.trim();
        for method in METHODS {
            let open = format!("#[{method}(\"");
            if let Some(rest) = line.strip_prefix(&open) {
                let path = rest.split('"').next().unwrap().to_owned();
                pending = Some((method.to_uppercase(), path));
            }
        }
        if let Some(at) = line.find("async fn ")
            && let Some(route) = pending.take()
        {
            let name = line[at + 9..].split(['(', '<']).next().unwrap().trim();
            out.insert(name.to_owned(), route);
        }
    }
    out
}

/// The body of `fn name(` in `source`, up to the closing brace at the start of a line.
fn function_body<'a>(source: &'a str, name: &str) -> Option<&'a str> {
    let start = source.find(&format!("fn {name}("))?;
    let rest = &source[start..];
    let end = rest.find("\n}").unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The identifiers passed to `.service(…)` in `body` (not `.default_service(…)`).
fn services(body: &str) -> Vec<String> {
    body.split(".service(")
        .skip(1)
        .map(|s| s.split(')').next().unwrap().trim().to_owned())
        .collect()
}

/// `.route("path", web::method()…)` registrations in `source`.
fn explicit_routes(source: &str, prefix: &str) -> Vec<RouteKey> {
    source
        .split(".route(")
        .skip(1)
        .map(|s| {
            let path = s.split('"').nth(1).expect("a .route(\"path\", …)");
            let method = METHODS
                .iter()
                .find(|m| s.contains(&format!("web::{m}()")))
                .expect("a .route(…) with web::get() / post() / …");
            (method.to_uppercase(), format!("{prefix}{path}"))
        })
        .collect()
}

/// Every route the portal registers.
pub fn portal_routes() -> BTreeSet<RouteKey> {
    let mod_rs = read("services/portal/src/routes/mod.rs");
    assert!(
        mod_rs.contains("web::scope(\"/api/v1\")"),
        "routes/mod.rs no longer scopes the JSON API under /api/v1: update security_support"
    );
    let configure = function_body(&mod_rs, "configure").expect("routes::configure");
    let mut routes = BTreeSet::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("services/portal/src/routes");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let module = path.file_stem().unwrap().to_str().unwrap().to_owned();
        if module == "mod" || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let handlers = handlers(&source);
        for (function, prefix) in [
            ("configure_api", "/api/v1"),
            ("configure_pages", ""),
            ("configure", ""),
        ] {
            if !configure.contains(&format!("{module}::{function})")) {
                continue;
            }
            let body = function_body(&source, function)
                .unwrap_or_else(|| panic!("routes/{module}.rs has no fn {function}"));
            for name in services(body) {
                let (method, route) = handlers
                    .get(&name)
                    .unwrap_or_else(|| panic!("routes/{module}.rs: no #[method] on {name}"));
                routes.insert((method.clone(), format!("{prefix}{route}")));
            }
            routes.extend(explicit_routes(body, prefix));
        }
    }
    routes.extend(explicit_routes(&read("services/portal/src/startup.rs"), ""));
    assert!(routes.len() > 50, "found only {} routes", routes.len());
    routes
}

/// Every route the gateway registers.
pub fn gateway_routes() -> BTreeSet<RouteKey> {
    let source = read("services/gateway/src/lib.rs");
    let handlers = handlers(&source);
    let start = source.find("HttpServer::new").expect("the gateway's App");
    let app = &source[start..];
    let app = &app[..app.find(".listen(").unwrap_or(app.len())];
    let mut routes: BTreeSet<RouteKey> = services(app)
        .into_iter()
        .map(|name| {
            handlers
                .get(&name)
                .unwrap_or_else(|| panic!("gateway: no #[method] on {name}"))
                .clone()
        })
        .collect();
    routes.extend(explicit_routes(app, ""));
    routes
}

/// Fills `{placeholders}` of `template` from `values`; panics on one it does not know.
pub fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        let name = &rest[open + 1..close];
        out.push_str(
            values
                .get(name)
                .unwrap_or_else(|| panic!("no value for {{{name}}} in {template}")),
        );
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

pub const CLAUSES: &str = "clause,clause_type\n\
\"The tenant shall pay rent on the first day of each month.\",payment\n\
\"Rent is due monthly in advance without deduction.\",payment\n\
\"Late payment of rent incurs a fee of five percent.\",payment\n\
\"The lessee pays the agreed rent by bank transfer.\",payment\n\
\"Either party may terminate this agreement with thirty days notice.\",termination\n\
\"This contract ends automatically after twelve months.\",termination\n\
\"The landlord may terminate the lease for material breach.\",termination\n\
\"Termination requires written notice to the other party.\",termination\n";

pub fn blueprint(name: &str) -> Value {
    json!({ "name": name,
        "inputs": [{ "name": "clause", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 32 } }],
        "outputs": [{ "name": "clause_type", "task": "classification", "decoder": { "module": "head/linear" } }],
        "adaptation": { "method": "lora", "rank": 4, "alpha": 8, "targets": ["query", "value"] },
        "training": { "epochs": 1, "batch_size": 8, "seed": 3, "validation_split": 0.25 } })
}

async fn created(response: reqwest::Response, what: &str) -> Value {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(
        status == StatusCode::CREATED || status == StatusCode::OK,
        "creating {what}: {status} {body}"
    );
    serde_json::from_str(&body).unwrap()
}

fn id(value: &Value) -> Uuid {
    value.as_str().unwrap().parse().unwrap()
}

/// One organization with one of everything, made through the JSON API as its owner
/// (and rows written the way the worker writes them, for the model version).
pub struct Org {
    pub owner: Session,
    /// A second member (role member) and their `org_members` id.
    pub member: Session,
    pub member_id: Uuid,
    /// The owner's personal API token and its id.
    pub token: String,
    pub token_id: Uuid,
    pub dataset_id: Uuid,
    pub dataset_version_id: Uuid,
    pub blueprint_id: Uuid,
    pub job_id: Uuid,
    pub model_id: Uuid,
    /// The model's name, which the gateway's paths use (`name@version`).
    pub model_name: String,
    pub model_version_id: Uuid,
    /// An API key for every model, and its id.
    pub api_key: String,
    pub api_key_id: Uuid,
    /// A pending invitation and the token of its link.
    pub invitation_id: Uuid,
    pub invitation_token: String,
}

impl Org {
    /// Makes an organization whose names all start with `name` (so that a leak is easy to
    /// spot in another organization's answers).
    pub async fn create(app: &TestApp, name: &str) -> Org {
        let owner = app.sign_up(&format!("{name}-owner@example.com")).await;
        let org_id = owner.org_id;
        let auth = Auth::Session(&owner);

        let invitation = created(
            app.invite(&owner, &format!("{name}-member@example.com"), "member")
                .await,
            "an invitation",
        )
        .await;
        let member = app.sign_up(&format!("{name}-member@example.com")).await;
        let accepted = app
            .accept(&member, invitation["token"].as_str().unwrap())
            .await;
        assert_eq!(accepted.status(), StatusCode::OK);
        let member = Session { org_id, ..member };
        let members: Value = app
            .get("/api/v1/members", &auth)
            .await
            .json()
            .await
            .unwrap();
        let member_id = members
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user_id"] == json!(member.user_id))
            .map(|m| id(&m["id"]))
            .unwrap_or_else(|| panic!("the member in {members}"));
        let pending = created(
            app.invite(&owner, &format!("{name}-invitee@example.com"), "viewer")
                .await,
            "an invitation",
        )
        .await;

        let (token_id, token) = app.create_token(&owner, &format!("{name}-token")).await;

        let upload = app
            .request(
                Method::POST,
                &format!("/api/v1/datasets?name={name}-data&file_name={name}.csv"),
                &auth,
            )
            .body(CLAUSES)
            .send()
            .await
            .unwrap();
        let upload = created(upload, "a dataset").await;
        let dataset_id = id(&upload["dataset_id"]);
        let dataset_version_id = id(&upload["version"]["id"]);

        let bp = created(
            app.post(
                "/api/v1/blueprints",
                &auth,
                &json!({ "spec": blueprint(&format!("{name}-blueprint")),
                         "dataset_version_id": dataset_version_id }),
            )
            .await,
            "a blueprint",
        )
        .await;
        let blueprint_id = id(&bp["id"]);

        let job = created(
            app.post(
                "/api/v1/jobs",
                &auth,
                &json!({ "blueprint_id": blueprint_id, "dataset_version_id": dataset_version_id }),
            )
            .await,
            "a job",
        )
        .await;
        let job_id = id(&job["id"]);
        let model_id = id(&job["model_id"]);
        let model_version_id =
            model_version(app, org_id, model_id, job_id, dataset_version_id).await;

        let key = created(
            app.post(
                "/api/v1/api-keys",
                &auth,
                &json!({ "name": format!("{name}-key"), "models": "all",
                         "actions": ["predict", "embed"] }),
            )
            .await,
            "an API key",
        )
        .await;

        Org {
            owner,
            member,
            member_id,
            token,
            token_id,
            dataset_id,
            dataset_version_id,
            blueprint_id,
            job_id,
            model_id,
            model_name: job["model_name"].as_str().unwrap().to_owned(),
            model_version_id,
            api_key: key["key"].as_str().unwrap().to_owned(),
            api_key_id: id(&key["api_key"]["id"]),
            invitation_id: id(&pending["invitation"]["id"]),
            invitation_token: pending["token"].as_str().unwrap().to_owned(),
        }
    }

    pub fn org_id(&self) -> Uuid {
        self.owner.org_id
    }

    /// Values for every path placeholder of the route tables, naming this
    /// organization's things.
    pub fn placeholders(&self, route: &str) -> BTreeMap<&'static str, String> {
        let id = if route.contains("/datasets/") {
            self.dataset_id
        } else if route.contains("/blueprints/") {
            self.blueprint_id
        } else if route.contains("/jobs/") {
            self.job_id
        } else if route.contains("/models/") {
            self.model_id
        } else if route.contains("/api-keys/") {
            self.api_key_id
        } else if route.contains("/invitations/") {
            self.invitation_id
        } else if route.contains("/members/") {
            self.member_id
        } else if route.contains("/tokens/") {
            self.token_id
        } else {
            Uuid::nil()
        };
        BTreeMap::from([
            ("id", id.to_string()),
            ("version", "1".to_owned()),
            ("org_id", self.org_id().to_string()),
            ("token", self.invitation_token.clone()),
            ("model", format!("{}@1", self.model_name)),
            ("file", "app.css".to_owned()),
            ("code", "en".to_owned()),
        ])
    }

    /// Every id of this organization, to look for in another one's answers.
    pub fn ids(&self) -> Vec<Uuid> {
        vec![
            self.org_id(),
            self.member.user_id,
            self.member_id,
            self.token_id,
            self.dataset_id,
            self.dataset_version_id,
            self.blueprint_id,
            self.job_id,
            self.model_id,
            self.model_version_id,
            self.api_key_id,
            self.invitation_id,
        ]
    }
}

/// A ready model version of `model`, recorded the way the worker records one: its files
/// in the object store (a model card and a stand-in adapter), `manifest.json` with their
/// SHA-256 last, then the row.
async fn model_version(
    app: &TestApp,
    org: Uuid,
    model: Uuid,
    job: Uuid,
    dataset_version: Uuid,
) -> Uuid {
    use sha2::{Digest, Sha256};
    let prefix = format!("orgs/{org}/models/{model}/v1");
    let dir = app.settings.object_store.local_root.join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let files: [(&str, &[u8]); 3] = [
        ("model_card.md", b"# A model card\n"),
        ("adapter_config.json", b"{\"r\": 4}"),
        ("adapter_model.safetensors", b"stand-in weights"),
    ];
    let mut entries = Vec::new();
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).unwrap();
        entries.push(
            json!({ "path": name, "sha256": hex::encode(Sha256::digest(bytes)),
                             "bytes": bytes.len() }),
        );
    }
    let manifest = serde_json::to_vec(
        &json!({ "format": tailor_core::models::MANIFEST_FORMAT, "files": entries }),
    )
    .unwrap();
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();
    let version = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO model_versions (id, org_id, model_id, version, job_id, object_prefix,
             manifest_sha256, metrics, blueprint, dataset_version_id, dataset_sha256,
             base_checkpoints)
         VALUES ($1, $2, $3, 1, $4, $5, $6, '{}', '{}', $7, 'x', '{}')",
    )
    .bind(version)
    .bind(org)
    .bind(model)
    .bind(job)
    .bind(&prefix)
    .bind(hex::encode(Sha256::digest(&manifest)))
    .bind(dataset_version)
    .execute(&app.pool)
    .await
    .expect("recording a model version");
    version
}
