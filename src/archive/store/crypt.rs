//! Wraps a store so every object is encrypted on the way in and decrypted on
//! the way out. With keys configured, an object that is not encrypted under
//! one of them is refused by name; without keys, an encrypted object is
//! recognised and named too.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ObjectStore, StoreError};
use crate::archive::crypt::{self, DecryptError, Keyring};

pub struct CryptStore {
    inner: Arc<dyn ObjectStore>,
    keys: Option<Arc<Keyring>>,
}

impl CryptStore {
    pub fn new(inner: Arc<dyn ObjectStore>, keys: Option<Arc<Keyring>>) -> CryptStore {
        CryptStore { inner, keys }
    }

    fn decrypt_error(object: &str, e: DecryptError) -> StoreError {
        match e {
            DecryptError::Crypt(e) => StoreError::Crypt(e),
            DecryptError::Io(e) => StoreError::Refused {
                store: "local".into(),
                action: "get",
                key: object.to_string(),
                message: e.to_string(),
            },
        }
    }

    fn refused(&self, key: &str, e: std::io::Error) -> StoreError {
        StoreError::Refused {
            store: self.describe(),
            action: "put",
            key: key.to_string(),
            message: e.to_string(),
        }
    }

    /// Decrypts `data` with the configured keys; without keys, only cleartext passes.
    fn open(&self, object: &str, data: Bytes) -> Result<Bytes, StoreError> {
        let Some(keys) = &self.keys else {
            return match crypt::key_id_of(&data) {
                Some(found) => Err(StoreError::Crypt(crypt::CryptError::NoKey {
                    object: object.to_string(),
                    found,
                })),
                None => Ok(data),
            };
        };
        let mut plain = Vec::with_capacity(data.len());
        keys.decrypt(object, &data[..], &mut plain)
            .map_err(|e| Self::decrypt_error(object, e))?;
        Ok(Bytes::from(plain))
    }
}

fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile, StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::Refused {
        store: "local".into(),
        action: "put",
        key: path.display().to_string(),
        message: e.to_string(),
    })
}

#[async_trait]
impl ObjectStore for CryptStore {
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let data = match &self.keys {
            Some(keys) => {
                let (keys, object) = (keys.clone(), key.to_string());
                let sealed = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::with_capacity(data.len() + 64);
                    keys.current()
                        .encrypt(&object, &data[..], &mut out)
                        .map(|()| out)
                })
                .await
                .expect("encrypting an object")
                .map_err(|e| self.refused(key, e))?;
                Bytes::from(sealed)
            }
            None => data,
        };
        self.inner.put(key, data, metadata).await
    }

    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let Some(keys) = self.keys.clone() else {
            return self.inner.put_file(key, path, metadata).await;
        };
        let sealed = temp_beside(path)?;
        let (source, target) = (path.to_path_buf(), sealed.path().to_path_buf());
        let object = key.to_string();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let input = std::io::BufReader::new(std::fs::File::open(source)?);
            let mut output = std::io::BufWriter::new(std::fs::File::create(target)?);
            keys.current().encrypt(&object, input, &mut output)?;
            std::io::Write::flush(&mut output)
        })
        .await
        .expect("encrypting a file")
        .map_err(|e| self.refused(key, e))?;
        self.inner.put_file(key, sealed.path(), metadata).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let data = self.inner.get(key).await?;
        self.open(key, data)
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        let stored = temp_beside(path)?;
        self.inner.get_to_file(key, stored.path()).await?;
        let Some(keys) = self.keys.clone() else {
            let mut head = [0u8; crypt::HEADER_LEN];
            let encrypted = std::fs::File::open(stored.path())
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .ok()
                .and_then(|()| crypt::key_id_of(&head));
            if let Some(found) = encrypted {
                return Err(StoreError::Crypt(crypt::CryptError::NoKey {
                    object: key.to_string(),
                    found,
                }));
            }
            std::fs::rename(stored.path(), path).map_err(|e| Self::decrypt_error(key, e.into()))?;
            return std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(|e| Self::decrypt_error(key, e.into()));
        };
        let (source, target, object) = (
            stored.path().to_path_buf(),
            path.to_path_buf(),
            key.to_string(),
        );
        tokio::task::spawn_blocking(move || -> Result<u64, DecryptError> {
            let input = std::io::BufReader::new(std::fs::File::open(source)?);
            let mut output = std::io::BufWriter::new(std::fs::File::create(&target)?);
            keys.decrypt(&object, input, &mut output)?;
            std::io::Write::flush(&mut output)?;
            Ok(std::fs::metadata(&target)?.len())
        })
        .await
        .expect("decrypting a file")
        .map_err(|e| Self::decrypt_error(key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head(key).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn key_id(&self) -> Option<String> {
        self.keys.as_ref().map(|k| k.current().id())
    }

    fn key_ids(&self) -> Vec<String> {
        self.keys.as_ref().map(|k| k.ids()).unwrap_or_default()
    }

    async fn get_sealed(&self, key: &str) -> Result<(Bytes, Option<String>), StoreError> {
        let data = self.inner.get(key).await?;
        let sealed_by = crypt::key_id_of(&data);
        Ok((self.open(key, data)?, sealed_by))
    }
}
