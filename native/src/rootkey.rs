//! The node's root key and the records sealed under it.
//!
//! The root key lives on one page of its own, locked in RAM (`mlock`: never swapped, so never written to
//! a swap or hibernation image) and excluded from core dumps (`MADV_DONTDUMP`); it is zeroized before the
//! page goes back. It never leaves this module: callers seal and open records, and every purpose gets its
//! own subkey (HKDF-SHA256), so that a record of one purpose cannot be passed off as one of another.
//!
//! A sealed record: `"QPCS" | scheme (1) | key id (8) | nonce (24) | XChaCha20-Poly1305 ciphertext`. The
//! associated data is the header, the purpose and the caller's context (where the record lives), so a record
//! moved to another place does not open. The key id (an HKDF output, not the key) tells a record sealed
//! under another root key from a damaged one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;
/// XChaCha20-Poly1305 under an HKDF-SHA256 subkey per purpose.
pub const SCHEME_V1: u8 = 1;
const MAGIC: &[u8; 4] = b"QPCS";
pub const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_ID_LEN + NONCE_LEN;
const HKDF_SALT: &[u8] = b"quicnprotochat root key v1";
const KEY_ID_INFO: &[u8] = b"quicnprotochat root key id";
const SUBKEY_INFO: &[u8] = b"quicnprotochat sealed record v1 ";

/// One anonymous page, locked and kept out of core dumps, zeroized and unlocked on drop.
struct LockedPage {
    ptr: *mut u8,
    len: usize,
    locked: bool,
    dontdump: bool,
}

// The page is written only while the owning `RootKey` is built (`&mut`), read-only afterwards.
unsafe impl Send for LockedPage {}
unsafe impl Sync for LockedPage {}

impl LockedPage {
    fn new() -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let len = if page > 0 { page as usize } else { 4096 };
        // SAFETY: a fresh private anonymous mapping; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Crypto("cannot map a page for the root key".into()));
        }
        let mut page = LockedPage {
            ptr: ptr as *mut u8,
            len,
            locked: false,
            dontdump: false,
        };
        // SAFETY: ptr/len are the mapping made above.
        page.locked = unsafe { libc::mlock(ptr, len) } == 0;
        if !page.locked {
            return Err(Error::Crypto(
                "cannot lock the root key's page in memory (mlock; raise RLIMIT_MEMLOCK)".into(),
            ));
        }
        // SAFETY: as above.
        page.dontdump = unsafe { libc::madvise(ptr, len, libc::MADV_DONTDUMP) } == 0;
        if !page.dontdump {
            return Err(Error::Crypto(
                "cannot exclude the root key's page from core dumps (madvise)".into(),
            ));
        }
        Ok(page)
    }

    fn key(&self) -> &[u8; KEY_LEN] {
        // SAFETY: the page is at least KEY_LEN bytes, aligned, and lives as long as `self`.
        unsafe { &*(self.ptr as *const [u8; KEY_LEN]) }
    }

    fn key_mut(&mut self) -> &mut [u8; KEY_LEN] {
        // SAFETY: as in `key`, and `&mut self` makes the borrow unique.
        unsafe { &mut *(self.ptr as *mut [u8; KEY_LEN]) }
    }
}

impl Drop for LockedPage {
    fn drop(&mut self) {
        // SAFETY: the whole mapping is ours; zeroize uses volatile writes the compiler keeps.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr, self.len).zeroize();
            if self.locked {
                libc::munlock(self.ptr as *mut libc::c_void, self.len);
            }
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

/// Argon2id cost of a passphrase-derived root key; kept next to its salt so that it can change.
#[derive(Clone, Copy, Debug)]
pub struct PassphraseCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

pub struct RootKey {
    page: LockedPage,
    key_id: [u8; KEY_ID_LEN],
}

impl RootKey {
    fn build(fill: impl FnOnce(&mut [u8; KEY_LEN]) -> Result<()>) -> Result<Self> {
        let mut page = LockedPage::new()?;
        fill(page.key_mut())?;
        let mut key_id = [0u8; KEY_ID_LEN];
        Hkdf::<Sha256>::new(Some(HKDF_SALT), page.key())
            .expand(KEY_ID_INFO, &mut key_id)
            .map_err(|_| Error::Crypto("key id derivation".into()))?;
        Ok(RootKey { page, key_id })
    }

    /// A new random root key.
    pub fn generate() -> Result<Self> {
        Self::build(|key| getrandom::fill(key).map_err(|_| Error::Crypto("no randomness".into())))
    }

    /// The key from a key file: exactly 32 bytes.
    pub fn from_key_file(path: &std::path::Path) -> Result<Self> {
        let contents = Zeroizing::new(std::fs::read(path).map_err(|e| {
            Error::InvalidKey(format!("cannot read the root key file {}: {}", path.display(), io_reason(&e)))
        })?);
        if contents.len() != KEY_LEN {
            return Err(Error::InvalidKey(format!(
                "the root key file {} must hold exactly {KEY_LEN} bytes, it holds {}",
                path.display(),
                contents.len()
            )));
        }
        Self::build(|key| {
            key.copy_from_slice(&contents);
            Ok(())
        })
    }

    /// The key derived from a passphrase with Argon2id.
    pub fn from_passphrase(passphrase: &[u8], salt: &[u8], cost: PassphraseCost) -> Result<Self> {
        if passphrase.is_empty() {
            return Err(Error::InvalidKey("the root key passphrase is empty".into()));
        }
        let params = argon2::Params::new(cost.memory_kib, cost.iterations, cost.lanes, Some(KEY_LEN))
            .map_err(|e| Error::InvalidKey(format!("Argon2id parameters: {e}")))?;
        // Our own working memory, zeroized after: its last blocks alone would give the key.
        let mut blocks = vec![argon2::Block::default(); params.block_count()];
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let built = Self::build(|key| {
            argon
                .hash_password_into_with_memory(passphrase, salt, key, &mut blocks)
                .map_err(|e| Error::InvalidKey(format!("Argon2id: {e}")))
        });
        blocks.iter_mut().for_each(Zeroize::zeroize);
        built
    }

    /// Writes the key to a new file (mode 0600; an existing file is never overwritten).
    pub fn write_key_file(&self, path: &std::path::Path) -> Result<()> {
        let describe = |e: std::io::Error| {
            Error::InvalidKey(format!("cannot write the root key file {}: {}", path.display(), io_reason(&e)))
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(describe)?;
        file.write_all(self.page.key()).map_err(describe)?;
        file.sync_all().map_err(describe)
    }

    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        self.key_id
    }

    /// Whether the key's page is locked in RAM and excluded from core dumps (both are required to build one).
    pub fn memory_protection(&self) -> (bool, bool, usize) {
        (self.page.locked, self.page.dontdump, self.page.ptr as usize)
    }

    fn cipher(&self, purpose: &str) -> Result<XChaCha20Poly1305> {
        if purpose.is_empty() {
            return Err(Error::Malformed("a sealed record needs a purpose".into()));
        }
        let mut subkey = Zeroizing::new([0u8; KEY_LEN]);
        let info = [SUBKEY_INFO, purpose.as_bytes()].concat();
        Hkdf::<Sha256>::new(Some(HKDF_SALT), self.page.key())
            .expand(&info, subkey.as_mut())
            .map_err(|_| Error::Crypto("subkey derivation".into()))?;
        // The cipher keeps its own copy of the subkey and zeroizes it on drop (chacha20poly1305 0.10 zeroizes its key).
        Ok(XChaCha20Poly1305::new(subkey.as_ref().into()))
    }

    pub fn seal(&self, purpose: &str, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let cipher = self.cipher(purpose)?;
        let mut header = Vec::with_capacity(HEADER_LEN + plaintext.len() + 16);
        header.extend_from_slice(MAGIC);
        header.push(SCHEME_V1);
        header.extend_from_slice(&self.key_id);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| Error::Crypto("no randomness".into()))?;
        header.extend_from_slice(&nonce);
        let aad = associated_data(&header, purpose, context);
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| Error::Crypto("sealing failed".into()))?;
        header.extend_from_slice(&ciphertext);
        Ok(header)
    }

    pub fn open(&self, purpose: &str, context: &[u8], record: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let info = RecordInfo::parse(record)?;
        if info.key_id != self.key_id {
            return Err(Error::InvalidKey(
                "the record is sealed under another root key".into(),
            ));
        }
        let cipher = self.cipher(purpose)?;
        let aad = associated_data(&record[..HEADER_LEN], purpose, context);
        let nonce = XNonce::from_slice(&record[HEADER_LEN - NONCE_LEN..HEADER_LEN]);
        cipher
            .decrypt(nonce, Payload { msg: &record[HEADER_LEN..], aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| Error::Decrypt("the sealed record does not authenticate (damaged or tampered with)".into()))
    }

    /// Opens a record under this key and seals it under `new`, without the plaintext leaving this module.
    pub fn reseal(&self, new: &RootKey, purpose: &str, context: &[u8], record: &[u8]) -> Result<Vec<u8>> {
        let plaintext = self.open(purpose, context, record)?;
        new.seal(purpose, context, &plaintext)
    }
}

fn associated_data(header: &[u8], purpose: &str, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + purpose.len() + 1 + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(purpose.as_bytes());
    aad.push(0);
    aad.extend_from_slice(context);
    aad
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::AlreadyExists => "it already exists".into(),
        _ => e.to_string(),
    }
}

/// What a sealed record's header says, readable without any key.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordInfo {
    pub scheme: u8,
    pub key_id: [u8; KEY_ID_LEN],
}

impl RecordInfo {
    pub fn parse(record: &[u8]) -> Result<Self> {
        if record.len() < HEADER_LEN + 16 || &record[..MAGIC.len()] != MAGIC {
            return Err(Error::Malformed("not a sealed record".into()));
        }
        let scheme = record[MAGIC.len()];
        if scheme != SCHEME_V1 {
            return Err(Error::Unsupported(format!("sealed record scheme {scheme}")));
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&record[MAGIC.len() + 1..MAGIC.len() + 1 + KEY_ID_LEN]);
        Ok(RecordInfo { scheme, key_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_bindings() {
        let key = RootKey::generate().unwrap();
        let record = key.seal("tls-key", b"node-key", b"secret").unwrap();
        assert_eq!(&*key.open("tls-key", b"node-key", &record).unwrap(), b"secret");
        assert!(matches!(key.open("opaque", b"node-key", &record), Err(Error::Decrypt(_))));
        assert!(matches!(key.open("tls-key", b"other", &record), Err(Error::Decrypt(_))));
        let mut tampered = record.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(key.open("tls-key", b"node-key", &tampered), Err(Error::Decrypt(_))));
        let other = RootKey::generate().unwrap();
        assert!(matches!(other.open("tls-key", b"node-key", &record), Err(Error::InvalidKey(_))));
        let moved = key.reseal(&other, "tls-key", b"node-key", &record).unwrap();
        assert_eq!(&*other.open("tls-key", b"node-key", &moved).unwrap(), b"secret");
        assert_eq!(RecordInfo::parse(&moved).unwrap().key_id, other.key_id());
    }

    #[test]
    fn page_is_locked_and_not_dumped() {
        let key = RootKey::generate().unwrap();
        let (locked, dontdump, address) = key.memory_protection();
        assert!(locked && dontdump && address != 0);
    }

    #[test]
    fn key_file_and_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let key = RootKey::generate().unwrap();
        key.write_key_file(&path).unwrap();
        assert!(key.write_key_file(&path).is_err());
        assert_eq!(RootKey::from_key_file(&path).unwrap().key_id(), key.key_id());
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(RootKey::from_key_file(&path), Err(Error::InvalidKey(_))));
        let cost = PassphraseCost { memory_kib: 1024, iterations: 1, lanes: 1 };
        let a = RootKey::from_passphrase(b"correct horse", b"0123456789abcdef", cost).unwrap();
        let b = RootKey::from_passphrase(b"correct horse", b"0123456789abcdef", cost).unwrap();
        let c = RootKey::from_passphrase(b"wrong horse", b"0123456789abcdef", cost).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_ne!(a.key_id(), c.key_id());
    }
}
