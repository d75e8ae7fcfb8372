//! Users: sign-up (a user and a personal organization, in one transaction) and sign-in.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::{Email, Password, Role, orgs};
use crate::{auth, db::is_unique_violation, error::Error, tenancy::OrgId};

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub created_at: DateTime<Utc>,
}

pub struct NewUser {
    pub email: Email,
    pub display_name: String,
    pub password: Password,
}

/// Creates the user and an organization they own; returns both.
#[tracing::instrument(skip(pool, new), fields(email = %new.email.as_str()))]
pub async fn sign_up(pool: &PgPool, new: NewUser) -> Result<(User, orgs::Org), Error> {
    let secret = new.password.0.clone();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&secret))
        .await
        .context("password hashing thread")??;
    let mut tx = pool.begin().await?;
    let user: User = sqlx::query_as(
        "INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, $3, $4)
         RETURNING id, email, display_name, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(new.email.as_str())
    .bind(&new.display_name)
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            Error::conflict("email", "An account with this email already exists.")
        } else {
            e.into()
        }
    })?;
    let org_name = format!("{}'s organization", user.display_name);
    let org = orgs::create_in(&mut tx, &org_name, user.id, Role::Owner).await?;
    tx.commit().await?;
    Ok((user, org))
}

/// The user whose email and password match; `Unauthorized` otherwise (the same answer
/// for an unknown email and a wrong password).
#[tracing::instrument(skip(pool, password))]
pub async fn authenticate(
    pool: &PgPool,
    email: &str,
    password: secrecy::SecretString,
) -> Result<User, Error> {
    #[derive(FromRow)]
    struct Row {
        id: Uuid,
        email: String,
        display_name: String,
        created_at: DateTime<Utc>,
        password_hash: String,
    }
    let email = email.trim().to_lowercase();
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, email, display_name, created_at, password_hash FROM users WHERE lower(email) = $1",
    )
    .bind(&email)
    .fetch_optional(pool)
    .await?;
    // Verify against a real hash even for unknown emails, so that timing does not reveal
    // which emails have accounts.
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        auth::hash_password(&secrecy::SecretString::from(auth::random_secret(16)))
            .expect("hashing a random password")
    });
    let phc = match &row {
        Some(r) => r.password_hash.clone(),
        None => DUMMY.clone(),
    };
    let ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &phc))
        .await
        .context("password verification thread")?
        .unwrap_or(false);
    match row {
        Some(r) if ok => Ok(User {
            id: r.id,
            email: r.email,
            display_name: r.display_name,
            created_at: r.created_at,
        }),
        _ => Err(Error::Unauthorized),
    }
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<User>> {
    sqlx::query_as("SELECT id, email, display_name, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

#[tracing::instrument(skip(pool))]
pub async fn find_by_email(pool: &PgPool, email: &Email) -> sqlx::Result<Option<User>> {
    sqlx::query_as("SELECT id, email, display_name, created_at FROM users WHERE lower(email) = $1")
        .bind(email.as_str())
        .fetch_optional(pool)
        .await
}

/// The organization a user works in when nothing else says which: their oldest membership.
#[tracing::instrument(skip(pool))]
pub async fn default_org(pool: &PgPool, user: Uuid) -> sqlx::Result<Option<OrgId>> {
    sqlx::query_scalar(
        "SELECT org_id FROM org_members WHERE user_id = $1 ORDER BY created_at, id LIMIT 1",
    )
    .bind(user)
    .fetch_optional(pool)
    .await
}
