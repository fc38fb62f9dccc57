//! A local directory as an object store (`file:///path`): the embedded default.
//!
//! A put writes a temp file, fsyncs it, renames it into place and fsyncs the
//! directory, so an object is either wholly there or not at all. Metadata lives
//! in a JSON sidecar written (the same way) before the object itself.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectInfo, ObjectStore, StoreError};

const META_SUFFIX: &str = ".meta.json";
const TEMP_PREFIX: &str = ".tmp-";

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn error(&self, action: &'static str, key: &str, e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::NotFound && action != "put" {
            return StoreError::NotFound {
                store: self.describe(),
                key: key.to_string(),
            };
        }
        let permanent = matches!(
            e.kind(),
            std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::NotADirectory
                | std::io::ErrorKind::ReadOnlyFilesystem
        );
        let (store, key, message) = (self.describe(), key.to_string(), e.to_string());
        if permanent {
            StoreError::Refused {
                store,
                action,
                key,
                message,
            }
        } else {
            StoreError::Unavailable {
                store,
                action,
                key,
                message,
            }
        }
    }
}

/// Writes `path` through a temp file beside it: fill, fsync, rename, fsync the dir.
fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().expect("object paths have a parent");
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .expect("object paths have a name")
        .to_string_lossy();
    let temp = dir.join(format!("{TEMP_PREFIX}{name}-{}", std::process::id()));
    let mut file = std::fs::File::create(&temp)?;
    fill(&mut file)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn meta_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}{META_SUFFIX}", path.display()))
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let path = self.path(key);
        let meta = serde_json::to_vec(metadata).expect("string maps serialize");
        tokio::task::spawn_blocking(move || {
            write_atomically(&meta_path(&path), |f| f.write_all(&meta))?;
            write_atomically(&path, |f| f.write_all(&data))
        })
        .await
        .expect("blocking put")
        .map_err(|e| self.error("put", key, e))
    }

    async fn put_file(
        &self,
        key: &str,
        source: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let path = self.path(key);
        let source = source.to_path_buf();
        let meta = serde_json::to_vec(metadata).expect("string maps serialize");
        tokio::task::spawn_blocking(move || {
            write_atomically(&meta_path(&path), |f| f.write_all(&meta))?;
            write_atomically(&path, |f| {
                std::io::copy(&mut std::fs::File::open(&source)?, f).map(|_| ())
            })
        })
        .await
        .expect("blocking put")
        .map_err(|e| self.error("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        tokio::fs::read(self.path(key))
            .await
            .map(Bytes::from)
            .map_err(|e| self.error("get", key, e))
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, StoreError> {
        tokio::fs::copy(self.path(key), path)
            .await
            .map_err(|e| self.error("get", key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let found = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<ObjectInfo>> {
            let mut out = Vec::new();
            // Walk only the directory the prefix lies in, and below it.
            let start = match prefix.rfind('/') {
                Some(i) => root.join(&prefix[..i]),
                None => root.clone(),
            };
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    let file_type = entry.file_type()?;
                    if file_type.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(TEMP_PREFIX) || name.ends_with(META_SUFFIX) {
                        continue;
                    }
                    let key = path
                        .strip_prefix(&root)
                        .expect("listed below the root")
                        .to_string_lossy()
                        .into_owned();
                    if key.starts_with(&prefix) {
                        let metadata = entry.metadata()?;
                        out.push(ObjectInfo {
                            key,
                            size: metadata.len(),
                            metadata: BTreeMap::new(),
                            modified: metadata.modified().ok(),
                        });
                    }
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .expect("blocking list");
        found.map_err(|e| self.error("list", "(listing)", e))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.error("delete", key, e)),
        }
        let _ = tokio::fs::remove_file(meta_path(&path)).await;
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let path = self.path(key);
        let (size, modified) = match tokio::fs::metadata(&path).await {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error("head", key, e)),
        };
        let metadata = match tokio::fs::read(meta_path(&path)).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => BTreeMap::new(),
        };
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size,
            metadata,
            modified,
        }))
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_root_under_a_file_is_refused_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let store = LocalStore::new(file.join("archive"));
        let error = store
            .put("k", Bytes::new(), &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(!error.is_retryable(), "{error}");
    }
}
