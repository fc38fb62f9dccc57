//! `[schedule]`: the integrity checks the capture daemon runs by itself.
//! A schedule is a five-field cron expression in UTC (`"0 6 * * *"`) or
//! `"every <duration>"` (`"every 20s"`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::SecretUrl;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub verify: Option<Schedule>,
    pub drill: Option<Schedule>,
    /// The scratch database scheduled drills restore into.
    pub drill_target: Option<SecretUrl>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub enum Schedule {
    Every(Duration),
    Cron(Box<croner::Cron>, String),
}

impl TryFrom<String> for Schedule {
    type Error = String;

    fn try_from(text: String) -> Result<Schedule, String> {
        if let Some(period) = text.trim().strip_prefix("every ") {
            let period = humantime::parse_duration(period.trim()).map_err(|e| {
                format!(
                    "[schedule] {text:?}: {e}; write a duration like \"every 20s\" or \"every 6h\""
                )
            })?;
            if period.is_zero() {
                return Err(format!(
                    "[schedule] {text:?}: the period must be above zero"
                ));
            }
            return Ok(Schedule::Every(period));
        }
        if text.split_whitespace().count() != 5 {
            return Err(format!("[schedule] {text:?} is neither \"every <duration>\" nor a five-field cron expression like \"0 6 * * *\""));
        }
        let cron = text.parse::<croner::Cron>().map_err(|e| {
            format!("[schedule] {text:?} is not a cron expression ({e}); e.g. \"0 6 * * *\"")
        })?;
        Ok(Schedule::Cron(Box::new(cron), text))
    }
}

impl Schedule {
    /// The first run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(period) => Some(after + chrono::Duration::from_std(*period).ok()?),
            Schedule::Cron(cron, _) => cron.find_next_occurrence(&after, false).ok(),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(period) => write!(f, "every {}", humantime::format_duration(*period)),
            Schedule::Cron(_, text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn cron_runs_at_its_minute_in_utc() {
        let daily = Schedule::try_from("0 6 * * *".to_string()).unwrap();
        assert_eq!(
            daily.next_after(at("2026-11-30T05:59:59Z")),
            Some(at("2026-11-30T06:00:00Z"))
        );
        assert_eq!(
            daily.next_after(at("2026-11-30T06:00:00Z")),
            Some(at("2026-12-01T06:00:00Z"))
        );
    }

    #[test]
    fn every_adds_its_period() {
        let every = Schedule::try_from("every 20s".to_string()).unwrap();
        assert_eq!(
            every.next_after(at("2026-11-30T06:00:00Z")),
            Some(at("2026-11-30T06:00:20Z"))
        );
        assert_eq!(every.to_string(), "every 20s");
    }

    #[test]
    fn nonsense_is_refused_with_an_example() {
        for bad in [
            "every",
            "every 0s",
            "every soon",
            "0 6 * *",
            "61 * * * *",
            "daily",
        ] {
            let error = Schedule::try_from(bad.to_string()).unwrap_err();
            assert!(
                error.contains("e.g.") || error.contains("like") || error.contains("above zero"),
                "{bad}: {error}"
            );
        }
    }
}
