//! Sequences. Logical decoding carries no sequence values, so capture
//! samples the watched tables' owned sequences and, when one moved, writes
//! the values into the stream as a transactional logical message. It lands
//! in the log at its commit like any change, and restore to T sets each
//! sequence to the newest sample at or before T (or past the restored rows,
//! whichever is higher), so new rows never collide with restored ones.

use std::collections::BTreeMap;

use crate::base::table::TableName;

/// The prefix of a sample of sequence values.
pub const PREFIX: &str = "tidemark.sequences";

/// `schema.name` → `last_value`, for the sequences that have handed out a value.
pub type Sample = BTreeMap<String, i64>;

/// The owned (serial and identity) sequences of `tables`, and their last values.
pub async fn sample(
    client: &tokio_postgres::Client,
    tables: &[TableName],
) -> Result<Sample, tokio_postgres::Error> {
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let rows = client
        .query(
            "SELECT ps.schemaname::text, ps.sequencename::text, ps.last_value
             FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_namespace n ON n.oid = s.relnamespace
             JOIN pg_sequences ps ON ps.schemaname = n.nspname AND ps.sequencename = s.relname
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.deptype IN ('a', 'i')
               AND d.refobjid = ANY (SELECT to_regclass(t) FROM unnest($1::text[]) t)
               AND ps.last_value IS NOT NULL",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (schema, name): (String, String) = (r.get(0), r.get(1));
            (format!("{schema}.{name}"), r.get::<_, i64>(2))
        })
        .collect())
}

/// Writes `sample` into the stream, in a transaction of its own.
pub async fn emit(
    client: &tokio_postgres::Client,
    sample: &Sample,
) -> Result<(), tokio_postgres::Error> {
    let content = serde_json::to_string(sample).unwrap_or_default();
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&PREFIX, &content],
        )
        .await
        .map(|_| ())
}

/// The prefix of a heartbeat: a transaction of its own, committed while the
/// source is quiet, whose commit time moves the restore window on.
pub const HEARTBEAT_PREFIX: &str = "tidemark.heartbeat";

/// Commits a heartbeat. Every transaction that committed on a watched table
/// before it is in the stream before it, so restoring to any time up to its
/// commit time is exact.
pub async fn heartbeat(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, '')",
            &[&HEARTBEAT_PREFIX],
        )
        .await
        .map(|_| ())
}

pub fn parse(content: &[u8]) -> Result<Sample, String> {
    serde_json::from_slice(content)
        .map_err(|e| format!("a sequence sample that does not parse: {e}"))
}
