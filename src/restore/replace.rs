//! Restoring into live tables (`--data-only`), all or nothing.
//!
//! The tables are first rebuilt in a scratch database on the target's server,
//! where a failure or a kill harms nothing the target holds. Then one
//! transaction on the target saves the rows about to be replaced into
//! `tidemark_safety` (the pre-restore safety copy), deletes them, and copies
//! the rebuilt rows in. PostgreSQL commits that transaction whole or not at
//! all, so at any instant each target table is as it was or fully restored.
//!
//! `--where` is treated as hostile: it must be one boolean expression over
//! each table's columns. The server parses it before anything is touched,
//! over the extended protocol, whose Parse message takes exactly one
//! statement; every statement that carries it later goes the same way.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::command::{Request, RestoreError};
use crate::archive::store::ObjectStore;
use crate::base::table::{quote_ident, TableName};
use crate::replay::load;
use crate::replay::progress::Phases;
use crate::replay::rebuild::{self, Plan, Scope};
use crate::source::schema::SchemaSet;

/// Where the rows a restore replaced were saved, and how many.
#[derive(Debug, Serialize)]
pub struct SafetyCopy {
    pub table: TableName,
    /// `tidemark_safety.<name>` on the target.
    pub copy: String,
    pub rows: u64,
    /// The SQL that puts the saved rows back.
    pub put_back: String,
}

/// The schema the safety copies go in.
const SAFETY_SCHEMA: &str = "tidemark_safety";

/// Checks `predicate` on the target before anything is touched. Tables a
/// full restore would create are created for the check inside a transaction
/// that is rolled back, so the check sees their real columns and leaves nothing.
pub async fn check_predicate(
    client: &tokio_postgres::Client,
    schema: &SchemaSet,
    tables: &[TableName],
    predicate: &str,
    tables_exist: bool,
) -> Result<(), RestoreError> {
    client.batch_execute("BEGIN").await?;
    let checked = async {
        if !tables_exist {
            for sql in schema.only(tables).pre_data_sql() {
                client.batch_execute(&sql).await?;
            }
        }
        for table in tables {
            let sql = format!("SELECT 1 FROM {} WHERE ({predicate})", table.quoted());
            client
                .prepare(&sql)
                .await
                .map_err(|e| bad_predicate(predicate, table, &e))?;
        }
        Ok(())
    }
    .await;
    client.batch_execute("ROLLBACK").await?;
    checked
}

pub fn bad_predicate(
    predicate: &str,
    table: &TableName,
    e: &tokio_postgres::Error,
) -> RestoreError {
    RestoreError::BadPredicate {
        predicate: predicate.to_string(),
        table: table.to_string(),
        message: db_message(e),
    }
}

pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

/// Replaces the target's rows that satisfy `predicate` (`true`: all of them)
/// with the restored rows that do, in one transaction, after a safety copy.
#[allow(clippy::too_many_arguments)]
pub async fn replace_rows(
    store: &dyn ObjectStore,
    plan: &Plan,
    schema: &SchemaSet,
    tables: &[TableName],
    predicate: &str,
    request: &Request,
    target: &tokio_postgres::Client,
    work_dir: &Path,
    phases: &Phases,
    out: &mut impl Write,
) -> Result<(rebuild::Rebuilt, Vec<SafetyCopy>), RestoreError> {
    // Held until this session ends: it marks the scratch database as in use.
    let pid = std::process::id();
    target
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({SCRATCH_LOCK_CLASS}, {})",
            pid as i32
        ))
        .await?;
    drop_abandoned_scratch(target).await?;
    let scratch = format!("{SCRATCH_PREFIX}{pid}");
    target
        .batch_execute(&format!("CREATE DATABASE {scratch}"))
        .await
        .map_err(|e| RestoreError::NoScratchDatabase(db_message(&e)))?;
    let scratch_target = request
        .target
        .as_ref()
        .ok_or(RestoreError::NoTarget)?
        .with_dbname(&scratch);
    let replaced = async {
        let clients = load::connect_all(&scratch_target, request.jobs).await?;
        let scope = Scope {
            tables: Some(tables.to_vec()),
            data_only: false,
            allow_inexact: request.allow_inexact,
            fold: true,
        };
        let rebuilt =
            rebuild::rebuild_scoped(store, plan, &clients, work_dir, &scope, phases).await?;
        let stamp = format!("{}_{pid}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
        target.batch_execute("BEGIN").await?;
        target
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {SAFETY_SCHEMA}"))
            .await?;
        let mut copies = Vec::new();
        for table in tables {
            let columns: Vec<String> = schema
                .table(table)
                .map(|t| {
                    t.columns
                        .iter()
                        .filter(|c| c.generated.is_none())
                        .map(|c| quote_ident(&c.name))
                        .collect()
                })
                .unwrap_or_default();
            let columns = columns.join(", ");
            let copy = format!(
                "{SAFETY_SCHEMA}.{}",
                quote_ident(&safety_name(table, &stamp))
            );
            // The predicate passed `check_predicate`; each statement carrying it is prepared alone.
            let saved = target
                .execute(
                    &format!(
                        "CREATE TABLE {copy} AS SELECT {columns} FROM {} WHERE ({predicate})",
                        table.quoted()
                    ),
                    &[],
                )
                .await?;
            target
                .execute(
                    &format!("DELETE FROM {} WHERE ({predicate})", table.quoted()),
                    &[],
                )
                .await?;
            load::copy_across(
                &clients[0],
                &format!(
                    "COPY (SELECT {columns} FROM {} WHERE ({predicate})) TO STDOUT (FORMAT binary)",
                    table.quoted()
                ),
                target,
                &format!("COPY {} ({columns}) FROM STDIN (FORMAT binary)", table.quoted()),
            )
            .await?;
            let put_back = format!(
                "BEGIN; DELETE FROM {table_sql} WHERE ({predicate}); INSERT INTO {table_sql} ({columns}) SELECT * FROM {copy}; COMMIT;",
                table_sql = table.quoted()
            );
            copies.push(SafetyCopy {
                table: table.clone(),
                copy,
                rows: saved,
                put_back,
            });
        }
        target.batch_execute("COMMIT").await?;
        Ok::<_, RestoreError>((rebuilt, copies))
    }
    .await;
    if replaced.is_err() {
        let _ = target.batch_execute("ROLLBACK").await;
    }
    target
        .batch_execute(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
        .await?;
    target
        .batch_execute(&format!(
            "SELECT pg_advisory_unlock({SCRATCH_LOCK_CLASS}, {})",
            pid as i32
        ))
        .await?;
    let (rebuilt, copies) = replaced?;
    for copy in &copies {
        writeln!(
            out,
            "Saved the {} rows it replaced in {} as {}; to put them back: {}",
            copy.rows, copy.table, copy.copy, copy.put_back
        )?;
    }
    Ok((rebuilt, copies))
}

const SCRATCH_PREFIX: &str = "tidemark_scratch_";
/// The advisory lock `(class, pid)` a restore holds while its scratch database exists.
const SCRATCH_LOCK_CLASS: i32 = 0x746d;

/// Drops the scratch databases of restores that were killed: a running
/// restore holds the advisory lock named by its pid, and a killed one's
/// session, and with it the lock, is gone.
async fn drop_abandoned_scratch(target: &tokio_postgres::Client) -> Result<(), RestoreError> {
    let abandoned = target
        .query(
            &format!(
                "SELECT datname::text FROM pg_database d WHERE starts_with(datname, '{SCRATCH_PREFIX}') \
                 AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
                   AND l.classid = {SCRATCH_LOCK_CLASS} AND l.objsubid = 2 \
                   AND l.objid::text = substr(d.datname, {}))",
                SCRATCH_PREFIX.len() + 1
            ),
            &[],
        )
        .await?;
    for row in abandoned {
        let name: String = row.get(0);
        tracing::warn!(database = %name, "dropping the scratch database of a restore that did not finish");
        target
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&name)
            ))
            .await?;
    }
    Ok(())
}

/// `<schema>_<table>_<UTC time>_<pid>`, short enough for PostgreSQL's 63-byte identifiers.
fn safety_name(table: &TableName, stamp: &str) -> String {
    let name: String = format!("{}_{}", table.schema, table.name)
        .chars()
        .take(38)
        .collect();
    format!("{name}_{stamp}")
}
