//! The quickstart runs the whole story and leaves an archive that checks out.

mod harness;

#[test]
fn quickstart_restores_the_moment_before_the_disaster() {
    let dir = tempfile::tempdir().unwrap();
    let out = harness::tidemark(&["quickstart", "--dir", dir.path().to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout
            .matches("matches the source at the restore point")
            .count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("Done: every table was restored exactly"));
    // It ends with status, taken while capture still protects the source.
    let report = stdout
        .split("6. And protection goes on; tidemark status says so:")
        .nth(1)
        .unwrap_or_default();
    assert!(report.contains("tidemark: OK"), "{stdout}");
    assert!(report.contains("capture is streaming"), "{stdout}");

    // The log, the archive and the config it wrote are private.
    for made in ["log", "archive", "tidemark.toml"] {
        harness::assert_private(&dir.path().join(made));
    }
    let config = dir.path().join("tidemark.toml");
    let cfg = config.to_str().unwrap();
    let list = harness::tidemark(&["list", "--config", cfg, "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(list["window"]["earliest"]["lsn"].is_string(), "{list}");
    let verify = harness::tidemark(&["verify", "--config", cfg, "--deep"], &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
