//! Files: the rule for secret files we read (only their owner may read
//! them, as PostgreSQL and ssh insist), and the one way we replace a small
//! state file. Files we write are private because `main` sets the umask to
//! 077, as the postmaster does.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Refuses a file that group or others may read or write, with the command that fixes it.
/// A root-owned file may be group-readable (0640), as libpq allows for keys.
pub fn refuse_if_shared(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {}: {e}; check the path", path.display()))?;
    let mode = metadata.mode() & 0o777;
    let allowed = if metadata.uid() == 0 { 0o037 } else { 0o077 };
    if mode & allowed != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:04o}); run chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Replaces the file at `path` with `contents` so that a crash leaves the old
/// or the new contents, never a mix: a temporary file, fsynced, renamed over
/// it, and the directory fsynced.
pub fn replace_durably(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn only_owner_only_files_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(refuse_if_shared(&path).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let message = refuse_if_shared(&path).unwrap_err();
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains("0644"), "{message}");
    }
}
