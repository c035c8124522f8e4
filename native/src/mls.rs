//! MLS (RFC 9420) over OpenMLS with an encrypted, persistent store.
//!
//! A [`Vault`] is one SQLCipher database (raw 32-byte key) that holds
//! * the OpenMLS state (`storage`: OpenMLS's SQLite provider, row format in `codec`, the message
//!   secrets split by `split_secrets`),
//! * the Ed25519 identity (the basic credential is the 32-byte public key),
//! * the X-Wing seed of the client's hybrid envelope key,
//! * the list of groups this vault takes part in,
//! * the bytes of each group's pending commit (created, not yet accepted by the node),
//! * the journal of processed messages and joined Welcomes (see `journal`).
//!
//! Every operation runs in one SQLite transaction: either all of its state changes
//! (ratchets, epoch, proposals, journal) are stored, or none are. Groups are loaded once and
//! kept in memory (`cache`); every change is written through.
//!
//! Outgoing handshake messages are PrivateMessages; incoming ones may be PublicMessages too
//! (other MLS libraries send commits and proposals in the clear). Application messages are
//! always PrivateMessages (OpenMLS refuses others).

use std::cell::RefMut;
use std::rc::Rc;

use openmls::prelude::{tls_codec::Deserialize as _, tls_codec::Serialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_sqlite_storage::SqliteStorageProvider;
use openmls_traits::{crypto::OpenMlsCrypto, signatures::Signer, OpenMlsProvider};
use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use crate::envelope::HybridKeyPair;
use crate::error::{Error, Result};

mod cache;
mod codec;
mod crypto;
mod journal;
mod pending;
mod signer;
mod split_secrets;
mod storage;
mod wire;
pub use cache::DEFAULT_GROUPS_IN_MEMORY;
use cache::GroupCache;
use crypto::VaultCrypto;
use codec::VaultCodec;
use signer::IdentitySigner;
use storage::VaultStorage;
pub use wire::{message_info, MessageInfo};

/// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (the default).
pub const SUITE_DEFAULT: u16 = 0x0001;
/// MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519 (X-Wing KEM; supported by the libcrux provider).
pub const SUITE_XWING: u16 = 0x004D;

/// How many past epochs' message secrets a group keeps, so that application messages sent just
/// before a commit and delivered after it still decrypt. Older ones are deleted (forward secrecy).
/// The node orders commits, but a sender's message can land behind several commits accepted while
/// it was on its way: with 2, `qpc-bench groups` lost up to 8.7% of deliveries in busy 8-member
/// groups. Only secrets of messages not yet received are at stake: consumed keys are deleted.
pub const MAX_PAST_EPOCHS: usize = 8;

type Storage = VaultStorage;

/// OpenMLS provider: libcrux crypto (Ed25519 verification by ed25519-dalek: `crypto`) and
/// randomness, SQLCipher storage.
pub struct Provider {
    crypto: VaultCrypto,
    storage: Storage,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = VaultCrypto;
    type RandProvider = CryptoProvider;
    type StorageProvider = Storage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto.0
    }
}

/// Maps a ciphersuite id to an OpenMLS ciphersuite this crate supports.
pub fn ciphersuite(id: u16) -> Result<Ciphersuite> {
    match id {
        SUITE_DEFAULT => Ok(Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519),
        SUITE_XWING => Ok(Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519),
        other => Err(Error::Unsupported(format!(
            "ciphersuite {other:#06x} (supported: 0x0001, 0x004d)"
        ))),
    }
}

fn mls_err(kind: fn(String) -> Error, what: &str, e: impl std::fmt::Display) -> Error {
    kind(format!("{what}: {e}"))
}

/// What `validate_key_package` learned about a valid KeyPackage.
#[derive(Clone, Debug)]
pub struct KeyPackageInfo {
    /// Ed25519 signature public key of the leaf (= the basic credential's identity).
    pub identity_key: Vec<u8>,
    pub ciphersuite: u16,
    pub last_resort: bool,
    pub not_before: u64,
    pub not_after: u64,
    /// KeyPackageRef (RFC 9420 section 5.2) under the package's ciphersuite.
    pub reference: Vec<u8>,
}

fn check_credential(kp: &KeyPackage) -> Result<Vec<u8>> {
    let leaf = kp.leaf_node();
    let sig_key = leaf.signature_key().as_slice().to_vec();
    if kp.ciphersuite().signature_algorithm() != SignatureScheme::ED25519 || sig_key.len() != 32 {
        return Err(Error::InvalidKeyPackage(
            "signature key is not a 32-byte Ed25519 key".into(),
        ));
    }
    let cred = BasicCredential::try_from(leaf.credential().clone())
        .map_err(|_| Error::InvalidKeyPackage("credential is not a basic credential".into()))?;
    if cred.identity() != sig_key.as_slice() {
        return Err(Error::InvalidKeyPackage(
            "credential identity differs from the signature key".into(),
        ));
    }
    Ok(sig_key)
}

fn parse_key_package(crypto: &impl OpenMlsCrypto, data: &[u8]) -> Result<KeyPackage> {
    let kp = wire::verify_key_package(crypto, data)?;
    let cs = kp.ciphersuite();
    ciphersuite(cs as u16).map_err(|_| {
        Error::InvalidKeyPackage(format!("unsupported ciphersuite {:#06x}", cs as u16))
    })?;
    crypto.supports(cs).map_err(|_| {
        Error::InvalidKeyPackage("ciphersuite not supported by the provider".into())
    })?;
    check_credential(&kp)?;
    Ok(kp)
}

/// Parses and fully validates a KeyPackage, raw (TLS-encoded) or wrapped in an MLSMessage
/// (signatures, lifetime against the
/// current time, init key != encryption key, supported ciphersuite, basic credential equal to
/// the Ed25519 signature key).
pub fn validate_key_package(data: &[u8]) -> Result<KeyPackageInfo> {
    let crypto = CryptoProvider::new()
        .map_err(|_| Error::Crypto("crypto provider initialisation failed".into()))?;
    let kp = parse_key_package(&crypto, data)?;
    let identity_key = check_credential(&kp)?;
    let lifetime = kp.life_time();
    let reference = kp
        .hash_ref(&crypto)
        .map_err(|e| mls_err(Error::InvalidKeyPackage, "hash", e))?;
    Ok(KeyPackageInfo {
        identity_key,
        ciphersuite: kp.ciphersuite() as u16,
        last_resort: kp.last_resort(),
        not_before: lifetime.not_before(),
        not_after: lifetime.not_after(),
        reference: reference.as_slice().to_vec(),
    })
}

/// Verifies a pure Ed25519 signature (RFC 8032). Malformed keys or signatures give `false`.
pub fn verify_ed25519(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(pk) = <[u8; 32]>::try_from(public_key) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
        return false;
    };
    vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig))
        .is_ok()
}

/// Kind of a processed MLS message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Application,
    Commit,
    Proposal,
}

impl MessageKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageKind::Application => "application",
            MessageKind::Commit => "commit",
            MessageKind::Proposal => "proposal",
        }
    }
}

/// Result of [`Vault::process`].
#[derive(Debug)]
pub struct Processed {
    pub kind: MessageKind,
    pub group_id: Vec<u8>,
    /// Epoch of the group after processing (a merged commit advances it).
    pub epoch: u64,
    /// Signature key of the sending member (None for non-member senders).
    pub sender: Option<Vec<u8>>,
    /// Application plaintext (application messages only).
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
    /// Identity keys added by the commit.
    pub added: Vec<Vec<u8>>,
    /// Identity keys removed by the commit (or proposed for removal).
    pub removed: Vec<Vec<u8>>,
    /// Whether this vault's member was removed by the commit.
    pub self_removed: bool,
    /// SHA-256 of the message bytes: the journal key (`Vault::forget_processed`).
    pub digest: [u8; 32],
}

/// A commit created locally (pending until merged) and its Welcome.
pub struct CommitOutput {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
}

/// Encrypted client state: MLS groups, identity and hybrid key.
pub struct Vault {
    // Field order matters for drop: the provider (holding an Rc of the connection) goes first.
    provider: Provider,
    signer: SignatureKeyPair,
    /// `signer`'s key, ready to sign (OpenMLS signs with this one).
    signing: IdentitySigner,
    hybrid: HybridKeyPair,
    groups: GroupCache,
    conn: Rc<Connection>,
}

// SAFETY: `Rc<Connection>` is not `Send` because of its non-atomic reference count and because
// `Connection` is not `Sync`. All clones of this `Rc` live inside this one `Vault` (the provider's
// storage and `conn`), they are never handed out, so moving the `Vault` to another thread moves
// every reference to the connection together; `&mut self` / external locking (the Python
// wrapper holds the vault in a `Mutex`) serialises all access. `Vault` is deliberately not `Sync`.
unsafe impl Send for Vault {}

const META_IDENTITY: &str = "identity_public_key";
const META_HYBRID: &str = "hybrid_seed";

fn hex(bytes: &[u8]) -> Zeroizing<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = Zeroizing::new(String::with_capacity(bytes.len() * 2));
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Creates the vault file with mode 0600 if it does not exist (SQLite gives the -wal and -shm
/// files the main file's permissions). The content is encrypted anyway; this is hygiene.
fn create_private_file(path: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Storage(format!("cannot create vault file: {e}"))),
    }
}

fn open_connection(path: &str, key: &[u8]) -> Result<Connection> {
    if key.len() != 32 {
        return Err(Error::InvalidKey(format!(
            "vault key must be 32 bytes, got {}",
            key.len()
        )));
    }
    create_private_file(path)?;
    let conn = Connection::open(path)
        .map_err(|e| Error::Storage(format!("cannot open vault file: {e}")))?;
    {
        // SQLCipher would otherwise print "hmac check failed" to stderr on a wrong key.
        let _ = conn.execute_batch("PRAGMA cipher_log_level = NONE;");
        let mut pragma = Zeroizing::new(String::from("PRAGMA key = \"x'"));
        pragma.push_str(&hex(key));
        pragma.push_str("'\";");
        // The statement text holds the key: do not let it reach an error message.
        conn.execute_batch(&pragma)
            .map_err(|_| Error::Storage("setting the vault key failed".into()))?;
    }
    // The first read decrypts page 1: a wrong key (or a non-vault file) fails here.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|_| {
        Error::VaultKey("the vault cannot be decrypted with this key (or is not a vault)".into())
    })?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

impl Vault {
    /// Opens (or creates) the vault at `path`, encrypted with the raw 32-byte `key`, keeping at most
    /// [`DEFAULT_GROUPS_IN_MEMORY`] groups in memory.
    pub fn open(path: &str, key: &[u8]) -> Result<Self> {
        Self::open_with_limit(path, key, DEFAULT_GROUPS_IN_MEMORY)
    }

    /// Like [`Vault::open`], keeping at most `groups_in_memory` groups (at least one) in memory: the
    /// least recently used one is dropped past that, and loaded from the file again when next used.
    pub fn open_with_limit(path: &str, key: &[u8], groups_in_memory: usize) -> Result<Self> {
        let groups = GroupCache::new(groups_in_memory)?;
        let mut conn = open_connection(path, key)?;
        SqliteStorageProvider::<VaultCodec, &mut Connection>::new(&mut conn)
            .run_migrations()
            .map_err(|e| Error::Storage(format!("migrations failed: {e}")))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS qpc_meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS qpc_groups (
                 group_id BLOB PRIMARY KEY,
                 created_at INTEGER NOT NULL DEFAULT (strftime('%s','now')));",
        )?;
        conn.execute_batch(journal::SCHEMA)?;
        conn.execute_batch(pending::SCHEMA)?;
        conn.execute_batch(storage::SCHEMA)?;
        let conn = Rc::new(conn);
        let crypto = CryptoProvider::new()
            .map_err(|_| Error::Crypto("crypto provider initialisation failed".into()))?;
        let provider = Provider {
            crypto: VaultCrypto(crypto),
            storage: VaultStorage::new(conn.clone()),
        };

        conn.execute_batch("BEGIN IMMEDIATE")?;
        let loaded = Self::load_or_create_secrets(&conn, &provider);
        match loaded {
            Ok(_) => conn.execute_batch("COMMIT")?,
            Err(_) => {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        let (signer, hybrid) = loaded?;
        Ok(Vault {
            provider,
            signing: IdentitySigner::new(&signer)?,
            signer,
            hybrid,
            groups,
            conn,
        })
    }

    fn load_or_create_secrets(
        conn: &Connection,
        provider: &Provider,
    ) -> Result<(SignatureKeyPair, HybridKeyPair)> {
        let get = |k: &str| -> Result<Option<Vec<u8>>> {
            Ok(conn
                .query_row("SELECT v FROM qpc_meta WHERE k = ?1", params![k], |r| {
                    r.get(0)
                })
                .optional()?)
        };
        let signer = match get(META_IDENTITY)? {
            Some(public) => {
                SignatureKeyPair::read(provider.storage(), &public, SignatureScheme::ED25519)
                    .ok_or_else(|| {
                        Error::Storage("identity key pair missing from the vault".into())
                    })?
            }
            None => {
                let kp = SignatureKeyPair::new(SignatureScheme::ED25519)
                    .map_err(|_| Error::Crypto("identity key generation failed".into()))?;
                kp.store(provider.storage())?;
                conn.execute(
                    "INSERT INTO qpc_meta (k, v) VALUES (?1, ?2)",
                    params![META_IDENTITY, kp.public()],
                )?;
                kp
            }
        };
        let hybrid = match get(META_HYBRID)? {
            Some(seed) => {
                let seed = Zeroizing::new(seed);
                HybridKeyPair::from_seed(&seed)?
            }
            None => {
                let kp = HybridKeyPair::generate()?;
                let seed = kp.export_seed();
                conn.execute(
                    "INSERT INTO qpc_meta (k, v) VALUES (?1, ?2)",
                    params![META_HYBRID, seed.as_slice()],
                )?;
                kp
            }
        };
        Ok((signer, hybrid))
    }

    /// Runs `f` inside one transaction; rolls back on error, and then drops the groups kept in
    /// memory (`f` may have changed them).
    fn tx<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        run(&self.conn, "BEGIN IMMEDIATE")?;
        let out = f(self);
        match &out {
            Ok(_) => {
                if let Err(e) = run(&self.conn, "COMMIT") {
                    let _ = run(&self.conn, "ROLLBACK");
                    self.groups.clear();
                    return Err(e.into());
                }
            }
            Err(_) => {
                let _ = run(&self.conn, "ROLLBACK");
                self.groups.clear();
            }
        }
        out
    }

    /// How many groups are kept in memory now (never more than the vault's limit).
    pub fn groups_in_memory(&self) -> usize {
        self.groups.len()
    }

    /// The 32-byte Ed25519 identity public key (= the MLS basic credential).
    pub fn identity_key(&self) -> Vec<u8> {
        self.signer.public().to_vec()
    }

    /// Ed25519 signature by the identity key.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.signing
            .sign(message)
            .map_err(|_| Error::Crypto("signing failed".into()))
    }

    /// The client's X-Wing public key (1216 bytes).
    pub fn hybrid_public_key(&self) -> Vec<u8> {
        self.hybrid.public_key().to_vec()
    }

    /// Opens a hybrid envelope addressed to this vault's X-Wing key.
    pub fn open_envelope(&self, envelope: &[u8], info: &[u8]) -> Result<Vec<u8>> {
        self.hybrid.open(envelope, info)
    }

    /// Replaces the hybrid key pair with a fresh one; returns the new public key.
    pub fn rotate_hybrid_key(&mut self) -> Result<Vec<u8>> {
        let kp = HybridKeyPair::generate()?;
        let seed = kp.export_seed();
        self.tx(|v| {
            v.conn.execute(
                "UPDATE qpc_meta SET v = ?2 WHERE k = ?1",
                params![META_HYBRID, seed.as_slice()],
            )?;
            Ok(())
        })?;
        self.hybrid = kp;
        Ok(self.hybrid.public_key().to_vec())
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.signer.public().to_vec()).into(),
            signature_key: self.signer.public().into(),
        }
    }

    /// Leaf capabilities: default versions, ciphersuites and credentials, plus the
    /// last-resort KeyPackage extension (required in the leaf when the package carries it).
    fn capabilities() -> Capabilities {
        Capabilities::builder()
            .extensions(vec![ExtensionType::LastResort])
            .build()
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .build()
    }

    /// The group, kept in memory between operations (see `cache`).
    fn group(&self, group_id: &[u8]) -> Result<RefMut<'_, MlsGroup>> {
        self.groups
            .get(&self.conn, self.provider.storage(), group_id)
    }

    /// The group's stored state as a detached copy, if the group exists. The copy kept in memory
    /// is dropped: changes made through the detached one go to storage only.
    fn load_stored_group(&self, group_id: &[u8]) -> Result<Option<MlsGroup>> {
        self.groups.forget(group_id);
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id))
            .map_err(|e| Error::Storage(format!("loading group: {e}")))
    }

    /// Like `load_stored_group`, for a group that must exist.
    fn load_group(&self, group_id: &[u8]) -> Result<MlsGroup> {
        self.load_stored_group(group_id)?.ok_or_else(|| {
            Error::GroupNotFound(format!("{} bytes id not in this vault", group_id.len()))
        })
    }

    /// Creates a TLS-serialized KeyPackage; its private keys stay in the vault.
    pub fn create_key_package(&mut self, last_resort: bool, suite: u16) -> Result<Vec<u8>> {
        let cs = ciphersuite(suite)?;
        let cred = self.credential();
        self.tx(|v| {
            let mut builder = KeyPackage::builder().leaf_node_capabilities(Self::capabilities());
            if last_resort {
                builder = builder.mark_as_last_resort();
            }
            let bundle = builder
                .build(cs, &v.provider, &v.signing, cred)
                .map_err(|e| mls_err(Error::Crypto, "key package", e))?;
            bundle
                .key_package()
                .tls_serialize_detached()
                .map_err(|e| mls_err(Error::Crypto, "serialise key package", e))
        })
    }

    /// Creates a group with this vault as its only member; returns the group id.
    pub fn create_group(&mut self, suite: u16) -> Result<Vec<u8>> {
        let cs = ciphersuite(suite)?;
        let cred = self.credential();
        self.tx(|v| {
            let config = MlsGroupCreateConfig::builder()
                .ciphersuite(cs)
                .capabilities(Self::capabilities())
                .use_ratchet_tree_extension(true)
                .max_past_epochs(MAX_PAST_EPOCHS)
                .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
                .build();
            let group = MlsGroup::new(&v.provider, &v.signing, &config, cred)
                .map_err(|e| mls_err(Error::Crypto, "create group", e))?;
            let id = group.group_id().as_slice().to_vec();
            v.conn
                .execute("INSERT INTO qpc_groups (group_id) VALUES (?1)", params![id])?;
            Ok(id)
        })
    }

    /// Loads a group for a local change: refused while one of this member's commits is pending
    /// (the node has not yet said whether it is the group's next epoch).
    fn group_without_pending(&self, group_id: &[u8]) -> Result<RefMut<'_, MlsGroup>> {
        let group = self.group(group_id)?;
        if group.pending_commit().is_some() {
            return Err(Error::State(
                "a commit is pending: merge it once the node accepted it, or clear it".into(),
            ));
        }
        Ok(group)
    }

    /// Keeps the bytes of a commit just created (and left pending) with its Welcome.
    fn keep_pending(
        &self,
        group_id: &[u8],
        commit: &MlsMessageOut,
        welcome: Option<&MlsMessageOut>,
    ) -> Result<CommitOutput> {
        let out = CommitOutput {
            commit: ser(commit)?,
            welcome: welcome.map(ser).transpose()?,
        };
        pending::store(&self.conn, group_id, &out.commit, out.welcome.as_deref())?;
        Ok(out)
    }

    /// Adds members by KeyPackage (raw or wrapped in an MLSMessage); the commit stays pending.
    /// Proposals received earlier (e.g. a member's leave) are committed with it.
    ///
    /// The commit carries no update path unless a proposal it covers needs one (a Remove, say):
    /// RFC 9420 section 12.4 makes the path optional for commits of Add proposals only, and mls-rs
    /// sends none. A path would renew this member's leaf (post-compromise security for its own
    /// keys) at the price of a full commit's HPKE work, one per copath resolution node; that
    /// renewal is `self_update`'s job.
    pub fn add_members(
        &mut self,
        group_id: &[u8],
        key_packages: &[Vec<u8>],
    ) -> Result<CommitOutput> {
        if key_packages.is_empty() {
            return Err(Error::State("no key packages given".into()));
        }
        let kps = key_packages
            .iter()
            .map(|b| parse_key_package(self.provider.crypto(), b))
            .collect::<Result<Vec<_>>>()?;
        self.tx(|v| {
            let mut group = v.group_without_pending(group_id)?;
            if let Some(kp) = kps
                .iter()
                .find(|kp| kp.ciphersuite() != group.ciphersuite())
            {
                return Err(Error::InvalidKeyPackage(format!(
                    "key package ciphersuite {:#06x} differs from the group's {:#06x}",
                    kp.ciphersuite() as u16,
                    group.ciphersuite() as u16
                )));
            }
            let (commit, welcome, _) = group
                .add_members_without_update(&v.provider, &v.signing, &kps)
                .map_err(|e| mls_err(Error::State, "add members", e))?;
            v.keep_pending(group_id, &commit, Some(&welcome))
        })
    }

    /// Removes the members with these identity keys; the commit stays pending.
    pub fn remove_members(
        &mut self,
        group_id: &[u8],
        identity_keys: &[Vec<u8>],
    ) -> Result<Vec<u8>> {
        self.tx(|v| {
            let mut group = v.group_without_pending(group_id)?;
            let mut indices = Vec::with_capacity(identity_keys.len());
            for key in identity_keys {
                let before = indices.len();
                // Every leaf of that identity (the same key could sit in several leaves).
                indices.extend(
                    group
                        .members()
                        .filter(|m| &m.signature_key == key)
                        .map(|m| m.index),
                );
                if indices.len() == before {
                    return Err(Error::State(
                        "identity key is not a member of the group".into(),
                    ));
                }
            }
            indices.sort_unstable_by_key(|i| i.u32());
            indices.dedup();
            if indices.contains(&group.own_leaf_index()) {
                return Err(Error::State(
                    "cannot remove oneself with a commit; use leave_group".into(),
                ));
            }
            let (commit, _, _) = group
                .remove_members(&v.provider, &v.signing, &indices)
                .map_err(|e| mls_err(Error::State, "remove members", e))?;
            Ok(v.keep_pending(group_id, &commit, None)?.commit)
        })
    }

    /// Rotates this member's leaf key material (post-compromise security); the commit stays
    /// pending.
    pub fn self_update(&mut self, group_id: &[u8]) -> Result<Vec<u8>> {
        self.tx(|v| {
            let mut group = v.group_without_pending(group_id)?;
            let bundle = group
                .self_update(&v.provider, &v.signing, LeafNodeParameters::default())
                .map_err(|e| mls_err(Error::State, "self update", e))?;
            Ok(v.keep_pending(group_id, bundle.commit(), None)?.commit)
        })
    }

    /// Commits all pending proposals received so far (e.g. another member's leave; none: an
    /// empty commit that renews this member's path); the commit stays pending. The Welcome is
    /// there if the proposals added members.
    pub fn commit_pending_proposals(&mut self, group_id: &[u8]) -> Result<CommitOutput> {
        self.tx(|v| {
            let mut group = v.group_without_pending(group_id)?;
            let (commit, welcome, _) = group
                .commit_to_pending_proposals(&v.provider, &v.signing)
                .map_err(|e| mls_err(Error::State, "commit proposals", e))?;
            v.keep_pending(group_id, &commit, welcome.as_ref())
        })
    }

    /// Applies this member's pending commit (once the node accepted it).
    pub fn merge_pending_commit(&mut self, group_id: &[u8]) -> Result<()> {
        self.tx(|v| {
            let mut group = v.group(group_id)?;
            if group.pending_commit().is_none() {
                return Err(Error::State("no commit is pending in this group".into()));
            }
            group
                .merge_pending_commit(&v.provider)
                .map_err(|e| mls_err(Error::State, "merge commit", e))?;
            pending::remove(&v.conn, group_id)
        })
    }

    /// Drops this member's pending commit (the node chose another one for that epoch). Nothing
    /// pending: nothing to do.
    pub fn clear_pending_commit(&mut self, group_id: &[u8]) -> Result<()> {
        self.tx(|v| {
            let mut group = v.group(group_id)?;
            group
                .clear_pending_commit(v.provider.storage())
                .map_err(|e| Error::Storage(format!("clear pending commit: {e}")))?;
            pending::remove(&v.conn, group_id)
        })
    }

    /// The pending commit's bytes and its Welcome, exactly as first returned.
    pub fn pending_commit(&self, group_id: &[u8]) -> Result<Option<CommitOutput>> {
        let has_pending = self.group(group_id)?.pending_commit().is_some();
        let row = pending::load(&self.conn, group_id)?;
        match (has_pending, row) {
            (true, Some(out)) => Ok(Some(out)),
            (false, _) => Ok(None),
            (true, None) => Err(Error::Storage(
                "the pending commit's bytes are missing from the vault".into(),
            )),
        }
    }

    /// Proposes to leave the group (a Remove proposal of this member's own leaf); returns the
    /// proposal for the other members (one of them must commit it).
    pub fn leave_group(&mut self, group_id: &[u8]) -> Result<Vec<u8>> {
        self.tx(|v| {
            let mut group = v.group_without_pending(group_id)?;
            let msg = group
                .leave_group(&v.provider, &v.signing)
                .map_err(|e| mls_err(Error::State, "leave group", e))?;
            ser(&msg)
        })
    }

    fn delete_group_in_tx(&self, mut group: MlsGroup) -> Result<()> {
        let group_id = group.group_id().as_slice().to_vec();
        group
            .delete(self.provider.storage())
            .map_err(|e| Error::Storage(format!("delete group: {e}")))?;
        self.conn.execute(
            "DELETE FROM qpc_groups WHERE group_id = ?1",
            params![group_id],
        )?;
        pending::remove(&self.conn, &group_id)
    }

    /// Deletes all local state of a group.
    pub fn delete_group(&mut self, group_id: &[u8]) -> Result<()> {
        self.tx(|v| {
            let group = v.load_group(group_id)?;
            v.delete_group_in_tx(group)
        })
    }

    /// Joins a group from a Welcome; returns the group id. A local group of that id (a member
    /// who left or was removed and is invited again) is discarded first. The same Welcome bytes
    /// again return the same group id (journaled until `forget_processed`).
    pub fn join_group(&mut self, welcome: &[u8]) -> Result<Vec<u8>> {
        let digest = journal::digest(welcome);
        if let Some(id) = journal::joined(&self.conn, &digest)? {
            return Ok(id);
        }
        let msg = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|e| mls_err(Error::Malformed, "welcome does not parse", e))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(Error::Malformed("message is not a Welcome".into()));
        };
        self.tx(|v| {
            let builder =
                StagedWelcome::build_from_welcome(&v.provider, &Self::join_config(), welcome)
                    .map_err(|e| mls_err(Error::Decrypt, "welcome rejected", e))?;
            let id = builder
                .processed_welcome()
                .unverified_group_info()
                .group_id()
                .clone();
            if let Some(old) = v.load_stored_group(id.as_slice())? {
                v.delete_group_in_tx(old)?;
            }
            let group = builder
                .build()
                .map_err(|e| mls_err(Error::Decrypt, "welcome rejected", e))?
                .into_group(&v.provider)
                .map_err(|e| mls_err(Error::State, "join", e))?;
            let id = group.group_id().as_slice().to_vec();
            v.conn
                .execute("INSERT INTO qpc_groups (group_id) VALUES (?1)", params![id])?;
            journal::record_welcome(&v.conn, &digest, &id)?;
            Ok(id)
        })
    }

    /// Encrypts an application message to the group (refused while a commit is pending: the
    /// message would belong to an epoch the node may not choose).
    pub fn encrypt(&mut self, group_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        self.tx(|v| {
            let mut group = v.group_without_pending(group_id)?;
            let msg = group
                .create_message(&v.provider, &v.signing, plaintext)
                .map_err(|e| mls_err(Error::State, "encrypt", e))?;
            ser(&msg)
        })
    }

    /// Processes an incoming MLS message (group id read from the message), PublicMessage or
    /// PrivateMessage. Commits are merged, proposals are stored for a later commit. The result
    /// is journaled in the same transaction: the same bytes again return it unchanged.
    pub fn process(&mut self, message: &[u8]) -> Result<Processed> {
        let digest = journal::digest(message);
        if let Some(done) = journal::processed(&self.conn, &digest)? {
            return Ok(done);
        }
        let protocol = wire::parse_group_message(message)?;
        let group_id = protocol.group_id().as_slice().to_vec();
        self.tx(|v| v.process_in_tx(group_id, protocol, digest))
    }

    /// Processes incoming MLS messages in order, all in one transaction: one durable commit for the
    /// lot instead of one per message. Each message's outcome is the one `process` gives it alone
    /// (journaled likewise); one that fails leaves nothing behind (rolled back to a savepoint) and
    /// the next ones go on. A storage failure fails the whole batch: nothing of it is stored.
    pub fn process_batch(&mut self, messages: &[Vec<u8>]) -> Result<Vec<Result<Processed>>> {
        self.tx(|v| {
            messages
                .iter()
                .map(|message| v.process_in_savepoint(message))
                .collect()
        })
    }

    /// One message of a batch; the outer `Err` is a storage failure, which ends the batch.
    fn process_in_savepoint(&mut self, message: &[u8]) -> Result<Result<Processed>> {
        let digest = journal::digest(message);
        if let Some(done) = journal::processed(&self.conn, &digest)? {
            return Ok(Ok(done));
        }
        let protocol = match wire::parse_group_message(message) {
            Ok(protocol) => protocol,
            Err(e) => return Ok(Err(e)),
        };
        let group_id = protocol.group_id().as_slice().to_vec();
        run(&self.conn, "SAVEPOINT qpc_message")?;
        let out = self.process_in_tx(group_id.clone(), protocol, digest);
        if out.is_err() {
            run(&self.conn, "ROLLBACK TO qpc_message")?;
            // The kept copy may hold what was just rolled back: load it again when next used.
            self.groups.forget(&group_id);
        }
        run(&self.conn, "RELEASE qpc_message")?;
        match out {
            Err(e @ Error::Storage(_)) => Err(e),
            other => Ok(other),
        }
    }

    /// Drops journal entries (of `process` and `join_group`) the caller has stored.
    pub fn forget_processed(&mut self, digests: &[Vec<u8>]) -> Result<()> {
        self.tx(|v| journal::forget(&v.conn, digests))
    }

    /// Processes one message inside the caller's transaction and journals its outcome there (a
    /// failure journals nothing), so that the same bytes again return that outcome.
    fn process_in_tx(
        &mut self,
        group_id: Vec<u8>,
        protocol: ProtocolMessage,
        digest: journal::Digest32,
    ) -> Result<Processed> {
        let mut group = self.group(&group_id)?;
        if group.configuration() != &Self::join_config() {
            // Groups stored under an older configuration (handshakes only as PrivateMessage, fewer
            // past epochs kept) take the current one.
            group
                .set_configuration(self.provider.storage(), &Self::join_config())
                .map_err(|e| Error::Storage(format!("group configuration: {e}")))?;
        }
        let msg_epoch = protocol.epoch().as_u64();
        let cur_epoch = group.epoch().as_u64();
        let is_handshake = protocol.is_handshake_message();
        if is_handshake && msg_epoch != cur_epoch {
            return Err(Error::WrongEpoch(format!(
                "handshake message for epoch {msg_epoch}, group is at {cur_epoch}"
            )));
        }
        let processed = group
            .process_message(&self.provider, protocol)
            .map_err(|e| classify_process_error(e, msg_epoch, cur_epoch))?;
        let sender = match processed.sender() {
            Sender::Member(idx) => group.member_at(*idx).map(|m| m.signature_key),
            _ => None,
        };
        let mut out = Processed {
            kind: MessageKind::Application,
            group_id,
            epoch: cur_epoch,
            sender,
            plaintext: None,
            added: vec![],
            removed: vec![],
            self_removed: false,
            digest,
        };
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                out.plaintext = Some(Zeroizing::new(app.into_bytes()));
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                out.kind = MessageKind::Proposal;
                match proposal.proposal() {
                    Proposal::Remove(r) => out
                        .removed
                        .extend(group.member_at(r.removed()).map(|m| m.signature_key)),
                    Proposal::SelfRemove => out.removed.extend(out.sender.clone()),
                    Proposal::Add(a) => out.added.push(
                        a.key_package()
                            .leaf_node()
                            .signature_key()
                            .as_slice()
                            .to_vec(),
                    ),
                    _ => {}
                }
                group
                    .store_pending_proposal(self.provider.storage(), *proposal)
                    .map_err(|e| Error::Storage(format!("store proposal: {e}")))?;
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                // External joins are not part of this application's protocol: reported, not stored.
                out.kind = MessageKind::Proposal;
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                out.kind = MessageKind::Commit;
                for add in staged.add_proposals() {
                    let kp = add.add_proposal().key_package();
                    check_credential(kp).map_err(|_| {
                        Error::InvalidKeyPackage(
                            "commit adds a member whose credential is not its signature key".into(),
                        )
                    })?;
                    out.added
                        .push(kp.leaf_node().signature_key().as_slice().to_vec());
                }
                for queued in staged.queued_proposals() {
                    let leaf = match (queued.proposal(), queued.sender()) {
                        (Proposal::Remove(r), _) => Some(r.removed()),
                        (Proposal::SelfRemove, Sender::Member(idx)) => Some(*idx),
                        _ => None,
                    };
                    out.removed.extend(
                        leaf.and_then(|l| group.member_at(l))
                            .map(|m| m.signature_key),
                    );
                }
                out.self_removed = staged.self_removed();
                // Another member's commit took this epoch: OpenMLS drops a pending one of ours.
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(|e| mls_err(Error::State, "merge commit", e))?;
                pending::remove(&self.conn, &out.group_id)?;
            }
            ProcessedMessageContent::OwnPendingCommit => {
                out.kind = MessageKind::Commit;
                group
                    .merge_pending_commit(&self.provider)
                    .map_err(|e| mls_err(Error::State, "merge own commit", e))?;
                pending::remove(&self.conn, &out.group_id)?;
            }
            ProcessedMessageContent::OwnPrivateMessage => {
                return Err(Error::State(
                    "message sent by this member itself (it cannot decrypt its own messages)"
                        .into(),
                ));
            }
            #[allow(unreachable_patterns)]
            _ => return Err(Error::Unsupported("message content type".into())),
        }
        out.epoch = group.epoch().as_u64();
        journal::record_processed(&self.conn, &out)?;
        Ok(out)
    }

    /// Identity keys of the group's members, in leaf order.
    pub fn members(&self, group_id: &[u8]) -> Result<Vec<Vec<u8>>> {
        let group = self.group(group_id)?;
        Ok(group.members().map(|m| m.signature_key).collect())
    }

    /// The MLS exporter (RFC 9420 section 8.5) of the group's current epoch.
    pub fn export_secret(
        &self,
        group_id: &[u8],
        label: &str,
        context: &[u8],
        length: usize,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let group = self.group(group_id)?;
        // HKDF-Expand yields at most 255 hash lengths.
        let max = 255 * group.ciphersuite().hash_length();
        if length == 0 || length > max {
            return Err(Error::State(format!(
                "exporter length must be 1..={max} bytes, got {length}"
            )));
        }
        group
            .export_secret(self.provider.crypto(), label, context, length)
            .map(Zeroizing::new)
            .map_err(|e| mls_err(Error::State, "export secret", e))
    }

    /// Current epoch of the group.
    pub fn epoch(&self, group_id: &[u8]) -> Result<u64> {
        Ok(self.group(group_id)?.epoch().as_u64())
    }

    /// Ciphersuite id of the group.
    pub fn group_ciphersuite(&self, group_id: &[u8]) -> Result<u16> {
        Ok(self.group(group_id)?.ciphersuite() as u16)
    }

    /// Whether this vault is still an active member of the group.
    pub fn is_active(&self, group_id: &[u8]) -> Result<bool> {
        Ok(self.group(group_id)?.is_active())
    }

    /// Ids of all groups stored in this vault.
    pub fn group_ids(&self) -> Result<Vec<Vec<u8>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT group_id FROM qpc_groups ORDER BY created_at, group_id")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }
}

/// Runs a statement without parameters, cached: parsing the transaction statements anew was a
/// visible part of a message's cost.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute([])
}

fn ser(msg: &MlsMessageOut) -> Result<Vec<u8>> {
    msg.tls_serialize_detached()
        .map_err(|e| mls_err(Error::Crypto, "serialise message", e))
}

fn classify_process_error<E: std::fmt::Display>(
    e: ProcessMessageError<E>,
    msg_epoch: u64,
    cur_epoch: u64,
) -> Error {
    match e {
        ProcessMessageError::ValidationError(ValidationError::WrongEpoch) => Error::WrongEpoch(
            format!("message for epoch {msg_epoch}, group is at {cur_epoch}"),
        ),
        ProcessMessageError::ValidationError(
            ValidationError::UnableToDecrypt(_) | ValidationError::InvalidSignature,
        ) => {
            if msg_epoch != cur_epoch {
                Error::WrongEpoch(format!(
                    "cannot decrypt a message for epoch {msg_epoch}, group is at {cur_epoch}"
                ))
            } else {
                Error::Decrypt(format!("{e}"))
            }
        }
        ProcessMessageError::ValidationError(v) => {
            if msg_epoch != cur_epoch {
                Error::WrongEpoch(format!(
                    "message for epoch {msg_epoch}, group is at {cur_epoch}: {v}"
                ))
            } else {
                Error::Decrypt(format!("message rejected: {v}"))
            }
        }
        other => Error::Decrypt(format!("message rejected: {other}")),
    }
}

#[cfg(test)]
mod tests;
