//! An encrypted archive: nothing stored is cleartext, nothing is read without
//! its key, and a planted, moved or foreign object is named and refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{harness, workload, Fixture, RICH_SCHEMA, ROWS_MD5, SCHEMA};
use tidemark::archive::manifest;
use tidemark::archive::store;

const KEY_HEX: &str = "8f1e6a2b9c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccdde";
const OTHER_KEY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A key file only its owner may read, as tidemark insists.
fn private_key_file(dir: &Path, name: &str, hex: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn key_id(hex: &str) -> String {
    tidemark::archive::crypt::Key::from_hex(hex).unwrap().id()
}

fn keyring(hex: &str) -> Option<Arc<tidemark::archive::crypt::Keyring>> {
    let key = tidemark::archive::crypt::Key::from_hex(hex).unwrap();
    Some(Arc::new(tidemark::archive::crypt::Keyring::new(
        key,
        Vec::new(),
    )))
}

#[tokio::test]
async fn an_encrypted_archive_is_unreadable_without_its_key() {
    let fx = Fixture::new(RICH_SCHEMA);
    fx.psql("UPDATE accounts SET owner = 'secret-marker-4242' WHERE id = 1");
    let key_file = private_key_file(fx.dir.path(), "archive.key", KEY_HEX);
    let (dir, url) = (fx.archive_dir(), fx.archive_url());
    let archive = format!("\n[archive]\nurl = {url:?}\nupload_interval = \"200ms\"\n");
    let config = fx.config(
        &["public.accounts"],
        &format!(
            "{archive}encryption_key_file = {:?}\n",
            key_file.display().to_string()
        ),
    );
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    fx.psql("UPDATE accounts SET owner = 'secret-marker-4343' WHERE id = 2");
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    let logs = capture.logs();
    assert_eq!(capture.stop(), 0);
    assert!(!logs.contains(KEY_HEX));

    // Everything stored is ciphertext.
    let files: Vec<_> = harness::files_under(&dir)
        .into_iter()
        .filter(|f| !f.ends_with(".meta.json"))
        .map(|f| dir.join(f))
        .collect();
    assert!(files.len() >= 4);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            bytes.starts_with(tidemark::archive::crypt::MAGIC),
            "{} is not encrypted",
            file.display()
        );
        assert!(
            !bytes.windows(13).any(|w| w == b"secret-marker"),
            "{} leaks plaintext",
            file.display()
        );
    }

    let cfg = config.to_str().unwrap();
    let verify = harness::tidemark(&["verify", "--config", cfg, "--deep"], &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let store = store::open_with_key(&url, &Default::default(), keyring(KEY_HEX))
        .await
        .unwrap();
    let (_, manifest) = manifest::load_latest(&*store).await.unwrap().unwrap();
    assert_eq!(manifest.encryption_key_id, Some(key_id(KEY_HEX)));
    let plan = tidemark::replay::rebuild::plan(&manifest, tidemark::replay::apply::Target::Latest)
        .unwrap();
    let target = Fixture::new("");
    let client = Arc::new(harness::connect(&target.url()).await);
    tidemark::replay::rebuild::rebuild(&*store, &plan, &[client], target.dir.path())
        .await
        .unwrap();
    assert_eq!(target.psql(ROWS_MD5), fx.psql(ROWS_MD5));

    // No key, then the wrong key: one clear line each, exit 2, no key material.
    let no_key = fx.config(&["public.accounts"], &archive);
    let out = harness::tidemark(&["list", "--config", no_key.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is encrypted") && stderr.contains("no key is configured"),
        "{stderr}"
    );
    let other = private_key_file(fx.dir.path(), "other.key", OTHER_KEY_HEX);
    let wrong = fx.config(
        &["public.accounts"],
        &format!(
            "{archive}encryption_key_file = {:?}\n",
            other.display().to_string()
        ),
    );
    let out = harness::tidemark(&["verify", "--config", wrong.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("but the configured keys are"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(KEY_HEX) && !stderr.contains(OTHER_KEY_HEX));
}

/// With a key configured, nothing is read that the key did not seal under
/// that very name; rotation keeps old objects readable; the key file is private.
#[tokio::test]
async fn an_encrypted_archive_refuses_planted_moved_and_foreign_objects() {
    let fx = Fixture::new(SCHEMA);
    let key = private_key_file(fx.dir.path(), "archive.key", KEY_HEX);
    let (dir, url) = (fx.archive_dir(), fx.archive_url());
    let archive = format!("\n[archive]\nurl = {url:?}\nupload_interval = \"200ms\"\n");
    let with_key = |name: &str, extra: String| {
        let config = fx.config(&["public.payments"], &format!("{archive}{extra}"));
        let path = fx.dir.path().join(name);
        std::fs::rename(&config, &path).unwrap();
        path
    };
    let config = with_key(
        "a.toml",
        format!("encryption_key_file = {:?}\n", key.display().to_string()),
    );
    workload(&fx, 1, 50);
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);
    let run = |config: &Path, args: &[&str]| {
        let out = harness::tidemark(args, &["--config", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        (
            out.status.code(),
            stderr,
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };

    // A cleartext manifest planted under a valid name, newest of all: refused by name.
    let store = store::open_with_key(&url, &Default::default(), keyring(KEY_HEX))
        .await
        .unwrap();
    let (_, mut planted) = manifest::load_latest(&*store).await.unwrap().unwrap();
    planted.sequence += 100;
    let (planted_key, body) = planted.encode();
    std::fs::write(dir.join(&planted_key), &body).unwrap();
    for args in [
        &["list"][..],
        &["verify"],
        &["restore", "--to", "latest", "--dry-run"],
    ] {
        let (code, stderr, _) = run(&config, args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&planted_key) && stderr.contains("is not encrypted"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    std::fs::remove_file(dir.join(&planted_key)).unwrap();

    // A valid ciphertext copied over another object's name does not decrypt there.
    let (_, manifest) = manifest::load_latest(&*store).await.unwrap().unwrap();
    let snapshot = &manifest.snapshots[0];
    let (moved, victim) = (&snapshot.schema.key, &snapshot.tables[0].key);
    let original = std::fs::read(dir.join(victim)).unwrap();
    std::fs::copy(dir.join(moved), dir.join(victim)).unwrap();
    let (code, _, stdout) = run(&config, &["verify"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(victim.as_str()) && stdout.contains("moved from another name"),
        "{stdout}"
    );
    let target = Fixture::new("");
    let (code, stderr, _) = run(
        &config,
        &["restore", "--to", "latest", "--target", &target.url()],
    );
    assert_ne!(code, Some(0));
    assert!(stderr.contains(victim.as_str()), "{stderr}");
    std::fs::write(dir.join(victim), original).unwrap();

    // Rotation: the new key writes, the old one still reads, verify counts both.
    let new_key = private_key_file(fx.dir.path(), "new.key", OTHER_KEY_HEX);
    let rotated = with_key(
        "b.toml",
        format!(
            "encryption_key_file = {:?}\nprevious_key_files = [{:?}]\n",
            new_key.display().to_string(),
            key.display().to_string()
        ),
    );
    let capture = fx.start_capture_async(&rotated).await;
    workload(&fx, 51, 60);
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    harness::Event::new(
        "an object under the new key",
        Duration::from_secs(60),
        || {
            let (_, _, stdout) = run(&rotated, &["verify", "--json"]);
            serde_json::from_str::<serde_json::Value>(&stdout)
                .ok()
                .and_then(|v| v["key_ids"][key_id(OTHER_KEY_HEX)].as_u64())
                .is_some()
        },
    )
    .arrives()
    .await;
    assert_eq!(capture.stop(), 0);
    let (code, _, stdout) = run(&rotated, &["verify", "--json"]);
    assert_eq!(code, Some(0), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        report["key_ids"][key_id(KEY_HEX)].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["key_ids"].get("cleartext").is_none(), "{report}");
    // Without the previous key, the old objects are foreign: named, not silently skipped.
    let new_only = with_key(
        "c.toml",
        format!(
            "encryption_key_file = {:?}\n",
            new_key.display().to_string()
        ),
    );
    let (code, stdout_or_err, stdout) = run(&new_only, &["verify"]);
    assert_ne!(code, Some(0));
    assert!(
        format!("{stdout_or_err}{stdout}").contains(&key_id(KEY_HEX)),
        "{stdout_or_err}{stdout}"
    );

    // A key file others may read is refused with the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr, _) = run(&config, &["list"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
}
