//! What `tidemark bench` measured: the JSON shape, the table on stdout, and
//! the markdown report with its SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;
use svg::node::element::{Line, Rectangle, Text};
use svg::Document;

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
        let busy = capture
            .scenarios
            .get("pgbench")
            .and_then(|d| d.walsender_busy);
        let copy = self.restore.as_ref().map(|r| r.ratio_vs_copy);
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
            busy,
            "",
            |m| m >= 0.9,
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
    fn latencies(&self) -> Vec<&LatencyResult> {
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
                "restore: {} rows loaded in {:.2}s (raw COPY {:.2}s, pg_restore {:.2}s), {} changes replayed at {:.0}/s",
                r.rows, r.load_seconds, r.copy_seconds, r.pg_restore_seconds, r.changes, r.changes_per_s
            );
        }
        if let Some(k) = &self.kafka {
            let _ = writeln!(out, "kafka: {:.0} events/s", k.events_per_s);
        }
        out
    }

    /// The markdown report; charts are written beside it.
    pub fn write_report(&self, path: &Path) -> std::io::Result<()> {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("bench");
        let dir = path.parent().unwrap_or(Path::new("."));
        let throughput = format!("{stem}-throughput.svg");
        let latency = format!("{stem}-latency.svg");
        svg::save(dir.join(&throughput), &self.throughput_chart())?;
        svg::save(dir.join(&latency), &self.latency_chart())?;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# tidemark bench\n\n`{}` on {} CPUs; medians of {} rounds.\n",
            self.command, self.cpus, self.rounds
        );
        let _ = writeln!(
            md,
            "## Targets\n\n| target | goal | measured | met |\n|---|---|---|---|"
        );
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                t.name,
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(md, "\n## Capture drain\n\nA `tidemark capture` process, timed until the slot's `confirmed_flush_lsn` reaches the backlog's end; walsender busy is its CPU time over its lifetime (`/proc/<pid>/stat`), as a share of one core.\n\n![throughput]({throughput})\n\n| scenario | tidemark changes/s | MB/s of WAL | pg_recvlogical changes/s | wal2json changes/s | ×pg_recvlogical (spread) | ×wal2json | bytes ÷ wal2json | walsender busy: tidemark / pg_recvlogical |\n|---|---|---|---|---|---|---|---|---|");
        let busy = |b: Option<f64>| b.map_or("?".to_string(), |b| format!("{b:.2}"));
        for (name, d) in &self.capture.scenarios {
            let _ = writeln!(
                md,
                "| {name} | {:.0} | {:.1} | {:.0} | {:.0} | {:.2} ({:.2}–{:.2}) | {:.2} | {:.3} | {} / {} |",
                d.changes_per_s,
                d.mb_per_s,
                d.pg_recvlogical_changes_per_s,
                d.wal2json_changes_per_s,
                d.ratio_vs_pg_recvlogical,
                d.ratio_vs_pg_recvlogical_spread[0],
                d.ratio_vs_pg_recvlogical_spread[1],
                d.ratio_vs_wal2json,
                d.bytes_ratio_vs_wal2json,
                busy(d.walsender_busy),
                busy(d.pg_recvlogical_walsender_busy)
            );
        }
        let _ = writeln!(md, "\n## Latency\n\n![latency]({latency})\n\n| offered tx/s | achieved | durable p50 / p95 / p99 ms | in the store p50 / p95 / p99 ms | in Kafka p50 / p99 ms |\n|---|---|---|---|---|");
        for l in self.latencies() {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.1} / {:.1} / {:.1} | {:.0} / {:.0} / {:.0} | {} |",
                l.offered_tx_per_s,
                l.achieved_tx_per_s,
                l.durable_p50_ms,
                l.durable_p95_ms,
                l.durable_p99_ms,
                l.archive_p50_ms,
                l.archive_p95_ms,
                l.archive_p99_ms,
                l.kafka_p99_ms.map_or("-".into(), |k| format!(
                    "{:.1} / {k:.1}",
                    l.kafka_p50_ms.unwrap_or(f64::NAN)
                ))
            );
        }
        if let Some(r) = &self.restore {
            let _ = writeln!(md, "\n## Restore\n\n| | seconds | rate |\n|---|---|---|");
            let _ = writeln!(
                md,
                "| tidemark snapshot load ({} rows) | {:.2} | {:.0} rows/s |",
                r.rows, r.load_seconds, r.rows_per_s
            );
            let _ = writeln!(
                md,
                "| raw `COPY FROM` + primary key | {:.2} | {:.0} rows/s |",
                r.copy_seconds,
                r.rows as f64 / r.copy_seconds
            );
            let _ = writeln!(
                md,
                "| pg_restore of pg_dump | {:.2} | {:.0} rows/s |",
                r.pg_restore_seconds,
                r.rows as f64 / r.pg_restore_seconds
            );
            let _ = writeln!(
                md,
                "| tidemark change replay ({} changes) | {:.2} | {:.0} changes/s |",
                r.changes, r.replay_seconds, r.changes_per_s
            );
            let c = &r.compaction;
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            let _ = writeln!(
                md,
                "| `tidemark compact` to the same point (restore to it: {:.2} s) | {:.2} | tidemark {:.1} MiB peak RSS, read {:.0} MiB, wrote {:.0} MiB; its scratch server {:.1} MiB peak RSS (all processes), read {:.0} MiB, wrote {:.0} MiB |",
                r.total_seconds,
                c.seconds,
                c.peak_rss_mib,
                mib(c.read_bytes),
                mib(c.written_bytes),
                c.children_peak_rss_mib,
                mib(c.children_read_bytes),
                mib(c.children_written_bytes)
            );
        }
        if let Some(k) = &self.kafka {
            let _ = writeln!(md, "\n## Kafka\n\n{} events in {:.2}s: {:.0} events/s; p99 commit→in-Kafka at 2000 tx/s: {}.", k.events, k.seconds, k.events_per_s, k.commit_to_kafka_p99_ms.map_or("not measured".into(), |p| format!("{p:.1} ms")));
        }
        let _ = writeln!(md, "\n## Peak RSS\n\n`big_transaction` is a `tidemark capture` process and `compaction` a `tidemark compact` process of their own; the other phases run in the bench process, so their peaks include what earlier phases left allocated.\n\n| phase | MiB |\n|---|---|");
        for (phase, mib) in &self.memory.phases {
            let _ = writeln!(md, "| {phase} | {mib:.1} |");
        }
        std::fs::write(path, md)
    }

    fn throughput_chart(&self) -> Document {
        let groups = self
            .capture
            .scenarios
            .iter()
            .map(|(name, d)| {
                (
                    name.clone(),
                    vec![
                        ("tidemark".to_string(), d.changes_per_s),
                        (
                            "pg_recvlogical (limit)".to_string(),
                            d.pg_recvlogical_changes_per_s,
                        ),
                        ("wal2json".to_string(), d.wal2json_changes_per_s),
                    ],
                )
            })
            .collect();
        bar_chart("Capture drain rate (changes/s)", groups)
    }

    fn latency_chart(&self) -> Document {
        let groups = self
            .latencies()
            .into_iter()
            .map(|l| {
                (
                    format!("{} tx/s", l.offered_tx_per_s),
                    vec![
                        ("p50".to_string(), l.durable_p50_ms),
                        ("p95".to_string(), l.durable_p95_ms),
                        ("p99".to_string(), l.durable_p99_ms),
                    ],
                )
            })
            .collect();
        bar_chart("Commit → durable in the log (ms)", groups)
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

const COLORS: [&str; 3] = ["#2b6cb0", "#a0aec0", "#dd6b20"];

/// Grouped bars, one color per series, values printed above the bars.
fn bar_chart(title: &str, groups: Vec<(String, Vec<(String, f64)>)>) -> Document {
    let (width, height, top, bottom, left) = (720.0, 360.0, 50.0, 60.0, 40.0);
    let max = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|(_, v)| *v))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let plot_height = height - top - bottom;
    let group_width = (width - left * 2.0) / groups.len().max(1) as f64;
    let mut document = Document::new()
        .set("viewBox", (0, 0, width, height))
        .set("font-family", "sans-serif")
        .set("font-size", 12)
        .add(
            Text::new(title)
                .set("x", left)
                .set("y", 24)
                .set("font-size", 16),
        );
    document = document.add(
        Line::new()
            .set("x1", left)
            .set("x2", width - left)
            .set("y1", height - bottom)
            .set("y2", height - bottom)
            .set("stroke", "#333"),
    );
    for (g, (label, bars)) in groups.iter().enumerate() {
        let x0 = left + g as f64 * group_width;
        let bar_width = group_width * 0.8 / bars.len().max(1) as f64;
        for (b, (_, value)) in bars.iter().enumerate() {
            let value = if value.is_finite() { *value } else { 0.0 };
            let h = plot_height * value / max;
            let x = x0 + group_width * 0.1 + b as f64 * bar_width;
            document = document
                .add(
                    Rectangle::new()
                        .set("x", x)
                        .set("y", height - bottom - h)
                        .set("width", bar_width * 0.9)
                        .set("height", h)
                        .set("fill", COLORS[b % COLORS.len()]),
                )
                .add(
                    Text::new(format_value(value))
                        .set("x", x + bar_width * 0.45)
                        .set("y", height - bottom - h - 4.0)
                        .set("text-anchor", "middle")
                        .set("font-size", 10),
                );
        }
        document = document.add(
            Text::new(label.clone())
                .set("x", x0 + group_width / 2.0)
                .set("y", height - bottom + 18.0)
                .set("text-anchor", "middle"),
        );
    }
    if let Some((_, bars)) = groups.first() {
        for (b, (name, _)) in bars.iter().enumerate() {
            let x = left + b as f64 * 200.0;
            document = document
                .add(
                    Rectangle::new()
                        .set("x", x)
                        .set("y", height - 24.0)
                        .set("width", 12)
                        .set("height", 12)
                        .set("fill", COLORS[b % COLORS.len()]),
                )
                .add(
                    Text::new(name.clone())
                        .set("x", x + 18.0)
                        .set("y", height - 14.0),
                );
        }
    }
    document
}

fn format_value(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
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
