//! Demo content for `tailor demo` / `tailor up --demo`: idempotent.

use secrecy::SecretString;
use sqlx::PgPool;

use crate::{
    accounts::{Email, Password, orgs, users},
    error::Error,
    tenancy::OrgId,
};

pub const DEMO_EMAIL: &str = "demo@tailor.local";
pub const DEMO_PASSWORD: &str = "tailor-demo";
pub const DEMO_ORG: &str = "Demo Legal Team";

/// What `ensure_demo` made (or found), for later demo steps to build on.
#[derive(Debug, Clone)]
pub struct Demo {
    pub user_id: uuid::Uuid,
    pub org_id: OrgId,
}

/// Creates the demo user and organization unless they exist. Extend here (e.g. a demo
/// dataset under `demo.org_id`) so that one command prepares everything.
#[tracing::instrument(skip(pool))]
pub async fn ensure_demo(pool: &PgPool) -> Result<Demo, Error> {
    let email = Email::parse(DEMO_EMAIL)?;
    let user = match users::find_by_email(pool, &email).await? {
        Some(user) => user,
        None => {
            let new = users::NewUser {
                email,
                display_name: "Demo".into(),
                password: Password::parse(SecretString::from(DEMO_PASSWORD))?,
            };
            match users::sign_up(pool, new).await {
                // The organization made at sign-up becomes the demo organization, so that
                // signing in lands where the demo dataset and blueprint are.
                Ok((user, personal_org)) => {
                    sqlx::query("UPDATE orgs SET name = $2 WHERE id = $1")
                        .bind(personal_org.id)
                        .bind(DEMO_ORG)
                        .execute(pool)
                        .await?;
                    user
                }
                // Created concurrently by another process.
                Err(Error::Conflict { .. }) => {
                    users::find_by_email(pool, &Email::parse(DEMO_EMAIL)?)
                        .await?
                        .ok_or(Error::NotFound)?
                }
                Err(e) => return Err(e),
            }
        }
    };
    let memberships = orgs::memberships(pool, user.id).await?;
    let org_id = match memberships.iter().find(|m| m.name == DEMO_ORG) {
        Some(m) => m.org_id,
        None => orgs::create(pool, DEMO_ORG, user.id).await?.id,
    };
    tracing::info!(email = DEMO_EMAIL, %org_id, "demo user and organization ready");
    Ok(Demo {
        user_id: user.id,
        org_id,
    })
}

/// [`ensure_demo`], plus a demo dataset ("Drug reviews") and a blueprint for it (see
/// [`crate::blueprints::ensure_demo_blueprint`]) in the demo organization: what
/// `tailor demo` and `tailor up --demo` prepare.
#[tracing::instrument(skip_all)]
pub async fn ensure_demo_with_dataset(
    pool: &PgPool,
    settings: &crate::Settings,
) -> Result<Demo, Error> {
    let demo = ensure_demo(pool).await?;
    let store = crate::storage::build(&settings.object_store)?;
    crate::datasets::ensure_demo_dataset(
        pool,
        &store,
        demo.org_id,
        demo.user_id,
        settings.application.max_upload_bytes,
    )
    .await
    .map_err(|e| match e {
        crate::datasets::UploadError::Other(e) => e,
        other => Error::Unexpected(anyhow::anyhow!("the demo dataset was refused: {other}")),
    })?;
    crate::blueprints::ensure_demo_blueprint(pool, demo.org_id, demo.user_id).await?;
    Ok(demo)
}
