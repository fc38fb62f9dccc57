//! A table's identity, parsed once, the way PostgreSQL reads a qualified name.
//!
//! Why this is the only key for a table: a `schema.name` string is ambiguous
//! (`"a.b".c` and `a."b.c"` print the same when joined with a dot), so every
//! layer that keys tables by a joined string can confuse two tables. A
//! `TableName` keeps the two identifiers apart; it prints them quoted where
//! PostgreSQL needs quotes, so the printed form parses back to the same table,
//! and it derives object-store keys through an escaping that cannot climb out
//! of a prefix or make two tables share a key.

use std::fmt;
use std::str::FromStr;

/// A table: schema and name, each an exact identifier (case kept, no quotes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{text}' is not a table name: {problem}; write schema.name, with double quotes around a part that has capitals, dots or spaces, e.g. \"Billing\".\"my table\"")]
pub struct ParseTableNameError {
    text: String,
    problem: &'static str,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Both identifiers quoted, for SQL this program builds.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// This table's part of an object-store key: `<schema>.<name>`, each
    /// identifier keeping `[a-z0-9_]` and percent-encoding every other byte
    /// (`proto/manifest.md`). It never holds `/` or `..`, the single `.`
    /// separates the two parts unambiguously, and the encoding is one-to-one,
    /// so two tables never share a key, even on a case-insensitive file system.
    pub fn key_part(&self) -> String {
        format!("{}.{}", escape_key(&self.schema), escape_key(&self.name))
    }
}

fn escape_key(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len());
    for byte in ident.bytes() {
        match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'_' => out.push(char::from(byte)),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

impl FromStr for TableName {
    type Err = ParseTableNameError;

    /// `schema.name`, or `name` in schema `public`. Unquoted identifiers fold
    /// to lower case; `"..."` keeps its text exactly, with `""` for a quote.
    fn from_str(text: &str) -> Result<TableName, ParseTableNameError> {
        let error = |problem| ParseTableNameError {
            text: text.to_string(),
            problem,
        };
        let mut rest = text.trim_start();
        let mut parts = Vec::new();
        loop {
            let (ident, after) = identifier(rest).map_err(error)?;
            parts.push(ident);
            rest = after.trim_start();
            match rest.strip_prefix('.') {
                Some(after_dot) => rest = after_dot.trim_start(),
                None if rest.is_empty() => break,
                None => return Err(error("unexpected text after an identifier")),
            }
        }
        match <[String; 2]>::try_from(parts) {
            Ok([schema, name]) => Ok(TableName { schema, name }),
            Err(parts) => match <[String; 1]>::try_from(parts) {
                Ok([name]) => Ok(TableName::new("public", name)),
                Err(_) => Err(error("it has more than two dot-separated parts")),
            },
        }
    }
}

/// One identifier at the start of `text`, and what follows it.
fn identifier(text: &str) -> Result<(String, &str), &'static str> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut ident = String::new();
        let mut chars = quoted.char_indices();
        while let Some((at, ch)) = chars.next() {
            if ch != '"' {
                ident.push(ch);
                continue;
            }
            if quoted[at + 1..].starts_with('"') {
                ident.push('"');
                chars.next();
                continue;
            }
            if ident.is_empty() {
                return Err("a quoted identifier is empty");
            }
            return Ok((ident, &quoted[at + 1..]));
        }
        return Err("a quoted identifier has no closing quote");
    }
    let end = text
        .char_indices()
        .find(|&(at, ch)| !(is_ident_start(ch) || (at > 0 && (ch.is_ascii_digit() || ch == '$'))))
        .map_or(text.len(), |(at, _)| at);
    if end == 0 {
        return Err(match text.chars().next() {
            None => "an identifier is missing",
            Some(_) => "an identifier starts with a character that needs double quotes",
        });
    }
    Ok((text[..end].to_ascii_lowercase(), &text[end..]))
}

/// PostgreSQL's unquoted identifier start: a letter, `_`, or any non-ASCII character.
fn is_ident_start(ch: char) -> bool {
    ch.is_ascii_alphabetic() || ch == '_' || !ch.is_ascii()
}

/// Prints as PostgreSQL reads it back: each part quoted unless it is lower-case ASCII.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

fn display_ident(ident: &str) -> std::borrow::Cow<'_, str> {
    let plain = ident.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        ident.into()
    } else {
        quote_ident(ident).into()
    }
}

super::text::serde_as_text!(TableName);

/// An identifier quoted for SQL.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A string literal for SQL.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A column list for SQL: each name quoted, comma-separated.
pub fn column_list<S: AsRef<str>>(columns: &[S]) -> String {
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c.as_ref())).collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> TableName {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn reads_names_as_postgres_does() {
        assert_eq!(parse("users"), TableName::new("public", "users"));
        assert_eq!(parse("Billing.Users"), TableName::new("billing", "users"));
        assert_eq!(
            parse("\"Sch.ema\".\"t x\""),
            TableName::new("Sch.ema", "t x")
        );
        assert_eq!(parse("a.\"b.c\""), TableName::new("a", "b.c"));
        assert_eq!(parse("\"a.b\".c"), TableName::new("a.b", "c"));
        assert_eq!(parse(" s . \"we\"\"ird\" "), TableName::new("s", "we\"ird"));
        assert_eq!(parse("zähler.t$1"), TableName::new("zähler", "t$1"));
    }

    #[test]
    fn refuses_what_postgres_would() {
        for text in [
            "", "a.", ".a", "a.b.c", "\"\".t", "\"open", "a b", "1abc", "a;drop", "t/x",
        ] {
            let error = text.parse::<TableName>().unwrap_err().to_string();
            assert!(error.contains("is not a table name"), "{text}: {error}");
        }
    }

    #[test]
    fn printed_form_reads_back_as_the_same_table() {
        for (schema, name, printed) in [
            ("public", "payments", "public.payments"),
            ("Sch.ema", "t x", "\"Sch.ema\".\"t x\""),
            ("a", "b.c", "a.\"b.c\""),
            ("s", "we\"ird", "s.\"we\"\"ird\""),
            ("s", "Ünï", "s.\"Ünï\""),
            ("s", "a,b", "s.\"a,b\""),
        ] {
            let table = TableName::new(schema, name);
            assert_eq!(table.to_string(), printed);
            assert_eq!(parse(printed), table);
            let json = serde_json::to_string(&table).unwrap();
            assert_eq!(serde_json::from_str::<TableName>(&json).unwrap(), table);
        }
    }

    #[test]
    fn key_parts_never_climb_or_collide() {
        let tables = [
            TableName::new("a.b", "c"),
            TableName::new("a", "b.c"),
            TableName::new("t", "../../x"),
            TableName::new("..", ".."),
            TableName::new("T", "x"),
            TableName::new("t", "x"),
            TableName::new("%2E", "x"),
            TableName::new(".", "x"),
            TableName::new("s", "a/b"),
        ];
        let mut seen = std::collections::HashSet::new();
        for table in &tables {
            let part = table.key_part();
            assert!(!part.contains('/') && !part.contains(".."), "{part}");
            assert_eq!(part.matches('.').count(), 1, "{part}");
            assert!(seen.insert(part.clone()), "{table} collides at {part}");
        }
        // The examples in proto/manifest.md.
        for (table, part) in [
            (TableName::new("public", "payments"), "public.payments"),
            (TableName::new("Sch.ema", "t x"), "%53ch%2Eema.t%20x"),
            (
                TableName::new("public", "../../x"),
                "public.%2E%2E%2F%2E%2E%2Fx",
            ),
        ] {
            assert_eq!(table.key_part(), part);
        }
    }
}
