//! Bad input: each case gets one line naming the problem and the fix, exit
//! code 2, no secret in the output, and the existing log left byte for byte.

mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use harness::{Capture, Fixture};
use tidemark::replay::scratch::ScratchServer;

const SCHEMA: &str = "
    CREATE TABLE payments (id int PRIMARY KEY, amount numeric);
    CREATE TABLE nokey (v text);
";

/// A fixture whose log already holds captured changes.
fn fixture_with_log() -> Fixture {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config(&["public.payments"], "");
    let capture = fx.start_capture(&config);
    fx.psql("INSERT INTO payments SELECT g, g FROM generate_series(1, 50) g");
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);
    fx
}

fn log_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

/// Runs capture with `config` and returns its single error line, after
/// checking the exit code, the one-line rule and that no password shows.
fn expect_refusal(config: &Path, secrets: &[&str]) -> String {
    let out = harness::tidemark(&["capture", "--config", config.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "exit code for: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    println!("{stderr}");
    let superuser_password = harness::cluster().password().unwrap();
    for secret in secrets.iter().chain([&superuser_password]) {
        assert!(!stderr.contains(secret), "a secret leaked: {stderr}");
    }
    stderr
}

/// Checks a refusal against a fixture with an existing log, which must stay intact.
fn refused_without_damage(fx: &Fixture, config: &Path, secrets: &[&str]) -> String {
    let before = log_files(&fx.log_dir());
    assert!(!before.is_empty());
    let error = expect_refusal(config, secrets);
    assert_eq!(
        log_files(&fx.log_dir()),
        before,
        "the log changed after: {error}"
    );
    error
}

#[test]
fn a_wrong_password() {
    let fx = fixture_with_log();
    let url = fx.cluster.url_as("postgres", "not-the-password", &fx.db);
    let config = fx.config_with_url(&url, &["public.payments"], "");
    let error = refused_without_damage(&fx, &config, &["not-the-password"]);
    assert!(error.contains("rejected user postgres"), "{error}");
    assert!(
        error.contains("check the user and password in [source] url"),
        "{error}"
    );
}

#[test]
fn an_unreachable_host() {
    let fx = fixture_with_log();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/{}", fx.db);
    let config = fx.config_with_url(&url, &["public.payments"], "");
    let error = refused_without_damage(&fx, &config, &["hunter2"]);
    assert!(
        error.contains(&format!("cannot reach the source at 127.0.0.1:{port}")),
        "{error}"
    );
}

#[test]
fn wal_level_not_logical() {
    static REPLICA: OnceLock<ScratchServer> = OnceLock::new();
    let cluster = REPLICA
        .get_or_init(|| ScratchServer::start_listening(&[("wal_level", "replica")]).unwrap());
    let fx = Fixture::in_cluster(cluster, SCHEMA);
    let config = fx.config(&["public.payments"], "");
    let error = expect_refusal(&config, &[]);
    assert!(error.contains("wal_level is 'replica'"), "{error}");
    assert!(error.contains("set wal_level = logical"), "{error}");
}

#[test]
fn a_table_that_does_not_exist() {
    let fx = fixture_with_log();
    let config = fx.config(&["public.payments", "public.nope"], "");
    let error = refused_without_damage(&fx, &config, &[]);
    assert!(
        error.contains("table public.nope does not exist"),
        "{error}"
    );
}

#[test]
fn a_table_without_replica_identity() {
    let fx = fixture_with_log();
    let config = fx.config(&["public.payments", "public.nokey"], "");
    let error = refused_without_damage(&fx, &config, &[]);
    assert!(
        error.contains("table public.nokey has no usable replica identity"),
        "{error}"
    );
    assert!(
        error.contains("ALTER TABLE public.nokey REPLICA IDENTITY FULL"),
        "{error}"
    );
    // The fix in the message works.
    fx.psql("ALTER TABLE nokey REPLICA IDENTITY FULL");
    let capture = fx.start_capture(&config);
    fx.psql("INSERT INTO nokey VALUES ('now captured')");
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);
    assert!(fx
        .log_json(&config, &["--table", "public.nokey"])
        .iter()
        .any(|l| l["new"]["v"] == "now captured"));
}

#[test]
fn a_slot_of_another_output_plugin() {
    let fx = Fixture::new(SCHEMA);
    fx.psql(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'test_decoding')",
        fx.slot()
    ));
    let config = fx.config(&["public.payments"], "");
    let error = expect_refusal(&config, &[]);
    assert!(
        error.contains("uses output plugin test_decoding, not pgoutput"),
        "{error}"
    );
    assert!(error.contains("pg_drop_replication_slot"), "{error}");
}

#[test]
fn a_log_dir_that_cannot_be_written() {
    let fx = Fixture::new(SCHEMA);
    let file = fx.dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let config = fx.config(&["public.payments"], "segment_size = \"1MiB\"");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("dir = {:?}", fx.log_dir().display().to_string()),
        &format!("dir = {:?}", file.join("log").display().to_string()),
    );
    std::fs::write(&config, text).unwrap();
    let error = expect_refusal(&config, &[]);
    assert!(error.contains("log dir"), "{error}");
    assert!(error.contains("may write there"), "{error}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
}

#[test]
fn an_unknown_config_key() {
    let fx = fixture_with_log();
    let config = fx.config(&["public.payments"], "segmnt_size = \"8MiB\"");
    let error = refused_without_damage(&fx, &config, &[]);
    assert!(error.contains("unknown field `segmnt_size`"), "{error}");
}

#[test]
fn a_second_capture_on_the_same_log_dir() {
    let fx = fixture_with_log();
    let config = fx.config(&["public.payments"], "");
    let first = Capture::start(&config);
    fx.wait_streaming(&first);
    // Same log dir, its own metrics port: only the log lock stands in the way.
    let config = fx.config(&["public.payments"], "");
    let error = expect_refusal(&config, &[]);
    assert!(
        error.contains("in use by another tidemark capture"),
        "{error}"
    );
    assert_eq!(first.stop(), 0);
}

#[test]
fn a_bad_lsn_argument() {
    let fx = fixture_with_log();
    let config = fx.config(&["public.payments"], "");
    let out = harness::tidemark(
        &["log", "--config", config.to_str().unwrap(), "--from", "12"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an LSN"));
}

#[test]
fn a_metrics_port_in_use() {
    let fx = fixture_with_log();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = fx.config(&["public.payments"], "");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        &format!("listen = \"127.0.0.1:{}\"", harness::metrics_port(&config)),
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&config, text).unwrap();
    let error = refused_without_damage(&fx, &config, &[]);
    assert!(
        error.contains(&format!("cannot serve metrics on 127.0.0.1:{port}")),
        "{error}"
    );
    assert!(
        error.contains("set [metrics] listen to a free address"),
        "{error}"
    );
}

#[test]
fn a_kafka_setting_librdkafka_refuses() {
    let fx = fixture_with_log();
    let config = fx.config(
        &["public.payments"],
        "\n[kafka]\nbrokers = \"127.0.0.1:9\"\n\"security.protocol\" = \"hunter2-secret\"\n\"sasl.password\" = \"s3cret-pw\"\n",
    );
    let error = refused_without_damage(&fx, &config, &["hunter2-secret", "s3cret-pw"]);
    assert!(error.contains("security.protocol"), "{error}");
}
