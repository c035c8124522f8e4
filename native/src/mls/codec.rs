//! How OpenMLS's state is encoded in the vault's rows.
//!
//! Most rows are JSON: the format vaults were created with, and the one the lookup keys (group
//! ids, key package references, public keys) must keep, since rows are found by their bytes. The
//! ratchet tree, the large entity rewritten by every commit, is written in postcard, a compact
//! binary serde format: JSON spells each byte of a key as a decimal number, postcard as one byte.
//! (The message secrets, rewritten for every message, have their own rows: `storage`; vaults of
//! the previous version wrote them through this codec in postcard too, and they still read.)
//!
//! A binary row starts with a tag byte no JSON text starts with, so reading needs no knowledge of
//! the type: rows written as JSON before (older vaults) still read, and are rewritten in binary
//! the next time OpenMLS stores them.

use openmls_sqlite_storage::Codec;

/// First byte of a postcard row (JSON text starts with whitespace or one of `{["-0123456789tfn`).
const BINARY_TAG: u8 = 0;

/// Entities written in postcard, by the last segment of their type's name.
const BINARY_ENTITIES: [&str; 1] = ["TreeSync"];

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("json row: {0}")]
    Json(#[from] serde_json::Error),
    #[error("binary row: {0}")]
    Binary(#[from] postcard::Error),
}

/// Serde codec of the OpenMLS storage rows: see the module documentation.
#[derive(Default)]
pub struct VaultCodec;

/// Whether values of type `T` are written in postcard. Only the choice of the format for new rows
/// depends on the type's name; reading goes by the tag byte.
fn is_binary_entity<T: ?Sized>() -> bool {
    let name = std::any::type_name::<T>().trim_start_matches('&');
    let last = name.rsplit("::").next().unwrap_or(name);
    BINARY_ENTITIES.contains(&last)
}

impl Codec for VaultCodec {
    type Error = CodecError;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        if is_binary_entity::<T>() {
            Ok(postcard::to_extend(value, vec![BINARY_TAG])?)
        } else {
            Ok(serde_json::to_vec(value)?)
        }
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        match slice.split_first() {
            Some((&BINARY_TAG, rest)) => Ok(postcard::from_bytes(rest)?),
            _ => Ok(serde_json::from_slice(slice)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct TreeSync {
        keys: Vec<Vec<u8>>,
        epoch: u64,
    }

    #[test]
    fn binary_for_the_large_entities_json_for_the_rest() {
        let store = TreeSync {
            keys: vec![vec![7; 32]; 3],
            epoch: 9,
        };
        let bytes = VaultCodec::to_vec(&&store).unwrap();
        assert_eq!(bytes[0], BINARY_TAG);
        assert!(bytes.len() < 110);
        assert_eq!(VaultCodec::from_slice::<TreeSync>(&bytes).unwrap(), store);
        // Keys and other entities stay JSON, byte for byte as before.
        let key = vec![1u8, 2, 3];
        assert_eq!(VaultCodec::to_vec(&key).unwrap(), b"[1,2,3]");
        // A row written as JSON by an older vault still reads.
        let json = serde_json::to_vec(&store).unwrap();
        assert_eq!(VaultCodec::from_slice::<TreeSync>(&json).unwrap(), store);
    }
}
