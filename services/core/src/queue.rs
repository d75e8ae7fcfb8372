//! RabbitMQ connection. The queue contract (exchange, queues, messages) lands with jobs.

use std::time::Duration;

use anyhow::Context;
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;

use crate::settings::RabbitMqSettings;

pub async fn connect(settings: &RabbitMqSettings) -> anyhow::Result<Connection> {
    Connection::connect(
        settings.url.expose_secret(),
        ConnectionProperties::default(),
    )
    .await
    .context("connecting to RabbitMQ")
}

/// Reachability probe for `/readyz`: opens and closes a connection within `timeout`.
pub async fn check(settings: &RabbitMqSettings, timeout: Duration) -> anyhow::Result<()> {
    let connection = tokio::time::timeout(timeout, connect(settings))
        .await
        .context("RabbitMQ did not answer in time")??;
    connection.close(200, "readiness probe").await.ok();
    Ok(())
}
