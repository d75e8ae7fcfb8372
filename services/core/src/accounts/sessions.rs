//! Server-side sessions behind the session JWT: sign-out and revocation are real because
//! a JWT is only honoured while its `sessions` row is live.

use chrono::{DateTime, Duration, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::{auth, tenancy::OrgId};

#[derive(Debug, Clone, FromRow)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub current_org_id: Option<OrgId>,
    /// Per-session CSRF token, echoed by forms and by cookie-authenticated JSON calls.
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

#[tracing::instrument(skip(pool))]
pub async fn create(
    pool: &PgPool,
    user: Uuid,
    org: Option<OrgId>,
    ttl: Duration,
) -> sqlx::Result<Session> {
    sqlx::query_as(
        "INSERT INTO sessions (id, user_id, current_org_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, user_id, current_org_id, csrf_token, expires_at",
    )
    .bind(Uuid::new_v4())
    .bind(user)
    .bind(org)
    .bind(auth::random_secret(32))
    .bind(Utc::now() + ttl)
    .fetch_one(pool)
    .await
}

/// The live session `id` of `user`: not revoked and not expired.
#[tracing::instrument(skip(pool))]
pub async fn find_live(pool: &PgPool, id: Uuid, user: Uuid) -> sqlx::Result<Option<Session>> {
    sqlx::query_as(
        "SELECT id, user_id, current_org_id, csrf_token, expires_at FROM sessions
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(pool)
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn revoke(pool: &PgPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Makes `org` the session's current organization (the caller checked the membership).
#[tracing::instrument(skip(pool))]
pub async fn switch_org(pool: &PgPool, id: Uuid, org: OrgId) -> sqlx::Result<()> {
    sqlx::query("UPDATE sessions SET current_org_id = $2 WHERE id = $1")
        .bind(id)
        .bind(org)
        .execute(pool)
        .await?;
    Ok(())
}
