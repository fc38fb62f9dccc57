//! The single writer of the segment log, and its group-commit thread.
//!
//! Why the resume LSN it publishes is safe to confirm: it is the segment
//! index's ack LSN as of the last fsync that returned, and that LSN moves only
//! at the end of a finished transaction or at a Progress record, both
//! appended after everything they cover. Capture confirms nothing else.
//!
//! What a crash leaves, at any instant:
//! - Mid-append: a torn last record. Opening scans the last segment, cuts it
//!   back to the last whole record (each carries a CRC) and fsyncs the cut.
//!   Only fsynced positions were confirmed, so the server resends the rest.
//! - Mid-roll, before the Seal record is fsynced: the segment is not sealed,
//!   so opening carries on appending to it; a torn Seal is cut like any torn
//!   record.
//! - After the seal, before the next segment's header and directory entry
//!   are durable: the new file is missing or shorter than its header. Opening
//!   creates it again at the sealed segment's resume LSN, so a sealed segment
//!   is never written again and the chain has no gap.
//! - After the new segment is durable: an ordinary open segment. Each
//!   capture session starts with a Resume record, so readers drop any
//!   transaction left unfinished before it; the server sends those whole.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use super::record::{Record, SegmentIndex};
use super::segment::{self, SegmentReader, Tail, HEADER_LEN};
use super::syncer::{SyncRequest, Syncer};
use super::LogError;
use crate::base::position::EndLsn;

/// Userspace buffer size: writes reach the kernel in chunks of about this much.
const WRITE_BUFFER: usize = 1 << 20;

/// What opening the log found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of a torn or corrupt tail cut from the last segment.
    pub truncated_bytes: u64,
    /// The LSN from which the server must resend: everything before it is durable here.
    pub resume_lsn: EndLsn,
    /// Whether the log has never finished a transaction or recorded progress.
    pub empty: bool,
}

pub struct LogWriter {
    dir: PathBuf,
    _lock: File,
    file: File,
    seq: u64,
    /// Bytes in the current segment, buffered ones included.
    len: u64,
    buf: Vec<u8>,
    index: SegmentIndex,
    segment_size: u64,
    durable_ack: EndLsn,
    /// The newest sealed segment (0 if none was sealed by this writer).
    sealed_seq: u64,
    /// Open transactions and relation definitions, for the next segment's start.
    openings: super::openings::Openings,
}

impl LogWriter {
    /// Opens the log in `dir`, creating it if needed, and repairs a torn tail.
    pub fn open(dir: &Path, segment_size: u64) -> Result<(LogWriter, Recovery), LogError> {
        let dir_err = |source| LogError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let lock = lock_dir(dir)?;

        let segments = segment::list(dir)?;
        let mut truncated_bytes = 0;
        let (seq, file, len, index) = match segments.last() {
            None => create_segment(dir, 1, EndLsn::default(), EndLsn::default())?,
            Some((seq, path)) => match SegmentReader::open(path)? {
                // Created by a roll that a crash cut short: the sealed segment before it
                // is still here (it is uploaded only after the roll completes).
                None => {
                    let base = match segments.len().checked_sub(2).map(|i| &segments[i].1) {
                        Some(prev) => sealed_ack(prev)?,
                        None => EndLsn::default(),
                    };
                    create_segment(dir, *seq, base, base)?
                }
                Some(mut reader) => {
                    let scan = segment::scan(&mut reader)?;
                    let io_err = |source| LogError::Io {
                        path: path.clone(),
                        source,
                    };
                    if scan.sealed {
                        create_segment(dir, seq + 1, scan.index.ack_lsn, scan.index.ack_lsn)?
                    } else {
                        let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
                        if let Tail::Torn { offset, problem } = &scan.tail {
                            let file_len = file.metadata().map_err(io_err)?.len();
                            truncated_bytes = file_len - offset;
                            tracing::warn!(
                                segment = %path.display(),
                                offset,
                                %problem,
                                cut_bytes = truncated_bytes,
                                "cutting the torn tail of the log back to the last whole record"
                            );
                            file.set_len(*offset).map_err(io_err)?;
                            file.sync_all().map_err(io_err)?;
                        }
                        (*seq, file, scan.valid_end, scan.index)
                    }
                }
            },
        };
        let resume_lsn = index.ack_lsn;
        let empty = resume_lsn == EndLsn::default();
        let mut writer = LogWriter {
            dir: dir.to_path_buf(),
            _lock: lock,
            file,
            seq,
            len,
            buf: Vec::with_capacity(WRITE_BUFFER),
            index,
            segment_size,
            durable_ack: resume_lsn,
            sealed_seq: seq - 1,
            openings: super::openings::Openings::new(resume_lsn),
        };
        writer.seek_end()?;
        Ok((
            writer,
            Recovery {
                truncated_bytes,
                resume_lsn,
                empty,
            },
        ))
    }

    fn seek_end(&mut self) -> Result<(), LogError> {
        use std::io::Seek;
        let len = self.len;
        self.file
            .seek(std::io::SeekFrom::Start(len))
            .map_err(|source| self.io_error(source))?;
        Ok(())
    }

    fn io_error(&self, source: std::io::Error) -> LogError {
        LogError::Io {
            path: self.dir.join(segment::file_name(self.seq)),
            source,
        }
    }

    /// Appends a record; it is durable once a later `sync` returns.
    pub fn append(&mut self, record: &Record) -> Result<(), LogError> {
        let size = record.encoded_len() as u64;
        if self.index.records > 0
            && self.len + size + super::record::SEAL_FRAME_LEN as u64 > self.segment_size
        {
            self.roll()?;
        }
        record.encode_into(&mut self.buf);
        self.len += size;
        self.index.add(record);
        self.openings.observe(record);
        if self.buf.len() >= WRITE_BUFFER {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), LogError> {
        if !self.buf.is_empty() {
            self.file
                .write_all(&self.buf)
                .map_err(|source| self.io_error(source))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Makes everything appended durable and returns the new durable resume LSN.
    pub fn sync(&mut self) -> Result<EndLsn, LogError> {
        self.write_buffer()?;
        self.file
            .sync_data()
            .map_err(|source| self.io_error(source))?;
        self.durable_ack = self.index.ack_lsn;
        Ok(self.durable_ack)
    }

    /// Writes what is buffered, and returns what makes it durable: a handle
    /// on the segment file and the resume LSN all written to it covers.
    fn written(&mut self) -> Result<SyncRequest, LogError> {
        self.write_buffer()?;
        let file = self.file.try_clone().map_err(|e| self.io_error(e))?;
        Ok(SyncRequest {
            file,
            path: self.dir.join(segment::file_name(self.seq)),
            ack: self.index.ack_lsn,
        })
    }

    /// The resume LSN over everything appended, durable or not.
    pub fn appended_ack(&self) -> EndLsn {
        self.index.ack_lsn
    }

    /// Seals the current segment if it holds any record, so it can be archived.
    pub fn seal(&mut self) -> Result<(), LogError> {
        if self.index.records > 0 {
            self.roll()?;
        }
        Ok(())
    }

    /// The newest sealed segment: every segment up to it is complete.
    pub fn sealed_seq(&self) -> u64 {
        self.sealed_seq
    }

    /// Seals the current segment and starts the next one.
    fn roll(&mut self) -> Result<(), LogError> {
        let seal = self.index.seal_record();
        seal.encode_into(&mut self.buf);
        self.sync()?;
        let base = self.index.ack_lsn;
        let restart = self.openings.next_segment(base);
        let (seq, file, len, index) = create_segment(&self.dir, self.seq + 1, base, restart)?;
        tracing::debug!(segment = %segment::file_name(self.seq), records = self.index.records, "sealed segment");
        self.sealed_seq = self.seq;
        self.seq = seq;
        self.file = file;
        self.len = len;
        self.index = index;
        // A reader starting here learns every table's columns before any change.
        let schema: Vec<Record> = self.openings.schema_records().collect();
        for record in &schema {
            record.encode_into(&mut self.buf);
            self.len += record.encoded_len() as u64;
            self.index.add(record);
        }
        Ok(())
    }
}

/// Takes the log dir's lock: one writer of the log (and of its archive) at a time.
/// The lock is held until the returned file is dropped.
pub fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let dir_err = |source| LogError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(dir_err)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(LogError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(dir_err(source)),
    }
}

/// Whether a process holds the log dir's lock (a capture runs), asked of
/// /proc/locks rather than by trying the lock: trying would race a capture
/// that starts at that instant.
pub fn lock_held(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(inode) = std::fs::metadata(dir.join("LOCK")).map(|m| m.ino()) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    // Lines read "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; the 6th field is dev:inode.
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields
                .get(5)
                .and_then(|f| f.rsplit(':').next())
                .is_some_and(|i| i == inode.to_string())
    })
}

fn create_segment(
    dir: &Path,
    seq: u64,
    base_ack: EndLsn,
    restart: EndLsn,
) -> Result<(u64, File, u64, SegmentIndex), LogError> {
    let path = dir.join(segment::file_name(seq));
    let io_err = |source| LogError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io_err)?;
    file.write_all(&segment::header(base_ack, restart))
        .map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    // The new name must be durable too, or a crash could lose the segment's records.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| LogError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    let index = SegmentIndex {
        ack_lsn: base_ack,
        ..SegmentIndex::default()
    };
    Ok((seq, file, HEADER_LEN, index))
}

fn sealed_ack(path: &Path) -> Result<EndLsn, LogError> {
    segment::sealed_index(path)?
        .map(|index| index.ack_lsn)
        .ok_or_else(|| LogError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            problem: super::record::FrameError::Incomplete,
        })
}

/// Runs a `LogWriter` on its own thread with group commit: while one fsync is
/// in flight (on the sync thread, `syncer`), arriving batches are written,
/// and the next fsync covers them all.
pub struct Appender {
    commands: mpsc::Sender<Command>,
    durable: watch::Receiver<EndLsn>,
    sealed: watch::Receiver<u64>,
    thread: JoinHandle<Result<LogWriter, LogError>>,
}

enum Command {
    Append(Vec<Record>),
    Seal,
}

/// Publishes a resume LSN that an fsync has made durable, if it advances:
/// the writer (sealing) and the sync thread both publish. The gauge is set
/// under the watch's lock, before the value is visible, so nothing read from
/// the watch is ever ahead of what it shows.
fn publish_durable(
    lsn: EndLsn,
    durable: &watch::Sender<EndLsn>,
    observed: Option<&watch::Sender<EndLsn>>,
) {
    let advanced = durable.send_if_modified(|d| {
        if lsn <= *d {
            return false;
        }
        metrics::gauge!(crate::telemetry::LOG_DURABLE_LSN).set(lsn.as_u64() as f64);
        *d = lsn;
        true
    });
    if let (true, Some(observed)) = (advanced, observed) {
        observed.send_replace(lsn);
    }
}

/// Batches in flight between capture and the writer thread; bounds capture's memory.
const QUEUE_DEPTH: usize = 8;

impl Appender {
    /// Starts the writer thread; `observed` also receives each new durable LSN.
    pub fn start(writer: LogWriter, observed: Option<watch::Sender<EndLsn>>) -> Appender {
        let (commands, mut rx) = mpsc::channel::<Command>(QUEUE_DEPTH);
        // What the log held when it was opened is durable already.
        metrics::gauge!(crate::telemetry::LOG_DURABLE_LSN).set(writer.durable_ack.as_u64() as f64);
        let (durable_tx, durable) = watch::channel(writer.durable_ack);
        let (durable_tx, observed) = (Arc::new(durable_tx), observed.map(Arc::new));
        let publish = move |lsn| publish_durable(lsn, &durable_tx, observed.as_deref());
        let (sealed_tx, sealed) = watch::channel(writer.sealed_seq);
        let thread = std::thread::Builder::new()
            .name("tidemark-log-writer".into())
            .spawn(move || {
                let mut writer = writer;
                // Syncs run beside the writing: the group of the next is
                // what was written while the last ran.
                let syncer = Syncer::<File>::start(publish.clone());
                let mut requested = writer.durable_ack;
                while let Some(command) = rx.blocking_recv() {
                    let mut next = Some(command);
                    while let Some(command) = next {
                        match command {
                            Command::Append(batch) => {
                                batch.iter().try_for_each(|r| writer.append(r))?
                            }
                            Command::Seal => writer.seal()?,
                        }
                        next = rx.try_recv().ok();
                    }
                    if let Some(failed) = syncer.failure() {
                        return Err(failed);
                    }
                    if writer.appended_ack() > requested {
                        let request = writer.written()?;
                        requested = request.ack;
                        syncer.request(request);
                    }
                    if writer.sealed_seq != *sealed_tx.borrow() {
                        // Sealing fsynced everything before the seal.
                        publish(writer.durable_ack);
                        sealed_tx.send_replace(writer.sealed_seq);
                    }
                }
                syncer.finish()?;
                let lsn = writer.sync()?;
                publish(lsn);
                Ok(writer)
            })
            .expect("spawning the log writer thread");
        Appender {
            commands,
            durable,
            sealed,
            thread,
        }
    }

    /// Queues a batch; waits while the writer is behind. Fails if the writer stopped on an error.
    pub async fn append(&self, batch: Vec<Record>) -> Result<(), ()> {
        self.commands
            .send(Command::Append(batch))
            .await
            .map_err(|_| ())
    }

    /// Asks the writer to seal the current segment (if it holds anything).
    pub async fn seal(&self) -> Result<(), ()> {
        self.commands.send(Command::Seal).await.map_err(|_| ())
    }

    /// The durable resume LSN, updated after each group fsync.
    pub fn durable(&self) -> watch::Receiver<EndLsn> {
        self.durable.clone()
    }

    /// The newest sealed segment's sequence number.
    pub fn sealed(&self) -> watch::Receiver<u64> {
        self.sealed.clone()
    }

    /// Flushes and fsyncs everything queued, and returns the writer (or the error that stopped it).
    pub async fn finish(self) -> Result<LogWriter, LogError> {
        drop(self.commands);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().expect("log writer thread panicked"))
            .await
            .expect("joining the log writer thread")
    }
}

impl LogWriter {
    pub fn durable_ack(&self) -> EndLsn {
        self.durable_ack
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::{EndLsn, Lsn};
    use crate::log::reader::LogReader;
    use crate::log::record::RecordKind;
    use bytes::Bytes;

    fn commit(end: u64) -> Record {
        Record::wal(Lsn(end - 1), crate::source::pgoutput::build::commit(end))
    }

    fn lsns(dir: &Path) -> Vec<u64> {
        let mut reader = LogReader::open(dir).unwrap();
        let mut out = Vec::new();
        while let Some((_, r)) = reader.next_record().unwrap() {
            if r.kind != RecordKind::Seal {
                out.push(r.lsn.0);
            }
        }
        out
    }

    fn last_segment(dir: &Path) -> PathBuf {
        segment::list(dir).unwrap().pop().unwrap().1
    }

    #[test]
    fn a_torn_tail_is_cut_back_to_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, recovery) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        assert!(recovery.empty);
        for end in [10, 20, 30] {
            writer.append(&commit(end)).unwrap();
        }
        assert_eq!(writer.sync().unwrap(), EndLsn(Lsn(30)));
        drop(writer);

        // A partial frame at the end, as a crash mid-write leaves it.
        let path = last_segment(dir.path());
        let whole = std::fs::metadata(&path).unwrap().len();
        let mut partial = Vec::new();
        commit(40).encode_into(&mut partial);
        partial.truncate(partial.len() - 3);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&partial)
            .unwrap();

        let (mut writer, recovery) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.truncated_bytes, partial.len() as u64);
        assert_eq!(recovery.resume_lsn, EndLsn(Lsn(30)));
        assert!(!recovery.empty);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        writer.append(&commit(50)).unwrap();
        writer.sync().unwrap();
        drop(writer);
        assert_eq!(lsns(dir.path()), vec![9, 19, 29, 49]);
    }

    #[test]
    fn a_flipped_byte_in_the_tail_cuts_from_that_record_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        for end in [10, 20, 30] {
            writer.append(&commit(end)).unwrap();
        }
        writer.sync().unwrap();
        drop(writer);
        let path = last_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let second = HEADER_LEN as usize + commit(10).encoded_len() + 12;
        bytes[second] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (_, recovery) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.resume_lsn, EndLsn(Lsn(10)));
        assert_eq!(lsns(dir.path()), vec![9]);
    }

    #[test]
    fn sealed_segments_are_indexed_and_never_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        let big = Bytes::from(vec![b'I'; 300 << 10]);
        for i in 1..=8u64 {
            writer
                .append(&Record::wal(Lsn(i * 100), big.clone()))
                .unwrap();
            writer.append(&commit(i * 100 + 50)).unwrap();
        }
        writer.sync().unwrap();
        drop(writer);
        let segments = segment::list(dir.path()).unwrap();
        assert!(segments.len() >= 3, "rolled: {}", segments.len());
        let (_, first) = &segments[0];
        let index = segment::sealed_index(first)
            .unwrap()
            .expect("the first segment is sealed");
        assert_eq!(index.first_lsn, Some(Lsn(100)));
        assert_eq!(
            index.first_commit_time,
            Some(crate::base::position::PgTimestamp(150))
        );
        assert!(index.ack_lsn >= EndLsn(Lsn(150)));
        let sealed_bytes = std::fs::read(first).unwrap();

        let (mut writer, recovery) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.resume_lsn, EndLsn(Lsn(850)));
        writer.append(&commit(900)).unwrap();
        writer.sync().unwrap();
        drop(writer);
        assert_eq!(std::fs::read(first).unwrap(), sealed_bytes);
        assert_eq!(lsns(dir.path()).last(), Some(&899));
    }

    #[test]
    fn corruption_inside_a_sealed_segment_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        let big = Bytes::from(vec![b'I'; 400 << 10]);
        for i in 1..=6u64 {
            writer
                .append(&Record::wal(Lsn(i * 100), big.clone()))
                .unwrap();
        }
        writer.sync().unwrap();
        drop(writer);
        let (_, first) = segment::list(dir.path()).unwrap().remove(0);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[HEADER_LEN as usize + 100] ^= 1;
        std::fs::write(&first, bytes).unwrap();
        let mut reader = LogReader::open(dir.path()).unwrap();
        let error = loop {
            match reader.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("corruption went unnoticed"),
                Err(e) => break e,
            }
        };
        let text = error.to_string();
        assert!(
            text.contains(&first.display().to_string())
                && text.contains(&format!("byte {HEADER_LEN}")),
            "{text}"
        );
    }

    #[test]
    fn the_resume_lsn_survives_deleting_archived_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        writer.append(&commit(100)).unwrap();
        writer.seal().unwrap();
        writer.append(&commit(200)).unwrap();
        writer.seal().unwrap();
        writer.seal().unwrap(); // nothing new: no empty segment is sealed
        assert_eq!(writer.sealed_seq(), 2);
        drop(writer);
        for (seq, path) in segment::list(dir.path()).unwrap() {
            if seq <= 2 {
                std::fs::remove_file(path).unwrap();
            }
        }
        let (writer, recovery) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovery.resume_lsn, EndLsn(Lsn(200)));
        assert!(!recovery.empty);
        assert_eq!(writer.sealed_seq(), 2);
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = LogWriter::open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(
            LogWriter::open(dir.path(), 1 << 20),
            Err(LogError::Locked { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_durable_lsn_rises_through_syncs_and_rolls_to_the_last_append() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments: rolls publish beside the sync thread.
        let (writer, _) = LogWriter::open(dir.path(), 16 << 10).unwrap();
        let appender = Appender::start(writer, None);
        let mut durable = appender.durable();
        let watcher = tokio::spawn(async move {
            let mut seen = vec![*durable.borrow_and_update()];
            while durable.changed().await.is_ok() {
                seen.push(*durable.borrow_and_update());
            }
            seen
        });
        let ends: Vec<u64> = (1..=4000).map(|i| 100 + 10 * i).collect();
        for batch in ends.chunks(40) {
            appender
                .append(batch.iter().map(|&end| commit(end)).collect())
                .await
                .unwrap();
        }
        let writer = appender.finish().await.unwrap();
        let seen = watcher.await.unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&EndLsn(Lsn(40_100))));
        assert_eq!(writer.durable_ack(), EndLsn(Lsn(40_100)));
        let expected: Vec<u64> = ends.iter().map(|end| end - 1).collect();
        let records: Vec<u64> = lsns(dir.path()).into_iter().filter(|&l| l > 100).collect();
        assert_eq!(records, expected);
    }
}
