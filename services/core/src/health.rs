//! Readiness of the services a Tailor process depends on, shared by portal and gateway.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::{settings::RabbitMqSettings, storage::Store};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
}

impl Readiness {
    /// Names of the dependencies that are down.
    pub fn down(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }
}

/// Probes Postgres, RabbitMQ and the object store concurrently.
#[tracing::instrument(skip_all)]
pub async fn readiness(pool: &PgPool, rabbitmq: &RabbitMqSettings, store: &Store) -> Readiness {
    let postgres = async {
        tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map(|_| ()).map_err(anyhow::Error::from))
    };
    let queue = crate::queue::check(rabbitmq, PROBE_TIMEOUT);
    let objects = async {
        tokio::time::timeout(PROBE_TIMEOUT, crate::storage::check(store))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
    };
    let (postgres, queue, objects) = tokio::join!(postgres, queue, objects);
    let checks = [
        ("postgres", postgres),
        ("rabbitmq", queue),
        ("object_store", objects),
    ]
    .into_iter()
    .map(|(name, result)| {
        if let Err(e) = &result {
            tracing::warn!(dependency = name, error = format!("{e:#}"), "not ready");
        }
        Check {
            name,
            ok: result.is_ok(),
        }
    })
    .collect::<Vec<_>>();
    Readiness {
        ready: checks.iter().all(|c| c.ok),
        checks,
    }
}
