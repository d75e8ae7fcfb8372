//! The job path end to end, timed: signs up on a running portal, uploads a small dataset,
//! starts jobs through the JSON API and waits until workers have finished them, then
//! reads the times Postgres recorded (job created, outbox row confirmed by the broker,
//! `running` state event, finished) and prints a table. `bench/jobs.sh` starts the portal
//! (with its outbox relay) and the workers and runs this; see bench/README.md.
//!
//! Two phases: `BENCH_SEQUENTIAL` jobs one at a time (each waits for the one before, so
//! the latency is the queue path alone), then a burst of `BENCH_JOBS` jobs started as fast
//! as one client can (latency then includes waiting behind other jobs; the throughput is
//! what counts). Settings come from the environment like every Tailor process.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use reqwest::header;
use serde_json::{Value, json};
use sqlx::PgPool;
use tailor_core::{
    Settings, db,
    queue::{self, Topology},
};
use uuid::Uuid;

/// Guards against waiting forever when a worker is missing.
const PATIENCE: Duration = Duration::from_secs(45 * 60);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 24 short reviews, 8 of each label.
fn dataset() -> String {
    let mut csv = String::from("review,rating\n");
    let rows = [
        ("worked well and quickly", "positive"),
        ("my headaches are gone", "positive"),
        ("best medicine I have tried", "positive"),
        ("slept through the night at last", "positive"),
        ("no side effects at all", "positive"),
        ("cleared my skin in weeks", "positive"),
        ("I feel like myself again", "positive"),
        ("would recommend it to anyone", "positive"),
        ("made me dizzy and sick", "negative"),
        ("did nothing for the pain", "negative"),
        ("terrible nausea every day", "negative"),
        ("I stopped after a week", "negative"),
        ("my rash got worse", "negative"),
        ("awful headaches from this", "negative"),
        ("gained weight and felt tired", "negative"),
        ("waste of money", "negative"),
        ("some help but some dizziness", "neutral"),
        ("it is fine I guess", "neutral"),
        ("works on some days", "neutral"),
        ("mild effect, mild side effects", "neutral"),
        ("not sure yet after two weeks", "neutral"),
        ("about the same as before", "neutral"),
        ("helps a little with sleep", "neutral"),
        ("ok but expensive", "neutral"),
    ];
    for (review, rating) in rows {
        csv.push_str(&format!("\"{review}\",{rating}\n"));
    }
    csv
}

fn blueprint(epochs: usize) -> Value {
    json!({
        "name": "bench-review-rating",
        "inputs": [{ "name": "review", "modality": "text",
                     "encoder": { "module": "text/minilm-l6", "max_tokens": 16 } }],
        "outputs": [{ "name": "rating", "task": "classification",
                      "decoder": { "module": "head/linear" } }],
        "adaptation": { "method": "lora", "rank": 4, "alpha": 8, "targets": ["query", "value"] },
        "training": { "epochs": epochs, "batch_size": 8, "seed": 7, "validation_split": 0.25 }
    })
}

struct Portal {
    base: String,
    client: reqwest::Client,
    cookie: String,
    csrf: String,
}

impl Portal {
    async fn sign_up(base: String) -> anyhow::Result<Portal> {
        let client = reqwest::Client::new();
        let start = Instant::now();
        while client.get(format!("{base}/healthz")).send().await.is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("the portal at {base} does not answer");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let email = format!("bench-{}@example.com", Uuid::new_v4().simple());
        let response = client
            .post(format!("{base}/api/v1/signup"))
            .json(
                &json!({ "email": email, "password": "correct horse battery",
                           "display_name": "bench" }),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("signup: {} {}", response.status(), response.text().await?);
        }
        let cookie = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("__Host-tailor_session="))
            .context("no session cookie")?
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await?;
        let csrf = body["csrf_token"]
            .as_str()
            .context("no csrf token")?
            .to_owned();
        Ok(Portal {
            base,
            client,
            cookie,
            csrf,
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, &self.cookie)
            .header("X-CSRF-Token", &self.csrf)
    }

    async fn upload(&self, csv: String) -> anyhow::Result<Uuid> {
        let response = self
            .post("/api/v1/datasets?name=bench&file_name=bench.csv")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(csv)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("upload: {} {}", response.status(), response.text().await?);
        }
        let body: Value = response.json().await?;
        Ok(body["version"]["id"]
            .as_str()
            .context("no version id")?
            .parse()?)
    }

    async fn start(&self, blueprint: &Value, version: Uuid) -> anyhow::Result<Uuid> {
        let response = self
            .post("/api/v1/jobs")
            .json(&json!({ "blueprint": blueprint, "dataset_version_id": version }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("start: {} {}", response.status(), response.text().await?);
        }
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("no Location header")?;
        Ok(location.trim_start_matches("/api/v1/jobs/").parse()?)
    }
}

async fn wait_final(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE id = ANY($1)
             AND state NOT IN ('succeeded', 'failed', 'cancelled')",
        )
        .bind(ids)
        .fetch_one(pool)
        .await?;
        if open == 0 {
            return Ok(());
        }
        if start.elapsed() > PATIENCE {
            bail!("{open} jobs still not finished after {PATIENCE:?}: is a worker running?");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Timing {
    created: DateTime<Utc>,
    published: Option<DateTime<Utc>>,
    running: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
    state: String,
}

async fn timings(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<Timing>> {
    type Row = (
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT j.created_at,
                (SELECT min(o.published_at) FROM outbox o WHERE o.job_id = j.id),
                (SELECT min(e.at) FROM job_events e
                  WHERE e.job_id = j.id AND e.kind = 'state' AND e.data->>'state' = 'running'),
                j.finished_at, j.state
         FROM jobs j WHERE j.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(created, published, running, finished, state)| Timing {
            created,
            published,
            running,
            finished,
            state,
        })
        .collect())
}

/// Nearest-rank percentile of milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn millis(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Option<f64> {
    to.map(|t| (t - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0)
}

fn report(phase: &str, t: &[Timing]) {
    let stat = |f: &dyn Fn(&Timing) -> Option<f64>| {
        let mut v: Vec<f64> = t.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        (percentile(&v, 0.5), percentile(&v, 0.99), v.len())
    };
    let rows: [(&str, (f64, f64, usize)); 3] = [
        (
            "submit → published (broker confirmed)",
            stat(&|x| millis(x.created, x.published)),
        ),
        (
            "submit → running (claimed by a worker)",
            stat(&|x| millis(x.created, x.running)),
        ),
        (
            "running → finished (the job's own work)",
            stat(&|x| x.running.and_then(|r| millis(r, x.finished))),
        ),
    ];
    let succeeded = t.iter().filter(|x| x.state == "succeeded").count();
    let first = t.iter().map(|x| x.created).min();
    let last = t.iter().filter_map(|x| x.finished).max();
    let span = match (first, last) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
        _ => f64::NAN,
    };
    println!();
    println!(
        "{phase}: {} jobs, {succeeded} succeeded, first submit to last finish {span:.1} s, \
         {:.2} jobs/s end to end",
        t.len(),
        t.len() as f64 / span
    );
    println!(
        "| {:<40} | {:>10} | {:>10} | {:>4} |",
        "", "p50 ms", "p99 ms", "n"
    );
    println!("|{:-<42}|{:->12}|{:->12}|{:->6}|", "", "", "", "");
    for (name, (p50, p99, n)) in rows {
        println!("| {name:<40} | {p50:>10.1} | {p99:>10.1} | {n:>4} |");
    }
}

/// Deletes the run's exchanges and queues (after its processes stopped).
async fn delete_queues(settings: &Settings) -> anyhow::Result<()> {
    let connection = queue::connect(&settings.rabbitmq).await?;
    let channel = connection.create_channel().await?;
    queue::delete(&channel, &Topology::new(&settings.rabbitmq)).await?;
    connection.close(200, "bench done").await.ok();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    if std::env::args().nth(1).as_deref() == Some("cleanup") {
        return delete_queues(&settings).await;
    }
    let jobs = env_usize("BENCH_JOBS", 50);
    let sequential = env_usize("BENCH_SEQUENTIAL", 10);
    let epochs = env_usize("BENCH_EPOCHS", 0);
    let pool = db::pool(&settings.database)?;
    let base = format!("http://127.0.0.1:{}", settings.application.port);
    let portal = Portal::sign_up(base).await?;
    let version = portal.upload(dataset()).await?;
    let blueprint = blueprint(epochs);
    println!(
        "jobs of {epochs} epochs on 24 rows; worker concurrency {} per worker process",
        settings.jobs.worker_concurrency
    );

    let mut one_by_one = Vec::new();
    for _ in 0..sequential {
        let id = portal.start(&blueprint, version).await?;
        wait_final(&pool, &[id]).await?;
        one_by_one.push(id);
    }
    if !one_by_one.is_empty() {
        report("one at a time", &timings(&pool, &one_by_one).await?);
    }

    let mut burst = Vec::with_capacity(jobs);
    let started = Instant::now();
    for _ in 0..jobs {
        burst.push(portal.start(&blueprint, version).await?);
    }
    let submitting = started.elapsed();
    wait_final(&pool, &burst).await?;
    println!(
        "\nburst: {jobs} jobs started through the API in {:.2} s ({:.0} starts/s)",
        submitting.as_secs_f64(),
        jobs as f64 / submitting.as_secs_f64()
    );
    report("burst", &timings(&pool, &burst).await?);
    Ok(())
}
