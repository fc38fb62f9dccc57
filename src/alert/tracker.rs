//! When a check's health becomes a notice: pure, so every rule is a unit test.
//!
//! - A check that leaves `ok` fires once, at its severity.
//! - A change of severity while not `ok` fires again (an escalation, or a
//!   step down from critical to warning).
//! - A severity that stays fires again every `repeat`.
//! - Back to `ok`, one `resolved` notice goes out, naming the severity it had.
//!
//! The tracker is saved in the log dir after every change, so a restarted
//! daemon neither fires again what it already sent nor forgets to resolve it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Health, Severity, State};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    firing: BTreeMap<String, Standing>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Standing {
    severity: Severity,
    last_sent: DateTime<Utc>,
}

/// What a check's new health calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub severity: Severity,
    pub state: State,
}

impl Tracker {
    pub fn observe(
        &mut self,
        check: &str,
        health: Health,
        now: DateTime<Utc>,
        repeat: Duration,
    ) -> Option<Transition> {
        let severity = match health {
            Health::Ok => {
                let was = self.firing.remove(check)?;
                return Some(Transition {
                    severity: was.severity,
                    state: State::Resolved,
                });
            }
            Health::Warning => Severity::Warning,
            Health::Critical => Severity::Critical,
        };
        let due = match self.firing.get(check) {
            Some(standing) if standing.severity == severity => {
                let since = (now - standing.last_sent).to_std().unwrap_or_default();
                since >= repeat
            }
            _ => true,
        };
        if !due {
            return None;
        }
        self.firing.insert(
            check.to_string(),
            Standing {
                severity,
                last_sent: now,
            },
        );
        Some(Transition {
            severity,
            state: State::Firing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn fires(severity: Severity) -> Option<Transition> {
        Some(Transition {
            severity,
            state: State::Firing,
        })
    }

    #[test]
    fn fires_once_escalates_repeats_and_resolves_once() {
        let mut tracker = Tracker::default();
        let mut see = |health, t| tracker.observe("rpo", health, at(t), HOUR);
        assert_eq!(see(Health::Ok, 0), None);
        assert_eq!(see(Health::Warning, 1), fires(Severity::Warning));
        assert_eq!(see(Health::Warning, 2), None, "no repeat before `repeat`");
        assert_eq!(see(Health::Critical, 3), fires(Severity::Critical));
        assert_eq!(see(Health::Critical, 3600), None);
        assert_eq!(see(Health::Critical, 3603), fires(Severity::Critical));
        assert_eq!(
            see(Health::Ok, 3604),
            Some(Transition {
                severity: Severity::Critical,
                state: State::Resolved
            })
        );
        assert_eq!(see(Health::Ok, 3605), None, "resolved goes out once");
    }

    #[test]
    fn a_step_down_fires_at_the_lower_severity() {
        let mut tracker = Tracker::default();
        tracker.observe("slot_lag", Health::Critical, at(0), HOUR);
        assert_eq!(
            tracker.observe("slot_lag", Health::Warning, at(1), HOUR),
            fires(Severity::Warning)
        );
    }

    #[test]
    fn checks_are_tracked_apart_and_survive_a_round_trip() {
        let mut tracker = Tracker::default();
        tracker.observe("rpo", Health::Warning, at(0), HOUR);
        let saved = serde_json::to_string(&tracker).unwrap();
        let mut restored: Tracker = serde_json::from_str(&saved).unwrap();
        assert_eq!(restored, tracker);
        assert_eq!(restored.observe("rpo", Health::Warning, at(1), HOUR), None);
        assert_eq!(
            restored.observe("capture", Health::Warning, at(1), HOUR),
            fires(Severity::Warning)
        );
    }
}
