//! The processing journal: what `Vault::process` and `Vault::join_group` produced, keyed by the
//! SHA-256 of the input bytes, written in the same transaction as the MLS state change. A
//! client that crashed after processing but before storing the result gets the same result
//! again instead of an error (the ratchet secrets it needed are gone). The caller drops entries
//! with `forget` once it has stored the result; entries a caller never forgot are dropped after
//! `MAX_AGE_SECS`, so that plaintexts do not pile up in the vault.

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{MessageKind, Processed};
use crate::error::{Error, Result};

pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS qpc_journal (
    digest BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    group_id BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    sender BLOB,
    plaintext BLOB,
    added BLOB NOT NULL,
    removed BLOB NOT NULL,
    self_removed INTEGER NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (strftime('%s','now')));
CREATE INDEX IF NOT EXISTS qpc_journal_created_at ON qpc_journal (created_at);";

/// How long an entry is kept when the caller does not forget it: far longer than a client stays
/// down between processing a message and storing it.
pub const MAX_AGE_SECS: i64 = 30 * 24 * 3600;

/// Kind stored for a joined Welcome (only its group id is kept).
const WELCOME: &str = "welcome";

pub type Digest32 = [u8; 32];

pub fn digest(data: &[u8]) -> Digest32 {
    Sha256::digest(data).into()
}

/// Identity keys as `u16 length | bytes` items (keys are 32 bytes; the length keeps it general).
fn encode_keys(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.len() * 34);
    for k in keys {
        let len = u16::try_from(k.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&k[..usize::from(len)]);
    }
    out
}

fn decode_keys(mut data: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    while !data.is_empty() {
        let corrupt = || Error::Storage("journal entry is corrupt".into());
        let (len, rest) = data.split_at_checked(2).ok_or_else(corrupt)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (key, rest) = rest.split_at_checked(len).ok_or_else(corrupt)?;
        keys.push(key.to_vec());
        data = rest;
    }
    Ok(keys)
}

fn kind_from(name: &str) -> Result<MessageKind> {
    match name {
        "application" => Ok(MessageKind::Application),
        "commit" => Ok(MessageKind::Commit),
        "proposal" => Ok(MessageKind::Proposal),
        other => Err(Error::Storage(format!(
            "journal entry of kind {other:?} where a message was expected"
        ))),
    }
}

/// Drops entries older than `MAX_AGE_SECS` (called on every new entry: the index makes it cheap).
fn drop_expired(conn: &Connection) -> Result<()> {
    conn.prepare_cached("DELETE FROM qpc_journal WHERE created_at < strftime('%s','now') - ?1")?
        .execute(params![MAX_AGE_SECS])?;
    Ok(())
}

pub fn record_processed(conn: &Connection, p: &Processed) -> Result<()> {
    drop_expired(conn)?;
    conn.prepare_cached(
        "INSERT INTO qpc_journal
             (digest, kind, group_id, epoch, sender, plaintext, added, removed, self_removed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        p.digest.as_slice(),
        p.kind.as_str(),
        p.group_id,
        p.epoch,
        p.sender,
        p.plaintext.as_ref().map(|t| t.as_slice()),
        encode_keys(&p.added),
        encode_keys(&p.removed),
        p.self_removed,
    ])?;
    Ok(())
}

pub fn processed(conn: &Connection, digest: &Digest32) -> Result<Option<Processed>> {
    let row = conn
        .prepare_cached(
            "SELECT kind, group_id, epoch, sender, plaintext, added, removed, self_removed
             FROM qpc_journal WHERE digest = ?1",
        )?
        .query_row(params![digest.as_slice()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?.map(Zeroizing::new),
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, Vec<u8>>(6)?,
                r.get::<_, bool>(7)?,
            ))
        })
        .optional()?;
    let Some((kind, group_id, epoch, sender, plaintext, added, removed, self_removed)) = row else {
        return Ok(None);
    };
    Ok(Some(Processed {
        kind: kind_from(&kind)?,
        group_id,
        epoch,
        sender,
        plaintext,
        added: decode_keys(&added)?,
        removed: decode_keys(&removed)?,
        self_removed,
        digest: *digest,
    }))
}

pub fn record_welcome(conn: &Connection, digest: &Digest32, group_id: &[u8]) -> Result<()> {
    drop_expired(conn)?;
    conn.execute(
        "INSERT INTO qpc_journal (digest, kind, group_id, epoch, added, removed, self_removed)
         VALUES (?1, ?2, ?3, 0, x'', x'', 0)",
        params![digest.as_slice(), WELCOME, group_id],
    )?;
    Ok(())
}

pub fn joined(conn: &Connection, digest: &Digest32) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row(
            "SELECT group_id FROM qpc_journal WHERE digest = ?1 AND kind = ?2",
            params![digest.as_slice(), WELCOME],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn forget(conn: &Connection, digests: &[Vec<u8>]) -> Result<()> {
    let mut stmt = conn.prepare("DELETE FROM qpc_journal WHERE digest = ?1")?;
    for d in digests {
        stmt.execute(params![d])?;
    }
    Ok(())
}
