//! `[alerts]`: the thresholds `status` judges by, how often the daemon
//! judges, and the channels that carry a change of health to people.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::base::secret::Secret;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default = "default_rpo_warning", with = "humantime_serde")]
    pub rpo_warning: Duration,
    #[serde(default = "default_rpo_critical", with = "humantime_serde")]
    pub rpo_critical: Duration,
    #[serde(default = "default_slot_lag_warning")]
    pub slot_lag_warning: ByteSize,
    #[serde(default = "default_slot_lag_critical")]
    pub slot_lag_critical: ByteSize,
    /// The newest base snapshot's age.
    #[serde(default = "default_snapshot_warning", with = "humantime_serde")]
    pub snapshot_warning: Duration,
    /// A firing alert is sent again this often while it stays.
    #[serde(default = "default_repeat", with = "humantime_serde")]
    pub repeat: Duration,
    /// How often the capture daemon judges its status for alerts.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    /// POSTed a JSON notice; the URL may carry a token, so it is never printed.
    pub webhook_url: Option<Secret>,
    /// A Slack incoming webhook; its URL is the credential.
    pub slack_webhook_url: Option<Secret>,
    pub email: Option<EmailConfig>,
}

/// `[alerts.email]`: mail through an SMTP server (lettre).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host[:port]` or `smtps://host[:port]` (TLS from the first byte).
    pub smtp_url: Secret,
    /// Upgrade an `smtp://` connection with STARTTLS, and refuse a server without it.
    #[serde(default)]
    pub starttls: bool,
    pub username: Option<String>,
    /// The environment variable holding the SMTP password.
    pub password_env: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rpo_warning: default_rpo_warning(),
            rpo_critical: default_rpo_critical(),
            slot_lag_warning: default_slot_lag_warning(),
            slot_lag_critical: default_slot_lag_critical(),
            snapshot_warning: default_snapshot_warning(),
            repeat: default_repeat(),
            check_interval: default_check_interval(),
            webhook_url: None,
            slack_webhook_url: None,
            email: None,
        }
    }
}

impl AlertsConfig {
    /// Refuses what cannot deliver: a URL that is not http(s), an address
    /// that does not parse, thresholds out of order. Messages never hold a URL.
    pub fn check(&self) -> Result<(), String> {
        for (key, url) in [
            ("webhook_url", &self.webhook_url),
            ("slack_webhook_url", &self.slack_webhook_url),
        ] {
            if let Some(url) = url {
                let parsed = url::Url::parse(url.expose()).map_err(|e| {
                    format!("[alerts] {key} is not a URL ({e}); write it as https://host/path")
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(format!(
                        "[alerts] {key} must start with https:// (or http://)"
                    ));
                }
            }
        }
        if self.rpo_critical < self.rpo_warning || self.slot_lag_critical < self.slot_lag_warning {
            return Err(
                "[alerts] a critical threshold is below its warning threshold; raise the critical one"
                    .into(),
            );
        }
        if self.repeat.is_zero() || self.check_interval.is_zero() {
            return Err(
                "[alerts] repeat and check_interval must be above zero, e.g. \"4h\"".into(),
            );
        }
        if let Some(email) = &self.email {
            email.check()?;
        }
        Ok(())
    }

    /// Whether any channel is configured.
    pub fn has_channels(&self) -> bool {
        self.webhook_url.is_some() || self.slack_webhook_url.is_some() || self.email.is_some()
    }
}

impl EmailConfig {
    fn check(&self) -> Result<(), String> {
        let url = url::Url::parse(self.smtp_url.expose()).map_err(|e| {
            format!("[alerts.email] smtp_url is not a URL ({e}); write it as smtp://host:587 or smtps://host:465")
        })?;
        if !matches!(url.scheme(), "smtp" | "smtps") || url.host_str().is_none() {
            return Err(
                "[alerts.email] smtp_url must be smtp://host[:port] or smtps://host[:port]".into(),
            );
        }
        if url.scheme() == "smtps" && self.starttls {
            return Err("[alerts.email] starttls is for smtp:// URLs; smtps:// is TLS already, so remove starttls".into());
        }
        if self.to.is_empty() {
            return Err(
                "[alerts.email] to is empty; list who gets mail, e.g. to = [\"oncall@example.com\"]"
                    .into(),
            );
        }
        for address in std::iter::once(&self.from).chain(&self.to) {
            address
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("[alerts.email] {address:?} is not a mail address ({e})"))?;
        }
        if self.password_env.is_some() != self.username.is_some() {
            return Err(
                "[alerts.email] username and password_env go together; set both or neither".into(),
            );
        }
        Ok(())
    }
}

fn default_rpo_warning() -> Duration {
    Duration::from_secs(120)
}

fn default_rpo_critical() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_slot_lag_warning() -> ByteSize {
    ByteSize::gib(1)
}

fn default_slot_lag_critical() -> ByteSize {
    ByteSize::gib(10)
}

fn default_snapshot_warning() -> Duration {
    Duration::from_secs(2 * 24 * 3600)
}

fn default_repeat() -> Duration {
    Duration::from_secs(4 * 3600)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(30)
}
