//! The inference gateway: `/v1` inference behind API keys (to come), and health endpoints.

use std::net::TcpListener;

use actix_web::{App, HttpResponse, HttpServer, dev::Server, get, web};
use anyhow::Context;
use tailor_core::{Settings, db, health, storage};

struct GatewayState {
    pool: sqlx::PgPool,
    store: storage::Store,
    settings: Settings,
}

pub struct Application {
    port: u16,
    server: Server,
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
        let state = web::Data::new(GatewayState {
            pool,
            store,
            settings,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .service(healthz)
                .service(readyz)
        })
        .listen(listener)?
        .run();
        tracing::info!(port, "gateway listening");
        Ok(Application { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

#[get("/healthz")]
#[tracing::instrument]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[get("/readyz")]
#[tracing::instrument(skip(state))]
async fn readyz(state: web::Data<GatewayState>) -> HttpResponse {
    let readiness = health::readiness(&state.pool, &state.settings.rabbitmq, &state.store).await;
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
