//! `tidemark capture`: the protection daemon, until SIGINT or SIGTERM.

use std::path::Path;

use serde_json::json;

use super::schedule::Job;
use super::OpError;
use crate::base::position::EndLsn;
use crate::config::Checked;
use crate::log::audit::{AuditLog, Outcome};

/// Runs capture until a stop signal; returns the position confirmed last.
pub async fn run(config: &Path) -> Result<EndLsn, OpError> {
    let checked = super::load(config)?;
    #[cfg(feature = "kafka")]
    if let Some(kafka) = &checked.config.kafka {
        crate::sink::kafka::broker::producer(kafka)
            .map(drop)
            .map_err(|e| {
                OpError::Usage(format!(
                    "[kafka] settings refused by librdkafka: {e}; fix or remove that key"
                ))
            })?;
    }
    let path = config.to_path_buf();
    let status: crate::telemetry::StatusFn = std::sync::Arc::new(move || {
        let path = path.clone();
        Box::pin(async move {
            match super::status::run(&path).await {
                Ok(status) => (
                    serde_json::to_value(&status).unwrap_or_default(),
                    status.health == super::status::Health::Critical,
                ),
                Err(e) => (
                    serde_json::json!({"health": "critical", "error": e.to_string()}),
                    true,
                ),
            }
        })
    });
    crate::telemetry::install(checked.config.metrics.listen, Some(status))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = std::sync::Arc::new(stop);
    let signalled = stop.clone();
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("stop requested; finishing");
        let _ = signalled.send(true);
    });
    // A log dir that cannot be made is capture's own error to name, before any audit line.
    std::fs::create_dir_all(&checked.config.log.dir).map_err(|source| {
        crate::log::LogError::Dir {
            path: checked.config.log.dir.clone(),
            source,
        }
    })?;
    record_start(&checked);
    let watchers = start_watchers(config, &checked, &stopped)?;
    let result = crate::capture::run(&checked, stopped).await;
    let _ = stop.send(true);
    for watcher in watchers {
        let _ = tokio::time::timeout(WATCHERS_STOP_WAIT, watcher).await;
    }
    let details = match &result {
        Ok(confirmed) => json!({ "confirmed_lsn": confirmed }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    super::audit::record(&checked, "capture.stop", Outcome::of(&result), details).await;
    Ok(result?)
}

/// How long a stopping daemon waits for its alert, schedule and audit tasks.
const WATCHERS_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Audits the start, and a change of the watched tables or the publication
/// since the last start.
fn record_start(checked: &Checked) {
    let cfg = &checked.config;
    let now = json!({ "publication": cfg.source.publication, "tables": checked.tables });
    let audit = AuditLog::in_dir(&cfg.log.dir);
    let previous = audit
        .read()
        .unwrap_or_default()
        .into_iter()
        .rev()
        .filter_map(|l| l.entry)
        .find(|e| e.operation == "capture.start");
    if let Some(previous) = previous {
        let before = json!({
            "publication": previous.details["publication"],
            "tables": previous.details["tables"],
        });
        if before != now {
            let names = |v: &serde_json::Value| -> Vec<String> {
                v["tables"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (old, new) = (names(&before), names(&now));
            let details = json!({
                "publication": { "before": before["publication"], "after": now["publication"] },
                "added": new.iter().filter(|t| !old.contains(t)).collect::<Vec<_>>(),
                "removed": old.iter().filter(|t| !new.contains(t)).collect::<Vec<_>>(),
            });
            audit.record("tables.change", Outcome::Ok, details);
        }
    }
    let mut details = now;
    details["slot"] = json!(cfg.source.slot);
    details["pid"] = json!(std::process::id());
    // Local only: a store that is down must not delay the start; the shipper sends it.
    audit.record("capture.start", Outcome::Ok, details);
}

/// Starts what runs beside capture: the alert loop,
/// the scheduled verify and drill, and the audit shipper. Each has its own
/// copy of the config and its own task, so none can hold up capture.
fn start_watchers(
    config: &Path,
    checked: &Checked,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, OpError> {
    let mut watchers = Vec::new();
    let path = config.to_path_buf();
    // Without a channel the loop still judges: the health gauges and the audit log carry it.
    super::alerts::check_channels(checked)?;
    let (own, stop) = (super::load(config)?, stopped.clone());
    watchers.push(tokio::spawn(super::alerts::watch(path.clone(), own, stop)));
    let schedule = &checked.config.schedule;
    for (job, every) in [
        (Job::Verify, &schedule.verify),
        (Job::Drill, &schedule.drill),
    ] {
        if let Some(every) = every.clone() {
            let (path, own, stop) = (path.clone(), super::load(config)?, stopped.clone());
            watchers.push(tokio::spawn(super::schedule::run_periodically(
                path, own, job, every, stop,
            )));
        }
    }
    if let Some(archive) = &checked.config.archive {
        let interval = archive.upload_interval.max(AUDIT_SHIP_EVERY);
        let (own, stop) = (super::load(config)?, stopped.clone());
        watchers.push(tokio::spawn(super::audit::ship_periodically(
            own, interval, stop,
        )));
    }
    Ok(watchers)
}

/// The daemon ships its audit lines at most this often.
const AUDIT_SHIP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler, SIGINT still stops capture cleanly.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
