//! The object store: a local folder by default, an S3-compatible bucket when configured.
//!
//! Keys follow DESIGN.md: `orgs/{org}/datasets/{dataset}/v{n}/…` and so on; build them
//! with the helpers here so that every key starts with its organization.

use std::sync::Arc;

use anyhow::Context;
use object_store::{ObjectStore, local::LocalFileSystem, path::Path};

use crate::{
    settings::{ObjectStoreKind, ObjectStoreSettings},
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
        // TODO(storage): enable `object_store`'s `aws` feature and build with
        // `object_store::aws::AmazonS3Builder` (bucket, region, endpoint, keys, allow_http).
        // It pulls an HTTP/TLS stack that was not worth its compile time in the first cut.
        ObjectStoreKind::S3 => anyhow::bail!(
            "object_store.kind = \"s3\" is not built into this binary yet; use \"local\""
        ),
    }
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
