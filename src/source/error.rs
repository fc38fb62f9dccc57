use crate::base::exit::ExitCode;
use crate::base::position::EndLsn;

/// Errors from the source database. Retryable ones are worth a reconnect; the
/// rest need a person to fix something, and say what.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot reach the source at {target}: {source}; check [source] url and that PostgreSQL is running and accepts TCP connections")]
    Unreachable {
        target: String,
        source: std::io::Error,
    },
    #[error("the source rejected user {user} at {target}: {message}; check the user and password in [source] url")]
    AuthFailed {
        user: String,
        target: String,
        /// SQLSTATE: 28000 is pg_hba.conf turning the connection away, 28P01 a wrong password.
        code: String,
        message: String,
    },
    #[error(
        "the source at {target} asks for a password but [source] url has none; add one to the url"
    )]
    PasswordMissing { target: String },
    #[error("the source asks for authentication method {0}, which tidemark does not support; use scram-sha-256, md5 or trust in pg_hba.conf")]
    UnsupportedAuth(String),
    #[error("source error {code}: {message}")]
    Server { code: String, message: String },
    #[error("the source broke the replication protocol: {0}")]
    Protocol(String),
    #[error("lost the connection to the source: {0}")]
    Io(#[from] std::io::Error),
    #[error("the source closed the connection")]
    Closed,
    #[error("the source sent nothing for {0:?}, even when asked to answer; the link is taken to be dead")]
    Silent(std::time::Duration),
    #[error("wal_level is '{actual}' on the source; set wal_level = logical in postgresql.conf and restart PostgreSQL")]
    WalLevel { actual: String },
    #[error(
        "role {role} may not start replication; run ALTER ROLE {role} REPLICATION (as a superuser)"
    )]
    NoReplicationRole { role: String },
    #[error("table {table} does not exist in database {database}; create it, or remove it from [source] tables")]
    MissingTable { table: String, database: String },
    #[error("{table} is not an ordinary table (relkind '{relkind}'); list only tables in [source] tables")]
    NotATable { table: String, relkind: String },
    #[error("table {table} has no usable replica identity, so its updates and deletes cannot be captured; add a primary key, or run ALTER TABLE {table} REPLICA IDENTITY FULL")]
    NoReplicaIdentity { table: String },
    #[error("role {role} may not read table {table}; run GRANT SELECT ON {table} TO {role}")]
    NoSelect { role: String, table: String },
    #[error("replication slot {slot} uses output plugin {plugin}, not pgoutput; drop it with SELECT pg_drop_replication_slot('{slot}'), or set [source] slot to another name")]
    SlotPlugin { slot: String, plugin: String },
    #[error("replication slot {slot} belongs to database {database}, not {expected}; set [source] slot to another name")]
    SlotDatabase {
        slot: String,
        database: String,
        expected: String,
    },
    #[error("replication slot {slot} is physical; set [source] slot to the name of a logical slot, or to a new name")]
    SlotPhysical { slot: String },
    #[error("replication slot {slot} has confirmed up to {confirmed}, but the log only holds changes up to {log}: the changes in between are not in the log; restore the log dir, or drop the slot to start a new log")]
    SlotAhead {
        slot: String,
        confirmed: EndLsn,
        log: EndLsn,
    },
    #[error("slot {slot} is in use by another process (pid {pid}); stop the other consumer, or set [source] slot to another name")]
    SlotBusy { slot: String, pid: i32 },
    #[error(transparent)]
    Connect(#[from] crate::pg::ConnectError),
    #[error("catalog query failed: {0}")]
    Sql(String),
}

impl SourceError {
    pub fn exit_code(&self) -> ExitCode {
        use SourceError::*;
        match self {
            // Before capture has streamed once, a host that does not answer is a wrong url.
            Unreachable { .. }
            | AuthFailed { .. }
            | PasswordMissing { .. }
            | UnsupportedAuth(_) => ExitCode::BadInput,
            WalLevel { .. }
            | NoReplicationRole { .. }
            | MissingTable { .. }
            | NotATable { .. }
            | NoReplicaIdentity { .. }
            | NoSelect { .. } => ExitCode::BadInput,
            SlotPlugin { .. }
            | SlotDatabase { .. }
            | SlotPhysical { .. }
            | SlotAhead { .. }
            | SlotBusy { .. } => ExitCode::BadInput,
            Connect(e) => e.exit_code(),
            Server { .. } | Protocol(_) | Io(_) | Closed | Silent(_) | Sql(_) => ExitCode::Failure,
        }
    }
}

impl SourceError {
    /// Whether reconnecting may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SourceError::Unreachable { .. }
                | SourceError::Io(_)
                | SourceError::Closed
                | SourceError::Silent(_)
                | SourceError::SlotBusy { .. }
        ) || matches!(self, SourceError::Server { code, .. } if code.starts_with("08") || code.starts_with("57P") || code == "55006")
    }

    /// A failed SQL connection: the server's own errors classified as [`Self::from_sql`] does.
    pub(crate) fn from_connect(
        error: crate::pg::ConnectError,
        info: &crate::pg::ConnInfo,
    ) -> SourceError {
        match error {
            crate::pg::ConnectError::Postgres(e) => {
                SourceError::from_sql(e, &info.describe(), info.user())
            }
            crate::pg::ConnectError::TimedOut { target, .. } => SourceError::Unreachable {
                target,
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"),
            },
            other => SourceError::Connect(other),
        }
    }

    pub(crate) fn from_sql(error: tokio_postgres::Error, target: &str, user: &str) -> SourceError {
        if let Some(db) = error.as_db_error() {
            let code = db.code().code();
            if code == "28P01" || code == "28000" {
                return SourceError::AuthFailed {
                    user: user.to_string(),
                    target: target.to_string(),
                    code: code.to_string(),
                    message: db.message().to_string(),
                };
            }
            return SourceError::Server {
                code: code.to_string(),
                message: db.message().to_string(),
            };
        }
        let text = error.to_string();
        if text.contains("password missing") {
            return SourceError::PasswordMissing {
                target: target.to_string(),
            };
        }
        match std::error::Error::source(&error).and_then(|e| e.downcast_ref::<std::io::Error>()) {
            Some(io) => SourceError::Unreachable {
                target: target.to_string(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            },
            None if error.is_closed() => SourceError::Closed,
            None => SourceError::Sql(text),
        }
    }
}
