//! Streamed transactions (protocol v2): capture writes chunks as they come and
//! never holds a whole transaction in memory; aborted ones never show.

mod harness;

use std::time::Duration;

use harness::Fixture;

#[test]
fn two_200_mb_transactions_stream_through_in_bounded_memory() {
    let fx = Fixture::new("CREATE TABLE big (id bigint PRIMARY KEY, body text)");
    let config = fx.config(&["public.big"], "");
    let capture = fx.start_capture(&config);

    // 200,000 rows of ~1.06 KB each: over 200 MB per transaction, far above
    // the default logical_decoding_work_mem of 64 MB, so the server streams them.
    let rows = 200_000;
    fx.psql(&format!(
        "INSERT INTO big SELECT g, repeat(md5(g::text), 33) FROM generate_series(1, {rows}) g"
    ));
    fx.psql(&format!(
        "BEGIN; INSERT INTO big SELECT g, repeat(md5(g::text), 33) FROM generate_series({}, {}) g; ROLLBACK",
        rows + 1,
        2 * rows
    ));
    fx.wait_caught_up(Duration::from_secs(300));
    let peak_kib = capture.peak_rss_kib();
    let capture_logs = capture.logs();
    assert_eq!(capture.stop(), 0);
    println!("capture peak RSS: {} MiB", peak_kib / 1024);
    assert!(
        peak_kib < 64 * 1024,
        "capture peak RSS {peak_kib} KiB exceeds 64 MiB"
    );

    let log_bytes: u64 = std::fs::read_dir(fx.log_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        log_bytes > 400_000_000,
        "both transactions reached the log: {log_bytes} bytes"
    );

    let mut reader = tidemark::log::LogReader::open(&fx.log_dir()).unwrap();
    let (mut stream_commits, mut stream_aborts) = (0, 0);
    while let Some((_, record)) = reader.next_record().unwrap() {
        match record.data.first() {
            Some(b'c') => stream_commits += 1,
            Some(b'A') => stream_aborts += 1,
            _ => {}
        }
    }
    assert_eq!(
        (stream_commits, stream_aborts),
        (1, 1),
        "one stream commit and one stream abort recorded; capture said:\n{capture_logs}"
    );

    let out = harness::tidemark(
        &["log", "--config", config.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        rows,
        "only the committed transaction's rows"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["key"]["id"], rows.to_string());
}
