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
}

/// A table's columns after a DDL, and before it when the trigger knew them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Note {
    pub schema: String,
    pub name: String,
    #[serde(default)]
    pub before: Option<Vec<NoteColumn>>,
    #[serde(default)]
    pub after: Vec<NoteColumn>,
}

impl Note {
    pub fn table(&self) -> TableName {
        TableName::new(&self.schema, &self.name)
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

/// A note that a table was rewritten.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Rewrite {
    pub schema: String,
    pub name: String,
}

/// SQL that installs (or refreshes) the triggers; needs a superuser, as event triggers do.
pub const INSTALL_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS tidemark;
CREATE TABLE IF NOT EXISTS tidemark.columns (relid oid PRIMARY KEY, columns jsonb NOT NULL);
CREATE OR REPLACE FUNCTION tidemark.columns_of(rel oid) RETURNS jsonb LANGUAGE sql STABLE AS $f$
  SELECT coalesce(jsonb_agg(jsonb_build_object(
           'attnum', a.attnum, 'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
           'missing', CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END)
         ORDER BY a.attnum), '[]'::jsonb)
  FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
$f$;
CREATE OR REPLACE FUNCTION tidemark.note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
DECLARE r record; before jsonb; after jsonb;
BEGIN
  FOR r IN SELECT DISTINCT c.objid, n.nspname, t.relname
           FROM pg_event_trigger_ddl_commands() c
           JOIN pg_class t ON t.oid = c.objid AND t.relkind IN ('r', 'p')
           JOIN pg_namespace n ON n.oid = t.relnamespace
           WHERE c.classid = 'pg_class'::regclass LOOP
    SELECT columns INTO before FROM tidemark.columns WHERE relid = r.objid;
    after := tidemark.columns_of(r.objid);
    IF before IS DISTINCT FROM after THEN
      PERFORM pg_logical_emit_message(true, 'tidemark.ddl', jsonb_build_object(
        'schema', r.nspname, 'name', r.relname, 'before', before, 'after', after)::text);
      INSERT INTO tidemark.columns VALUES (r.objid, after)
        ON CONFLICT (relid) DO UPDATE SET columns = excluded.columns;
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
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'tidemark_rewrite') THEN
    CREATE EVENT TRIGGER tidemark_rewrite ON table_rewrite EXECUTE FUNCTION tidemark.note_rewrite();
  END IF;
END $d$;
"#;

/// Records the watched tables' columns as they are now, so the first DDL's note has a `before`.
pub fn remember_sql(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(|t| {
            let regclass = crate::base::table::quote_literal(&t.quoted());
            format!(
                "INSERT INTO tidemark.columns VALUES ({regclass}::regclass, tidemark.columns_of({regclass}::regclass)) \
                 ON CONFLICT (relid) DO UPDATE SET columns = excluded.columns;"
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
}
