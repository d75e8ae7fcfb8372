//! The inference gateway: `POST /v1/models/{model}/predict` and `/embed` behind API keys,
//! its OpenAPI description, and health endpoints.
//!
//! A request is authenticated (grants cached for seconds), rate limited per key, resolved
//! to a model version in the key's organization (the published one unless named), served
//! from the model cache (one base checkpoint shared by many versions' adapters) through
//! the dynamic batcher's inference thread, then metered and audited off the request path.

pub mod batch;
pub mod cache;
pub mod error;
pub mod keys;
pub mod predict;
pub mod rate;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer, ResponseError, dev::Server, get, post, web,
};
use anyhow::Context;
use serde_json::{Value, json};
use tailor_core::api_keys::{Action, KeyGrant};
use tailor_core::models::ModelVersion;
use tailor_core::{Settings, db, health, metrics, storage};
use tailor_modules::train::InputValue;
use uuid::Uuid;

use crate::batch::Batcher;
use crate::cache::{LoadedVersion, ModelCache};
use crate::error::ApiError;
use crate::keys::{Call, Grants, Meter, MeterStop};
use crate::predict::{Limits, ModelRef};
use crate::rate::RateLimiter;

/// The OpenAPI 3.1 description of `/v1`.
pub const OPENAPI: &str = include_str!("openapi.json");

struct GatewayState {
    pool: sqlx::PgPool,
    store: storage::Store,
    settings: Settings,
    grants: Grants,
    limiter: RateLimiter,
    meter: Meter,
    cache: Arc<ModelCache>,
    batcher: Batcher,
}

pub struct Application {
    port: u16,
    server: Server,
    meter: MeterStop,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let pool = db::pool(&settings.database)?;
        let store = storage::build(&settings.object_store)?;
        let listener = TcpListener::bind((settings.gateway.host.as_str(), settings.gateway.port))
            .with_context(|| {
            format!(
                "binding {}:{}",
                settings.gateway.host, settings.gateway.port
            )
        })?;
        let port = listener.local_addr()?.port();
        let g = &settings.gateway;
        let (meter, meter_stop) = Meter::start(pool.clone());
        let cache = Arc::new(ModelCache::new(
            settings.jobs.assets_dir.clone(),
            g.cache_bytes,
        ));
        let scrape = {
            let cache = cache.clone();
            metrics::Scrape::new().with_hook(move || {
                let stats = cache.stats();
                for (figure, value) in [
                    ("versions", stats.versions as u64),
                    ("used_bytes", stats.used_bytes),
                    ("budget_bytes", stats.budget_bytes),
                    ("shared_bases", stats.shared_bases as u64),
                ] {
                    metrics::CACHE_BYTES
                        .with_label_values(&[figure])
                        .set(value as i64);
                }
            })
        };
        let state = web::Data::new(GatewayState {
            grants: Grants::new(Duration::from_secs(g.key_cache_seconds)),
            limiter: RateLimiter::default(),
            meter,
            cache,
            batcher: Batcher::start(
                g.queue_capacity,
                g.batch_max_items,
                Duration::from_millis(g.batch_wait_ms),
                g.batch_forward_items,
            ),
            pool,
            store,
            settings,
        });
        let server = HttpServer::new(move || {
            App::new()
                // A JSON API: never sniffed as something else, framed or cached.
                .wrap(
                    actix_web::middleware::DefaultHeaders::new()
                        .add(("X-Content-Type-Options", "nosniff"))
                        .add((
                            "Content-Security-Policy",
                            "default-src 'none'; frame-ancestors 'none'",
                        ))
                        .add(("Cache-Control", "no-store")),
                )
                .app_data(state.clone())
                .app_data(web::PathConfig::default().error_handler(|e, _| {
                    actix_web::Error::from(ApiError::validation("model", e.to_string()))
                }))
                .service(healthz)
                .service(readyz)
                .service(openapi)
                .service(predict_route)
                .service(embed_route)
                .configure(metrics::configure(scrape.clone()))
                .default_service(web::to(not_found))
                // Outermost: every answer is counted and logged with its request id.
                .wrap(actix_web::middleware::from_fn(
                    metrics::RequestTracing::service("gateway"),
                ))
        })
        .listen(listener)?
        .run();
        tracing::info!(port, "gateway listening");
        Ok(Application {
            port,
            server,
            meter: meter_stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until stopped (SIGTERM or SIGINT), then writes the usage and audit rows of
    /// the calls answered.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.meter.stop(Duration::from_secs(10)).await;
        result
    }
}

#[get("/healthz")]
#[tracing::instrument]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

#[get("/readyz")]
#[tracing::instrument(skip(state))]
async fn readyz(state: web::Data<GatewayState>) -> HttpResponse {
    let readiness = health::readiness(&state.pool, &state.settings.rabbitmq, &state.store).await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness)
    } else {
        HttpResponse::ServiceUnavailable().json(json!({
            "ready": false,
            "down": readiness.down(),
            "checks": readiness.checks,
        }))
    }
}

#[get("/v1/openapi.json")]
async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::NotFound(format!(
        "There is no route {} {}; see /v1/openapi.json.",
        req.method(),
        req.path()
    ))
    .error_response()
}

/// What one call did, for its usage and audit rows.
#[derive(Default)]
struct Outcome {
    model_version_id: Option<Uuid>,
    items: i64,
    body: Option<Value>,
}

#[post("/v1/models/{model}/predict")]
#[tracing::instrument(skip(state, req, payload), fields(key_id, org_id, model = %model))]
async fn predict_route(
    state: web::Data<GatewayState>,
    req: HttpRequest,
    model: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    serve(&state, &req, &model, payload, Action::Predict).await
}

#[post("/v1/models/{model}/embed")]
#[tracing::instrument(skip(state, req, payload), fields(key_id, org_id, model = %model))]
async fn embed_route(
    state: web::Data<GatewayState>,
    req: HttpRequest,
    model: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    serve(&state, &req, &model, payload, Action::Embed).await
}

/// Authenticates, answers `action` on the model, and meters and audits the call.
async fn serve(
    state: &GatewayState,
    req: &HttpRequest,
    model: &str,
    payload: web::Payload,
    action: Action,
) -> HttpResponse {
    let started = Instant::now();
    let grant = match state.grants.authenticate(&state.pool, req).await {
        Ok(grant) => grant,
        Err(e) => return e.error_response(),
    };
    tracing::Span::current().record("key_id", tracing::field::display(grant.key_id));
    tracing::Span::current().record("org_id", tracing::field::display(grant.org));
    let mut outcome = Outcome::default();
    let answer = match action {
        Action::Embed => embed_call(state, &grant, model, payload, &mut outcome).await,
        _ => predict_call(state, &grant, model, payload, &mut outcome).await,
    };
    let response = match answer {
        Ok(answer) => HttpResponse::Ok().json(answer),
        Err(e) => e.error_response(),
    };
    state.meter.record(Call {
        grant,
        model_version_id: outcome.model_version_id,
        route: req.path().to_owned(),
        status: response.status().as_u16(),
        items: outcome.items,
        latency: started.elapsed(),
        at: chrono::Utc::now(),
        request_body: outcome.body,
    });
    response
}

/// A call checked and read: the model named, its version, the version loaded, its rows.
struct Checked {
    model: ModelRef,
    version: ModelVersion,
    loaded: Arc<LoadedVersion>,
    rows: Vec<Vec<InputValue>>,
}

/// Rate limit, scope, body and model of a call for `action`, the same for every route.
async fn check_call(
    state: &GatewayState,
    grant: &KeyGrant,
    model: &str,
    payload: web::Payload,
    outcome: &mut Outcome,
    action: Action,
) -> Result<Checked, ApiError> {
    if let Some(per_minute) = grant.rate_limit_per_minute {
        state
            .limiter
            .take(grant.key_id, per_minute.max(1) as u32)
            .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    }
    if !grant.actions.contains(&action) {
        return Err(ApiError::Scope(action.as_str()));
    }
    let model = ModelRef::parse(model)?;
    let limit = state.settings.gateway.max_body_bytes;
    let body = payload
        .to_bytes_limited(limit)
        .await
        .map_err(|_| {
            ApiError::TooLarge(format!(
                "The request body is larger than the limit of {limit} bytes."
            ))
        })?
        .map_err(|e| {
            ApiError::validation("", format!("The request body could not be read: {e}"))
        })?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::validation("", format!("The body is not valid JSON: {e}")))?;
    let (model_id, version) = predict::resolve(&state.pool, grant.org, &model).await?;
    if !grant.allows(action, model_id) {
        // Outside the key's models: the same answer as a model that does not exist.
        return Err(ApiError::NotFound(format!(
            "There is no model named `{}`.",
            model.name
        )));
    }
    outcome.model_version_id = Some(version.id);
    let loaded = state.cache.get(&state.store, grant.org, &version).await?;
    let gateway = &state.settings.gateway;
    let rows = predict::rows(
        &body,
        &loaded.input_names(),
        Limits {
            max_items: gateway.max_items,
            max_text_chars: gateway.max_text_chars,
        },
    )?;
    outcome.items = rows.len() as i64;
    outcome.body = Some(body);
    Ok(Checked {
        model,
        version,
        loaded,
        rows,
    })
}

async fn predict_call(
    state: &GatewayState,
    grant: &KeyGrant,
    model: &str,
    payload: web::Payload,
    outcome: &mut Outcome,
) -> Result<Value, ApiError> {
    let call = check_call(state, grant, model, payload, outcome, Action::Predict).await?;
    let answer = state
        .batcher
        .submit(call.loaded, call.rows)
        .map_err(|_| ApiError::Busy { retry_after: 1 })?
        .await
        .context("the inference thread stopped")?
        .context("predicting")?;
    Ok(json!({
        "model": call.model.name,
        "version": call.version.version,
        "predictions": answer.into_iter().map(predict::answer).collect::<Vec<_>>(),
    }))
}

async fn embed_call(
    state: &GatewayState,
    grant: &KeyGrant,
    model: &str,
    payload: web::Payload,
    outcome: &mut Outcome,
) -> Result<Value, ApiError> {
    let call = check_call(state, grant, model, payload, outcome, Action::Embed).await?;
    let dimensions = call.loaded.model.embedding_width();
    let embeddings = state
        .batcher
        .submit_embed(call.loaded, call.rows)
        .map_err(|_| ApiError::Busy { retry_after: 1 })?
        .await
        .context("the inference thread stopped")?
        .context("embedding")?;
    Ok(json!({
        "model": call.model.name,
        "version": call.version.version,
        "dimensions": dimensions,
        "embeddings": embeddings,
    }))
}
