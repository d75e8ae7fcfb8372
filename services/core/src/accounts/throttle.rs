//! Sign-in throttling: failed sign-ins are counted over a sliding window, per account (the
//! email tried, whether or not it has an account, so that the answer does not reveal
//! which do) and per client address. Past either limit, sign-in is refused — even with the
//! right password — until the oldest failure that counts leaves the window; the caller
//! answers 429 with `Retry-After`.
//!
//! The counts live in Postgres (`sign_in_failures`), so every portal process shares them
//! and a restart does not reset them. A successful sign-in clears its account's failures;
//! the address count is left to age out, so one good password does not unlock guessing
//! at other accounts from the same address.

use std::time::Duration;

use sqlx::PgPool;

use super::users::{self, User};
use crate::error::Error;

/// How many failures, over how long, before sign-in is refused.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub window: Duration,
    pub per_account: i64,
    pub per_address: i64,
}

/// Five wrong passwords for one account, or twenty from one address, within fifteen
/// minutes. Twenty per address leaves room for a shared office address; five per account
/// bounds an online guesser to 480 tries a day per account.
pub const LIMITS: Limits = Limits {
    window: Duration::from_secs(15 * 60),
    per_account: 5,
    per_address: 20,
};

/// The outcome of a sign-in that did not succeed.
#[derive(Debug)]
pub enum SignInError {
    /// Too many recent failures for this account or address: wait `retry_after`.
    Throttled {
        retry_after: Duration,
        /// `"account"` or `"address"`: which limit was reached.
        limit: &'static str,
    },
    /// Wrong email or password (`Error::Unauthorized`), or a failure of our own.
    Refused(Error),
}

impl From<Error> for SignInError {
    fn from(e: Error) -> Self {
        SignInError::Refused(e)
    }
}

impl From<sqlx::Error> for SignInError {
    fn from(e: sqlx::Error) -> Self {
        SignInError::Refused(e.into())
    }
}

fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

/// When the `limit`-th most recent failure matching `column = value` leaves the window,
/// if there are at least `limit` failures in it now.
async fn wait_for(
    pool: &PgPool,
    column: &str,
    value: &str,
    limit: i64,
    window: Duration,
) -> sqlx::Result<Option<Duration>> {
    let window_seconds = window.as_secs_f64();
    // `column` is one of two constants chosen below, never input.
    let seconds: Option<f64> = sqlx::query_scalar(&format!(
        "SELECT EXTRACT(EPOCH FROM (at + make_interval(secs => $2) - now()))::float8
         FROM sign_in_failures
         WHERE {column} = $1 AND at > now() - make_interval(secs => $2)
         ORDER BY at DESC OFFSET $3 LIMIT 1"
    ))
    .bind(value)
    .bind(window_seconds)
    .bind(limit - 1)
    .fetch_optional(pool)
    .await?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0)).max(Duration::from_secs(1))))
}

/// `Some((wait, limit))` when sign-in for `email` from `address` is refused for now.
#[tracing::instrument(skip(pool))]
pub async fn throttled(
    pool: &PgPool,
    limits: Limits,
    email: &str,
    address: &str,
) -> sqlx::Result<Option<(Duration, &'static str)>> {
    let account = wait_for(
        pool,
        "email",
        &normalize(email),
        limits.per_account,
        limits.window,
    )
    .await?;
    let from_address =
        wait_for(pool, "address", address, limits.per_address, limits.window).await?;
    Ok(match (account, from_address) {
        (Some(a), Some(b)) if b > a => Some((b, "address")),
        (Some(a), _) => Some((a, "account")),
        (None, Some(b)) => Some((b, "address")),
        (None, None) => None,
    })
}

/// Records one failed sign-in, and prunes failures older than the window.
#[tracing::instrument(skip(pool))]
pub async fn record_failure(
    pool: &PgPool,
    limits: Limits,
    email: &str,
    address: &str,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM sign_in_failures WHERE at < now() - make_interval(secs => $1)")
        .bind(limits.window.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO sign_in_failures (email, address) VALUES ($1, $2)")
        .bind(normalize(email))
        .bind(address)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Signs in `email` from `address` unless throttled: checks the limits first (so that a
/// throttled guesser learns nothing, not even from a right password), then the password,
/// then records the failure or clears the account's failures.
#[tracing::instrument(skip(pool, password))]
pub async fn sign_in(
    pool: &PgPool,
    limits: Limits,
    email: &str,
    password: secrecy::SecretString,
    address: &str,
) -> Result<User, SignInError> {
    if let Some((retry_after, limit)) = throttled(pool, limits, email, address).await? {
        tracing::warn!(
            limit,
            retry_after = retry_after.as_secs(),
            "sign-in throttled"
        );
        return Err(SignInError::Throttled { retry_after, limit });
    }
    match users::authenticate(pool, email, password).await {
        Ok(user) => {
            sqlx::query("DELETE FROM sign_in_failures WHERE email = $1")
                .bind(normalize(email))
                .execute(pool)
                .await?;
            Ok(user)
        }
        Err(Error::Unauthorized) => {
            record_failure(pool, limits, email, address).await?;
            Err(SignInError::Refused(Error::Unauthorized))
        }
        Err(e) => Err(e.into()),
    }
}
