//! `tidemark status`: is protection working, right now? It reads the log
//! dir, the archive and the source, whether or not capture runs, and judges
//! each check against `[alerts]`: `ok`, `warning` or `critical`.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use super::schedule::{self, Job, LastRun};
use super::OpError;
pub use crate::alert::Health;
use crate::archive::{inventory, last_upload, manifest};
use crate::base::position::{EndLsn, PgTimestamp, Position};
use crate::config::Checked;

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Health,
    pub value: Value,
    pub threshold: Value,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct CaptureStatus {
    pub running: bool,
    pub slot: String,
    pub confirmed_lsn: Option<EndLsn>,
    pub slot_lag_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ArchiveStatus {
    pub latest: Option<Position>,
    pub rpo_seconds: Option<f64>,
    pub last_upload_at: Option<PgTimestamp>,
    pub last_snapshot_at: Option<PgTimestamp>,
    pub bytes: u64,
    /// Why the archive could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub health: Health,
    pub checks: Vec<Check>,
    pub capture: CaptureStatus,
    pub archive: Option<ArchiveStatus>,
    /// The last scheduled verify and drill; `null` until one has run.
    pub verify: Option<LastRun>,
    pub drill: Option<LastRun>,
}

/// What the source says of the slot: whether a walsender holds it, and its position.
struct Slot {
    active: bool,
    confirmed: Option<EndLsn>,
    lag_bytes: Option<u64>,
}

pub async fn run(config: &Path) -> Result<Status, OpError> {
    let checked = super::load(config)?;
    let running = capture_running(&checked);
    let slot = read_slot(&checked).await;
    let archive = match &checked.config.archive {
        Some(_) => {
            let store = super::open_archive(&checked.config).await?;
            // An unreachable store is a finding, not a hang: the RPO is then unknown.
            let latest =
                tokio::time::timeout(ARCHIVE_READ_LIMIT, manifest::load_latest(&*store)).await;
            let log_dir = &checked.config.log.dir;
            Some(match latest {
                Ok(Ok(latest)) => archive_status(latest.as_ref().map(|(k, m)| (k.as_str(), m))),
                Ok(Err(e)) => unreachable_archive(e.to_string(), log_dir),
                Err(_) => unreachable_archive(
                    format!("no answer within {} s", ARCHIVE_READ_LIMIT.as_secs()),
                    log_dir,
                ),
            })
        }
        None => None,
    };
    #[cfg(feature = "kafka")]
    let kafka_watermark = checked.config.kafka.as_ref().map(|_| {
        crate::sink::kafka::position::Watermark::in_dir(&checked.config.log.dir)
            .load()
            .ok()
            .flatten()
    });
    // Without the feature, a [kafka] section is refused when the config loads.
    #[cfg(not(feature = "kafka"))]
    let kafka_watermark = None;
    Ok(judge(&checked, running, slot, archive, kafka_watermark))
}

/// How long `status` waits for the archive's manifest.
const ARCHIVE_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The store cannot be read: what this host last stored there still bounds the RPO.
fn unreachable_archive(why: String, log_dir: &Path) -> ArchiveStatus {
    let last = last_upload::read(log_dir);
    let latest = last.as_ref().and_then(|l| l.latest);
    ArchiveStatus {
        latest,
        rpo_seconds: latest.map(|p| seconds_between(p.commit_time, PgTimestamp::now())),
        last_upload_at: last.map(|l| l.at),
        last_snapshot_at: None,
        bytes: 0,
        unreachable: Some(why),
    }
}

/// Capture holds the log dir's lock while it runs.
fn capture_running(checked: &Checked) -> bool {
    crate::log::writer::lock_held(&checked.config.log.dir)
}

async fn read_slot(checked: &Checked) -> Result<Slot, String> {
    let client = checked.pg.connect().await.map_err(|e| e.to_string())?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&checked.config.source.slot];
    let query = client.query_opt(
        "SELECT active, confirmed_flush_lsn::text,
                pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
         FROM pg_replication_slots WHERE slot_name = $1",
        &params,
    );
    // A server that takes the query and never answers must not hang status.
    let row = tokio::time::timeout(checked.pg.connect_timeout(), query)
        .await
        .map_err(|_| "the source did not answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(match row {
        None => Slot {
            active: false,
            confirmed: None,
            lag_bytes: None,
        },
        Some(row) => Slot {
            active: row.get(0),
            confirmed: row.get::<_, Option<String>>(1).and_then(|t| t.parse().ok()),
            lag_bytes: row.get::<_, Option<i64>>(2).map(|b| b.max(0) as u64),
        },
    })
}

fn archive_status(latest: Option<(&str, &manifest::Manifest)>) -> ArchiveStatus {
    let inventory = inventory::inventory(latest);
    let now = PgTimestamp::now();
    let window_end = inventory.window.as_ref().map(|w| w.latest);
    let manifest = latest.map(|(_, m)| m);
    ArchiveStatus {
        latest: window_end,
        rpo_seconds: window_end.map(|p| seconds_between(p.commit_time, now)),
        last_upload_at: manifest.map(|m| m.created_at),
        last_snapshot_at: manifest.and_then(|m| m.snapshots.iter().map(|s| s.time).max()),
        bytes: manifest.map_or(0, |m| m.objects().map(|o| o.size).sum()),
        unreachable: None,
    }
}

fn seconds_between(from: PgTimestamp, to: PgTimestamp) -> f64 {
    (to.0 - from.0).max(0) as f64 / 1e6
}

/// `value` against a warning and a critical threshold (none: never critical).
fn level(value: f64, warning: f64, critical: Option<f64>) -> Health {
    match critical {
        Some(c) if value >= c => Health::Critical,
        _ if value >= warning => Health::Warning,
        _ => Health::Ok,
    }
}

/// The threshold a notice names: the critical one once it is passed, else the warning one.
fn crossed<T: PartialOrd + Serialize>(value: T, warning: T, critical: T) -> Value {
    if value >= critical {
        json!(critical)
    } else {
        json!(warning)
    }
}

fn judge(
    checked: &Checked,
    running: bool,
    slot: Result<Slot, String>,
    archive: Option<ArchiveStatus>,
    kafka_watermark: Option<Option<EndLsn>>,
) -> Status {
    let alerts = &checked.config.alerts;
    let mut checks = Vec::new();
    let (capture_health, capture_message) = match (&slot, running) {
        (Err(e), _) => (
            Health::Critical,
            format!("cannot read the slot from the source: {e}"),
        ),
        (Ok(_), false) => (
            Health::Critical,
            "capture is not running: nothing is being protected; start tidemark capture".into(),
        ),
        (Ok(s), true) if !s.active => (
            Health::Warning,
            "capture runs but does not stream from the slot (reconnecting?)".into(),
        ),
        (Ok(_), true) => (Health::Ok, "capture is streaming".into()),
    };
    checks.push(Check {
        name: "capture",
        status: capture_health,
        value: json!(running),
        threshold: Value::Null,
        message: capture_message,
    });

    let slot = slot.ok();
    let lag = slot.as_ref().and_then(|s| s.lag_bytes);
    let (lag_warn, lag_crit) = (
        alerts.slot_lag_warning.as_u64(),
        alerts.slot_lag_critical.as_u64(),
    );
    checks.push(match lag {
        Some(lag) => Check {
            name: "slot_lag",
            status: level(lag as f64, lag_warn as f64, Some(lag_crit as f64)),
            value: json!(lag),
            threshold: crossed(lag, lag_warn, lag_crit),
            message: format!(
                "the slot holds {} of WAL that capture has not confirmed yet",
                bytesize::ByteSize(lag)
            ),
        },
        None => Check {
            name: "slot_lag",
            status: Health::Critical,
            value: Value::Null,
            threshold: json!(lag_warn),
            message: format!(
                "slot {} is missing or unreadable on the source",
                checked.config.source.slot
            ),
        },
    });

    match &archive {
        None => {
            for name in ["rpo", "snapshot_age"] {
                checks.push(Check {
                    name,
                    status: Health::Critical,
                    value: Value::Null,
                    threshold: Value::Null,
                    message: "no [archive] is configured: changes stay in the local log only"
                        .into(),
                });
            }
        }
        Some(archive) => {
            let rpo_warn = alerts.rpo_warning.as_secs_f64();
            let rpo_crit = alerts.rpo_critical.as_secs_f64();
            checks.push(match archive.rpo_seconds {
                Some(rpo) => Check {
                    name: "rpo",
                    status: level(rpo, rpo_warn, Some(rpo_crit)),
                    value: json!(rpo),
                    threshold: crossed(rpo, rpo_warn, rpo_crit),
                    message: match &archive.unreachable {
                        Some(why) => format!("the archive cannot be read ({why}); what this host last stored there restores up to {rpo:.0} s ago"),
                        None => format!("the archive restores up to {rpo:.0} s ago"),
                    },
                },
                None => Check {
                    name: "rpo",
                    status: Health::Critical,
                    value: Value::Null,
                    threshold: json!(rpo_warn),
                    message: match &archive.unreachable {
                        Some(why) => format!("the archive cannot be read ({why}), so nothing newer is known to be restorable"),
                        None => "the archive has no restore point yet (no base snapshot)".into(),
                    },
                },
            });
            let snap_warn = alerts.snapshot_warning.as_secs_f64();
            let age = archive
                .last_snapshot_at
                .map(|t| seconds_between(t, PgTimestamp::now()));
            // An unreadable store is the rpo check's finding; the snapshot's age is then unknown.
            let unknown = if archive.unreachable.is_some() {
                Health::Ok
            } else {
                Health::Critical
            };
            checks.push(Check {
                name: "snapshot_age",
                status: age.map_or(unknown, |a| level(a, snap_warn, None)),
                value: json!(age),
                threshold: json!(snap_warn),
                message: match age {
                    Some(a) => format!("the newest base snapshot is {:.1} h old", a / 3600.0),
                    None if archive.unreachable.is_some() => {
                        "unknown while the archive cannot be read".into()
                    }
                    None => "the archive has no base snapshot".into(),
                },
            });
        }
    }
    let log_dir = &checked.config.log.dir;
    let schedules = &checked.config.schedule;
    let verify = schedule::last(log_dir, Job::Verify);
    let drill = schedule::last(log_dir, Job::Drill);
    for (job, every, last) in [
        (Job::Verify, &schedules.verify, &verify),
        (Job::Drill, &schedules.drill, &drill),
    ] {
        checks.push(scheduled_check(job, every.as_ref(), last.as_ref()));
    }
    if let Some(watermark) = kafka_watermark {
        let confirmed = slot.as_ref().and_then(|s| s.confirmed);
        let behind = match (confirmed, watermark) {
            (Some(c), Some(w)) => Some(c.0.bytes_since(w.0)),
            _ => None,
        };
        checks.push(Check {
            name: "kafka_lag",
            status: behind.map_or(Health::Warning, |b| {
                level(b as f64, lag_warn as f64, Some(lag_crit as f64))
            }),
            value: json!(behind),
            threshold: behind.map_or(json!(lag_warn), |b| crossed(b, lag_warn, lag_crit)),
            message: match behind {
                Some(b) => format!(
                    "Kafka has every change but the last {}",
                    bytesize::ByteSize(b)
                ),
                None => "the Kafka feed has published nothing yet".into(),
            },
        });
    }
    let health = checks.iter().map(|c| c.status).max().unwrap_or(Health::Ok);
    Status {
        health,
        checks,
        capture: CaptureStatus {
            running,
            slot: checked.config.source.slot.clone(),
            confirmed_lsn: slot.as_ref().and_then(|s| s.confirmed),
            slot_lag_bytes: lag,
        },
        archive,
        verify,
        drill,
    }
}

/// A failed scheduled run is critical until a later one passes.
fn scheduled_check(
    job: Job,
    every: Option<&crate::config::Schedule>,
    last: Option<&LastRun>,
) -> Check {
    let name = job.name();
    let (status, message) = match (every, last) {
        (None, _) => (Health::Ok, format!("no scheduled {name} is configured")),
        (Some(every), None) => (Health::Ok, format!("scheduled {every}; it has not run yet")),
        (Some(_), Some(last)) if last.ok => (
            Health::Ok,
            format!(
                "the last scheduled {name} at {} passed: {}",
                last.last_at, last.message
            ),
        ),
        (Some(_), Some(last)) => (
            Health::Critical,
            format!(
                "the last scheduled {name} at {} FAILED: {}",
                last.last_at, last.message
            ),
        ),
    };
    Check {
        name,
        status,
        value: json!(last.map(|l| l.ok)),
        threshold: Value::Null,
        message,
    }
}

/// The failure a status that is not `ok` is: exit 1.
pub fn unhealthy(status: &Status) -> Result<(), OpError> {
    match status.health {
        Health::Ok => Ok(()),
        _ => Err(OpError::Found(format!(
            "health is {}",
            serde_json::to_value(status.health)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ))),
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = |h: Health| match h {
            Health::Ok => "OK",
            Health::Warning => "WARNING",
            Health::Critical => "CRITICAL",
        };
        writeln!(f, "tidemark: {}", word(self.health))?;
        for check in &self.checks {
            writeln!(
                f,
                "  {:<9} {:<13} {}",
                word(check.status),
                check.name,
                check.message
            )?;
        }
        Ok(())
    }
}
