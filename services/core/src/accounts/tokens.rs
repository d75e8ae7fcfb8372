//! Personal API tokens: a user's credential for scripts, sent as `Authorization: Bearer`.
//! Only the SHA-256 of a token is stored; the token itself is shown once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::{auth, error::Error};

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, name, created_at, last_used_at, revoked_at";

/// Creates a token; returns its record and the token, never to be shown again.
#[tracing::instrument(skip(pool))]
pub async fn create(pool: &PgPool, user: Uuid, name: &str) -> sqlx::Result<(ApiToken, String)> {
    let token = auth::new_personal_token();
    let record = sqlx::query_as(&format!(
        "INSERT INTO api_tokens (id, user_id, name, token_hash) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(name)
    .bind(auth::sha256_hex(&token))
    .fetch_one(pool)
    .await?;
    Ok((record, token))
}

#[tracing::instrument(skip(pool))]
pub async fn list(pool: &PgPool, user: Uuid) -> sqlx::Result<Vec<ApiToken>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE user_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(user)
    .fetch_all(pool)
    .await
}

/// Revokes one of the user's tokens; another user's token is `NotFound`.
#[tracing::instrument(skip(pool))]
pub async fn revoke(pool: &PgPool, user: Uuid, id: Uuid) -> Result<(), Error> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE user_id = $1 AND id = $2",
    )
    .bind(user)
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

/// The user a live token belongs to; records the use.
#[tracing::instrument(skip_all)]
pub async fn authenticate(pool: &PgPool, token: &str) -> sqlx::Result<Option<Uuid>> {
    if !token.starts_with(auth::PERSONAL_TOKEN_PREFIX) {
        return Ok(None);
    }
    sqlx::query_scalar(
        "UPDATE api_tokens SET last_used_at = now()
         WHERE token_hash = $1 AND revoked_at IS NULL RETURNING user_id",
    )
    .bind(auth::sha256_hex(token))
    .fetch_optional(pool)
    .await
}
