//! Encryption at rest: AES-256-GCM in the STREAM construction (chunked, with
//! the last chunk marked), so objects of any size are encrypted and decrypted
//! in 1 MiB pieces and any truncation, reordering or bit flip fails to decrypt.
//!
//! Object layout: `TMENC2` | key id (8 bytes) | nonce prefix (7 bytes) | chunks,
//! each the ciphertext of up to 1 MiB plus a 16-byte tag. The key id is the
//! first 8 bytes of SHA-256(key): it names the key without revealing it.
//!
//! Every chunk's associated data is the object's key (its name in the store),
//! so a valid ciphertext moved or copied to another name does not decrypt.
//! With a key configured, nothing is read that is not encrypted under one of
//! the configured keys ([`Keyring`]): a cleartext or foreign object is an
//! error naming it. Key bytes live in zeroizing buffers and the cipher wipes
//! its key schedule when dropped.

use std::io::{Read, Write};

use crate::base::exit::ExitCode;
use aead::stream::{DecryptorBE32, EncryptorBE32};
use aead::Payload;
use aes_gcm::aead::{KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const MAGIC: &[u8; 6] = b"TMENC2";
/// The first format, whose chunks did not bind the object's name.
const UNBOUND_MAGIC: &[u8; 6] = b"TMENC1";
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
    #[error("encryption key file {0}")]
    KeyShared(String),
    #[error("[archive] previous_key_files needs a current key; set encryption_key_file or encryption_key_env")]
    PreviousWithoutCurrent,
    #[error("{object} is encrypted with key {found}, but the configured keys are {configured}; configure the key that wrote it (add old keys to previous_key_files)")]
    WrongKey {
        object: String,
        found: String,
        configured: String,
    },
    #[error("{object} is encrypted (key {found}) and no key is configured; set [archive] encryption_key_file or encryption_key_env")]
    NoKey { object: String, found: String },
    #[error("{object} is not encrypted, but this archive's objects must be; it was written without the key or by someone else: remove it, or restore from a copy of the archive")]
    Cleartext { object: String },
    #[error("{object} is in the first encrypted format (TMENC1), which does not bind an object's name; tidemark no longer reads it: re-archive from a fresh base snapshot")]
    Unbound { object: String },
    #[error("{object} does not decrypt: it is damaged, cut short, or was moved from another name")]
    Damaged { object: String },
}

impl CryptError {
    pub fn exit_code(&self) -> ExitCode {
        use CryptError::*;
        match self {
            KeyUnreadable(_) | KeyMalformed | KeyShared(_) | PreviousWithoutCurrent => {
                ExitCode::BadInput
            }
            WrongKey { .. } | NoKey { .. } | Cleartext { .. } | Unbound { .. } => {
                ExitCode::BadInput
            }
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

/// The keys an archive is read with: the current one, which encrypts new
/// objects, and previous ones, which only decrypt (key rotation).
#[derive(Debug)]
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
}

impl Keyring {
    pub fn new(current: Key, previous: Vec<Key>) -> Keyring {
        Keyring { current, previous }
    }

    /// The keys an `[archive]` section names, if any. Their bytes are never logged.
    pub fn configured(
        config: &crate::config::ArchiveConfig,
    ) -> Result<Option<std::sync::Arc<Keyring>>, CryptError> {
        let current = match (&config.encryption_key_file, &config.encryption_key_env) {
            (Some(path), _) => Key::from_file(path)?,
            (None, Some(name)) => Key::from_env(name)?,
            (None, None) if config.previous_key_files.is_empty() => return Ok(None),
            (None, None) => return Err(CryptError::PreviousWithoutCurrent),
        };
        let previous = config
            .previous_key_files
            .iter()
            .map(|path| Key::from_file(path))
            .collect::<Result<_, _>>()?;
        Ok(Some(std::sync::Arc::new(Keyring::new(current, previous))))
    }

    /// The key new objects are encrypted with.
    pub fn current(&self) -> &Key {
        &self.current
    }

    /// Every configured key's id, the current one first.
    pub fn ids(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(Key::id)
            .collect()
    }

    /// Decrypts `input` (named `object` in the store) with whichever configured key sealed it.
    pub fn decrypt(
        &self,
        object: &str,
        mut input: impl Read,
        output: impl Write,
    ) -> Result<(), DecryptError> {
        let mut header = [0u8; HEADER_LEN];
        input.read_exact(&mut header).map_err(|_| damaged(object))?;
        let key = self.key_for(object, &header)?;
        key.decrypt_after_header(object, &header, input, output)
    }

    fn key_for(&self, object: &str, header: &[u8; HEADER_LEN]) -> Result<&Key, CryptError> {
        match &header[..MAGIC.len()] {
            magic if magic == MAGIC => {}
            magic if magic == UNBOUND_MAGIC => {
                return Err(CryptError::Unbound {
                    object: object.to_string(),
                })
            }
            _ => {
                return Err(CryptError::Cleartext {
                    object: object.to_string(),
                })
            }
        }
        let found = &header[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == found)
            .ok_or_else(|| CryptError::WrongKey {
                object: object.to_string(),
                found: hex::encode(found),
                configured: self.ids().join(", "),
            })
    }
}

impl Key {
    /// Parses 64 hex characters (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Result<Key, CryptError> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| CryptError::KeyMalformed)?);
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

    /// Reads a key file, which only its owner may read (as ssh insists of its keys).
    pub fn from_file(path: &std::path::Path) -> Result<Key, CryptError> {
        crate::base::files::refuse_if_shared(path).map_err(CryptError::KeyShared)?;
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| CryptError::KeyUnreadable(format!("{}: {e}", path.display())))?,
        );
        Key::from_hex(&text)
    }

    pub fn from_env(name: &str) -> Result<Key, CryptError> {
        let text = Zeroizing::new(std::env::var(name).map_err(|_| {
            CryptError::KeyUnreadable(format!("environment variable {name} is not set"))
        })?);
        Key::from_hex(&text)
    }

    /// The key's public id: 16 hex characters.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// Encrypts `input`, to be stored as `object`, into `output`, streaming.
    pub fn encrypt(
        &self,
        object: &str,
        mut input: impl Read,
        mut output: impl Write,
    ) -> std::io::Result<()> {
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
                    .encrypt_last(bound(&current, object))
                    .map_err(|_| std::io::Error::other("encryption failed"))?;
                return output.write_all(&sealed);
            }
            let sealed = encryptor
                .encrypt_next(bound(&current, object))
                .map_err(|_| std::io::Error::other("encryption failed"))?;
            output.write_all(&sealed)?;
            current = next;
        }
    }

    /// Decrypts the chunks after `header` (already matched to this key) into `output`.
    fn decrypt_after_header(
        &self,
        object: &str,
        header: &[u8; HEADER_LEN],
        mut input: impl Read,
        mut output: impl Write,
    ) -> Result<(), DecryptError> {
        let prefix = &header[MAGIC.len() + KEY_ID_LEN..];
        let mut decryptor = DecryptorBE32::from_aead(self.cipher.clone(), prefix.into());
        let mut current = read_chunk(&mut input, CHUNK + TAG)?;
        loop {
            let next = read_chunk(&mut input, CHUNK + TAG)?;
            if next.is_empty() {
                let plain = decryptor
                    .decrypt_last(bound(&current, object))
                    .map_err(|_| damaged(object))?;
                output.write_all(&plain)?;
                return Ok(());
            }
            let plain = decryptor
                .decrypt_next(bound(&current, object))
                .map_err(|_| damaged(object))?;
            output.write_all(&plain)?;
            current = next;
        }
    }
}

/// A chunk with the object's name as its associated data.
fn bound<'a>(chunk: &'a [u8], object: &'a str) -> Payload<'a, 'a> {
    Payload {
        msg: chunk,
        aad: object.as_bytes(),
    }
}

/// The key id an encrypted object names, if it is encrypted at all.
pub fn key_id_of(data: &[u8]) -> Option<String> {
    (data.len() >= HEADER_LEN && (data.starts_with(MAGIC) || data.starts_with(UNBOUND_MAGIC)))
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
    const OLD_KEY: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn ring(hex: &str) -> Keyring {
        Keyring::new(Key::from_hex(hex).unwrap(), Vec::new())
    }

    fn sealed(hex: &str, object: &str, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Key::from_hex(hex)
            .unwrap()
            .encrypt(object, plain, &mut out)
            .unwrap();
        out
    }

    fn open(ring: &Keyring, object: &str, data: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let mut out = Vec::new();
        ring.decrypt(object, data, &mut out).map(|()| out)
    }

    #[test]
    fn round_trips_at_chunk_edges() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let data = sealed(KEY, "segments/a", &plain);
            assert_eq!(key_id_of(&data), Some(ring(KEY).current().id()));
            assert!(
                open(&ring(KEY), "segments/a", &data).unwrap() == plain,
                "length {len}"
            );
        }
    }

    #[test]
    fn damage_truncation_and_the_wrong_key_are_caught() {
        let data = sealed(KEY, "obj", &vec![7u8; CHUNK + 100]);
        let damaged = |result: Result<Vec<u8>, DecryptError>| {
            matches!(result, Err(DecryptError::Crypt(CryptError::Damaged { .. })))
        };
        let mut flipped = data.clone();
        flipped[HEADER_LEN + 10] ^= 1;
        assert!(damaged(open(&ring(KEY), "obj", &flipped)));
        // Cut at a chunk boundary: the last chunk marker is missing.
        assert!(damaged(open(
            &ring(KEY),
            "obj",
            &data[..HEADER_LEN + CHUNK + TAG]
        )));
        let error = open(&ring(OLD_KEY), "obj", &data).unwrap_err().to_string();
        let (id, other) = (ring(KEY).current().id(), ring(OLD_KEY).current().id());
        assert!(error.contains(&id) && error.contains(&other), "{error}");
        assert!(!error.contains(KEY) && !format!("{:?}", ring(KEY)).contains(KEY));
    }

    #[test]
    fn a_ciphertext_moved_to_another_name_does_not_decrypt() {
        let data = sealed(KEY, "segments/0000000001000000-a", b"payload");
        assert!(open(&ring(KEY), "segments/0000000001000000-a", &data).is_ok());
        let error = open(&ring(KEY), "segments/0000000002000000-b", &data).unwrap_err();
        assert!(
            matches!(&error, DecryptError::Crypt(CryptError::Damaged { object }) if object == "segments/0000000002000000-b"),
            "{error}"
        );
    }

    #[test]
    fn cleartext_and_the_unbound_format_are_refused_by_name() {
        for (data, expected) in [
            (
                b"{\"format\": \"tidemark\"} and then some".to_vec(),
                "is not encrypted",
            ),
            ([b"TMENC1".as_slice(), &[0u8; 40]].concat(), "TMENC1"),
        ] {
            let error = open(&ring(KEY), "manifests/x.json", &data)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("manifests/x.json") && error.contains(expected),
                "{error}"
            );
        }
    }

    #[test]
    fn rotation_reads_old_objects_and_writes_with_the_current_key() {
        let old = sealed(OLD_KEY, "segments/old", b"old");
        let rotated = Keyring::new(
            Key::from_hex(KEY).unwrap(),
            vec![Key::from_hex(OLD_KEY).unwrap()],
        );
        assert_eq!(open(&rotated, "segments/old", &old).unwrap(), b"old");
        let mut new = Vec::new();
        rotated
            .current()
            .encrypt("segments/new", &b"new"[..], &mut new)
            .unwrap();
        assert_eq!(key_id_of(&new), Some(ring(KEY).current().id()));
        assert_eq!(rotated.ids().len(), 2);
        assert!(open(&ring(OLD_KEY), "segments/new", &new).is_err());
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        for bad in ["", "abc", &"zz".repeat(32), &"00".repeat(31)] {
            let error = Key::from_hex(bad).unwrap_err().to_string();
            assert!(error.contains("64 hex characters"), "{error}");
        }
    }

    #[test]
    fn a_key_file_others_may_read_is_refused_with_chmod() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, KEY).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Key::from_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("chmod 600") && !error.contains(KEY),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Key::from_file(&path).is_ok());
    }
}
