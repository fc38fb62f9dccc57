//! Operations: alerts reaching real receivers (an HTTP server for the webhook
//! and Slack, aiosmtpd for mail), `/healthz` during an S3 outage, scheduled
//! verify and drill, and the audit log, locally and in the archive.

mod harness;

use std::time::Duration;

use harness::proxy::Proxy;
use harness::receivers::{HttpReceiver, SmtpServer};
use harness::Fixture;
use serde_json::Value;

const SCHEMA: &str = "CREATE TABLE payments (id bigserial PRIMARY KEY, amount int NOT NULL)";

fn pay(fx: &Fixture, rows: u32) {
    fx.psql(&format!(
        "INSERT INTO payments (amount) SELECT g FROM generate_series(1, {rows}) g"
    ));
}

/// (alert, severity, state) of each notice, in order, from `first` on.
fn notices(bodies: &[Value], alert: &str, first: usize) -> Vec<(String, String)> {
    bodies[first.min(bodies.len())..]
        .iter()
        .filter(|b| b["alert"] == alert)
        .map(|b| {
            (
                b["severity"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Whether every alert that fired has been resolved since.
fn all_resolved(bodies: &[Value]) -> bool {
    let mut last = std::collections::BTreeMap::new();
    for b in bodies {
        last.insert(b["alert"].to_string(), b["state"].to_string());
    }
    last.values().all(|state| state == "\"resolved\"")
}

/// (severity, state) of each Slack notice for `alert` from `first` on, read
/// back from its text ("tidemark CRITICAL rpo: firing on ...").
fn slack_notices(bodies: &[Value], alert: &str, first: usize) -> Vec<(String, String)> {
    bodies[first.min(bodies.len())..]
        .iter()
        .filter_map(|b| {
            let text = b["text"].as_str()?;
            let rest = text.split("tidemark ").nth(1)?;
            let (severity, rest) = rest.split_once(' ')?;
            let (name, rest) = rest.split_once(": ")?;
            let state = rest.split(' ').next()?;
            (name == alert).then(|| (severity.to_lowercase(), state.to_string()))
        })
        .collect()
}

/// An S3 outage (a proxy the test owns refuses every connection): the RPO
/// passes `rpo_warning`, then `rpo_critical`; once S3 is back it resolves.
/// Each step reaches the webhook, Slack and mail once, with no repeat before
/// `repeat`; `/healthz` answers 503 while critical and 200 after. The
/// webhook refuses the first notice and gets it on a retry. No channel's
/// secret shows in the logs, the metrics or the audit log.
#[tokio::test]
async fn alerts_fire_escalate_and_resolve_across_an_s3_outage() {
    let fx = Fixture::new(SCHEMA);
    let s3 = harness::s3();
    let bucket = s3.bucket().await;
    let s3_port: u16 = s3.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = Proxy::start(s3_port);
    let hooks = HttpReceiver::start();
    let smtp = SmtpServer::start();
    let (webhook, slack) = ("/hook", "/slack/T0/SLACKSECRET");
    let config = fx.config(
        &["public.payments"],
        &format!(
            "\n[archive]\nurl = \"s3://{bucket}/db\"\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\npath_style = true\nupload_interval = \"200ms\"\nheartbeat_interval = \"1s\"\n\n[alerts]\nrpo_warning = \"4s\"\nrpo_critical = \"12s\"\nrepeat = \"1h\"\ncheck_interval = \"300ms\"\nwebhook_url = \"{}\"\nslack_webhook_url = \"{}\"\n\n[alerts.email]\nsmtp_url = \"{}\"\nfrom = \"tidemark@example.com\"\nto = [\"oncall@example.com\"]\n",
            proxy.port(),
            hooks.url(&format!("{webhook}?token=WEBHOOKSECRET")),
            hooks.url(slack),
            smtp.url(),
        ),
    );
    let capture = harness::Capture::start_with_env(&config, &harness::s3_env());
    fx.base_snapshot(&config).arrives().await;
    let port = harness::metrics_port(&config);
    let healthz = || harness::http_get(port, "/healthz").map(|(code, _)| code);
    // Mail is the slowest channel: a notice from the start (the RPO before
    // the first snapshot) may reach it after the webhook has it resolved.
    let settled = || {
        healthz() == Some(200)
            && all_resolved(&hooks.json(webhook))
            && smtp.messages().len() >= hooks.json(slack).len()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !settled() {
        assert!(
            std::time::Instant::now() < deadline,
            "no healthy status with every alert from the start resolved: /status {:?}, Slack got {:?}",
            harness::http_get(port, "/status"),
            hooks.bodies(webhook)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = harness::http_get(port, "/status").unwrap();
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["health"], "ok", "{status}");
    let (slack_before, hooks_before, mail_before) = (
        hooks.json(slack).len(),
        hooks.json(webhook).len(),
        smtp.messages().len(),
    );

    hooks.answer(webhook, 503);
    proxy.refuse();
    pay(&fx, 50);
    harness::Event::new("the rpo warning on Slack", Duration::from_secs(60), || {
        !slack_notices(&hooks.json(slack), "rpo", slack_before).is_empty()
    })
    .arrives()
    .await;
    hooks.answer(webhook, 200);
    harness::Event::new("/healthz to answer 503", Duration::from_secs(60), || {
        healthz() == Some(503)
    })
    .arrives()
    .await;
    harness::Event::new(
        "the rpo escalation on Slack",
        Duration::from_secs(60),
        || slack_notices(&hooks.json(slack), "rpo", slack_before).len() >= 2,
    )
    .arrives()
    .await;
    proxy.mend();
    harness::Event::new(
        "/healthz to answer 200 again",
        Duration::from_secs(90),
        || healthz() == Some(200),
    )
    .arrives()
    .await;
    // Once S3 is back the backlog may land in more than one manifest, so the
    // RPO can step down to warning on its way back: allowed, and notified.
    let resolved = |sequence: &[(String, String)]| {
        sequence
            .last()
            .is_some_and(|(_, state)| state == "resolved")
    };
    harness::Event::new(
        "the rpo resolved notice everywhere",
        Duration::from_secs(60),
        || {
            let slack_seen = slack_notices(&hooks.json(slack), "rpo", slack_before);
            let mail_seen = smtp.messages().len() - mail_before;
            resolved(&slack_seen)
                && resolved(&notices(&hooks.json(webhook), "rpo", hooks_before))
                && mail_seen >= slack_seen.len()
        },
    )
    .arrives()
    .await;
    let sequence = slack_notices(&hooks.json(slack), "rpo", slack_before);
    let pair = |severity: &str, state: &str| (severity.to_string(), state.to_string());
    assert_eq!(
        sequence[..2],
        [pair("warning", "firing"), pair("critical", "firing")],
        "{sequence:?}"
    );
    assert!(
        [
            vec![pair("critical", "resolved")],
            vec![pair("warning", "firing"), pair("warning", "resolved")],
        ]
        .contains(&sequence[2..].to_vec()),
        "fired once per severity, resolved once: {sequence:?}"
    );
    let mut delivered = notices(&hooks.json(webhook), "rpo", hooks_before);
    delivered.dedup();
    assert_eq!(delivered, sequence, "the webhook saw what Slack saw");

    // The webhook took the warning on a retry: the first attempt was answered 503.
    let webhook_rpo = notices(&hooks.json(webhook), "rpo", hooks_before);
    assert!(
        webhook_rpo.len() > sequence.len(),
        "no retry seen: {webhook_rpo:?}"
    );
    let critical = hooks.json(webhook)[hooks_before..]
        .iter()
        .find(|b| b["alert"] == "rpo" && b["severity"] == "critical")
        .cloned()
        .unwrap();
    assert_eq!(
        critical["threshold"], 12.0,
        "the critical threshold: {critical}"
    );
    let body = hooks.json(webhook).last().cloned().unwrap();
    for notice in &hooks.json(webhook)[hooks_before..] {
        println!("webhook notice: {notice}");
    }
    assert_eq!(body["source"]["database"], fx.db.as_str(), "{body}");
    for key in [
        "alert",
        "severity",
        "state",
        "message",
        "value",
        "threshold",
        "at",
        "source",
    ] {
        assert!(body.get(key).is_some(), "{key} missing from {body}");
    }
    let texts: Vec<String> = hooks.json(slack)[slack_before..]
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(texts.iter().any(|t| t.contains("WARNING rpo")), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("rpo: resolved")),
        "{texts:?}"
    );
    let subjects: Vec<String> = smtp.messages()[mail_before..]
        .iter()
        .filter_map(|m| {
            m["data"]
                .as_str()
                .unwrap()
                .lines()
                .find(|l| l.starts_with("Subject: "))
                .map(String::from)
        })
        .filter(|s| s.contains(" rpo "))
        .collect();
    let expected_subjects: Vec<String> = sequence
        .iter()
        .map(|(severity, state)| {
            format!(
                "Subject: [tidemark] {} rpo {state} on {}",
                severity.to_uppercase(),
                fx.db
            )
        })
        .collect();
    assert_eq!(subjects, expected_subjects);
    assert_eq!(smtp.messages()[mail_before]["to"][0], "oncall@example.com");

    let metrics = harness::scrape(port);
    let failures = harness::sample(
        &metrics,
        "tidemark_alert_delivery_failures_total{channel=\"webhook\"}",
    );
    assert!(failures.unwrap_or(0.0) >= 1.0, "{metrics}");
    let logs = capture.logs();
    assert_eq!(capture.stop(), 0);
    assert!(logs.contains("alert delivery failed"), "{logs}");
    let audit = std::fs::read_to_string(fx.log_dir().join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"operation\":\"alert\""), "{audit}");
    for secret in ["WEBHOOKSECRET", "SLACKSECRET"] {
        for (what, text) in [
            ("logs", &logs),
            ("metrics", &metrics),
            ("audit log", &audit),
        ] {
            assert!(!text.contains(secret), "{secret} shows in the {what}");
        }
    }
}

/// `tidemark alerts test` sends one notice through every channel: exit 0
/// when all take it, 1 naming the ones that did not (never by their URL).
#[test]
fn alerts_test_names_the_channels_that_failed() {
    let fx = Fixture::new("");
    let hooks = HttpReceiver::start();
    let smtp = SmtpServer::start();
    let slack = "/slack/T0/SLACKSECRET";
    let config = fx.config(
        &["public.payments"],
        &format!(
            "\n[alerts]\nwebhook_url = \"{}\"\nslack_webhook_url = \"{}\"\n\n[alerts.email]\nsmtp_url = \"{}\"\nfrom = \"tidemark@example.com\"\nto = [\"oncall@example.com\", \"dba@example.com\"]\n",
            hooks.url("/hook?token=WEBHOOKSECRET"),
            hooks.url(slack),
            smtp.url()
        ),
    );
    let config = config.to_str().unwrap();
    hooks.answer(slack, 500);
    let out = harness::tidemark(&["alerts", "test", "--config", config], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("slack: the receiver answered HTTP 500"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("webhook:") && !stderr.contains("email:"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRET"), "{stderr}");
    assert_eq!(hooks.json("/hook")[0]["alert"], "test");
    assert_eq!(
        smtp.messages()[0]["to"],
        serde_json::json!(["oncall@example.com", "dba@example.com"])
    );

    hooks.answer(slack, 200);
    let out = harness::tidemark(&["alerts", "test", "--config", config], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Sent a test notification through: webhook, slack, email."
    );

    // A password variable that is not set is bad input, named.
    let with_login = std::fs::read_to_string(config).unwrap().replace(
        "from = ",
        "username = \"tm\"\npassword_env = \"TIDEMARK_TEST_UNSET_SMTP_PASSWORD\"\nfrom = ",
    );
    std::fs::write(config, with_login).unwrap();
    let out = harness::tidemark(&["alerts", "test", "--config", config], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TIDEMARK_TEST_UNSET_SMTP_PASSWORD"),
        "{stderr}"
    );
}

/// The daemon runs `[schedule]` verify and drill; `status` and the metrics
/// show their results. A restore and each verify leave audit lines, in the
/// log dir and under `audit/` in the archive, without the target's password;
/// `verify` names an archived audit batch that was edited.
#[tokio::test]
async fn scheduled_checks_and_the_audit_log() {
    let fx = Fixture::new(SCHEMA);
    let drill_target = Fixture::new("");
    let config = fx.config_with_archive(
        &["public.payments"],
        &format!(
            "heartbeat_interval = \"1s\"\n\n[schedule]\nverify = \"every 2s\"\ndrill = \"every 3s\"\ndrill_target = {:?}\n",
            drill_target.url()
        ),
    );
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    pay(&fx, 100);
    let last = |job: &str| -> Option<Value> {
        let text = std::fs::read(fx.log_dir().join(format!("{job}.last.json"))).ok()?;
        serde_json::from_slice(&text).ok()
    };
    harness::Event::new(
        "a scheduled verify and drill",
        Duration::from_secs(120),
        || last("verify").is_some() && last("drill").is_some(),
    )
    .arrives()
    .await;
    let (verify, drill) = (last("verify").unwrap(), last("drill").unwrap());
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(drill["ok"], true, "{drill}");
    assert!(drill["rto_seconds"].as_f64().unwrap() > 0.0, "{drill}");

    let config_arg = config.to_str().unwrap();
    let out = harness::tidemark(&["status", "--config", config_arg, "--json"], &[]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["verify"]["ok"], true, "{status}");
    assert_eq!(status["drill"]["ok"], true, "{status}");
    let check = |name: &str| {
        status["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(check("verify")["status"], "ok", "{status}");
    assert!(
        check("drill")["message"]
            .as_str()
            .unwrap()
            .contains("passed"),
        "{status}"
    );
    let metrics = harness::scrape(harness::metrics_port(&config));
    assert_eq!(
        harness::sample(&metrics, "tidemark_scheduled_last_ok{job=\"verify\"}"),
        Some(1.0),
        "{metrics}"
    );

    let target = Fixture::new("");
    let out = harness::tidemark(
        &[
            "restore",
            "--config",
            config_arg,
            "--to",
            "latest",
            "--target",
            &target.url(),
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(capture.stop(), 0);
    // The audit log, the schedule results, the alert state and the last upload are private.
    for written in [
        "audit.jsonl",
        "verify.last.json",
        "drill.last.json",
        "archived.json",
    ] {
        assert!(fx.log_dir().join(written).exists(), "{written} missing");
    }
    harness::assert_private(&fx.log_dir());
    harness::assert_private(&fx.archive_dir());

    let out = harness::tidemark(&["audit", "--config", config_arg, "--json"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let of = |operation: &str| -> Vec<&Value> {
        entries
            .iter()
            .filter(|e| e["operation"] == operation)
            .collect()
    };
    for operation in [
        "capture.start",
        "snapshot",
        "verify",
        "drill",
        "restore",
        "capture.stop",
    ] {
        assert!(
            !of(operation).is_empty(),
            "no {operation} line in {entries:?}"
        );
    }
    let restore = of("restore")[0];
    assert_eq!(restore["outcome"], "ok", "{restore}");
    assert_eq!(restore["details"]["to"], "latest");
    assert_eq!(
        restore["details"]["tables"],
        serde_json::json!(["public.payments"])
    );
    assert_eq!(restore["details"]["rows"], 100, "{restore}");
    assert_eq!(restore["details"]["where"], Value::Null, "{restore}");
    assert!(
        restore["details"]["seconds"].as_f64().is_some(),
        "{restore}"
    );
    assert!(
        restore["details"]["target"]
            .as_str()
            .unwrap()
            .contains(&target.db),
        "{restore}"
    );
    for key in ["at", "user", "host", "prev_sha256"] {
        assert!(restore.get(key).is_some(), "{key} missing: {restore}");
    }
    let out = harness::tidemark(
        &[
            "audit",
            "--config",
            config_arg,
            "--json",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
        &[],
    );
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap(),
        Vec::<Value>::new()
    );

    // The archive holds the same chain; the target's password is nowhere in either.
    let password = fx
        .cluster
        .password()
        .expect("the shared cluster listens with a password");
    let local = std::fs::read_to_string(fx.log_dir().join("audit.jsonl")).unwrap();
    let batches: Vec<String> = harness::files_under(&fx.archive_dir())
        .into_iter()
        .filter(|key| key.starts_with("audit/"))
        .collect();
    assert!(!batches.is_empty());
    let read = |key: &str| std::fs::read_to_string(fx.archive_dir().join(key)).unwrap();
    let archived: String = batches.iter().map(|b| read(b)).collect();
    for operation in ["restore", "verify"] {
        let line = format!("\"operation\":\"{operation}\"");
        assert!(archived.contains(&line), "no {operation} in {archived}");
    }
    for text in [&local, &archived] {
        assert!(
            !text.contains(password),
            "the password shows in the audit log"
        );
    }
    let out = harness::tidemark(&["verify", "--config", config_arg, "--json"], &[]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(report["audit_batches"].as_u64().unwrap() >= 1, "{report}");

    let edited = &batches[0];
    let text = read(edited);
    std::fs::write(
        fx.archive_dir().join(edited),
        text.replacen("\"outcome\":\"ok\"", "\"outcome\":\"failed\"", 1),
    )
    .unwrap();
    let out = harness::tidemark(&["verify", "--config", config_arg, "--json"], &[]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        harness::report_names(&report, edited),
        "{edited} not named in {report}"
    );

    // An edited local line is named by `tidemark audit`, exit 1.
    std::fs::write(
        fx.log_dir().join("audit.jsonl"),
        local.replacen("\"outcome\":\"ok\"", "\"outcome\":\"failed\"", 1),
    )
    .unwrap();
    let out = harness::tidemark(&["audit", "--config", config_arg], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("audit line 2"), "{stderr}");
}

/// A start with other tables than the last start leaves a `tables.change`
/// line naming what was added and removed.
#[test]
fn a_change_of_the_watched_tables_is_audited() {
    let fx = Fixture::new(&format!(
        "{SCHEMA}; CREATE TABLE refunds (id int PRIMARY KEY)"
    ));
    for tables in [&["public.payments"][..], &["public.refunds"][..]] {
        let config = fx.config(tables, "");
        let capture = fx.start_capture(&config);
        fx.wait_streaming(&capture);
        assert_eq!(capture.stop(), 0);
    }
    let config = fx.config(&["public.refunds"], "");
    let out = harness::tidemark(
        &["audit", "--config", config.to_str().unwrap(), "--json"],
        &[],
    );
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let operations: Vec<&str> = entries
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        operations,
        [
            "capture.start",
            "capture.stop",
            "tables.change",
            "capture.start",
            "capture.stop"
        ]
    );
    let change = &entries[2]["details"];
    assert_eq!(
        change["added"],
        serde_json::json!(["public.refunds"]),
        "{change}"
    );
    assert_eq!(
        change["removed"],
        serde_json::json!(["public.payments"]),
        "{change}"
    );
}
