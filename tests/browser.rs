//! The portal in a real browser: headless Chromium driven over the W3C WebDriver protocol
//! (spoken with reqwest, so no extra client crate): sign up through the form, upload a
//! dataset through the upload page (file picker, XHR with the CSRF header), and read its
//! profile page.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages); without them
//! the test says so and passes, as the rest of the suite does not depend on a browser.

mod common;

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::spawn_app;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free port; killed (by its own pid) when dropped.
struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
            {
                let body: Value = r.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("talking to chromedriver");
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {body}");
        body["value"].clone()
    }

    async fn new_session(&self, profile: &Path) -> Browser<'_> {
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
        } } });
        let value = self
            .call(reqwest::Method::POST, "/session", Some(capabilities))
            .await;
        Browser {
            driver: self,
            session: value["sessionId"].as_str().unwrap().to_owned(),
        }
    }
}

struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl Browser<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits up to 20 s for an element matching `css`.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = self
                .driver
                .http
                .post(format!(
                    "{}/session/{}/element",
                    self.driver.url, self.session
                ))
                .json(&json!({ "using": "css selector", "value": css }))
                .send()
                .await
                .unwrap();
            if response.status().is_success() {
                let body: Value = response.json().await.unwrap();
                return body["value"][ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("find {css}: {body}"))
                    .to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} on {}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }

    async fn quit(self) {
        self.driver
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.session),
                None,
            )
            .await;
    }
}

#[tokio::test]
async fn sign_up_upload_a_dataset_and_see_its_profile_in_chromium() {
    // scripts/test installs both; a missing browser is a failure, never a silent pass.
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "{CHROMIUM} and {CHROMEDRIVER} are needed: run scripts/test, which installs them"
    );
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

    browser.go(&format!("{base}/signup")).await;
    browser
        .type_into("input[name=display_name]", "Browser Ada")
        .await;
    browser
        .type_into("input[name=email]", "browser@example.com")
        .await;
    browser
        .type_into("input[name=password]", common::PASSWORD)
        .await;
    browser
        .click("form[action='/signup'] button[type=submit]")
        .await;
    browser.find("a[href='/datasets']").await;

    browser.go(&format!("{base}/datasets")).await;
    browser.type_into("#dataset-name", "Drug reviews").await;
    browser
        .type_into("#dataset-file", csv.to_str().unwrap())
        .await;
    browser.click("#upload-button").await;

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
