//! What in the stream asks for a re-read (`archive::reread`): a rewrite
//! note, a request from `tidemark snapshot --table`, and, where capture could
//! not install the event triggers, a relation whose columns changed.
//!
//! Why asking is safe: requests wait until the stream is between
//! transactions, so the transaction that asked has finished on the server
//! before its re-read begins, and the re-read sees what it changed. A request
//! from a transaction that then aborted costs an unneeded re-read, never a
//! wrong one. Each request is also written to `rereads.pending` as its
//! message arrives, before the batch holding it goes to the log, so no crash
//! can confirm the message to the server and lose the request.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;

use crate::archive::reread::Pending;
use crate::base::table::TableName;
use crate::source::ddl::{Rewrite, Tables, REREAD_PREFIX, REWRITE_PREFIX};
use crate::source::pgoutput::{self, Message, Peek, PeekKind};

/// Columns by name and type, as a Relation message gives them.
type Columns = Vec<(String, u32)>;

pub(super) struct RereadWatch {
    asked: BTreeSet<TableName>,
    /// Asked since the last write of the pending file.
    unsaved: BTreeSet<TableName>,
    /// Without schema notes, each relation's columns as last seen; `None` with them.
    relations: Option<HashMap<u32, Columns>>,
    pending: Pending,
}

impl RereadWatch {
    /// Without notes, `columns` (the tables' columns at the start, by oid)
    /// are what the first Relation message of each is compared with.
    pub(super) fn new(notes_ddl: bool, columns: HashMap<u32, Columns>, pending: Pending) -> Self {
        RereadWatch {
            asked: BTreeSet::new(),
            unsaved: BTreeSet::new(),
            relations: (!notes_ddl).then_some(columns),
            pending,
        }
    }

    /// Looks at one message of the stream.
    pub(super) fn observe(&mut self, peek: &Peek, payload: &Bytes, in_block: bool) {
        if !matches!(peek.kind, PeekKind::Message | PeekKind::Relation) {
            return;
        }
        match pgoutput::decode(payload, in_block) {
            Ok(Message::LogicalMessage(message)) => self.message(&message.prefix, &message.content),
            Ok(Message::Relation(relation)) => {
                let Some(relations) = &mut self.relations else {
                    return;
                };
                let columns: Columns = relation
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_oid))
                    .collect();
                if let Some(before) = relations.insert(relation.oid, columns.clone()) {
                    if before != columns {
                        self.ask(relation.table());
                    }
                }
            }
            _ => {}
        }
    }

    fn message(&mut self, prefix: &str, content: &[u8]) {
        match prefix {
            REWRITE_PREFIX => {
                if let Ok(rewrite) = serde_json::from_slice::<Rewrite>(content) {
                    self.ask(TableName::new(rewrite.schema, rewrite.name));
                }
            }
            REREAD_PREFIX => {
                if let Ok(request) = serde_json::from_slice::<Tables>(content) {
                    request.tables.into_iter().for_each(|t| self.ask(t));
                }
            }
            _ => {}
        }
    }

    fn ask(&mut self, table: TableName) {
        self.unsaved.insert(table.clone());
        self.asked.insert(table);
    }

    /// Writes what was asked since last time to the pending file; call
    /// before the records that asked go to the log.
    pub(super) fn save(&mut self) -> Result<(), crate::log::LogError> {
        if self.unsaved.is_empty() {
            return Ok(());
        }
        self.pending
            .add(&self.unsaved)
            .map_err(|source| crate::log::LogError::Io {
                path: self.pending.path().to_path_buf(),
                source,
            })?;
        self.unsaved.clear();
        Ok(())
    }

    /// The tables asked for, once the stream is between transactions.
    pub(super) fn due(&mut self, between_transactions: bool) -> BTreeSet<TableName> {
        if !between_transactions {
            return BTreeSet::new();
        }
        std::mem::take(&mut self.asked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pgoutput::{build, peek};

    fn seen(watch: &mut RereadWatch, payload: Bytes) {
        let looked = peek(&payload, false).unwrap();
        watch.observe(&looked, &payload, false);
    }

    #[test]
    fn rewrites_and_requests_are_due_between_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = RereadWatch::new(true, HashMap::new(), Pending::in_dir(dir.path()));
        seen(
            &mut watch,
            build::message(REWRITE_PREFIX, br#"{"schema": "public", "name": "docs"}"#),
        );
        seen(
            &mut watch,
            build::message(REREAD_PREFIX, br#"{"tables": ["app.ledger"]}"#),
        );
        seen(&mut watch, build::message("tidemark.sequences", b"{}"));
        assert!(
            watch.due(false).is_empty(),
            "not while a transaction is open"
        );
        let due: Vec<String> = watch.due(true).iter().map(|t| t.to_string()).collect();
        assert_eq!(due, vec!["app.ledger", "public.docs"]);
        assert!(watch.due(true).is_empty());
    }

    #[test]
    fn without_notes_a_relation_whose_columns_changed_is_asked_for() {
        let relation = |columns: &[(&str, u32)]| {
            let mut relation = build::text_relation(&[], b'd');
            relation.columns = columns
                .iter()
                .map(|(name, type_oid)| pgoutput::Column {
                    flags: 0,
                    name: name.to_string(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect();
            pgoutput::encode(&Message::Relation(relation))
        };
        let dir = tempfile::tempdir().unwrap();
        let pending = || Pending::in_dir(dir.path());
        let mut watch = RereadWatch::new(false, HashMap::new(), pending());
        seen(&mut watch, relation(&[("id", 23), ("v", 23)]));
        seen(&mut watch, relation(&[("id", 23), ("v", 23)]));
        assert!(
            watch.due(true).is_empty(),
            "the first sight and a repeat ask nothing"
        );
        seen(&mut watch, relation(&[("id", 23), ("v", 20)]));
        assert_eq!(watch.due(true).len(), 1, "a type change");
        let seeded = HashMap::from([(1, vec![("id".to_string(), 23)])]);
        let mut watch = RereadWatch::new(false, seeded, pending());
        seen(&mut watch, relation(&[("id", 23), ("v", 23)]));
        assert_eq!(
            watch.due(true).len(),
            1,
            "a change before the first sight, seen against the start"
        );
        let mut noted = RereadWatch::new(true, HashMap::new(), pending());
        seen(&mut noted, relation(&[("id", 23)]));
        seen(&mut noted, relation(&[("id", 23), ("v", 23)]));
        assert!(noted.due(true).is_empty(), "schema notes carry it");
    }
}
