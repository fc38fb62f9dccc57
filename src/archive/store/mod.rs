//! The object store: one small trait, with a local-directory and an S3 backend.
//!
//! Objects are written whole and atomically (temp file + rename locally, a
//! single PUT on S3) and never overwritten in place: every key tidemark writes
//! names its content (an LSN range and a hash, or a manifest sequence and hash).

pub mod crypt;
pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::base::exit::ExitCode;
use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} does not exist in {store}")]
    NotFound { store: String, key: String },
    /// The store could not be reached or failed for now; retrying may succeed.
    #[error("object store {store} is unavailable ({action} {key}): {message}")]
    Unavailable {
        store: String,
        action: &'static str,
        key: String,
        message: String,
    },
    /// Retrying will not help: credentials, permissions, a bad bucket or path.
    #[error("object store {store} refused {action} {key}: {message}; check [archive] url and the store's credentials and permissions")]
    Refused {
        store: String,
        action: &'static str,
        key: String,
        message: String,
    },
    #[error("[archive] url {url} is not supported; use file:///path or s3://bucket/prefix")]
    BadUrl { url: String },
    #[error("[archive] url {url} names S3, and this tidemark was built without S3 support; build it with the s3 feature (on by default), or use a file:/// url")]
    NoS3 { url: String },
    #[error(transparent)]
    Crypt(#[from] crate::archive::crypt::CryptError),
}

impl StoreError {
    pub fn exit_code(&self) -> ExitCode {
        use StoreError::*;
        match self {
            Refused { .. } | BadUrl { .. } | NoS3 { .. } => ExitCode::BadInput,
            NotFound { .. } | Unavailable { .. } => ExitCode::Failure,
            Crypt(e) => e.exit_code(),
        }
    }
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// What `head` and `list` report of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub metadata: BTreeMap<String, String>,
    /// When the store last wrote it, if the store says.
    pub modified: Option<std::time::SystemTime>,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes `data` under `key` atomically, with string metadata.
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;
    /// Writes the file at `path` under `key`, streaming it: for objects too big to hold in memory.
    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;
    /// Streams the object into a new file at `path`; returns its size.
    async fn get_to_file(&self, key: &str, path: &std::path::Path) -> Result<u64, StoreError>;
    /// Every object whose key starts with `prefix`, sorted by key. Metadata is not filled in.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// The object's size and metadata, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError>;
    /// Where the store is, for messages (never with credentials).
    fn describe(&self) -> String;
    /// The id of the key objects are encrypted with, if any.
    fn key_id(&self) -> Option<String> {
        None
    }
    /// Every key id objects may be encrypted with: the current key's and previous ones'.
    fn key_ids(&self) -> Vec<String> {
        Vec::new()
    }
    /// The object, and the id of the key it was encrypted with (`None` if cleartext).
    async fn get_sealed(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        Ok((self.get(key).await?, None))
    }
}

/// Where and how to reach an S3-compatible store.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
}

/// Opens the store an `[archive]` section names, with its encryption key.
pub async fn open_configured(
    config: &crate::config::ArchiveConfig,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let s3 = S3Options {
        endpoint: config.endpoint.clone(),
        region: config.region.clone(),
        path_style: config.path_style,
    };
    let keys = crate::archive::crypt::Keyring::configured(config)?;
    open_with_key(&config.url, &s3, keys).await
}

/// Opens the store an `[archive] url` names, without an encryption key.
pub async fn open(url: &str, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, StoreError> {
    open_with_key(url, s3, None).await
}

/// Opens the store, encrypting every object with the current key of `keys` if
/// given, and reading only objects encrypted under one of them. Without keys,
/// an encrypted object read is a clear error.
pub async fn open_with_key(
    url: &str,
    s3: &S3Options,
    keys: Option<Arc<crate::archive::crypt::Keyring>>,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let bad_url = || StoreError::BadUrl {
        url: url.to_string(),
    };
    let inner: Arc<dyn ObjectStore> = if let Some(path) = url.strip_prefix("file://") {
        Arc::new(local::LocalStore::new(path.into()))
    } else if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad_url());
        }
        s3_store(url, bucket, prefix, s3).await?
    } else {
        return Err(bad_url());
    };
    Ok(Arc::new(crypt::CryptStore::new(inner, keys)))
}

#[cfg(feature = "s3")]
async fn s3_store(
    _url: &str,
    bucket: &str,
    prefix: &str,
    options: &S3Options,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    Ok(Arc::new(s3::S3Store::new(bucket, prefix, options).await))
}

#[cfg(not(feature = "s3"))]
async fn s3_store(
    url: &str,
    _bucket: &str,
    _prefix: &str,
    _options: &S3Options,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    Err(StoreError::NoS3 {
        url: url.to_string(),
    })
}
