//! The portal in a real browser: headless Chromium driven over the W3C WebDriver protocol
//! (spoken with reqwest, so no extra client crate): sign up through the form, upload a
//! dataset through the upload page (file picker, XHR with the CSRF header), and read its
//! profile page; then assemble a classifier on the assembly page, start it, watch the job
//! page follow the worker to success, and open the model version.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages, installed by
//! `scripts/test`); a missing browser fails the test.

mod common;
mod worker_support;

use std::{path::Path, time::Duration};

use common::spawn_app;
use common::webdriver::{Browser, Driver, ELEMENT, assert_browser_installed};
use serde_json::{Value, json};

async fn sign_up(browser: &Browser<'_>, base: &str, email: &str) {
    browser.go(&format!("{base}/signup")).await;
    browser
        .type_into("input[name=display_name]", "Browser Ada")
        .await;
    browser.type_into("input[name=email]", email).await;
    browser
        .type_into("input[name=password]", common::PASSWORD)
        .await;
    browser
        .click("form[action='/signup'] button[type=submit]")
        .await;
    browser.find("a[href='/datasets']").await;
}

/// Uploads `file` on the datasets page; the page then shows the dataset's profile.
async fn upload(browser: &Browser<'_>, base: &str, name: &str, file: &Path) {
    browser.go(&format!("{base}/datasets")).await;
    browser.type_into("#dataset-name", name).await;
    browser
        .type_into("#dataset-file", file.to_str().unwrap())
        .await;
    browser.click("#upload-button").await;
}

#[tokio::test]
async fn sign_up_upload_a_dataset_and_see_its_profile_in_chromium() {
    assert_browser_installed();
    let app = spawn_app().await;
    // `localhost` is a secure context, so Chromium keeps the `__Host-` Secure cookie.
    let base = app.address.replace("127.0.0.1", "localhost");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("reviews.csv");
    std::fs::write(
        &csv,
        "review,condition,rating\n\
         great drug,Migraine,9\n\
         made me dizzy,Migraine,3\n\
         slept well at last,Insomnia,8\n\
         no effect,Insomnia,2\n\
         cleared my skin,Acne,9\n\
         helps a lot,Acne,8\n",
    )
    .unwrap();

    let driver = Driver::start().await;
    let browser = driver.new_session(&dir.path().join("profile")).await;

    sign_up(&browser, &base, "browser@example.com").await;
    upload(&browser, &base, "Drug reviews", &csv).await;

    // The script follows the 201 to the profile page.
    let rows = browser.text("#row-count").await;
    assert_eq!(rows, "6");
    assert!(browser.current_url().await.contains("/datasets/"));
    let title = browser.text("#dataset-name").await;
    assert!(title.contains("Drug reviews"), "{title}");
    let chart = browser.text(".chart .bars").await;
    assert!(
        chart.contains("Migraine") && chart.contains("Insomnia"),
        "{chart}"
    );

    // The list page shows it too.
    browser.go(&format!("{base}/datasets")).await;
    let list = browser.text("#dataset-list").await;
    assert!(
        list.contains("Drug reviews") && list.contains("v1"),
        "{list}"
    );
    browser.quit().await;
}

/// The row of the assembly page's column table for `column`: its role `<select>`.
const ROLE_SELECT: &str = "return [...document.querySelectorAll('#columns tr')]
    .find(tr => tr.cells[0] && tr.cells[0].textContent.trim() === arguments[0])
    .querySelector('select');";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemble_a_classifier_train_it_and_open_the_model_version_in_chromium() {
    assert_browser_installed();
    // The portal relays jobs to its own queues; an in-process worker trains them.
    let app = worker_support::spawn_worker_app().await;
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        tailor_workers::Worker::build(app.settings.clone())
            .unwrap()
            .run_until(async {
                stopped.await.ok();
            }),
    );
    let base = app.address.replace("127.0.0.1", "localhost");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("reviews.jsonl");
    std::fs::write(&data, worker_support::reviews_jsonl(10)).unwrap();

    let driver = Driver::start().await;
    let browser = driver.new_session(&dir.path().join("profile")).await;
    sign_up(&browser, &base, "assembler@example.com").await;
    upload(&browser, &base, "Drug reviews", &data).await;
    assert_eq!(browser.text("#row-count").await, "30");

    // Assemble: the dataset, review as the input, rating as the output, then settings
    // small enough to train quickly here.
    browser.go(&format!("{base}/blueprints/new")).await;
    browser.type_into("#bp-name", "review-rating").await;
    let dataset = browser.find("#bp-dataset").await;
    let version = browser
        .execute(
            "return document.querySelector('#bp-dataset option[data-version]').value;",
            json!([]),
        )
        .await;
    browser.choose(&dataset, version.as_str().unwrap()).await;
    for (column, role) in [("review", "input"), ("rating", "output")] {
        browser
            .wait_for(
                &format!("the column {column}"),
                &format!(
                    "return [...document.querySelectorAll('#columns tr')]
                       .some(tr => tr.cells[0] && tr.cells[0].textContent.trim() === '{column}');"
                ),
                Duration::from_secs(20),
            )
            .await;
        let select = browser.execute(ROLE_SELECT, json!([column])).await;
        browser
            .choose(select[ELEMENT].as_str().unwrap(), role)
            .await;
    }
    browser
        .set_field("[data-field='inputs[0].encoder.max_tokens']", "32")
        .await;
    browser
        .set_field("[data-field='training.epochs']", "1")
        .await;
    browser
        .set_field("[data-field='training.batch_size']", "8")
        .await;
    // Live validation: the blueprint checks out, and the JSON form shows the same model.
    browser
        .wait_for(
            "the blueprint to validate",
            "return document.getElementById('check-status').className === 'ok';",
            Duration::from_secs(30),
        )
        .await;
    let spec: Value = serde_json::from_str(
        browser
            .execute(
                "return document.getElementById('bp-json').value;",
                json!([]),
            )
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(spec["inputs"][0]["name"], "review", "{spec}");
    assert_eq!(spec["inputs"][0]["encoder"]["max_tokens"], 32, "{spec}");
    assert_eq!(spec["outputs"][0]["name"], "rating", "{spec}");
    assert_eq!(spec["training"]["epochs"], 1, "{spec}");
    let estimate = browser.text("#estimate-summary").await;
    assert!(!estimate.is_empty(), "no estimate shown");

    // Save, then start: the job page follows the worker to the end.
    browser.click("#save").await;
    browser
        .wait_for(
            "the saved blueprint to be startable",
            "return location.pathname.startsWith('/blueprints/')
                && location.pathname !== '/blueprints/new'
                && !document.getElementById('start').disabled;",
            Duration::from_secs(30),
        )
        .await;
    browser.click("#start").await;
    browser.find("#job-state").await;
    assert!(browser.current_url().await.contains("/jobs/"));
    browser
        .wait_for(
            "the job to succeed",
            "const s = document.getElementById('job-state');
             return !!s && s.textContent.toLowerCase().includes('succeeded')
                 || (s && /failed|cancelled/.test(s.textContent.toLowerCase()) && (() => {
                        throw new Error('job ended: ' + s.textContent); })());",
            Duration::from_secs(900),
        )
        .await;
    let curves = browser
        .execute(
            "return document.querySelectorAll('#loss-chart path, #loss-chart polyline, #loss-chart circle').length;",
            json!([]),
        )
        .await;
    assert!(curves.as_u64().unwrap() > 0, "no loss curve drawn");
    let log = browser.text("#event-log").await;
    assert!(!log.is_empty());

    // The model version: its title, the report against the baseline, the card.
    browser.click("#model-version-link").await;
    let title = browser.text("#version-title").await;
    assert!(
        title.contains("review-rating") && title.contains("v1"),
        "{title}"
    );
    let report = browser.text("#output-rating").await;
    assert!(
        report.contains("positive") && report.contains("negative"),
        "{report}"
    );
    browser.find("#download-adapter").await;
    browser.quit().await;

    stop_worker.send(()).ok();
    worker.await.unwrap().unwrap();
}
