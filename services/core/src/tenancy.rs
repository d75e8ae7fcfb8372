//! Tenancy: every organization-owned row carries `org_id`, and every query filters on it.
//!
//! The pattern every org-scoped resource follows (members and invitations do; datasets,
//! jobs and models should):
//!
//! 1. The table has `org_id uuid NOT NULL REFERENCES orgs(id)`, and its lookups are
//!    `WHERE org_id = $1 AND id = $2` — never by `id` alone.
//! 2. Query functions take an [`OrgId`] first: `datasets::find(&pool, org, id)`. An
//!    `OrgId` comes from the portal's `CurrentMember` extractor, i.e. from a membership
//!    that was checked, never from the request path or body.
//! 3. A lookup returns `Option<T>`; handlers turn `None` into `Error::NotFound` with
//!    [`crate::error::OrNotFound`]. Another organization's object is thus a plain 404:
//!    not a 403, and never the object.
//!
//! ```ignore
//! #[tracing::instrument(skip(pool))]
//! pub async fn find(pool: &PgPool, org: OrgId, id: Uuid) -> sqlx::Result<Option<Dataset>> {
//!     sqlx::query_as("SELECT * FROM datasets WHERE org_id = $1 AND id = $2")
//!         .bind(org).bind(id).fetch_optional(pool).await
//! }
//! ```

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The id of an organization whose membership the caller has proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct OrgId(pub Uuid);

impl std::fmt::Display for OrgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
