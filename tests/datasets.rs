//! Datasets end to end: upload through the API, versions, row errors, limits, archive
//! safety, schema changes, tenancy and CSRF — against real Postgres and a real object store.

mod common;

use std::io::{Cursor, Write};
use std::path::PathBuf;

use common::{Auth, Session, TestApp, assert_error, spawn_app, spawn_app_with};
use reqwest::{Method, Response, StatusCode, header};
use serde_json::{Value, json};
use uuid::Uuid;
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

const REVIEWS: &str = "review,condition,rating\n\
great drug,Migraine,9\n\
made me dizzy,Migraine,3\n\
slept well at last,Insomnia,8\n\
no effect,Insomnia,2\n\
cleared my skin,Acne,9\n";

async fn upload(
    app: &TestApp,
    auth: &Auth<'_>,
    name: &str,
    file_name: &str,
    body: Vec<u8>,
) -> Response {
    app.request(
        Method::POST,
        &format!("/api/v1/datasets?name={name}&file_name={file_name}"),
        auth,
    )
    .header(header::CONTENT_TYPE, "application/octet-stream")
    .body(body)
    .send()
    .await
    .unwrap()
}

/// Uploads and expects 201; returns `(dataset id, answer)`.
async fn upload_ok(app: &TestApp, session: &Session, name: &str, body: &str) -> (Uuid, Value) {
    let response = upload(
        app,
        &Auth::Session(session),
        name,
        "reviews.csv",
        body.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    (body["dataset_id"].as_str().unwrap().parse().unwrap(), body)
}

/// Every file stored under `orgs/{org}/`.
fn objects_of(app: &TestApp, org: Uuid) -> Vec<PathBuf> {
    fn walk(dir: PathBuf, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        app.settings
            .object_store
            .local_root
            .join(format!("orgs/{org}")),
        &mut found,
    );
    found
}

async fn rows_of(app: &TestApp, org: Uuid) -> (i64, i64) {
    let datasets: i64 = sqlx::query_scalar("SELECT count(*) FROM datasets WHERE org_id = $1")
        .bind(org)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let versions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dataset_versions WHERE org_id = $1")
            .bind(org)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    (datasets, versions)
}

async fn assert_nothing_stored(app: &TestApp, org: Uuid) {
    assert_eq!(
        rows_of(app, org).await,
        (0, 0),
        "no dataset rows may remain"
    );
    let objects = objects_of(app, org);
    assert!(objects.is_empty(), "no objects may remain: {objects:?}");
}

fn deflated() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in entries {
        writer.start_file(*name, deflated()).unwrap();
        writer.write_all(content).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[tokio::test]
async fn sign_up_sign_in_upload_and_see_the_profile() {
    let app = spawn_app().await;
    app.sign_up("ada@example.com").await;
    let session = app.sign_in("ada@example.com", common::PASSWORD).await;

    let (id, body) = upload_ok(&app, &session, "reviews", REVIEWS).await;
    let version = &body["version"];
    assert_eq!(version["version"], 1);
    assert_eq!(version["row_count"], 5);
    assert_eq!(version["status"], "validated");
    assert_eq!(version["format"], "csv");
    assert_eq!(version["file_name"], "reviews.csv");
    assert_eq!(version["uploaded_by"], session.user_id.to_string());
    let expected_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(REVIEWS.as_bytes()))
    };
    assert_eq!(version["sha256"], expected_sha);
    let types: Vec<(String, String)> = version["schema"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("review".into(), "text".into()),
            ("condition".into(), "category".into()),
            ("rating".into(), "number".into())
        ]
    );

    // The object is where DESIGN.md says, and downloads byte for byte.
    let objects = objects_of(&app, session.org_id);
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(
        objects[0].ends_with(format!("datasets/{id}/v1/data.csv")),
        "{objects:?}"
    );
    let download = app
        .get(
            &format!("/api/v1/datasets/{id}/versions/1/download"),
            &Auth::Session(&session),
        )
        .await;
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.text().await.unwrap(), REVIEWS);

    // JSON profile, list and page.
    let got: Value = app
        .get(
            &format!("/api/v1/datasets/{id}/versions/1"),
            &Auth::Session(&session),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["profile"]["rows"], 5);
    let list: Value = app
        .get("/api/v1/datasets", &Auth::Session(&session))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["name"], "reviews");
    assert_eq!(list[0]["latest_version"], 1);
    let page = app
        .get(&format!("/datasets/{id}"), &Auth::Session(&session))
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("<dd id=\"row-count\">5</dd>"), "{html}");
    assert!(
        html.contains("Label distribution") && html.contains("Migraine"),
        "{html}"
    );
    assert!(
        html.contains("Classes with fewer than 5 examples"),
        "{html}"
    );
    let list_page = app
        .get("/datasets", &Auth::Session(&session))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        list_page.contains(&format!("/datasets/{id}")),
        "{list_page}"
    );
}

#[tokio::test]
async fn a_second_upload_of_the_same_name_is_version_two() {
    let app = spawn_app().await;
    let session = app.sign_up("bo@example.com").await;
    let (first, _) = upload_ok(&app, &session, "reviews", REVIEWS).await;
    let more = format!("{REVIEWS}helps a lot,Acne,8\n");
    let (second, body) = upload_ok(&app, &session, "reviews", &more).await;
    assert_eq!(first, second);
    assert_eq!(body["version"]["version"], 2);
    assert_eq!(body["version"]["row_count"], 6);
    let got: Value = app
        .get(
            &format!("/api/v1/datasets/{first}"),
            &Auth::Session(&session),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["dataset"]["latest_version"], 2);
    assert_eq!(got["versions"].as_array().unwrap().len(), 2);
    // Version 1 is unchanged.
    let v1 = app
        .get(
            &format!("/api/v1/datasets/{first}/versions/1/download"),
            &Auth::Session(&session),
        )
        .await;
    assert_eq!(v1.text().await.unwrap(), REVIEWS);
    assert_eq!(objects_of(&app, session.org_id).len(), 2);
    // Another name is another dataset.
    let (other, body) = upload_ok(&app, &session, "other", REVIEWS).await;
    assert_ne!(other, first);
    assert_eq!(body["version"]["version"], 1);
}

#[tokio::test]
async fn a_token_can_upload_with_the_raw_body() {
    let app = spawn_app().await;
    let session = app.sign_up("tok@example.com").await;
    let (_, token) = app.create_token(&session, "script").await;
    let response = upload(
        &app,
        &Auth::Bearer(&token),
        "reviews",
        "reviews.tsv",
        REVIEWS.replace(',', "\t").into_bytes(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"]["format"], "tsv");
    assert_eq!(body["version"]["row_count"], 5);
}

#[tokio::test]
async fn unreadable_uploads_get_a_clear_error_and_leave_nothing() {
    // 1 MiB uploads: archives may unpack to 16 MiB.
    let app = spawn_app_with(|s| s.application.max_upload_bytes = 1 << 20).await;
    let session = app.sign_up("eve@example.com").await;
    let auth = Auth::Session(&session);
    let cases: Vec<(&str, &str, Vec<u8>, &str, &str)> = vec![
        (
            "bad encoding",
            "a.csv",
            b"text,label\ngood,a\ncaf\xff\xff,b\n".to_vec(),
            "bad_encoding",
            "UTF-8",
        ),
        ("empty", "a.csv", Vec::new(), "empty", "empty"),
        (
            "zip bomb",
            "a.zip",
            zip_bomb(),
            "unpacked_too_large",
            "ZIP bomb",
        ),
        (
            "traversal",
            "a.zip",
            zip_of(&[
                ("manifest.csv", b"file,label\nx.txt,a\n"),
                ("../../etc/cron.d/x", b"boom"),
            ]),
            "unsafe_path",
            "../../etc/cron.d/x",
        ),
    ];
    for (what, file_name, body, code, needle) in cases {
        let response = upload(&app, &auth, "broken", file_name, body).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
        assert_nothing_stored(&app, session.org_id).await;
    }
}

/// 64 MiB of zeros in about 64 KiB: over the 16 × 1 MiB unpacked limit of the test app.
fn zip_bomb() -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    writer.start_file("manifest.csv", deflated()).unwrap();
    writer.write_all(b"file,label\nzeros.bin,a\n").unwrap();
    writer.start_file("zeros.bin", deflated()).unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..64 {
        writer.write_all(&block).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[tokio::test]
async fn row_errors_are_listed_with_line_column_and_total() {
    let app = spawn_app().await;
    let session = app.sign_up("rag@example.com").await;
    let auth = Auth::Session(&session);

    // Ragged CSV: a row with too few and one with too many fields.
    let ragged = "text,label\ngood,a\nshort\nfine,b\ntoo,many,fields\n";
    let response = upload(&app, &auth, "ragged", "r.csv", ragged.as_bytes().to_vec()).await;
    let body = assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "rows_rejected").await;
    assert_eq!(body["error"]["error_count"], 2, "{body}");
    let errors = body["error"]["errors"].as_array().unwrap();
    assert_eq!(errors[0]["line"], 3, "{body}");
    assert_eq!(errors[1]["line"], 5, "{body}");
    assert!(errors[0]["message"].is_string());
    assert_nothing_stored(&app, session.org_id).await;

    // A broken JSON line.
    let jsonl = "{\"text\": \"good\", \"label\": \"a\"}\n{\"text\": \"bad\", \"label\": \n{\"text\": \"ok\", \"label\": \"b\"}\n";
    let response = upload(&app, &auth, "jsonl", "r.jsonl", jsonl.as_bytes().to_vec()).await;
    let body = assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "rows_rejected").await;
    assert_eq!(body["error"]["error_count"], 1, "{body}");
    assert_eq!(body["error"]["errors"][0]["line"], 2, "{body}");
    assert_nothing_stored(&app, session.org_id).await;

    // Many bad rows: the first 100 are listed, all are counted.
    let mut many = String::from("text,label\n");
    for i in 0..250 {
        many.push_str(&format!("row {i}\n"));
    }
    let response = upload(&app, &auth, "many", "m.csv", many.into_bytes()).await;
    let body = assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "rows_rejected").await;
    assert_eq!(body["error"]["error_count"], 250);
    assert_eq!(body["error"]["errors"].as_array().unwrap().len(), 100);
    assert_nothing_stored(&app, session.org_id).await;
}

#[tokio::test]
async fn an_upload_over_the_limit_is_413_naming_the_limit() {
    let app = spawn_app_with(|s| s.application.max_upload_bytes = 1024).await;
    let session = app.sign_up("big@example.com").await;
    let mut big = String::from("text,label\n");
    while big.len() <= 4096 {
        big.push_str("a fairly long line of text,a\n");
    }
    let response = upload(
        &app,
        &Auth::Session(&session),
        "big",
        "big.csv",
        big.into_bytes(),
    )
    .await;
    let body = assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("1 KiB"),
        "{body}"
    );
    assert_eq!(body["error"]["limit_bytes"], 1024);
    assert_nothing_stored(&app, session.org_id).await;
}

#[tokio::test]
async fn an_upload_without_the_csrf_header_or_a_name_is_refused() {
    let app = spawn_app().await;
    let session = app.sign_up("csrf@example.com").await;
    let response = upload(
        &app,
        &Auth::SessionNoCsrf(&session),
        "reviews",
        "r.csv",
        REVIEWS.as_bytes().to_vec(),
    )
    .await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    let response = upload(
        &app,
        &Auth::None,
        "reviews",
        "r.csv",
        REVIEWS.as_bytes().to_vec(),
    )
    .await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = upload(
        &app,
        &Auth::Session(&session),
        "%20",
        "r.csv",
        REVIEWS.as_bytes().to_vec(),
    )
    .await;
    let body = assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "name");
    assert_nothing_stored(&app, session.org_id).await;
}

#[tokio::test]
async fn another_organizations_dataset_is_404_on_every_route() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@example.com").await;
    let (id, _) = upload_ok(&app, &owner, "secret", REVIEWS).await;
    let stranger = app.sign_up("stranger@example.com").await;
    let auth = Auth::Session(&stranger);
    for path in [
        format!("/api/v1/datasets/{id}"),
        format!("/api/v1/datasets/{id}/versions/1"),
        format!("/api/v1/datasets/{id}/versions/1/download"),
        format!("/datasets/{id}"),
        format!("/datasets/{id}?version=1"),
    ] {
        let response = app.get(&path, &auth).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("secret") && !text.contains("Migraine"),
            "{path}: {text}"
        );
    }
    let patch = app
        .patch(
            &format!("/api/v1/datasets/{id}/versions/1/schema"),
            &auth,
            &json!({ "columns": [{ "name": "rating", "type": "text" }] }),
        )
        .await;
    assert_error(patch, StatusCode::NOT_FOUND, "not_found").await;
    let list: Value = app
        .get("/api/v1/datasets", &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
    // The same name in another organization is a separate dataset.
    let (theirs, body) = upload_ok(&app, &stranger, "secret", REVIEWS).await;
    assert_ne!(theirs, id);
    assert_eq!(body["version"]["version"], 1);
    assert_eq!(rows_of(&app, owner.org_id).await, (1, 1));
}

#[tokio::test]
async fn a_viewer_can_read_but_not_upload_or_change_types() {
    let app = spawn_app().await;
    let owner = app.sign_up("own@example.com").await;
    let (id, _) = upload_ok(&app, &owner, "reviews", REVIEWS).await;
    let invited: Value = app
        .invite(&owner, "view@example.com", "viewer")
        .await
        .json()
        .await
        .unwrap();
    let viewer = app.sign_up("view@example.com").await;
    let accepted = app
        .accept(&viewer, invited["token"].as_str().unwrap())
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let (_, token) = app.create_token(&viewer, "read").await;
    let in_org = |method: Method, path: &str| {
        app.request(method, path, &Auth::Bearer(&token))
            .header("X-Tailor-Org", owner.org_id.to_string())
    };
    let read = in_org(Method::GET, &format!("/api/v1/datasets/{id}/versions/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let refused = in_org(Method::POST, "/api/v1/datasets?name=more")
        .body(REVIEWS)
        .send()
        .await
        .unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let refused = in_org(
        Method::PATCH,
        &format!("/api/v1/datasets/{id}/versions/1/schema"),
    )
    .json(&json!({ "columns": [{ "name": "rating", "type": "text" }] }))
    .send()
    .await
    .unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(rows_of(&app, owner.org_id).await, (1, 1));
}

#[tokio::test]
async fn changing_column_types_revalidates_and_makes_a_new_version() {
    let app = spawn_app().await;
    let session = app.sign_up("types@example.com").await;
    let auth = Auth::Session(&session);
    let data = "review,condition,rating\ngreat,Migraine,9\nbad,Migraine,ten\nok,Acne,5\n";
    let (id, body) = upload_ok(&app, &session, "reviews", data).await;
    assert_eq!(body["version"]["schema"]["columns"][2]["type"], "text");

    // `rating` as a number: line 3 does not fit; nothing is written.
    let path = format!("/api/v1/datasets/{id}/versions/1/schema");
    let refused = app
        .patch(
            &path,
            &auth,
            &json!({ "columns": [{ "name": "rating", "type": "number" }] }),
        )
        .await;
    let body = assert_error(refused, StatusCode::UNPROCESSABLE_ENTITY, "rows_rejected").await;
    assert_eq!(body["error"]["errors"][0]["line"], 3, "{body}");
    assert_eq!(body["error"]["errors"][0]["column"], "rating", "{body}");
    assert_eq!(rows_of(&app, session.org_id).await, (1, 1));
    assert_eq!(objects_of(&app, session.org_id).len(), 1);

    // Unknown column or type: a validation error naming the field.
    let unknown = app
        .patch(
            &path,
            &auth,
            &json!({ "columns": [{ "name": "nope", "type": "number" }] }),
        )
        .await;
    assert_error(unknown, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    let bad_type = app
        .patch(
            &path,
            &auth,
            &json!({ "columns": [{ "name": "rating", "type": "float" }] }),
        )
        .await;
    assert_error(bad_type, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;

    // `review` as a category passes: version 2, derived from 1; version 1 is unchanged.
    let changed = app
        .patch(
            &path,
            &auth,
            &json!({ "columns": [{ "name": "review", "type": "category" }] }),
        )
        .await;
    assert_eq!(changed.status(), StatusCode::CREATED);
    let body: Value = changed.json().await.unwrap();
    assert_eq!(body["version"]["version"], 2);
    assert_eq!(body["version"]["derived_from"], 1);
    assert_eq!(body["version"]["schema"]["columns"][0]["type"], "category");
    let v1: Value = app
        .get(&format!("/api/v1/datasets/{id}/versions/1"), &auth)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v1["schema"]["columns"][0]["type"], "text");
    let v2 = app
        .get(&format!("/api/v1/datasets/{id}/versions/2/download"), &auth)
        .await;
    assert_eq!(v2.text().await.unwrap(), data);
}

#[tokio::test]
async fn an_archive_with_a_manifest_is_stored_as_a_zip() {
    let app = spawn_app().await;
    let session = app.sign_up("zip@example.com").await;
    let archive = zip_of(&[
        (
            "manifest.csv",
            b"file,label\nnotes/a.txt,x\nnotes/b.txt,y\n",
        ),
        ("notes/a.txt", b"first"),
        ("notes/b.txt", b"second"),
    ]);
    let response = upload(
        &app,
        &Auth::Session(&session),
        "notes",
        "notes.zip",
        archive,
    )
    .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["version"]["format"], "zip");
    assert_eq!(body["version"]["row_count"], 2);
    let objects = objects_of(&app, session.org_id);
    assert!(objects[0].ends_with("v1/data.zip"), "{objects:?}");
}

#[tokio::test]
async fn the_demo_has_a_dataset_and_making_it_again_changes_nothing() {
    let app = spawn_app().await;
    let demo = tailor_core::demo::ensure_demo_with_dataset(&app.pool, &app.settings)
        .await
        .unwrap();
    let again = tailor_core::demo::ensure_demo_with_dataset(&app.pool, &app.settings)
        .await
        .unwrap();
    assert_eq!(demo.org_id, again.org_id);
    assert_eq!(rows_of(&app, demo.org_id.0).await, (1, 1));
    let rows: i64 = sqlx::query_scalar("SELECT row_count FROM dataset_versions WHERE org_id = $1")
        .bind(demo.org_id.0)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(rows >= 20, "{rows}");
    assert_eq!(objects_of(&app, demo.org_id.0).len(), 1);
    // Signing in as the demo user lands in the demo organization, the only one it has.
    let session = app
        .sign_in(
            tailor_core::demo::DEMO_EMAIL,
            tailor_core::demo::DEMO_PASSWORD,
        )
        .await;
    assert_eq!(session.org_id, demo.org_id.0);
    let orgs: i64 = sqlx::query_scalar("SELECT count(*) FROM org_members WHERE user_id = $1")
        .bind(demo.user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(orgs, 1);
}
