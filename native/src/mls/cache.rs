//! The vault's groups, loaded from storage once and then kept in memory.
//!
//! Loading a group deserialises its whole state (ratchet tree, every kept epoch's message secrets
//! and member list), which grows with the group and its history; doing that for every message made
//! a message's cost grow with the group. OpenMLS writes every change through to storage within the
//! operation's transaction, so a kept group equals the stored one as long as
//! * the groups are dropped whenever a transaction fails (its writes were rolled back), and
//! * no other connection changed the file since (SQLite's `data_version` tells).

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;

use openmls::prelude::{GroupId, MlsGroup};
use rusqlite::Connection;

use super::Storage;
use crate::error::{Error, Result};

#[derive(Default)]
pub(super) struct GroupCache {
    groups: RefCell<HashMap<Vec<u8>, MlsGroup>>,
    /// `PRAGMA data_version` when the groups were last known to match the file.
    data_version: Cell<Option<i64>>,
}

impl GroupCache {
    /// The group, from memory or else from storage.
    pub(super) fn get<'a>(
        &'a self,
        conn: &Connection,
        storage: &Storage,
        group_id: &[u8],
    ) -> Result<RefMut<'a, MlsGroup>> {
        self.drop_if_changed_elsewhere(conn)?;
        let mut groups = self.groups.borrow_mut();
        if !groups.contains_key(group_id) {
            let group = MlsGroup::load(storage, &GroupId::from_slice(group_id))
                .map_err(|e| Error::Storage(format!("loading group: {e}")))?
                .ok_or_else(|| {
                    Error::GroupNotFound(format!("{} bytes id not in this vault", group_id.len()))
                })?;
            groups.insert(group_id.to_vec(), group);
        }
        RefMut::filter_map(groups, |g| g.get_mut(group_id))
            .map_err(|_| Error::Storage("group vanished from the cache".into()))
    }

    /// Drops one group (its stored state is about to change other than through the kept copy).
    pub(super) fn forget(&self, group_id: &[u8]) {
        self.groups.borrow_mut().remove(group_id);
    }

    /// Drops every group (a transaction failed: its changes to the kept copies were not stored).
    pub(super) fn clear(&self) {
        self.groups.borrow_mut().clear();
    }

    fn drop_if_changed_elsewhere(&self, conn: &Connection) -> Result<()> {
        // Commits by this connection leave data_version unchanged; another one's change it.
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if self.data_version.replace(Some(version)) != Some(version) {
            self.clear();
        }
        Ok(())
    }
}
