//! `tidemark bench` end to end at a tiny size: every phase runs against real
//! servers and tools, and the JSON carries the keys users script against.

mod harness;

#[test]
fn a_small_bench_runs_every_phase_and_writes_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let report = dir.path().join("bench.md");
    let out = harness::tidemark(
        &[
            "bench",
            "--changes",
            "4000",
            "--rounds",
            "1",
            "--rates",
            "200",
            "--rate-seconds",
            "1",
            "--big-txn-mib",
            "8",
            "--restore-rows",
            "2000",
            "--json",
            json.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("capture vs pg_recvlogical"), "{stdout}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for path in [
        "/capture/ratio_vs_pg_recvlogical",
        "/capture/ratio_vs_wal2json",
        "/capture/bytes_ratio_vs_wal2json",
        "/capture/changes_per_s",
        "/latency/200/durable_p99_ms",
        "/restore/ratio_vs_copy",
        "/restore/ratio_vs_pg_restore",
        "/restore/restore_vs_copy",
        "/memory/capture_peak_rss_mib",
        "/restore/compaction/seconds",
        "/restore/compaction/peak_rss_mib",
        "/restore/compaction/children_peak_rss_mib",
    ] {
        let value = results.pointer(path).and_then(|v| v.as_f64());
        assert!(value.is_some_and(|v| v > 0.0), "{path}: {value:?}");
    }
    // Each consumer drains this small backlog in a few ticks of CPU, which
    // /proc may not resolve: then the report says null, never zero.
    for consumer in ["walsender_busy", "pg_recvlogical_walsender_busy"] {
        let busy = &results["capture"]["scenarios"]["pgbench"][consumer];
        assert!(
            busy.is_null() || busy.as_f64().is_some_and(|v| v > 0.0),
            "{consumer}: {busy}"
        );
    }
    // 2,000 accounts, one branch and its ten tellers.
    assert_eq!(
        results["restore"]["rows"], 2011,
        "the restore phase restored every row"
    );
    assert!(
        results["restore"]["changes"]
            .as_u64()
            .is_some_and(|c| c >= 4000),
        "the pgbench backlog was replayed: {}",
        results["restore"]
    );
    // Compaction wrote a new snapshot: its scratch server wrote the rows out.
    assert!(
        results["restore"]["compaction"]["children_written_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{}",
        results["restore"]["compaction"]
    );
    let markdown = std::fs::read_to_string(&report).unwrap();
    assert!(
        markdown.contains("`tidemark compact` to the same point"),
        "{markdown}"
    );
    assert!(markdown.contains("bench-throughput.svg"), "{markdown}");
    let chart = std::fs::read_to_string(dir.path().join("bench-latency.svg")).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("<rect"),
        "{chart}"
    );
}
