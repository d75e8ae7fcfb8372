//! Postgres: the connection pool, embedded migrations, and creating the database.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::{
    ConnectOptions, Connection, Executor, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::settings::DatabaseSettings;

/// Every migration under `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

pub fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(settings.url.expose_secret())
        .context("database.url is not a valid Postgres URL")?
        .log_statements(tracing::log::LevelFilter::Debug))
}

/// A lazy pool: the process starts even when Postgres is down, and `/readyz` says so.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_seconds))
        .connect_lazy_with(connect_options(settings)?))
}

/// Creates the database named in the URL when it does not exist yet.
pub async fn ensure_database(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let options = connect_options(settings)?;
    let name = options
        .get_database()
        .context("database.url names no database")?
        .to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("connecting to the `postgres` maintenance database")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // Identifiers cannot be bound; quote the name instead.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        if let Err(e) = admin
            .execute(format!("CREATE DATABASE {quoted}").as_str())
            .await
        {
            // Lost a race with another process creating it: fine.
            let raced = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04");
            if !raced {
                return Err(e).context("creating the database");
            }
        }
        tracing::info!(database = %name, "created database");
    }
    admin.close().await.ok();
    Ok(())
}

/// Creates the database if needed and applies every pending migration.
pub async fn migrate(settings: &DatabaseSettings) -> anyhow::Result<()> {
    ensure_database(settings).await?;
    let pool = pool(settings)?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    pool.close().await;
    Ok(())
}

/// True when a query error is a unique-constraint violation (Postgres code 23505).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}
