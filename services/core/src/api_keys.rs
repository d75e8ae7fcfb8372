//! API keys: an organization's credential for calling its tuned models through the
//! gateway, plus the usage meter and the audit log that the gateway writes.
//!
//! # Key format
//! `tlr_` + 27 base62 characters (160 random bits) + 6 base62 characters of checksum
//! (the CRC-32 of those 27 characters), 37 characters in all, e.g.
//! `tlr_3kX9…Qa7bC1x2`. [`ApiKey::parse`] checks the shape and the checksum without any
//! I/O, so a mistyped or truncated key is refused before the database is asked. Only the
//! SHA-256 hex of the whole key is stored (`api_keys.hash`); the key is shown once.
//!
//! # What the gateway calls
//! ```ignore
//! // Every request (or at most every few seconds per key, see "Revocation" below):
//! let grant: KeyGrant = api_keys::authenticate(&pool, bearer_token).await?;
//! //   Err(KeyError::{Malformed, BadChecksum, Unknown, Revoked, Expired}) → 401, with
//! //   `err.code()` as the error code (KeyError implements actix's ResponseError);
//! //   Err(KeyError::Database(_)) → 500.
//! // Resolve the model by name *within grant.org* (another organization's model is 404),
//! // then check the scope (403 when refused):
//! grant.allows(Action::Predict, model.id);
//! // After answering (none of these should fail the request; log their errors):
//! api_keys::touch_last_used(&pool, grant.key_id).await?;          // throttled, 1/min/key
//! api_keys::record_usage(&pool, &grant, Some(version_id), items, tokens, is_error, elapsed).await?;
//! api_keys::audit(&pool, &grant, Some(version_id), "/v1/models/x/predict", 200, Some(&body)).await?;
//! ```
//! A busy gateway should not run three statements per call: it can collect calls and
//! write them every second or so with [`UsageBatch`] (`add` per call, `flush` once),
//! [`audit_many`] and [`touch_last_used_many`] — one statement each per flush.
//!
//! # Revocation contract
//! A revoked (or expired) key must stop working on every gateway within seconds. The
//! portal only sets `revoked_at`; nothing is pushed to gateways. So a gateway may cache a
//! [`KeyGrant`] for at most [`GRANT_CACHE_TTL`] (5 s) after `authenticate` returned it,
//! and must check [`KeyGrant::is_expired`] on every use of a cached grant. It never
//! caches a failure in a way that outlives that TTL either.
//!
//! # Roles
//! Admins and owners create and revoke keys; members see the list and usage (to know
//! which key their application uses) but cannot create or revoke; viewers see nothing of
//! keys. The audit log is for admins and owners; only owners decide whether request
//! bodies are kept (`orgs.audit_request_bodies`).

use std::{
    collections::HashMap,
    fmt,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{FromRow, PgPool};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::{
    accounts::parse_name,
    error::{Error, FieldError},
    tenancy::OrgId,
};

/// Every key starts with this, so people and secret scanners recognise one.
pub const KEY_PREFIX: &str = "tlr_";
/// Random bits in a key.
pub const RANDOM_BITS: usize = 160;
const RANDOM_BYTES: usize = RANDOM_BITS / 8;
/// Base62 characters of the random part: 62^27 > 2^160.
const RANDOM_CHARS: usize = 27;
/// Base62 characters of the checksum: 62^6 > 2^32.
const CHECKSUM_CHARS: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS;
/// Characters of the random part shown in lists after `tlr_`.
const SHOWN_CHARS: usize = 8;
/// How long a gateway may reuse a grant before asking the database again.
pub const GRANT_CACHE_TTL: Duration = Duration::from_secs(5);
/// `last_used_at` is written at most this often per key (per process).
pub const LAST_USED_INTERVAL: Duration = Duration::from_secs(60);

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a key was refused. Every variant but `Database` is a 401 at the gateway.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an API key")]
    Malformed,
    #[error("API key checksum does not match")]
    BadChecksum,
    #[error("unknown API key")]
    Unknown,
    #[error("API key revoked")]
    Revoked,
    #[error("API key expired")]
    Expired,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl KeyError {
    /// Stable code for the gateway's error body.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Malformed => "key_malformed",
            KeyError::BadChecksum => "key_bad_checksum",
            KeyError::Unknown => "key_unknown",
            KeyError::Revoked => "key_revoked",
            KeyError::Expired => "key_expired",
            KeyError::Database(_) => "unexpected",
        }
    }

    /// What the caller may read.
    pub fn public_message(&self) -> &'static str {
        match self {
            KeyError::Malformed => {
                "Send an API key (tlr_…, 37 characters) as `Authorization: Bearer <key>`."
            }
            KeyError::BadChecksum => {
                "The API key's checksum does not match: it was mistyped or cut short."
            }
            KeyError::Unknown => "This API key does not exist.",
            KeyError::Revoked => "This API key was revoked.",
            KeyError::Expired => "This API key has expired.",
            KeyError::Database(_) => "Something went wrong on our side.",
        }
    }
}

impl actix_web::ResponseError for KeyError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        match self {
            KeyError::Database(_) => actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            _ => actix_web::http::StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        if let KeyError::Database(e) = self {
            tracing::error!(error = %e, "authenticating an API key");
        }
        let mut response = actix_web::HttpResponse::build(self.status_code());
        if !matches!(self, KeyError::Database(_)) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(serde_json::json!({
            "error": { "code": self.code(), "message": self.public_message() }
        }))
    }
}

/// A well-formed key with a valid checksum (not yet known to exist). Its `Debug` shows
/// the prefix only.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.prefix())
    }
}

impl ApiKey {
    /// Checks shape and checksum; no I/O.
    pub fn parse(raw: &str) -> Result<ApiKey, KeyError> {
        let raw = raw.trim();
        let body = raw.strip_prefix(KEY_PREFIX).ok_or(KeyError::Malformed)?;
        if body.len() != RANDOM_CHARS + CHECKSUM_CHARS
            || !body.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(KeyError::Malformed);
        }
        let (random, checksum) = body.split_at(RANDOM_CHARS);
        if checksum != checksum_of(random) {
            return Err(KeyError::BadChecksum);
        }
        Ok(ApiKey(raw.to_owned()))
    }

    /// A new random key, and its text to show once.
    pub fn generate() -> (ApiKey, String) {
        let mut bytes = [0u8; RANDOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        let random = base62(&bytes, RANDOM_CHARS);
        let key = format!("{KEY_PREFIX}{random}{}", checksum_of(&random));
        (ApiKey(key.clone()), key)
    }

    /// What lists show: `tlr_` and the first 8 random characters.
    pub fn prefix(&self) -> &str {
        &self.0[..KEY_PREFIX.len() + SHOWN_CHARS]
    }

    /// The stored form: SHA-256 hex of the whole key.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The key itself, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn checksum_of(random: &str) -> String {
    base62(&crc32(random.as_bytes()).to_be_bytes(), CHECKSUM_CHARS)
}

/// CRC-32 (IEEE 802.3, as zlib), bit by bit: keys are short, no table needed.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Big-endian `bytes` as a base62 number of exactly `width` digits (zero-padded).
fn base62(bytes: &[u8], width: usize) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    for _ in 0..width {
        let mut remainder = 0u32;
        for byte in number.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        digits.push(BASE62[remainder as usize]);
    }
    debug_assert!(number.iter().all(|&b| b == 0), "width too small");
    digits.reverse();
    String::from_utf8(digits).expect("base62 digits are ASCII")
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Predict,
    Embed,
    Generate,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Predict, Action::Embed, Action::Generate];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Predict => "predict",
            Action::Embed => "embed",
            Action::Generate => "generate",
        }
    }

    pub fn parse(raw: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == raw.trim().to_ascii_lowercase())
    }
}

/// What an authenticated key may do; `org` is the only organization it can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub key_id: Uuid,
    pub org: OrgId,
    /// `None`: every model of `org`.
    pub models: Option<Vec<Uuid>>,
    pub actions: Vec<Action>,
    pub rate_limit_per_minute: Option<i32>,
    /// For gateways that cache the grant (see the module docs).
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeyGrant {
    /// Whether the key may do `action` on the model `model_id` (a `models.id`). The
    /// caller must have found the model within `self.org`: this checks scopes, not tenancy.
    pub fn allows(&self, action: Action, model_id: Uuid) -> bool {
        self.actions.contains(&action)
            && self
                .models
                .as_ref()
                .is_none_or(|models| models.contains(&model_id))
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[derive(FromRow)]
struct GrantRow {
    id: Uuid,
    org_id: Uuid,
    hash: String,
    model_ids: Option<Vec<Uuid>>,
    actions: Vec<String>,
    rate_limit_per_minute: Option<i32>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// The grant of a live key. Parses first (no database query for a malformed key or a
/// bad checksum), then looks the key up by its hash and compares in constant time.
#[tracing::instrument(skip_all)]
pub async fn authenticate(pool: &PgPool, raw: &str) -> Result<KeyGrant, KeyError> {
    let key = ApiKey::parse(raw)?;
    let hash = key.hash();
    let row: Option<GrantRow> = sqlx::query_as(
        "SELECT id, org_id, hash, model_ids, actions, rate_limit_per_minute, expires_at,
                revoked_at
         FROM api_keys WHERE hash = $1",
    )
    .bind(&hash)
    .fetch_optional(pool)
    .await?;
    let row = row.ok_or(KeyError::Unknown)?;
    // The index lookup already matched; the constant-time comparison keeps the decision
    // itself free of timing differences whatever the lookup strategy becomes.
    if !bool::from(row.hash.as_bytes().ct_eq(hash.as_bytes())) {
        return Err(KeyError::Unknown);
    }
    if row.revoked_at.is_some() {
        return Err(KeyError::Revoked);
    }
    if row.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(KeyError::Expired);
    }
    Ok(KeyGrant {
        key_id: row.id,
        org: OrgId(row.org_id),
        models: row.model_ids,
        actions: row
            .actions
            .iter()
            .filter_map(|a| Action::parse(a))
            .collect(),
        rate_limit_per_minute: row.rate_limit_per_minute,
        expires_at: row.expires_at,
    })
}

static LAST_TOUCH: LazyLock<Mutex<HashMap<Uuid, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Records that a key was used. Writes at most once per [`LAST_USED_INTERVAL`] per key
/// from one process (and the UPDATE itself skips rows touched within the interval, so
/// several gateways do not all write).
#[tracing::instrument(skip(pool))]
pub async fn touch_last_used(pool: &PgPool, key_id: Uuid) -> sqlx::Result<()> {
    {
        let mut touched = LAST_TOUCH.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if touched
            .get(&key_id)
            .is_some_and(|at| now.duration_since(*at) < LAST_USED_INTERVAL)
        {
            return Ok(());
        }
        if touched.len() > 100_000 {
            touched.retain(|_, at| now.duration_since(*at) < LAST_USED_INTERVAL);
        }
        touched.insert(key_id, now);
    }
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(key_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Adds one call to the key's usage for the current minute. `model_version_id` is `None`
/// when the call failed before a version was chosen; `error` counts the call as failed.
#[tracing::instrument(skip(pool, grant), fields(key_id = %grant.key_id))]
pub async fn record_usage(
    pool: &PgPool,
    grant: &KeyGrant,
    model_version_id: Option<Uuid>,
    items: i64,
    tokens: i64,
    error: bool,
    latency: Duration,
) -> sqlx::Result<()> {
    let latency_ms = i32::try_from(latency.as_millis()).unwrap_or(i32::MAX);
    sqlx::query(
        "INSERT INTO api_key_usage AS u
             (key_id, org_id, model_version_id, minute, requests, items, tokens, errors,
              latency_ms_sum, latency_ms_max)
         VALUES ($1, $2, $3, date_trunc('minute', now()), 1, $4, $5, $6, $7, $7)
         ON CONFLICT (key_id, model_version_id, minute) DO UPDATE SET
             requests = u.requests + 1,
             items = u.items + EXCLUDED.items,
             tokens = u.tokens + EXCLUDED.tokens,
             errors = u.errors + EXCLUDED.errors,
             latency_ms_sum = u.latency_ms_sum + EXCLUDED.latency_ms_sum,
             latency_ms_max = greatest(u.latency_ms_max, EXCLUDED.latency_ms_max)",
    )
    .bind(grant.key_id)
    .bind(grant.org)
    .bind(model_version_id)
    .bind(items)
    .bind(tokens)
    .bind(i64::from(error))
    .bind(latency_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// Writes one audit entry. `request_body` is stored only when the key's organization has
/// `audit_request_bodies` on (decided in the INSERT, so it cannot be stale).
#[tracing::instrument(skip(pool, grant, request_body), fields(key_id = %grant.key_id))]
pub async fn audit(
    pool: &PgPool,
    grant: &KeyGrant,
    model_version_id: Option<Uuid>,
    route: &str,
    status: u16,
    request_body: Option<&serde_json::Value>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (org_id, key_id, model_version_id, route, status, request_body)
         SELECT o.id, $2, $3, $4, $5, CASE WHEN o.audit_request_bodies THEN $6 END
         FROM orgs o WHERE o.id = $1",
    )
    .bind(grant.org)
    .bind(grant.key_id)
    .bind(model_version_id)
    .bind(route)
    .bind(i32::from(status))
    .bind(request_body)
    .execute(pool)
    .await?;
    Ok(())
}

/// Usage of many calls, summed in memory per key, model version and minute, then written
/// with one statement: a busy gateway adds each call here and flushes every second or so
/// instead of running one upsert per call.
#[derive(Debug, Default)]
pub struct UsageBatch {
    rows: HashMap<(Uuid, Option<Uuid>, DateTime<Utc>), UsageSums>,
}

#[derive(Debug, Default, Clone, Copy)]
struct UsageSums {
    org: Option<OrgId>,
    requests: i64,
    items: i64,
    tokens: i64,
    errors: i64,
    latency_ms_sum: i64,
    latency_ms_max: i32,
}

impl UsageBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one call, in the minute it happened (now).
    pub fn add(
        &mut self,
        grant: &KeyGrant,
        model_version_id: Option<Uuid>,
        items: i64,
        tokens: i64,
        error: bool,
        latency: Duration,
    ) {
        let now = Utc::now();
        let minute =
            DateTime::from_timestamp(now.timestamp().div_euclid(60) * 60, 0).unwrap_or(now);
        let latency_ms = i32::try_from(latency.as_millis()).unwrap_or(i32::MAX);
        let sums = self
            .rows
            .entry((grant.key_id, model_version_id, minute))
            .or_default();
        sums.org = Some(grant.org);
        sums.requests += 1;
        sums.items += items;
        sums.tokens += tokens;
        sums.errors += i64::from(error);
        sums.latency_ms_sum += i64::from(latency_ms);
        sums.latency_ms_max = sums.latency_ms_max.max(latency_ms);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Calls added since the last flush.
    pub fn calls(&self) -> i64 {
        self.rows.values().map(|s| s.requests).sum()
    }

    /// Adds everything to `api_key_usage` in one statement and empties the batch. On an
    /// error the batch keeps its sums, so the caller may try again.
    #[tracing::instrument(skip_all, fields(rows = self.rows.len()))]
    pub async fn flush(&mut self, pool: &PgPool) -> sqlx::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let n = self.rows.len();
        let (mut keys, mut orgs, mut versions, mut minutes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut requests, mut items, mut tokens, mut errors, mut sums, mut maxes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((key, version, minute), s) in &self.rows {
            keys.push(*key);
            orgs.push(s.org.map(|o| o.0).unwrap_or_default());
            versions.push(*version);
            minutes.push(*minute);
            requests.push(s.requests);
            items.push(s.items);
            tokens.push(s.tokens);
            errors.push(s.errors);
            sums.push(s.latency_ms_sum);
            maxes.push(s.latency_ms_max);
        }
        sqlx::query(
            "INSERT INTO api_key_usage AS u
                 (key_id, org_id, model_version_id, minute, requests, items, tokens, errors,
                  latency_ms_sum, latency_ms_max)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[],
                                  $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
                                  $9::bigint[], $10::int[])
             ON CONFLICT (key_id, model_version_id, minute) DO UPDATE SET
                 requests = u.requests + EXCLUDED.requests,
                 items = u.items + EXCLUDED.items,
                 tokens = u.tokens + EXCLUDED.tokens,
                 errors = u.errors + EXCLUDED.errors,
                 latency_ms_sum = u.latency_ms_sum + EXCLUDED.latency_ms_sum,
                 latency_ms_max = greatest(u.latency_ms_max, EXCLUDED.latency_ms_max)",
        )
        .bind(&keys)
        .bind(&orgs)
        .bind(&versions)
        .bind(&minutes)
        .bind(&requests)
        .bind(&items)
        .bind(&tokens)
        .bind(&errors)
        .bind(&sums)
        .bind(&maxes)
        .execute(pool)
        .await?;
        self.rows.clear();
        Ok(())
    }
}

/// One gateway call for [`audit_many`].
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub org: OrgId,
    pub key_id: Uuid,
    pub model_version_id: Option<Uuid>,
    pub route: String,
    pub status: u16,
    pub at: DateTime<Utc>,
    /// Kept only when the organization has `audit_request_bodies` on.
    pub request_body: Option<serde_json::Value>,
}

/// Writes many audit entries in one statement (same rules as [`audit`]).
#[tracing::instrument(skip_all, fields(entries = records.len()))]
pub async fn audit_many(pool: &PgPool, records: &[AuditRecord]) -> sqlx::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let orgs: Vec<Uuid> = records.iter().map(|r| r.org.0).collect();
    let keys: Vec<Uuid> = records.iter().map(|r| r.key_id).collect();
    let versions: Vec<Option<Uuid>> = records.iter().map(|r| r.model_version_id).collect();
    let routes: Vec<&str> = records.iter().map(|r| r.route.as_str()).collect();
    let statuses: Vec<i32> = records.iter().map(|r| i32::from(r.status)).collect();
    let ats: Vec<DateTime<Utc>> = records.iter().map(|r| r.at).collect();
    // Bodies travel as text (NULL for none): jsonb arrays of NULLs bind awkwardly.
    let bodies: Vec<Option<String>> = records
        .iter()
        .map(|r| r.request_body.as_ref().map(|b| b.to_string()))
        .collect();
    sqlx::query(
        "INSERT INTO audit_log (org_id, key_id, model_version_id, route, status, at, request_body)
         SELECT c.org_id, c.key_id, c.version, c.route, c.status, c.at,
                CASE WHEN o.audit_request_bodies THEN c.body::jsonb END
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::int[],
                     $6::timestamptz[], $7::text[])
              AS c (org_id, key_id, version, route, status, at, body)
         JOIN orgs o ON o.id = c.org_id",
    )
    .bind(&orgs)
    .bind(&keys)
    .bind(&versions)
    .bind(&routes)
    .bind(&statuses)
    .bind(&ats)
    .bind(&bodies)
    .execute(pool)
    .await?;
    Ok(())
}

/// [`touch_last_used`] for many keys in one statement (same per-process throttle).
#[tracing::instrument(skip_all)]
pub async fn touch_last_used_many(pool: &PgPool, key_ids: &[Uuid]) -> sqlx::Result<()> {
    let due: Vec<Uuid> = {
        let mut touched = LAST_TOUCH.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut due = Vec::new();
        for id in key_ids {
            if touched
                .get(id)
                .is_some_and(|at| now.duration_since(*at) < LAST_USED_INTERVAL)
            {
                continue;
            }
            touched.insert(*id, now);
            due.push(*id);
        }
        due
    };
    if due.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
         WHERE id = ANY($1)
           AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(&due)
    .execute(pool)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Management (portal)

/// A key as lists show it: never the key, never its hash.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    /// `None`: all of the organization's models.
    pub model_ids: Option<Vec<Uuid>>,
    pub actions: Vec<String>,
    pub rate_limit_per_minute: Option<i32>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// `active`, `revoked` or `expired`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

const RECORD_COLUMNS: &str = "id, name, prefix, model_ids, actions, rate_limit_per_minute, \
     expires_at, revoked_at, created_by, created_at, last_used_at";

/// A key to create, as parsed from a form or JSON.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    /// `None`: all of the organization's models.
    pub models: Option<Vec<Uuid>>,
    pub actions: Vec<Action>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit_per_minute: Option<i32>,
}

/// The largest rate limit a key may have (per minute).
pub const MAX_RATE_LIMIT_PER_MINUTE: i32 = 1_000_000;

impl NewApiKey {
    /// Checks everything that needs no database; every problem at once.
    pub fn parse(
        name: &str,
        models: Option<Vec<Uuid>>,
        actions: &[String],
        expires_at: Option<DateTime<Utc>>,
        rate_limit_per_minute: Option<i64>,
    ) -> Result<NewApiKey, Error> {
        let mut errors = Vec::new();
        let name = parse_name("name", name).unwrap_or_else(|e| {
            errors.extend(e.field_errors());
            String::new()
        });
        let mut parsed = Vec::new();
        for (i, raw) in actions.iter().enumerate() {
            match Action::parse(raw) {
                Some(a) if !parsed.contains(&a) => parsed.push(a),
                Some(_) => {}
                None => errors.push(FieldError {
                    field: format!("actions[{i}]"),
                    message: format!("Unknown action “{raw}”: choose predict, embed or generate."),
                }),
            }
        }
        if actions.is_empty() {
            errors.push(FieldError {
                field: "actions".into(),
                message: "Choose at least one action (predict, embed, generate).".into(),
            });
        }
        if let Some(models) = &models
            && models.is_empty()
        {
            errors.push(FieldError {
                field: "models".into(),
                message: "Choose at least one model, or all models.".into(),
            });
        }
        if let Some(at) = expires_at
            && at <= Utc::now()
        {
            errors.push(FieldError {
                field: "expires_at".into(),
                message: "The expiry must be in the future.".into(),
            });
        }
        let rate_limit_per_minute = match rate_limit_per_minute {
            None => None,
            Some(n) if (1..=i64::from(MAX_RATE_LIMIT_PER_MINUTE)).contains(&n) => Some(n as i32),
            Some(_) => {
                errors.push(FieldError {
                    field: "rate_limit_per_minute".into(),
                    message: format!(
                        "Use a whole number from 1 to {MAX_RATE_LIMIT_PER_MINUTE} requests per minute, or leave it empty for no limit."
                    ),
                });
                None
            }
        };
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
        let mut models = models;
        if let Some(m) = models.as_mut() {
            m.sort();
            m.dedup();
        }
        Ok(NewApiKey {
            name,
            models,
            actions: parsed,
            expires_at,
            rate_limit_per_minute,
        })
    }
}

/// Creates a key for `org`; returns its record and the key, never to be shown again.
/// Every listed model must belong to `org` (another organization's model is refused as
/// unknown).
#[tracing::instrument(skip(pool, new), fields(org_id = %org))]
pub async fn create(
    pool: &PgPool,
    org: OrgId,
    created_by: Uuid,
    new: &NewApiKey,
) -> Result<(ApiKeyRecord, ApiKey), Error> {
    if let Some(models) = &new.models {
        let known: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM models WHERE org_id = $1 AND id = ANY($2)")
                .bind(org)
                .bind(models)
                .fetch_all(pool)
                .await?;
        let errors: Vec<FieldError> = models
            .iter()
            .enumerate()
            .filter(|(_, id)| !known.contains(id))
            .map(|(i, id)| FieldError {
                field: format!("models[{i}]"),
                message: format!("There is no model {id} in this organization."),
            })
            .collect();
        if !errors.is_empty() {
            return Err(Error::invalid(errors));
        }
    }
    let (key, _) = ApiKey::generate();
    let actions: Vec<&str> = new.actions.iter().map(|a| a.as_str()).collect();
    let record = sqlx::query_as(&format!(
        "INSERT INTO api_keys (id, org_id, name, prefix, hash, model_ids, actions,
                               rate_limit_per_minute, expires_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {RECORD_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(org)
    .bind(&new.name)
    .bind(key.prefix())
    .bind(key.hash())
    .bind(&new.models)
    .bind(&actions)
    .bind(new.rate_limit_per_minute)
    .bind(new.expires_at)
    .bind(created_by)
    .fetch_one(pool)
    .await?;
    Ok((record, key))
}

#[tracing::instrument(skip(pool))]
pub async fn list(pool: &PgPool, org: OrgId) -> sqlx::Result<Vec<ApiKeyRecord>> {
    sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS} FROM api_keys WHERE org_id = $1
         ORDER BY revoked_at IS NOT NULL, created_at DESC, id"
    ))
    .bind(org)
    .fetch_all(pool)
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, org: OrgId, id: Uuid) -> sqlx::Result<Option<ApiKeyRecord>> {
    sqlx::query_as(&format!(
        "SELECT {RECORD_COLUMNS} FROM api_keys WHERE org_id = $1 AND id = $2"
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Revokes a key of `org` (again is fine); another organization's key is `NotFound`.
/// Gateways stop accepting it within [`GRANT_CACHE_TTL`].
#[tracing::instrument(skip(pool))]
pub async fn revoke(pool: &PgPool, org: OrgId, id: Uuid) -> Result<ApiKeyRecord, Error> {
    sqlx::query_as(&format!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
         WHERE org_id = $1 AND id = $2 RETURNING {RECORD_COLUMNS}"
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(Error::NotFound)
}

/// One minute (or longer bucket) of a key's usage, summed over model versions.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct UsageRow {
    pub minute: DateTime<Utc>,
    pub model_version_id: Option<Uuid>,
    /// `model name vN`, when the version is known.
    pub model_version: Option<String>,
    pub requests: i64,
    pub items: i64,
    pub tokens: i64,
    pub errors: i64,
    pub latency_ms_sum: i64,
    pub latency_ms_max: i32,
}

/// A key's usage rows since `since`, oldest first, per minute and model version.
#[tracing::instrument(skip(pool))]
pub async fn usage(
    pool: &PgPool,
    org: OrgId,
    key_id: Uuid,
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<UsageRow>> {
    sqlx::query_as(
        "SELECT u.minute, u.model_version_id,
                CASE WHEN v.id IS NULL THEN NULL ELSE m.name || ' v' || v.version END AS model_version,
                u.requests, u.items, u.tokens, u.errors, u.latency_ms_sum, u.latency_ms_max
         FROM api_key_usage u
         LEFT JOIN model_versions v ON v.id = u.model_version_id
         LEFT JOIN models m ON m.id = v.model_id
         WHERE u.org_id = $1 AND u.key_id = $2 AND u.minute >= $3
         ORDER BY u.minute, model_version NULLS FIRST, u.model_version_id",
    )
    .bind(org)
    .bind(key_id)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// Requests and errors of a key per bucket of `bucket_minutes`, oldest first, since
/// `since` (for the chart).
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct UsagePoint {
    pub at: DateTime<Utc>,
    pub requests: i64,
    pub errors: i64,
}

#[tracing::instrument(skip(pool))]
pub async fn usage_series(
    pool: &PgPool,
    org: OrgId,
    key_id: Uuid,
    since: DateTime<Utc>,
    bucket_minutes: i32,
) -> sqlx::Result<Vec<UsagePoint>> {
    sqlx::query_as(
        "SELECT date_bin(make_interval(mins => $4), minute, $3) AS at,
                sum(requests)::bigint AS requests, sum(errors)::bigint AS errors
         FROM api_key_usage
         WHERE org_id = $1 AND key_id = $2 AND minute >= $3
         GROUP BY 1 ORDER BY 1",
    )
    .bind(org)
    .bind(key_id)
    .bind(since)
    .bind(bucket_minutes.max(1))
    .fetch_all(pool)
    .await
}

/// One audit entry as the portal shows it.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub key_id: Option<Uuid>,
    pub key_name: Option<String>,
    pub key_prefix: Option<String>,
    pub model_version_id: Option<Uuid>,
    pub model_version: Option<String>,
    pub route: String,
    pub status: i32,
    /// Only while the organization keeps request bodies.
    pub request_body: Option<serde_json::Value>,
}

/// The latest `limit` audit entries of `org`, newest first. Bodies only while the
/// organization has `audit_request_bodies` on.
#[tracing::instrument(skip(pool))]
pub async fn audit_entries(pool: &PgPool, org: OrgId, limit: i64) -> sqlx::Result<Vec<AuditEntry>> {
    sqlx::query_as(
        "SELECT a.id, a.at, a.key_id, k.name AS key_name, k.prefix AS key_prefix,
                a.model_version_id,
                CASE WHEN v.id IS NULL THEN NULL ELSE m.name || ' v' || v.version END AS model_version,
                a.route, a.status,
                CASE WHEN o.audit_request_bodies THEN a.request_body END AS request_body
         FROM audit_log a
         JOIN orgs o ON o.id = a.org_id
         LEFT JOIN api_keys k ON k.id = a.key_id
         LEFT JOIN model_versions v ON v.id = a.model_version_id
         LEFT JOIN models m ON m.id = v.model_id
         WHERE a.org_id = $1
         ORDER BY a.at DESC, a.id DESC
         LIMIT $2",
    )
    .bind(org)
    .bind(limit.clamp(1, 1000))
    .fetch_all(pool)
    .await
}

/// Whether `org` keeps gateway request bodies in its audit log.
#[tracing::instrument(skip(pool))]
pub async fn audit_request_bodies(pool: &PgPool, org: OrgId) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT audit_request_bodies FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_one(pool)
        .await
}

#[tracing::instrument(skip(pool))]
pub async fn set_audit_request_bodies(pool: &PgPool, org: OrgId, on: bool) -> sqlx::Result<()> {
    sqlx::query("UPDATE orgs SET audit_request_bodies = $2 WHERE id = $1")
        .bind(org)
        .bind(on)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn base62_pads_and_encodes_big_endian() {
        assert_eq!(base62(&[0, 0], 3), "000");
        assert_eq!(base62(&[0, 61], 2), "0z");
        assert_eq!(base62(&[0, 62], 2), "10");
        assert_eq!(base62(&[0xff; 20], RANDOM_CHARS).len(), RANDOM_CHARS);
        assert_eq!(base62(&[0xff; 4], CHECKSUM_CHARS).len(), CHECKSUM_CHARS);
    }

    #[test]
    fn generated_keys_parse_and_differ() {
        let (key, text) = ApiKey::generate();
        assert_eq!(text.len(), KEY_LEN);
        assert!(text.starts_with(KEY_PREFIX));
        assert_eq!(ApiKey::parse(&text).unwrap(), key);
        assert_eq!(key.prefix(), &text[..12]);
        assert_eq!(key.hash().len(), 64);
        assert!(!format!("{key:?}").contains(&text[12..]));
        let (_, other) = ApiKey::generate();
        assert_ne!(text, other);
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let (_, text) = ApiKey::generate();
        let bytes = text.as_bytes();
        for i in KEY_PREFIX.len()..text.len() {
            for &c in BASE62 {
                if c == bytes[i] {
                    continue;
                }
                let mut typo = bytes.to_vec();
                typo[i] = c;
                let typo = String::from_utf8(typo).unwrap();
                assert!(
                    matches!(ApiKey::parse(&typo), Err(KeyError::BadChecksum)),
                    "{typo}"
                );
            }
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let (_, text) = ApiKey::generate();
        for bad in [
            "",
            "tlr_",
            &text[..text.len() - 1],
            &format!("{text}x"),
            &text.replacen("tlr_", "tlk_", 1),
            &text.replacen(&text[5..6], "-", 1),
            "tlrp_abcdefghijklmnopqrstuvwxyz0123456",
        ] {
            assert!(
                matches!(ApiKey::parse(bad), Err(KeyError::Malformed)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn grants_check_action_and_model() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let scoped = KeyGrant {
            key_id: Uuid::now_v7(),
            org: OrgId(Uuid::now_v7()),
            models: Some(vec![a]),
            actions: vec![Action::Predict],
            rate_limit_per_minute: None,
            expires_at: None,
        };
        assert!(scoped.allows(Action::Predict, a));
        assert!(!scoped.allows(Action::Predict, b));
        assert!(!scoped.allows(Action::Embed, a));
        let all = KeyGrant {
            models: None,
            ..scoped
        };
        assert!(all.allows(Action::Predict, b));
        assert!(!all.allows(Action::Generate, b));
    }

    #[test]
    fn new_keys_report_every_problem() {
        let err = NewApiKey::parse(
            " ",
            Some(vec![]),
            &["predict".into(), "train".into()],
            Some(Utc::now() - chrono::Duration::hours(1)),
            Some(0),
        )
        .unwrap_err();
        let fields: Vec<String> = err.field_errors().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "name",
                "actions[1]",
                "models",
                "expires_at",
                "rate_limit_per_minute"
            ]
        );
        let ok = NewApiKey::parse(
            "app",
            None,
            &["Predict".into(), "embed".into(), "predict".into()],
            None,
            Some(60),
        )
        .unwrap();
        assert_eq!(ok.actions, [Action::Predict, Action::Embed]);
    }
}
