//! Capture rides out the source going away: three PostgreSQL restarts (fast,
//! immediate, and a crash-restart) and two network cuts through a proxy the
//! test owns (a reset, and a black hole that closes nothing), all during a
//! write workload. Afterwards the log matches the source's ledger exactly.
//! The test prints how long each reconnect took after the path was open again.

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use harness::ledger::{self, workload};
use harness::proxy::Proxy;
use harness::Fixture;
use tidemark::replay::scratch::{ScratchServer, Shutdown};

/// Far above the 4 s the retry ceiling promises, so only a hang fails; the times are printed.
const RECONNECT_LIMIT: Duration = Duration::from_secs(30);

/// Whether capture streams again on a walsender that started after `since`.
fn streams_since(fx: &Fixture, since: SystemTime) -> bool {
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    fx.cluster
        .psql(
            &fx.db,
            &format!(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.slot_name = '{}' AND r.state = 'streaming' AND r.backend_start >= to_timestamp({since})",
                fx.slot()
            ),
        )
        .is_ok_and(|n| n == "1")
}

/// Waits until capture streams again after the path opened at `open`; returns how long it took.
fn reconnected(
    fx: &Fixture,
    capture: &harness::Capture,
    open: (SystemTime, Instant),
    what: &str,
) -> Duration {
    let deadline = open.1 + RECONNECT_LIMIT;
    harness::wait_for(RECONNECT_LIMIT + Duration::from_secs(1), what, || {
        let streaming = streams_since(fx, open.0);
        assert!(
            streaming || Instant::now() < deadline,
            "capture did not stream again after {what}:\n{}",
            capture.logs()
        );
        streaming
    });
    let took = open.1.elapsed();
    println!(
        "{what}: capture streamed again {:.2} s after the path opened",
        took.as_secs_f64()
    );
    took
}

fn now() -> (SystemTime, Instant) {
    (SystemTime::now(), Instant::now())
}

#[test]
fn restarts_and_network_cuts_lose_and_duplicate_nothing() {
    // Its own cluster: restarting the shared one would disturb other tests.
    let cluster: &'static ScratchServer =
        Box::leak(Box::new(ScratchServer::start_listening(&[]).unwrap()));
    let fx = Fixture::in_cluster(cluster, ledger::SCHEMA);
    fx.psql(&format!(
        "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
        fx.db
    ));
    let proxy = Proxy::start(cluster.port());
    let through_proxy = format!(
        "postgres://postgres:{}@127.0.0.1:{}/{}",
        cluster.password().unwrap(),
        proxy.port(),
        fx.db
    );
    let config = fx.config_with_url(&through_proxy, &["public.payments"], "");
    let capture = fx.start_capture(&config);

    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = runtime.spawn(workload(fx.url(), stop.clone(), seed, true));
    let committed = || fx.ledger().len();
    let wait_for_more = |what: &str| {
        let before = committed();
        harness::wait_for(Duration::from_secs(60), what, || committed() > before + 5);
    };

    let mut took = Vec::new();
    for (i, shutdown) in [Shutdown::Fast, Shutdown::Immediate]
        .into_iter()
        .enumerate()
    {
        wait_for_more("the workload to commit between outages");
        cluster.restart(shutdown).unwrap();
        took.push(reconnected(
            &fx,
            &capture,
            now(),
            &format!("restart {} ({shutdown:?})", i + 1),
        ));
    }

    // A crash-restart: a backend killed with SIGKILL makes the postmaster reset every session.
    wait_for_more("the workload to commit before the crash");
    let victim: u32 = fx
        .psql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_type IN ('client backend', 'walsender') LIMIT 1",
        )
        .parse()
        .unwrap();
    harness::signal(victim, libc::SIGKILL);
    harness::wait_for(
        RECONNECT_LIMIT,
        "the server to accept connections after recovery",
        || fx.cluster.psql(&fx.db, "SELECT 1").is_ok(),
    );
    took.push(reconnected(&fx, &capture, now(), "restart 3 (crash)"));

    wait_for_more("the workload to commit before the reset");
    proxy.reset();
    took.push(reconnected(&fx, &capture, now(), "cut 1 (reset)"));

    wait_for_more("the workload to commit before the black hole");
    let source_errors =
        || harness::metric(&config, "tidemark_errors_total{kind=\"source\"}").unwrap_or(0.0);
    let errors_before = source_errors();
    let dark = now();
    proxy.black_hole();
    // Capture notices the silence on its own and gives up the link (a
    // source error); the path stays dark meanwhile.
    harness::wait_for(RECONNECT_LIMIT, "capture to notice the silence", || {
        source_errors() > errors_before
    });
    assert!(
        capture.logs().contains("sent nothing"),
        "{}",
        capture.logs()
    );
    println!(
        "black hole noticed after {:.2} s",
        dark.1.elapsed().as_secs_f64()
    );
    proxy.mend();
    took.push(reconnected(&fx, &capture, now(), "cut 2 (black hole)"));

    wait_for_more("the workload to commit after the last outage");
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(load).unwrap();
    fx.wait_caught_up(Duration::from_secs(120));
    assert_eq!(capture.stop(), 0);
    let tally = ledger::assert_log_matches_ledger(&fx, &config);
    assert!(
        tally.resumes >= 5,
        "one session per outage: {}",
        tally.resumes
    );
    println!(
        "reconnect times (s): {:?}",
        took.iter()
            .map(|t| (t.as_secs_f64() * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
}
