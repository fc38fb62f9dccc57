//! `[schedule]`: verify and drill, run by the capture daemon on their own
//! clock. Each result is kept in the log dir (`verify.last.json`,
//! `drill.last.json`), where `status` reads it whether or not the daemon
//! runs, and goes to the metrics and, through the command, the audit log.
//! A failed run is `critical` in `status`, so the alerts carry it.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::config::{Checked, Schedule};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Verify,
    Drill,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::Verify => "verify",
            Job::Drill => "drill",
        }
    }

    fn file(self, log_dir: &Path) -> PathBuf {
        log_dir.join(format!("{}.last.json", self.name()))
    }
}

/// The last scheduled run of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// RFC 3339, UTC.
    pub last_at: String,
    pub ok: bool,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<f64>,
}

/// The last run recorded in `log_dir`, if any.
pub fn last(log_dir: &Path, job: Job) -> Option<LastRun> {
    let text = std::fs::read(job.file(log_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Runs `job` on `schedule` until `stop`. `config` is re-read for every
/// run, as a command would.
pub async fn run_periodically(
    config: PathBuf,
    checked: Checked,
    job: Job,
    schedule: Schedule,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let log_dir = checked.config.log.dir.clone();
    loop {
        let now = Utc::now();
        let Some(next) = schedule.next_after(now) else {
            tracing::error!(%schedule, job = job.name(), "the schedule has no next run");
            return;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        tracing::info!(job = job.name(), "scheduled run starting");
        let result = tokio::select! {
            result = run_once(&config, &checked, job) => result,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let labels = [("job", job.name())];
        metrics::gauge!(crate::telemetry::SCHEDULED_LAST_OK, &labels).set(if result.ok {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(crate::telemetry::SCHEDULED_LAST_RUN, &labels)
            .set(Utc::now().timestamp() as f64);
        if let (Some(rto), Some(rpo)) = (result.rto_seconds, result.rpo_seconds) {
            metrics::gauge!(crate::telemetry::DRILL_RTO_SECONDS).set(rto);
            metrics::gauge!(crate::telemetry::DRILL_RPO_SECONDS).set(rpo);
        }
        if result.ok {
            tracing::info!(job = job.name(), message = %result.message, "scheduled run passed");
        } else {
            tracing::error!(job = job.name(), message = %result.message, "scheduled run FAILED");
        }
        let body = serde_json::to_vec_pretty(&result).expect("a result serializes");
        if let Err(error) = crate::base::files::replace_durably(&job.file(&log_dir), &body) {
            tracing::error!(%error, job = job.name(), "cannot record the scheduled run's result");
        }
    }
}

async fn run_once(config: &Path, checked: &Checked, job: Job) -> LastRun {
    let last_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let failed = |message: String| LastRun {
        last_at: last_at.clone(),
        ok: false,
        message,
        rto_seconds: None,
        rpo_seconds: None,
    };
    match job {
        Job::Verify => match super::verify::run(config, false).await {
            Ok(report) => match super::verify::problems(&report) {
                Ok(()) => LastRun {
                    last_at: last_at.clone(),
                    ok: true,
                    message: format!(
                        "{} objects ({}) verified",
                        report.objects_checked,
                        bytesize::ByteSize(report.bytes_checked)
                    ),
                    rto_seconds: None,
                    rpo_seconds: None,
                },
                Err(found) => failed(found.to_string()),
            },
            Err(e) => failed(e.to_string()),
        },
        Job::Drill => {
            let Some(Ok(target)) = checked
                .config
                .schedule
                .drill_target
                .as_ref()
                .map(|t| t.parse())
            else {
                return failed("[schedule] drill_target is missing or does not parse".into());
            };
            match super::drill::run(config, &target, &mut std::io::sink()).await {
                Ok(report) => {
                    // The drill's tables are its own: a scheduled drill leaves the target empty for the next.
                    drop_restored(&target, &report.tables).await;
                    LastRun {
                        last_at: last_at.clone(),
                        ok: report.pass,
                        message: if report.pass {
                            format!("restored to {} and matched the source", report.lsn)
                        } else {
                            "the restore differs from the source".into()
                        },
                        rto_seconds: Some(report.rto_seconds),
                        rpo_seconds: Some(report.rpo_seconds),
                    }
                }
                Err(e) => failed(e.to_string()),
            }
        }
    }
}

async fn drop_restored(target: &crate::pg::ConnInfo, tables: &[crate::restore::drill::TableCheck]) {
    let names: Vec<String> = tables.iter().map(|t| t.table.quoted()).collect();
    if names.is_empty() {
        return;
    }
    let dropped = async {
        let client = target.connect().await.map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", names.join(", ")))
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(error) = dropped {
        tracing::warn!(%error, "the drill's tables stay in the drill target; the next drill will refuse until they are dropped");
    }
}
