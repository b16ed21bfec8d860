//! The sequential specification the search runs: one string, with the bookkeeping that
//! lets the search undo a step and prune early.

use super::fingerprint::Hash;
use super::linearizable::{Kind, SearchOp};

/// The model state and what is needed to undo a step.
pub(crate) struct State<'a> {
    /// The shared string.
    pub string: Vec<u8>,
    hash: Hash,
    final_string: Option<&'a [u8]>,
    /// `set`s not linearized yet whose value starts the final string, so that they could
    /// be the last `set`. Once none is left (before the final read) no `set` can come
    /// before the final read, so every state must be a prefix of the final string.
    last_sets_left: usize,
    final_done: bool,
    /// Ops without a deadline applied since the last `set`; the next `set` erases them.
    free_in_lineage: Vec<usize>,
}

/// How to undo one step.
pub(crate) enum Undo {
    Append {
        len: usize,
        hash: Hash,
        free: bool,
    },
    /// `erased`: the free ops the `set` erased.
    Set {
        string: Vec<u8>,
        hash: Hash,
        erased: Vec<usize>,
        could_be_last: bool,
    },
    Get,
    Final,
}

impl<'a> State<'a> {
    /// The empty string, before any op; `ops` are all the ops to be placed.
    pub fn new(ops: &[SearchOp<'_>], final_string: Option<&'a [u8]>) -> Self {
        let could_be_last = |value: &[u8]| final_string.is_none_or(|f| f.starts_with(value));
        let last_sets_left = (ops.iter())
            .filter(|op| matches!(op.kind, Kind::Set { value, .. } if could_be_last(value)))
            .count();
        Self {
            string: Vec::new(),
            hash: Hash::EMPTY,
            final_string,
            last_sets_left,
            final_done: false,
            free_in_lineage: Vec::new(),
        }
    }

    fn must_be_prefix(&self) -> Option<&[u8]> {
        self.final_string.filter(|_| self.last_sets_left == 0 && !self.final_done)
    }

    fn could_be_last(&self, value: &[u8]) -> bool {
        self.final_string.is_none_or(|f| f.starts_with(value))
    }

    /// Applies op `index` if its reply matches the model, returning how to undo it.
    pub fn apply(&mut self, index: usize, op: &SearchOp<'_>) -> Option<Undo> {
        match op.kind {
            Kind::Append { value, expect } => {
                let (len, new_len) = (self.string.len(), self.string.len() + value.len());
                if expect.is_some_and(|expect| expect != new_len as u64)
                    || self.must_be_prefix().is_some_and(|f| f.get(len..new_len) != Some(value))
                {
                    return None;
                }
                let hash = self.hash;
                self.hash = hash.append(op.hash);
                self.string.extend_from_slice(value);
                if op.free {
                    self.free_in_lineage.push(index);
                }
                Some(Undo::Append { len, hash, free: op.free })
            }
            Kind::Set { value, expect } => {
                let could_be_last = self.could_be_last(value);
                self.last_sets_left -= usize::from(could_be_last);
                if expect.is_some_and(|expect| expect != value.len() as u64)
                    || self.must_be_prefix().is_some_and(|f| !f.starts_with(value))
                {
                    self.last_sets_left += usize::from(could_be_last);
                    return None;
                }
                let hash = std::mem::replace(&mut self.hash, op.hash);
                let string = std::mem::replace(&mut self.string, value.to_vec());
                let now_free = if op.free { vec![index] } else { Vec::new() };
                let erased = std::mem::replace(&mut self.free_in_lineage, now_free);
                Some(Undo::Set { string, hash, erased, could_be_last })
            }
            Kind::Get { value } => (self.string == value).then_some(Undo::Get),
            Kind::Final { value } => {
                self.final_done = self.string == value;
                self.final_done.then_some(Undo::Final)
            }
        }
    }

    /// Undoes a step returned by [`State::apply`].
    pub fn revert(&mut self, undo: Undo) {
        match undo {
            Undo::Append { len, hash, free } => {
                self.string.truncate(len);
                self.hash = hash;
                if free {
                    self.free_in_lineage.pop();
                }
            }
            Undo::Set { string, hash, erased, could_be_last } => {
                self.string = string;
                self.hash = hash;
                self.last_sets_left += usize::from(could_be_last);
                self.free_in_lineage = erased;
            }
            Undo::Get => {}
            Undo::Final => self.final_done = false,
        }
    }

    /// 128 bits that identify the string (with the length mixed in).
    pub fn fingerprint(&self) -> u128 {
        let len = (self.string.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (h0, h1) = self.hash.values();
        (u128::from(h0 ^ len) << 64) | u128::from(h1)
    }
}
