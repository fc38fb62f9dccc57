//! Capture end to end against a real cluster: what lands in the log, the ack
//! invariant, slot advancement on quiet tables, and clean shutdown.

mod harness;

use std::time::Duration;

use harness::{Capture, Fixture};

const SCHEMA: &str = "
    CREATE TABLE users (id bigint PRIMARY KEY, name text);
    CREATE TABLE payments (id serial PRIMARY KEY, user_id bigint, amount numeric(12,2), note text);
    CREATE TABLE noise (id serial PRIMARY KEY, v text);
";

#[test]
fn committed_changes_land_in_the_log_and_shutdown_confirms_them() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config(&["public.users", "public.payments"], "");
    let capture = fx.start_capture(&config);
    fx.psql(
        "BEGIN;
         INSERT INTO users VALUES (1, 'ada'), (2, 'bob');
         INSERT INTO payments (user_id, amount, note) VALUES (1, 10.50, 'first');
         COMMIT;
         BEGIN; INSERT INTO users VALUES (3, 'never'); ROLLBACK;
         UPDATE users SET name = 'ada l' WHERE id = 1;
         UPDATE users SET id = 20 WHERE id = 2;
         DELETE FROM payments WHERE user_id = 1;
         INSERT INTO noise (v) VALUES ('not watched');
         TRUNCATE payments;",
    );
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0, "capture exits 0 on SIGTERM");

    let lines = fx.log_json(&config, &[]);
    let summary: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["table"].as_str().unwrap().to_string(),
                l["op"].as_str().unwrap().to_string(),
                l["key"].to_string(),
            )
        })
        .collect();
    let expect = |t: &str, op: &str, key: &str| (t.to_string(), op.to_string(), key.to_string());
    assert_eq!(
        summary,
        vec![
            expect("public.users", "insert", r#"{"id":"1"}"#),
            expect("public.users", "insert", r#"{"id":"2"}"#),
            expect("public.payments", "insert", r#"{"id":"1"}"#),
            expect("public.users", "update", r#"{"id":"1"}"#),
            expect("public.users", "update", r#"{"id":"2"}"#),
            expect("public.payments", "delete", r#"{"id":"1"}"#),
            expect("public.payments", "truncate", "null"),
        ]
    );
    // The first transaction's three changes share one xid and commit position.
    assert_eq!(lines[0]["xid"], lines[2]["xid"]);
    assert_eq!(lines[0]["commit_lsn"], lines[2]["commit_lsn"]);
    assert_ne!(lines[0]["xid"], lines[3]["xid"]);
    assert_eq!(lines[2]["new"]["amount"], "10.50");
    assert_eq!(
        lines[4]["new"]["id"], "20",
        "a key change shows the new key in `new`"
    );
    assert!(lines[0]["commit_time"].as_str().unwrap().ends_with('Z'));

    // Filters.
    let payments = fx.log_json(&config, &["--table", "public.payments"]);
    assert_eq!(payments.len(), 3);
    let from = lines[3]["commit_lsn"].as_str().unwrap();
    assert_eq!(fx.log_json(&config, &["--from", from]).len(), 4);

    // Shutdown confirmed exactly the log's durable end.
    let confirmed = fx.confirmed_flush().unwrap();
    let (_writer, recovery) = tidemark::log::LogWriter::open(&fx.log_dir(), 64 << 20).unwrap();
    assert_eq!(confirmed, recovery.resume_lsn.0);
}

#[test]
fn a_restart_resumes_without_loss_or_duplicates() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config(&["public.users"], "");
    let capture = fx.start_capture(&config);
    fx.psql("INSERT INTO users SELECT g, 'a' FROM generate_series(1, 100) g");
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);
    // Written while capture is down; picked up from the slot on restart.
    fx.psql("INSERT INTO users SELECT g, 'b' FROM generate_series(101, 150) g");
    let capture = Capture::start(&config);
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);
    let ids = fx.logged_ids(&config);
    assert_eq!(ids, (1..=150).collect::<Vec<_>>());
}

/// The resume LSN of what is on disk right now (a superset of what is fsynced),
/// from the newest segment whose header is complete: it carries the base.
fn on_disk_resume(dir: &std::path::Path) -> tidemark::base::position::EndLsn {
    use tidemark::log::segment;
    segment::list(dir)
        .unwrap()
        .iter()
        .rev()
        .find_map(|(_, path)| segment::SegmentReader::open(path).unwrap())
        .map(|mut reader| segment::scan(&mut reader).unwrap().index.ack_lsn)
        .unwrap_or_default()
}

#[test]
fn the_flush_position_never_passes_the_log() {
    let fx = Fixture::new(SCHEMA);
    // Large transactions then reach capture as streamed blocks.
    fx.psql(&format!(
        "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
        fx.db
    ));
    // Small segments, so the workload rolls several however fast it runs.
    let config = fx.config(
        &["public.users", "public.payments"],
        "segment_size = \"4MiB\"",
    );
    // Each fsync is held for 50 ms, so the written end of the log runs ahead
    // of the fsynced end, and a flush position taken from the written end
    // would show.
    let capture = harness::Capture::start_with_slow_fsync(&config, Duration::from_millis(50));
    fx.wait_streaming(&capture);
    let metrics = harness::metrics_port(&config);
    let url = fx.url();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_workload = stop.clone();
    let workload = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let client = harness::connect(&url).await;
            let mut round = 0;
            while !stop_workload.load(std::sync::atomic::Ordering::Relaxed) || round < 30 {
                let rows = if round % 10 == 0 { 5000 } else { 20 };
                client
                    .batch_execute(&format!(
                        "INSERT INTO payments (user_id, amount, note) SELECT g, g, repeat('n', 200) FROM generate_series(1, {rows}) g;
                         INSERT INTO noise (v) SELECT 'z' FROM generate_series(1, 50);"
                    ))
                    .await
                    .unwrap();
                round += 1;
            }
            round
        })
    });
    let mut observations = 0;
    let mut written_ahead = 0;
    let mut advanced = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while advanced.len() < 5 || observations < 30 || written_ahead == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flush position did not move: {advanced:?}"
        );
        let reported = fx.psql(&format!(
            "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'tidemark' \
             AND pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{}')",
            fx.slot()
        ));
        if let Ok(reported) = reported.parse::<tidemark::base::position::Lsn>() {
            // Read after the server's view: the fsynced end only grows, so
            // a flush position past it was sent before the fsync returned.
            let fsynced = harness::sample(&harness::scrape(metrics), "tidemark_log_durable_lsn")
                .map_or(0, |v| v as u64);
            assert!(
                reported.0 <= fsynced,
                "reported flush {reported} passes the log's fsynced end {}",
                tidemark::base::position::Lsn(fsynced)
            );
            written_ahead += usize::from(on_disk_resume(&fx.log_dir()).as_u64() > fsynced);
            advanced.insert(reported);
        }
        observations += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = workload.join().unwrap();
    fx.wait_caught_up(Duration::from_secs(60));
    let mut reader = tidemark::log::LogReader::open(&fx.log_dir()).unwrap();
    let mut stream_blocks = 0;
    while let Some((_, record)) = reader.next_record().unwrap() {
        stream_blocks += usize::from(record.data.first() == Some(&b'S'));
    }
    assert!(
        stream_blocks > 0,
        "large transactions arrived as streamed blocks"
    );
    let segments = tidemark::log::segment::list(&fx.log_dir()).unwrap();
    let bytes: u64 = segments
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        segments.len() > 2,
        "the log rolled segments: {} segments, {bytes} bytes, {rounds} rounds",
        segments.len()
    );
    assert_eq!(capture.stop(), 0);
    assert_eq!(
        fx.confirmed_flush().unwrap(),
        on_disk_resume(&fx.log_dir()).0
    );
}

#[test]
fn quiet_watched_tables_do_not_pin_wal() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config(&["public.users"], "");
    let capture = fx.start_capture(&config);
    for _ in 0..10 {
        fx.psql("INSERT INTO noise (v) SELECT 'y' FROM generate_series(1, 1000)");
    }
    let after_noise = fx.current_wal_lsn();
    harness::wait_for(
        Duration::from_secs(30),
        "the slot to pass unwatched WAL",
        || fx.confirmed_flush().is_some_and(|c| c >= after_noise),
    );
    assert_eq!(capture.stop(), 0);
    assert!(fx.log_json(&config, &[]).is_empty());
}

#[test]
fn metrics_move_while_capture_runs_and_show_no_secret() {
    let fx = Fixture::new(SCHEMA);
    let archive = fx.dir.path().join("archive");
    let config = fx.config(
        &["public.users", "public.payments"],
        &format!(
            "\n[archive]\nurl = \"file://{}\"\nupload_interval = \"200ms\"\n",
            archive.display()
        ),
    );
    let capture = fx.start_capture(&config);
    let port = harness::metrics_port(&config);
    let inserts = "tidemark_changes_total{table=\"public.users\",op=\"insert\"}";
    let before = harness::scrape(port);
    fx.psql("INSERT INTO users SELECT g, 'm' FROM generate_series(1, 40) g");
    fx.psql("UPDATE users SET name = 'n' WHERE id <= 5");
    fx.wait_caught_up(Duration::from_secs(30));
    let mut after = String::new();
    harness::wait_for(
        Duration::from_secs(30),
        "the metrics to show the changes",
        || {
            after = harness::scrape(port);
            harness::sample(&after, inserts) == Some(40.0)
                && harness::sample(&after, "tidemark_upload_seconds_count")
                    .is_some_and(|n| n >= 1.0)
        },
    );
    assert_eq!(
        harness::sample(
            &after,
            "tidemark_changes_total{table=\"public.users\",op=\"update\"}"
        ),
        Some(5.0)
    );
    let confirmed = |m: &str| harness::sample(m, "tidemark_confirmed_lsn").unwrap_or(0.0);
    assert!(
        confirmed(&after) > confirmed(&before),
        "the confirmed LSN moved"
    );
    assert!(harness::sample(&after, "tidemark_log_bytes").unwrap() > 0.0);
    assert!(harness::sample(&after, "tidemark_slot_lag_bytes").is_some());
    assert!(harness::sample(&after, "tidemark_archive_head_age_seconds").is_some());
    assert!(!after.contains(fx.cluster.password().unwrap()));
    assert!(!after.contains("postgres://"));
    assert_eq!(capture.stop(), 0);
}

/// `status` reads the log dir, the archive and the source: healthy while
/// capture streams, critical once it stops.
#[test]
fn status_says_healthy_while_capture_streams_and_critical_when_it_stops() {
    let fx = Fixture::new("CREATE TABLE t (id int PRIMARY KEY)");
    let config = fx.config_with_archive(&["public.t"], "");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("INSERT INTO t VALUES (1)");
    fx.wait_caught_up(Duration::from_secs(30));
    let status = || {
        let out = harness::tidemark(
            &["status", "--config", config.to_str().unwrap(), "--json"],
            &[],
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), json)
    };
    let (code, json) = status();
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json["health"], "ok", "{json}");
    let names: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "capture",
            "slot_lag",
            "rpo",
            "snapshot_age",
            "verify",
            "drill"
        ]
    );
    assert_eq!(json["capture"]["running"], true);
    assert_eq!(json["capture"]["slot"], fx.slot());
    assert!(
        json["archive"]["rpo_seconds"].as_f64().unwrap() < 120.0,
        "{json}"
    );
    assert!(json["archive"]["latest"]["lsn"].is_string(), "{json}");
    assert_eq!(capture.stop(), 0);
    let (code, json) = status();
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["health"], "critical");
    assert_eq!(json["checks"][0]["status"], "critical", "{json}");
    assert_eq!(json["capture"]["running"], false);
}
