//! The segment writer: MB/s appending WAL records, with an fsync per 1 MiB
//! (capture's group commit under a steady stream) and without any.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tidemark::base::position::Lsn;
use tidemark::log::{LogWriter, Record};

const RECORD: usize = 200;
const TOTAL: usize = 16 << 20;

fn bench(c: &mut Criterion) {
    let payload = Bytes::from(vec![b'x'; RECORD]);
    let records: Vec<Record> = (0..TOTAL / RECORD)
        .map(|i| Record::wal(Lsn(1 + i as u64 * RECORD as u64), payload.clone()))
        .collect();
    let mut group = c.benchmark_group("segment_writer");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);
    for (name, sync_every) in [("fsync_per_mib", Some(1usize << 20)), ("no_fsync", None)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    let (mut writer, _) = LogWriter::open(dir.path(), 64 << 20).unwrap();
                    let mut since_sync = 0;
                    for record in &records {
                        writer.append(record).unwrap();
                        since_sync += RECORD;
                        if sync_every.is_some_and(|every| since_sync >= every) {
                            writer.sync().unwrap();
                            since_sync = 0;
                        }
                    }
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
