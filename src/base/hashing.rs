//! A writer that passes bytes through while counting them and taking their
//! SHA-256: objects are hashed as they are written or read back, never held
//! whole in memory for it.

use std::io::Write;

use sha2::{Digest, Sha256};

pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, the bytes passed, and their SHA-256 in hex.
    pub fn into_parts(self) -> (W, u64, String) {
        (self.inner, self.len, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_hashes_what_passes() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"ab").unwrap();
        writer.write_all(b"c").unwrap();
        let (inner, len, sha256) = writer.into_parts();
        assert_eq!((inner.as_slice(), len), (&b"abc"[..], 3));
        assert_eq!(sha256, hex::encode(Sha256::digest(b"abc")));
    }
}
