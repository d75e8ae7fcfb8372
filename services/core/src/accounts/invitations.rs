//! Invitations by link: an admin invites an email with a role; the link carries a random
//! token (only its hash is stored) that expires; whoever signs in and opens it joins.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::{Email, Role, orgs};
use crate::{auth, db::is_unique_violation, error::Error, tenancy::OrgId};

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Invitation {
    pub id: Uuid,
    pub org_id: OrgId,
    pub email: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub invited_by: Uuid,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Invitation {
    pub fn is_open(&self) -> bool {
        self.accepted_at.is_none() && self.revoked_at.is_none() && self.expires_at > Utc::now()
    }
}

const COLUMNS: &str =
    "id, org_id, email, role, invited_by, expires_at, accepted_at, revoked_at, created_at";

/// Creates an invitation; returns it with the token, which is never stored or shown again.
#[tracing::instrument(skip(pool))]
pub async fn create(
    pool: &PgPool,
    org: OrgId,
    invited_by: Uuid,
    email: &Email,
    role: Role,
    ttl: Duration,
) -> Result<(Invitation, String), Error> {
    if role == Role::Owner {
        return Err(Error::validation(
            "role",
            "Invite as admin, member or viewer; promote to owner later.",
        ));
    }
    let token = auth::random_secret(32);
    let invitation: Invitation = sqlx::query_as(&format!(
        "INSERT INTO invitations (id, org_id, email, role, token_hash, invited_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(org)
    .bind(email.as_str())
    .bind(role.as_str())
    .bind(auth::sha256_hex(&token))
    .bind(invited_by)
    .bind(Utc::now() + ttl)
    .fetch_one(pool)
    .await?;
    Ok((invitation, token))
}

#[tracing::instrument(skip(pool))]
pub async fn list(pool: &PgPool, org: OrgId) -> sqlx::Result<Vec<Invitation>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE org_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(org)
    .fetch_all(pool)
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, org: OrgId, id: Uuid) -> sqlx::Result<Option<Invitation>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE org_id = $1 AND id = $2"
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Revokes an open invitation; `NotFound` if it is not this organization's.
#[tracing::instrument(skip(pool))]
pub async fn revoke(pool: &PgPool, org: OrgId, id: Uuid) -> Result<(), Error> {
    let done = sqlx::query(
        "UPDATE invitations SET revoked_at = now()
         WHERE org_id = $1 AND id = $2 AND accepted_at IS NULL AND revoked_at IS NULL",
    )
    .bind(org)
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        find(pool, org, id).await?.ok_or(Error::NotFound)?;
    }
    Ok(())
}

/// The invitation a link token opens, with its organization's name, if it is still open.
#[tracing::instrument(skip_all)]
pub async fn find_open_by_token(
    pool: &PgPool,
    token: &str,
) -> sqlx::Result<Option<(Invitation, String)>> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        invitation: Invitation,
        org_name: String,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT i.id, i.org_id, i.email, i.role, i.invited_by, i.expires_at, i.accepted_at,
                i.revoked_at, i.created_at, o.name AS org_name
         FROM invitations i JOIN orgs o ON o.id = i.org_id
         WHERE i.token_hash = $1",
    )
    .bind(auth::sha256_hex(token))
    .fetch_optional(pool)
    .await?;
    Ok(row
        .filter(|r| r.invitation.is_open())
        .map(|r| (r.invitation, r.org_name)))
}

/// Accepts the invitation behind `token` for `user`: they join with the invited role.
/// The link is the credential (it may be forwarded), so the user's email is not compared.
#[tracing::instrument(skip(pool, token))]
pub async fn accept(pool: &PgPool, token: &str, user: Uuid) -> Result<orgs::Membership, Error> {
    let mut tx = pool.begin().await?;
    let invitation: Option<Invitation> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM invitations WHERE token_hash = $1 FOR UPDATE"
    ))
    .bind(auth::sha256_hex(token))
    .fetch_optional(&mut *tx)
    .await?;
    let invitation = invitation
        .filter(Invitation::is_open)
        .ok_or(Error::NotFound)?;
    let joined =
        sqlx::query("INSERT INTO org_members (id, org_id, user_id, role) VALUES ($1, $2, $3, $4)")
            .bind(Uuid::now_v7())
            .bind(invitation.org_id)
            .bind(user)
            .bind(invitation.role.as_str())
            .execute(&mut *tx)
            .await;
    if let Err(e) = joined {
        return Err(if is_unique_violation(&e) {
            Error::Conflict {
                field: None,
                message: "You are already a member of this organization.".into(),
            }
        } else {
            e.into()
        });
    }
    sqlx::query("UPDATE invitations SET accepted_at = now(), accepted_by = $2 WHERE id = $1")
        .bind(invitation.id)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    orgs::memberships(pool, user)
        .await?
        .into_iter()
        .find(|m| m.org_id == invitation.org_id)
        .ok_or(Error::NotFound)
}
