//! The outbox relay against real Postgres and RabbitMQ: every submitted job reaches the
//! training queue exactly once, an idempotency key makes one job and one message, an
//! unroutable message stays pending with its error, concurrent relays do not double
//! publish, and stopping the broker while jobs are queued loses nothing (on a private
//! RabbitMQ node that the test starts, stops and starts again).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Auth, Session, TestApp, spawn_app_with};
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions},
};
use reqwest::{Method, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tailor_core::{
    OrgId, Settings,
    jobs::{self, JobMessage, Submission},
    outbox::{self, Publisher},
    queue::{self, Topology},
};
use uuid::Uuid;

const REVIEWS: &str = "review,condition\n\
great drug,Migraine\n\
made me dizzy,Migraine\n\
slept well at last,Insomnia\n\
no effect,Insomnia\n";

type Time = chrono::DateTime<chrono::Utc>;

/// Generous upper bound for anything to happen; only guards against hanging forever.
const PATIENCE: Duration = Duration::from_secs(180);

fn unique_prefix() -> String {
    format!("test-{}", Uuid::new_v4().simple())
}

/// Signs up and uploads a small dataset; returns the session and the version id.
async fn org_with_dataset(app: &TestApp) -> (Session, Uuid) {
    let session = app.sign_up("relay@example.com").await;
    let response = app
        .request(
            Method::POST,
            "/api/v1/datasets?name=reviews&file_name=reviews.csv",
            &Auth::Session(&session),
        )
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(REVIEWS)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    let version = body["version"]["id"].as_str().unwrap().parse().unwrap();
    (session, version)
}

async fn submit(pool: &PgPool, session: &Session, version: Uuid, key: Option<&str>) -> Uuid {
    submit_outcome(pool, session, version, key).await.job_id
}

async fn submit_outcome(
    pool: &PgPool,
    session: &Session,
    version: Uuid,
    key: Option<&str>,
) -> jobs::Submitted {
    jobs::submit(
        pool,
        &Submission {
            org: OrgId(session.org_id),
            user: Some(session.user_id),
            model_name: "relay-test".into(),
            blueprint_id: None,
            blueprint: json!({ "name": "relay-test" }),
            dataset_version_id: version,
            idempotency_key: key.map(str::to_owned),
            max_attempts: 3,
            estimate: None,
        },
    )
    .await
    .expect("submitting a job")
}

async fn submit_many(pool: &PgPool, session: &Session, version: Uuid, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(submit(pool, session, version, None).await);
    }
    ids
}

/// A pool of its own (the app's test pool is small).
fn pool_of(app: &TestApp) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .connect_lazy(app.settings.database.url.expose_secret())
        .unwrap()
}

/// Waits until the relay has published every outbox row.
async fn wait_until_published(pool: &PgPool) {
    let start = Instant::now();
    loop {
        let pending = outbox::pending(pool).await.unwrap();
        if pending == 0 {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{pending} outbox rows still pending after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(settings: &Settings) -> Connection {
    Connection::connect(
        settings.rabbitmq.url.expose_secret(),
        ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ")
}

/// Takes (and acks) every message in the training queue; returns each job id with how
/// often it arrived.
async fn take_all(settings: &Settings) -> BTreeMap<Uuid, usize> {
    let connection = connect(settings).await;
    let channel = connection.create_channel().await.unwrap();
    let t = Topology::new(&settings.rabbitmq);
    let mut seen = BTreeMap::new();
    while let Some(message) = channel
        .basic_get(&t.queue, BasicGetOptions::default())
        .await
        .unwrap()
    {
        let delivery = message.delivery;
        assert_eq!(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*delivery.properties.delivery_mode(), Some(2), "persistent");
        let job: JobMessage = serde_json::from_slice(&delivery.data).unwrap();
        *seen.entry(job.job_id).or_default() += 1;
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    connection.close(200, "test done").await.ok();
    seen
}

async fn delete_topology(settings: &Settings) {
    let connection = connect(settings).await;
    let channel = connection.create_channel().await.unwrap();
    queue::delete(&channel, &Topology::new(&settings.rabbitmq))
        .await
        .unwrap();
    connection.close(200, "test done").await.ok();
}

fn once_each(ids: &[Uuid]) -> BTreeMap<Uuid, usize> {
    ids.iter().map(|id| (*id, 1)).collect()
}

#[tokio::test]
async fn the_portal_relay_publishes_each_job_once_and_is_woken_by_notify() {
    let prefix = unique_prefix();
    let app = spawn_app_with(|s| {
        s.rabbitmq.queue_prefix = prefix.clone();
        // Far longer than the test may take: only NOTIFY can wake the relay in time.
        s.jobs.relay_poll_millis = 3_600_000;
    })
    .await;
    let pool = pool_of(&app);
    let (session, version) = org_with_dataset(&app).await;

    let mut ids = submit_many(&pool, &session, version, 3).await;
    // A double click: the same key is the same job, with one outbox row.
    let first = submit_outcome(&pool, &session, version, Some("click-1")).await;
    let again = submit_outcome(&pool, &session, version, Some("click-1")).await;
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.job_id, again.job_id);
    ids.push(first.job_id);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE job_id = $1")
        .bind(first.job_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    wait_until_published(&pool).await;
    assert_eq!(take_all(&app.settings).await, once_each(&ids));
    let untouched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE attempts > 0 OR last_error IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(untouched, 0, "no row failed on the way");
    delete_topology(&app.settings).await;
}

#[tokio::test]
async fn an_unroutable_message_stays_pending_with_its_error() {
    let prefix = unique_prefix();
    let app = spawn_app_with(|s| {
        s.rabbitmq.queue_prefix = prefix.clone();
        s.jobs.relay_enabled = false;
    })
    .await;
    let pool = pool_of(&app);
    let (session, version) = org_with_dataset(&app).await;
    let job = submit(&pool, &session, version, None).await;

    let settings = &app.settings;
    let t = Topology::new(&settings.rabbitmq);
    let publisher = Publisher::open(settings, t.clone(), queue::delivery_limit(&settings.jobs))
        .await
        .unwrap();
    // Take the queue away behind the relay's back: the exchange now routes nowhere.
    let connection = connect(settings).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(&t.queue, QueueDeleteOptions::default())
        .await
        .unwrap();

    let report = publisher.publish_pending(&pool, 100).await.unwrap();
    assert_eq!(
        (
            report.taken,
            report.published,
            report.failed,
            report.returned
        ),
        (1, 0, 1, 1),
        "{report:?}"
    );
    assert!(!report.broker_lost);
    let (published, attempts, error, delayed): (Option<Time>, i32, Option<String>, bool) =
        sqlx::query_as(
            "SELECT published_at, attempts, last_error, next_attempt_at > now()
             FROM outbox WHERE job_id = $1",
        )
        .bind(job)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(published, None, "an unroutable message is not published");
    assert_eq!(attempts, 1);
    let error = error.expect("last_error is set");
    assert!(error.contains("unroutable"), "{error}");
    assert!(error.contains(&t.exchange), "{error}");
    assert_eq!(outbox::pending(&pool).await.unwrap(), 1);

    // With the queue back, the row waits out its delay, then goes out.
    assert!(delayed, "a refused row waits before its next try");
    publisher.redeclare().await.unwrap();
    let report = publisher.publish_pending(&pool, 100).await.unwrap();
    assert_eq!(report.taken, 0, "{report:?}");
    sqlx::query("UPDATE outbox SET next_attempt_at = now() WHERE job_id = $1")
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
    let report = publisher.publish_pending(&pool, 100).await.unwrap();
    assert_eq!((report.published, report.failed), (1, 0), "{report:?}");
    assert_eq!(outbox::pending(&pool).await.unwrap(), 0);
    assert_eq!(take_all(settings).await, once_each(&[job]));

    publisher.close().await;
    connection.close(200, "test done").await.ok();
    delete_topology(settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_relays_publish_each_row_once() {
    let prefix = unique_prefix();
    let app = spawn_app_with(|s| {
        s.rabbitmq.queue_prefix = prefix.clone();
        s.jobs.relay_enabled = false;
    })
    .await;
    let pool = pool_of(&app);
    let (session, version) = org_with_dataset(&app).await;
    let ids = submit_many(&pool, &session, version, 30).await;

    let (a, b, c) = tokio::join!(
        outbox::drain(&pool, &app.settings),
        outbox::drain(&pool, &app.settings),
        outbox::drain(&pool, &app.settings),
    );
    assert_eq!(a.unwrap() + b.unwrap() + c.unwrap(), ids.len());
    assert_eq!(outbox::pending(&pool).await.unwrap(), 0);
    assert_eq!(take_all(&app.settings).await, once_each(&ids));
    delete_topology(&app.settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_when_the_broker_stops_and_starts_again() {
    broker_restart_loses_nothing(Stop::Graceful).await;
}

/// Quorum queues confirm a message once it is on disk: even a broker killed outright
/// keeps what it confirmed, and the relay publishes again what it did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_is_lost_when_the_broker_is_killed_and_starts_again() {
    broker_restart_loses_nothing(Stop::Kill).await;
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM: RabbitMQ shuts down cleanly.
    Graceful,
    /// SIGKILL to the whole node: no shutdown at all.
    Kill,
}

async fn broker_restart_loses_nothing(how: Stop) {
    let mut broker = PrivateBroker::start().await;
    let prefix = unique_prefix();
    let url = broker.url();
    let app = spawn_app_with(|s| {
        s.rabbitmq.url = SecretString::from(url);
        s.rabbitmq.queue_prefix = prefix.clone();
        s.jobs.relay_poll_millis = 200;
    })
    .await;
    let pool = pool_of(&app);
    let (session, version) = org_with_dataset(&app).await;
    if let Stop::Kill = how {
        // RabbitMQ 3.10 keeps its directory of quorum-queue servers in a DETS file that it
        // saves on a timer: a queue declared seconds before a SIGKILL can come back without
        // a leader. A deployment's queue is old; make this one so with a clean restart.
        let connection = connect(&app.settings).await;
        let channel = connection.create_channel().await.unwrap();
        queue::declare(
            &channel,
            &Topology::new(&app.settings.rabbitmq),
            queue::delivery_limit(&app.settings.jobs),
        )
        .await
        .unwrap();
        connection.close(200, "declared").await.ok();
        broker.stop().await;
        broker.start_again().await;
    }

    // Published while the broker is up: these must survive its restart in the queue.
    let mut ids = submit_many(&pool, &session, version, 3).await;
    wait_until_published(&pool).await;

    // A burst that races with the stop: some are confirmed, some are not.
    ids.extend(submit_many(&pool, &session, version, 10).await);
    match how {
        Stop::Graceful => broker.stop().await,
        Stop::Kill => broker.kill().await,
    }
    eprintln!(
        "{} of 10 rows of the burst were not confirmed before the broker stopped ({how:?})",
        outbox::pending(&pool).await.unwrap()
    );

    // Queued while the broker is down: they wait in the outbox.
    let while_down = submit_many(&pool, &session, version, 5).await;
    ids.extend(&while_down);
    assert!(outbox::pending(&pool).await.unwrap() >= while_down.len() as i64);

    broker.start_again().await;
    wait_until_published(&pool).await;

    let seen = take_all(&app.settings).await;
    let expected: BTreeSet<Uuid> = ids.iter().copied().collect();
    let arrived: BTreeSet<Uuid> = seen.keys().copied().collect();
    assert_eq!(arrived, expected, "every job reached the queue, none other");
    // A message whose confirm was lost in the stop may arrive twice (the worker's claim
    // is idempotent); say so rather than hide it.
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    if !twice.is_empty() {
        eprintln!("published more than once around the restart: {twice:?}");
    }
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    drop(app);
    broker.stop().await;
}

/// A RabbitMQ node of the test's own, on free ports, with its data in a temporary folder,
/// so that stopping it leaves the shared broker on 5672 alone.
struct PrivateBroker {
    dir: tempfile::TempDir,
    node: String,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server script itself, not Debian's wrapper (which switches to the rabbitmq user
/// and its own folders).
fn server_script() -> PathBuf {
    if let Ok(path) = std::env::var("RABBITMQ_SERVER") {
        return PathBuf::from(path);
    }
    let debian = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("rabbitmq-server")
    }
}

impl PrivateBroker {
    async fn start() -> PrivateBroker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let dist_port = free_port();
        let node = format!(
            "tailor-test-{}-{}@localhost",
            std::process::id(),
            Uuid::new_v4().simple()
        );
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let mut broker = PrivateBroker {
            dir,
            node,
            port,
            dist_port,
            child: None,
        };
        broker.start_again().await;
        broker
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node on the same ports and data folder.
    async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker is running");
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("server.out"))
            .unwrap();
        let child = Command::new(server_script())
            // A group of its own, so that `kill` reaches the Erlang VM too.
            .process_group(0)
            .current_dir(d)
            // Erlang keeps its cookie in $HOME; rabbitmqctl would need this same HOME.
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", server_script().display()));
        self.child = Some(child);

        let start = Instant::now();
        let url = self.url();
        loop {
            if let Ok(c) = Connection::connect(&url, ConnectionProperties::default()).await {
                c.close(200, "ready").await.ok();
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the private RabbitMQ node exited ({status}): {}",
                    self.output()
                );
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the private RabbitMQ node did not come up: {}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default()
    }

    /// Stops the node the way an operator would (SIGTERM: the script stops RabbitMQ
    /// cleanly) and waits until it has exited.
    async fn stop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        tokio::task::spawn_blocking(move || terminate(child))
            .await
            .unwrap();
    }

    /// Kills the node's whole process group (the script and the Erlang VM) with SIGKILL.
    async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        })
        .await
        .unwrap();
        // The VM may outlive the script by a moment: wait until the port is free again.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(start.elapsed() < PATIENCE, "the killed node still listens");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
        if std::thread::panicking() {
            // Keep the node's logs for whoever looks into the failure.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!(
                "the private RabbitMQ node's files: {}",
                dir.keep().display()
            );
        }
    }
}
