//! What tests check of the files tidemark writes.

use std::path::Path;

/// Every file below `root`, as paths relative to it, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Whether a `verify --json` report names `key` among its problems.
pub fn report_names(report: &serde_json::Value, key: &str) -> bool {
    report["problems"]
        .as_array()
        .is_some_and(|problems| problems.iter().any(|p| p["key"] == key))
}

/// Asserts that everything under `dir` is private: files 0600 or less, directories 0700.
pub fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut checked = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        if metadata.is_dir() {
            assert_eq!(
                mode,
                0o700,
                "{} is a directory with mode {mode:o}",
                path.display()
            );
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 0, "nothing under {}", dir.display());
}
