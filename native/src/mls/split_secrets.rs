//! A group's message secrets in two parts: what changes with every message, and the member lists
//! of past epochs, which never change.
//!
//! OpenMLS hands the storage its whole message secrets store after every message sent or
//! received. With past epochs kept, the store holds, for each of them, the epoch's secret tree
//! (small, and changed only when a late message of that epoch arrives) and its member list (a
//! credential and two keys per member, fixed once the epoch is over). Rewriting the member lists
//! for every message made a message's cost grow with the group and the number of epochs kept.
//!
//! `split` writes the store in postcard with each past epoch's member list cut out (a hole at a
//! byte offset) and serialises a member list only for epochs whose list is not stored yet.
//! `assemble` puts the lists back into the holes, which gives exactly the postcard encoding of the
//! whole store (postcard writes a struct as its fields one after the other and a sequence as its
//! length then its items), so decoding uses OpenMLS's own `Deserialize`.
//!
//! The cut relies on the field names of OpenMLS's store (`past_epoch_trees`, and `epoch` before
//! `leaves` in each tree). If they change, nothing is cut and the store is written whole: slower,
//! never wrong. Any other shape than expected also falls back to the whole store.

use std::collections::{HashMap, HashSet};

use serde::ser::{self, Impossible, Serialize};

type Error = postcard::Error;

/// Where a past epoch's member list goes back into the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Hole {
    pub offset: usize,
    pub epoch: u64,
}

/// A message secrets store written for the vault.
#[derive(Debug, Default)]
pub(super) struct Split {
    /// The postcard encoding of the store without the past epochs' member lists.
    pub body: Vec<u8>,
    /// The holes, in the order of their offsets.
    pub holes: Vec<Hole>,
    /// Member lists (postcard) of the epochs that had none stored yet.
    pub new_members: Vec<(u64, Vec<u8>)>,
}

/// Splits `store`; `stored` are the epochs whose member lists are already stored.
pub(super) fn split<T: Serialize>(store: &T, stored: &HashSet<u64>) -> Result<Split, Error> {
    let mut out = Split::default();
    match store.serialize(StoreSer(&mut Cut {
        out: &mut out,
        stored,
    })) {
        Ok(()) => Ok(out),
        // Not the shape expected: the whole store, nothing cut.
        Err(_) => Ok(Split {
            body: postcard::to_allocvec(store)?,
            ..Split::default()
        }),
    }
}

/// The postcard encoding of the whole store: `body` with each past epoch's member list put back
/// into its hole. None if a list is missing or a hole lies outside the body or out of order.
pub(super) fn assemble(
    body: &[u8],
    holes: &[Hole],
    members: &HashMap<u64, Vec<u8>>,
) -> Option<Vec<u8>> {
    let mut whole = Vec::with_capacity(body.len() + members.values().map(Vec::len).sum::<usize>());
    let mut at = 0;
    for hole in holes {
        whole.extend_from_slice(body.get(at..hole.offset)?);
        whole.extend_from_slice(members.get(&hole.epoch)?);
        at = hole.offset;
    }
    whole.extend_from_slice(&body[at..]);
    Some(whole)
}

/// Holes as stored: `offset u64 LE | epoch u64 LE` each.
pub(super) fn encode_holes(holes: &[Hole]) -> Vec<u8> {
    let mut out = Vec::with_capacity(holes.len() * 16);
    for h in holes {
        out.extend_from_slice(&(h.offset as u64).to_le_bytes());
        out.extend_from_slice(&h.epoch.to_le_bytes());
    }
    out
}

pub(super) fn decode_holes(data: &[u8]) -> Option<Vec<Hole>> {
    if !data.len().is_multiple_of(16) {
        return None;
    }
    data.chunks_exact(16)
        .map(|c| {
            let offset = u64::from_le_bytes(c[..8].try_into().ok()?);
            Some(Hole {
                offset: usize::try_from(offset).ok()?,
                epoch: u64::from_le_bytes(c[8..].try_into().ok()?),
            })
        })
        .collect()
}

struct Cut<'a> {
    out: &'a mut Split,
    stored: &'a HashSet<u64>,
}

impl Cut<'_> {
    fn append<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let body = std::mem::take(&mut self.out.body);
        self.out.body = postcard::to_extend(value, body)?;
        Ok(())
    }
}

fn unexpected<T>() -> Result<T, Error> {
    Err(ser::Error::custom("not the message secrets store's shape"))
}

/// The serializer methods none of the three levels below accepts.
macro_rules! refuse_all_but_seq_and_struct {
    () => {
        fn serialize_bool(self, _: bool) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_i8(self, _: i8) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_i16(self, _: i16) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_i32(self, _: i32) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_i64(self, _: i64) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_u8(self, _: u8) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_u16(self, _: u16) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_u32(self, _: u32) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_u64(self, _: u64) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_f32(self, _: f32) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_f64(self, _: f64) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_char(self, _: char) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_str(self, _: &str) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_none(self) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_unit(self) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: &T,
        ) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<(), Error> {
            unexpected()
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
            unexpected()
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, Error> {
            unexpected()
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Error> {
            unexpected()
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
            unexpected()
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Error> {
            unexpected()
        }
        fn is_human_readable(&self) -> bool {
            false
        }
    };
}

macro_rules! impossible_except {
    ($seq:ty, $st:ty) => {
        type Ok = ();
        type Error = Error;
        type SerializeSeq = $seq;
        type SerializeTuple = Impossible<(), Error>;
        type SerializeTupleStruct = Impossible<(), Error>;
        type SerializeTupleVariant = Impossible<(), Error>;
        type SerializeMap = Impossible<(), Error>;
        type SerializeStruct = $st;
        type SerializeStructVariant = Impossible<(), Error>;
    };
}

/// The store: a struct whose `past_epoch_trees` field is cut further.
struct StoreSer<'c, 'a>(&'c mut Cut<'a>);

impl<'c, 'a> ser::Serializer for StoreSer<'c, 'a> {
    impossible_except!(Impossible<(), Error>, StoreFields<'c, 'a>);
    refuse_all_but_seq_and_struct!();

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        unexpected()
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<StoreFields<'c, 'a>, Error> {
        Ok(StoreFields(self.0))
    }
}

struct StoreFields<'c, 'a>(&'c mut Cut<'a>);

impl ser::SerializeStruct for StoreFields<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        if key == "past_epoch_trees" {
            value.serialize(TreesSer(self.0))
        } else {
            self.0.append(value)
        }
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

/// The past epochs: a sequence of trees.
struct TreesSer<'c, 'a>(&'c mut Cut<'a>);

impl<'c, 'a> ser::Serializer for TreesSer<'c, 'a> {
    impossible_except!(Trees<'c, 'a>, Impossible<(), Error>);
    refuse_all_but_seq_and_struct!();

    fn serialize_seq(self, len: Option<usize>) -> Result<Trees<'c, 'a>, Error> {
        let Some(len) = len else {
            return unexpected();
        };
        self.0.append(&len)?;
        Ok(Trees(self.0))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        unexpected()
    }
}

struct Trees<'c, 'a>(&'c mut Cut<'a>);

impl ser::SerializeSeq for Trees<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(TreeSer(self.0))
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

/// One past epoch: a struct whose `leaves` (after its `epoch`) are cut out.
struct TreeSer<'c, 'a>(&'c mut Cut<'a>);

impl<'c, 'a> ser::Serializer for TreeSer<'c, 'a> {
    impossible_except!(Impossible<(), Error>, TreeFields<'c, 'a>);
    refuse_all_but_seq_and_struct!();

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        unexpected()
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<TreeFields<'c, 'a>, Error> {
        Ok(TreeFields {
            cut: self.0,
            epoch: None,
        })
    }
}

struct TreeFields<'c, 'a> {
    cut: &'c mut Cut<'a>,
    epoch: Option<u64>,
}

impl ser::SerializeStruct for TreeFields<'_, '_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        match (key, self.epoch) {
            ("epoch", _) => {
                let start = self.cut.out.body.len();
                self.cut.append(value)?;
                self.epoch = Some(postcard::from_bytes(&self.cut.out.body[start..])?);
                Ok(())
            }
            ("leaves", Some(epoch)) => {
                self.cut.out.holes.push(Hole {
                    offset: self.cut.out.body.len(),
                    epoch,
                });
                if !self.cut.stored.contains(&epoch) {
                    let members = postcard::to_allocvec(value)?;
                    self.cut.out.new_members.push((epoch, members));
                }
                Ok(())
            }
            _ => self.cut.append(value),
        }
    }
    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    // The shape of OpenMLS's store (field names and order), with stand-in contents.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Member {
        index: u32,
        key: Vec<u8>,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct EpochTree {
        epoch: u64,
        message_secrets: Vec<Option<u8>>,
        leaves: Vec<Member>,
    }
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct MessageSecretsStore {
        max_epochs: usize,
        past_epoch_trees: VecDeque<EpochTree>,
        message_secrets: Vec<Option<u8>>,
    }

    fn store(epochs: std::ops::Range<u64>) -> MessageSecretsStore {
        MessageSecretsStore {
            max_epochs: 8,
            past_epoch_trees: epochs
                .map(|e| EpochTree {
                    epoch: e * 1000,
                    message_secrets: vec![None, Some(e as u8)],
                    leaves: (0..3)
                        .map(|i| Member {
                            index: i,
                            key: vec![e as u8; 32],
                        })
                        .collect(),
                })
                .collect(),
            message_secrets: vec![Some(1), None],
        }
    }

    #[test]
    fn split_and_assembled_is_the_whole_encoding() {
        let s = store(1..4);
        let whole = postcard::to_allocvec(&s).unwrap();
        let stored: HashSet<u64> = [2000].into();
        let cut = split(&s, &stored).unwrap();
        assert_eq!(
            cut.holes.iter().map(|h| h.epoch).collect::<Vec<_>>(),
            vec![1000, 2000, 3000]
        );
        // Only the member lists not stored yet were serialised; the body is small.
        let new: Vec<u64> = cut.new_members.iter().map(|(e, _)| *e).collect();
        assert_eq!(new, vec![1000, 3000]);
        assert!(cut.body.len() < whole.len() - 3 * 3 * 32);
        let members: HashMap<u64, Vec<u8>> = s
            .past_epoch_trees
            .iter()
            .map(|t| (t.epoch, postcard::to_allocvec(&t.leaves).unwrap()))
            .collect();
        let holes = decode_holes(&encode_holes(&cut.holes)).unwrap();
        let again = assemble(&cut.body, &holes, &members).unwrap();
        let mut missing = members.clone();
        missing.remove(&2000);
        assert!(assemble(&cut.body, &holes, &missing).is_none());
        assert_eq!(again, whole);
        assert_eq!(
            postcard::from_bytes::<MessageSecretsStore>(&again).unwrap(),
            s
        );
    }

    #[test]
    fn another_shape_is_written_whole() {
        #[derive(serde::Serialize)]
        struct Other {
            past_epoch_trees: Vec<u8>,
        }
        let other = Other {
            past_epoch_trees: vec![1, 2, 3],
        };
        let cut = split(&other, &HashSet::new()).unwrap();
        assert!(cut.holes.is_empty());
        assert_eq!(cut.body, postcard::to_allocvec(&other).unwrap());
        assert_eq!(
            split(&store(0..0), &HashSet::new()).unwrap().body,
            postcard::to_allocvec(&store(0..0)).unwrap()
        );
        assert!(decode_holes(&[0; 15]).is_none());
        let beyond = [Hole {
            offset: 3,
            epoch: 0,
        }];
        assert!(assemble(&[1, 2], &beyond, &[(0, vec![])].into()).is_none());
    }
}
