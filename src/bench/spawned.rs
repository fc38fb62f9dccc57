//! What users run, measured the way PostgreSQL sees it: a `tidemark capture`
//! process of its own (this very binary), timed from its start until the
//! slot's `confirmed_flush_lsn` reaches the backlog's end, with its peak RSS
//! and how busy the walsender serving it was. `pg_recvlogical` is timed the
//! same way (start to exit: it confirms its end position before it exits),
//! with its walsender's busy share beside it.
//!
//! Busy is the walsender's CPU time over its life so far, both read to the
//! microsecond: CPU from its CPU-time clock (clock_getcpuclockid), life
//! from the backend's `backend_start`. /proc/<pid>/stat counts both in
//! 10 ms ticks, which on a drain of 0.6 s moved the share by up to 0.03
//! and rounded the CPU down.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{BenchError, Server};
use crate::base::position::{EndLsn, Lsn};

/// How often the slot is read while a drain runs.
const POLL: Duration = Duration::from_millis(10);

pub struct SpawnedRun {
    pub seconds: f64,
    pub peak_rss_mib: f64,
    /// The walsender's CPU time over its lifetime, as a share of one core.
    pub walsender_busy: Option<f64>,
}

/// What one read of the slot says.
struct SlotReading {
    confirmed: Option<Lsn>,
    /// The walsender holding the slot, and how long ago it started.
    walsender: Option<(i32, f64)>,
}

async fn read_slot(client: &tokio_postgres::Client, slot: &str) -> Result<SlotReading, BenchError> {
    let row = client
        .query_one(
            "SELECT s.confirmed_flush_lsn::text, s.active_pid,
                    extract(epoch FROM clock_timestamp() - a.backend_start)::float8
             FROM pg_replication_slots s LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let confirmed: Option<String> = row.get(0);
    let (pid, age): (Option<i32>, Option<f64>) = (row.get(1), row.get(2));
    Ok(SlotReading {
        confirmed: confirmed.and_then(|l| l.parse().ok()),
        walsender: pid.zip(age),
    })
}

/// A process's CPU seconds so far, from its CPU-time clock: current to the
/// nanosecond even while it runs (its schedstat lags by up to a tick).
fn cpu_seconds(pid: i32) -> Option<f64> {
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls only write the out-parameter passed to them.
    let read = unsafe {
        libc::clock_getcpuclockid(pid, &mut clock) == 0 && libc::clock_gettime(clock, &mut now) == 0
    };
    read.then(|| now.tv_sec as f64 + now.tv_nsec as f64 / 1e9)
}

/// The last reading of the walsender serving `slot`: its busy share.
#[derive(Default)]
struct WalsenderWatch {
    busy: Option<f64>,
}

impl WalsenderWatch {
    fn sample(&mut self, reading: &SlotReading) {
        if let Some((pid, age)) = reading.walsender {
            if let Some(cpu) = cpu_seconds(pid).filter(|_| age > 0.0) {
                self.busy = Some(cpu / age);
            }
        }
    }
}

fn signal_stop(child: &Child) {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

/// Runs `tidemark capture --config <config>` until the slot confirms `end`.
pub async fn capture(
    server: &Server,
    db: &str,
    config: &Path,
    slot: &str,
    end: EndLsn,
) -> Result<SpawnedRun, BenchError> {
    let client = server.connect(db).await?;
    let log = config.with_extension("log");
    let started = Instant::now();
    // This very binary, even if a newer build has replaced the file since.
    let mut child = server
        .command("/proc/self/exe")
        .args(["capture", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id().to_string();
    let (mut peak, mut walsender) = (0.0f64, WalsenderWatch::default());
    loop {
        peak = super::peak_rss_mib_of(&pid).max(peak);
        let reading = read_slot(&client, slot).await?;
        walsender.sample(&reading);
        if reading.confirmed.is_some_and(|l| l >= end.0) {
            break;
        }
        if let Some(status) = child.try_wait()? {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(BenchError::Tool {
                tool: "tidemark capture".into(),
                detail: format!(
                    "exited ({status}) before the slot confirmed {end}: {}",
                    said.lines().last().unwrap_or_default()
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    signal_stop(&child);
    child.wait()?;
    Ok(SpawnedRun {
        seconds,
        peak_rss_mib: peak,
        walsender_busy: walsender.busy,
    })
}

/// Runs `pg_recvlogical` with `args` on `slot` until it exits at its end position.
pub async fn recvlogical(
    server: &Server,
    db: &str,
    slot: &str,
    args: &[&str],
) -> Result<SpawnedRun, BenchError> {
    let client = server.connect(db).await?;
    let started = Instant::now();
    let mut child = server
        .tool("pg_recvlogical")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut walsender = WalsenderWatch::default();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        walsender.sample(&read_slot(&client, slot).await?);
        tokio::time::sleep(POLL).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        let mut said = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut said);
        }
        return Err(BenchError::Tool {
            tool: "pg_recvlogical".into(),
            detail: said.trim().to_string(),
        });
    }
    Ok(SpawnedRun {
        seconds,
        peak_rss_mib: 0.0,
        walsender_busy: walsender.busy,
    })
}

/// What a `tidemark compact` process cost, with the scratch server it ran.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProcessCost {
    pub seconds: f64,
    /// tidemark's own process.
    pub peak_rss_mib: f64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Every process it started (the scratch server's), summed at each sample.
    pub children_peak_rss_mib: f64,
    pub children_read_bytes: u64,
    pub children_written_bytes: u64,
}

/// `(parent, pid)` of every process.
fn parents() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let parent = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((parent, pid))
        })
        .collect()
}

/// Every descendant of `root`.
fn descendants(root: i32) -> Vec<i32> {
    let all = parents();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|(p, _)| *p == parent).map(|(_, c)| *c));
        i += 1;
    }
    found.split_off(1)
}

/// `read_bytes` and `write_bytes` from /proc/<pid>/io: what reached storage.
fn io_bytes(pid: i32) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("read_bytes:")?, field("write_bytes:")?))
}

fn rss_mib(pid: i32) -> f64 {
    super::status_mib(&pid.to_string(), "VmRSS:")
}

/// Runs this binary with `args` to its end, sampling it and its children
/// every 20 ms: peak RSS and bytes read and written, its own and theirs.
pub fn measure(server: &Server, args: &[&str]) -> Result<ProcessCost, BenchError> {
    measure_output(server, args).map(|(cost, _)| cost)
}

/// Like [`measure`], and what the process printed (a JSON report, say:
/// small enough for the pipe to hold until it exits).
pub fn measure_output(server: &Server, args: &[&str]) -> Result<(ProcessCost, String), BenchError> {
    let started = Instant::now();
    let mut child = server
        .command("/proc/self/exe")
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let mut cost = ProcessCost::default();
    let mut children_io = std::collections::HashMap::new();
    let status = loop {
        cost.peak_rss_mib = super::peak_rss_mib_of(&pid.to_string()).max(cost.peak_rss_mib);
        if let Some((read, written)) = io_bytes(pid) {
            (cost.read_bytes, cost.written_bytes) = (read, written);
        }
        let tree = descendants(pid);
        let rss: f64 = tree.iter().map(|&p| rss_mib(p)).sum();
        cost.children_peak_rss_mib = cost.children_peak_rss_mib.max(rss);
        for p in tree {
            if let Some(io) = io_bytes(p) {
                children_io.insert(p, io);
            }
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    cost.seconds = started.elapsed().as_secs_f64();
    cost.children_read_bytes = children_io.values().map(|(r, _)| r).sum();
    cost.children_written_bytes = children_io.values().map(|(_, w)| w).sum();
    if !status.success() {
        let mut said = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut said);
        }
        return Err(BenchError::Tool {
            tool: format!("tidemark {}", args.first().copied().unwrap_or_default()),
            detail: said.trim().to_string(),
        });
    }
    let mut printed = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        stdout.read_to_string(&mut printed)?;
    }
    Ok((cost, printed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_finer_than_a_tick() {
        let pid = std::process::id() as i32;
        let before = cpu_seconds(pid).expect("the CPU clock of this process");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(2) {
            std::hint::black_box(0u64);
        }
        let after = cpu_seconds(pid).unwrap();
        // Two milliseconds of spinning is a fifth of a tick: ticks would often show nothing.
        assert!(after - before >= 0.001, "{before} -> {after}");
        assert!(after < 3600.0, "{after} s of CPU: not nanoseconds");
    }
}
