//! Alerts: a change of a `status` check's health, told to people.
//!
//! The daemon judges its status every `[alerts] check_interval`; `tracker`
//! decides which changes are news (fire once, escalate, repeat every
//! `repeat`, resolve once), and `Alerter::dispatch` sends each notice on
//! every configured channel in a task of its own, retrying with backoff. So
//! a receiver that hangs or is down never slows capture: the worst it costs
//! is a task waiting out its retries. Every notice leaves an `alert` line in
//! the audit log, with what was delivered and what failed.

pub mod channel;
pub mod tracker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use self::channel::{Channel, DeliveryError};
use crate::base::retry::Retry;
use crate::config::AlertsConfig;
use crate::log::audit::{AuditLog, Outcome};

/// How many times a notice is tried on one channel before it is given up.
const DELIVERY_ATTEMPTS: usize = 6;

/// A check's judgement, as `status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Firing,
    Resolved,
}

/// What the protected database is, for a person reading a notice.
#[derive(Clone, Debug, Serialize)]
pub struct SourceLabel {
    pub database: String,
    pub slot: String,
}

/// One notice: the webhook's JSON body as it is sent.
#[derive(Clone, Debug, Serialize)]
pub struct Notice {
    pub alert: String,
    pub severity: Severity,
    pub state: State,
    pub message: String,
    pub value: Value,
    pub threshold: Value,
    /// RFC 3339, UTC.
    pub at: String,
    pub source: SourceLabel,
}

impl Notice {
    pub fn new(
        alert: &str,
        severity: Severity,
        state: State,
        message: String,
        (value, threshold): (Value, Value),
        source: SourceLabel,
    ) -> Notice {
        Notice {
            alert: alert.to_string(),
            severity,
            state,
            message,
            value,
            threshold,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            source,
        }
    }

    fn words(&self) -> (&'static str, &'static str) {
        let severity = match self.severity {
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        };
        let state = match self.state {
            State::Firing => "firing",
            State::Resolved => "resolved",
        };
        (severity, state)
    }

    pub fn webhook_body(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    pub fn slack_body(&self) -> Value {
        let (severity, state) = self.words();
        let mark = match self.state {
            State::Resolved => ":white_check_mark:",
            State::Firing if self.severity == Severity::Critical => ":rotating_light:",
            State::Firing => ":warning:",
        };
        json!({
            "text": format!(
                "{mark} tidemark {severity} {}: {state} on {} (slot {}): {}",
                self.alert, self.source.database, self.source.slot, self.message
            )
        })
    }

    pub fn subject(&self) -> String {
        let (severity, state) = self.words();
        format!(
            "[tidemark] {severity} {} {state} on {}",
            self.alert, self.source.database
        )
    }

    pub fn text(&self) -> String {
        let (severity, state) = self.words();
        format!(
            "tidemark alert {} is {state} at severity {severity}.\n\n{}\n\nvalue: {}\nthreshold: {}\nat: {}\ndatabase: {}\nslot: {}\n",
            self.alert,
            self.message,
            self.value,
            self.threshold,
            self.at,
            self.source.database,
            self.source.slot
        )
    }
}

#[derive(Clone)]
pub struct Alerter {
    channels: Arc<Vec<Channel>>,
    http: reqwest::Client,
    audit: Arc<PathBuf>,
}

impl Alerter {
    /// The channels `[alerts]` names; audit lines go to `log_dir`.
    pub fn new(alerts: &AlertsConfig, log_dir: &Path) -> Result<Alerter, String> {
        Ok(Alerter {
            channels: Arc::new(Channel::configured(alerts)?),
            http: channel::http_client(),
            audit: Arc::new(log_dir.to_path_buf()),
        })
    }

    pub fn channel_names(&self) -> Vec<&'static str> {
        self.channels.iter().map(Channel::name).collect()
    }

    /// One attempt on every channel; returns the failures.
    pub async fn send_once(&self, notice: &Notice) -> Vec<DeliveryError> {
        let attempts = self.channels.iter().map(|c| c.send(notice, &self.http));
        futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// Sends `notice` on every channel in the background, retrying each with backoff.
    pub fn dispatch(&self, notice: Notice) -> tokio::task::JoinHandle<()> {
        let alerter = self.clone();
        tokio::spawn(async move {
            let deliveries = alerter
                .channels
                .iter()
                .map(|c| deliver(c, &notice, &alerter.http));
            let results = futures_util::future::join_all(deliveries).await;
            let failed: serde_json::Map<String, Value> = results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .map(|e| (e.channel.to_string(), Value::String(e.reason.clone())))
                .collect();
            let delivered: Vec<&str> = alerter
                .channels
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(c, _)| c.name())
                .collect();
            let outcome = if failed.is_empty() {
                Outcome::Ok
            } else {
                Outcome::Failed
            };
            AuditLog::in_dir(&alerter.audit).record(
                "alert",
                outcome,
                json!({
                    "alert": notice.alert,
                    "severity": notice.severity,
                    "state": notice.state,
                    "message": notice.message,
                    "delivered": delivered,
                    "failed": failed,
                }),
            );
        })
    }
}

/// Tries one channel until it takes the notice or the attempts run out.
async fn deliver(
    channel: &Channel,
    notice: &Notice,
    http: &reqwest::Client,
) -> Result<(), DeliveryError> {
    let mut retry = Retry::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut attempt = 1;
    loop {
        match channel.send(notice, http).await {
            Ok(()) => {
                metrics::counter!(crate::telemetry::ALERTS_SENT, "channel" => channel.name())
                    .increment(1);
                return Ok(());
            }
            Err(error) => {
                metrics::counter!(crate::telemetry::ALERT_DELIVERY_FAILURES, "channel" => channel.name())
                    .increment(1);
                if attempt == DELIVERY_ATTEMPTS {
                    tracing::error!(%error, alert = %notice.alert, "the alert was not delivered; giving up on this channel");
                    return Err(error);
                }
                tracing::warn!(%error, alert = %notice.alert, attempt, "alert delivery failed; trying again");
            }
        }
        attempt += 1;
        tokio::time::sleep(retry.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(state: State) -> Notice {
        Notice::new(
            "rpo",
            Severity::Critical,
            state,
            "the archive restores up to 960 s ago".into(),
            (json!(960.0), json!(120.0)),
            SourceLabel {
                database: "app".into(),
                slot: "tidemark".into(),
            },
        )
    }

    #[test]
    fn the_webhook_body_has_the_documented_keys() {
        let body = notice(State::Firing).webhook_body();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "alert",
                "at",
                "message",
                "severity",
                "source",
                "state",
                "threshold",
                "value"
            ]
        );
        assert_eq!(body["severity"], "critical");
        assert_eq!(body["state"], "firing");
        assert_eq!(body["source"]["database"], "app");
    }

    #[test]
    fn slack_and_mail_name_the_alert_and_severity() {
        let resolved = notice(State::Resolved);
        let text = resolved.slack_body()["text"].as_str().unwrap().to_string();
        assert!(text.contains("CRITICAL rpo: resolved"), "{text}");
        assert_eq!(
            resolved.subject(),
            "[tidemark] CRITICAL rpo resolved on app"
        );
    }
}
