//! What `tidemark bench` measured: the JSON shape, the table on stdout, and
//! the markdown report with its SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::drain::median_of;
use super::Options;

#[derive(Debug, Serialize)]
pub struct DrainRound {
    pub changes: u64,
    pub wal_bytes: u64,
    /// A `tidemark capture` process, from its start until the slot confirmed the backlog's end.
    pub tidemark_seconds: f64,
    pub pg_recvlogical_seconds: f64,
    pub wal2json_seconds: f64,
    /// The walsender's CPU share of one core while serving tidemark, and pg_recvlogical.
    pub walsender_busy: Option<f64>,
    pub pg_recvlogical_walsender_busy: Option<f64>,
    /// The segment log's bytes, and the same compressed as the archive stores them.
    pub log_bytes: u64,
    pub stored_bytes: u64,
    pub wal2json_bytes: u64,
    pub peak_rss_mib: f64,
}

/// One scenario's drain rates: medians over the rounds.
#[derive(Debug, Serialize)]
pub struct DrainResult {
    pub scenario: String,
    pub changes_per_s: f64,
    pub mb_per_s: f64,
    pub pg_recvlogical_changes_per_s: f64,
    pub wal2json_changes_per_s: f64,
    pub ratio_vs_pg_recvlogical: f64,
    pub ratio_vs_wal2json: f64,
    pub bytes_ratio_vs_wal2json: f64,
    pub peak_rss_mib: f64,
    /// Median share of one core the walsender spent serving tidemark, and pg_recvlogical.
    pub walsender_busy: Option<f64>,
    pub pg_recvlogical_walsender_busy: Option<f64>,
    /// The lowest and highest per-round ratio against pg_recvlogical.
    pub ratio_vs_pg_recvlogical_spread: [f64; 2],
    pub rounds: Vec<DrainRound>,
}

impl DrainResult {
    pub fn from_rounds(scenario: &str, rounds: Vec<DrainRound>) -> DrainResult {
        let rate = |seconds: f64, r: &DrainRound| r.changes as f64 / seconds;
        DrainResult {
            scenario: scenario.into(),
            changes_per_s: median_of(&rounds, |r| rate(r.tidemark_seconds, r)),
            mb_per_s: median_of(&rounds, |r| r.wal_bytes as f64 / 1e6 / r.tidemark_seconds),
            pg_recvlogical_changes_per_s: median_of(&rounds, |r| rate(r.pg_recvlogical_seconds, r)),
            wal2json_changes_per_s: median_of(&rounds, |r| rate(r.wal2json_seconds, r)),
            ratio_vs_pg_recvlogical: median_of(&rounds, |r| {
                r.pg_recvlogical_seconds / r.tidemark_seconds
            }),
            ratio_vs_wal2json: median_of(&rounds, |r| r.wal2json_seconds / r.tidemark_seconds),
            bytes_ratio_vs_wal2json: median_of(&rounds, |r| {
                r.stored_bytes as f64 / r.wal2json_bytes as f64
            }),
            peak_rss_mib: rounds.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max),
            walsender_busy: median_some(rounds.iter().map(|r| r.walsender_busy)),
            pg_recvlogical_walsender_busy: median_some(
                rounds.iter().map(|r| r.pg_recvlogical_walsender_busy),
            ),
            ratio_vs_pg_recvlogical_spread: spread(
                rounds
                    .iter()
                    .map(|r| r.pg_recvlogical_seconds / r.tidemark_seconds),
            ),
            rounds,
        }
    }
}

/// The median of the values that are there.
fn median_some(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.flatten().collect();
    (!present.is_empty()).then(|| super::median(&present))
}

/// The lowest and the highest value.
fn spread(values: impl Iterator<Item = f64>) -> [f64; 2] {
    values.fold([f64::INFINITY, f64::NEG_INFINITY], |[lo, hi], v| {
        [lo.min(v), hi.max(v)]
    })
}

#[derive(Debug, Serialize)]
pub struct LatencyResult {
    pub offered_tx_per_s: u32,
    pub achieved_tx_per_s: f64,
    pub transactions: u64,
    pub durable_p50_ms: f64,
    pub durable_p95_ms: f64,
    pub durable_p99_ms: f64,
    pub archive_p50_ms: f64,
    pub archive_p95_ms: f64,
    pub archive_p99_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct RestoreResult {
    pub rows: u64,
    pub changes: u64,
    pub load_seconds: f64,
    pub replay_seconds: f64,
    pub total_seconds: f64,
    pub copy_seconds: f64,
    pub pg_restore_seconds: f64,
    /// Raw COPY's time over tidemark's snapshot load: above 1 is faster than COPY.
    pub ratio_vs_copy: f64,
    pub ratio_vs_pg_restore: f64,
    /// Raw COPY plus a primary key of as many rows as the restore to the
    /// latest point handled (snapshot rows plus changes).
    pub copy_all_seconds: f64,
    /// That COPY's time over the restore's: issue #14's 0.5× target.
    pub restore_vs_copy: f64,
    pub rows_per_s: f64,
    pub changes_per_s: f64,
    pub peak_rss_mib: f64,
    /// `tidemark compact` to the same point: time, memory and I/O, its own and its scratch server's.
    pub compaction: super::spawned::ProcessCost,
}

#[derive(Debug, Serialize)]
pub struct KafkaResult {
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub peak_rss_mib: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_to_kafka_p99_ms: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Memory {
    /// Capture's peak RSS while draining one transaction of `big_transaction_mib`.
    pub capture_peak_rss_mib: f64,
    pub big_transaction_mib: u64,
    /// Peak RSS of each phase.
    pub phases: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct CaptureSummary {
    /// From the pgbench scenario (the first one run).
    pub changes_per_s: f64,
    pub mb_per_s: f64,
    pub ratio_vs_pg_recvlogical: f64,
    pub ratio_vs_wal2json: f64,
    pub bytes_ratio_vs_wal2json: f64,
    pub scenarios: BTreeMap<String, DrainResult>,
}

#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub command: String,
    pub cpus: usize,
    pub rounds: usize,
    pub capture: CaptureSummary,
    pub latency: BTreeMap<String, LatencyResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaResult>,
    pub memory: Memory,
    pub targets: Vec<TargetCheck>,
}

impl Results {
    pub fn new(options: &Options) -> Results {
        Results {
            command: shown_command(std::env::args()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rounds: options.rounds,
            capture: CaptureSummary::default(),
            latency: BTreeMap::new(),
            restore: None,
            kafka: None,
            memory: Memory {
                big_transaction_mib: options.big_txn_mib,
                ..Memory::default()
            },
            targets: Vec::new(),
        }
    }

    pub fn add_drain(&mut self, drain: DrainResult) {
        if self.capture.scenarios.is_empty() {
            self.capture.changes_per_s = drain.changes_per_s;
            self.capture.mb_per_s = drain.mb_per_s;
            self.capture.ratio_vs_pg_recvlogical = drain.ratio_vs_pg_recvlogical;
            self.capture.ratio_vs_wal2json = drain.ratio_vs_wal2json;
            self.capture.bytes_ratio_vs_wal2json = drain.bytes_ratio_vs_wal2json;
        }
        self.memory
            .phases
            .insert(format!("drain_{}", drain.scenario), drain.peak_rss_mib);
        self.capture.scenarios.insert(drain.scenario.clone(), drain);
    }

    /// Fills in the memory summary and checks each target.
    pub fn finish(&mut self) {
        self.memory
            .phases
            .insert("big_transaction".into(), self.memory.capture_peak_rss_mib);
        if let Some(restore) = &self.restore {
            self.memory
                .phases
                .insert("restore".into(), restore.peak_rss_mib);
            self.memory
                .phases
                .insert("compaction".into(), restore.compaction.peak_rss_mib);
        }
        if let Some(kafka) = &self.kafka {
            self.memory
                .phases
                .insert("kafka".into(), kafka.peak_rss_mib);
            if let Some(p99) = self.latency.get("2000").and_then(|l| l.kafka_p99_ms) {
                self.kafka.as_mut().expect("checked").commit_to_kafka_p99_ms = Some(p99);
            }
        }
        let mut check =
            |name: &str, target: &str, measured: Option<f64>, unit: &str, met: fn(f64) -> bool| {
                self.targets.push(TargetCheck {
                    name: name.into(),
                    target: target.into(),
                    measured: measured.map_or("not measured".into(), |m| format!("{m:.2}{unit}")),
                    met: measured.is_some_and(met),
                });
            };
        let drained = !self.capture.scenarios.is_empty();
        let capture = &self.capture;
        let (vs_recv, vs_json, bytes) = (
            drained.then_some(capture.ratio_vs_pg_recvlogical),
            drained.then_some(capture.ratio_vs_wal2json),
            drained.then_some(capture.bytes_ratio_vs_wal2json),
        );
        let p99 = self.latency.get("2000").map(|l| l.durable_p99_ms);
        let busy = |scenario: &str| capture.scenarios.get(scenario)?.walsender_busy;
        let copy = self.restore.as_ref().map(|r| r.ratio_vs_copy);
        let replay = self.restore.as_ref().map(|r| r.restore_vs_copy);
        let rss = Some(self.memory.capture_peak_rss_mib);
        let compaction_rss = self.restore.as_ref().map(|r| r.compaction.peak_rss_mib);
        let big_mib = self.memory.big_transaction_mib;
        check(
            "capture vs pg_recvlogical",
            "≥ 0.95×",
            vs_recv,
            "×",
            |m| m >= 0.95,
        );
        check(
            "capture vs pg_recvlogical + wal2json",
            "≥ 1.00×",
            vs_json,
            "×",
            |m| m >= 1.0,
        );
        check(
            "walsender busy serving capture (pgbench)",
            "≥ 0.90",
            busy("pgbench"),
            "",
            |m| m >= 0.9,
        );
        check(
            "walsender busy serving capture (wide: large rows)",
            "≥ 0.95",
            busy("wide"),
            "",
            |m| m >= 0.95,
        );
        check(
            "stored bytes vs wal2json's file",
            "≤ 0.10×",
            bytes,
            "×",
            |m| m <= 0.1,
        );
        check(
            "p99 commit→durable at 2000 tx/s",
            "≤ 20 ms",
            p99,
            " ms",
            |m| m <= 20.0,
        );
        check("snapshot load vs raw COPY", "≥ 0.90×", copy, "×", |m| {
            m >= 0.9
        });
        check(
            "restore (snapshot + pgbench changes) vs COPY of as many rows",
            "≥ 0.50×",
            replay,
            "×",
            |m| m >= 0.5,
        );
        check(
            "peak RSS of tidemark compact (its own process)",
            "≤ 64 MiB",
            compaction_rss,
            " MiB",
            |m| m <= 64.0,
        );
        check(
            &format!("peak RSS, {big_mib} MiB transaction"),
            "≤ 64 MiB",
            rss,
            " MiB",
            |m| m <= 64.0,
        );
    }

    /// The latency results, lowest rate first.
    pub(super) fn latencies(&self) -> Vec<&LatencyResult> {
        let mut all: Vec<&LatencyResult> = self.latency.values().collect();
        all.sort_by_key(|l| l.offered_tx_per_s);
        all
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<38} {:>14} {:>16} {:>6}",
            "target", "goal", "measured", "met"
        );
        for t in &self.targets {
            let met = if t.met { "yes" } else { "NO" };
            let _ = writeln!(
                out,
                "{:<38} {:>14} {:>16} {:>6}",
                t.name, t.target, t.measured, met
            );
        }
        for (name, d) in &self.capture.scenarios {
            let _ = writeln!(
                out,
                "drain {name}: tidemark {:.0} changes/s ({:.1} MB/s of WAL), pg_recvlogical {:.0}/s, wal2json {:.0}/s",
                d.changes_per_s, d.mb_per_s, d.pg_recvlogical_changes_per_s, d.wal2json_changes_per_s
            );
        }
        for l in self.latencies() {
            let _ = writeln!(
                out,
                "latency at {} tx/s: durable p50/p95/p99 {:.1}/{:.1}/{:.1} ms, in the store p99 {:.0} ms{}",
                l.offered_tx_per_s,
                l.durable_p50_ms,
                l.durable_p95_ms,
                l.durable_p99_ms,
                l.archive_p99_ms,
                l.kafka_p99_ms.map_or(String::new(), |k| format!(", in Kafka p50 {:.1} p99 {k:.1} ms", l.kafka_p50_ms.unwrap_or(f64::NAN)))
            );
        }
        if let Some(r) = &self.restore {
            let _ = writeln!(
                out,
                "restore: {} rows loaded in {:.2}s (raw COPY {:.2}s, pg_restore {:.2}s); with {} changes {:.2}s (COPY of as many rows {:.2}s: {:.2}x)",
                r.rows, r.load_seconds, r.copy_seconds, r.pg_restore_seconds, r.changes, r.total_seconds, r.copy_all_seconds, r.restore_vs_copy
            );
        }
        if let Some(k) = &self.kafka {
            let _ = writeln!(out, "kafka: {:.0} events/s", k.events_per_s);
        }
        out
    }
}

/// The command line as the report shows it: `--source-url` may carry a
/// password, so its value is never written out.
fn shown_command(args: impl Iterator<Item = String>) -> String {
    let mut shown = Vec::new();
    let mut hide_next = false;
    for arg in args {
        if hide_next {
            shown.push("<source-url>".to_string());
            hide_next = false;
        } else if arg == "--source-url" {
            hide_next = true;
            shown.push(arg);
        } else if arg.starts_with("--source-url=") {
            shown.push("--source-url=<source-url>".to_string());
        } else {
            shown.push(arg);
        }
    }
    shown.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_url_never_reaches_the_report() {
        let args = |line: &str| {
            line.split(' ')
                .map(String::from)
                .collect::<Vec<_>>()
                .into_iter()
        };
        let shown = shown_command(args(
            "tidemark bench --source-url postgres://u:hunter2@db/app --rounds 1",
        ));
        assert_eq!(shown, "tidemark bench --source-url <source-url> --rounds 1");
        let shown = shown_command(args(
            "tidemark bench --source-url=postgres://u:hunter2@db/app",
        ));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
