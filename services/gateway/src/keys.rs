//! API keys at the gateway: grants cached for a few seconds (so a revocation takes effect
//! within them), and usage and audit rows written off the request path, in batches.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tailor_core::api_keys::{
    self, ApiKey, AuditRecord, GRANT_CACHE_TTL, KeyError, KeyGrant, UsageBatch,
};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::ApiError;

/// Grants by key hash, each trusted for `ttl` after it was read.
pub struct Grants {
    ttl: Duration,
    cache: Mutex<HashMap<String, (KeyGrant, Instant)>>,
}

impl Grants {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: ttl.min(GRANT_CACHE_TTL),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The grant of the request's `Authorization: Bearer tlr_…` key.
    pub async fn authenticate(
        &self,
        pool: &PgPool,
        req: &HttpRequest,
    ) -> Result<KeyGrant, ApiError> {
        let raw = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Key(KeyError::Malformed))?;
        // Shape and checksum first: no lookup at all for a mistyped key.
        let hash = ApiKey::parse(raw)?.hash();
        let now = Instant::now();
        {
            let cache = self.cache.lock().expect("grant cache lock");
            if let Some((grant, at)) = cache.get(&hash)
                && now.duration_since(*at) < self.ttl
            {
                if grant.is_expired(Utc::now()) {
                    return Err(KeyError::Expired.into());
                }
                return Ok(grant.clone());
            }
        }
        let result = api_keys::authenticate(pool, raw).await;
        let mut cache = self.cache.lock().expect("grant cache lock");
        match result {
            Ok(grant) => {
                if cache.len() > 100_000 {
                    let ttl = self.ttl;
                    cache.retain(|_, (_, at)| now.duration_since(*at) < ttl);
                }
                cache.insert(hash, (grant.clone(), now));
                Ok(grant)
            }
            Err(e) => {
                cache.remove(&hash);
                Err(e.into())
            }
        }
    }
}

/// One call, to meter and audit.
pub struct Call {
    pub grant: KeyGrant,
    pub model_version_id: Option<Uuid>,
    pub route: String,
    pub status: u16,
    pub items: i64,
    pub latency: Duration,
    pub at: DateTime<Utc>,
    pub request_body: Option<serde_json::Value>,
}

/// Most calls written in one flush, and the longest a call waits to be written.
const FLUSH_CALLS: usize = 1_000;
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Writes usage, audit and last use from a task of its own, a batch of calls at a time
/// (one statement each per flush), so that database writes do not slow answers. When far
/// behind it drops calls (and says so in the log) rather than holding memory without
/// bound.
#[derive(Clone)]
pub struct Meter {
    calls: mpsc::Sender<Call>,
}

/// Stops the meter: what is queued is written, then the task ends.
pub struct MeterStop {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MeterStop {
    /// Writes the calls still queued (waiting at most `limit`).
    pub async fn stop(self, limit: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("the usage meter did not finish writing in time");
        }
    }
}

impl Meter {
    pub fn start(pool: PgPool) -> (Self, MeterStop) {
        let (calls, mut receiver) = mpsc::channel::<Call>(10_000);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut usage = UsageBatch::new();
            loop {
                let first = tokio::select! {
                    call = receiver.recv() => call,
                    _ = &mut stopped => None,
                };
                let Some(first) = first else { break };
                let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
                let mut batch = vec![first];
                while batch.len() < FLUSH_CALLS {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(call)) => batch.push(call),
                        Ok(None) | Err(_) => break,
                    }
                }
                write(&pool, batch, &mut usage).await;
            }
            // Stopping: whatever is queued, then the usage kept from a failed flush.
            receiver.close();
            let mut rest = Vec::new();
            while let Ok(call) = receiver.try_recv() {
                rest.push(call);
            }
            write(&pool, rest, &mut usage).await;
        });
        (Self { calls }, MeterStop { stop, task })
    }

    pub fn record(&self, call: Call) {
        if let Err(e) = self.calls.try_send(call) {
            tracing::warn!(error = %e, "usage meter is behind; a call was not recorded");
        }
    }
}

async fn write(pool: &PgPool, calls: Vec<Call>, usage: &mut UsageBatch) {
    let mut keys: Vec<Uuid> = calls.iter().map(|c| c.grant.key_id).collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() && usage.is_empty() {
        return;
    }
    if let Err(e) = api_keys::touch_last_used_many(pool, &keys).await {
        tracing::warn!(error = %e, "recording keys' last use");
    }
    for call in &calls {
        usage.add(
            &call.grant,
            call.model_version_id,
            call.items,
            0,
            call.status >= 400,
            call.latency,
        );
    }
    // On an error the batch keeps its sums and the next flush tries again.
    if let Err(e) = usage.flush(pool).await {
        tracing::warn!(error = %e, calls = usage.calls(), "recording usage; will retry");
    }
    let records: Vec<AuditRecord> = calls
        .into_iter()
        .map(|c| AuditRecord {
            org: c.grant.org,
            key_id: c.grant.key_id,
            model_version_id: c.model_version_id,
            route: c.route,
            status: c.status,
            at: c.at,
            request_body: c.request_body,
        })
        .collect();
    if let Err(e) = api_keys::audit_many(pool, &records).await {
        tracing::warn!(error = %e, entries = records.len(), "writing the audit log; entries lost");
    }
}
