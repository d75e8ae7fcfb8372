//! The model registry end to end: versions made of a real (tiny) training's files, the
//! version page (metrics against the baseline, confusion matrix, card), publish, archive,
//! roll back, compare, the verified adapter download, and tenancy — against real
//! Postgres and a real object store.
//!
//! A version is recorded the way the worker records one: its files first, `manifest.json`
//! last, then the `model_versions` row for a job of the organization. The last test opens
//! the job and version pages in headless Chromium (needs `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`, which scripts/test installs).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use common::webdriver::{Driver, assert_browser_installed};
use common::{Auth, Session, TestApp, assert_error, spawn_app_with};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tailor_core::{
    OrgId,
    jobs::{self, ClaimOutcome, ClaimRequest, NewModelVersion, Submission},
};
use tailor_modules::blueprint::{Blueprint, ColumnType, DatasetSchema, compile};
use tailor_modules::catalog::{Catalog, load_encoder};
use tailor_modules::evaluate::{EvaluateOptions, Evaluation, train_and_evaluate};
use tailor_modules::heads::Target;
use tailor_modules::package::{self, DatasetInfo, PackageInfo};
use tailor_modules::train::{Examples, InputValue, Row};
use uuid::Uuid;

const TEXTS: [(&str, usize); 12] = [
    (
        "The tenant shall pay rent on the first day of each month.",
        0,
    ),
    ("Rent is due monthly in advance without deduction.", 0),
    ("Late payment of rent incurs a fee of five percent.", 0),
    ("The lessee pays the agreed rent by bank transfer.", 0),
    ("Payment of the rent is owed on the first business day.", 0),
    ("Rent increases are limited to three percent per year.", 0),
    (
        "Either party may terminate this agreement with thirty days notice.",
        1,
    ),
    ("This contract ends automatically after twelve months.", 1),
    (
        "The landlord may terminate the lease for material breach.",
        1,
    ),
    ("Termination requires written notice to the other party.", 1),
    ("The agreement may be cancelled by mutual consent.", 1),
    ("Upon termination the tenant must vacate the premises.", 1),
];

fn csv() -> String {
    let mut s = String::from("clause,clause_type\n");
    for (text, class) in TEXTS {
        let label = ["payment", "termination"][class];
        s.push_str(&format!("\"{text}\",{label}\n"));
    }
    s
}

/// The files of one real model version: a one-epoch LoRA run of all-MiniLM-L6-v2 on
/// twelve clauses (trained once per test binary), its report and its blueprint.
struct Trained {
    files: Vec<(String, Vec<u8>)>,
    manifest: Vec<u8>,
    report: Value,
    blueprint: Value,
}

static TRAINED: OnceLock<Trained> = OnceLock::new();

fn train() -> Trained {
    let dir = PathBuf::from(
        std::env::var("TAILOR_ASSETS").unwrap_or_else(|_| "/var/tmp/tailor-assets".into()),
    );
    assert!(
        dir.join("minilm-l6/model.safetensors").exists(),
        "{} has no minilm-l6: run scripts/fetch-assets",
        dir.display()
    );
    let bp: Blueprint = serde_json::from_value(json!({ "name": "clauses",
        "inputs": [{ "name": "clause", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 32 } }],
        "outputs": [{ "name": "clause_type", "task": "classification", "decoder": { "module": "head/linear" } }],
        "adaptation": { "rank": 4, "alpha": 8, "targets": ["query", "value"] },
        "training": { "epochs": 1, "batch_size": 8, "seed": 3, "validation_split": 0.25 } }))
    .unwrap();
    let schema = DatasetSchema::new([
        ("clause", ColumnType::Text),
        ("clause_type", ColumnType::Category),
    ]);
    let catalog = Catalog::builtin();
    let compiled = compile(&bp, &catalog, &schema).unwrap();
    let data = Examples {
        labels: vec![vec!["payment".into(), "termination".into()]],
        rows: TEXTS
            .iter()
            .map(|(t, c)| Row {
                inputs: vec![InputValue::Text(t.to_string())],
                targets: vec![Target::Class(*c)],
            })
            .collect(),
    };
    let factory =
        |input: &_, lora: Option<&_>, seed| load_encoder(&catalog, &dir, input, lora, seed);
    let Evaluation::Done { model, report } = train_and_evaluate(
        &compiled,
        &data,
        None,
        &factory,
        EvaluateOptions::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap() else {
        panic!("not cancelled")
    };
    let info = PackageInfo {
        dataset: DatasetInfo {
            name: "clauses".into(),
            version: "1".into(),
            sha256: "ab".repeat(32),
            rows: TEXTS.len(),
        },
        base_license: None,
    };
    let set = package::build(&model, &report, &info).unwrap();
    Trained {
        files: set
            .files()
            .map(|(p, b)| (p.to_owned(), b.to_vec()))
            .collect(),
        manifest: set.manifest_bytes(),
        report: serde_json::to_value(&*report).unwrap(),
        blueprint: serde_json::to_value(&model.blueprint).unwrap(),
    }
}

async fn trained() -> &'static Trained {
    if let Some(t) = TRAINED.get() {
        return t;
    }
    let t = tokio::task::spawn_blocking(train).await.unwrap();
    let _ = TRAINED.set(t);
    TRAINED.get().unwrap()
}

/// The portal without its outbox relay (nothing here needs the broker) and with queue
/// names of its own.
async fn spawn_app() -> TestApp {
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    spawn_app_with(move |s| {
        s.rabbitmq.queue_prefix = prefix;
        s.jobs.relay_enabled = false;
    })
    .await
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Uploads the clauses as a dataset; returns the dataset id and its version's id.
async fn dataset(app: &TestApp, session: &Session) -> (Uuid, Uuid) {
    let response = app
        .request(
            Method::POST,
            "/api/v1/datasets?name=clauses&file_name=clauses.csv",
            &Auth::Session(session),
        )
        .body(csv())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    (
        body["dataset_id"].as_str().unwrap().parse().unwrap(),
        body["version"]["id"].as_str().unwrap().parse().unwrap(),
    )
}

/// Records the next version of model "clauses" the way the worker does: a job is
/// submitted and claimed, then `begin_publish`, the files under the version's prefix with
/// `manifest.json` last, and `commit` (the first version is published by it). `epochs`
/// changes the recorded blueprint so that versions differ. Returns the model id.
async fn add_version(app: &TestApp, session: &Session, dataset_version: Uuid, epochs: u64) -> Uuid {
    let t = trained().await;
    let org = OrgId(session.org_id);
    let mut blueprint = t.blueprint.clone();
    blueprint["training"]["epochs"] = json!(epochs);
    let submitted = jobs::submit(
        &app.pool,
        &Submission {
            org,
            user: Some(session.user_id),
            model_name: "clauses".into(),
            blueprint_id: None,
            blueprint: blueprint.clone(),
            dataset_version_id: dataset_version,
            idempotency_key: None,
            max_attempts: 3,
            estimate: None,
        },
    )
    .await
    .unwrap();
    let claimed = jobs::claim(
        &app.pool,
        &ClaimRequest {
            job_id: submitted.job_id,
            owner: "models-test",
            lease_seconds: 300,
            org_concurrency: 10,
        },
    )
    .await
    .unwrap();
    let ClaimOutcome::Claimed(claim) = claimed else {
        panic!("not claimed: {claimed:?}")
    };
    let publication = jobs::begin_publish(&app.pool, claim.fence)
        .await
        .unwrap()
        .expect("the claim holds the job");
    // The local object store is a folder: the files, then manifest.json last.
    let root = app
        .settings
        .object_store
        .local_root
        .join(&publication.prefix);
    for (path, bytes) in &t.files {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    std::fs::write(root.join("manifest.json"), &t.manifest).unwrap();
    let model = publication.model_id;
    publication
        .commit(&NewModelVersion {
            manifest_sha256: hex_sha256(&t.manifest),
            metrics: t.report.clone(),
            blueprint,
            dataset_version_id: dataset_version,
            dataset_sha256: claim.dataset.sha256.clone(),
            base_checkpoints: json!({ "text/minilm-l6": "0".repeat(64) }),
            created_by: claim.created_by,
        })
        .await
        .unwrap();
    model
}

/// An owner with model "clauses" in versions 1..=count; returns (owner, model id).
async fn registry(app: &TestApp, count: i32) -> (Session, Uuid) {
    let owner = app.sign_up("owner@example.com").await;
    let (_, version) = dataset(app, &owner).await;
    let mut model = Uuid::nil();
    for n in 1..=count {
        model = add_version(app, &owner, version, n as u64).await;
    }
    (owner, model)
}

async fn published(app: &TestApp, s: &Session, model: Uuid) -> Value {
    let body: Value = app
        .get(&format!("/api/v1/models/{model}"), &Auth::Session(s))
        .await
        .json()
        .await
        .unwrap();
    body["model"]["published_version"].clone()
}

async fn action(app: &TestApp, s: &Session, path: &str) -> reqwest::Response {
    app.post(path, &Auth::Session(s), &json!({})).await
}

#[tokio::test]
async fn publish_archive_and_roll_back_keep_one_published_version() {
    let app = spawn_app().await;
    let (owner, model) = registry(&app, 3).await;
    let base = format!("/api/v1/models/{model}");

    let list: Value = app
        .get("/api/v1/models", &Auth::Session(&owner))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["name"], "clauses");
    assert_eq!(list[0]["version_count"], 3);
    // The worker publishes a model's first version.
    assert_eq!(list[0]["published_version"], 1);
    assert_eq!(list[0]["published_headline"]["metric"], "macro_f1");

    for n in 1..=3 {
        let r = action(&app, &owner, &format!("{base}/versions/{n}/publish")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(published(&app, &owner, model).await, n);
    }
    // The published version cannot be archived.
    let r = action(&app, &owner, &format!("{base}/versions/3/archive")).await;
    let body = assert_error(r, StatusCode::CONFLICT, "conflict").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("published"),
        "{body}"
    );
    // Roll back: v2 is served again.
    let r = action(&app, &owner, &format!("{base}/rollback")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(published(&app, &owner, model).await, 2);
    // v3 can be archived now, and then not published again.
    let r = action(&app, &owner, &format!("{base}/versions/3/archive")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let archived: Value = r.json().await.unwrap();
    assert_eq!(archived["status"], "archived");
    let r = action(&app, &owner, &format!("{base}/versions/3/publish")).await;
    let body = assert_error(r, StatusCode::CONFLICT, "conflict").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("archived"),
        "{body}"
    );
    assert_eq!(published(&app, &owner, model).await, 2);
    // Archive v1; a rollback from v2 then has nothing left to go to.
    assert_eq!(
        action(&app, &owner, &format!("{base}/versions/1/archive"))
            .await
            .status(),
        StatusCode::OK
    );
    let r = action(&app, &owner, &format!("{base}/rollback")).await;
    assert_error(r, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(published(&app, &owner, model).await, 2);

    // A member may read but not publish; the page forms say the same.
    let invited: Value = app
        .invite(&owner, "member@example.com", "member")
        .await
        .json()
        .await
        .unwrap();
    let member = app.sign_up("member@example.com").await;
    app.accept(&member, invited["token"].as_str().unwrap())
        .await;
    let (_, token) = app.create_token(&member, "t").await;
    let as_member = |method: Method, path: &str| {
        app.request(method, path, &Auth::Bearer(&token))
            .header("X-Tailor-Org", owner.org_id.to_string())
    };
    let r = as_member(Method::GET, &format!("{base}/versions/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = as_member(Method::POST, &format!("{base}/versions/2/publish"))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;

    // The page form publishes too (CSRF in the form).
    let r = app
        .request(
            Method::POST,
            &format!("/models/{model}/versions/1/publish"),
            &Auth::SessionNoCsrf(&owner),
        )
        .form(&[("csrf_token", owner.csrf.as_str())])
        .send()
        .await
        .unwrap();
    // v1 is archived: refused, and nothing changed.
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(published(&app, &owner, model).await, 2);
    let r = app
        .request(
            Method::POST,
            &format!("/models/{model}/versions/2/archive"),
            &Auth::SessionNoCsrf(&owner),
        )
        .form(&[("csrf_token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_version_page_shows_metrics_confusion_matrix_lineage_and_card() {
    let app = spawn_app().await;
    let (owner, model) = registry(&app, 2).await;
    let page = app
        .get(
            &format!("/models/{model}/versions/1"),
            &Auth::Session(&owner),
        )
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("<svg"), "confusion matrix drawn");
    assert!(html.contains("class=\"confusion\""));
    assert!(html.contains("payment") && html.contains("termination"));
    assert!(html.contains("macro_f1"));
    assert!(
        html.contains("id=\"model-card\""),
        "the model card is shown"
    );
    assert!(html.contains("/datasets/"), "links the dataset version");
    assert!(html.contains("/jobs/"), "links the job");
    let dataset_sha: String = sqlx::query_scalar("SELECT sha256 FROM dataset_versions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(html.contains(&dataset_sha));
    // The same page in Chinese.
    let zh = app
        .request(
            Method::GET,
            &format!("/models/{model}/versions/1"),
            &Auth::Session(&owner),
        )
        .header(header::ACCEPT_LANGUAGE, "zh-CN")
        .send()
        .await
        .unwrap();
    assert_eq!(zh.status(), StatusCode::OK);
    assert!(zh.text().await.unwrap().contains("混淆矩阵"));
    for path in ["/models".to_owned(), format!("/models/{model}")] {
        let r = app.get(&path, &Auth::Session(&owner)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let card = app
        .get(
            &format!("/api/v1/models/{model}/versions/1/card"),
            &Auth::Session(&owner),
        )
        .await;
    assert_eq!(card.status(), StatusCode::OK);
    let card = card.text().await.unwrap();
    let stored = &trained()
        .await
        .files
        .iter()
        .find(|(p, _)| p == "model_card.md")
        .unwrap()
        .1;
    assert_eq!(card.as_bytes(), stored.as_slice());
    // Compare: the settings that differ are named.
    let cmp: Value = app
        .get(
            &format!("/api/v1/models/{model}/compare?a=1&b=2"),
            &Auth::Session(&owner),
        )
        .await
        .json()
        .await
        .unwrap();
    let paths: Vec<&str> = cmp["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["training.epochs"], "{cmp}");
    assert_eq!(cmp["outputs"][0]["metric"], "macro_f1");
    assert!(cmp["same_dataset"].as_bool().unwrap());
    let page = app
        .get(
            &format!("/models/{model}/compare?a=1&b=2"),
            &Auth::Session(&owner),
        )
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("training.epochs"));
}

#[tokio::test]
async fn the_adapter_download_is_a_zip_checked_against_the_manifest() {
    let app = spawn_app().await;
    let (owner, model) = registry(&app, 1).await;
    let t = trained().await;
    let path = format!("/api/v1/models/{model}/versions/1/adapter");
    let r = app.get(&path, &Auth::Session(&owner)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/zip");
    let bytes = r.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).unwrap();
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        got.insert(file.name().unwrap().to_string(), content);
    }
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "heads.json",
            "heads.safetensors",
            "manifest.json"
        ]
    );
    for (name, content) in &got {
        if name == "manifest.json" {
            assert_eq!(content, &t.manifest);
        } else {
            let original = &t.files.iter().find(|(p, _)| p == name).unwrap().1;
            assert_eq!(content, original, "{name}");
        }
    }
    // PEFT reads the config: it names LoRA.
    let config: Value = serde_json::from_slice(&got["adapter_config.json"]).unwrap();
    assert_eq!(config["peft_type"], "LORA");

    // A file changed in the object store: refused, not served.
    let file = app.settings.object_store.local_root.join(format!(
        "orgs/{}/models/{model}/v1/adapter_model.safetensors",
        owner.org_id
    ));
    let mut tampered = std::fs::read(&file).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&file, tampered).unwrap();
    let r = app.get(&path, &Auth::Session(&owner)).await;
    let body = assert_error(r, StatusCode::CONFLICT, "conflict").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("manifest"),
        "{body}"
    );
}

#[tokio::test]
async fn another_organizations_models_are_not_found() {
    let app = spawn_app().await;
    let (owner, model) = registry(&app, 2).await;
    action(
        &app,
        &owner,
        &format!("/api/v1/models/{model}/versions/1/publish"),
    )
    .await;
    let other = app.sign_up("other@example.com").await;
    let list: Value = app
        .get("/api/v1/models", &Auth::Session(&other))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
    for path in [
        format!("/api/v1/models/{model}"),
        format!("/api/v1/models/{model}/versions/1"),
        format!("/api/v1/models/{model}/versions/1/adapter"),
        format!("/api/v1/models/{model}/versions/1/card"),
        format!("/api/v1/models/{model}/compare?a=1&b=2"),
    ] {
        let r = app.get(&path, &Auth::Session(&other)).await;
        assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    for path in [
        format!("/api/v1/models/{model}/versions/2/publish"),
        format!("/api/v1/models/{model}/versions/2/archive"),
        format!("/api/v1/models/{model}/rollback"),
    ] {
        let r = action(&app, &other, &path).await;
        assert_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    for path in [
        format!("/models/{model}"),
        format!("/models/{model}/versions/1"),
        format!("/models/{model}/compare?a=1&b=2"),
    ] {
        let r = app.get(&path, &Auth::Session(&other)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // Nothing changed for the owner.
    assert_eq!(published(&app, &owner, model).await, 1);
}

// ---- in a real browser ----

/// Writes a job event as a worker does and wakes the streams.
async fn record(app: &TestApp, org: OrgId, job: Uuid, kind: &str, data: Value) {
    let mut tx = app.pool.begin().await.unwrap();
    jobs::record_event_tx(&mut tx, org, job, kind, &data)
        .await
        .unwrap();
    jobs::notify_event_tx(&mut tx, job).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn the_job_page_follows_a_run_live_and_the_version_page_draws_its_report_in_chromium() {
    let app = spawn_app().await;
    let (owner, model) = registry(&app, 1).await;
    let org = OrgId(owner.org_id);
    let dataset_version: Uuid = sqlx::query_scalar("SELECT id FROM dataset_versions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let job = jobs::submit(
        &app.pool,
        &Submission {
            org,
            user: Some(owner.user_id),
            model_name: "clauses".into(),
            blueprint_id: None,
            blueprint: trained().await.blueprint.clone(),
            dataset_version_id: dataset_version,
            idempotency_key: None,
            max_attempts: 3,
            estimate: None,
        },
    )
    .await
    .unwrap()
    .job_id;
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = 1, started_at = now() WHERE id = $1",
    )
    .bind(job)
    .execute(&app.pool)
    .await
    .unwrap();
    record(&app, org, job, "state", json!({ "state": "running" })).await;
    for step in 1..=3 {
        record(
            &app,
            org,
            job,
            "step",
            json!({ "phase": "tuned", "step": step, "total_steps": 6, "epoch": 1,
                    "loss": 1.0 / step as f64, "eta_seconds": 30 }),
        )
        .await;
    }

    // `localhost` is a secure context, so Chromium keeps the `__Host-` Secure cookie.
    let base = app.address.replace("127.0.0.1", "localhost");
    let profile = tempfile::tempdir().unwrap();
    assert_browser_installed();
    let driver = Driver::start().await;
    let chrome = driver.new_session(profile.path()).await;
    chrome.go(&format!("{base}/signin")).await;
    chrome
        .type_into("input[name=email]", "owner@example.com")
        .await;
    chrome
        .type_into("input[name=password]", common::PASSWORD)
        .await;
    chrome
        .click("form[action='/signin'] button[type=submit]")
        .await;
    chrome.find("a[href='/models']").await;

    // Replayed steps are drawn as the loss curve; a new epoch arrives live.
    chrome.go(&format!("{base}/jobs/{job}")).await;
    chrome.find("#loss-chart polyline").await;
    chrome.find("#event-log tr.kind-step").await;
    record(
        &app,
        org,
        job,
        "epoch",
        json!({ "phase": "tuned", "epoch": 1, "epochs": 2, "train_loss": 0.5,
                "validation_loss": 0.6, "metric": "macro_f1", "value": 0.7 }),
    )
    .await;
    chrome.find("#metric-chart polyline").await;
    chrome.find("#event-log tr.kind-epoch").await;
    // The job fails: the page reloads once and offers the retry.
    sqlx::query(
        "UPDATE jobs SET state = 'failed', error = 'Out of memory at step 4.', finished_at = now()
         WHERE id = $1",
    )
    .bind(job)
    .execute(&app.pool)
    .await
    .unwrap();
    record(&app, org, job, "state", json!({ "state": "failed" })).await;
    chrome.find("#retry-job").await;
    chrome.find("#loss-chart polyline").await;

    // The version page: the confusion matrix as SVG cells, the card's Markdown drawn.
    chrome
        .go(&format!("{base}/models/{model}/versions/1"))
        .await;
    chrome.find("svg.confusion rect").await;
    chrome.find("#model-card.rendered table").await;
    chrome.find("#download-adapter").await;
}
