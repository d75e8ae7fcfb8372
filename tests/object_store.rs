//! The S3 object store against a real S3-compatible server on loopback (moto, started by
//! `scripts/s3-server` when nothing listens on its port): write, list, read and delete
//! through `tailor_core::storage`, and the settings errors that name what is missing.

use futures::TryStreamExt;
use object_store::{ObjectStore, PutPayload, path::Path};
use secrecy::SecretString;
use tailor_core::settings::{ObjectStoreKind, ObjectStoreSettings, S3Settings};
use tailor_core::storage;

/// The S3 endpoint of the tests (`TAILOR_TEST_S3_ENDPOINT`, else the server that
/// `scripts/s3-server` starts or finds).
pub fn s3_endpoint() -> String {
    if let Ok(endpoint) = std::env::var("TAILOR_TEST_S3_ENDPOINT") {
        return endpoint;
    }
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3-server"))
        .output()
        .expect("running scripts/s3-server");
    assert!(
        out.status.success(),
        "scripts/s3-server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn s3_settings(endpoint: &str, bucket: &str) -> ObjectStoreSettings {
    ObjectStoreSettings {
        kind: ObjectStoreKind::S3,
        s3: S3Settings {
            bucket: bucket.into(),
            region: "us-east-1".into(),
            endpoint: endpoint.into(),
            access_key_id: "tailor-test".into(),
            secret_access_key: Some(SecretString::from("tailor-test-secret")),
            allow_http: true,
        },
        ..ObjectStoreSettings::default()
    }
}

#[tokio::test]
async fn the_s3_store_writes_lists_and_reads_through_the_storage_layer() {
    let endpoint = s3_endpoint();
    let bucket = format!("tailor-test-{}", uuid::Uuid::new_v4().simple());
    // The bucket is the operator's to make; moto takes an unsigned create.
    let made = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "{:?}", made.text().await);

    let store = storage::build(&s3_settings(&endpoint, &bucket)).expect("an S3 store");
    storage::check(&store)
        .await
        .expect("the bucket is reachable");
    let org = tailor_core::OrgId(uuid::Uuid::new_v4());
    let prefix = storage::dataset_version_prefix(org, uuid::Uuid::new_v4(), 1);
    let data = Path::from(format!("{prefix}/data.jsonl"));
    let manifest = Path::from(format!("{prefix}/manifest.json"));
    let body = "{\"review\":\"fine\",\"rating\":\"positive\"}\n".repeat(1000);
    store
        .put(&data, PutPayload::from(body.clone().into_bytes()))
        .await
        .unwrap();
    store
        .put(&manifest, PutPayload::from_static(b"{}"))
        .await
        .unwrap();

    let mut listed: Vec<(String, u64)> = store
        .list(Some(&storage::org_prefix(org)))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            (data.to_string(), body.len() as u64),
            (manifest.to_string(), 2)
        ]
    );
    let read = store.get(&data).await.unwrap().bytes().await.unwrap();
    assert_eq!(read, body.as_bytes());
    let ranged = store.get_range(&data, 0..8).await.unwrap();
    assert_eq!(&ranged[..], &body.as_bytes()[..8]);

    store.delete(&data).await.unwrap();
    assert!(matches!(
        store.get(&data).await,
        Err(object_store::Error::NotFound { .. })
    ));
    // Another bucket's store does not see this one's objects.
    let other = storage::build(&s3_settings(&endpoint, &format!("{bucket}-absent"))).unwrap();
    assert!(storage::check(&other).await.is_err());
}

#[test]
fn s3_settings_errors_name_the_setting() {
    let missing = storage::build(&s3_settings("http://127.0.0.1:1", " "))
        .err()
        .unwrap();
    assert!(
        missing
            .to_string()
            .contains("TAILOR__OBJECT_STORE__S3__BUCKET"),
        "{missing:#}"
    );
    let mut plain = s3_settings("http://127.0.0.1:1", "b");
    plain.s3.allow_http = false;
    let refused = storage::build(&plain).err().unwrap();
    assert!(refused.to_string().contains("allow_http"), "{refused:#}");
}
