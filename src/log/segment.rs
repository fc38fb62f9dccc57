//! Segment files: a 16-byte header, then records; a sealed segment ends in a Seal record.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::BytesMut;

use super::record::{self, FrameError, Record, RecordKind, SegmentIndex, FRAME_HEADER};
use super::LogError;
use crate::base::position::{EndLsn, Lsn};

pub const MAGIC: &[u8; 8] = b"TIDEMARK";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 32;
const EXTENSION: &str = "seg";

/// A segment header. `base_ack` is the log's resume LSN when the segment was
/// created, so each segment covers resume positions (base_ack, its own ack].
/// `restart` is the base of the segment where the oldest transaction still
/// open at this segment's start began: reading from there sees it whole.
pub fn header(base_ack: EndLsn, restart: EndLsn) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[24..32].copy_from_slice(&restart.as_u64().to_le_bytes());
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base_ack.as_u64().to_le_bytes());
    h
}

pub fn file_name(seq: u64) -> String {
    format!("{seq:016X}.{EXTENSION}")
}

/// The segments in `dir`, oldest first, as (sequence number, path).
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LogError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut segments = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| LogError::Dir {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            continue;
        }
        let seq = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| u64::from_str_radix(s, 16).ok());
        if let Some(seq) = seq {
            segments.push((seq, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// How a read ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after the last record.
    Clean,
    /// A partial or corrupt record starts at this offset.
    Torn { offset: u64, problem: FrameError },
}

/// Reads records one by one, verifying each CRC.
pub struct SegmentReader {
    path: PathBuf,
    base_ack: EndLsn,
    restart: EndLsn,
    reader: BufReader<File>,
    offset: u64,
    tail: Option<Tail>,
}

impl SegmentReader {
    /// Opens a segment and checks its header. A file shorter than the header is
    /// reported as `Ok(None)`: it was being created when capture stopped.
    pub fn open(path: &Path) -> Result<Option<SegmentReader>, LogError> {
        let io_err = |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let mut head = [0u8; HEADER_LEN as usize];
        let mut read = 0;
        while read < head.len() {
            match file.read(&mut head[read..]).map_err(io_err)? {
                0 => return Ok(None),
                n => read += n,
            }
        }
        if &head[..8] != MAGIC {
            return Err(LogError::NotASegment {
                path: path.to_path_buf(),
            });
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(LogError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        Ok(Some(SegmentReader {
            path: path.to_path_buf(),
            restart: EndLsn(Lsn(u64::from_le_bytes(
                head[24..32].try_into().expect("8 bytes"),
            ))),
            base_ack: EndLsn(Lsn(u64::from_le_bytes(
                head[16..24].try_into().expect("8 bytes"),
            ))),
            reader: BufReader::with_capacity(1 << 20, file),
            offset: HEADER_LEN,
            tail: None,
        }))
    }

    pub fn seek(&mut self, offset: u64) -> Result<(), LogError> {
        self.reader
            .seek(SeekFrom::Start(offset))
            .map_err(|source| LogError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.offset = offset;
        self.tail = None;
        Ok(())
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The log's resume LSN when this segment was created.
    pub fn base_ack(&self) -> EndLsn {
        self.base_ack
    }

    /// Where to start reading so every transaction open at this segment's start is seen whole.
    pub fn restart(&self) -> EndLsn {
        self.restart
    }

    /// How reading ended, once `next_record` has returned `None`.
    pub fn tail(&self) -> Option<&Tail> {
        self.tail.as_ref()
    }

    /// The next whole record and its offset; `None` at the end or at the first bad frame.
    pub fn next_record(&mut self) -> Result<Option<(u64, Record)>, LogError> {
        if self.tail.is_some() {
            return Ok(None);
        }
        let start = self.offset;
        match self.read_frame() {
            Ok(Some(record)) => Ok(Some((start, record))),
            Ok(None) => {
                self.tail = Some(Tail::Clean);
                Ok(None)
            }
            Err(FrameErrorOrIo::Frame(problem)) => {
                self.tail = Some(Tail::Torn {
                    offset: start,
                    problem,
                });
                Ok(None)
            }
            Err(FrameErrorOrIo::Io(source)) => Err(LogError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Like `next_record`, but any bad frame is an error naming the file and offset.
    pub fn next_record_strict(&mut self) -> Result<Option<(u64, Record)>, LogError> {
        let next = self.next_record()?;
        if let Some(Tail::Torn { offset, problem }) = &self.tail {
            return Err(LogError::Corrupt {
                path: self.path.clone(),
                offset: *offset,
                problem: problem.clone(),
            });
        }
        Ok(next)
    }

    fn read_frame(&mut self) -> Result<Option<Record>, FrameErrorOrIo> {
        let mut header = [0u8; FRAME_HEADER];
        match read_full(&mut self.reader, &mut header)? {
            0 => return Ok(None),
            n if n < FRAME_HEADER => return Err(FrameError::Incomplete.into()),
            _ => {}
        }
        let len = record::body_len(&header)?;
        let mut body = BytesMut::zeroed(len);
        if read_full(&mut self.reader, &mut body)? < len {
            return Err(FrameError::Incomplete.into());
        }
        let record = record::decode_body(&header, body.freeze())?;
        self.offset += (FRAME_HEADER + len) as u64;
        Ok(Some(record))
    }
}

enum FrameErrorOrIo {
    Frame(FrameError),
    Io(io::Error),
}

impl From<FrameError> for FrameErrorOrIo {
    fn from(e: FrameError) -> Self {
        FrameErrorOrIo::Frame(e)
    }
}

impl From<io::Error> for FrameErrorOrIo {
    fn from(e: io::Error) -> Self {
        FrameErrorOrIo::Io(e)
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match reader.read(&mut buf[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

/// The index of a sealed segment, read from its trailing Seal record.
pub fn sealed_index(path: &Path) -> Result<Option<SegmentIndex>, LogError> {
    let io_err = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let seal_len = record::SEAL_FRAME_LEN as u64;
    if len < HEADER_LEN + seal_len {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(len - seal_len)).map_err(io_err)?;
    let mut buf = vec![0u8; record::SEAL_FRAME_LEN];
    file.read_exact(&mut buf).map_err(io_err)?;
    Ok(match record::decode(&buf) {
        Ok((rec, _)) if rec.kind == RecordKind::Seal => SegmentIndex::from_seal(&rec),
        _ => None,
    })
}

/// What a full read of a segment found.
pub struct Scan {
    pub index: SegmentIndex,
    pub sealed: bool,
    /// Offset just past the last whole record.
    pub valid_end: u64,
    pub tail: Tail,
}

/// Reads a whole segment, building its index; a bad frame ends the scan.
pub fn scan(reader: &mut SegmentReader) -> Result<Scan, LogError> {
    let mut index = SegmentIndex {
        ack_lsn: reader.base_ack(),
        ..SegmentIndex::default()
    };
    let mut sealed = false;
    while let Some((_, record)) = reader.next_record()? {
        sealed = record.kind == RecordKind::Seal;
        index.add(&record);
    }
    Ok(Scan {
        index,
        sealed,
        valid_end: reader.offset(),
        tail: reader.tail().cloned().unwrap_or(Tail::Clean),
    })
}

/// A sealed segment's header fields and index.
pub struct Sealed {
    pub base_ack: EndLsn,
    pub restart: EndLsn,
    pub index: SegmentIndex,
}

/// Checks a whole sealed segment: every record's CRC, nothing after the Seal,
/// and a Seal that agrees with the records.
pub fn verify_sealed(path: &Path) -> Result<Sealed, LogError> {
    let not_sealed = |problem: &str| LogError::NotSealed {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    let mut reader = SegmentReader::open(path)?
        .ok_or_else(|| not_sealed("it is shorter than a segment header"))?;
    let mut index = SegmentIndex {
        ack_lsn: reader.base_ack(),
        ..SegmentIndex::default()
    };
    let mut sealed = false;
    while let Some((_, record)) = reader.next_record_strict()? {
        if sealed {
            return Err(not_sealed("it has records after its Seal record"));
        }
        if record.kind == RecordKind::Seal {
            if SegmentIndex::from_seal(&record) != Some(index) {
                return Err(not_sealed("its Seal record disagrees with its records"));
            }
            sealed = true;
        } else {
            index.add(&record);
        }
    }
    if !sealed {
        return Err(not_sealed("it has no Seal record"));
    }
    Ok(Sealed {
        base_ack: reader.base_ack(),
        restart: reader.restart(),
        index,
    })
}
