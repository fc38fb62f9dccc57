//! Encryption at rest: AES-256-GCM in the STREAM construction (chunked, with
//! the last chunk marked), so objects of any size are encrypted and decrypted
//! in 1 MiB pieces and any truncation, reordering or bit flip fails to decrypt.
//!
//! Object layout: `TMENC1` | key id (8 bytes) | nonce prefix (7 bytes) | chunks,
//! each the ciphertext of up to 1 MiB plus a 16-byte tag. The key id is the
//! first 8 bytes of SHA-256(key): it names the key without revealing it.

use std::io::{Read, Write};

use crate::base::exit::ExitCode;
use aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 6] = b"TMENC1";
const KEY_ID_LEN: usize = 8;
const NONCE_PREFIX_LEN: usize = 7;
pub const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_PREFIX_LEN;
const CHUNK: usize = 1 << 20;
const TAG: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("cannot read the encryption key: {0}; set [archive] encryption_key_file to a file holding 64 hex characters (32 bytes), or encryption_key_env to the name of a variable holding them")]
    KeyUnreadable(String),
    #[error("the encryption key must be 64 hex characters (32 bytes); generate one with `openssl rand -hex 32`")]
    KeyMalformed,
    #[error("{object} is encrypted with key {found}, but the configured key is {configured}; configure the key that wrote the archive")]
    WrongKey {
        object: String,
        found: String,
        configured: String,
    },
    #[error("{object} is encrypted (key {found}) and no key is configured; set [archive] encryption_key_file or encryption_key_env")]
    NoKey { object: String, found: String },
    #[error("{object} does not decrypt: it is damaged or was cut short")]
    Damaged { object: String },
}

impl CryptError {
    pub fn exit_code(&self) -> ExitCode {
        use CryptError::*;
        match self {
            KeyUnreadable(_) | KeyMalformed | WrongKey { .. } | NoKey { .. } => ExitCode::BadInput,
            Damaged { .. } => ExitCode::Failure,
        }
    }
}

/// A loaded key. Its bytes are never printed: Debug shows only the id.
pub struct Key {
    cipher: Aes256Gcm,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

impl Key {
    /// The key an `[archive]` section names, if any. Its bytes are never logged.
    pub fn configured(
        config: &crate::config::ArchiveConfig,
    ) -> Result<Option<std::sync::Arc<Key>>, CryptError> {
        let key = match (&config.encryption_key_file, &config.encryption_key_env) {
            (Some(path), _) => Some(Key::from_file(path)?),
            (None, Some(name)) => Some(Key::from_env(name)?),
            (None, None) => None,
        };
        Ok(key.map(std::sync::Arc::new))
    }

    /// Parses 64 hex characters (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Result<Key, CryptError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptError::KeyMalformed)?;
        if bytes.len() != 32 {
            return Err(CryptError::KeyMalformed);
        }
        let digest = Sha256::digest(&bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Ok(Key {
            cipher: Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptError::KeyMalformed)?,
            id,
        })
    }

    pub fn from_file(path: &std::path::Path) -> Result<Key, CryptError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CryptError::KeyUnreadable(format!("{}: {e}", path.display())))?;
        Key::from_hex(&text)
    }

    pub fn from_env(name: &str) -> Result<Key, CryptError> {
        let text = std::env::var(name).map_err(|_| {
            CryptError::KeyUnreadable(format!("environment variable {name} is not set"))
        })?;
        Key::from_hex(&text)
    }

    /// The key's public id: 16 hex characters.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// Encrypts `input` into `output`, streaming.
    pub fn encrypt(&self, mut input: impl Read, mut output: impl Write) -> std::io::Result<()> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let prefix = &nonce[..NONCE_PREFIX_LEN];
        output.write_all(MAGIC)?;
        output.write_all(&self.id)?;
        output.write_all(prefix)?;
        let mut encryptor = EncryptorBE32::from_aead(self.cipher.clone(), prefix.into());
        let mut current = read_chunk(&mut input, CHUNK)?;
        loop {
            let next = read_chunk(&mut input, CHUNK)?;
            if next.is_empty() {
                let sealed = encryptor
                    .encrypt_last(&current[..])
                    .map_err(|_| std::io::Error::other("encryption failed"))?;
                return output.write_all(&sealed);
            }
            let sealed = encryptor
                .encrypt_next(&current[..])
                .map_err(|_| std::io::Error::other("encryption failed"))?;
            output.write_all(&sealed)?;
            current = next;
        }
    }

    /// Decrypts `input` into `output`, streaming; `object` names it in errors.
    pub fn decrypt(
        &self,
        object: &str,
        mut input: impl Read,
        mut output: impl Write,
    ) -> Result<(), DecryptError> {
        let mut header = [0u8; HEADER_LEN];
        input.read_exact(&mut header).map_err(|_| damaged(object))?;
        self.check_header(object, &header)?;
        let prefix = &header[MAGIC.len() + KEY_ID_LEN..];
        let mut decryptor = DecryptorBE32::from_aead(self.cipher.clone(), prefix.into());
        let mut current = read_chunk(&mut input, CHUNK + TAG)?;
        loop {
            let next = read_chunk(&mut input, CHUNK + TAG)?;
            if next.is_empty() {
                let plain = decryptor
                    .decrypt_last(&current[..])
                    .map_err(|_| damaged(object))?;
                output.write_all(&plain)?;
                return Ok(());
            }
            let plain = decryptor
                .decrypt_next(&current[..])
                .map_err(|_| damaged(object))?;
            output.write_all(&plain)?;
            current = next;
        }
    }

    fn check_header(&self, object: &str, header: &[u8]) -> Result<(), CryptError> {
        if &header[..MAGIC.len()] != MAGIC {
            return Err(CryptError::Damaged {
                object: object.to_string(),
            });
        }
        let found = &header[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
        if found != self.id {
            return Err(CryptError::WrongKey {
                object: object.to_string(),
                found: hex::encode(found),
                configured: self.id(),
            });
        }
        Ok(())
    }
}

/// The key id an encrypted object names, if it is encrypted at all.
pub fn key_id_of(data: &[u8]) -> Option<String> {
    (data.len() >= HEADER_LEN && data.starts_with(MAGIC))
        .then(|| hex::encode(&data[MAGIC.len()..MAGIC.len() + KEY_ID_LEN]))
}

#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn damaged(object: &str) -> CryptError {
    CryptError::Damaged {
        object: object.to_string(),
    }
}

/// Reads up to `size` bytes; fewer only at the end of the input.
fn read_chunk(input: &mut impl Read, size: usize) -> std::io::Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(size);
    input.take(size as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn round_trip(len: usize) {
        let key = Key::from_hex(KEY).unwrap();
        let plain: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let mut sealed = Vec::new();
        key.encrypt(&plain[..], &mut sealed).unwrap();
        assert_eq!(key_id_of(&sealed), Some(key.id()));
        let mut opened = Vec::new();
        key.decrypt("obj", &sealed[..], &mut opened).unwrap();
        assert!(opened == plain, "length {len}");
    }

    #[test]
    fn round_trips_at_chunk_edges() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            round_trip(len);
        }
    }

    #[test]
    fn damage_truncation_and_the_wrong_key_are_caught() {
        let key = Key::from_hex(KEY).unwrap();
        let plain = vec![7u8; CHUNK + 100];
        let mut sealed = Vec::new();
        key.encrypt(&plain[..], &mut sealed).unwrap();
        let decrypt = |data: &[u8], key: &Key| key.decrypt("obj", data, std::io::sink());
        let mut flipped = sealed.clone();
        flipped[HEADER_LEN + 10] ^= 1;
        assert!(matches!(
            decrypt(&flipped, &key),
            Err(DecryptError::Crypt(CryptError::Damaged { .. }))
        ));
        // Cut at a chunk boundary: the last chunk marker is missing.
        let cut = &sealed[..HEADER_LEN + CHUNK + TAG];
        assert!(matches!(
            decrypt(cut, &key),
            Err(DecryptError::Crypt(CryptError::Damaged { .. }))
        ));
        let other = Key::from_hex(&KEY.replace("00", "ff")).unwrap();
        let error = decrypt(&sealed, &other).unwrap_err().to_string();
        assert!(
            error.contains(&key.id()) && error.contains(&other.id()),
            "{error}"
        );
        assert!(!error.contains(KEY) && !format!("{key:?}").contains(KEY));
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        for bad in ["", "abc", &"zz".repeat(32), &"00".repeat(31)] {
            let error = Key::from_hex(bad).unwrap_err().to_string();
            assert!(error.contains("64 hex characters"), "{error}");
        }
    }
}
