//! Schema changes, carried in the stream itself.
//!
//! pgoutput says nothing of DDL: a Relation message shows a table's new
//! columns, but not what existing rows now read in an added column (its
//! "missing value"), nor that a column was renamed rather than dropped and
//! added, nor that a rewrite (`ALTER TYPE … USING`, a volatile default)
//! changed values the stream never carries. So capture installs event
//! triggers that write a transactional logical message in the DDL's own
//! transaction: it lands in the log at the DDL's exact position, and replay
//! applies it there.
//!
//! The trigger keeps its own record of each table's columns by attnum
//! (`tidemark.columns`), updated in the same transaction, so each note holds
//! the columns before and after: a rename keeps its attnum, and so its values.

use serde::{Deserialize, Serialize};

use crate::base::table::TableName;

/// The prefix of a note on a table's columns.
pub const NOTE_PREFIX: &str = "tidemark.ddl";
/// The prefix of a note that a table was rewritten: values changed that the stream does not carry.
pub const REWRITE_PREFIX: &str = "tidemark.rewrite";

/// One column as a note gives it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct NoteColumn {
    pub attnum: i16,
    pub name: String,
    /// As format_type prints it.
    #[serde(rename = "type")]
    pub type_sql: String,
    /// The value rows that existed before the column was added read in it
    /// (`attmissingval`), in its text form; `None` reads NULL.
    #[serde(default)]
    pub missing: Option<String>,
    /// The column's default expression (`pg_get_expr`); older notes lack it.
    #[serde(default)]
    pub default: Option<String>,
    /// `None` in older notes.
    #[serde(default)]
    pub not_null: Option<bool>,
}

/// A table's name, as a note gives it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct NoteName {
    pub schema: String,
    pub name: String,
}

/// What a table is beyond its columns, as the DDL left it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Definition {
    #[serde(default)]
    pub primary_key: Vec<String>,
    #[serde(default)]
    pub constraints: Vec<crate::source::schema::NamedSql>,
    #[serde(default)]
    pub indexes: Vec<crate::source::schema::NamedSql>,
}

/// A table after a DDL: its columns, and before it when the trigger knew
/// them; its old name if it was renamed; its keys, constraints and indexes;
/// or that it was dropped.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Note {
    pub schema: String,
    pub name: String,
    #[serde(default)]
    pub before: Option<Vec<NoteColumn>>,
    #[serde(default)]
    pub after: Vec<NoteColumn>,
    /// The statement's command tag (`ALTER TABLE`, `CREATE INDEX`, …); older notes lack it.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub renamed_from: Option<NoteName>,
    #[serde(default)]
    pub dropped: bool,
    /// `None` in older notes, and for a dropped table.
    #[serde(default)]
    pub definition: Option<Definition>,
}

impl Note {
    pub fn table(&self) -> TableName {
        TableName::new(&self.schema, &self.name)
    }

    /// The table's name before this DDL.
    pub fn table_before(&self) -> TableName {
        match &self.renamed_from {
            Some(old) => TableName::new(&old.schema, &old.name),
            None => self.table(),
        }
    }

    pub fn parse(content: &[u8]) -> Result<Note, String> {
        serde_json::from_slice(content)
            .map_err(|e| format!("a schema note that does not parse: {e}"))
    }
}

/// What a DDL did to one column, matched by attnum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnChange {
    Added(NoteColumn),
    Dropped(String),
    Renamed { from: String, to: String },
    Retyped { name: String, type_sql: String },
}

impl Note {
    /// The changes from `before` to `after`; `None` without a `before` to match against.
    pub fn changes(&self) -> Option<Vec<ColumnChange>> {
        let before = self.before.as_ref()?;
        let mut changes = Vec::new();
        for old in before {
            match self.after.iter().find(|c| c.attnum == old.attnum) {
                None => changes.push(ColumnChange::Dropped(old.name.clone())),
                Some(new) => {
                    if new.name != old.name {
                        changes.push(ColumnChange::Renamed {
                            from: old.name.clone(),
                            to: new.name.clone(),
                        });
                    }
                    if new.type_sql != old.type_sql {
                        changes.push(ColumnChange::Retyped {
                            name: new.name.clone(),
                            type_sql: new.type_sql.clone(),
                        });
                    }
                }
            }
        }
        for new in &self.after {
            if !before.iter().any(|c| c.attnum == new.attnum) {
                changes.push(ColumnChange::Added(new.clone()));
            }
        }
        Some(changes)
    }
}

/// The prefix of a message asking capture to read tables again (`tidemark snapshot --table`).
pub const REREAD_PREFIX: &str = "tidemark.reread";
/// The prefix of a message that tables left `[source] tables`: capture
/// writes it at start, and from there on a restore leaves them out.
pub const UNWATCHED_PREFIX: &str = "tidemark.unwatched";

/// What a re-read request or an unwatched message holds.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Tables {
    pub tables: Vec<TableName>,
}

/// A note that a table was rewritten.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Rewrite {
    pub schema: String,
    pub name: String,
}

/// The advisory lock key the install runs under ('tdmk' as a number).
pub const INSTALL_LOCK: i64 = 0x7464_6d6b;

/// SQL that installs (or refreshes) the triggers; needs a superuser, as event triggers do.
///
/// After every DDL (`ddl_command_end`, and `sql_drop` for drops), the
/// trigger compares each watched table with what it last recorded and writes
/// a note for each that changed: columns, name, keys, constraints, indexes,
/// or the table gone. Looking at the watched tables themselves, rather than at
/// what the command names, catches a `CREATE INDEX` (which names the index),
/// a `DROP INDEX` and a rename alike.
pub const INSTALL_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS tidemark;
CREATE TABLE IF NOT EXISTS tidemark.columns (relid oid PRIMARY KEY, columns jsonb NOT NULL);
ALTER TABLE tidemark.columns ADD COLUMN IF NOT EXISTS definition jsonb;
CREATE OR REPLACE FUNCTION tidemark.columns_of(rel oid) RETURNS jsonb LANGUAGE sql STABLE AS $f$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'attnum', a.attnum, 'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
           'missing', CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END,
           'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
           'not_null', a.attnotnull)
         ORDER BY a.attnum), '[]'::jsonb)
  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
$f$;
CREATE OR REPLACE FUNCTION tidemark.definition_of(rel oid) RETURNS jsonb LANGUAGE sql STABLE AS $f$
  SELECT jsonb_build_object(
    'schema', n.nspname, 'name', t.relname,
    'primary_key', (SELECT coalesce(jsonb_agg(a.attname ORDER BY k.n), '[]'::jsonb)
                    FROM pg_index i
                    JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    WHERE i.indrelid = rel AND i.indisprimary),
    'constraints', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', conname, 'sql', pg_get_constraintdef(oid))
                                              ORDER BY contype = 'f', conname), '[]'::jsonb)
                    FROM pg_constraint WHERE conrelid = rel AND contype IN ('p', 'u', 'c', 'f', 'x')),
    'indexes', (SELECT coalesce(jsonb_agg(jsonb_build_object('name', c.relname, 'sql', pg_get_indexdef(i.indexrelid))
                                          ORDER BY c.relname), '[]'::jsonb)
                FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = rel
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)))
  FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace WHERE t.oid = rel
$f$;
CREATE OR REPLACE FUNCTION tidemark.note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE r record; after jsonb; def jsonb;
BEGIN
  FOR r IN SELECT relid, columns, definition FROM tidemark.columns LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = r.relid) THEN
      IF r.definition IS NOT NULL THEN
        PERFORM pg_logical_emit_message(true, 'tidemark.ddl', jsonb_build_object(
          'schema', r.definition->'schema', 'name', r.definition->'name', 'dropped', true,
          'command', TG_TAG, 'before', r.columns)::text);
      END IF;
      DELETE FROM tidemark.columns WHERE relid = r.relid;
      CONTINUE;
    END IF;
    after := tidemark.columns_of(r.relid);
    def := tidemark.definition_of(r.relid);
    IF r.columns IS DISTINCT FROM after OR r.definition IS DISTINCT FROM def THEN
      PERFORM pg_logical_emit_message(true, 'tidemark.ddl', jsonb_build_object(
        'schema', def->'schema', 'name', def->'name', 'command', TG_TAG,
        'before', r.columns, 'after', after,
        'renamed_from', CASE WHEN r.definition->'schema' IS DISTINCT FROM def->'schema'
                               OR r.definition->'name' IS DISTINCT FROM def->'name'
                             THEN r.definition - 'primary_key' - 'constraints' - 'indexes' END,
        'definition', def - 'schema' - 'name')::text);
      UPDATE tidemark.columns SET columns = after, definition = def WHERE relid = r.relid;
    END IF;
  END LOOP;
END $f$;
CREATE OR REPLACE FUNCTION tidemark.note_rewrite() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_logical_emit_message(true, 'tidemark.rewrite', jsonb_build_object(
    'schema', n.nspname, 'name', t.relname)::text)
  FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
  WHERE t.oid = pg_event_trigger_table_rewrite_oid();
END $f$;
DO $d$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'tidemark_ddl') THEN
    CREATE EVENT TRIGGER tidemark_ddl ON ddl_command_end EXECUTE FUNCTION tidemark.note_ddl();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'tidemark_drop') THEN
    CREATE EVENT TRIGGER tidemark_drop ON sql_drop EXECUTE FUNCTION tidemark.note_ddl();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'tidemark_rewrite') THEN
    CREATE EVENT TRIGGER tidemark_rewrite ON table_rewrite EXECUTE FUNCTION tidemark.note_rewrite();
  END IF;
END $d$;
"#;

/// Records the watched tables as they are now, so the first DDL's note has a `before`.
pub fn remember_sql(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(|t| {
            let regclass = crate::base::table::quote_literal(&t.quoted());
            format!(
                "INSERT INTO tidemark.columns VALUES ({regclass}::regclass, tidemark.columns_of({regclass}::regclass), tidemark.definition_of({regclass}::regclass)) \
                 ON CONFLICT (relid) DO UPDATE SET columns = excluded.columns, definition = excluded.definition;"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(attnum: i16, name: &str, type_sql: &str, missing: Option<&str>) -> NoteColumn {
        NoteColumn {
            attnum,
            name: name.into(),
            type_sql: type_sql.into(),
            missing: missing.map(Into::into),
            default: None,
            not_null: Some(false),
        }
    }

    #[test]
    fn columns_are_matched_by_attnum() {
        let note = Note {
            schema: "public".into(),
            name: "t".into(),
            before: Some(vec![
                col(1, "id", "integer", None),
                col(2, "title", "text", None),
                col(3, "v", "integer", None),
            ]),
            after: vec![
                col(1, "id", "integer", None),
                col(2, "heading", "text", None),
                col(3, "v", "bigint", None),
                col(5, "tier", "text", Some("basic")),
            ],
            command: Some("ALTER TABLE".into()),
            renamed_from: None,
            dropped: false,
            definition: None,
        };
        assert_eq!(
            note.changes().unwrap(),
            vec![
                ColumnChange::Renamed {
                    from: "title".into(),
                    to: "heading".into()
                },
                ColumnChange::Retyped {
                    name: "v".into(),
                    type_sql: "bigint".into()
                },
                ColumnChange::Added(col(5, "tier", "text", Some("basic"))),
            ]
        );
        let dropped = Note {
            after: vec![col(1, "id", "integer", None)],
            ..note.clone()
        };
        assert_eq!(dropped.changes().unwrap().len(), 2);
        assert!(Note {
            before: None,
            ..note
        }
        .changes()
        .is_none());
    }

    #[test]
    fn notes_parse_as_the_trigger_writes_them() {
        let text = br#"{"schema": "public", "name": "accounts", "before": null,
            "after": [{"attnum": 1, "name": "id", "type": "integer", "missing": null},
                      {"attnum": 2, "name": "tier", "type": "text", "missing": "basic"}]}"#;
        let note = Note::parse(text).unwrap();
        assert_eq!(note.table(), TableName::new("public", "accounts"));
        assert_eq!(note.after[1].missing.as_deref(), Some("basic"));
        assert!(Note::parse(b"{").is_err());
    }

    #[test]
    fn renames_drops_and_definitions_parse() {
        let text = br#"{"schema": "app", "name": "documents", "command": "ALTER TABLE", "before": [], "after": [],
            "renamed_from": {"schema": "public", "name": "docs"},
            "definition": {"primary_key": ["id"], "indexes": [],
                           "constraints": [{"name": "docs_pkey", "sql": "PRIMARY KEY (id)"}]}}"#;
        let note = Note::parse(text).unwrap();
        assert_eq!(note.table_before(), TableName::new("public", "docs"));
        assert_eq!(note.table(), TableName::new("app", "documents"));
        assert_eq!(note.command.as_deref(), Some("ALTER TABLE"));
        assert_eq!(note.definition.unwrap().constraints[0].name, "docs_pkey");
        let dropped =
            Note::parse(br#"{"schema": "public", "name": "t", "dropped": true, "before": []}"#)
                .unwrap();
        assert!(dropped.dropped);
        assert_eq!(dropped.table_before(), dropped.table());
    }
}
