//! Organizations and their members. Every member query is scoped by `OrgId`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::Role;
use crate::{error::Error, tenancy::OrgId};

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    pub slug: String,
    pub created_at: DateTime<Utc>,
}

/// An organization as one of its members sees it.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Membership {
    pub org_id: OrgId,
    pub name: String,
    pub slug: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Member {
    pub id: Uuid,
    pub org_id: OrgId,
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// `"Acme Legal!"` → `"acme-legal-3f2a1c"`: readable, and unique thanks to the suffix.
fn slug_for(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let suffix = &Uuid::new_v4().simple().to_string()[..6];
    if slug.is_empty() {
        format!("org-{suffix}")
    } else {
        format!("{slug}-{suffix}")
    }
}

/// Creates an organization with `user` as its first member, inside the caller's transaction.
pub async fn create_in(
    conn: &mut PgConnection,
    name: &str,
    user: Uuid,
    role: Role,
) -> Result<Org, Error> {
    let org: Org = sqlx::query_as(
        "INSERT INTO orgs (id, name, slug) VALUES ($1, $2, $3) RETURNING id, name, slug, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(slug_for(name))
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO org_members (id, org_id, user_id, role) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::now_v7())
        .bind(org.id)
        .bind(user)
        .bind(role.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(org)
}

#[tracing::instrument(skip(pool))]
pub async fn create(pool: &PgPool, name: &str, owner: Uuid) -> Result<Org, Error> {
    let mut tx = pool.begin().await?;
    let org = create_in(&mut tx, name, owner, Role::Owner).await?;
    tx.commit().await?;
    Ok(org)
}

/// Every organization the user belongs to, oldest membership first.
#[tracing::instrument(skip(pool))]
pub async fn memberships(pool: &PgPool, user: Uuid) -> sqlx::Result<Vec<Membership>> {
    sqlx::query_as(
        "SELECT o.id AS org_id, o.name, o.slug, m.role
         FROM org_members m JOIN orgs o ON o.id = m.org_id
         WHERE m.user_id = $1 ORDER BY m.created_at, m.id",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}

/// The user's membership of `org`, if any: the check behind every org-scoped request.
#[tracing::instrument(skip(pool))]
pub async fn membership(pool: &PgPool, org: OrgId, user: Uuid) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(MEMBER_SELECT_BY_USER)
        .bind(org)
        .bind(user)
        .fetch_optional(pool)
        .await
}

const MEMBER_COLUMNS: &str =
    "m.id, m.org_id, m.user_id, u.email, u.display_name, m.role, m.created_at
     FROM org_members m JOIN users u ON u.id = m.user_id";
const MEMBER_SELECT_BY_USER: &str =
    "SELECT m.id, m.org_id, m.user_id, u.email, u.display_name, m.role, m.created_at
     FROM org_members m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND m.user_id = $2";

#[tracing::instrument(skip(pool))]
pub async fn members(pool: &PgPool, org: OrgId) -> sqlx::Result<Vec<Member>> {
    sqlx::query_as(&format!(
        "SELECT {MEMBER_COLUMNS} WHERE m.org_id = $1 ORDER BY m.created_at, m.id"
    ))
    .bind(org)
    .fetch_all(pool)
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn find_member(pool: &PgPool, org: OrgId, member: Uuid) -> sqlx::Result<Option<Member>> {
    sqlx::query_as(&format!(
        "SELECT {MEMBER_COLUMNS} WHERE m.org_id = $1 AND m.id = $2"
    ))
    .bind(org)
    .bind(member)
    .fetch_optional(pool)
    .await
}

async fn owner_count(conn: &mut PgConnection, org: OrgId) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM org_members WHERE org_id = $1 AND role = 'owner'")
        .bind(org)
        .fetch_one(conn)
        .await
}

/// Changes a member's role. `acting` is the caller's role: only owners grant or take away
/// ownership, and the last owner cannot be demoted.
#[tracing::instrument(skip(pool))]
pub async fn change_role(
    pool: &PgPool,
    org: OrgId,
    acting: Role,
    member: Uuid,
    role: Role,
) -> Result<Member, Error> {
    let mut tx = pool.begin().await?;
    let current: Option<(String,)> =
        sqlx::query_as("SELECT role FROM org_members WHERE org_id = $1 AND id = $2 FOR UPDATE")
            .bind(org)
            .bind(member)
            .fetch_optional(&mut *tx)
            .await?;
    let current = Role::try_from(current.ok_or(Error::NotFound)?.0)?;
    if (current == Role::Owner || role == Role::Owner) && acting != Role::Owner {
        return Err(Error::forbidden(
            "Only an owner can grant or remove ownership.",
        ));
    }
    if current == Role::Owner && role != Role::Owner && owner_count(&mut tx, org).await? <= 1 {
        return Err(Error::validation(
            "role",
            "An organization needs at least one owner.",
        ));
    }
    sqlx::query("UPDATE org_members SET role = $3 WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(member)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    find_member(pool, org, member).await?.ok_or(Error::NotFound)
}

/// Removes a member; the last owner stays.
#[tracing::instrument(skip(pool))]
pub async fn remove_member(
    pool: &PgPool,
    org: OrgId,
    acting: Role,
    member: Uuid,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    let current: Option<(String,)> =
        sqlx::query_as("SELECT role FROM org_members WHERE org_id = $1 AND id = $2 FOR UPDATE")
            .bind(org)
            .bind(member)
            .fetch_optional(&mut *tx)
            .await?;
    let current = Role::try_from(current.ok_or(Error::NotFound)?.0)?;
    if current == Role::Owner && acting != Role::Owner {
        return Err(Error::forbidden("Only an owner can remove an owner."));
    }
    if current == Role::Owner && owner_count(&mut tx, org).await? <= 1 {
        return Err(Error::validation(
            "member",
            "An organization needs at least one owner.",
        ));
    }
    sqlx::query("DELETE FROM org_members WHERE org_id = $1 AND id = $2")
        .bind(org)
        .bind(member)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, org: OrgId) -> sqlx::Result<Option<Org>> {
    sqlx::query_as("SELECT id, name, slug, created_at FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_optional(pool)
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs() {
        let s = super::slug_for("Acme Legal! 律所");
        assert!(s.starts_with("acme-legal-"), "{s}");
        assert!(super::slug_for("律所").starts_with("org-"));
    }
}
