//! Table schemas as restore needs them, read from the catalog under the
//! snapshot's exported snapshot, so they match the copied rows exactly.

use serde::{Deserialize, Serialize};

use crate::base::table::{quote_ident, quote_literal, TableName};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSchema {
    pub schema: String,
    pub name: String,
    /// In attribute order, dropped columns left out.
    pub columns: Vec<ColumnDef>,
    /// pg_class.relreplident: d, f, i or n.
    pub replica_identity: String,
    pub primary_key: Vec<String>,
    /// Primary key, unique, check, foreign key and exclusion constraints.
    pub constraints: Vec<NamedSql>,
    /// Indexes that do not back a constraint.
    pub indexes: Vec<NamedSql>,
    pub row_security: bool,
    pub force_row_security: bool,
    pub policies: Vec<Policy>,
    /// Sequences owned by a column (serial-style), created before the table.
    pub sequences: Vec<OwnedSequence>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnedSequence {
    pub schema: String,
    pub name: String,
    pub column: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub name: String,
    /// As format_type prints it, e.g. `numeric(12,2)` or `public.mood`.
    pub type_sql: String,
    pub type_oid: u32,
    pub default: Option<String>,
    pub not_null: bool,
    /// `a` (ALWAYS) or `d` (BY DEFAULT) for identity columns.
    pub identity: Option<String>,
    /// The expression of a stored generated column.
    pub generated: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedSql {
    pub name: String,
    pub sql: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    /// r, a, w, d or * (ALL).
    pub command: String,
    pub permissive: bool,
    pub roles: Vec<String>,
    pub using: Option<String>,
    pub check: Option<String>,
}

/// A user-defined enum type a watched table uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnumType {
    pub schema: String,
    pub name: String,
    pub labels: Vec<String>,
}

/// Everything a snapshot's schema object holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSet {
    pub server_version_num: i32,
    pub enums: Vec<EnumType>,
    pub tables: Vec<TableSchema>,
}

/// Reads the schema of `tables` through `client` (inside the snapshot's transaction).
pub async fn read(
    client: &tokio_postgres::Client,
    tables: &[TableName],
) -> Result<SchemaSet, tokio_postgres::Error> {
    let server_version_num: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let mut out = Vec::new();
    for table in tables {
        out.push(read_table(client, table).await?);
    }
    let type_oids: Vec<u32> = out
        .iter()
        .flat_map(|t| t.columns.iter().map(|c| c.type_oid))
        .collect();
    let enums = client
        .query(
            "SELECT n.nspname::text, t.typname::text,
                    ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typtype = 'e' AND t.oid = ANY($1) ORDER BY 1, 2",
            &[&type_oids],
        )
        .await?
        .iter()
        .map(|r| EnumType {
            schema: r.get(0),
            name: r.get(1),
            labels: r.get(2),
        })
        .collect();
    Ok(SchemaSet {
        server_version_num,
        enums,
        tables: out,
    })
}

async fn read_table(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<TableSchema, tokio_postgres::Error> {
    let regclass = table.quoted();
    let rel = client
        .query_one(
            "SELECT c.oid, c.relreplident::text, c.relrowsecurity, c.relforcerowsecurity
             FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&regclass],
        )
        .await?;
    let oid: u32 = rel.get(0);
    let columns = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid,
                    pg_get_expr(d.adbin, d.adrelid), a.attnotnull,
                    NULLIF(a.attidentity, '')::text, NULLIF(a.attgenerated, '')::text
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| {
            let generated: Option<String> = r.get(6);
            let expression: Option<String> = r.get(3);
            ColumnDef {
                name: r.get(0),
                type_sql: r.get(1),
                type_oid: r.get(2),
                default: if generated.is_some() { None } else { expression.clone() },
                not_null: r.get(4),
                identity: r.get(5),
                generated: generated.and(expression),
            }
        })
        .collect();
    let primary_key = client
        .query(
            "SELECT a.attname::text FROM pg_index i
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let constraints = client
        .query(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = $1 AND contype IN ('p', 'u', 'c', 'f', 'x')
             ORDER BY contype = 'f', conname",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| NamedSql {
            name: r.get(0),
            sql: r.get(1),
        })
        .collect();
    let indexes = client
        .query(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = $1
               AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
             ORDER BY 1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| NamedSql { name: r.get(0), sql: r.get(1) })
        .collect();
    let policies = client
        .query(
            "SELECT p.polname::text, p.polcmd::text, p.polpermissive,
                    ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END FROM unnest(p.polroles) r),
                    pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
             FROM pg_policy p WHERE p.polrelid = $1 ORDER BY 1",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| Policy {
            name: r.get(0),
            command: r.get(1),
            permissive: r.get(2),
            roles: r.get(3),
            using: r.get(4),
            check: r.get(5),
        })
        .collect();
    let sequences = client
        .query(
            "SELECT n.nspname::text, s.relname::text, a.attname::text
             FROM pg_depend d
             JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
             JOIN pg_namespace n ON n.oid = s.relnamespace
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE d.refobjid = $1 AND d.classid = 'pg_class'::regclass AND d.deptype = 'a'
             ORDER BY 2",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| OwnedSequence {
            schema: r.get(0),
            name: r.get(1),
            column: r.get(2),
        })
        .collect();
    Ok(TableSchema {
        schema: table.schema.clone(),
        name: table.name.clone(),
        columns,
        replica_identity: rel.get(1),
        primary_key,
        constraints,
        indexes,
        row_security: rel.get(2),
        force_row_security: rel.get(3),
        policies,
        sequences,
    })
}

impl SchemaSet {
    /// SQL that creates the enums, schemas, owned sequences and tables (columns only).
    pub fn pre_data_sql(&self) -> Vec<String> {
        let mut sql = Vec::new();
        let mut schemas: Vec<&str> = self.enums.iter().map(|e| e.schema.as_str()).collect();
        schemas.extend(self.tables.iter().map(|t| t.schema.as_str()));
        schemas.sort();
        schemas.dedup();
        for schema in schemas {
            sql.push(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(schema)
            ));
        }
        for e in &self.enums {
            let labels: Vec<String> = e.labels.iter().map(|l| quote_literal(l)).collect();
            sql.push(format!(
                "CREATE TYPE {}.{} AS ENUM ({})",
                quote_ident(&e.schema),
                quote_ident(&e.name),
                labels.join(", ")
            ));
        }
        for table in &self.tables {
            for seq in &table.sequences {
                sql.push(format!(
                    "CREATE SEQUENCE IF NOT EXISTS {}.{}",
                    quote_ident(&seq.schema),
                    quote_ident(&seq.name)
                ));
            }
            sql.push(table.create_table_sql());
            for seq in &table.sequences {
                sql.push(format!(
                    "ALTER SEQUENCE {}.{} OWNED BY {}.{}",
                    quote_ident(&seq.schema),
                    quote_ident(&seq.name),
                    table.table_name().quoted(),
                    quote_ident(&seq.column)
                ));
            }
        }
        sql
    }

    /// The primary keys: added right after the bulk load, so changes find rows by index.
    pub fn primary_key_sql(&self) -> Vec<String> {
        self.tables
            .iter()
            .flat_map(|table| {
                table
                    .constraints
                    .iter()
                    .filter(|c| c.sql.starts_with("PRIMARY KEY"))
                    .map(move |c| {
                        format!(
                            "ALTER TABLE {} ADD CONSTRAINT {} {}",
                            table.table_name().quoted(),
                            quote_ident(&c.name),
                            c.sql
                        )
                    })
            })
            .collect()
    }

    /// SQL for what is best built after the changes are in: constraints other
    /// than primary keys (foreign keys last), indexes, the replica identity,
    /// row-level security and policies.
    pub fn post_data_sql(&self) -> Vec<String> {
        let mut sql = Vec::new();
        let mut foreign = Vec::new();
        for table in &self.tables {
            let name = table.table_name().quoted();
            for c in table
                .constraints
                .iter()
                .filter(|c| !c.sql.starts_with("PRIMARY KEY"))
            {
                let statement = format!(
                    "ALTER TABLE {name} ADD CONSTRAINT {} {}",
                    quote_ident(&c.name),
                    c.sql
                );
                if c.sql.starts_with("FOREIGN KEY") {
                    foreign.push(statement);
                } else {
                    sql.push(statement);
                }
            }
            sql.extend(table.indexes.iter().map(|i| i.sql.clone()));
            if table.replica_identity == "f" {
                sql.push(format!("ALTER TABLE {name} REPLICA IDENTITY FULL"));
            }
            if table.row_security {
                sql.push(format!("ALTER TABLE {name} ENABLE ROW LEVEL SECURITY"));
            }
            if table.force_row_security {
                sql.push(format!("ALTER TABLE {name} FORCE ROW LEVEL SECURITY"));
            }
            for p in &table.policies {
                let command = match p.command.as_str() {
                    "r" => "SELECT",
                    "a" => "INSERT",
                    "w" => "UPDATE",
                    "d" => "DELETE",
                    _ => "ALL",
                };
                let kind = if p.permissive {
                    "PERMISSIVE"
                } else {
                    "RESTRICTIVE"
                };
                let roles: Vec<String> = p
                    .roles
                    .iter()
                    .map(|r| {
                        if r == "public" {
                            r.clone()
                        } else {
                            quote_ident(r)
                        }
                    })
                    .collect();
                let mut statement = format!(
                    "CREATE POLICY {} ON {name} AS {kind} FOR {command} TO {}",
                    quote_ident(&p.name),
                    roles.join(", ")
                );
                if let Some(using) = &p.using {
                    statement += &format!(" USING ({using})");
                }
                if let Some(check) = &p.check {
                    statement += &format!(" WITH CHECK ({check})");
                }
                sql.push(statement);
            }
        }
        sql.extend(foreign);
        sql
    }
}

impl SchemaSet {
    /// Moves each owned sequence to its sampled value at the target, or past
    /// the largest value its column holds, whichever is higher.
    pub fn sequence_values_sql(&self, sampled: &crate::source::sequences::Sample) -> Vec<String> {
        self.tables
            .iter()
            .flat_map(|t| {
                t.sequences.iter().map(move |seq| {
                    let sample = sampled.get(&format!("{}.{}", seq.schema, seq.name));
                    let table = t.table_name().quoted();
                    let column_max = format!(
                        "coalesce((SELECT max({}) FROM {table}), 1)",
                        quote_ident(&seq.column)
                    );
                    let (value, called) = match sample {
                        Some(v) => (format!("greatest({column_max}, {v})"), "true".to_string()),
                        None => (column_max, format!("(SELECT count(*) > 0 FROM {table})")),
                    };
                    format!(
                        "SELECT setval({}, {value}, {called})",
                        quote_literal(&format!(
                            "{}.{}",
                            quote_ident(&seq.schema),
                            quote_ident(&seq.name)
                        ))
                    )
                })
            })
            .collect()
    }

    /// Only the named tables (every enum stays: an unused type is harmless).
    pub fn only(&self, tables: &[TableName]) -> SchemaSet {
        SchemaSet {
            server_version_num: self.server_version_num,
            enums: self.enums.clone(),
            tables: self
                .tables
                .iter()
                .filter(|t| tables.contains(&t.table_name()))
                .cloned()
                .collect(),
        }
    }
}

impl TableSchema {
    pub fn table_name(&self) -> TableName {
        TableName::new(&self.schema, &self.name)
    }

    /// `CREATE TABLE` with columns, types, defaults and NOT NULL; constraints,
    /// indexes and policies come later (after the data is loaded).
    pub fn create_table_sql(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut sql = format!("{} {}", quote_ident(&c.name), c.type_sql);
                if let Some(expr) = &c.generated {
                    sql += &format!(" GENERATED ALWAYS AS ({expr}) STORED");
                }
                match c.identity.as_deref() {
                    Some("a") => sql += " GENERATED ALWAYS AS IDENTITY",
                    Some("d") => sql += " GENERATED BY DEFAULT AS IDENTITY",
                    _ => {}
                }
                if let Some(default) = &c.default {
                    sql += &format!(" DEFAULT {default}");
                }
                if c.not_null {
                    sql += " NOT NULL";
                }
                sql
            })
            .collect();
        format!(
            "CREATE TABLE {} ({})",
            self.table_name().quoted(),
            columns.join(", ")
        )
    }
}

/// A table of `columns` (name, type oid) keyed by `primary_key`, with
/// nothing else, for tests.
#[cfg(test)]
pub fn test_table(name: &str, columns: &[(&str, u32)], primary_key: &[&str]) -> TableSchema {
    TableSchema {
        schema: "public".into(),
        name: name.into(),
        columns: columns
            .iter()
            .map(|&(name, type_oid)| ColumnDef {
                name: name.into(),
                type_sql: String::new(),
                type_oid,
                default: None,
                not_null: false,
                identity: None,
                generated: None,
            })
            .collect(),
        replica_identity: "d".into(),
        primary_key: primary_key.iter().map(|k| k.to_string()).collect(),
        constraints: vec![],
        indexes: vec![],
        row_security: false,
        force_row_security: false,
        policies: vec![],
        sequences: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_table_keeps_order_types_defaults_and_not_null() {
        let mut table = test_table("pay ments", &[("id", 20), ("cents", 1700)], &["id"]);
        let [id, cents] = &mut table.columns[..] else {
            unreachable!("two columns")
        };
        id.type_sql = "bigint".into();
        id.default = Some("nextval('s'::regclass)".into());
        id.not_null = true;
        cents.type_sql = "numeric(12,2)".into();
        cents.generated = Some("(id * 2)".into());
        assert_eq!(
            table.create_table_sql(),
            "CREATE TABLE \"public\".\"pay ments\" (\"id\" bigint DEFAULT nextval('s'::regclass) NOT NULL, \"cents\" numeric(12,2) GENERATED ALWAYS AS ((id * 2)) STORED)"
        );
    }
}
