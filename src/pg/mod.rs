//! Connecting to PostgreSQL the way libpq does, for every connection tidemark
//! opens: the source (SQL and replication), restore and drill targets, and
//! bench's database.
//!
//! A [`ConnInfo`] is read once from a URL or `key=value` string plus the
//! `PG*` environment; the password comes from the string, `PGPASSWORD`, or a
//! password file, so it need not be on a command line. Each connection then
//! makes the attempts its `sslmode` allows ([`tls::SslMode::attempts`]), on
//! one TLS stack (rustls). Failures that a person must fix (a certificate that
//! does not verify, a server that wants TLS when told not to use it) are
//! [`ConnectError`]s with one line saying what to change.

pub mod conninfo;
pub mod passfile;
pub mod tls;

use std::sync::Arc;

use tokio_postgres::config::{Host, SslMode as DriverSslMode};
use tokio_postgres::tls::NoTls;
use zeroize::Zeroizing;

use crate::base::exit::ExitCode;
pub use conninfo::ConnInfoError;
use tls::{Attempt, TlsFileError, TlsSettings};

/// A parsed connection: where to go, as whom, and how to secure it.
#[derive(Clone)]
pub struct ConnInfo {
    config: tokio_postgres::Config,
    tls: TlsSettings,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConnInfo({}, sslmode={})",
            self.describe(),
            self.tls.mode.as_str()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    TlsFiles(#[from] TlsFileError),
    #[error("cannot connect to {target} over TLS: {reason}")]
    Handshake { target: String, reason: String },
    #[error("the server at {target} does not offer TLS, and sslmode={mode} requires it; turn on ssl in its postgresql.conf, or lower sslmode to prefer")]
    ServerWithoutTls { target: String, mode: &'static str },
    #[error("the server at {target} accepts only TLS connections (pg_hba.conf has no entry for a plain one); remove sslmode={mode} or set sslmode=verify-full")]
    ServerWantsTls { target: String, mode: &'static str },
    #[error("{target} did not complete a connection within {seconds} s; check that the host is reachable, or raise connect_timeout")]
    TimedOut { target: String, seconds: u64 },
    #[error(transparent)]
    Postgres(tokio_postgres::Error),
}

impl ConnectError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ConnectError::TimedOut { .. } => ExitCode::Failure,
            ConnectError::Postgres(e) if e.as_db_error().is_none() => ExitCode::Failure,
            ConnectError::Postgres(e) => match e.as_db_error().map(|db| db.code().code()) {
                Some(code) if code.starts_with("28") || code.starts_with("3D") => {
                    ExitCode::BadInput
                }
                _ => ExitCode::Failure,
            },
            _ => ExitCode::BadInput,
        }
    }
}

impl ConnInfo {
    /// Reads a connection string, with the process's environment for what it leaves out.
    pub fn parse(text: &str) -> Result<ConnInfo, ConnInfoError> {
        ConnInfo::parse_with_env(text, &|name| std::env::var(name).ok())
    }

    pub fn parse_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let parsed = conninfo::parse(text, env)?;
        let mut config: tokio_postgres::Config = parsed.rest.parse().map_err(|e: tokio_postgres::Error| {
            // The parser's message may quote the input; name only the problem.
            let text = e.to_string();
            let reason = text.split(':').next().unwrap_or("invalid").trim().to_string();
            ConnInfoError(format!(
                "not a valid PostgreSQL connection string ({reason}); write it as postgres://user@host:port/db?sslmode=verify-full"
            ))
        })?;
        if config.get_user().is_none() {
            config.user(env("PGUSER").as_deref().unwrap_or("postgres"));
        }
        if config.get_password().is_none() {
            let password = match env("PGPASSWORD").filter(|p| !p.is_empty()) {
                Some(password) => Some(Zeroizing::new(password)),
                None => match &parsed.passfile {
                    Some(file) => passfile::lookup(&file.path, file.given, &wanted(&config))
                        .map_err(ConnInfoError)?,
                    None => None,
                },
            };
            if let Some(password) = password {
                config.password(password.as_bytes());
            }
        }
        Ok(ConnInfo {
            config,
            tls: parsed.tls,
        })
    }

    /// The driver's view, for what it knows (host, port, user, database).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        let mut other = self.clone();
        other.config.dbname(dbname);
        other
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.config.get_password()
    }

    /// The connection as a libpq `key=value` string without the password, for
    /// a child process (which then reads PGPASSWORD, never its arguments).
    pub fn keywords(&self) -> String {
        let quote = conninfo::quote_value;
        let host = match self.config.get_hosts().first() {
            Some(Host::Unix(dir)) => dir.display().to_string(),
            _ => self.host_name(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let mut words = vec![
            format!("host={}", quote(&host)),
            format!("port={port}"),
            format!("user={}", quote(self.user())),
            format!("dbname={}", quote(self.database())),
            format!("sslmode={}", self.tls.mode.as_str()),
        ];
        match &self.tls.root_cert {
            tls::RootCert::Given(path) => words.push(format!(
                "sslrootcert={}",
                quote(&path.display().to_string())
            )),
            tls::RootCert::System => words.push("sslrootcert=system".into()),
            tls::RootCert::Default(_) => {}
        }
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key) {
            if cert.given {
                words.push(format!(
                    "sslcert={}",
                    quote(&cert.path.display().to_string())
                ));
                words.push(format!("sslkey={}", quote(&key.display().to_string())));
            }
        }
        words.join(" ")
    }

    /// Where a connection goes, for messages: never includes the password.
    pub fn describe(&self) -> String {
        describe_target(&self.config)
    }

    /// The database connected to: PostgreSQL's default is the user's name.
    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or(self.user())
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("postgres")
    }

    /// Whether the first host is a Unix socket directory (no TLS there, as in libpq).
    pub fn is_unix_socket(&self) -> bool {
        matches!(self.config.get_hosts().first(), Some(Host::Unix(_)))
    }

    /// The attempts to make, in order, per `sslmode`.
    pub fn attempts(&self) -> &'static [Attempt] {
        self.tls.mode.attempts(self.is_unix_socket())
    }

    /// Opens a SQL connection and runs its I/O on a task of its own.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, ConnectError> {
        let attempts = self.attempts();
        let mut outcome = Err(ConnectError::Handshake {
            target: self.describe(),
            reason: "no attempt was made".into(),
        });
        for (i, attempt) in attempts.iter().enumerate() {
            // The whole handshake, not only the TCP connect: a link that takes
            // packets and answers none must not hang the caller.
            outcome = tokio::time::timeout(self.connect_timeout(), self.connect_once(*attempt))
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectError::TimedOut {
                        target: self.describe(),
                        seconds: self.connect_timeout().as_secs(),
                    })
                });
            match &outcome {
                Err(e) if i + 1 < attempts.len() && turned_away(e) => continue,
                _ => break,
            }
        }
        outcome
    }

    /// `connect_timeout`, or 10 s: the limit on opening a connection, handshakes included.
    pub fn connect_timeout(&self) -> std::time::Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(std::time::Duration::from_secs(10))
    }

    async fn connect_once(&self, attempt: Attempt) -> Result<tokio_postgres::Client, ConnectError> {
        let mut config = self.config.clone();
        let client = match attempt {
            Attempt::Plain => {
                config.ssl_mode(DriverSslMode::Disable);
                let (client, connection) = config
                    .connect(NoTls)
                    .await
                    .map_err(|e| self.classify(e, attempt))?;
                tokio::spawn(connection);
                client
            }
            Attempt::Tls { or_plain } => {
                config.ssl_mode(if or_plain {
                    DriverSslMode::Prefer
                } else {
                    DriverSslMode::Require
                });
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(Arc::unwrap_or_clone(
                    self.tls.client_config()?,
                ));
                let (client, connection) = config
                    .connect(tls)
                    .await
                    .map_err(|e| self.classify(e, attempt))?;
                tokio::spawn(connection);
                client
            }
        };
        Ok(client)
    }

    /// Names the cause of a failed SQL connection where a person can fix it.
    fn classify(&self, error: tokio_postgres::Error, attempt: Attempt) -> ConnectError {
        // The driver says why in the error's source, not its own text.
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        if let Attempt::Tls { or_plain: false } = attempt {
            if cause.is_some_and(|c| c.contains("server does not support TLS")) {
                return ConnectError::ServerWithoutTls {
                    target: self.describe(),
                    mode: self.tls.mode.as_str(),
                };
            }
        }
        let handshake = std::error::Error::source(&error)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .filter(|io| {
                io.get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>())
            });
        if let Some(io) = handshake {
            return ConnectError::Handshake {
                target: self.describe(),
                reason: tls::describe_handshake_failure(io, &self.host_name(), self.tls.mode),
            };
        }
        self.plain_refused(
            attempt,
            error
                .as_db_error()
                .map(|db| (db.code().code(), db.message())),
        )
        .unwrap_or(ConnectError::Postgres(error))
    }

    /// pg_hba.conf turned a plain connection away and there is nothing left to try.
    pub(crate) fn plain_refused(
        &self,
        attempt: Attempt,
        server_error: Option<(&str, &str)>,
    ) -> Option<ConnectError> {
        let (code, message) = server_error?;
        let last_try = self.attempts().last() == Some(&attempt);
        (attempt == Attempt::Plain
            && last_try
            && code == "28000"
            && message.contains("no encryption"))
        .then(|| ConnectError::ServerWantsTls {
            target: self.describe(),
            mode: self.tls.mode.as_str(),
        })
    }

    /// The host name TLS checks the certificate against.
    pub fn host_name(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => "localhost".into(),
        }
    }
}

/// Whether pg_hba.conf refused this attempt, so the mode's next attempt may be let in.
fn turned_away(error: &ConnectError) -> bool {
    matches!(error, ConnectError::Postgres(e) if e.as_db_error().is_some_and(|db| db.code().code() == "28000"))
}

fn wanted(config: &tokio_postgres::Config) -> passfile::Wanted<'_> {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.as_str(),
        Some(Host::Unix(dir)) if !DEFAULT_SOCKET_DIRS.iter().any(|d| dir.as_os_str() == *d) => {
            dir.to_str().unwrap_or("localhost")
        }
        _ => "localhost",
    };
    let user = config.get_user().unwrap_or("postgres");
    passfile::Wanted {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or(user),
        user,
    }
}

/// Socket directories a password file names as `localhost`, as libpq does for its default.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// Where a connection goes, for messages: never includes the password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{}",
        config.get_dbname().unwrap_or("postgres")
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<ConnInfo, ConnInfoError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConnInfo::parse_with_env(text, &|name| env.get(name).cloned())
    }

    #[test]
    fn password_comes_from_the_string_then_pgpassword_then_the_passfile() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pass");
        std::fs::write(&file, "db:5432:shop:tm:from-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let passfile = file.to_str().unwrap();
        let url = format!("postgres://tm@db/shop?passfile={passfile}");
        let password = |info: ConnInfo| info.config().get_password().map(<[u8]>::to_vec);
        assert_eq!(
            password(parse(&url, &[]).unwrap()),
            Some(b"from-file".to_vec())
        );
        assert_eq!(
            password(parse(&url, &[("PGPASSWORD", "from-env")]).unwrap()),
            Some(b"from-env".to_vec())
        );
        let inline = format!("postgres://tm:inline@db/shop?passfile={passfile}");
        assert_eq!(
            password(parse(&inline, &[]).unwrap()),
            Some(b"inline".to_vec())
        );
        assert_eq!(
            password(parse("postgres://tm@db/shop", &[("PGPASSFILE", passfile)]).unwrap()),
            Some(b"from-file".to_vec())
        );
    }

    #[test]
    fn debug_and_errors_hide_the_password() {
        let info = parse("postgres://tm:hunter2@db/shop", &[]).unwrap();
        assert!(!format!("{info:?}").contains("hunter2"));
        let error = parse("postgres://tm:hunter2@db:notaport/shop", &[])
            .err()
            .unwrap();
        assert!(!error.0.contains("hunter2"), "{}", error.0);
    }
}
