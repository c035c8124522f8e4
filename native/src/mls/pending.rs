//! The bytes of each group's pending (created, not yet merged) commit and its Welcome. OpenMLS
//! keeps the staged commit itself; these rows let a restarted client submit the very same bytes
//! again, so that the node can recognise a retry.

use rusqlite::{params, Connection, OptionalExtension};

use super::CommitOutput;
use crate::error::Result;

pub(super) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS qpc_pending_commits (
    group_id BLOB PRIMARY KEY,
    commit_message BLOB NOT NULL,
    welcome BLOB);";

pub fn store(
    conn: &Connection,
    group_id: &[u8],
    commit: &[u8],
    welcome: Option<&[u8]>,
) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO qpc_pending_commits (group_id, commit_message, welcome)
         VALUES (?1, ?2, ?3)",
        params![group_id, commit, welcome],
    )?;
    Ok(())
}

pub fn load(conn: &Connection, group_id: &[u8]) -> Result<Option<CommitOutput>> {
    Ok(conn
        .query_row(
            "SELECT commit_message, welcome FROM qpc_pending_commits WHERE group_id = ?1",
            params![group_id],
            |r| {
                Ok(CommitOutput {
                    commit: r.get(0)?,
                    welcome: r.get(1)?,
                })
            },
        )
        .optional()?)
}

pub fn remove(conn: &Connection, group_id: &[u8]) -> Result<()> {
    conn.execute(
        "DELETE FROM qpc_pending_commits WHERE group_id = ?1",
        params![group_id],
    )?;
    Ok(())
}
