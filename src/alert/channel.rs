//! The channels a notice goes out on: a JSON webhook, a Slack incoming
//! webhook, and mail over SMTP (lettre). A channel's URL is its credential,
//! so no error or log line here ever holds it: HTTP errors are stripped of
//! their URL, and a channel is named by its kind.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::Notice;
use crate::base::secret::Secret;
use crate::config::{AlertsConfig, EmailConfig};

/// How long one delivery attempt may take.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(15);

pub enum Channel {
    Webhook(Secret),
    Slack(Secret),
    Email(Box<Mail>),
}

pub struct Mail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

#[derive(Debug, thiserror::Error)]
#[error("{channel}: {reason}")]
pub struct DeliveryError {
    pub channel: &'static str,
    pub reason: String,
}

impl Channel {
    /// Every channel `[alerts]` configures. Fails on what config could not
    /// check: an unset password variable.
    pub fn configured(alerts: &AlertsConfig) -> Result<Vec<Channel>, String> {
        let mut channels = Vec::new();
        if let Some(url) = &alerts.webhook_url {
            channels.push(Channel::Webhook(url.clone()));
        }
        if let Some(url) = &alerts.slack_webhook_url {
            channels.push(Channel::Slack(url.clone()));
        }
        if let Some(email) = &alerts.email {
            channels.push(Channel::Email(Box::new(Mail::configured(email)?)));
        }
        Ok(channels)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Channel::Webhook(_) => "webhook",
            Channel::Slack(_) => "slack",
            Channel::Email(_) => "email",
        }
    }

    pub async fn send(&self, notice: &Notice, http: &reqwest::Client) -> Result<(), DeliveryError> {
        let failed = |reason: String| DeliveryError {
            channel: self.name(),
            reason,
        };
        match self {
            Channel::Webhook(url) => post(http, url, &notice.webhook_body())
                .await
                .map_err(failed),
            Channel::Slack(url) => post(http, url, &notice.slack_body()).await.map_err(failed),
            Channel::Email(mail) => mail.send(notice).await.map_err(failed),
        }
    }
}

/// The client every HTTP channel shares: bounded, and TLS through rustls.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(ATTEMPT_LIMIT)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

async fn post(
    http: &reqwest::Client,
    url: &Secret,
    body: &serde_json::Value,
) -> Result<(), String> {
    let response = http
        .post(url.expose())
        .json(body)
        .send()
        .await
        .map_err(|e| describe(e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}

/// An HTTP error with its causes, none of which names the URL.
fn describe(error: reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "no answer in time".to_string()
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else {
        "the request failed".to_string()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl Mail {
    fn configured(email: &EmailConfig) -> Result<Mail, String> {
        let url = url::Url::parse(email.smtp_url.expose())
            .map_err(|_| "[alerts.email] smtp_url is not a URL".to_string())?;
        let host = url.host_str().unwrap_or_default();
        let refused = |e: lettre::transport::smtp::Error| {
            format!("[alerts.email] smtp_url cannot be used: {e}")
        };
        let mut builder = match (url.scheme(), email.starttls) {
            ("smtps", _) => AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(refused)?,
            (_, true) => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(refused)?
            }
            _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        };
        if let Some(port) = url.port() {
            builder = builder.port(port);
        }
        if let (Some(user), Some(var)) = (&email.username, &email.password_env) {
            let password = std::env::var(var).map_err(|_| {
                format!("[alerts.email] password_env names {var}, which is not set; export it before starting tidemark")
            })?;
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let parse = |a: &String| {
            a.parse::<Mailbox>()
                .map_err(|e| format!("[alerts.email] {a:?} is not a mail address ({e})"))
        };
        Ok(Mail {
            transport: builder.timeout(Some(ATTEMPT_LIMIT)).build(),
            from: parse(&email.from)?,
            to: email.to.iter().map(parse).collect::<Result<_, _>>()?,
        })
    }

    async fn send(&self, notice: &Notice) -> Result<(), String> {
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(notice.subject());
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message
            .body(notice.text())
            .map_err(|e| format!("cannot build the message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
