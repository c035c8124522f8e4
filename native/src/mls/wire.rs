//! What can be read from MLS bytes without any group state: the clear header of a
//! PublicMessage or PrivateMessage (RFC 9420 section 6), and KeyPackages as they travel
//! (raw, or wrapped in an MLSMessage as other MLS libraries send them).

use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_traits::crypto::OpenMlsCrypto;

use crate::error::{Error, Result};

/// `MLSMessage.version` (mls10) followed by `wire_format = mls_key_package` (5): the first four
/// bytes of a KeyPackage wrapped in an MLSMessage.
const WRAPPED_KEY_PACKAGE_HEADER: [u8; 4] = [0x00, 0x01, 0x00, 0x05];

/// Header of a group message, readable by anyone (the node uses it to order commits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub content_type: &'static str,
    pub wire_format: &'static str,
}

fn wire_format_name(format: WireFormat) -> &'static str {
    match format {
        WireFormat::PublicMessage => "public",
        WireFormat::PrivateMessage => "private",
        WireFormat::Welcome => "welcome",
        WireFormat::GroupInfo => "group info",
        WireFormat::KeyPackage => "key package",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

pub(crate) fn content_type_name(content_type: ContentType) -> &'static str {
    match content_type {
        ContentType::Application => "application",
        ContentType::Proposal => "proposal",
        ContentType::Commit => "commit",
    }
}

/// Parses an MLSMessage that must carry a PublicMessage or PrivateMessage (nothing after it).
pub(crate) fn parse_group_message(data: &[u8]) -> Result<ProtocolMessage> {
    let msg = MlsMessageIn::tls_deserialize_exact(data)
        .map_err(|e| Error::Malformed(format!("MLS message does not parse: {e}")))?;
    let format = msg.wire_format();
    match msg.extract() {
        MlsMessageBodyIn::PrivateMessage(m) => Ok(m.into()),
        MlsMessageBodyIn::PublicMessage(m) => Ok(m.into()),
        _ => Err(Error::Malformed(format!(
            "not a group message: the MLSMessage carries a {}",
            wire_format_name(format)
        ))),
    }
}

/// Group id, epoch, content type and wire format of a PublicMessage or PrivateMessage.
/// Nothing is verified (that needs the group's keys): the node only orders by these fields.
pub fn message_info(data: &[u8]) -> Result<MessageInfo> {
    let msg = parse_group_message(data)?;
    Ok(MessageInfo {
        group_id: msg.group_id().as_slice().to_vec(),
        epoch: msg.epoch().as_u64(),
        content_type: content_type_name(msg.content_type()),
        wire_format: wire_format_name(msg.wire_format()),
    })
}

/// A KeyPackage as it travels: raw (TLS-encoded) or wrapped in an MLSMessage.
pub(crate) fn parse_key_package_in(data: &[u8]) -> Result<KeyPackageIn> {
    if data.starts_with(&WRAPPED_KEY_PACKAGE_HEADER) {
        let msg = MlsMessageIn::tls_deserialize_exact(data).map_err(|e| {
            Error::InvalidKeyPackage(format!("wrapped key package does not parse: {e}"))
        })?;
        match msg.extract() {
            MlsMessageBodyIn::KeyPackage(kp) => Ok(kp),
            _ => Err(Error::InvalidKeyPackage(
                "MLSMessage does not carry a key package".into(),
            )),
        }
    } else {
        KeyPackageIn::tls_deserialize_exact(data)
            .map_err(|e| Error::InvalidKeyPackage(format!("does not parse: {e}")))
    }
}

/// Parses (raw or wrapped) and verifies a KeyPackage's signatures and lifetime.
pub(crate) fn verify_key_package(crypto: &impl OpenMlsCrypto, data: &[u8]) -> Result<KeyPackage> {
    parse_key_package_in(data)?
        .validate(crypto, ProtocolVersion::Mls10)
        .map_err(|e| Error::InvalidKeyPackage(format!("rejected: {e}")))
}
