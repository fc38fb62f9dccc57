//! The feed's initial snapshot (`[kafka] snapshot = true`): every row of the
//! watched tables as an `op: "r"` event, before any change.
//!
//! Why nothing is missed or repeated at the seam: the rows are read under a
//! snapshot exported by a temporary slot at its consistent point C, which
//! sees exactly the transactions that commit before C. Capture's own slot
//! existed before C was taken, so the log holds every transaction that
//! commits after it; the feed goes on from C.
//!
//! The snapshot is one session's work. If the feed stops before it is
//! acknowledged, the next start takes a new one, and rows already sent appear
//! again (as with Debezium's initial snapshot).

use std::time::{Duration, Instant};

use super::{FeedError, KafkaSink};
use crate::base::position::EndLsn;
use crate::base::table::{quote_ident, quote_literal, TableName};
use crate::source::conn::ReplicationConnection;
use crate::source::pgoutput::{Column, Relation};
use crate::source::schema;
use crate::source::setup;
use crate::source::SourceError;

/// How long the snapshot waits for capture to create its slot.
const SLOT_WAIT: Duration = Duration::from_secs(60);
const FETCH_ROWS: usize = 5000;

/// Publishes every row of `tables`; returns the point C the log continues from.
pub(super) fn publish(
    source: &crate::pg::ConnInfo,
    capture_slot: &str,
    tables: &[TableName],
    sink: &mut KafkaSink,
) -> Result<EndLsn, FeedError> {
    let runtime = sink.runtime.clone();
    let sql = |e: tokio_postgres::Error| {
        FeedError::Source(SourceError::from_sql(e, &source.describe(), source.user()))
    };
    let (client, conn, point, relations) = runtime.block_on(async {
        let client = source
            .connect()
            .await
            .map_err(|e| FeedError::Source(SourceError::from_connect(e, source)))?;
        let started = Instant::now();
        while client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&capture_slot],
            )
            .await
            .map_err(sql)?
            .is_none()
        {
            if started.elapsed() > SLOT_WAIT {
                return Err(FeedError::Source(SourceError::Protocol(format!(
                    "capture's slot {capture_slot} did not appear within {SLOT_WAIT:?}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut conn = ReplicationConnection::connect(source).await?;
        let slot = format!("tidemark_feed_{}", std::process::id());
        let created =
            setup::create_slot(&mut conn, &slot, setup::SlotKind::TemporaryWithSnapshot).await?;
        let name = created.snapshot_name.ok_or_else(|| {
            SourceError::Protocol("the temporary slot exported no snapshot".into())
        })?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(&name)
            ))
            .await
            .map_err(sql)?;
        let schemas = schema::read(&client, tables).await.map_err(sql)?;
        Ok::<_, FeedError>((client, conn, created.consistent_point, relations(&schemas)))
    })?;
    tracing::info!(%point, tables = relations.len(), "the Kafka feed is publishing its initial snapshot");

    let mut index = 1;
    for relation in &relations {
        let columns: Vec<String> = relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let table = relation.table();
        runtime
            .block_on(client.batch_execute(&format!(
                "DECLARE tidemark_feed NO SCROLL CURSOR FOR SELECT {} FROM {}",
                columns.join(", "),
                table.quoted()
            )))
            .map_err(sql)?;
        loop {
            let fetched = runtime
                .block_on(client.simple_query(&format!("FETCH {FETCH_ROWS} FROM tidemark_feed")))
                .map_err(sql)?;
            let mut rows = 0;
            for message in fetched {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                    let values: Vec<Option<String>> = (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect();
                    let event = sink.encoder.snapshot_row(relation, &values, point, index);
                    sink.publish(event)?;
                    index += 1;
                    rows += 1;
                }
            }
            if rows == 0 {
                break;
            }
        }
        runtime
            .block_on(client.batch_execute("CLOSE tidemark_feed"))
            .map_err(sql)?;
    }
    runtime
        .block_on(client.batch_execute("COMMIT"))
        .map_err(sql)?;
    // Closing the replication connection drops the temporary slot.
    drop(conn);
    tracing::info!(%point, rows = index - 1, "the Kafka feed's initial snapshot is sent");
    Ok(point)
}

/// The snapshot's tables as relations, keyed by primary key.
fn relations(schemas: &schema::SchemaSet) -> Vec<Relation> {
    schemas
        .tables
        .iter()
        .map(|t| Relation {
            xid: None,
            oid: 0,
            namespace: t.schema.clone(),
            name: t.name.clone(),
            replica_identity: t.replica_identity.bytes().next().unwrap_or(b'd'),
            columns: t
                .columns
                .iter()
                .filter(|c| c.generated.is_none())
                .map(|c| Column {
                    flags: u8::from(t.primary_key.contains(&c.name)),
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    type_modifier: -1,
                })
                .collect(),
        })
        .collect()
}
