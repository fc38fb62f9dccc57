//! Where an event sits in the committed stream, and where the feed stands.
//!
//! An event's position is its transaction's commit LSN and its index within
//! the transaction. Both come from the log alone, so an event produced twice
//! (before and after a crash) carries the same position both times; comparing
//! it with the last position in its partition tells whether it is there.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::base::position::{CommitLsn, EndLsn};

/// The header that carries an event's position.
pub const HEADER: &str = "tidemark.position";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    pub commit_lsn: CommitLsn,
    /// 0 for a transaction's BEGIN event, 1.. for its changes, then END.
    pub index: u32,
}

impl fmt::Display for EventPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.index)
    }
}

impl FromStr for EventPosition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (lsn, index) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not LSN:index"))?;
        Ok(EventPosition {
            commit_lsn: lsn.parse().map_err(|_| format!("{text:?} has a bad LSN"))?,
            index: index
                .parse()
                .map_err(|_| format!("{text:?} has a bad index"))?,
        })
    }
}

/// The feed's durable watermark: every transaction that ends at or before it
/// is in the broker. Kept in the log directory, replaced atomically.
pub struct Watermark {
    path: PathBuf,
}

impl Watermark {
    pub fn in_dir(log_dir: &Path) -> Watermark {
        Watermark {
            path: log_dir.join("kafka.position"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `None` when the feed has never delivered anything.
    pub fn load(&self) -> std::io::Result<Option<EndLsn>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold an LSN", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn store(&self, lsn: EndLsn) -> std::io::Result<()> {
        crate::base::files::replace_durably(&self.path, format!("{lsn}\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::Lsn;

    #[test]
    fn positions_round_trip_and_order_by_commit_then_index() {
        let a: EventPosition = "0/16B3748:3".parse().unwrap();
        assert_eq!(
            a,
            EventPosition {
                commit_lsn: CommitLsn(Lsn(0x16B3748)),
                index: 3
            }
        );
        assert_eq!(a.to_string().parse::<EventPosition>().unwrap(), a);
        let b: EventPosition = "0/16B3749:0".parse().unwrap();
        assert!(a < b);
        assert!("0/16B3748".parse::<EventPosition>().is_err());
    }

    #[test]
    fn the_watermark_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mark = Watermark::in_dir(dir.path());
        assert_eq!(mark.load().unwrap(), None);
        mark.store(EndLsn(Lsn(42))).unwrap();
        assert_eq!(
            Watermark::in_dir(dir.path()).load().unwrap(),
            Some(EndLsn(Lsn(42)))
        );
    }
}
