//! Positions in the source's history: log sequence numbers, typed by what
//! they mark, and commit timestamps, in the forms people and the server use.
//!
//! A transaction has two LSNs that are easy to confuse. Its commit LSN is
//! where its commit record starts; its end LSN is where that record ends, the
//! point replication resumes from once it is confirmed. A base snapshot taken
//! at a consistent point P holds exactly the transactions whose commit LSN
//! precedes P (`CommitLsn::precedes`), while restore to an LSN T applies
//! those whose end LSN is at or before T. Keeping them apart in the types
//! keeps each bound comparing the LSN it means.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// A WAL position. Printed and parsed as PostgreSQL does: `X/Y`, both halves hex.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// WAL bytes from `earlier` to here; zero if `earlier` is not earlier.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Where a transaction's commit record starts (pgoutput's commit LSN,
/// Begin's final LSN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitLsn(pub Lsn);

impl CommitLsn {
    /// Whether the commit record precedes `point`: a snapshot taken at that
    /// consistent point holds this transaction.
    pub fn precedes(self, point: EndLsn) -> bool {
        self.0 < point.0
    }
}

/// A position between transactions: where a transaction's commit record ends,
/// or a consistent point, a keepalive position, a segment's bound, a restore
/// target. Replication resumes from such a position without splitting a
/// transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndLsn(pub Lsn);

/// A restore point: a position between transactions, and the commit time of
/// the last transaction that ends at or before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    #[serde(rename = "time")]
    pub commit_time: PgTimestamp,
    pub lsn: EndLsn,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.commit_time, self.lsn)
    }
}

macro_rules! lsn_newtype_forms {
    ($($name:ident),*) => {$(
        impl $name {
            /// The position as a number, for byte formats and metrics.
            pub fn as_u64(self) -> u64 {
                self.0 .0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ParseLsnError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

    )*};
}

lsn_newtype_forms!(CommitLsn, EndLsn);

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not an LSN; write it as PostgreSQL prints one, e.g. 0/3A2F1C8")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A server timestamp: microseconds since 2000-01-01 UTC, as pgoutput and the
/// replication protocol carry them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    pub fn now() -> PgTimestamp {
        PgTimestamp(Utc::now().timestamp_micros() - PG_EPOCH_OFFSET_MICROS)
    }

    pub fn from_system_time(time: std::time::SystemTime) -> PgTimestamp {
        PgTimestamp(DateTime::<Utc>::from(time).timestamp_micros() - PG_EPOCH_OFFSET_MICROS)
    }

    pub fn to_utc(self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.0.saturating_add(PG_EPOCH_OFFSET_MICROS))
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// RFC 3339 in UTC with microseconds, the form every JSON output uses.
    pub fn to_rfc3339(self) -> String {
        self.to_utc().to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a timestamp; write it as RFC 3339 with a zone, e.g. 2026-11-21T10:15:00Z")]
pub struct ParseTimestampError(String);

impl FromStr for PgTimestamp {
    type Err = ParseTimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let time =
            DateTime::parse_from_rfc3339(s).map_err(|_| ParseTimestampError(s.to_string()))?;
        Ok(PgTimestamp(
            time.timestamp_micros() - PG_EPOCH_OFFSET_MICROS,
        ))
    }
}

impl fmt::Display for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

super::text::serde_as_text!(Lsn, PgTimestamp, CommitLsn, EndLsn);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_form() {
        for text in ["0/0", "0/3A2F1C8", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
    }

    #[test]
    fn lsn_rejects_other_forms() {
        for text in ["", "12", "0/", "/1", "0/G", "1/2/3", "100000000/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text} parsed");
        }
    }

    #[test]
    fn serde_uses_the_printed_forms() {
        let lsn = Lsn(0x1_0000_00FF);
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "\"1/FF\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"1/FF\"").unwrap(), lsn);
        let time = PgTimestamp(1_000_001);
        let json = serde_json::to_string(&time).unwrap();
        assert_eq!(json, "\"2000-01-01T00:00:01.000001Z\"");
        assert_eq!(serde_json::from_str::<PgTimestamp>(&json).unwrap(), time);
    }

    #[test]
    fn timestamps_count_from_the_postgres_epoch() {
        assert_eq!(PgTimestamp(0).to_rfc3339(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(
            PgTimestamp(1_000_001).to_rfc3339(),
            "2000-01-01T00:00:01.000001Z"
        );
    }

    #[test]
    fn a_snapshot_holds_what_committed_before_its_point() {
        let point = EndLsn(Lsn(100));
        assert!(CommitLsn(Lsn(99)).precedes(point));
        assert!(!CommitLsn(Lsn(100)).precedes(point));
        assert_eq!("0/64".parse::<EndLsn>().unwrap(), point);
        assert_eq!(serde_json::to_string(&point).unwrap(), "\"0/64\"");
    }

    #[test]
    fn a_position_prints_as_time_and_lsn() {
        let position = Position {
            commit_time: PgTimestamp(0),
            lsn: EndLsn(Lsn(1)),
        };
        assert_eq!(
            serde_json::to_string(&position).unwrap(),
            r#"{"time":"2000-01-01T00:00:00.000000Z","lsn":"0/1"}"#
        );
    }
}
