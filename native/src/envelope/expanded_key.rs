//! X-Wing (draft-connolly-cfrg-xwing-kem) as an HPKE KEM whose private key is kept expanded.
//!
//! An X-Wing private key is a 32-byte seed; SHAKE256 of it yields the ML-KEM-768 seed and the
//! X25519 secret. `hpke`'s X-Wing KEM re-derives both (ML-KEM key generation and an X25519 base
//! point multiplication) on every decapsulation. This KEM does it once, when the key is loaded,
//! and decapsulates with the kept keys: same KEM id, same public key and ciphertext bytes, same
//! shared secret. Encapsulation is `hpke`'s own.
//!
//! ML-KEM decapsulation is libcrux's (the library OpenMLS's provider uses), which runs its AVX2 code
//! where the CPU has it: about half of an envelope open went to the portable ML-KEM before.

use hpke::hybrid_array::{sizes::U32, Array};
use hpke::kem::XWing;
use hpke::{Deserializable, HpkeError, Kem, Serializable};
use libcrux_ml_kem::mlkem768;
use sha3::{Digest as _, Sha3_256};
use shake::{ExtendableOutput as _, Shake256, Update as _, XofReader as _};
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

type XWingPublicKey = <XWing as Kem>::PublicKey;
type XWingEncappedKey = <XWing as Kem>::EncappedKey;

/// The X-Wing combiner's domain separator (`\.//^\`), hashed last.
const LABEL: &[u8; 6] = b"\\.//^\\";
const SEED_LEN: usize = 32;
const ML_KEM_CIPHERTEXT_LEN: usize = 1088;

/// libcrux's ML-KEM-768 private key (plain bytes), zeroized on drop.
#[derive(Clone)]
struct MlKemKey(mlkem768::MlKem768PrivateKey);

impl Drop for MlKemKey {
    fn drop(&mut self) {
        // SAFETY: a plain byte array, overwritten in place; volatile so that the write stays.
        unsafe { std::ptr::write_volatile(&mut self.0, mlkem768::MlKem768PrivateKey::default()) };
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// An X-Wing private key with its ML-KEM and X25519 parts expanded (all zeroized on drop).
#[derive(Clone)]
pub struct PrivateKey {
    seed: Zeroizing<[u8; SEED_LEN]>,
    dk_m: MlKemKey,
    sk_x: x25519_dalek::StaticSecret,
    pk_x: x25519_dalek::PublicKey,
    pk: XWingPublicKey,
}

impl PrivateKey {
    fn expand(seed: &[u8; SEED_LEN]) -> Result<Self, HpkeError> {
        let mut reader = Shake256::default().chain(seed).finalize_xof();
        let mut ml_kem_seed = Zeroizing::new([0u8; 64]);
        reader.read(ml_kem_seed.as_mut_slice());
        let mut x_secret = Zeroizing::new([0u8; 32]);
        reader.read(x_secret.as_mut_slice());
        // FIPS 203 ML-KEM.KeyGen_internal(d, z) from d || z, as X-Wing specifies.
        let pair = mlkem768::generate_key_pair(*ml_kem_seed);
        let (dk, _) = pair.into_parts();
        let dk_m = MlKemKey(dk);
        let sk_x = x25519_dalek::StaticSecret::from(*x_secret);
        let pk_x = x25519_dalek::PublicKey::from(&sk_x);
        // The public key as `hpke` derives it (the encapsulation side must see the same bytes).
        let pk = XWing::sk_to_pk(&<XWing as Kem>::PrivateKey::from_bytes(seed)?);
        Ok(Self {
            seed: Zeroizing::new(*seed),
            dk_m,
            sk_x,
            pk_x,
            pk,
        })
    }
}

impl Serializable for PrivateKey {
    type OutputSize = U32;

    fn write_exact(&self, buf: &mut [u8]) {
        buf.copy_from_slice(self.seed.as_slice());
    }
}

impl Deserializable for PrivateKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        let seed = Zeroizing::new(
            <[u8; SEED_LEN]>::try_from(encoded)
                .map_err(|_| HpkeError::IncorrectInputLength(SEED_LEN, encoded.len()))?,
        );
        Self::expand(&seed)
    }
}

impl ConstantTimeEq for PrivateKey {
    fn ct_eq(&self, other: &Self) -> Choice {
        self.seed.as_slice().ct_eq(other.seed.as_slice())
    }
}

/// X-Wing with expanded private keys; interchangeable with `hpke::kem::XWing` on the wire.
pub struct ExpandedXWing;

impl Kem for ExpandedXWing {
    const KEM_ID: u16 = XWing::KEM_ID;
    type NSecret = U32;
    type PublicKey = XWingPublicKey;
    type PrivateKey = PrivateKey;
    type EncappedKey = XWingEncappedKey;

    fn sk_to_pk(sk: &PrivateKey) -> XWingPublicKey {
        sk.pk.clone()
    }

    fn derive_keypair(ikm: &[u8]) -> (PrivateKey, XWingPublicKey) {
        let (sk, _) = XWing::derive_keypair(ikm);
        let seed = Zeroizing::new(sk.to_bytes());
        let sk = PrivateKey::from_bytes(seed.as_slice()).expect("a 32-byte seed always expands");
        let pk = sk.pk.clone();
        (sk, pk)
    }

    fn decap(
        sk_recip: &PrivateKey,
        pk_sender_id: Option<&XWingPublicKey>,
        encapped_key: &XWingEncappedKey,
    ) -> Result<hpke::kem::SharedSecret<Self>, HpkeError> {
        // X-Wing has no authenticated mode; the envelope uses base mode only.
        if pk_sender_id.is_some() {
            return Err(HpkeError::OpenError);
        }
        let ct = encapped_key.to_bytes();
        let (ct_m, ct_x) = ct.split_at(ML_KEM_CIPHERTEXT_LEN);
        let ct_m = mlkem768::MlKem768Ciphertext::try_from(ct_m).map_err(|_| HpkeError::OpenError)?;
        let ct_x: [u8; 32] = ct_x.try_into().map_err(|_| HpkeError::OpenError)?;
        let ss_m = Zeroizing::new(mlkem768::decapsulate(&sk_recip.dk_m.0, &ct_m));
        let ss_x = sk_recip
            .sk_x
            .diffie_hellman(&x25519_dalek::PublicKey::from(ct_x));
        let shared = Sha3_256::new()
            .chain_update(ss_m.as_slice())
            .chain_update(ss_x.as_bytes())
            .chain_update(ct_x)
            .chain_update(sk_recip.pk_x.as_bytes())
            .chain_update(LABEL)
            .finalize();
        Ok(hpke::kem::SharedSecret(Array::from(<[u8; 32]>::from(
            shared,
        ))))
    }

    fn encap_with_rng(
        pk_recip: &XWingPublicKey,
        sender_id_keypair: Option<(&PrivateKey, &XWingPublicKey)>,
        csprng: &mut impl hpke::rand_core::CryptoRng,
    ) -> Result<(hpke::kem::SharedSecret<Self>, XWingEncappedKey), HpkeError> {
        if sender_id_keypair.is_some() {
            return Err(HpkeError::EncapError);
        }
        let (shared, enc) = XWing::encap_with_rng(pk_recip, None, csprng)?;
        Ok((hpke::kem::SharedSecret(shared.0), enc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same public key and the same shared secret as `hpke`'s X-Wing, for keys and
    /// encapsulations drawn at random.
    #[test]
    fn agrees_with_hpke_x_wing() {
        for _ in 0..16 {
            let mut seed = [0u8; SEED_LEN];
            getrandom::fill(&mut seed).unwrap();
            let theirs = <XWing as Kem>::PrivateKey::from_bytes(&seed).unwrap();
            let ours = PrivateKey::from_bytes(&seed).unwrap();
            assert_eq!(ours.to_bytes(), theirs.to_bytes());
            let pk = XWing::sk_to_pk(&theirs);
            assert_eq!(ExpandedXWing::sk_to_pk(&ours), pk);
            let (shared, enc) = XWing::encap(&pk, None).unwrap();
            let opened = ExpandedXWing::decap(&ours, None, &enc).unwrap();
            assert_eq!(opened.0, shared.0);
            let (shared, enc) = ExpandedXWing::encap(&pk, None).unwrap();
            assert_eq!(XWing::decap(&theirs, None, &enc).unwrap().0, shared.0);
        }
        assert!(PrivateKey::from_bytes(&[0u8; 31]).is_err());
    }
}
