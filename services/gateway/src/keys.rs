//! API keys at the gateway: grants cached for a few seconds (so a revocation takes effect
//! within them), and usage and audit rows written off the request path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use chrono::Utc;
use sqlx::PgPool;
use tailor_core::api_keys::{self, ApiKey, GRANT_CACHE_TTL, KeyError, KeyGrant};
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
    pub request_body: Option<serde_json::Value>,
}

/// Writes usage, audit and last use from a task of its own, so that the database writes
/// do not slow answers. When far behind it drops calls (and says so in the log) rather
/// than holding memory without bound.
#[derive(Clone)]
pub struct Meter {
    calls: mpsc::Sender<Call>,
}

impl Meter {
    pub fn start(pool: PgPool) -> Self {
        let (calls, mut receiver) = mpsc::channel::<Call>(10_000);
        tokio::spawn(async move {
            while let Some(call) = receiver.recv().await {
                write(&pool, call).await;
            }
        });
        Self { calls }
    }

    pub fn record(&self, call: Call) {
        if let Err(e) = self.calls.try_send(call) {
            tracing::warn!(error = %e, "usage meter is behind; a call was not recorded");
        }
    }
}

async fn write(pool: &PgPool, call: Call) {
    let error = call.status >= 400;
    if let Err(e) = api_keys::touch_last_used(pool, call.grant.key_id).await {
        tracing::warn!(error = %e, "recording a key's last use");
    }
    if let Err(e) = api_keys::record_usage(
        pool,
        &call.grant,
        call.model_version_id,
        call.items,
        0,
        error,
        call.latency,
    )
    .await
    {
        tracing::warn!(error = %e, "recording usage");
    }
    if let Err(e) = api_keys::audit(
        pool,
        &call.grant,
        call.model_version_id,
        &call.route,
        call.status,
        call.request_body.as_ref(),
    )
    .await
    {
        tracing::warn!(error = %e, "writing the audit log");
    }
}
