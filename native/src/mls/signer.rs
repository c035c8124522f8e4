//! The identity key as OpenMLS signs with it. OpenMLS's basic key pair rebuilds the Ed25519
//! signing key from its stored seed for every signature (a hash and a scalar multiplication:
//! about a tenth of an application message's cost); this one is built once when the vault opens.

use ed25519_dalek::Signer as _;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub struct IdentitySigner(ed25519_dalek::SigningKey);

/// The key pair's fields as it serialises them (the form it is stored in; the crate keeps it for
/// stored pairs) and the only way to its private part outside the crate's test builds.
#[derive(serde::Deserialize)]
struct PairFields {
    private: Vec<u8>,
}

impl IdentitySigner {
    /// The signing key of `pair` (an Ed25519 pair whose private part is the 32-byte seed).
    pub fn new(pair: &SignatureKeyPair) -> Result<Self> {
        let broken = || Error::Storage("identity key pair is not an Ed25519 key".into());
        let json = Zeroizing::new(serde_json::to_vec(pair).map_err(|_| broken())?);
        let seed = Zeroizing::new(
            serde_json::from_slice::<PairFields>(&json)
                .map_err(|_| broken())?
                .private,
        );
        let key = ed25519_dalek::SigningKey::try_from(seed.as_slice()).map_err(|_| broken())?;
        if key.verifying_key().as_bytes() != pair.public() {
            return Err(Error::Storage(
                "identity key pair: public key does not match".into(),
            ));
        }
        Ok(IdentitySigner(key))
    }
}

impl Signer for IdentitySigner {
    fn sign(&self, payload: &[u8]) -> std::result::Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
