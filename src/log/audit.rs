//! The audit log: one JSON line per operation (capture start and stop,
//! snapshot, compact, prune, restore, verify, drill, alert, a change of the
//! watched tables), appended to `audit.jsonl` in the log dir.
//!
//! Why it can be trusted:
//! - Each line names the SHA-256 of the line before it (`prev_sha256`; the
//!   first names 64 zeros) and carries a sequence number, so an edited line
//!   breaks the next link and a removed one leaves a gap. `check_chain` finds
//!   both; the archive's copy (`archive::audit`) is checked the same way.
//! - Appends take an exclusive lock on the file, so the daemon and a command
//!   run by hand never interleave or fork the chain.
//! - A crash mid-append leaves at most a tail without its newline. The next
//!   append cuts it off before writing, and readers ignore it, so a torn line
//!   is never part of the chain.
//! - Callers pass details without secrets: a target is described without its
//!   password, an alert by its check, never by a channel's URL.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const FILE_NAME: &str = "audit.jsonl";
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
}

impl Outcome {
    pub fn of<T, E>(result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Failed,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub at: String,
    pub operation: String,
    pub outcome: Outcome,
    pub details: Value,
    pub user: String,
    pub host: String,
    pub prev_sha256: String,
}

/// A line as stored, with its parsed entry: the hash covers the stored bytes.
#[derive(Clone, Debug)]
pub struct Line {
    pub text: String,
    /// `None` for a line that is not an entry (edited or damaged).
    pub entry: Option<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {source}; check that tidemark's user may write the log dir", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Chain(#[from] ChainBreak),
}

/// Where and why a chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit line {seq}: {problem}")]
pub struct ChainBreak {
    pub seq: u64,
    pub problem: String,
}

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn in_dir(dir: &Path) -> AuditLog {
        AuditLog {
            path: dir.join(FILE_NAME),
        }
    }

    /// Appends one line and makes it durable. Creates the log dir if needed.
    pub fn append(
        &self,
        operation: &str,
        outcome: Outcome,
        details: Value,
    ) -> Result<Entry, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            // A torn tail from a crash mid-append: never part of the chain.
            file.set_len(whole as u64).map_err(io)?;
        }
        let last = parse_lines(&text[..whole]).last().cloned();
        let entry = Entry {
            seq: last
                .as_ref()
                .and_then(|l| l.entry.as_ref())
                .map_or(1, |e| e.seq + 1),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            operation: operation.to_string(),
            outcome,
            details,
            user: user(),
            host: host(),
            prev_sha256: last.map_or_else(|| GENESIS.to_string(), |l| sha256_hex(&l.text)),
        };
        let mut line = serde_json::to_string(&entry).expect("an entry serializes");
        line.push('\n');
        file.seek(SeekFrom::Start(whole as u64)).map_err(io)?;
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(entry)
    }

    /// Appends, and logs instead of failing: an operation that worked is not
    /// undone because its audit line could not be written.
    pub fn record(&self, operation: &str, outcome: Outcome, details: Value) {
        if let Err(error) = self.append(operation, outcome, details) {
            tracing::error!(%error, operation, "the audit line could not be written");
        }
    }

    /// Every whole line, in order; none if the file does not exist.
    pub fn read(&self) -> Result<Vec<Line>, AuditError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let whole = text.rfind('\n').map_or(0, |i| i + 1);
                Ok(parse_lines(&text[..whole]))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(AuditError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// A line that does not parse keeps its place with no entry, so
/// `check_chain` reports it where it stands.
fn parse_lines(text: &str) -> Vec<Line> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| Line {
            text: l.to_string(),
            entry: serde_json::from_str(l).ok(),
        })
        .collect()
}

/// Parses stored lines (an archived batch) the way the local file is read.
pub fn parse(text: &str) -> Vec<Line> {
    parse_lines(text)
}

pub fn sha256_hex(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// Checks that `lines` continue a chain whose last line had `seq` and hash
/// `prev` (`(0, GENESIS)` for a chain's start): numbers follow one another
/// and each line names its predecessor's hash.
pub fn check_chain(lines: &[Line], start: (u64, &str)) -> Result<(), ChainBreak> {
    let (mut seq, mut prev) = (start.0, start.1.to_string());
    for line in lines {
        let Some(entry) = &line.entry else {
            return Err(ChainBreak {
                seq: seq + 1,
                problem: "is not an audit entry (edited or damaged)".into(),
            });
        };
        if entry.seq != seq + 1 {
            return Err(ChainBreak {
                seq: seq + 1,
                problem: format!(
                    "is missing: the next line is {} (lines were removed)",
                    entry.seq
                ),
            });
        }
        if entry.prev_sha256 != prev {
            return Err(ChainBreak {
                seq: entry.seq,
                problem:
                    "does not name the hash of the line before it (a line was edited or removed)"
                        .into(),
            });
        }
        seq = entry.seq;
        prev = sha256_hex(&line.text);
    }
    Ok(())
}

/// Who ran the operation: the name of the process's user in /etc/passwd,
/// else the uid. (Not $USER: `sudo -E` and containers leave it wrong.)
fn user() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.get(2) == Some(&uid.to_string().as_str())).then(|| fields[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_chain_and_an_edit_or_a_removal_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::in_dir(dir.path());
        for operation in ["capture.start", "restore", "verify"] {
            log.append(operation, Outcome::Ok, json!({"n": 1})).unwrap();
        }
        let lines = log.read().unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].entry.as_ref().unwrap().prev_sha256, GENESIS);
        check_chain(&lines, (0, GENESIS)).unwrap();

        let mut edited = lines.clone();
        edited[1].text = edited[1].text.replace("restore", "verify");
        assert_eq!(check_chain(&edited, (0, GENESIS)).unwrap_err().seq, 3);

        let removed = [lines[0].clone(), lines[2].clone()];
        let error = check_chain(&removed, (0, GENESIS)).unwrap_err();
        assert_eq!(error.seq, 2, "{error}");
        assert!(error.problem.contains("missing"), "{error}");
    }

    #[test]
    fn a_torn_tail_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::in_dir(dir.path());
        log.append("verify", Outcome::Ok, json!({})).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":2,\"at\":").unwrap();
        assert_eq!(log.read().unwrap().len(), 1, "readers ignore the torn tail");
        log.append("drill", Outcome::Failed, json!({})).unwrap();
        let lines = log.read().unwrap();
        assert_eq!(lines[1].entry.as_ref().unwrap().seq, 2);
        check_chain(&lines, (0, GENESIS)).unwrap();
    }
}
