//! The markdown report `tidemark bench --report` writes, with its SVG charts.

use std::fmt::Write;
use std::path::Path;

use svg::node::element::{Line, Rectangle, Text};
use svg::Document;

use super::report::Results;

const COLORS: [&str; 3] = ["#2b6cb0", "#a0aec0", "#dd6b20"];

impl Results {
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
        let _ = writeln!(md, "\n## Capture drain\n\nA `tidemark capture` process, timed until the slot's `confirmed_flush_lsn` reaches the backlog's end; walsender busy is its CPU time over its lifetime (its CPU-time clock over `clock_timestamp() - backend_start`), as a share of one core. Each round checkpoints after writing its backlog, as pgbench does.\n\n![throughput]({throughput})\n\n| scenario | tidemark changes/s | MB/s of WAL | pg_recvlogical changes/s | wal2json changes/s | ×pg_recvlogical (spread) | ×wal2json | bytes ÷ wal2json | walsender busy: tidemark / pg_recvlogical |\n|---|---|---|---|---|---|---|---|---|");
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
            let _ = writeln!(md, "\n## Restore\n\nEach `tidemark restore` is a process of its own, into an empty database, beside a binary `COPY FROM` of as many rows plus the primary key. The changes are a pgbench backlog (TPC-B-like, 4 changes per transaction).\n\n| | seconds | rate |\n|---|---|---|");
            let _ = writeln!(
                md,
                "| `tidemark restore` to the snapshot ({} rows) | {:.2} | {:.0} rows/s |",
                r.rows, r.load_seconds, r.rows_per_s
            );
            let _ = writeln!(
                md,
                "| raw `COPY FROM` + primary key, as many rows | {:.2} | {:.0} rows/s |",
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
                "| `tidemark restore --to latest` ({} rows + {} changes) | {:.2} | {:.0} changes/s past the snapshot's time |",
                r.rows, r.changes, r.total_seconds, r.changes_per_s
            );
            let _ = writeln!(
                md,
                "| raw `COPY FROM` + primary key of {} rows | {:.2} | restore at {:.2}× its speed |",
                r.rows + r.changes,
                r.copy_all_seconds,
                r.restore_vs_copy
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
        let _ = writeln!(md, "\n## Peak RSS\n\nEach phase but `kafka` is a tidemark process of its own, sampled from /proc while it runs: `tidemark capture` for the drains and `big_transaction`, `tidemark restore` (the larger of its two runs) and `tidemark compact`. `kafka` runs in the bench process, so its peak includes what earlier phases left allocated.\n\n| phase | MiB |\n|---|---|");
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
