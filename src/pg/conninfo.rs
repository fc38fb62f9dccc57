//! Reading a connection string the way libpq does, as a pure function.
//!
//! tokio-postgres reads both forms (`postgres://…` and `key=value …`) but knows
//! neither libpq's TLS words beyond three `sslmode`s nor `passfile`, and reads
//! no environment. So this takes those words out of the string, fills in the
//! `PG*` environment where the string is silent, and hands the rest to
//! tokio-postgres's own parser.

use std::path::PathBuf;

use zeroize::Zeroizing;

use super::tls::{FileSetting, RootCert, SslMode, TlsSettings};

/// The words libpq knows that tokio-postgres does not.
const LIBPQ_ONLY: [&str; 6] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "passfile",
];

/// A connection string split into what tokio-postgres reads and what we do.
pub struct Parsed {
    /// The string without the libpq-only words, in the same form as given.
    pub rest: String,
    pub tls: TlsSettings,
    pub passfile: Option<FileSetting>,
}

/// Why a connection string cannot be read. Never quotes the string: it may hold a password.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct ConnInfoError(pub String);

/// Splits `text`, taking the environment from `env` (the real one in use, a map in tests).
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, ConnInfoError> {
    let (rest, mut words) = if is_url(text) {
        split_url(text)
    } else {
        split_keywords(text)?
    };
    let mut take = |key: &str, var: Option<&str>| {
        words
            .iter()
            .position(|(k, _)| k == key)
            .map(|i| words.swap_remove(i).1)
            .or_else(|| var.and_then(env))
            .filter(|v| !v.is_empty())
    };
    let mode = match take("sslmode", Some("PGSSLMODE")) {
        Some(text) => SslMode::parse(&text)?,
        None => SslMode::Prefer,
    };
    let home = env("HOME").map(PathBuf::from);
    let in_home = |file: &str| home.as_ref().map(|h| h.join(".postgresql").join(file));
    let root_cert = match take("sslrootcert", Some("PGSSLROOTCERT")) {
        Some(v) if v == "system" => RootCert::System,
        Some(v) => RootCert::Given(PathBuf::from(v)),
        None => RootCert::Default(in_home("root.crt")),
    };
    let cert = take("sslcert", Some("PGSSLCERT"))
        .map(|v| FileSetting {
            path: PathBuf::from(v),
            given: true,
        })
        .or_else(|| in_home("postgresql.crt").map(|path| FileSetting { path, given: false }));
    let key = take("sslkey", Some("PGSSLKEY"))
        .map(PathBuf::from)
        .or_else(|| in_home("postgresql.key"));
    let key_password = take("sslpassword", None).map(Zeroizing::new);
    let passfile = take("passfile", Some("PGPASSFILE"))
        .map(|v| FileSetting {
            path: PathBuf::from(v),
            given: true,
        })
        .or_else(|| {
            home.as_ref().map(|h| FileSetting {
                path: h.join(".pgpass"),
                given: false,
            })
        });
    Ok(Parsed {
        rest,
        tls: TlsSettings {
            mode,
            root_cert,
            cert,
            key,
            key_password,
        },
        passfile,
    })
}

pub fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Takes the libpq-only words out of a URL's query.
fn split_url(text: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = text.split_once('?') else {
        return (text.to_string(), Vec::new());
    };
    let mut kept = url::form_urlencoded::Serializer::new(String::new());
    let mut taken = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if LIBPQ_ONLY.contains(&key.as_ref()) {
            taken.push((key.into_owned(), value.into_owned()));
        } else {
            kept.append_pair(&key, &value);
        }
    }
    let kept = kept.finish();
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{kept}")
    };
    (rest, taken)
}

/// Takes the libpq-only words out of a `key=value` string and writes the rest back quoted.
fn split_keywords(text: &str) -> Result<(String, Vec<(String, String)>), ConnInfoError> {
    let mut rest = String::new();
    let mut taken = Vec::new();
    for (key, value) in keywords(text)? {
        if LIBPQ_ONLY.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            rest.push_str(&format!("{key}={} ", quote_value(&value)));
        }
    }
    Ok((rest.trim_end().to_string(), taken))
}

/// A value in libpq's `key=value` form: single-quoted, `\` and `'` escaped.
pub fn quote_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// libpq's `key = value` grammar: values bare or in single quotes, `\` escapes the next character.
fn keywords(text: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut chars = text.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError(
                "the connection string has a word without \"=value\"; write key=value pairs, or a postgres:// URL"
                    .into(),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError(format!(
                            "the value of {key} in the connection string has no closing quote; end it with '"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Parsed, ConnInfoError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(text, &|name| env.get(name).cloned())
    }

    #[test]
    fn url_query_words_are_taken_and_the_rest_kept() {
        let parsed = parse_with(
            "postgres://u:p@h:5433/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
            &[],
        )
        .unwrap();
        assert_eq!(parsed.rest, "postgres://u:p@h:5433/db?application_name=x");
        assert_eq!(parsed.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            parsed.tls.root_cert,
            RootCert::Given(PathBuf::from("/tmp/ca.pem"))
        );
    }

    #[test]
    fn keyword_form_handles_quotes_and_escapes() {
        let parsed = parse_with(
            r"host=h password='it\'s a secret' sslmode = require sslkey=/k\ ey",
            &[],
        )
        .unwrap();
        assert_eq!(parsed.rest, r"host='h' password='it\'s a secret'");
        assert_eq!(parsed.tls.mode, SslMode::Require);
        assert_eq!(parsed.tls.key, Some(PathBuf::from("/k ey")));
        let config: tokio_postgres::Config = parsed.rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's a secret"[..]));
    }

    #[test]
    fn the_string_wins_over_the_environment_which_wins_over_defaults() {
        let env = [("PGSSLMODE", "verify-ca"), ("HOME", "/home/me")];
        let parsed = parse_with("postgres://h/db?sslmode=disable", &env).unwrap();
        assert_eq!(parsed.tls.mode, SslMode::Disable);
        let parsed = parse_with("postgres://h/db", &env).unwrap();
        assert_eq!(parsed.tls.mode, SslMode::VerifyCa);
        assert_eq!(
            parsed.tls.root_cert,
            RootCert::Default(Some(PathBuf::from("/home/me/.postgresql/root.crt")))
        );
        assert_eq!(
            parsed.passfile,
            Some(FileSetting {
                path: PathBuf::from("/home/me/.pgpass"),
                given: false
            })
        );
        assert_eq!(parse_with("host=h", &[]).unwrap().tls.mode, SslMode::Prefer);
    }

    #[test]
    fn errors_never_quote_the_string() {
        for bad in [
            "host=h password=hunter2 sslmode=sometimes",
            "host=h password='hunter2",
            "host=h hunter2",
        ] {
            let message = parse_with(bad, &[]).err().unwrap().0;
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
