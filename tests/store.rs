//! The object-store contract, run against both backends: the local directory,
//! and S3 through a real S3-compatible HTTP server.

mod harness;

use std::collections::BTreeMap;

use bytes::Bytes;
use tidemark::archive::store::{self, ObjectStore, StoreError};

async fn contract(store: &dyn ObjectStore) {
    let meta: BTreeMap<String, String> = [(
        "first-commit-time".to_string(),
        "2026-11-21T10:00:00Z".to_string(),
    )]
    .into();
    store
        .put("segments/a", Bytes::from_static(b"one"), &meta)
        .await
        .unwrap();
    store
        .put("segments/b", Bytes::from_static(b"two!"), &BTreeMap::new())
        .await
        .unwrap();
    store
        .put("manifests/x", Bytes::from_static(b"{}"), &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(&store.get("segments/a").await.unwrap()[..], b"one");
    let listed: Vec<(String, u64)> = store
        .list("segments/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(
        listed,
        vec![("segments/a".to_string(), 3), ("segments/b".to_string(), 4)]
    );
    let head = store.head("segments/a").await.unwrap().unwrap();
    assert_eq!(head.size, 3);
    assert_eq!(head.metadata, meta);
    assert_eq!(store.head("segments/zzz").await.unwrap(), None);
    assert!(matches!(
        store.get("segments/zzz").await,
        Err(StoreError::NotFound { .. })
    ));
    store.delete("segments/a").await.unwrap();
    assert_eq!(store.head("segments/a").await.unwrap(), None);
    assert_eq!(store.list("segments/").await.unwrap().len(), 1);
    assert!(store.list("nothing/").await.unwrap().is_empty());

    // A file bigger than one multipart part goes up whole, and comes down
    // whole (from S3 in ranges fetched at once).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let big: Vec<u8> = (0..(70u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &big).unwrap();
    store.put_file("snapshots/big", &path, &meta).await.unwrap();
    assert_eq!(
        store.head("snapshots/big").await.unwrap().unwrap().size,
        big.len() as u64
    );
    assert!(store.get("snapshots/big").await.unwrap() == big);
    let copy = dir.path().join("copy");
    assert_eq!(
        store.get_to_file("snapshots/big", &copy).await.unwrap(),
        big.len() as u64
    );
    assert!(std::fs::read(&copy).unwrap() == big);
    assert!(matches!(
        store.get_to_file("segments/zzz", &copy).await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn the_local_directory_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    contract(&*store::open(&url, &Default::default()).await.unwrap()).await;
}

#[tokio::test]
async fn s3_meets_the_contract_with_and_without_a_prefix() {
    let s3 = harness::s3();
    for prefix in ["", "/team/db1"] {
        let bucket = s3.bucket().await;
        let store = store::open(&format!("s3://{bucket}{prefix}"), &s3.options())
            .await
            .unwrap();
        contract(&*store).await;
    }
}

#[tokio::test]
async fn a_missing_bucket_is_refused_and_an_unreachable_store_is_retryable() {
    let s3 = harness::s3();
    let store = store::open("s3://no-such-bucket", &s3.options())
        .await
        .unwrap();
    let error = store
        .put("k", Bytes::new(), &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    assert!(error.to_string().contains("no-such-bucket"), "{error}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = store::S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..s3.options()
    };
    let store = store::open("s3://bucket", &options).await.unwrap();
    let error = store
        .put("k", Bytes::new(), &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(!error.to_string().contains(harness::S3_SECRET));
}

#[tokio::test]
async fn unknown_store_urls_are_refused() {
    let error = store::open("ftp://x", &Default::default())
        .await
        .err()
        .unwrap();
    assert!(error
        .to_string()
        .contains("use file:///path or s3://bucket/prefix"));
}

#[tokio::test]
async fn old_manifests_are_trimmed_to_the_newest_few() {
    use tidemark::archive::manifest::{Manifest, SourceId};
    use tidemark::archive::retention::{trim_manifests, MANIFESTS_KEPT};
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(
        &format!("file://{}", dir.path().display()),
        &Default::default(),
    )
    .await
    .unwrap();
    let mut manifest = Manifest::new(SourceId {
        system_identifier: "1".into(),
        database: "d".into(),
        slot: "s".into(),
    });
    for sequence in 1..=40 {
        manifest.sequence = sequence;
        let (key, body) = manifest.encode();
        store.put(&key, body, &BTreeMap::new()).await.unwrap();
    }
    assert_eq!(
        trim_manifests(&*store).await.unwrap(),
        40 - MANIFESTS_KEPT - 1
    );
    let left = store.list("manifests/").await.unwrap();
    assert_eq!(left.len(), MANIFESTS_KEPT + 1);
    let (_, current) = tidemark::archive::manifest::load_latest(&*store)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.sequence, 40);
}
