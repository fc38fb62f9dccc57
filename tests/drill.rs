//! `tidemark drill`: restore the latest point into a scratch database and
//! compare it with the source at exactly that point, while capture runs.

mod harness;

use harness::Fixture;

#[test]
fn a_drill_passes_and_measures_rto_and_rpo() {
    let fx = Fixture::new(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance numeric, note text);
         CREATE TABLE events (kind text, at timestamptz);
         ALTER TABLE events REPLICA IDENTITY FULL;",
    );
    let config = fx.config(
        &["public.accounts", "public.events"],
        &format!(
            "\n[archive]\nurl = \"file://{}\"\nupload_interval = \"200ms\"\n",
            fx.archive_dir().display()
        ),
    );
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("INSERT INTO accounts SELECT g, g, 'n' FROM generate_series(1, 500) g");
    fx.psql("INSERT INTO events SELECT 'e', now() FROM generate_series(1, 20)");
    fx.psql("UPDATE accounts SET balance = balance * 2 WHERE id % 7 = 0");

    fx.psql(&format!("CREATE DATABASE {}_drill", fx.db));
    let target = fx.cluster.url(&format!("{}_drill", fx.db));
    let out = harness::tidemark(
        &[
            "drill",
            "--config",
            config.to_str().unwrap(),
            "--target",
            &target,
            "--json",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("stdout is only the JSON report");
    assert_eq!(report["pass"], true, "{report}");
    assert_eq!(report["tables"].as_array().unwrap().len(), 2);
    assert_eq!(report["tables"][0]["source_rows"], 500);
    assert!(report["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(report["rpo_seconds"].as_f64().is_some());
    assert_eq!(capture.stop(), 0);
}
