//! Blueprints end to end: the catalog, live validation (every error names its field), the
//! data-support refusals, saving, roles, tenancy, JSON/YAML, the estimate, the assembly
//! pages and the demo blueprint — against real Postgres and a real object store.

mod common;

use common::{Auth, Session, TestApp, assert_error, spawn_app};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use uuid::Uuid;

/// Six legal snippets, two of each class (the fewest a class may have).
const CLAUSES: &str = "text,label,year\n\
The tenant shall pay rent monthly.,lease,2020\n\
The landlord keeps the deposit for damage.,lease,2021\n\
Either party may end this agreement with notice.,termination,2019\n\
This contract ends when the term expires.,termination,2022\n\
Each party keeps the other's information secret.,confidentiality,2020\n\
No disclosure of trade secrets is allowed.,confidentiality,2018\n";

/// Uploads `csv` as dataset `name`; returns the version's id.
async fn upload(app: &TestApp, session: &Session, name: &str, csv: &str) -> Uuid {
    let response = app
        .request(
            Method::POST,
            &format!("/api/v1/datasets?name={name}&file_name={name}.csv"),
            &Auth::Session(session),
        )
        .header(header::CONTENT_TYPE, "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    body["version"]["id"].as_str().unwrap().parse().unwrap()
}

fn classifier(name: &str, epochs: i64) -> Value {
    json!({
        "name": name,
        "inputs": [{ "name": "text", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 64 } }],
        "outputs": [{ "name": "label", "task": "classification",
                      "decoder": { "module": "head/linear" } }],
        "adaptation": { "rank": 4, "alpha": 8.0, "targets": ["query", "value"] },
        "training": { "epochs": epochs, "batch_size": 8 }
    })
}

async fn validate(app: &TestApp, session: &Session, spec: &Value, version: Option<Uuid>) -> Value {
    let response = app
        .post(
            "/api/v1/blueprints/validate",
            &Auth::Session(session),
            &json!({ "spec": spec, "dataset_version_id": version }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn fields(errors: &Value) -> Vec<String> {
    errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

fn message_of<'a>(errors: &'a Value, field: &str) -> &'a str {
    errors
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == field)
        .unwrap_or_else(|| panic!("no error for {field}: {errors}"))["message"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn create_validate_update_and_delete_through_the_api() {
    let app = spawn_app().await;
    let session = app.sign_up("assemble@example.com").await;
    let auth = Auth::Session(&session);
    let version = upload(&app, &session, "clauses", CLAUSES).await;

    let checked = validate(&app, &session, &classifier("clause-type", 2), Some(version)).await;
    assert_eq!(checked["valid"], true, "{checked}");
    assert_eq!(checked["errors"], json!([]));
    assert_eq!(checked["compiled"]["outputs"][0]["task"], "classification");
    assert!(checked["estimate"]["total_seconds"].as_f64().unwrap() > 0.0);
    assert!(checked["yaml"].as_str().unwrap().contains("text/minilm-l6"));

    let created = app
        .post(
            "/api/v1/blueprints",
            &auth,
            &json!({ "spec": classifier("clause-type", 2), "dataset_version_id": version }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["name"], "clause-type");
    assert_eq!(created["dataset_name"], "clauses");
    assert_eq!(created["spec"]["training"]["epochs"], 2);

    // The same name twice is a conflict on `name`.
    let twice = app
        .post(
            "/api/v1/blueprints",
            &auth,
            &json!({ "spec": classifier("clause-type", 3) }),
        )
        .await;
    let body = assert_error(twice, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(body["error"]["field"], "name");

    let updated = app
        .request(Method::PUT, &format!("/api/v1/blueprints/{id}"), &auth)
        .json(&json!({ "spec": classifier("clause-type", 3), "dataset_version_id": version }))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    let fetched: Value = app
        .get(&format!("/api/v1/blueprints/{id}"), &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["spec"]["training"]["epochs"], 3);
    let list: Value = app
        .get("/api/v1/blueprints", &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // An update that does not compile changes nothing.
    let mut broken = classifier("clause-type", 3);
    broken["outputs"][0]["decoder"]["module"] = json!("head/mpl");
    let refused = app
        .request(Method::PUT, &format!("/api/v1/blueprints/{id}"), &auth)
        .json(&json!({ "spec": broken, "dataset_version_id": version }))
        .send()
        .await
        .unwrap();
    let body = assert_error(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "outputs[0].decoder.module");
    let fetched: Value = app
        .get(&format!("/api/v1/blueprints/{id}"), &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        fetched["spec"]["outputs"][0]["decoder"]["module"],
        "head/linear"
    );

    let deleted = app.delete(&format!("/api/v1/blueprints/{id}"), &auth).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = app.get(&format!("/api/v1/blueprints/{id}"), &auth).await;
    assert_error(gone, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn every_error_names_its_field() {
    let app = spawn_app().await;
    let session = app.sign_up("errors@example.com").await;
    let version = upload(&app, &session, "clauses", CLAUSES).await;

    // Unknown module (with a suggestion), a column the dataset lacks, no label.
    let spec = json!({
        "name": "broken",
        "inputs": [{ "name": "txt", "modality": "text",
                     "encoder": { "module": "text/minilm-l7" } }],
        "outputs": []
    });
    let checked = validate(&app, &session, &spec, Some(version)).await;
    assert_eq!(checked["valid"], false);
    assert!(checked.get("estimate").is_none(), "{checked}");
    let errors = &checked["errors"];
    let found = fields(errors);
    for field in ["outputs", "inputs[0].encoder.module", "inputs[0].name"] {
        assert!(
            found.iter().any(|f| f == field),
            "{field} missing: {errors}"
        );
    }
    assert_eq!(
        message_of(errors, "outputs"),
        "No column is used as the label: map one column to an output."
    );
    let module = message_of(errors, "inputs[0].encoder.module");
    assert!(module.contains("\"text/minilm-l6\""), "{module}");
    let column = message_of(errors, "inputs[0].name");
    assert!(
        column.contains("\"txt\"") && column.contains("did you mean \"text\""),
        "{column}"
    );

    // A label column of the wrong type, and a LoRA target the encoder lacks.
    let mut wrong = classifier("wrong", 2);
    wrong["outputs"][0]["name"] = json!("year");
    wrong["adaptation"]["targets"] = json!(["query", "vaule"]);
    let checked = validate(&app, &session, &wrong, Some(version)).await;
    let errors = &checked["errors"];
    let year = message_of(errors, "outputs[0].name");
    assert!(
        year.contains("numbers") && year.contains("categories"),
        "{year}"
    );
    assert!(message_of(errors, "adaptation.targets[1]").contains("\"value\""));

    // Saving answers all of them at once, in `details`.
    let refused = app
        .post(
            "/api/v1/blueprints",
            &Auth::Session(&session),
            &json!({ "spec": spec, "dataset_version_id": version }),
        )
        .await;
    let body = assert_error(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "outputs");
    assert_eq!(fields(&body["error"]["details"]).len(), 3, "{body}");

    // Text that is no blueprint at all: one error on `spec`.
    let unreadable = app
        .post(
            "/api/v1/blueprints/validate",
            &Auth::Session(&session),
            &json!({ "spec": "name: [unclosed" }),
        )
        .await;
    let body = assert_error(unreadable, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "spec");
}

#[tokio::test]
async fn a_class_with_one_example_is_refused_in_the_users_words() {
    let app = spawn_app().await;
    let session = app.sign_up("rare@example.com").await;
    let csv = "text,label,year\n\
        great,positive,1\nfine,positive,2\nawful,negative,3\nbad,negative,4\nmeh,neutral,5\n";
    let version = upload(&app, &session, "ratings", csv).await;
    let checked = validate(&app, &session, &classifier("rare", 2), Some(version)).await;
    assert_eq!(checked["valid"], false);
    assert!(checked.get("estimate").is_none());
    assert_eq!(
        message_of(&checked["errors"], "outputs[0].name"),
        "The label column \"label\" has a class \"neutral\" with only 1 example; each class \
         needs at least 2 so that some can be held out for the report. Add examples or merge \
         the class."
    );
    // It still compiles, so it can be saved; the job start refuses it.
    let saved = app
        .post(
            "/api/v1/blueprints",
            &Auth::Session(&session),
            &json!({ "spec": classifier("rare", 2), "dataset_version_id": version }),
        )
        .await;
    assert_eq!(saved.status(), StatusCode::CREATED);

    // One class only.
    let csv = "text,label\nyes,ok\nsure,ok\nfine,ok\n";
    let version = upload(&app, &session, "one-class", csv).await;
    let checked = validate(&app, &session, &classifier("one", 2), Some(version)).await;
    let message = message_of(&checked["errors"], "outputs[0].name");
    assert!(message.contains("only one class (\"ok\")"), "{message}");
}

#[tokio::test]
async fn a_viewer_can_look_but_not_save() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@example.com").await;
    let version = upload(&app, &owner, "clauses", CLAUSES).await;
    let created: Value = app
        .post(
            "/api/v1/blueprints",
            &Auth::Session(&owner),
            &json!({ "spec": classifier("clause-type", 2), "dataset_version_id": version }),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let invited: Value = app
        .invite(&owner, "viewer@example.com", "viewer")
        .await
        .json()
        .await
        .unwrap();
    let viewer = app.sign_up("viewer@example.com").await;
    let accepted = app
        .accept(&viewer, invited["token"].as_str().unwrap())
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let auth = Auth::Session(&viewer);

    let read = app.get(&format!("/api/v1/blueprints/{id}"), &auth).await;
    assert_eq!(read.status(), StatusCode::OK);
    let checked = validate(&app, &viewer, &classifier("x", 2), Some(version)).await;
    assert_eq!(checked["valid"], true);

    let refused = app
        .post(
            "/api/v1/blueprints",
            &auth,
            &json!({ "spec": classifier("mine", 2) }),
        )
        .await;
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let refused = app
        .request(Method::PUT, &format!("/api/v1/blueprints/{id}"), &auth)
        .json(&json!({ "spec": classifier("clause-type", 9) }))
        .send()
        .await
        .unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let refused = app.delete(&format!("/api/v1/blueprints/{id}"), &auth).await;
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;

    // The page shows the blueprint, without a save button, and says why.
    let page = app.get(&format!("/blueprints/{id}"), &auth).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("viewer-notice") && !html.contains("id=\"save\""));
    assert!(html.contains("data-can-write=\"false\""));
}

#[tokio::test]
async fn another_organizations_blueprint_answers_404() {
    let app = spawn_app().await;
    let alice = app.sign_up("alice@example.com").await;
    let bob = app.sign_up("bob@example.com").await;
    let version = upload(&app, &alice, "clauses", CLAUSES).await;
    let created: Value = app
        .post(
            "/api/v1/blueprints",
            &Auth::Session(&alice),
            &json!({ "spec": classifier("secret", 2), "dataset_version_id": version }),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let auth = Auth::Session(&bob);
    for response in [
        app.get(&format!("/api/v1/blueprints/{id}"), &auth).await,
        app.request(Method::PUT, &format!("/api/v1/blueprints/{id}"), &auth)
            .json(&json!({ "spec": classifier("secret", 2) }))
            .send()
            .await
            .unwrap(),
        app.delete(&format!("/api/v1/blueprints/{id}"), &auth).await,
    ] {
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    let page = app.get(&format!("/blueprints/{id}"), &auth).await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    // Alice's dataset version is not Bob's to check against either.
    let response = app
        .post(
            "/api/v1/blueprints/validate",
            &auth,
            &json!({ "spec": classifier("x", 2), "dataset_version_id": version }),
        )
        .await;
    let body = assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "dataset_version_id");
    let list: Value = app
        .get("/api/v1/blueprints", &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn the_catalog_lists_minilm_with_its_lora_targets() {
    let app = spawn_app().await;
    let session = app.sign_up("catalog@example.com").await;
    let catalog: Value = app
        .get("/api/v1/catalog", &Auth::Session(&session))
        .await
        .json()
        .await
        .unwrap();
    let minilm = catalog["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "text/minilm-l6")
        .expect("text/minilm-l6 in the catalog");
    assert_eq!(minilm["kind"], "encoder");
    assert_eq!(minilm["modality"], "text");
    for target in ["query", "key", "value", "dense"] {
        assert!(
            minilm["lora_targets"]
                .as_array()
                .unwrap()
                .contains(&json!(target)),
            "{minilm}"
        );
    }
    assert_eq!(minilm["default_lora_targets"], json!(["query", "value"]));
    let epochs = catalog["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["field"] == "training.epochs")
        .unwrap();
    assert!(
        epochs["min"].is_number() && epochs["max"].is_number(),
        "{epochs}"
    );
    assert_eq!(epochs["auto"], true);
    let presets: Vec<&str> = catalog["presets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        presets,
        [
            "legal_document_classification",
            "clause_extraction",
            "medical_note_triage"
        ]
    );
    // The catalog needs a signed-in caller, like the rest of the API.
    let anonymous = app.get("/api/v1/catalog", &Auth::None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn json_and_yaml_round_trip() {
    let app = spawn_app().await;
    let session = app.sign_up("yaml@example.com").await;
    let version = upload(&app, &session, "clauses", CLAUSES).await;
    let original = classifier("round-trip", 2);

    let from_json = validate(&app, &session, &original, Some(version)).await;
    let yaml = from_json["yaml"].as_str().unwrap().to_owned();
    assert!(yaml.contains("name: round-trip"), "{yaml}");
    let from_yaml = validate(&app, &session, &Value::String(yaml.clone()), Some(version)).await;
    assert_eq!(from_yaml["blueprint"], from_json["blueprint"]);
    assert_eq!(from_yaml["blueprint"], original);
    assert_eq!(from_yaml["yaml"], yaml);
    assert_eq!(from_yaml["valid"], true);

    // Saved from YAML text, read back as the same JSON.
    let saved = app
        .post(
            "/api/v1/blueprints",
            &Auth::Session(&session),
            &json!({ "spec": yaml, "dataset_version_id": version }),
        )
        .await;
    assert_eq!(saved.status(), StatusCode::CREATED);
    let saved: Value = saved.json().await.unwrap();
    assert_eq!(saved["spec"], original);

    // JSON text works as well as an object.
    let text = Value::String(original.to_string());
    let from_text = validate(&app, &session, &text, Some(version)).await;
    assert_eq!(from_text["blueprint"], original);
}

#[tokio::test]
async fn the_estimate_grows_with_rows_and_epochs() {
    let app = spawn_app().await;
    let session = app.sign_up("estimate@example.com").await;
    let small = upload(&app, &session, "small", CLAUSES).await;
    let mut many = String::from("text,label,year\n");
    for i in 0..40 {
        // Distinct texts, or the column would look like categories.
        let line = CLAUSES.lines().nth(1 + i % 6).unwrap();
        let (text, rest) = line.split_once(',').unwrap();
        many.push_str(&format!("{text} (clause {i}),{rest}\n"));
    }
    let large = upload(&app, &session, "large", &many).await;
    let total = |v: &Value| {
        v["estimate"]["total_seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("no estimate: {v}"))
    };
    let bp = classifier("e", 2);
    let on_small = validate(&app, &session, &bp, Some(small)).await;
    let on_large = validate(&app, &session, &bp, Some(large)).await;
    let longer = validate(&app, &session, &classifier("e", 6), Some(small)).await;
    assert!(total(&on_large) > total(&on_small), "{on_small} {on_large}");
    assert!(total(&longer) > total(&on_small));
    assert_eq!(on_large["estimate"]["rows"], 40);
    assert_eq!(longer["estimate"]["epochs"], 6);
    assert!(on_small["estimate"]["baseline_seconds"].as_f64().unwrap() > 0.0);
    assert!(on_small["estimate"]["evaluation_seconds"].as_f64().unwrap() > 0.0);
    assert!(on_small["estimate"]["peak_memory_bytes"].as_u64().unwrap() > 100 << 20);
}

#[tokio::test]
async fn the_assembly_pages_render_in_both_languages() {
    let app = spawn_app().await;
    let session = app.sign_up("pages@example.com").await;
    let version = upload(&app, &session, "clauses", CLAUSES).await;
    let created: Value = app
        .post(
            "/api/v1/blueprints",
            &Auth::Session(&session),
            &json!({ "spec": classifier("clause-type", 2), "dataset_version_id": version }),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    for (lang, word) in [("en", "Assemble a model"), ("zh-CN", "组装模型")] {
        let get = |path: String| {
            app.request(Method::GET, &path, &Auth::SessionNoCsrf(&session))
                .header(header::ACCEPT_LANGUAGE, lang)
                .send()
        };
        let list = get("/blueprints".into()).await.unwrap();
        assert_eq!(list.status(), StatusCode::OK);
        let html = list.text().await.unwrap();
        assert!(
            html.contains("clause-type") && html.contains(word),
            "{lang}"
        );
        let new = get("/blueprints/new?preset=medical_note_triage".into())
            .await
            .unwrap();
        assert_eq!(new.status(), StatusCode::OK);
        let html = new.text().await.unwrap();
        assert!(html.contains("medical-note-triage"), "{lang}");
        let edit = get(format!("/blueprints/{id}")).await.unwrap();
        assert_eq!(edit.status(), StatusCode::OK);
        let html = edit.text().await.unwrap();
        // The start form posts to the jobs route with a fresh idempotency key.
        assert!(html.contains("action=\"/jobs\""));
        assert!(html.contains(&format!("name=\"blueprint_id\" value=\"{id}\"")));
        assert!(html.contains(&format!("value=\"{version}\"")));
        assert!(html.contains("name=\"idempotency_key\""));
    }
    let js = app.get("/static/blueprints.js", &Auth::None).await;
    assert_eq!(js.status(), StatusCode::OK);
    assert!(
        js.text()
            .await
            .unwrap()
            .contains("/api/v1/blueprints/validate")
    );
}

#[tokio::test]
async fn the_demo_has_a_blueprint_that_passes_every_check() {
    let app = spawn_app().await;
    let demo = tailor_core::demo::ensure_demo_with_dataset(&app.pool, &app.settings)
        .await
        .unwrap();
    // Idempotent.
    tailor_core::demo::ensure_demo_with_dataset(&app.pool, &app.settings)
        .await
        .unwrap();
    let all = tailor_core::blueprints::list(&app.pool, demo.org_id)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    let saved = &all[0];
    assert_eq!(saved.name, tailor_core::blueprints::DEMO_BLUEPRINT);
    let version_id: Uuid =
        sqlx::query_scalar("SELECT id FROM dataset_versions WHERE org_id = $1 AND dataset_id = $2")
            .bind(demo.org_id)
            .bind(saved.dataset_id.unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let version = tailor_core::blueprints::dataset_version(&app.pool, demo.org_id, version_id)
        .await
        .unwrap()
        .unwrap();
    let blueprint = tailor_portal::assembly::parse_spec(&saved.spec.0).unwrap();
    let assessment = tailor_portal::assembly::assess(&blueprint, Some(&version));
    assert!(assessment.errors.is_empty(), "{:?}", assessment.errors);
    let estimate = assessment.estimate.unwrap();
    // Small enough to train in a few minutes on two cores.
    assert!(estimate.total_seconds < 15.0 * 60.0, "{estimate:?}");
    assert_eq!(estimate.epochs, 2);
    assert!(estimate.tokens_per_row <= 64, "{estimate:?}");
}
