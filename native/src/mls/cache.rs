//! The vault's groups, loaded from storage once and then kept in memory, at most a bounded number.
//!
//! Loading a group deserialises its whole state (ratchet tree, every kept epoch's message secrets
//! and member list), which grows with the group and its history; doing that for every message made
//! a message's cost grow with the group. OpenMLS writes every change through to storage within the
//! operation's transaction, so a kept group equals the stored one as long as
//! * the groups are dropped whenever a transaction fails (its writes were rolled back), and
//! * no other connection changed the file since (SQLite's `data_version` tells).
//!
//! A client in thousands of groups (a bot) must not hold them all: past `max_groups` the least
//! recently used group is dropped, and loaded again from storage when next used. Dropping one costs
//! nothing but that later load, since its stored state is already complete.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;

use openmls::prelude::{GroupId, MlsGroup};
use rusqlite::Connection;

use super::Storage;
use crate::error::{Error, Result};

/// How many groups a vault keeps in memory unless told otherwise: more than most people are active
/// in, and a few MB at 128 members each at most.
pub const DEFAULT_GROUPS_IN_MEMORY: usize = 64;

struct Kept {
    group: MlsGroup,
    /// Value of the cache's use counter when the group was last handed out.
    last_used: u64,
}

pub(super) struct GroupCache {
    groups: RefCell<HashMap<Vec<u8>, Kept>>,
    max_groups: usize,
    uses: Cell<u64>,
    /// `PRAGMA data_version` when the groups were last known to match the file.
    data_version: Cell<Option<i64>>,
}

impl GroupCache {
    /// A cache holding at most `max_groups` groups (at least one).
    pub(super) fn new(max_groups: usize) -> Result<Self> {
        if max_groups == 0 {
            return Err(Error::State(
                "the vault must keep at least one group in memory".into(),
            ));
        }
        Ok(GroupCache {
            groups: RefCell::default(),
            max_groups,
            uses: Cell::new(0),
            data_version: Cell::new(None),
        })
    }

    /// The group, from memory or else from storage.
    pub(super) fn get<'a>(
        &'a self,
        conn: &Connection,
        storage: &Storage,
        group_id: &[u8],
    ) -> Result<RefMut<'a, MlsGroup>> {
        self.drop_if_changed_elsewhere(conn)?;
        let now = self.uses.get() + 1;
        self.uses.set(now);
        let mut groups = self.groups.borrow_mut();
        if let Some(kept) = groups.get_mut(group_id) {
            kept.last_used = now;
        } else {
            let group = MlsGroup::load(storage, &GroupId::from_slice(group_id))
                .map_err(|e| Error::Storage(format!("loading group: {e}")))?
                .ok_or_else(|| {
                    Error::GroupNotFound(format!("{} bytes id not in this vault", group_id.len()))
                })?;
            if groups.len() >= self.max_groups {
                // A linear scan on a miss only: a miss costs a load, far more than the scan.
                let oldest = groups
                    .iter()
                    .min_by_key(|(_, kept)| kept.last_used)
                    .map(|(id, _)| id.clone());
                if let Some(id) = oldest {
                    groups.remove(&id);
                }
            }
            groups.insert(
                group_id.to_vec(),
                Kept {
                    group,
                    last_used: now,
                },
            );
        }
        RefMut::filter_map(groups, |g| g.get_mut(group_id).map(|kept| &mut kept.group))
            .map_err(|_| Error::Storage("group vanished from the cache".into()))
    }

    /// How many groups are in memory now.
    pub(super) fn len(&self) -> usize {
        self.groups.borrow().len()
    }

    /// Drops one group (its stored state is about to change other than through the kept copy, or
    /// its kept copy may hold changes that were rolled back).
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
