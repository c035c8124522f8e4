//! One error type for the whole core. Messages carry a reason, never key material or plaintext.

/// Errors of the native core; each variant becomes its own Python exception class.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input bytes do not parse (TLS codec, envelope framing, OPAQUE message sizes, ...).
    #[error("malformed input: {0}")]
    Malformed(String),
    /// Authenticated decryption or MLS message verification failed.
    #[error("decryption failed: {0}")]
    Decrypt(String),
    /// A KeyPackage failed validation (signature, lifetime, ciphersuite, credential).
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    /// An MLS message belongs to another epoch than the group's current one.
    #[error("wrong epoch: {0}")]
    WrongEpoch(String),
    /// OPAQUE protocol failure (including a wrong password or an unknown user).
    #[error("OPAQUE failure: {0}")]
    Opaque(String),
    /// A key has the wrong size or does not decode.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The vault could not be opened with the given key (or it is not a vault).
    #[error("vault key rejected: {0}")]
    VaultKey(String),
    /// Database failure.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Unknown group.
    #[error("group not found: {0}")]
    GroupNotFound(String),
    /// Operation not possible in the current state (inactive group, not a member, ...).
    #[error("invalid state: {0}")]
    State(String),
    /// Unsupported ciphersuite or feature.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Internal cryptographic failure (randomness, library error).
    #[error("crypto failure: {0}")]
    Crypto(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        // rusqlite errors contain SQL and error codes, not bound parameter values.
        Error::Storage(e.to_string())
    }
}
