//! The TOML config, with `TIDEMARK_<SECTION>_<KEY>` environment overrides.
//!
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::fmt;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use serde::Deserialize;

use crate::base::exit::ExitCode;
use crate::base::table::TableName;
use crate::pg::ConnInfo;

pub mod alerts;
pub mod schedule;

pub use alerts::{AlertsConfig, EmailConfig};
pub use schedule::{Schedule, ScheduleConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}; pass an existing file with --config", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {}{location}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        location: String,
        message: String,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
}

impl ConfigError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ConfigError::Read { .. } | ConfigError::Invalid { .. } | ConfigError::Env { .. } => {
                ExitCode::BadInput
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub log: LogConfig,
    /// Without it, capture keeps changes only in the local log.
    pub archive: Option<ArchiveConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Without it, nothing archived is ever deleted.
    pub retention: Option<RetentionPolicy>,
    /// With it, capture also publishes every committed change to Kafka.
    pub kafka: Option<KafkaConfig>,
    /// When `status` calls protection degraded (warning) or stopped (critical), and whom to tell.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Verify and drill runs the capture daemon makes by itself.
    #[serde(default)]
    pub schedule: ScheduleConfig,
}

/// `[kafka] time_format`: how timestamps, dates and times are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeFormat {
    /// ISO 8601 strings, like Debezium's `ZonedTimestamp`.
    #[default]
    Iso,
    /// Microseconds since the epoch (dates: days; times: microseconds since midnight).
    Micros,
}

/// `[kafka]`: the audit feed. Keys with a dot in them (`"security.protocol"`,
/// `"sasl.password"`, ...) go to librdkafka as they are; their values may be
/// secrets and are never printed.
#[derive(Clone, Deserialize)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`
    pub brokers: String,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Publish the tables' rows as `op: "r"` events when the feed first starts.
    #[serde(default)]
    pub snapshot: bool,
    /// Publish BEGIN and END events to `<topic_prefix>.transaction`.
    #[serde(default)]
    pub transaction_topic: bool,
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Written for a TOASTed value an update left unchanged when tidemark has no earlier value.
    #[serde(default = "default_unavailable_value")]
    pub unavailable_value: String,
    /// Partitions of the topics tidemark creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_partitions")]
    pub replication_factor: i32,
    /// librdkafka settings, passed through.
    #[serde(flatten)]
    pub settings: std::collections::BTreeMap<String, String>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn default_topic_prefix() -> String {
    "tidemark".into()
}

fn default_unavailable_value() -> String {
    "__debezium_unavailable_value".into()
}

fn default_partitions() -> i32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served; loopback unless configured otherwise.
    #[serde(default = "default_metrics_listen")]
    pub listen: std::net::SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9817))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A libpq-style URL or key=value string; may hold a password, so it is never printed.
    pub url: SecretUrl,
    pub tables: Vec<String>,
    #[serde(default = "default_publication")]
    pub publication: String,
    #[serde(default = "default_slot")]
    pub slot: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub dir: PathBuf,
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// When local segments not yet archived reach this size, capture stops
    /// reading from the slot (the server keeps the WAL) until the archive catches up.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `file:///path` or `s3://bucket/prefix`.
    pub url: String,
    /// Sealed segments reach the store within this long of their last commit.
    #[serde(default = "default_upload_interval", with = "humantime_serde")]
    pub upload_interval: std::time::Duration,
    /// Capture builds a new base snapshot from the archive this often.
    #[serde(default = "default_compact_interval", with = "humantime_serde")]
    pub compact_interval: std::time::Duration,
    /// While the source commits nothing, capture commits a heartbeat this
    /// often, so the restore window follows the source's clock.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: std::time::Duration,
    /// An S3-compatible endpoint (MinIO, Ceph, ...); AWS when absent.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    /// A file holding the 32-byte AES-256 key as 64 hex characters.
    pub encryption_key_file: Option<PathBuf>,
    /// The name of an environment variable holding the key as 64 hex characters.
    pub encryption_key_env: Option<String>,
    /// Keys that encrypted older objects: read with, never written with (key rotation).
    #[serde(default)]
    pub previous_key_files: Vec<PathBuf>,
}

/// `[retention]`: which restore points the archive keeps.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Every restore point this recent stays restorable.
    #[serde(with = "humantime_serde")]
    pub window: std::time::Duration,
    /// Beyond the window, keep the newest snapshot of each of this many days...
    #[serde(default)]
    pub daily: usize,
    /// ...ISO weeks...
    #[serde(default)]
    pub weekly: usize,
    /// ...and months.
    #[serde(default)]
    pub monthly: usize,
}

fn default_upload_interval() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

fn default_heartbeat_interval() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_compact_interval() -> std::time::Duration {
    std::time::Duration::from_secs(6 * 3600)
}

fn default_max_size() -> ByteSize {
    ByteSize::gib(10)
}

fn default_publication() -> String {
    "tidemark".into()
}

fn default_slot() -> String {
    "tidemark".into()
}

fn default_segment_size() -> ByteSize {
    ByteSize::mib(64)
}

/// A connection string whose Debug and Display never show the password.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn parse(&self) -> Result<ConnInfo, String> {
        ConnInfo::parse(&self.0).map_err(|e| format!("[source] url: {e}"))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(<redacted>)")
    }
}

/// Everything capture needs, checked: the parsed connection and table names.
/// (`ConnInfo`'s Debug output has no password.)
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub pg: ConnInfo,
    pub tables: Vec<TableName>,
}

impl Config {
    /// Reads `path`, applies environment overrides, and checks every value.
    pub fn load(path: &Path) -> Result<Checked, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(path, &text, std::env::vars())
    }

    pub fn from_toml(
        path: &Path,
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Checked, ConfigError> {
        let invalid = |location: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            location,
            message,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            invalid(line_of(text, e.span()), e.message().to_string())
        })?;
        apply_env(&mut table, env)?;
        let config = Config::deserialize(table).map_err(|e| {
            invalid(
                String::new(),
                format!("{}; fix or remove that key", e.message()),
            )
        })?;
        let pg = config
            .source
            .url
            .parse()
            .map_err(|message| invalid(String::new(), message))?;
        if config.source.tables.is_empty() {
            return Err(invalid(
                String::new(),
                "[source] tables is empty; list the tables to protect, e.g. tables = [\"public.payments\"]".into(),
            ));
        }
        let tables = config
            .source
            .tables
            .iter()
            .map(|t| {
                t.parse::<TableName>()
                    .map_err(|e| invalid(String::new(), format!("[source] tables: {e}")))
            })
            .collect::<Result<_, _>>()?;
        if let Some(archive) = &config.archive {
            if !(archive.url.starts_with("file:///") || archive.url.starts_with("s3://")) {
                return Err(invalid(
                    String::new(),
                    format!("[archive] url {:?} is not supported; use file:///absolute/path or s3://bucket/prefix", archive.url),
                ));
            }
            if archive.encryption_key_file.is_some() && archive.encryption_key_env.is_some() {
                return Err(invalid(
                    String::new(),
                    "[archive] takes encryption_key_file or encryption_key_env, not both".into(),
                ));
            }
            if archive.heartbeat_interval.is_zero() {
                return Err(invalid(
                    String::new(),
                    "[archive] heartbeat_interval must be above zero, e.g. \"10s\"".into(),
                ));
            }
            if archive.upload_interval.is_zero() {
                return Err(invalid(
                    String::new(),
                    "[archive] upload_interval must be above zero, e.g. \"1s\"".into(),
                ));
            }
        }
        if config.kafka.is_some() && !cfg!(feature = "kafka") {
            return Err(invalid(
                String::new(),
                "[kafka] is set, and this tidemark was built without Kafka support; build it with the kafka feature (on by default), or remove [kafka]".into(),
            ));
        }
        if let Some(kafka) = &config.kafka {
            if let Some(key) = kafka.settings.keys().find(|k| !k.contains('.')) {
                return Err(invalid(
                    String::new(),
                    format!("unknown key {key:?} in [kafka]; fix or remove that key (librdkafka settings are written with their dots, e.g. \"security.protocol\")"),
                ));
            }
            if kafka.brokers.trim().is_empty() || kafka.topic_prefix.trim().is_empty() {
                return Err(invalid(
                    String::new(),
                    "[kafka] brokers and topic_prefix must not be empty, e.g. brokers = \"localhost:9092\"".into(),
                ));
            }
            if kafka.partitions < 1 || kafka.replication_factor < 1 {
                return Err(invalid(
                    String::new(),
                    "[kafka] partitions and replication_factor must be at least 1".into(),
                ));
            }
        }
        config
            .alerts
            .check()
            .map_err(|message| invalid(String::new(), message))?;
        let schedule = &config.schedule;
        if (schedule.verify.is_some() || schedule.drill.is_some()) && config.archive.is_none() {
            return Err(invalid(
                String::new(),
                "[schedule] needs an [archive] to verify and drill; add one or remove [schedule]"
                    .into(),
            ));
        }
        match (&schedule.drill, &schedule.drill_target) {
            (Some(_), None) => {
                return Err(invalid(
                    String::new(),
                    "[schedule] drill needs drill_target, the URL of a scratch database to restore into".into(),
                ))
            }
            (_, Some(target)) => {
                target
                    .parse()
                    .map_err(|message| invalid(String::new(), message.replace("[source] url", "[schedule] drill_target")))?;
            }
            (None, None) => {}
        }
        if config.retention.is_some() && config.archive.is_none() {
            return Err(invalid(
                String::new(),
                "[retention] needs an [archive] to prune; add one or remove [retention]".into(),
            ));
        }
        if config.log.max_size.as_u64() < config.log.segment_size.as_u64() * 2 {
            return Err(invalid(
                String::new(),
                "[log] max_size must be at least twice [log] segment_size".into(),
            ));
        }
        if config.log.segment_size < ByteSize::mib(1) {
            return Err(invalid(
                String::new(),
                "[log] segment_size must be at least 1MiB".into(),
            ));
        }
        Ok(Checked { config, pg, tables })
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" line {line}")
        }
        None => String::new(),
    }
}

const SECTIONS: &[&str] = &[
    "source",
    "log",
    "archive",
    "metrics",
    "retention",
    "kafka",
    "alerts",
    "schedule",
];

/// Applies `TIDEMARK_<SECTION>_<KEY>=value`; the value is TOML if it parses as TOML, else a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl Iterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("TIDEMARK_") else {
            continue;
        };
        if rest == "CONFIG" {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS.iter().find_map(|s| {
            lower
                .strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .map(|k| (*s, k.to_string()))
        }) else {
            return Err(ConfigError::Env {
                name,
                message: format!(
                    "no config section matches; overrides are named TIDEMARK_<SECTION>_<KEY> with SECTION one of {}",
                    SECTIONS.join(", ")
                ),
            });
        };
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(section_table) => {
                section_table.insert(key, parsed);
            }
            None => {
                return Err(ConfigError::Env {
                    name,
                    message: format!("[{section}] is not a section in the config file"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[source]
url = "postgres://tm:s3cret@localhost:5432/app"
tables = ["public.users", "payments"]

[log]
dir = "/tmp/tm"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Checked, ConfigError> {
        Config::from_toml(
            Path::new("t.toml"),
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../config/tidemark.toml");
        let checked = load(text, &[]).unwrap();
        assert_eq!(checked.tables.len(), 2);
        assert_eq!(checked.pg.database(), "app");
    }

    #[test]
    fn the_example_kafka_section_is_valid_and_its_secrets_stay_hidden() {
        let example = include_str!("../../config/tidemark.toml");
        let start = example.find("# [kafka]").unwrap();
        let end = example.find("[metrics]").unwrap();
        let kafka: String = example[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = format!("{}{kafka}{}", &example[..start], &example[end..]).replace(
            "\"sasl.password\" = \"...\"",
            "\"sasl.password\" = \"hunter2-secret\"",
        );
        let checked = load(&text, &[]).unwrap();
        let config = checked.config.kafka.as_ref().unwrap();
        assert_eq!(config.topic_prefix, "tidemark");
        assert_eq!(config.settings["security.protocol"], "SASL_SSL");
        assert_eq!(config.settings["sasl.password"], "hunter2-secret");
        assert!(!format!("{checked:?}").contains("hunter2"), "{checked:?}");
        let typo = text.replace("topic_prefix =", "topicprefix =");
        let error = load(&typo, &[]).unwrap_err().to_string();
        assert!(
            error.contains("unknown key \"topicprefix\" in [kafka]"),
            "{error}"
        );
    }

    #[test]
    fn defaults_apply() {
        let checked = load(GOOD, &[]).unwrap();
        assert_eq!(checked.config.source.slot, "tidemark");
        assert_eq!(checked.config.log.segment_size, ByteSize::mib(64));
        assert_eq!(checked.tables[1].to_string(), "public.payments");
    }

    #[test]
    fn unknown_keys_are_named_on_one_line() {
        let text = GOOD.replace("dir =", "dri =");
        let error = load(&text, &[]).unwrap_err().to_string();
        assert!(error.contains("unknown field `dri`"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn env_overrides_win() {
        let checked = load(
            GOOD,
            &[
                ("TIDEMARK_LOG_SEGMENT_SIZE", "2MiB"),
                ("TIDEMARK_SOURCE_TABLES", "[\"a.b\"]"),
                ("TIDEMARK_CONFIG", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(checked.config.log.segment_size, ByteSize::mib(2));
        assert_eq!(checked.tables[0].to_string(), "a.b");
        assert!(load(GOOD, &[("TIDEMARK_BOGUS_X", "1")]).is_err());
        assert!(load(GOOD, &[("TIDEMARK_LOG_BOGUS", "1")]).is_err());
    }

    #[test]
    fn the_password_never_shows() {
        let checked = load(GOOD, &[]).unwrap();
        assert!(!format!("{:?}", checked.config).contains("s3cret"));
        let bad = GOOD.replace(
            "postgres://tm:s3cret@localhost:5432/app",
            "postgres://tm:s3cret@host:notaport/app",
        );
        let error = load(&bad, &[]).unwrap_err().to_string();
        assert!(error.contains("[source] url"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn alerts_and_schedule_are_checked_without_showing_a_url() {
        let with = |extra: &str| load(&format!("{GOOD}{extra}"), &[]);
        let checked = with(
            "\n[alerts]\nwebhook_url = \"https://hooks.example/T0/xyzzy\"\nrepeat = \"30m\"\n",
        )
        .unwrap();
        assert_eq!(checked.config.alerts.repeat.as_secs(), 1800);
        assert!(!format!("{checked:?}").contains("xyzzy"));
        let cases = [
            ("\n[alerts]\nwebhook_url = \"ftp://hooks.example/xyzzy\"\n", "must start with https://"),
            ("\n[alerts]\nslack_webhook_url = \"xyzzy\"\n", "is not a URL"),
            ("\n[alerts]\nrpo_warning = \"1h\"\nrpo_critical = \"1m\"\n", "below its warning"),
            ("\n[alerts.email]\nsmtp_url = \"smtp://xyzzy:pw@mail\"\nfrom = \"a@b.c\"\nto = []\n", "to is empty"),
            ("\n[alerts.email]\nsmtp_url = \"http://mail\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n", "smtp://host"),
            ("\n[alerts.email]\nsmtp_url = \"smtp://mail\"\nfrom = \"not an address\"\nto = [\"d@e.f\"]\n", "not a mail address"),
            ("\n[schedule]\nverify = \"every 1h\"\n", "needs an [archive]"),
            ("\n[archive]\nurl = \"file:///a\"\n\n[schedule]\ndrill = \"0 6 * * *\"\n", "drill needs drill_target"),
            ("\n[archive]\nurl = \"file:///a\"\n\n[schedule]\nverify = \"daily\"\n", "five-field cron"),
        ];
        for (extra, expected) in cases {
            let error = with(extra).unwrap_err().to_string();
            assert!(error.contains(expected), "{extra}: {error}");
            assert!(!error.contains("xyzzy"), "{error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }
}
