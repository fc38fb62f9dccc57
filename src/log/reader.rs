//! Reading the whole log in order, across segments.

use std::path::{Path, PathBuf};

use super::record::Record;
use super::segment::{self, SegmentReader};
use super::LogError;

/// Where a record sits: segment sequence number and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

/// Iterates every record of the log, oldest first. Every segment but the last
/// must be whole; the last may end in a partial record that capture is still
/// writing (or that recovery will cut), and reading stops before it.
pub struct LogReader {
    segments: Vec<(u64, PathBuf)>,
    next_segment: usize,
    current: Option<(u64, SegmentReader)>,
}

impl LogReader {
    pub fn open(dir: &Path) -> Result<LogReader, LogError> {
        if !dir.is_dir() {
            return Err(LogError::Missing {
                path: dir.to_path_buf(),
            });
        }
        Ok(LogReader {
            segments: segment::list(dir)?,
            next_segment: 0,
            current: None,
        })
    }

    /// Opens the log positioned at `position`.
    pub fn open_at(dir: &Path, position: Position) -> Result<LogReader, LogError> {
        let mut reader = LogReader::open(dir)?;
        reader.next_segment = reader
            .segments
            .iter()
            .position(|(seq, _)| *seq == position.seq)
            .ok_or_else(|| LogError::Missing {
                path: dir.join(segment::file_name(position.seq)),
            })?;
        reader.open_next()?;
        if let Some((_, segment)) = reader.current.as_mut() {
            segment.seek(position.offset)?;
        }
        Ok(reader)
    }

    fn open_next(&mut self) -> Result<bool, LogError> {
        while let Some((seq, path)) = self.segments.get(self.next_segment) {
            self.next_segment += 1;
            if let Some(reader) = SegmentReader::open(path)? {
                self.current = Some((*seq, reader));
                return Ok(true);
            }
        }
        self.current = None;
        Ok(false)
    }

    pub fn next_record(&mut self) -> Result<Option<(Position, Record)>, LogError> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let is_last = self.next_segment == self.segments.len();
            let (seq, segment) = self.current.as_mut().expect("a segment is open");
            let next = if is_last {
                segment.next_record()?
            } else {
                segment.next_record_strict()?
            };
            match next {
                Some((offset, record)) => {
                    return Ok(Some((Position { seq: *seq, offset }, record)));
                }
                None => {
                    self.current = None;
                    if is_last {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Follows the log while capture writes it. At the end of what is written,
/// `next_record` returns `None`; called again later, it goes on from there.
pub struct LogTail {
    dir: PathBuf,
    seq: u64,
    current: Option<SegmentReader>,
}

impl LogTail {
    /// Starts at the beginning of segment `seq`.
    pub fn at_segment(dir: &Path, seq: u64) -> LogTail {
        LogTail {
            dir: dir.to_path_buf(),
            seq,
            current: None,
        }
    }

    /// The segment being read.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn next_record(&mut self) -> Result<Option<(Position, Record)>, LogError> {
        loop {
            if self.current.is_none() {
                let path = self.dir.join(segment::file_name(self.seq));
                if !path.exists() {
                    let later = segment::list(&self.dir)?
                        .iter()
                        .any(|(seq, _)| *seq > self.seq);
                    return match later {
                        true => Err(LogError::Missing { path }),
                        false => Ok(None),
                    };
                }
                match SegmentReader::open(&path)? {
                    Some(reader) => self.current = Some(reader),
                    // Being created: its header is not written yet.
                    None => return Ok(None),
                }
            }
            let reader = self.current.as_mut().expect("a segment is open");
            if let Some((offset, record)) = reader.next_record()? {
                return Ok(Some((
                    Position {
                        seq: self.seq,
                        offset,
                    },
                    record,
                )));
            }
            let end = match reader.tail() {
                Some(segment::Tail::Torn { offset, .. }) => *offset,
                _ => reader.offset(),
            };
            let later = segment::list(&self.dir)?
                .into_iter()
                .find(|(seq, _)| *seq > self.seq);
            // Capture seals a segment before it creates the next, so once a
            // later one exists this one is whole: read what it gained since,
            // and any bad frame in it is corruption, not a write in progress.
            reader.seek(end)?;
            let next = if later.is_some() {
                reader.next_record_strict()?
            } else {
                reader.next_record()?
            };
            if let Some((offset, record)) = next {
                return Ok(Some((
                    Position {
                        seq: self.seq,
                        offset,
                    },
                    record,
                )));
            }
            match later {
                Some((seq, _)) => {
                    self.seq = seq;
                    self.current = None;
                }
                None => {
                    reader.seek(end)?;
                    return Ok(None);
                }
            }
        }
    }
}
