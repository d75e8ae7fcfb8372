//! The object store: a local folder by default, an S3-compatible bucket when configured.
//!
//! Keys follow DESIGN.md: `orgs/{org}/datasets/{dataset}/v{n}/…` and so on; build them
//! with the helpers here so that every key starts with its organization.

use std::sync::Arc;

use anyhow::Context;
use object_store::{
    ObjectStore,
    aws::{AmazonS3, AmazonS3Builder},
    local::LocalFileSystem,
    path::Path,
};
use secrecy::ExposeSecret;

use crate::{
    settings::{ObjectStoreKind, ObjectStoreSettings, S3Settings},
    tenancy::OrgId,
};

pub type Store = Arc<dyn ObjectStore>;

pub fn build(settings: &ObjectStoreSettings) -> anyhow::Result<Store> {
    match settings.kind {
        ObjectStoreKind::Local => {
            std::fs::create_dir_all(&settings.local_root).with_context(|| {
                format!(
                    "creating object store folder {}",
                    settings.local_root.display()
                )
            })?;
            let store = LocalFileSystem::new_with_prefix(&settings.local_root)
                .context("opening the local object store")?;
            Ok(Arc::new(store))
        }
        ObjectStoreKind::S3 => Ok(Arc::new(s3(&settings.s3)?)),
    }
}

/// An S3 bucket (AWS, or any S3-compatible server named by `endpoint`), addressed
/// path-style (`{endpoint}/{bucket}/{key}`), which every S3-compatible server accepts.
/// Keys left empty come from the usual `AWS_*` variables and instance credentials.
fn s3(settings: &S3Settings) -> anyhow::Result<AmazonS3> {
    if settings.bucket.trim().is_empty() {
        anyhow::bail!(
            "object_store.s3.bucket (TAILOR__OBJECT_STORE__S3__BUCKET) is required when object_store.kind = \"s3\""
        );
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&settings.bucket)
        .with_allow_http(settings.allow_http);
    if !settings.region.is_empty() {
        builder = builder.with_region(&settings.region);
    }
    if !settings.endpoint.is_empty() {
        if settings.endpoint.starts_with("http://") && !settings.allow_http {
            anyhow::bail!(
                "object_store.s3.endpoint `{}` is plain http: set object_store.s3.allow_http = true (TAILOR__OBJECT_STORE__S3__ALLOW_HTTP) to allow it",
                settings.endpoint
            );
        }
        builder = builder.with_endpoint(&settings.endpoint);
    }
    if !settings.access_key_id.is_empty() {
        builder = builder.with_access_key_id(&settings.access_key_id);
    }
    if let Some(secret) = &settings.secret_access_key {
        builder = builder.with_secret_access_key(secret.expose_secret());
    }
    builder.build().with_context(|| {
        format!(
            "configuring the S3 object store (bucket `{}`, endpoint `{}`)",
            settings.bucket, settings.endpoint
        )
    })
}

/// The prefix of every object an organization owns.
pub fn org_prefix(org: OrgId) -> Path {
    Path::from(format!("orgs/{}", org.0))
}

/// `orgs/{org}/datasets/{dataset}/v{version}`.
pub fn dataset_version_prefix(org: OrgId, dataset: uuid::Uuid, version: i32) -> Path {
    Path::from(format!("orgs/{}/datasets/{dataset}/v{version}", org.0))
}

/// Reachability probe for `/readyz`: lists the root, which every backend supports.
pub async fn check(store: &Store) -> anyhow::Result<()> {
    store
        .list_with_delimiter(None)
        .await
        .context("listing the object store root")?;
    Ok(())
}
