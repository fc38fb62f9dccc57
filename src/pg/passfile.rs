//! libpq's password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`): lines of
//! `host:port:database:user:password`, `*` matching anything, `\` escaping
//! the next character. The first matching line wins.

use std::path::Path;

use zeroize::Zeroizing;

/// What a connection looks for in the file.
pub struct Wanted<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password of the first line that matches, if any.
pub fn find(text: &str, wanted: &Wanted<'_>) -> Option<Zeroizing<String>> {
    let port = wanted.port.to_string();
    let want = [wanted.host, port.as_str(), wanted.database, wanted.user];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = split(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = want
                .iter()
                .zip(&fields)
                .all(|(want, field)| field.as_str() == "*" || field == want);
            // The password is the rest of the line: it may hold unescaped colons.
            matches.then(|| Zeroizing::new(fields[4..].join(":")))
        })
}

fn split(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => field.extend(chars.next()),
            ':' => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Reads `path` for a password. A file named outright must exist and be private;
/// libpq's default one is skipped with a warning when it is not (as libpq does).
pub fn lookup(
    path: &Path,
    named: bool,
    wanted: &Wanted<'_>,
) -> Result<Option<Zeroizing<String>>, String> {
    if !named && !path.exists() {
        return Ok(None);
    }
    if let Err(problem) = crate::base::files::refuse_if_shared(path) {
        if named {
            return Err(format!("password file: {problem}"));
        }
        tracing::warn!("ignoring the password file: {problem}");
        return Ok(None);
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read password file {}: {e}; check passfile or PGPASSFILE",
            path.display()
        )
    })?);
    Ok(find(&text, wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: Wanted<'static> = Wanted {
        host: "db.example",
        port: 5432,
        database: "shop",
        user: "tidemark",
    };

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    other:5432:shop:tidemark:wrong\n\
                    db.example:*:shop:tidemark:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(find(text, &WANTED).unwrap().as_str(), "pa:ss\\word");
        assert_eq!(
            find("*:*:*:*:fall:back", &WANTED).unwrap().as_str(),
            "fall:back"
        );
        assert!(find("db.example:5433:shop:tidemark:x", &WANTED).is_none());
        assert!(find("short:line", &WANTED).is_none());
    }

    #[test]
    fn a_named_file_must_be_private_and_present() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        assert!(lookup(&path, true, &WANTED).is_err());
        assert!(lookup(&path, false, &WANTED).unwrap().is_none());
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(lookup(&path, true, &WANTED)
            .unwrap_err()
            .contains("chmod 600"));
        assert!(lookup(&path, false, &WANTED).unwrap().is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup(&path, true, &WANTED).unwrap().unwrap().as_str(),
            "secret"
        );
    }
}
