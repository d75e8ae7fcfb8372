//! `/healthz`: the process answers. `/readyz`: Postgres, RabbitMQ and the object store too.

use actix_web::{HttpResponse, get, web};

use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(healthz).service(readyz);
}

#[get("/healthz")]
#[tracing::instrument]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[get("/readyz")]
#[tracing::instrument(skip(state))]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let readiness =
        tailor_core::health::readiness(&state.pool, &state.settings.rabbitmq, &state.store).await;
    if readiness.ready {
        HttpResponse::Ok().json(readiness)
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "ready": false,
            "down": readiness.down(),
            "checks": readiness.checks,
        }))
    }
}
