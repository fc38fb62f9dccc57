//! Checks the source before capture, and creates the publication and slot it needs.

use std::collections::BTreeSet;

use super::conn::ReplicationConnection;
use super::error::SourceError;
use crate::base::position::EndLsn;
use crate::base::table::{quote_ident, TableName};

/// What the source looks like once checked and provisioned.
pub struct Prepared {
    pub server_version_num: i32,
    /// Whether schema changes are noted in the stream (`source::ddl`): the role may create event triggers.
    pub notes_ddl: bool,
    /// `None` when the slot does not exist yet.
    pub slot: Option<SlotState>,
    pub wal_sender_timeout_ms: u64,
    /// Without schema notes: each watched table's columns now (name, type oid),
    /// by table oid, as a Relation message lists them; empty with notes.
    pub columns: std::collections::HashMap<u32, Vec<(String, u32)>>,
}

#[derive(Clone, Copy, Debug)]
pub struct SlotState {
    pub confirmed_flush: EndLsn,
}

pub struct SourceSpec<'a> {
    pub config: &'a crate::pg::ConnInfo,
    pub tables: &'a [TableName],
    pub publication: &'a str,
    pub slot: &'a str,
}

/// Checks wal_level, the role, each table and the slot; creates or updates the publication.
pub async fn prepare(spec: &SourceSpec<'_>) -> Result<Prepared, SourceError> {
    let target = spec.config.describe();
    let user = spec.config.user().to_string();
    let sql_err = |e: tokio_postgres::Error| SourceError::from_sql(e, &target, &user);
    let client = spec
        .config
        .connect()
        .await
        .map_err(|e| SourceError::from_connect(e, spec.config))?;

    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('server_version_num')::int,
                    current_user::text, current_database()::text,
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_setting('wal_sender_timeout'),
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .map_err(sql_err)?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        return Err(SourceError::WalLevel { actual: wal_level });
    }
    let server_version_num: i32 = row.get(1);
    let role: String = row.get(2);
    let database: String = row.get(3);
    if !row.get::<_, bool>(4) {
        return Err(SourceError::NoReplicationRole { role });
    }
    let wal_sender_timeout_ms = parse_duration_ms(&row.get::<_, String>(5));

    for table in spec.tables {
        check_table(&client, table, &role, &database)
            .await
            .map_err(|e| match e {
                CheckError::Sql(e) => sql_err(e),
                CheckError::Source(e) => e,
            })?;
    }
    ensure_publication(&client, spec.publication, spec.tables)
        .await
        .map_err(sql_err)?;
    // Event triggers need a superuser (PostgreSQL 15).
    let notes_ddl = row.get::<_, bool>(6);
    let mut columns = std::collections::HashMap::new();
    if notes_ddl {
        client
            // One transaction under a lock: two captures starting at once on
            // one database would otherwise race on CREATE … IF NOT EXISTS.
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({}); {}{} COMMIT;",
                super::ddl::INSTALL_LOCK,
                super::ddl::INSTALL_SQL,
                super::ddl::remember_sql(spec.tables)
            ))
            .await
            .map_err(sql_err)?;
    } else {
        // Generated columns are not in Relation messages.
        for row in client
            .query(
                "SELECT a.attrelid::oid, a.attname::text, a.atttypid::oid FROM pg_attribute a
                 WHERE a.attrelid = ANY($1::text[]::regclass[]) AND a.attnum > 0
                   AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attrelid, a.attnum",
                &[&spec.tables.iter().map(|t| t.quoted()).collect::<Vec<_>>()],
            )
            .await
            .map_err(sql_err)?
        {
            columns
                .entry(row.get::<_, u32>(0))
                .or_insert_with(Vec::new)
                .push((row.get(1), row.get(2)));
        }
    }

    let slot = client
        .query_opt(
            "SELECT plugin, slot_type, database, confirmed_flush_lsn::text
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&spec.slot],
        )
        .await
        .map_err(sql_err)?;
    let slot = match slot {
        None => None,
        Some(row) => {
            let slot_type: String = row.get(1);
            if slot_type != "logical" {
                return Err(SourceError::SlotPhysical {
                    slot: spec.slot.to_string(),
                });
            }
            let plugin: String = row.get(0);
            if plugin != "pgoutput" {
                return Err(SourceError::SlotPlugin {
                    slot: spec.slot.to_string(),
                    plugin,
                });
            }
            let slot_database: String = row.get(2);
            if slot_database != database {
                return Err(SourceError::SlotDatabase {
                    slot: spec.slot.to_string(),
                    database: slot_database,
                    expected: database,
                });
            }
            let confirmed: Option<String> = row.get(3);
            let confirmed_flush = confirmed.and_then(|t| t.parse().ok()).unwrap_or_default();
            Some(SlotState { confirmed_flush })
        }
    };
    Ok(Prepared {
        server_version_num,
        notes_ddl,
        slot,
        wal_sender_timeout_ms,
        columns,
    })
}

enum CheckError {
    Sql(tokio_postgres::Error),
    Source(SourceError),
}

impl From<tokio_postgres::Error> for CheckError {
    fn from(e: tokio_postgres::Error) -> Self {
        CheckError::Sql(e)
    }
}

async fn check_table(
    client: &tokio_postgres::Client,
    table: &TableName,
    role: &str,
    database: &str,
) -> Result<(), CheckError> {
    let row = client
        .query_opt(
            "SELECT c.relkind::text, c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident),
                    has_table_privilege(c.oid, 'SELECT')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await?;
    let Some(row) = row else {
        return Err(CheckError::Source(SourceError::MissingTable {
            table: table.to_string(),
            database: database.to_string(),
        }));
    };
    let relkind: String = row.get(0);
    if relkind != "r" && relkind != "p" {
        return Err(CheckError::Source(SourceError::NotATable {
            table: table.to_string(),
            relkind,
        }));
    }
    let replident: String = row.get(1);
    let usable = match replident.as_str() {
        "f" => true,
        "d" => row.get(2),
        "i" => row.get(3),
        _ => false,
    };
    if !usable {
        return Err(CheckError::Source(SourceError::NoReplicaIdentity {
            table: table.to_string(),
        }));
    }
    if !row.get::<_, bool>(4) {
        return Err(CheckError::Source(SourceError::NoSelect {
            role: role.to_string(),
            table: table.to_string(),
        }));
    }
    Ok(())
}

/// Makes the publication cover exactly `tables`, for every kind of change.
async fn ensure_publication(
    client: &tokio_postgres::Client,
    publication: &str,
    tables: &[TableName],
) -> Result<(), tokio_postgres::Error> {
    let name = quote_ident(publication);
    let wanted: BTreeSet<&TableName> = tables.iter().collect();
    let list = |set: &mut dyn Iterator<Item = &TableName>| {
        set.map(TableName::quoted).collect::<Vec<_>>().join(", ")
    };
    let existing = client
        .query_opt(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    let Some(existing) = existing else {
        tracing::info!(publication, "creating publication");
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {name} FOR TABLE {}",
                list(&mut wanted.iter().copied())
            ))
            .await?;
        return Ok(());
    };
    if !existing.get::<_, bool>(0) {
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate')"
            ))
            .await?;
    }
    let current: BTreeSet<TableName> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            name: r.get(1),
        })
        .collect();
    let missing: Vec<&TableName> = wanted
        .iter()
        .copied()
        .filter(|t| !current.contains(*t))
        .collect();
    let extra: Vec<&TableName> = current.iter().filter(|t| !wanted.contains(t)).collect();
    if !missing.is_empty() {
        tracing::info!(publication, tables = %list(&mut missing.iter().copied()), "adding tables to publication");
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {name} ADD TABLE {}",
                list(&mut missing.iter().copied())
            ))
            .await?;
    }
    if !extra.is_empty() {
        tracing::info!(publication, tables = %list(&mut extra.iter().copied()), "removing tables from publication");
        client
            .batch_execute(&format!(
                "ALTER PUBLICATION {name} DROP TABLE {}",
                list(&mut extra.iter().copied())
            ))
            .await?;
    }
    Ok(())
}

/// A slot just created, and the snapshot it exported (valid until the
/// replication connection runs its next command).
pub struct CreatedSlot {
    pub consistent_point: EndLsn,
    pub snapshot_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// Capture's own slot.
    Permanent,
    /// A permanent slot whose exported snapshot matches its start exactly.
    PermanentWithSnapshot,
    /// Dropped when its connection closes; for a base snapshot taken while capture runs.
    TemporaryWithSnapshot,
}

/// Creates a logical pgoutput slot, optionally exporting a snapshot consistent with it.
pub async fn create_slot(
    conn: &mut ReplicationConnection,
    slot: &str,
    kind: SlotKind,
) -> Result<CreatedSlot, SourceError> {
    let options = match kind {
        SlotKind::Permanent => "LOGICAL pgoutput NOEXPORT_SNAPSHOT",
        SlotKind::PermanentWithSnapshot => "LOGICAL pgoutput EXPORT_SNAPSHOT",
        SlotKind::TemporaryWithSnapshot => "TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
    };
    let rows = conn
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} {options}",
            quote_ident(slot)
        ))
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| SourceError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
    let consistent_point = row
        .get(1)
        .cloned()
        .flatten()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            SourceError::Protocol("CREATE_REPLICATION_SLOT returned no consistent point".into())
        })?;
    tracing::info!(slot, %consistent_point, "created replication slot");
    Ok(CreatedSlot {
        consistent_point,
        snapshot_name: row.get(2).cloned().flatten(),
    })
}

/// Parses a duration GUC as PostgreSQL prints it ("60s", "500ms", "1min", "0").
fn parse_duration_ms(text: &str) -> u64 {
    let digits: String = text.chars().take_while(|c| c.is_ascii_digit()).collect();
    let value: u64 = digits.parse().unwrap_or(0);
    match &text[digits.len()..] {
        "ms" => value,
        "s" | "" => value * 1000,
        "min" => value * 60_000,
        "h" => value * 3_600_000,
        "d" => value * 86_400_000,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_postgres_prints_them() {
        assert_eq!(parse_duration_ms("60s"), 60_000);
        assert_eq!(parse_duration_ms("500ms"), 500);
        assert_eq!(parse_duration_ms("2min"), 120_000);
        assert_eq!(parse_duration_ms("0"), 0);
    }
}
