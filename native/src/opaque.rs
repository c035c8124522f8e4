//! OPAQUE (RFC 9807) over `opaque-ke` 4.0.
//!
//! Cipher suite: OPRF ristretto255-SHA512, AKE 3DH over ristretto255 with SHA-512
//! (HKDF-SHA512, HMAC-SHA512), KSF Argon2id.
//!
//! Argon2id parameters (fixed forever: changing them invalidates every registration):
//! RFC 9106 section 4 "second recommended option" memory and passes, m = 64 MiB, t = 3,
//! p = 4 lanes, version 0x13, 64-byte output, all-zero 16-byte salt (the OPAQUE randomized
//! password is already unique per user and server). The KSF only runs on the client.
//!
//! All protocol messages use RFC 9807 encodings. Both sides bind the context string
//! [`CONTEXT`] into the transcript; the identities default to the public keys
//! (RFC 9807 section 4.1.2).

use std::marker::PhantomData;

use opaque_ke::generic_array::{ArrayLength, GenericArray};
use opaque_ke::rand::{CryptoRng, RngCore};
use opaque_ke::{
    errors::{InternalError, ProtocolError},
    ksf::{Identity, Ksf},
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse, RegistrationUpload,
    Ristretto255, ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup, TripleDh,
};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Context string bound into every OPAQUE transcript of this application.
pub const CONTEXT: &[u8] = b"quicnprotochat OPAQUE v1";

/// Argon2id with this application's fixed parameters (see the module docs).
pub struct AppArgon2(argon2::Argon2<'static>);

/// Argon2id memory in KiB.
pub const ARGON2_M_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const ARGON2_T: u32 = 3;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 4;

impl Default for AppArgon2 {
    fn default() -> Self {
        let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
            .expect("constant Argon2 parameters are valid");
        AppArgon2(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }
}

impl Ksf for AppArgon2 {
    fn hash<L: ArrayLength<u8>>(
        &self,
        input: GenericArray<u8, L>,
    ) -> std::result::Result<GenericArray<u8, L>, InternalError> {
        let mut output = GenericArray::default();
        self.0
            .hash_password_into(&input, &[0; argon2::RECOMMENDED_SALT_LEN], &mut output)
            .map_err(|_| InternalError::KsfError)?;
        Ok(output)
    }
}

/// ristretto255 / 3DH / SHA-512 with a pluggable KSF. [`AppSuite`] is the one used in
/// production; [`IdentitySuite`] exists for the RFC 9807 test vectors (KSF = Identity).
pub struct Suite<K>(PhantomData<K>);

impl<K: Ksf> opaque_ke::CipherSuite for Suite<K> {
    type OprfCs = Ristretto255;
    type KeyExchange = TripleDh<Ristretto255, sha2::Sha512>;
    type Ksf = K;
}

/// The production cipher suite.
pub type AppSuite = Suite<AppArgon2>;
/// The RFC 9807 Appendix C cipher suite (Identity KSF).
pub type IdentitySuite = Suite<Identity>;

/// Transcript parameters (context and optional identities).
#[derive(Clone, Copy, Debug)]
pub struct Params<'a> {
    pub context: &'a [u8],
    pub client_identity: Option<&'a [u8]>,
    pub server_identity: Option<&'a [u8]>,
}

impl Default for Params<'static> {
    fn default() -> Self {
        Params {
            context: CONTEXT,
            client_identity: None,
            server_identity: None,
        }
    }
}

impl<'a> Params<'a> {
    fn identifiers(&self) -> Identifiers<'a> {
        Identifiers {
            client: self.client_identity,
            server: self.server_identity,
        }
    }
}

fn malformed<T>(what: &'static str) -> impl FnOnce(T) -> Error {
    move |_| Error::Malformed(format!("OPAQUE {what} does not decode"))
}

fn protocol(e: ProtocolError) -> Error {
    match e {
        // Wrong password, unknown user (fake record) and a bad server MAC all end here.
        ProtocolError::InvalidLoginError => Error::Opaque("login failed".into()),
        ProtocolError::ReflectedValueError => {
            Error::Opaque("server reflected the OPRF value".into())
        }
        ProtocolError::SerializationError | ProtocolError::SizeError { .. } => {
            Error::Malformed("OPAQUE message does not decode".into())
        }
        ProtocolError::LibraryError(InternalError::KsfError) => {
            Error::Opaque("key stretching failed".into())
        }
        _ => Error::Opaque("protocol error".into()),
    }
}

/// Server side: the long-term setup (OPRF seed and AKE key pair).
pub struct Server<K: Ksf> {
    setup: ServerSetup<Suite<K>>,
}

impl<K: Ksf> Server<K> {
    /// Generates a new server setup.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Server {
            setup: ServerSetup::new(rng),
        }
    }

    /// Loads a setup produced by [`Server::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let setup =
            ServerSetup::<Suite<K>>::deserialize(bytes).map_err(malformed("server setup"))?;
        Ok(Server { setup })
    }

    /// Secret serialization (OPRF seed | private key | fake-record public key).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.setup.serialize().to_vec())
    }

    /// The server's static AKE public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.setup.keypair().public().serialize().to_vec()
    }

    /// RegistrationRequest -> RegistrationResponse.
    pub fn registration_start(
        &self,
        credential_identifier: &[u8],
        request: &[u8],
    ) -> Result<Vec<u8>> {
        let request = RegistrationRequest::<Suite<K>>::deserialize(request)
            .map_err(malformed("registration request"))?;
        let result =
            ServerRegistration::<Suite<K>>::start(&self.setup, request, credential_identifier)
                .map_err(protocol)?;
        Ok(result.message.serialize().to_vec())
    }

    /// RegistrationUpload -> password file (the record to store for the user).
    pub fn registration_finish(upload: &[u8]) -> Result<Vec<u8>> {
        let upload = RegistrationUpload::<Suite<K>>::deserialize(upload)
            .map_err(malformed("registration upload"))?;
        Ok(ServerRegistration::<Suite<K>>::finish(upload)
            .serialize()
            .to_vec())
    }

    /// KE1 -> (KE2, secret server state). `password_file = None` takes the fake-record path,
    /// which is indistinguishable on the wire from a real user with a wrong password.
    pub fn login_start<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        credential_identifier: &[u8],
        password_file: Option<&[u8]>,
        request: &[u8],
        params: &Params<'_>,
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
        let record = match password_file {
            Some(b) => Some(
                ServerRegistration::<Suite<K>>::deserialize(b)
                    .map_err(malformed("password file"))?,
            ),
            None => None,
        };
        let request = CredentialRequest::<Suite<K>>::deserialize(request)
            .map_err(malformed("credential request"))?;
        let result = ServerLogin::start(
            rng,
            &self.setup,
            record,
            request,
            credential_identifier,
            ServerLoginParameters {
                context: Some(params.context),
                identifiers: params.identifiers(),
            },
        )
        .map_err(protocol)?;
        Ok((
            result.message.serialize().to_vec(),
            Zeroizing::new(result.state.serialize().to_vec()),
        ))
    }

    /// (state, KE3) -> session key. Fails like a wrong password when the client's MAC is wrong.
    pub fn login_finish(
        state: &[u8],
        finalization: &[u8],
        params: &Params<'_>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let state =
            ServerLogin::<Suite<K>>::deserialize(state).map_err(malformed("server login state"))?;
        let finalization = CredentialFinalization::<Suite<K>>::deserialize(finalization)
            .map_err(malformed("credential finalization"))?;
        let result = state
            .finish(
                finalization,
                ServerLoginParameters {
                    context: Some(params.context),
                    identifiers: params.identifiers(),
                },
            )
            .map_err(protocol)?;
        Ok(Zeroizing::new(result.session_key.to_vec()))
    }
}

/// Client registration in progress (the password is kept until `finish`, zeroized on drop).
pub struct ClientRegistrationFlow<K: Ksf> {
    state: ClientRegistration<Suite<K>>,
    password: Zeroizing<Vec<u8>>,
}

/// Result of a finished client registration.
pub struct RegistrationOutput {
    pub upload: Vec<u8>,
    pub export_key: Zeroizing<Vec<u8>>,
}

impl<K: Ksf> ClientRegistrationFlow<K> {
    /// password -> (flow, RegistrationRequest).
    pub fn start<R: RngCore + CryptoRng>(rng: &mut R, password: &[u8]) -> Result<(Self, Vec<u8>)> {
        let result = ClientRegistration::<Suite<K>>::start(rng, password).map_err(protocol)?;
        Ok((
            ClientRegistrationFlow {
                state: result.state,
                password: Zeroizing::new(password.to_vec()),
            },
            result.message.serialize().to_vec(),
        ))
    }

    /// RegistrationResponse -> (RegistrationUpload, export key). Runs the KSF.
    pub fn finish<R: RngCore + CryptoRng>(
        self,
        rng: &mut R,
        response: &[u8],
        params: &Params<'_>,
    ) -> Result<RegistrationOutput> {
        let response = RegistrationResponse::<Suite<K>>::deserialize(response)
            .map_err(malformed("registration response"))?;
        let result = self
            .state
            .finish(
                rng,
                &self.password,
                response,
                ClientRegistrationFinishParameters::new(params.identifiers(), None),
            )
            .map_err(protocol)?;
        Ok(RegistrationOutput {
            upload: result.message.serialize().to_vec(),
            export_key: Zeroizing::new(result.export_key.to_vec()),
        })
    }
}

/// Client login in progress.
pub struct ClientLoginFlow<K: Ksf> {
    state: ClientLogin<Suite<K>>,
    password: Zeroizing<Vec<u8>>,
}

/// Result of a finished client login.
pub struct LoginOutput {
    pub finalization: Vec<u8>,
    pub session_key: Zeroizing<Vec<u8>>,
    pub export_key: Zeroizing<Vec<u8>>,
    pub server_public_key: Vec<u8>,
}

impl<K: Ksf> ClientLoginFlow<K> {
    /// password -> (flow, KE1).
    pub fn start<R: RngCore + CryptoRng>(rng: &mut R, password: &[u8]) -> Result<(Self, Vec<u8>)> {
        let result = ClientLogin::<Suite<K>>::start(rng, password).map_err(protocol)?;
        Ok((
            ClientLoginFlow {
                state: result.state,
                password: Zeroizing::new(password.to_vec()),
            },
            result.message.serialize().to_vec(),
        ))
    }

    /// KE2 -> (KE3, session key, export key). A wrong password (or an unknown user) fails here.
    pub fn finish<R: RngCore + CryptoRng>(
        self,
        rng: &mut R,
        response: &[u8],
        params: &Params<'_>,
    ) -> Result<LoginOutput> {
        let response = CredentialResponse::<Suite<K>>::deserialize(response)
            .map_err(malformed("credential response"))?;
        let result = self
            .state
            .finish(
                rng,
                &self.password,
                response,
                ClientLoginFinishParameters::new(Some(params.context), params.identifiers(), None),
            )
            .map_err(protocol)?;
        Ok(LoginOutput {
            finalization: result.message.serialize().to_vec(),
            session_key: Zeroizing::new(result.session_key.to_vec()),
            export_key: Zeroizing::new(result.export_key.to_vec()),
            server_public_key: result.server_s_pk.serialize().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests;
