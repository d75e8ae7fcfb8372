//! Prometheus metrics: one registry per process, served at `/metrics` by the portal, the
//! gateway and the worker (the worker through [`serve_internal`]) in the text format.
//!
//! Every metric is defined here, so the catalogue is in one place (docs/operations.md
//! lists it): HTTP requests by route *pattern* (`/api/v1/jobs/{job}`, never the raw path,
//! so label values stay bounded) and status, with latency histograms; jobs by state and
//! queue depth, read on scrape (one grouped count in Postgres, one passive queue declare);
//! training step time, checkpoint and publish durations (worker); batch sizes, cache hits
//! and misses and adapter loads (gateway). `tailor up` runs every part in one process, so
//! HTTP metrics carry a `service` label.
//!
//! [`RequestTracing`] is also where each request gets its id: a `request` span with
//! `request_id` (the caller's `X-Request-Id` when it is sane, else a new one, echoed in
//! the response), `route` and an empty `org_id` that extractors fill. JSON logs carry the
//! span's fields, so every line a request logs names its request and organization.

use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{App, HttpResponse, HttpServer, web};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::settings::RabbitMqSettings;

/// The process's registry.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    REGISTRY
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric"))
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

/// Request latencies: 5 ms to 60 s (uploads and the inference queue are slow).
fn latency_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

/// Durations of job phases: 10 ms to 10 minutes.
fn job_buckets() -> Vec<f64> {
    vec![
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
    ]
}

/// HTTP requests answered, by service, method, route pattern and status.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "tailor_http_requests_total",
        "HTTP requests answered, by service, method, route pattern and status.",
        &["service", "method", "route", "status"],
    )
});

/// HTTP request latency, by service, method and route pattern.
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "tailor_http_request_duration_seconds",
        "Time to answer an HTTP request (to its first byte), by service, method and route pattern.",
        &["service", "method", "route"],
        latency_buckets(),
    )
});

/// Jobs by state (set from Postgres on each scrape).
pub static JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "tailor_jobs",
        "Training jobs by state, counted in Postgres when scraped.",
        &["state"],
    )
});

/// Messages waiting in the training queue and its dead-letter queue (on each scrape).
pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "tailor_queue_messages",
        "Messages ready in a RabbitMQ queue (training and dead-letter), read when scraped.",
        &["queue"],
    )
});

/// Whether the last scrape could read the jobs and queue figures (1) or not (0).
pub static SCRAPE_OK: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "tailor_scrape_source_up",
        "Whether the last scrape read its source (postgres, rabbitmq): 1 yes, 0 no.",
        &["source"],
    )
});

/// Training step time (worker), by run (`baseline` or `tuned`).
pub static TRAINING_STEP: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "tailor_training_step_seconds",
        "Time of one training step, progress write included, by run (baseline, tuned).",
        &["phase"],
        job_buckets(),
    )
});

/// Checkpoint writes (worker).
pub static CHECKPOINT: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "tailor_checkpoint_seconds",
        "Time to write a training checkpoint to the object store and record it.",
        job_buckets(),
    )
});

/// Model version publications (worker): files, manifest, version row.
pub static PUBLISH: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "tailor_publish_seconds",
        "Time to publish a model version: its files, manifest and row.",
        job_buckets(),
    )
});

/// Whole job attempts (worker), by how they ended.
pub static JOB_ATTEMPTS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "tailor_job_attempt_seconds",
        "Time of one job attempt from claim to end, by outcome (succeeded, failed, cancelled, released, lost).",
        &["outcome"],
        job_buckets(),
    )
});

/// Jobs training in this worker now.
pub static JOBS_RUNNING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "tailor_worker_jobs_running",
        "Jobs this worker process is training now.",
    )
});

/// Rows per forward batch (gateway), by kind (`predict`, `embed`).
pub static BATCH_ROWS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "tailor_gateway_batch_rows",
        "Rows run together for one model version by the inference thread, by kind.",
        &["kind"],
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
    )
});

/// Time of one batch on the inference thread (gateway).
pub static BATCH_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "tailor_gateway_batch_seconds",
        "Time the inference thread spent on one batch, by kind.",
        &["kind"],
        latency_buckets(),
    )
});

/// Model version cache lookups that found the version loaded.
pub static CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tailor_gateway_cache_hits_total",
        "Model version lookups answered from the gateway's cache.",
    )
});

/// Model version cache lookups that had to load it.
pub static CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tailor_gateway_cache_misses_total",
        "Model version lookups that had to load the version.",
    )
});

/// Adapter loads by the gateway (`shared`: over a base already loaded, or `alone`).
pub static ADAPTER_LOADS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "tailor_gateway_adapter_load_seconds",
        "Time to read, verify and load a model version's adapter, by whether its base was shared.",
        &["shared"],
        job_buckets(),
    )
});

/// What the gateway's cache holds (set on scrape).
pub static CACHE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "tailor_gateway_cache",
        "The model cache: versions, used_bytes, budget_bytes, shared_bases.",
        &["figure"],
    )
});

/// Measures from now until [`Timer::stop`] into `histogram` (with `labels`).
pub struct Timer {
    started: Instant,
}

impl Timer {
    pub fn start() -> Self {
        Timer {
            started: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn stop_into(self, histogram: &Histogram) {
        histogram.observe(self.started.elapsed().as_secs_f64());
    }

    pub fn stop(self, histogram: &HistogramVec, labels: &[&str]) {
        histogram
            .with_label_values(labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Registers every family, so that a scrape lists them all before their first use.
fn register_all() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_DURATION);
    LazyLock::force(&JOBS);
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&SCRAPE_OK);
    LazyLock::force(&TRAINING_STEP);
    LazyLock::force(&CHECKPOINT);
    LazyLock::force(&PUBLISH);
    LazyLock::force(&JOB_ATTEMPTS);
    LazyLock::force(&JOBS_RUNNING);
    LazyLock::force(&BATCH_ROWS);
    LazyLock::force(&BATCH_DURATION);
    LazyLock::force(&CACHE_HITS);
    LazyLock::force(&CACHE_MISSES);
    LazyLock::force(&ADAPTER_LOADS);
    LazyLock::force(&CACHE_BYTES);
}

/// The text exposition of every metric of this process.
pub fn render() -> String {
    register_all();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut out)
        .expect("encoding metrics as text");
    String::from_utf8(out).expect("the text format is UTF-8")
}

const JOB_STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// Sets [`JOBS`] from Postgres (one grouped count).
pub async fn refresh_jobs(pool: &PgPool) -> anyhow::Result<()> {
    let rows: Vec<(String, i64)> = tokio::time::timeout(
        Duration::from_secs(3),
        sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state").fetch_all(pool),
    )
    .await??;
    for state in JOB_STATES {
        let n = rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        JOBS.with_label_values(&[state]).set(n);
    }
    Ok(())
}

/// Reads queue depths with a passive declare on a connection kept between scrapes.
pub struct QueueProbe {
    settings: RabbitMqSettings,
    queues: Vec<String>,
    channel: Mutex<Option<(lapin::Connection, lapin::Channel)>>,
}

impl QueueProbe {
    pub fn new(settings: &RabbitMqSettings) -> Self {
        let topology = crate::queue::Topology::new(settings);
        QueueProbe {
            settings: settings.clone(),
            queues: vec![topology.queue, topology.dead_queue],
            channel: Mutex::new(None),
        }
    }

    /// Sets [`QUEUE_DEPTH`] for the training and dead-letter queues. A queue that does
    /// not exist yet (no relay or worker declared it) counts 0 messages.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let mut held = self.channel.lock().await;
        let usable = held
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !usable {
            let connection = tokio::time::timeout(
                Duration::from_secs(3),
                crate::queue::connect(&self.settings),
            )
            .await??;
            let channel = connection.create_channel().await?;
            *held = Some((connection, channel));
        }
        let (_, channel) = held.as_ref().expect("connected above");
        for queue in &self.queues {
            let declared = tokio::time::timeout(
                Duration::from_secs(3),
                channel.queue_declare(
                    queue,
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await?;
            match declared {
                Ok(q) => QUEUE_DEPTH
                    .with_label_values(&[queue.as_str()])
                    .set(i64::from(q.message_count())),
                Err(e) => {
                    // A failed passive declare (404) closes the channel: open another
                    // next time, and report the queue as empty meanwhile.
                    *held = None;
                    tracing::debug!(queue, error = %e, "queue depth");
                    QUEUE_DEPTH.with_label_values(&[queue.as_str()]).set(0);
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

type Hook = Arc<dyn Fn() + Send + Sync>;

/// What a `/metrics` scrape reads besides the registry: jobs from Postgres, queue depth
/// from RabbitMQ, and a hook that sets a service's own gauges.
#[derive(Clone, Default)]
pub struct Scrape {
    pool: Option<PgPool>,
    queues: Option<Arc<QueueProbe>>,
    hook: Option<Hook>,
}

impl Scrape {
    pub fn new() -> Self {
        Scrape::default()
    }

    /// Counts jobs by state in this database on each scrape.
    pub fn with_jobs(mut self, pool: PgPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Reads the training queue's depth on each scrape.
    pub fn with_queue(mut self, settings: &RabbitMqSettings) -> Self {
        self.queues = Some(Arc::new(QueueProbe::new(settings)));
        self
    }

    pub fn with_hook(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Refreshes the scrape-time figures, then renders every metric. A source that is
    /// down does not fail the scrape: its `tailor_scrape_source_up` is 0.
    pub async fn render(&self) -> String {
        if let Some(pool) = &self.pool {
            let ok = refresh_jobs(pool).await;
            if let Err(e) = &ok {
                tracing::warn!(error = %format!("{e:#}"), "metrics: counting jobs");
            }
            SCRAPE_OK
                .with_label_values(&["postgres"])
                .set(i64::from(ok.is_ok()));
        }
        if let Some(queues) = &self.queues {
            let ok = queues.refresh().await;
            if let Err(e) = &ok {
                tracing::warn!(error = %format!("{e:#}"), "metrics: reading queue depth");
            }
            SCRAPE_OK
                .with_label_values(&["rabbitmq"])
                .set(i64::from(ok.is_ok()));
        }
        if let Some(hook) = &self.hook {
            hook();
        }
        render()
    }
}

/// `GET /metrics` with `scrape` as app data.
pub fn configure(scrape: Scrape) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::new(scrape))
            .route("/metrics", web::get().to(metrics_handler));
    }
}

async fn metrics_handler(scrape: web::Data<Scrape>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(scrape.render().await)
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's request id when it is short and plain, else a new one.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

type MiddlewareFuture<B> =
    Pin<Box<dyn Future<Output = Result<ServiceResponse<B>, actix_web::Error>>>>;

/// The HTTP middleware of every service: a `request` span with the request id, and the
/// request counter and latency histogram by route pattern. Use as
/// `App::new().wrap(from_fn(RequestTracing::service("portal")))`.
pub struct RequestTracing;

impl RequestTracing {
    #[allow(clippy::type_complexity)]
    pub fn service<B: MessageBody + 'static>(
        service: &'static str,
    ) -> impl Fn(ServiceRequest, Next<B>) -> MiddlewareFuture<B> + Clone + 'static {
        move |req, next| Box::pin(track(service, req, next))
    }
}

async fn track<B: MessageBody + 'static>(
    service: &'static str,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id(&req);
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        service,
        method = %method,
        route = tracing::field::Empty,
        org_id = tracing::field::Empty,
    );
    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let (route, status) = match &result {
        Ok(response) => (
            response
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into()),
            response.status().as_u16(),
        ),
        Err(e) => (
            "unmatched".into(),
            e.as_response_error().status_code().as_u16(),
        ),
    };
    HTTP_REQUESTS
        .with_label_values(&[service, &method, &route, &status.to_string()])
        .inc();
    HTTP_DURATION
        .with_label_values(&[service, &method, &route])
        .observe(elapsed.as_secs_f64());
    span.record("route", route.as_str());
    span.in_scope(|| {
        tracing::info!(
            target: "tailor::http",
            status,
            ms = elapsed.as_secs_f64() * 1000.0,
            "answered"
        )
    });
    let mut response = result?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    Ok(response)
}

/// Whether a process is ready to work (the worker's `/readyz`).
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = crate::health::Readiness> + Send>> + Send + Sync>;

/// A small HTTP listener for a process without an HTTP API (the worker): `/metrics`,
/// `/healthz` and `/readyz`, served on the current Tokio runtime until [`stop`].
///
/// [`stop`]: InternalServer::stop
pub struct InternalServer {
    port: u16,
    handle: ServerHandle,
}

impl InternalServer {
    pub fn start(
        listener: TcpListener,
        service: &'static str,
        scrape: Scrape,
        ready: ReadyCheck,
    ) -> std::io::Result<InternalServer> {
        let port = listener.local_addr()?.port();
        let ready = web::Data::new(ready);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(RequestTracing::service(
                    service,
                )))
                .app_data(ready.clone())
                .configure(configure(scrape.clone()))
                .route(
                    "/healthz",
                    web::get().to(|| async {
                        HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
                    }),
                )
                .route("/readyz", web::get().to(readyz))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        tracing::info!(port, service, "metrics and health listening");
        Ok(InternalServer { port, handle })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops listening (requests in flight finish).
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

async fn readyz(ready: web::Data<ReadyCheck>) -> HttpResponse {
    let readiness = (ready.get_ref())().await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness)
    } else {
        HttpResponse::ServiceUnavailable().json(readiness)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_every_family_with_its_help() {
        HTTP_REQUESTS
            .with_label_values(&["test", "GET", "/things/{id}", "200"])
            .inc();
        let text = render();
        assert!(
            text.contains("# TYPE tailor_http_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tailor_http_requests_total{method="GET",route="/things/{id}",service="test",status="200"} "#
            ),
            "{text}"
        );
        // Families not used yet are listed too.
        assert!(
            text.contains("# TYPE tailor_gateway_cache_misses_total counter"),
            "{text}"
        );
    }

    #[test]
    fn a_request_id_from_the_caller_is_kept_only_when_plain() {
        use actix_web::test::TestRequest;
        let plain = TestRequest::default()
            .insert_header(("x-request-id", "abc-123"))
            .to_srv_request();
        assert_eq!(request_id(&plain), "abc-123");
        let odd = TestRequest::default()
            .insert_header(("x-request-id", "a b\"c"))
            .to_srv_request();
        assert_eq!(request_id(&odd).len(), 32);
        let long = TestRequest::default()
            .insert_header(("x-request-id", "x".repeat(65)))
            .to_srv_request();
        assert_ne!(request_id(&long), "x".repeat(65));
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[actix_web::test]
    async fn json_logs_and_metrics_carry_the_request_its_route_and_its_organization() {
        use actix_web::test::{TestRequest, call_service, init_service};
        use tracing_subscriber::prelude::*;

        let logs = Captured::default();
        let subscriber =
            tracing_subscriber::registry().with(crate::telemetry::json_layer(logs.clone()));
        let _guard = tracing::subscriber::set_default(subscriber);
        let app = init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(RequestTracing::service(
                    "log-test",
                )))
                .route(
                    "/orgs/{org}/things",
                    web::get().to(|org: web::Path<String>| async move {
                        // What the portal's member extractor does.
                        tracing::Span::current().record("org_id", org.as_str());
                        tracing::info!("inside the handler");
                        HttpResponse::Ok().finish()
                    }),
                ),
        )
        .await;
        let response = call_service(
            &app,
            TestRequest::get()
                .uri("/orgs/o-42/things")
                .insert_header(("x-request-id", "req-7"))
                .to_request(),
        )
        .await;
        assert_eq!(response.headers().get("x-request-id").unwrap(), "req-7");
        let missing = call_service(&app, TestRequest::get().uri("/nowhere").to_request()).await;
        assert_eq!(missing.status().as_u16(), 404);

        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let inside = lines
            .iter()
            .find(|l| l["fields"]["message"] == "inside the handler")
            .expect("the handler's line");
        assert_eq!(inside["span"]["request_id"], "req-7", "{inside}");
        assert_eq!(inside["span"]["org_id"], "o-42", "{inside}");
        let answered: Vec<_> = lines
            .iter()
            .filter(|l| l["fields"]["message"] == "answered")
            .collect();
        assert_eq!(answered.len(), 2, "{text}");
        assert_eq!(answered[0]["span"]["route"], "/orgs/{org}/things");
        assert_eq!(answered[0]["fields"]["status"], 200);
        assert_eq!(answered[1]["span"]["route"], "unmatched");
        // A new id for a request that brought none.
        assert_eq!(
            answered[1]["span"]["request_id"].as_str().unwrap().len(),
            32
        );

        let count = |route: &str, status: &str| {
            HTTP_REQUESTS
                .with_label_values(&["log-test", "GET", route, status])
                .get()
        };
        assert_eq!(count("/orgs/{org}/things", "200"), 1);
        assert_eq!(count("unmatched", "404"), 1);
    }
}
