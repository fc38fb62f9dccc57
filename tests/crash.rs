//! Crash safety: kill -9 capture at random instants during a write workload.
//! Afterwards the log holds every committed transaction exactly once, checked
//! against a ledger the workload writes on the source in the same transactions.

mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use harness::ledger::{self, workload};
use harness::{Capture, Fixture, Rng};

#[test]
fn kill_9_at_random_instants_loses_and_duplicates_nothing() {
    let fx = Fixture::new(ledger::SCHEMA);
    fx.psql(&format!(
        "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
        fx.db
    ));
    let config = fx.config(&["public.payments"], "");
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);

    // The slot must exist before the workload, or early transactions predate it.
    let capture = fx.start_capture(&config);
    capture.kill();

    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = runtime.spawn(workload(fx.url(), stop.clone(), seed, false));

    let kills = 22;
    for kill in 0..kills {
        let capture = Capture::start(&config);
        // Three in four kills strike a streaming session; the rest may hit startup too.
        if kill % 4 != 0 {
            fx.wait_streaming(&capture);
        }
        std::thread::sleep(Duration::from_millis(rng.next(1000)));
        capture.kill();
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(load).unwrap();

    let capture = Capture::start(&config);
    fx.wait_caught_up(Duration::from_secs(120));
    assert_eq!(capture.stop(), 0);

    let tally = ledger::assert_log_matches_ledger(&fx, &config);
    assert!(
        tally.streamed > 0,
        "the workload produced streamed transactions"
    );
    // A session killed before anything of its own was synced leaves nothing on
    // disk, its Resume record included (correctly: it confirmed nothing). The
    // rest each left one; enough kills must have struck live sessions.
    assert!(
        tally.resumes >= kills / 4,
        "sessions that left records: {}",
        tally.resumes
    );
}
