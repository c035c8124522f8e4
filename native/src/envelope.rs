//! Hybrid envelope v1: RFC 9180 HPKE, base mode, KEM X-Wing (HPKE KEM id 0x647A),
//! KDF HKDF-SHA256, AEAD ChaCha20-Poly1305.
//!
//! Wire format: `0x01 | enc (1120 bytes) | ciphertext`. The HPKE `info` is supplied by the
//! caller; the AEAD associated data is empty (single-shot API, RFC 9180 section 8.1).

use hpke::{
    aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::XWing, Deserializable, Kem as KemTrait, OpModeR,
    OpModeS, Serializable,
};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

mod expanded_key;
use expanded_key::ExpandedXWing;

type Kem = XWing;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// Version byte of the envelope format.
pub const ENVELOPE_VERSION: u8 = 0x01;
/// X-Wing public key length (ML-KEM-768 encapsulation key | X25519 public key).
pub const PUBLIC_KEY_LEN: usize = 1216;
/// X-Wing ciphertext (HPKE `enc`) length.
pub const ENC_LEN: usize = 1120;
/// X-Wing decapsulation key (seed) length.
pub const SEED_LEN: usize = 32;
/// ChaCha20-Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// HPKE KEM identifier of X-Wing.
pub const KEM_ID: u16 = 0x647A;

/// An X-Wing key pair. The private part is the 32-byte X-Wing seed, kept with its expanded
/// ML-KEM-768 and X25519 keys so that opening does not re-derive them; all of it is zeroized on
/// drop and the seed never leaves this type except through [`HybridKeyPair::export_seed`].
pub struct HybridKeyPair {
    sk: <ExpandedXWing as KemTrait>::PrivateKey,
    pk: Vec<u8>,
}

impl HybridKeyPair {
    /// Generates a fresh key pair from the operating system's randomness.
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        getrandom::fill(seed.as_mut_slice())
            .map_err(|_| Error::Crypto("operating system randomness unavailable".into()))?;
        Self::from_seed(seed.as_slice())
    }

    /// Rebuilds the key pair from its 32-byte X-Wing seed.
    pub fn from_seed(seed: &[u8]) -> Result<Self> {
        if seed.len() != SEED_LEN {
            return Err(Error::InvalidKey(format!(
                "X-Wing seed must be {SEED_LEN} bytes, got {}",
                seed.len()
            )));
        }
        let sk = <ExpandedXWing as KemTrait>::PrivateKey::from_bytes(seed)
            .map_err(|_| Error::InvalidKey("invalid X-Wing seed".into()))?;
        let pk = ExpandedXWing::sk_to_pk(&sk).to_bytes().to_vec();
        Ok(Self { sk, pk })
    }

    /// The 1216-byte X-Wing public key.
    pub fn public_key(&self) -> &[u8] {
        &self.pk
    }

    /// The 32-byte secret seed. Only for callers that must persist the key themselves.
    pub fn export_seed(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.sk.to_bytes().to_vec())
    }

    /// Opens an envelope addressed to this key pair.
    pub fn open(&self, envelope: &[u8], info: &[u8]) -> Result<Vec<u8>> {
        open_envelope(&self.sk, envelope, info)
    }
}

/// HPKE `info` label of envelope v1 (DESIGN section 8).
pub const INFO_LABEL: &[u8] = b"quicnprotochat envelope v1";

/// `info = "quicnprotochat envelope v1" | recipient identity key (32) | channel id (0 or 16)`.
/// The identity key has a fixed length, so the concatenation is unambiguous.
pub fn envelope_info(recipient_identity_key: &[u8], channel_id: &[u8]) -> Result<Vec<u8>> {
    if recipient_identity_key.len() != 32 {
        return Err(Error::InvalidKey(format!(
            "recipient identity key must be 32 bytes, got {}",
            recipient_identity_key.len()
        )));
    }
    if !(channel_id.is_empty() || channel_id.len() == 16) {
        return Err(Error::Malformed(format!(
            "channel id must be empty or 16 bytes, got {}",
            channel_id.len()
        )));
    }
    let mut info = Vec::with_capacity(INFO_LABEL.len() + 32 + channel_id.len());
    info.extend_from_slice(INFO_LABEL);
    info.extend_from_slice(recipient_identity_key);
    info.extend_from_slice(channel_id);
    Ok(info)
}

fn parse_public_key(public_key: &[u8]) -> Result<<Kem as KemTrait>::PublicKey> {
    if public_key.len() != PUBLIC_KEY_LEN {
        return Err(Error::InvalidKey(format!(
            "X-Wing public key must be {PUBLIC_KEY_LEN} bytes, got {}",
            public_key.len()
        )));
    }
    <Kem as KemTrait>::PublicKey::from_bytes(public_key)
        .map_err(|_| Error::InvalidKey("X-Wing public key does not decode".into()))
}

/// Checks that `public_key` is a well-formed X-Wing public key.
pub fn validate_public_key(public_key: &[u8]) -> Result<()> {
    parse_public_key(public_key).map(|_| ())
}

/// Seals `payload` to `recipient_public_key`; returns `0x01 | enc | ciphertext`.
pub fn seal_envelope(recipient_public_key: &[u8], payload: &[u8], info: &[u8]) -> Result<Vec<u8>> {
    let pk = parse_public_key(recipient_public_key)?;
    let (enc, ct) =
        hpke::single_shot_seal::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, info, payload, b"")
            .map_err(|_| Error::Crypto("HPKE seal failed".into()))?;
    let enc = enc.to_bytes();
    let mut out = Vec::with_capacity(1 + ENC_LEN + ct.len());
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&enc);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_envelope(
    sk: &<ExpandedXWing as KemTrait>::PrivateKey,
    envelope: &[u8],
    info: &[u8],
) -> Result<Vec<u8>> {
    if envelope.len() < 1 + ENC_LEN + TAG_LEN {
        return Err(Error::Malformed(format!(
            "envelope too short: {} bytes, need at least {}",
            envelope.len(),
            1 + ENC_LEN + TAG_LEN
        )));
    }
    if envelope[0] != ENVELOPE_VERSION {
        return Err(Error::Malformed(format!(
            "unknown envelope version {:#04x}",
            envelope[0]
        )));
    }
    let enc = <Kem as KemTrait>::EncappedKey::from_bytes(&envelope[1..1 + ENC_LEN])
        .map_err(|_| Error::Malformed("envelope enc does not decode".into()))?;
    hpke::single_shot_open::<Aead, Kdf, ExpandedXWing>(
        &OpModeR::Base,
        sk,
        &enc,
        info,
        &envelope[1 + ENC_LEN..],
        b"",
    )
    .map_err(|_| {
        Error::Decrypt("envelope authentication failed (wrong key, info or tampered)".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let kp = HybridKeyPair::generate().unwrap();
        assert_eq!(kp.public_key().len(), PUBLIC_KEY_LEN);
        let env = seal_envelope(kp.public_key(), b"hello", b"info").unwrap();
        assert_eq!(env.len(), 1 + ENC_LEN + 5 + TAG_LEN);
        assert_eq!(kp.open(&env, b"info").unwrap(), b"hello");
        // wrong info
        assert!(matches!(kp.open(&env, b"other"), Err(Error::Decrypt(_))));
        // every region tampered
        for idx in [1, 500, ENC_LEN, ENC_LEN + 1, env.len() - 1] {
            let mut bad = env.clone();
            bad[idx] ^= 0x01;
            assert!(kp.open(&bad, b"info").is_err(), "tamper at {idx} accepted");
        }
        let mut bad = env.clone();
        bad[0] = 2;
        assert!(matches!(kp.open(&bad, b"info"), Err(Error::Malformed(_))));
        assert!(matches!(
            kp.open(&env[..100], b"info"),
            Err(Error::Malformed(_))
        ));
        // another key cannot open
        let other = HybridKeyPair::generate().unwrap();
        assert!(other.open(&env, b"info").is_err());
    }

    #[test]
    fn info_layout() {
        let info = envelope_info(&[9; 32], &[]).unwrap();
        assert_eq!(&info[..26], b"quicnprotochat envelope v1");
        assert_eq!(info.len(), 26 + 32);
        assert_eq!(envelope_info(&[9; 32], &[1; 16]).unwrap().len(), 26 + 48);
        assert!(envelope_info(&[9; 31], &[]).is_err());
        assert!(envelope_info(&[9; 32], &[1; 15]).is_err());
    }

    #[test]
    fn seed_round_trip() {
        let kp = HybridKeyPair::generate().unwrap();
        let again = HybridKeyPair::from_seed(&kp.export_seed()).unwrap();
        assert_eq!(kp.public_key(), again.public_key());
        assert!(HybridKeyPair::from_seed(&[0u8; 31]).is_err());
        assert!(seal_envelope(&[0u8; 100], b"x", b"").is_err());
    }
}
