//! OpenMLS's cryptography: libcrux's provider, except for Ed25519 verification, which is
//! ed25519-dalek's. libcrux's portable verification was about a quarter of the CPU of decrypting
//! an application message; ed25519-dalek's (its AVX2 code where the CPU has it) takes about half
//! as long. It accepts what mls-rs, the other MLS library the interop tests run, accepts: the
//! RFC 8032 cofactorless check with canonical scalars.
//!
//! SHA-256 and its HMAC and HKDF (every suite here hashes with SHA-256) are RustCrypto's `sha2`,
//! `hmac` and `hkdf`, which use the CPU's SHA extensions where it has them: libcrux's portable
//! SHA-256 was a fifth of the CPU of processing a commit at 128 members (the tree hash over every
//! node) and part of every message's key schedule.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use openmls_libcrux_crypto::CryptoProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig,
    HpkeKeyPair, KemOutput, SignatureScheme,
};
use sha2::{Digest, Sha256};
use tls_codec::SecretVLBytes;
use zeroize::Zeroizing;

pub struct VaultCrypto(pub(super) CryptoProvider);

impl OpenMlsCrypto for VaultCrypto {
    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return self.0.verify_signature(alg, data, pk, signature);
        }
        let pk = <&[u8; 32]>::try_from(pk).map_err(|_| CryptoError::InvalidLength)?;
        let signature = <&[u8; 64]>::try_from(signature).map_err(|_| CryptoError::InvalidLength)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(pk)
            .map_err(|_| CryptoError::InvalidSignature)?;
        ed25519_dalek::Verifier::verify(
            &key,
            data,
            &ed25519_dalek::Signature::from_bytes(signature),
        )
        .map_err(|_| CryptoError::InvalidSignature)
    }

    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.0.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.0.supported_ciphersuites()
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        if hash_type != HashType::Sha2_256 {
            return self.0.hkdf_extract(hash_type, salt, ikm);
        }
        // HKDF-Extract is HMAC(salt, ikm); an empty salt pads to the same key as HashLen zeros. `Hkdf::extract`
        // would also key an HMAC with the PRK for expanding, which is thrown away here.
        self.hmac(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        if hash_type != HashType::Sha2_256 {
            return self.0.hmac(hash_type, key, message);
        }
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key).map_err(|_| CryptoError::InvalidLength)?;
        mac.update(message);
        let tag = Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
        Ok(tag.to_vec().into())
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        if hash_type != HashType::Sha2_256 {
            return self.0.hkdf_expand(hash_type, prk, info, okm_len);
        }
        let hkdf = Hkdf::<Sha256>::from_prk(prk).map_err(|_| CryptoError::InvalidLength)?;
        let mut okm = Zeroizing::new(vec![0u8; okm_len]);
        hkdf.expand(info, &mut okm)
            .map_err(|_| CryptoError::HkdfOutputLengthInvalid)?;
        // The buffer itself moves into SecretVLBytes (zeroized on drop), leaving an empty one.
        Ok(std::mem::take(&mut *okm).into())
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if hash_type != HashType::Sha2_256 {
            return self.0.hash(hash_type, data);
        }
        Ok(Sha256::digest(data).to_vec())
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.0.signature_key_gen(alg)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.0.hpke_seal(config, pk_r, info, aad, ptxt)
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.0
            .hpke_setup_sender_and_export(config, pk_r, info, exporter_context, exporter_length)
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.0.hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.0.derive_hpke_keypair(config, ikm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RustCrypto SHA-256 family gives what libcrux gives, edge cases included (empty salt and
    /// input, outputs longer than one hash, the longest HKDF output and one byte more).
    #[test]
    fn sha256_family_agrees_with_libcrux() {
        let ours = VaultCrypto(CryptoProvider::new().unwrap());
        let theirs = CryptoProvider::new().unwrap();
        let h = HashType::Sha2_256;
        let long = vec![0x5a; 1000];
        for (salt, ikm) in [
            (&b""[..], &b""[..]),
            (b"salt", b"input key"),
            (&long[..], &long[..]),
        ] {
            assert_eq!(ours.hash(h, ikm).unwrap(), theirs.hash(h, ikm).unwrap());
            let prk = ours.hkdf_extract(h, salt, ikm).unwrap();
            assert_eq!(prk, theirs.hkdf_extract(h, salt, ikm).unwrap());
            assert_eq!(
                ours.hmac(h, salt, ikm).unwrap(),
                theirs.hmac(h, salt, ikm).unwrap()
            );
            for len in [1, 32, 33, 100, 255 * 32] {
                assert_eq!(
                    ours.hkdf_expand(h, prk.as_slice(), b"info", len).unwrap(),
                    theirs.hkdf_expand(h, prk.as_slice(), b"info", len).unwrap()
                );
            }
            assert!(ours
                .hkdf_expand(h, prk.as_slice(), b"", 255 * 32 + 1)
                .is_err());
        }
    }
}
