//! The archive's copy of the audit log: the local lines, shipped in batches
//! to `audit/<chain>/<first seq>-<last seq>.jsonl` (sealed like every
//! object), so the trail outlives the host.
//!
//! - `<chain>` is the start of the SHA-256 of the chain's first line, so
//!   two hosts with their own log dirs never write over each other's batches.
//! - A batch is put before `audit.shipped` records it. A crash between the
//!   two puts the same lines again under the same key: nothing doubles.
//! - `check` reads every batch of every chain in order and names a batch
//!   that is missing (a gap in the numbers), a line that was edited (a hash
//!   that does not match), or a batch whose name does not match its lines.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use super::store::{ObjectStore, StoreError};
use super::verify::Problem;
use crate::log::audit::{self, AuditLog, Line, GENESIS};

pub const PREFIX: &str = "audit/";
const SHIPPED: &str = "audit.shipped";

/// Puts the lines not yet in the archive there, as one batch. Returns how many.
/// `audit.shipped` holds the last shipped line's number and the file's length
/// then, so a log that has not grown is not read again.
pub async fn ship(store: &dyn ObjectStore, log_dir: &Path) -> Result<usize, ShipError> {
    let length = std::fs::metadata(log_dir.join(audit::FILE_NAME)).map_or(0, |m| m.len());
    let shipped_path = log_dir.join(SHIPPED);
    let recorded = std::fs::read_to_string(&shipped_path).unwrap_or_default();
    let mut recorded = recorded.split_whitespace().map(|n| n.parse::<u64>().ok());
    let (shipped, shipped_length) = (
        recorded.next().flatten().unwrap_or(0),
        recorded.next().flatten(),
    );
    if shipped_length == Some(length) {
        return Ok(0);
    }
    let log = AuditLog::in_dir(log_dir);
    let lines = log.read()?;
    let Some(chain) = lines.first().map(|l| chain_id(&l.text)) else {
        return Ok(0);
    };
    let fresh: Vec<&Line> = lines
        .iter()
        .filter(|l| l.entry.as_ref().is_some_and(|e| e.seq > shipped))
        .collect();
    let record = |seq: u64| {
        crate::base::files::replace_durably(&shipped_path, format!("{seq} {length}\n").as_bytes())
            .map_err(|source| {
                ShipError::Audit(audit::AuditError::Io {
                    path: shipped_path.clone(),
                    source,
                })
            })
    };
    let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else {
        record(shipped)?;
        return Ok(0);
    };
    let seq = |l: &Line| l.entry.as_ref().map_or(0, |e| e.seq);
    let key = format!("{PREFIX}{chain}/{:012}-{:012}.jsonl", seq(first), seq(last));
    let body: String = fresh.iter().map(|l| format!("{}\n", l.text)).collect();
    store.put(&key, Bytes::from(body), &BTreeMap::new()).await?;
    record(seq(last))?;
    Ok(fresh.len())
}

/// Ships, logging instead of failing: the lines stay local for the next try.
pub async fn ship_or_warn(store: &dyn ObjectStore, log_dir: &Path) {
    if let Err(error) = ship(store, log_dir).await {
        tracing::warn!(%error, "the audit log stays local until the next try");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn chain_id(first_line: &str) -> String {
    audit::sha256_hex(first_line)[..16].to_string()
}

/// `<first>-<last>` from a batch's key.
fn batch_range(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".jsonl")?;
    let (first, last) = name.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Every problem with the archived audit chains; `checked` counts the batches read.
pub async fn check(store: &dyn ObjectStore) -> Result<(Vec<Problem>, usize), StoreError> {
    let mut chains: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
    let mut problems = Vec::new();
    for object in store.list(PREFIX).await? {
        let rest = &object.key[PREFIX.len()..];
        match (rest.split_once('/'), batch_range(&object.key)) {
            (Some((chain, _)), Some((first, last))) => chains
                .entry(chain.to_string())
                .or_default()
                .push((first, last, object.key.clone())),
            _ => problems.push(Problem {
                key: object.key.clone(),
                problem: "is not an audit batch (audit/<chain>/<first>-<last>.jsonl)".into(),
            }),
        }
    }
    let mut checked = 0;
    for (chain, mut batches) in chains {
        batches.sort();
        let (mut seq, mut prev) = (0u64, GENESIS.to_string());
        for (first, last, key) in batches {
            if last <= seq {
                // The same lines shipped twice after a crash: already checked.
                continue;
            }
            checked += 1;
            if first > seq + 1 {
                problems.push(Problem {
                    key: key.clone(),
                    problem: format!(
                        "audit lines {}..{} of chain {chain} are missing from the archive (a batch was deleted)",
                        seq + 1,
                        first - 1
                    ),
                });
                break;
            }
            let text = store.get(&key).await?;
            let lines = audit::parse(&String::from_utf8_lossy(&text));
            // A batch that starts before `seq` overlaps one already read; check from there.
            let skip = (seq + 1 - first) as usize;
            let fresh = lines.get(skip..).unwrap_or(&[]);
            if seq == 0 && fresh.first().map(|l| chain_id(&l.text)).as_deref() != Some(&chain) {
                problems.push(Problem {
                    key: key.clone(),
                    problem: format!("its first line does not start chain {chain} (edited)"),
                });
                break;
            }
            if let Err(broken) = audit::check_chain(fresh, (seq, &prev)) {
                problems.push(Problem {
                    key: key.clone(),
                    problem: format!("broken audit chain: {broken}"),
                });
                break;
            }
            let ends = fresh.last().and_then(|l| {
                l.entry
                    .as_ref()
                    .map(|e| (e.seq, audit::sha256_hex(&l.text)))
            });
            match ends {
                Some((end, hash)) if end == last => (seq, prev) = (end, hash),
                _ => {
                    problems.push(Problem {
                        key: key.clone(),
                        problem: format!("its name says lines {first}..{last}, and its lines do not end at {last}"),
                    });
                    break;
                }
            }
        }
    }
    Ok((problems, checked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::local::LocalStore;
    use crate::log::audit::Outcome;
    use serde_json::json;

    async fn archive_with_two_batches() -> (tempfile::TempDir, std::sync::Arc<LocalStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::new(dir.path().join("archive")));
        let log = AuditLog::in_dir(&dir.path().join("log"));
        log.append("restore", Outcome::Ok, json!({"rows": 3}))
            .unwrap();
        log.append("verify", Outcome::Ok, json!({})).unwrap();
        assert_eq!(ship(&*store, &dir.path().join("log")).await.unwrap(), 2);
        log.append("prune", Outcome::Ok, json!({})).unwrap();
        assert_eq!(ship(&*store, &dir.path().join("log")).await.unwrap(), 1);
        assert_eq!(ship(&*store, &dir.path().join("log")).await.unwrap(), 0);
        (dir, store)
    }

    #[tokio::test]
    async fn shipped_batches_chain() {
        let (_dir, store) = archive_with_two_batches().await;
        let (problems, checked) = check(&*store).await.unwrap();
        assert_eq!(problems, vec![]);
        assert_eq!(checked, 2);
    }

    #[tokio::test]
    async fn a_deleted_batch_and_an_edited_line_are_named() {
        let (_dir, store) = archive_with_two_batches().await;
        let keys: Vec<String> = store
            .list(PREFIX)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        let first = store.get(&keys[0]).await.unwrap();
        let edited = String::from_utf8(first.to_vec())
            .unwrap()
            .replace("\"rows\":3", "\"rows\":4");
        store
            .put(&keys[0], Bytes::from(edited), &BTreeMap::new())
            .await
            .unwrap();
        let (problems, _) = check(&*store).await.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, keys[0]);

        store.put(&keys[0], first, &BTreeMap::new()).await.unwrap();
        store.delete(&keys[0]).await.unwrap();
        let (problems, _) = check(&*store).await.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, keys[1]);
        assert!(problems[0].problem.contains("missing"), "{problems:?}");
    }
}
