//! PyO3 bindings. Thin: argument conversion, GIL release around heavy work, error mapping.
//! Secret keys stay in Rust objects; Python holds handles to them.

use std::sync::{Mutex, MutexGuard};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rand::rngs::OsRng;

use crate::envelope;
use crate::error::Error;
use crate::mls;
use crate::opaque::{self, AppArgon2, Params};

create_exception!(
    quicnprotochat_native,
    NativeError,
    PyException,
    "Base class of every error raised by the native core."
);
create_exception!(
    quicnprotochat_native,
    MalformedError,
    NativeError,
    "Input bytes do not parse."
);
create_exception!(
    quicnprotochat_native,
    DecryptError,
    NativeError,
    "Decryption or message authentication failed."
);
create_exception!(
    quicnprotochat_native,
    InvalidKeyPackage,
    NativeError,
    "A KeyPackage failed validation."
);
create_exception!(
    quicnprotochat_native,
    WrongEpoch,
    NativeError,
    "An MLS message is for another epoch than the group's."
);
create_exception!(
    quicnprotochat_native,
    OpaqueError,
    NativeError,
    "OPAQUE failure (wrong password and unknown user look the same)."
);
create_exception!(
    quicnprotochat_native,
    InvalidKeyError,
    NativeError,
    "A key has the wrong size or does not decode."
);
create_exception!(
    quicnprotochat_native,
    StorageError,
    NativeError,
    "Vault storage failure."
);
create_exception!(
    quicnprotochat_native,
    VaultKeyError,
    StorageError,
    "The vault cannot be decrypted with the given key."
);
create_exception!(
    quicnprotochat_native,
    GroupNotFound,
    NativeError,
    "Unknown group id."
);
create_exception!(
    quicnprotochat_native,
    StateError,
    NativeError,
    "Operation not possible in the current state."
);
create_exception!(
    quicnprotochat_native,
    UnsupportedError,
    NativeError,
    "Unsupported ciphersuite or feature."
);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Malformed(_) => MalformedError::new_err(msg),
            Error::Decrypt(_) => DecryptError::new_err(msg),
            Error::InvalidKeyPackage(_) => InvalidKeyPackage::new_err(msg),
            Error::WrongEpoch(_) => WrongEpoch::new_err(msg),
            Error::Opaque(_) => OpaqueError::new_err(msg),
            Error::InvalidKey(_) => InvalidKeyError::new_err(msg),
            Error::VaultKey(_) => VaultKeyError::new_err(msg),
            Error::Storage(_) => StorageError::new_err(msg),
            Error::GroupNotFound(_) => GroupNotFound::new_err(msg),
            Error::State(_) => StateError::new_err(msg),
            Error::Unsupported(_) => UnsupportedError::new_err(msg),
            Error::Crypto(_) => NativeError::new_err(msg),
        }
    }
}

/// Releases the GIL around `f` and turns a panic inside it into a `NativeError` (PyO3 would
/// otherwise raise `PanicException`, a `BaseException` that ordinary handlers do not catch).
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error> + Send) -> PyResult<T> {
    py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(Error::Crypto("internal error".into())))
    })
    .map_err(PyErr::from)
}

fn bytes<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, data)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the data half-written in a way we rely on
    // (every vault operation is one SQL transaction), so a poisoned lock is recovered.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A commit and, when it adds members, its Welcome.
type CommitAndWelcome<'py> = (Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>);

fn to_vecs(items: Vec<Bound<'_, PyBytes>>) -> Vec<Vec<u8>> {
    items.iter().map(|b| b.as_bytes().to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// Envelopes

/// Seals `payload` to an X-Wing public key: `0x01 | enc (1120) | ciphertext`.
#[pyfunction]
fn seal_envelope<'py>(
    py: Python<'py>,
    recipient_public_key: &[u8],
    payload: &[u8],
    info: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let out = run(py, || {
        envelope::seal_envelope(recipient_public_key, payload, info)
    })?;
    Ok(bytes(py, &out))
}

/// HPKE info of envelope v1: label | recipient identity key (32) | channel id (empty or 16).
#[pyfunction]
#[pyo3(signature = (recipient_identity_key, channel_id = None))]
fn envelope_info<'py>(
    py: Python<'py>,
    recipient_identity_key: &[u8],
    channel_id: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let info = envelope::envelope_info(recipient_identity_key, channel_id.unwrap_or_default())?;
    Ok(bytes(py, &info))
}

/// Checks that bytes are a well-formed X-Wing public key (raises InvalidKeyError otherwise).
#[pyfunction]
fn validate_hybrid_public_key(public_key: &[u8]) -> PyResult<()> {
    Ok(envelope::validate_public_key(public_key)?)
}

/// An X-Wing key pair held in Rust memory (zeroized on drop).
#[pyclass(frozen, module = "quicnprotochat.native")]
struct HybridKeyPair(envelope::HybridKeyPair);

#[pymethods]
impl HybridKeyPair {
    #[staticmethod]
    fn generate(py: Python<'_>) -> PyResult<Self> {
        Ok(HybridKeyPair(run(py, envelope::HybridKeyPair::generate)?))
    }

    #[staticmethod]
    fn from_seed(py: Python<'_>, seed: &[u8]) -> PyResult<Self> {
        Ok(HybridKeyPair(run(py, || {
            envelope::HybridKeyPair::from_seed(seed)
        })?))
    }

    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        bytes(py, self.0.public_key())
    }

    fn open<'py>(
        &self,
        py: Python<'py>,
        envelope: &[u8],
        info: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let out = run(py, || self.0.open(envelope, info))?;
        Ok(bytes(py, &out))
    }

    /// The 32-byte secret seed, for callers that must persist the key themselves.
    /// Prefer `Vault`, which keeps its hybrid key inside the encrypted database.
    fn export_secret_seed<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        bytes(py, &self.0.export_seed())
    }

    fn __repr__(&self) -> String {
        "HybridKeyPair(<secret>)".into()
    }
}

// ---------------------------------------------------------------------------------------------
// MLS

/// Facts about a validated KeyPackage.
#[pyclass(frozen, get_all, module = "quicnprotochat.native")]
struct KeyPackageInfo {
    identity_key: Py<PyBytes>,
    ciphersuite: u16,
    is_last_resort: bool,
    not_before: u64,
    not_after: u64,
    reference: Py<PyBytes>,
}

#[pymethods]
impl KeyPackageInfo {
    fn __repr__(&self) -> String {
        format!(
            "KeyPackageInfo(ciphersuite={:#06x}, is_last_resort={}, not_after={})",
            self.ciphersuite, self.is_last_resort, self.not_after
        )
    }
}

/// Parses and validates a KeyPackage, raw or wrapped in an MLSMessage (raises InvalidKeyPackage).
#[pyfunction]
fn validate_key_package(py: Python<'_>, data: &[u8]) -> PyResult<KeyPackageInfo> {
    let info = run(py, || mls::validate_key_package(data))?;
    Ok(KeyPackageInfo {
        identity_key: bytes(py, &info.identity_key).unbind(),
        ciphersuite: info.ciphersuite,
        is_last_resort: info.last_resort,
        not_before: info.not_before,
        not_after: info.not_after,
        reference: bytes(py, &info.reference).unbind(),
    })
}

/// Clear header of an MLS group message (RFC 9420 section 6).
#[pyclass(frozen, get_all, module = "quicnprotochat.native")]
struct MlsMessageInfo {
    group_id: Py<PyBytes>,
    epoch: u64,
    content_type: &'static str,
    wire_format: &'static str,
}

#[pymethods]
impl MlsMessageInfo {
    fn __repr__(&self) -> String {
        format!(
            "MlsMessageInfo(epoch={}, content_type={:?}, wire_format={:?})",
            self.epoch, self.content_type, self.wire_format
        )
    }
}

/// Group id, epoch, content type and wire format of a PublicMessage or PrivateMessage
/// (raises MalformedError for anything else).
#[pyfunction]
fn mls_message_info(py: Python<'_>, message: &[u8]) -> PyResult<MlsMessageInfo> {
    let info = run(py, || mls::message_info(message))?;
    Ok(MlsMessageInfo {
        group_id: bytes(py, &info.group_id).unbind(),
        epoch: info.epoch,
        content_type: info.content_type,
        wire_format: info.wire_format,
    })
}

/// Verifies an Ed25519 signature; False for a bad signature or malformed key.
#[pyfunction]
fn verify_ed25519(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    mls::verify_ed25519(public_key, message, signature)
}

/// Outcome of `Vault.process`.
#[pyclass(frozen, get_all, module = "quicnprotochat.native")]
struct ProcessedMessage {
    kind: &'static str,
    group_id: Py<PyBytes>,
    epoch: u64,
    sender: Option<Py<PyBytes>>,
    plaintext: Option<Py<PyBytes>>,
    added: Vec<Py<PyBytes>>,
    removed: Vec<Py<PyBytes>>,
    self_removed: bool,
    digest: Py<PyBytes>,
}

#[pymethods]
impl ProcessedMessage {
    fn __repr__(&self) -> String {
        format!(
            "ProcessedMessage(kind={:?}, epoch={}, added={}, removed={}, self_removed={})",
            self.kind,
            self.epoch,
            self.added.len(),
            self.removed.len(),
            self.self_removed
        )
    }
}

impl ProcessedMessage {
    fn new(py: Python<'_>, p: &mls::Processed) -> Self {
        let list = |items: &[Vec<u8>]| items.iter().map(|i| bytes(py, i).unbind()).collect();
        ProcessedMessage {
            kind: p.kind.as_str(),
            group_id: bytes(py, &p.group_id).unbind(),
            epoch: p.epoch,
            sender: p.sender.as_ref().map(|s| bytes(py, s).unbind()),
            plaintext: p.plaintext.as_ref().map(|s| bytes(py, s).unbind()),
            added: list(&p.added),
            removed: list(&p.removed),
            self_removed: p.self_removed,
            digest: bytes(py, &p.digest).unbind(),
        }
    }
}

/// The client's encrypted state: identity, hybrid key and MLS groups in one SQLCipher file.
#[pyclass(frozen, module = "quicnprotochat.native")]
struct Vault {
    inner: Mutex<Option<mls::Vault>>,
}

impl Vault {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut mls::Vault) -> Result<T, Error> + Send,
    ) -> PyResult<T> {
        run(py, || {
            let mut guard = lock(&self.inner);
            let vault = guard
                .as_mut()
                .ok_or_else(|| Error::State("vault is closed".into()))?;
            f(vault)
        })
    }
}

#[pymethods]
impl Vault {
    /// Opens or creates the vault at `path`, encrypted with the raw 32-byte `key`, keeping at most
    /// `max_groups_in_memory` groups in memory (the least recently used one goes past that).
    #[staticmethod]
    #[pyo3(signature = (path, key, max_groups_in_memory = mls::DEFAULT_GROUPS_IN_MEMORY))]
    fn open(py: Python<'_>, path: &str, key: &[u8], max_groups_in_memory: usize) -> PyResult<Self> {
        let v = run(py, || {
            mls::Vault::open_with_limit(path, key, max_groups_in_memory)
        })?;
        Ok(Vault {
            inner: Mutex::new(Some(v)),
        })
    }

    /// Closes the database and drops (zeroizes) the secrets. Further calls raise StateError.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        run(py, || {
            lock(&self.inner).take();
            Ok(())
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    #[getter]
    fn identity_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let k = self.with(py, |v| Ok(v.identity_key()))?;
        Ok(bytes(py, &k))
    }

    fn sign<'py>(&self, py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let s = self.with(py, |v| v.sign(message))?;
        Ok(bytes(py, &s))
    }

    fn hybrid_public_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let k = self.with(py, |v| Ok(v.hybrid_public_key()))?;
        Ok(bytes(py, &k))
    }

    fn open_envelope<'py>(
        &self,
        py: Python<'py>,
        envelope: &[u8],
        info: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let p = self.with(py, |v| v.open_envelope(envelope, info))?;
        Ok(bytes(py, &p))
    }

    fn rotate_hybrid_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let k = self.with(py, |v| v.rotate_hybrid_key())?;
        Ok(bytes(py, &k))
    }

    #[pyo3(signature = (last_resort = false, ciphersuite = mls::SUITE_DEFAULT))]
    fn create_key_package<'py>(
        &self,
        py: Python<'py>,
        last_resort: bool,
        ciphersuite: u16,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let kp = self.with(py, |v| v.create_key_package(last_resort, ciphersuite))?;
        Ok(bytes(py, &kp))
    }

    #[pyo3(signature = (ciphersuite = mls::SUITE_DEFAULT))]
    fn create_group<'py>(
        &self,
        py: Python<'py>,
        ciphersuite: u16,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let id = self.with(py, |v| v.create_group(ciphersuite))?;
        Ok(bytes(py, &id))
    }

    fn add_members<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
        key_packages: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let kps = to_vecs(key_packages);
        let out = self.with(py, |v| v.add_members(group_id, &kps))?;
        let welcome = out.welcome.unwrap_or_default();
        Ok((bytes(py, &out.commit), bytes(py, &welcome)))
    }

    fn remove_members<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
        identity_keys: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let keys = to_vecs(identity_keys);
        let c = self.with(py, |v| v.remove_members(group_id, &keys))?;
        Ok(bytes(py, &c))
    }

    fn self_update<'py>(&self, py: Python<'py>, group_id: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let c = self.with(py, |v| v.self_update(group_id))?;
        Ok(bytes(py, &c))
    }

    fn commit_pending_proposals<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
    ) -> PyResult<CommitAndWelcome<'py>> {
        let out = self.with(py, |v| v.commit_pending_proposals(group_id))?;
        Ok((bytes(py, &out.commit), out.welcome.map(|w| bytes(py, &w))))
    }

    fn merge_pending_commit(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<()> {
        self.with(py, |v| v.merge_pending_commit(group_id))
    }

    fn clear_pending_commit(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<()> {
        self.with(py, |v| v.clear_pending_commit(group_id))
    }

    fn pending_commit<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
    ) -> PyResult<Option<CommitAndWelcome<'py>>> {
        let out = self.with(py, |v| v.pending_commit(group_id))?;
        Ok(out.map(|o| (bytes(py, &o.commit), o.welcome.map(|w| bytes(py, &w)))))
    }

    fn forget_processed(&self, py: Python<'_>, digests: Vec<Bound<'_, PyBytes>>) -> PyResult<()> {
        let digests = to_vecs(digests);
        self.with(py, |v| v.forget_processed(&digests))
    }

    fn leave_group<'py>(&self, py: Python<'py>, group_id: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let p = self.with(py, |v| v.leave_group(group_id))?;
        Ok(bytes(py, &p))
    }

    fn delete_group(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<()> {
        self.with(py, |v| v.delete_group(group_id))
    }

    fn join_group<'py>(&self, py: Python<'py>, welcome: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let id = self.with(py, |v| v.join_group(welcome))?;
        Ok(bytes(py, &id))
    }

    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
        plaintext: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let m = self.with(py, |v| v.encrypt(group_id, plaintext))?;
        Ok(bytes(py, &m))
    }

    fn process(&self, py: Python<'_>, message: &[u8]) -> PyResult<ProcessedMessage> {
        let p = self.with(py, |v| v.process(message))?;
        Ok(ProcessedMessage::new(py, &p))
    }

    /// Processes messages in order in one transaction; per message a ProcessedMessage or the
    /// exception `process` would have raised for it.
    fn process_batch(
        &self,
        py: Python<'_>,
        messages: Vec<Bound<'_, PyBytes>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let messages = to_vecs(messages);
        let results = self.with(py, |v| v.process_batch(&messages))?;
        results
            .into_iter()
            .map(|result| match result {
                Ok(p) => Ok(Py::new(py, ProcessedMessage::new(py, &p))?.into_any()),
                Err(e) => Ok(PyErr::from(e).into_value(py).into_any()),
            })
            .collect()
    }

    /// How many groups the vault keeps in memory now (never more than `max_groups_in_memory`).
    #[getter]
    fn groups_in_memory(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |v| Ok(v.groups_in_memory()))
    }

    fn members<'py>(&self, py: Python<'py>, group_id: &[u8]) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let m = self.with(py, |v| v.members(group_id))?;
        Ok(m.iter().map(|k| bytes(py, k)).collect())
    }

    fn export_secret<'py>(
        &self,
        py: Python<'py>,
        group_id: &[u8],
        label: &str,
        context: &[u8],
        length: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let secret = self.with(py, |v| v.export_secret(group_id, label, context, length))?;
        Ok(bytes(py, &secret))
    }

    fn epoch(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<u64> {
        self.with(py, |v| v.epoch(group_id))
    }

    fn group_ciphersuite(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<u16> {
        self.with(py, |v| v.group_ciphersuite(group_id))
    }

    fn is_active(&self, py: Python<'_>, group_id: &[u8]) -> PyResult<bool> {
        self.with(py, |v| v.is_active(group_id))
    }

    fn group_ids<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let ids = self.with(py, |v| v.group_ids())?;
        Ok(ids.iter().map(|k| bytes(py, k)).collect())
    }

    fn __repr__(&self) -> String {
        "Vault(<encrypted>)".into()
    }
}

// ---------------------------------------------------------------------------------------------
// OPAQUE

/// Server side of OPAQUE: holds the secret server setup (OPRF seed + AKE key pair).
#[pyclass(frozen, module = "quicnprotochat.native")]
struct OpaqueServer(opaque::Server<AppArgon2>);

#[pymethods]
impl OpaqueServer {
    #[staticmethod]
    fn generate() -> Self {
        OpaqueServer(opaque::Server::generate(&mut OsRng))
    }

    #[staticmethod]
    fn from_bytes(setup: &[u8]) -> PyResult<Self> {
        Ok(OpaqueServer(opaque::Server::from_bytes(setup)?))
    }

    /// SECRET serialization of the setup; persist it sealed.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        bytes(py, &self.0.to_bytes())
    }

    #[getter]
    fn public_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        bytes(py, &self.0.public_key())
    }

    fn registration_start<'py>(
        &self,
        py: Python<'py>,
        credential_identifier: &[u8],
        request: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let r = run(py, || {
            self.0.registration_start(credential_identifier, request)
        })?;
        Ok(bytes(py, &r))
    }

    /// RegistrationUpload -> password file.
    #[staticmethod]
    fn registration_finish<'py>(py: Python<'py>, upload: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let f = opaque::Server::<AppArgon2>::registration_finish(upload)?;
        Ok(bytes(py, &f))
    }

    /// KE1 -> (KE2, server state). `password_file=None` runs the fake-record path.
    #[pyo3(signature = (credential_identifier, request, password_file))]
    fn login_start<'py>(
        &self,
        py: Python<'py>,
        credential_identifier: &[u8],
        request: &[u8],
        password_file: Option<&[u8]>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let (ke2, state) = run(py, || {
            self.0.login_start(
                &mut OsRng,
                credential_identifier,
                password_file,
                request,
                &Params::default(),
            )
        })?;
        Ok((bytes(py, &ke2), bytes(py, &state)))
    }

    /// (state, KE3) -> session key; raises OpaqueError when the client did not authenticate.
    #[staticmethod]
    fn login_finish<'py>(
        py: Python<'py>,
        state: &[u8],
        finalization: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let k = run(py, || {
            opaque::Server::<AppArgon2>::login_finish(state, finalization, &Params::default())
        })?;
        Ok(bytes(py, &k))
    }

    fn __repr__(&self) -> String {
        "OpaqueServer(<secret>)".into()
    }
}

/// Client registration in progress (single use).
#[pyclass(frozen, module = "quicnprotochat.native")]
struct OpaqueClientRegistration(Mutex<Option<opaque::ClientRegistrationFlow<AppArgon2>>>);

#[pymethods]
impl OpaqueClientRegistration {
    /// password -> (handle, RegistrationRequest).
    #[staticmethod]
    fn start<'py>(py: Python<'py>, password: &[u8]) -> PyResult<(Self, Bound<'py, PyBytes>)> {
        let (flow, req) = opaque::ClientRegistrationFlow::start(&mut OsRng, password)?;
        Ok((
            OpaqueClientRegistration(Mutex::new(Some(flow))),
            bytes(py, &req),
        ))
    }

    /// RegistrationResponse -> (RegistrationUpload, export_key). Runs Argon2id without the GIL.
    fn finish<'py>(
        &self,
        py: Python<'py>,
        response: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let out = run(py, || {
            let flow = lock(&self.0)
                .take()
                .ok_or_else(|| Error::Opaque("registration already finished".into()))?;
            flow.finish(&mut OsRng, response, &Params::default())
        })?;
        Ok((bytes(py, &out.upload), bytes(py, &out.export_key)))
    }
}

/// Client login in progress (single use).
#[pyclass(frozen, module = "quicnprotochat.native")]
struct OpaqueClientLogin(Mutex<Option<opaque::ClientLoginFlow<AppArgon2>>>);

#[pymethods]
impl OpaqueClientLogin {
    /// password -> (handle, KE1).
    #[staticmethod]
    fn start<'py>(py: Python<'py>, password: &[u8]) -> PyResult<(Self, Bound<'py, PyBytes>)> {
        let (flow, req) = opaque::ClientLoginFlow::start(&mut OsRng, password)?;
        Ok((OpaqueClientLogin(Mutex::new(Some(flow))), bytes(py, &req)))
    }

    /// KE2 -> (KE3, session_key). Raises OpaqueError on a wrong password or unknown user.
    fn finish<'py>(
        &self,
        py: Python<'py>,
        response: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let out = run(py, || {
            let flow = lock(&self.0)
                .take()
                .ok_or_else(|| Error::Opaque("login already finished".into()))?;
            flow.finish(&mut OsRng, response, &Params::default())
        })?;
        Ok((bytes(py, &out.finalization), bytes(py, &out.session_key)))
    }
}

// ---------------------------------------------------------------------------------------------
// Root key (sealed records at rest)

/// The node's root key, on a locked page inside this module; Python holds only this handle.
#[pyclass(frozen, module = "quicnprotochat.native")]
struct RootKey(crate::rootkey::RootKey);

#[pymethods]
impl RootKey {
    #[staticmethod]
    fn generate() -> PyResult<Self> {
        Ok(RootKey(crate::rootkey::RootKey::generate()?))
    }

    #[staticmethod]
    fn from_key_file(path: std::path::PathBuf) -> PyResult<Self> {
        Ok(RootKey(crate::rootkey::RootKey::from_key_file(&path)?))
    }

    #[staticmethod]
    #[pyo3(signature = (passphrase, salt, *, memory_kib, iterations, lanes))]
    fn from_passphrase(
        py: Python<'_>,
        passphrase: Vec<u8>,
        salt: &[u8],
        memory_kib: u32,
        iterations: u32,
        lanes: u32,
    ) -> PyResult<Self> {
        let cost = crate::rootkey::PassphraseCost {
            memory_kib,
            iterations,
            lanes,
        };
        let passphrase = zeroize::Zeroizing::new(passphrase);
        let salt = salt.to_vec();
        run(py, move || {
            crate::rootkey::RootKey::from_passphrase(&passphrase, &salt, cost)
        })
        .map(RootKey)
    }

    fn write_key_file(&self, path: std::path::PathBuf) -> PyResult<()> {
        Ok(self.0.write_key_file(&path)?)
    }

    #[getter]
    fn key_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        bytes(py, &self.0.key_id())
    }

    /// (locked in RAM, excluded from core dumps, address of the key's page).
    #[getter]
    fn memory_protection(&self) -> (bool, bool, usize) {
        self.0.memory_protection()
    }

    /// `plaintext` may be a bytearray (that the caller then wipes); the copy made here is zeroized.
    fn seal<'py>(
        &self,
        py: Python<'py>,
        purpose: &str,
        context: &[u8],
        plaintext: Vec<u8>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let plaintext = zeroize::Zeroizing::new(plaintext);
        Ok(bytes(py, &self.0.seal(purpose, context, &plaintext)?))
    }

    /// The plaintext in a bytearray, so that the caller can wipe it once used.
    fn open<'py>(
        &self,
        py: Python<'py>,
        purpose: &str,
        context: &[u8],
        record: &[u8],
    ) -> PyResult<Bound<'py, pyo3::types::PyByteArray>> {
        let plaintext = self.0.open(purpose, context, record)?;
        Ok(pyo3::types::PyByteArray::new(py, &plaintext))
    }

    fn reseal<'py>(
        &self,
        py: Python<'py>,
        new: &RootKey,
        purpose: &str,
        context: &[u8],
        record: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        Ok(bytes(py, &self.0.reseal(&new.0, purpose, context, record)?))
    }

    /// Opens a record and seals its plaintext in the hybrid envelope to `recipient_public_key` (a coffer shard on
    /// its way to its bot): the plaintext never reaches Python and is zeroized here.
    fn open_to_envelope<'py>(
        &self,
        py: Python<'py>,
        purpose: &str,
        context: &[u8],
        record: &[u8],
        recipient_public_key: &[u8],
        info: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let plaintext = self.0.open(purpose, context, record)?;
        Ok(bytes(
            py,
            &envelope::seal_envelope(recipient_public_key, &plaintext, info)?,
        ))
    }

    /// Seals an OPAQUE server setup without its bytes passing through Python.
    fn seal_opaque_server<'py>(
        &self,
        py: Python<'py>,
        server: &OpaqueServer,
        context: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let setup = server.0.to_bytes();
        Ok(bytes(py, &self.0.seal(OPAQUE_PURPOSE, context, &setup)?))
    }

    fn open_opaque_server(&self, context: &[u8], record: &[u8]) -> PyResult<OpaqueServer> {
        let setup = self.0.open(OPAQUE_PURPOSE, context, record)?;
        Ok(OpaqueServer(opaque::Server::from_bytes(&setup)?))
    }

    fn __repr__(&self) -> String {
        let id: String = self.0.key_id().iter().map(|b| format!("{b:02x}")).collect();
        format!("RootKey(key_id={id})")
    }
}

const OPAQUE_PURPOSE: &str = "opaque-server-setup";

/// (scheme, key id) of a sealed record, read from its header without a key.
#[pyfunction]
fn sealed_record_info<'py>(py: Python<'py>, record: &[u8]) -> PyResult<(u8, Bound<'py, PyBytes>)> {
    let info = crate::rootkey::RecordInfo::parse(record)?;
    Ok((info.scheme, bytes(py, &info.key_id)))
}

fn add_rootkey(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RootKey>()?;
    m.add_function(wrap_pyfunction!(sealed_record_info, m)?)?;
    m.add("SEALED_SCHEME", crate::rootkey::SCHEME_V1)?;
    m.add("OPAQUE_SETUP_PURPOSE", OPAQUE_PURPOSE)?;
    Ok(())
}

#[pyfunction]
fn version() -> &'static str {
    crate::VERSION
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(seal_envelope, m)?)?;
    m.add_function(wrap_pyfunction!(validate_hybrid_public_key, m)?)?;
    m.add_function(wrap_pyfunction!(envelope_info, m)?)?;
    m.add_function(wrap_pyfunction!(validate_key_package, m)?)?;
    m.add_function(wrap_pyfunction!(verify_ed25519, m)?)?;
    m.add_function(wrap_pyfunction!(mls_message_info, m)?)?;
    m.add_class::<HybridKeyPair>()?;
    m.add_class::<KeyPackageInfo>()?;
    m.add_class::<MlsMessageInfo>()?;
    m.add_class::<ProcessedMessage>()?;
    m.add_class::<Vault>()?;
    m.add_class::<OpaqueServer>()?;
    m.add_class::<OpaqueClientRegistration>()?;
    m.add_class::<OpaqueClientLogin>()?;
    add_rootkey(m)?;

    m.add("CIPHERSUITE_DEFAULT", mls::SUITE_DEFAULT)?;
    m.add("VAULT_GROUPS_IN_MEMORY", mls::DEFAULT_GROUPS_IN_MEMORY)?;
    m.add("CIPHERSUITE_XWING", mls::SUITE_XWING)?;
    m.add("ENVELOPE_VERSION", envelope::ENVELOPE_VERSION)?;
    m.add("HYBRID_PUBLIC_KEY_LEN", envelope::PUBLIC_KEY_LEN)?;
    m.add("HYBRID_ENC_LEN", envelope::ENC_LEN)?;
    m.add("HYBRID_KEM_ID", envelope::KEM_ID)?;

    for (name, ty) in [
        ("NativeError", py.get_type::<NativeError>()),
        ("MalformedError", py.get_type::<MalformedError>()),
        ("DecryptError", py.get_type::<DecryptError>()),
        ("InvalidKeyPackage", py.get_type::<InvalidKeyPackage>()),
        ("WrongEpoch", py.get_type::<WrongEpoch>()),
        ("OpaqueError", py.get_type::<OpaqueError>()),
        ("InvalidKeyError", py.get_type::<InvalidKeyError>()),
        ("StorageError", py.get_type::<StorageError>()),
        ("VaultKeyError", py.get_type::<VaultKeyError>()),
        ("GroupNotFound", py.get_type::<GroupNotFound>()),
        ("StateError", py.get_type::<StateError>()),
        ("UnsupportedError", py.get_type::<UnsupportedError>()),
    ] {
        ty.setattr("__module__", "quicnprotochat.native")?;
        m.add(name, ty)?;
    }
    Ok(())
}
