//! The pgoutput decoder on real PostgreSQL 15 bytes: messages/s and MB/s.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidemark::source::pgoutput::{decode, Message};

/// Each message, and whether it sits inside a streamed block (where messages carry an xid).
fn messages(hex_lines: &str) -> Vec<(Bytes, bool)> {
    let mut in_block = false;
    hex_lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let bytes = Bytes::from(hex::decode(l.trim()).expect("fixture lines are hex"));
            let here = in_block;
            match decode(&bytes, in_block).expect("fixtures decode") {
                Message::StreamStart(_) => in_block = true,
                Message::StreamStop => in_block = false,
                _ => {}
            }
            (bytes, here)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pgoutput_decode");
    for (name, fixture) in [
        (
            "v1_mixed",
            include_str!("../tests/fixtures/pgoutput/v1-mixed.hex"),
        ),
        (
            "v2_streamed",
            include_str!("../tests/fixtures/pgoutput/v2-streamed.hex"),
        ),
    ] {
        let messages = messages(fixture);
        let bytes: usize = messages.iter().map(|(m, _)| m.len()).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(format!("{name}_bytes"), |b| {
            b.iter(|| {
                for (m, in_block) in &messages {
                    std::hint::black_box(decode(m, *in_block).unwrap());
                }
            })
        });
        group.throughput(Throughput::Elements(messages.len() as u64));
        group.bench_function(format!("{name}_messages"), |b| {
            b.iter(|| {
                for (m, in_block) in &messages {
                    std::hint::black_box(decode(m, *in_block).unwrap());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
