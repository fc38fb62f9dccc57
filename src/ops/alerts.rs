//! The daemon's alert loop, and `tidemark alerts test`.
//!
//! Every `[alerts] check_interval` the daemon judges the same status
//! `tidemark status` prints, hands each check to the tracker, and dispatches
//! what it calls for. The loop only judges and hands off: deliveries run in
//! tasks of their own, so a slow receiver never delays the next judgement,
//! let alone capture.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::status::{self, Health};
use super::OpError;
use crate::alert::tracker::Tracker;
use crate::alert::{Alerter, Notice, Severity, SourceLabel, State};
use crate::config::Checked;

const TRACKER_FILE: &str = "alerts.json";

fn source_label(checked: &Checked) -> SourceLabel {
    SourceLabel {
        database: checked.pg.database().to_string(),
        slot: checked.config.source.slot.clone(),
    }
}

fn alerter(checked: &Checked) -> Result<Alerter, OpError> {
    Alerter::new(&checked.config.alerts, &checked.config.log.dir).map_err(OpError::Usage)
}

/// Refuses channels that cannot work (an unset password variable) before the daemon starts.
pub fn check_channels(checked: &Checked) -> Result<(), OpError> {
    alerter(checked).map(drop)
}

/// Sends one test notice on every channel; names the channels that failed.
pub async fn test(config: &Path) -> Result<Vec<&'static str>, OpError> {
    let checked = super::load(config)?;
    let alerter = alerter(&checked)?;
    let channels = alerter.channel_names();
    if channels.is_empty() {
        return Err(OpError::Usage(
            "[alerts] names no channel; set webhook_url, slack_webhook_url or [alerts.email]"
                .into(),
        ));
    }
    let notice = Notice::new(
        "test",
        Severity::Warning,
        State::Firing,
        "a test notification from tidemark alerts test: this channel works".into(),
        (json!(null), json!(null)),
        source_label(&checked),
    );
    let failed = alerter.send_once(&notice).await;
    if failed.is_empty() {
        return Ok(channels);
    }
    let named: Vec<String> = failed.iter().map(ToString::to_string).collect();
    Err(OpError::Found(format!(
        "alert channels failed: {}",
        named.join("; ")
    )))
}

/// Judges status every `check_interval` and sends what changed, until `stop`.
pub async fn watch(
    config: PathBuf,
    checked: Checked,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let alerts = &checked.config.alerts;
    let alerter = match alerter(&checked) {
        Ok(alerter) => alerter,
        Err(error) => {
            tracing::error!(%error, "alerts are off");
            return;
        }
    };
    let tracker_path = checked.config.log.dir.join(TRACKER_FILE);
    let mut tracker: Tracker = std::fs::read(&tracker_path)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(alerts.check_interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let status = match status::run(&config).await {
            Ok(status) => status,
            Err(error) => {
                tracing::warn!(%error, "cannot judge status for alerts; trying again");
                continue;
            }
        };
        metrics::gauge!(crate::telemetry::HEALTH).set(gauge(status.health));
        let before = tracker.clone();
        for check in &status.checks {
            metrics::gauge!(crate::telemetry::CHECK_STATUS, "check" => check.name)
                .set(gauge(check.status));
            let Some(change) =
                tracker.observe(check.name, check.status, chrono::Utc::now(), alerts.repeat)
            else {
                continue;
            };
            tracing::warn!(alert = check.name, severity = ?change.severity, state = ?change.state, message = %check.message, "alert");
            alerter.dispatch(Notice::new(
                check.name,
                change.severity,
                change.state,
                check.message.clone(),
                (check.value.clone(), check.threshold.clone()),
                source_label(&checked),
            ));
        }
        if tracker != before {
            let body = serde_json::to_vec(&tracker).expect("the tracker serializes");
            if let Err(error) = crate::base::files::replace_durably(&tracker_path, &body) {
                tracing::warn!(%error, "cannot save the alert state; a restart may repeat an alert");
            }
        }
    }
}

fn gauge(health: Health) -> f64 {
    match health {
        Health::Ok => 0.0,
        Health::Warning => 1.0,
        Health::Critical => 2.0,
    }
}
