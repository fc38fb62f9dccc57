//! The audit trail of operations (`log::audit`), written by every command
//! that changes or checks protection, and `tidemark audit`, which prints it.
//!
//! A command appends its line once it knows the outcome, then ships the
//! lines not yet archived. Shipping is bounded in time and never fails the
//! command: the lines stay local, and the daemon or the next command ships them.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::OpError;
use crate::base::position::PgTimestamp;
use crate::config::Checked;
use crate::log::audit::{self, AuditLog, Entry, Outcome, GENESIS};

/// How long a command waits to ship its audit lines to the archive.
const SHIP_LIMIT: Duration = Duration::from_secs(10);

/// Appends one line for `operation` and ships what the archive lacks.
pub async fn record(checked: &Checked, operation: &str, outcome: Outcome, details: Value) {
    let log_dir = &checked.config.log.dir;
    AuditLog::in_dir(log_dir).record(operation, outcome, details);
    let Some(archive) = &checked.config.archive else {
        return;
    };
    // A command's own output says what went wrong with the archive; the
    // lines wait in the log dir, and the daemon (or the next command) ships them.
    let shipped = tokio::time::timeout(SHIP_LIMIT, async {
        let store = crate::archive::store::open_configured(archive)
            .await
            .map_err(|e| e.to_string())?;
        crate::archive::audit::ship(&*store, log_dir)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    match shipped {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::debug!(%error, "the audit log stays local until the next try"),
        Err(_) => {
            tracing::debug!("the archive is slow; the audit log stays local until the next try")
        }
    }
}

/// Ships the daemon's audit lines every `interval` until `stop`.
pub async fn ship_periodically(
    checked: Checked,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(archive) = &checked.config.archive else {
        return;
    };
    let Ok(store) = crate::archive::store::open_configured(archive).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        crate::archive::audit::ship_or_warn(&*store, &checked.config.log.dir).await;
    }
    // The capture.stop line comes after this; the next start ships it.
    crate::archive::audit::ship_or_warn(&*store, &checked.config.log.dir).await;
}

/// `tidemark audit`: the local trail, from `since` on. A chain that does
/// not hold is a finding (exit 1) naming the line where it breaks.
pub fn run(config: &Path, since: Option<PgTimestamp>) -> Result<Vec<Entry>, OpError> {
    let checked = super::load(config)?;
    let lines = AuditLog::in_dir(&checked.config.log.dir)
        .read()
        .map_err(|e| OpError::Found(e.to_string()))?;
    audit::check_chain(&lines, (0, GENESIS)).map_err(|broken| {
        OpError::Found(format!(
            "the audit log in {} does not hold: {broken}",
            checked.config.log.dir.display()
        ))
    })?;
    let at = |e: &Entry| {
        chrono::DateTime::parse_from_rfc3339(&e.at)
            .ok()
            .map(|t| PgTimestamp::from_system_time(t.into()))
    };
    Ok(lines
        .into_iter()
        .filter_map(|l| l.entry)
        .filter(|e| since.is_none_or(|since| at(e).is_some_and(|t| t >= since)))
        .collect())
}

/// Entries as a person reads them: one line each.
pub fn print(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| {
            let outcome = match e.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed => "FAILED",
            };
            format!(
                "{}  {:<14} {:<6} {}@{}  {}\n",
                e.at, e.operation, outcome, e.user, e.host, e.details
            )
        })
        .collect()
}
