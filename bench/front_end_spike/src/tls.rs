//! TLS and QUIC configuration as the Python node uses them: its certificate and key (PEM files of its data dir),
//! ALPN `capnp`, TLS 1.3 only, one client-opened bidirectional stream per connection.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The node's ALPN (`quicnprotochat.common.schema.ALPN`).
pub const ALPN: &[u8] = b"capnp";
/// The node's QUIC idle timeout default (`NodeConfig.quic_idle_timeout_s`); clients ping every 10 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT.try_into().expect("idle timeout in range"),
    ));
    transport
}

/// A server configuration from the node's certificate and private key in PEM.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<quinn::ServerConfig, BoxError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = transport();
    // The wire: one client-opened bidirectional stream per connection, nothing else.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A node's fingerprint as the Python client pins it (`common/fingerprint.py`): SHA-256 of the certificate's
/// SubjectPublicKeyInfo.
pub fn spki_fingerprint(certificate: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    let parsed = webpki::EndEntityCert::try_from(certificate)
        .map_err(|error| rustls::Error::General(format!("the node's certificate: {error}")))?;
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        parsed.subject_public_key_info().as_ref(),
    );
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(digest.as_ref());
    Ok(fingerprint)
}

/// Reads a fingerprint as `normalize_fingerprint` does: 64 hex digits, colons allowed, any case.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], BoxError> {
    let cleaned: String = text.trim().chars().filter(|c| *c != ':').collect();
    let bytes = decode_hex(&cleaned)?;
    bytes.try_into().map_err(|_| {
        "a fingerprint is 64 hex digits (SHA-256 of the certificate's public key)".into()
    })
}

/// Hex to bytes (either case).
pub fn decode_hex(text: &str) -> Result<Vec<u8>, BoxError> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return Err(format!("not hex: {text:?}").into());
    }
    (0..text.len())
        .step_by(2)
        .map(|at| {
            u8::from_str_radix(&text[at..at + 2], 16)
                .map_err(|_| format!("not hex: {text:?}").into())
        })
        .collect()
}

/// The server certificate check of the spike's client: with a pin, the certificate's key must have that
/// fingerprint (what the Python client does: it pins the node's key instead of trusting a CA); without one, any
/// certificate (the spike's own tests and echo measurements). The handshake signature is verified either way.
#[derive(Debug)]
struct NodeCertificate {
    provider: Arc<CryptoProvider>,
    pin: Option<[u8; 32]>,
}

impl ServerCertVerifier for NodeCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin {
            let found = spki_fingerprint(end_entity)?;
            // Not secret, but compared without an early exit all the same.
            let differs = found.iter().zip(pin).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differs != 0 {
                return Err(rustls::Error::General(
                    "the node's key does not have the pinned fingerprint".into(),
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for the spike's own load generator and tests; `pin`: the node's fingerprint to require.
pub fn client_config(pin: Option<[u8; 32]>) -> Result<quinn::ClientConfig, BoxError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeCertificate { provider, pin }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}
