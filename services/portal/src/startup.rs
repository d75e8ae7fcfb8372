//! Builds the portal's HTTP server: binds the listener (port 0 in tests) and wires routes.

use std::{net::TcpListener, sync::Arc};

use actix_web::{App, HttpServer, dev::Server, web};
use anyhow::Context;
use sqlx::PgPool;
use tailor_core::{Settings, auth::JwtKeys, db, metrics, outbox, storage};

use crate::{i18n::Templates, routes, state::AppState};

pub struct Application {
    port: u16,
    server: Server,
    /// The outbox relay's inputs, when this process relays (`jobs.relay_enabled`).
    relay: Option<(PgPool, Arc<Settings>)>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let pool = db::pool(&settings.database)?;
        let store = storage::build(&settings.object_store)?;
        let listener = TcpListener::bind((
            settings.application.host.as_str(),
            settings.application.port,
        ))
        .with_context(|| {
            format!(
                "binding {}:{}",
                settings.application.host, settings.application.port
            )
        })?;
        let port = listener.local_addr()?.port();
        let settings = Arc::new(settings);
        let relay = settings
            .jobs
            .relay_enabled
            .then(|| (pool.clone(), settings.clone()));
        let scrape = metrics::Scrape::new()
            .with_jobs(pool.clone())
            .with_queue(&settings.rabbitmq);
        let state = web::Data::new(AppState {
            jwt: JwtKeys::new(&settings.auth),
            templates: Templates::load().context("loading templates")?,
            settings,
            pool,
            store,
        });
        let json_limit = 1024 * 1024;
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(crate::security::guard))
                .app_data(state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(json_limit)
                        .error_handler(routes::json_error),
                )
                .app_data(web::FormConfig::default().limit(json_limit))
                .app_data(
                    web::PathConfig::default()
                        .error_handler(|_, _| tailor_core::Error::NotFound.into()),
                )
                .configure(routes::configure)
                .configure(metrics::configure(scrape.clone()))
                // Outermost: every answer is counted and logged with its request id.
                .wrap(actix_web::middleware::from_fn(
                    metrics::RequestTracing::service("portal"),
                ))
        })
        .listen(listener)?
        .run();
        tracing::info!(port, "portal listening");
        Ok(Application {
            port,
            server,
            relay,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops (SIGINT/SIGTERM), with the outbox relay beside it;
    /// the relay finishes its current batch and stops with the server.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Some((pool, settings)) = self.relay else {
            return self.server.await;
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(outbox::run_relay(pool, settings, async {
            stopped.await.ok();
        }));
        let served = self.server.await;
        stop.send(()).ok();
        relay.await.ok();
        served
    }
}
