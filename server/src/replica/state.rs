//! The replicated state machine: one byte string plus the exactly-once table.
//!
//! Every node applies the same writes in the same order, so every node computes the same
//! results; that is why results can be cached here and returned to a retry at any node.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use strstore_protocol::{
    AppliedDigest, ClientId, Epoch, Error, ReqSeq, SessionEntry, Snapshot, Timestamp, Write,
    WriteOp,
};

/// A client's entry in the exactly-once table is forgotten after this many applied writes
/// without use. Counted in writes, never wall time, so every node forgets at the same point.
pub const CLIENT_EXPIRY_WRITES: u64 = 10_000_000;

/// How often (in applied writes) expired clients are swept.
const SWEEP_EVERY_WRITES: u64 = 65_536;

/// Size limits that hold on every node alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest value an `append` or `set` may carry.
    pub max_value_bytes: u64,
    /// Largest the string may grow to.
    pub max_string_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_value_bytes: 1 << 20, max_string_bytes: 64 << 20 }
    }
}

/// What a write returned: the new length, or why nothing changed.
pub type WriteResult = Result<u64, Error>;

/// Last request applied for one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub seq: ReqSeq,
    pub result: WriteResult,
    /// Value of `writes_applied` when the entry was last used.
    pub last_used: u64,
}

/// How applying one write turned out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The write was new and was applied (or refused by a limit, which is also final).
    Fresh(WriteResult),
    /// The same `(client, seq)` was applied before; this is its original result.
    Duplicate(WriteResult),
    /// A newer request of the client was applied already; this one never will be.
    Superseded,
}

impl Applied {
    /// The answer a waiting client gets.
    pub fn result(&self, seq: ReqSeq) -> WriteResult {
        match self {
            Applied::Fresh(r) | Applied::Duplicate(r) => r.clone(),
            Applied::Superseded => Err(Error::Superseded { seq }),
        }
    }
}

/// The string and the exactly-once table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringState {
    value: Vec<u8>,
    sessions: HashMap<ClientId, Session>,
    /// Writes applied so far (fresh or not): the clock for session expiry.
    writes_applied: u64,
    /// Which actions built this state, in order; compared across replicas by operators and
    /// the chaos test.
    digest: AppliedDigest,
    limits: Limits,
}

impl StringState {
    pub fn new(limits: Limits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// The current string.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// A copy of the current string, for a `get` reply.
    pub fn snapshot_value(&self) -> Bytes {
        Bytes::copy_from_slice(&self.value)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The outcome a request `(client, seq)` would get from the table alone, if it is already
    /// decided: a duplicate returns its original result, an older one is superseded.
    pub fn lookup(&self, client: ClientId, seq: ReqSeq) -> Option<Applied> {
        let session = self.sessions.get(&client)?;
        match seq.cmp(&session.seq) {
            std::cmp::Ordering::Less => Some(Applied::Superseded),
            std::cmp::Ordering::Equal => Some(Applied::Duplicate(session.result.clone())),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Applies one write, at most once per `(client, seq)`. Costs O(value), not O(string).
    pub fn apply(&mut self, write: &Write) -> Applied {
        self.writes_applied += 1;
        if self.writes_applied % SWEEP_EVERY_WRITES == 0 {
            self.expire_sessions();
        }
        if let Some(decided) = self.lookup(write.client, write.seq) {
            if let Some(session) = self.sessions.get_mut(&write.client) {
                session.last_used = self.writes_applied;
            }
            return decided;
        }
        let result = self.apply_op(&write.op);
        let session =
            Session { seq: write.seq, result: result.clone(), last_used: self.writes_applied };
        self.sessions.insert(write.client, session);
        Applied::Fresh(result)
    }

    fn apply_op(&mut self, op: &WriteOp) -> WriteResult {
        let value = op.value();
        if value.len() as u64 > self.limits.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: value.len() as u64,
                max: self.limits.max_value_bytes,
            });
        }
        let new_len = match op {
            WriteOp::Append(v) => self.value.len() as u64 + v.len() as u64,
            WriteOp::Set(v) => v.len() as u64,
        };
        if new_len > self.limits.max_string_bytes {
            return Err(Error::StringTooLarge {
                would_be: new_len,
                max: self.limits.max_string_bytes,
            });
        }
        match op {
            WriteOp::Append(v) => self.value.extend_from_slice(v),
            WriteOp::Set(v) => {
                self.value.clear();
                self.value.extend_from_slice(v);
            }
        }
        Ok(new_len)
    }

    fn expire_sessions(&mut self) {
        let now = self.writes_applied;
        self.sessions.retain(|_, s| now - s.last_used <= CLIENT_EXPIRY_WRITES);
    }

    /// Records that the writes of action `id` of view `epoch` have been applied.
    pub fn seal_action(&mut self, epoch: Epoch, id: Timestamp) {
        self.digest.advance(epoch, id);
    }

    /// Fingerprint of the actions applied so far.
    pub fn digest(&self) -> AppliedDigest {
        self.digest
    }

    /// Number of clients remembered for exactly-once.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The state as a snapshot taken after applying `applied` in view `epoch`.
    pub fn to_snapshot(&self, epoch: u64, applied: Timestamp) -> Snapshot {
        let mut sessions: Vec<SessionEntry> = self
            .sessions
            .iter()
            .map(|(&client, s)| SessionEntry {
                client,
                seq: s.seq,
                result: s.result.clone(),
                last_used: s.last_used,
            })
            .collect();
        sessions.sort_by_key(|e| e.client);
        Snapshot {
            epoch,
            applied,
            value: self.snapshot_value(),
            sessions,
            writes_applied: self.writes_applied,
            digest: self.digest,
        }
    }

    /// Rebuilds the state a snapshot describes, under this node's limits.
    pub fn from_snapshot(snapshot: &Snapshot, limits: Limits) -> Self {
        Self {
            value: snapshot.value.to_vec(),
            sessions: snapshot
                .sessions
                .iter()
                .map(|e| {
                    let session =
                        Session { seq: e.seq, result: e.result.clone(), last_used: e.last_used };
                    (e.client, session)
                })
                .collect(),
            writes_applied: snapshot.writes_applied,
            digest: snapshot.digest,
            limits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(client: u64, seq: u64, op: WriteOp) -> Write {
        Write { client, seq, op }
    }

    #[test]
    fn appends_and_sets_return_new_length() {
        let mut s = StringState::new(Limits::default());
        assert_eq!(s.apply(&write(1, 1, WriteOp::Append("ab".into()))), Applied::Fresh(Ok(2)));
        assert_eq!(s.apply(&write(1, 2, WriteOp::Append("c".into()))), Applied::Fresh(Ok(3)));
        assert_eq!(s.value(), b"abc");
        assert_eq!(s.apply(&write(2, 1, WriteOp::Set("z".into()))), Applied::Fresh(Ok(1)));
        assert_eq!(s.value(), b"z");
    }

    #[test]
    fn retry_is_applied_once_and_gets_original_result() {
        let mut s = StringState::new(Limits::default());
        s.apply(&write(1, 1, WriteOp::Append("a".into())));
        s.apply(&write(2, 1, WriteOp::Append("b".into())));
        assert_eq!(s.apply(&write(1, 1, WriteOp::Append("a".into()))), Applied::Duplicate(Ok(1)));
        assert_eq!(s.value(), b"ab");
        s.apply(&write(1, 2, WriteOp::Append("c".into())));
        assert_eq!(s.apply(&write(1, 1, WriteOp::Append("a".into()))), Applied::Superseded);
        assert_eq!(s.value(), b"abc");
    }

    #[test]
    fn snapshot_round_trip_keeps_value_and_sessions() {
        let mut s = StringState::new(Limits::default());
        s.apply(&write(7, 3, WriteOp::Append("abc".into())));
        s.seal_action(1, Timestamp::new(9, 1));
        let snap = s.to_snapshot(2, Timestamp::new(9, 1));
        let back = StringState::from_snapshot(&snap, Limits::default());
        assert_eq!(back, s);
        assert_eq!(back.lookup(7, 3), Some(Applied::Duplicate(Ok(3))));
    }

    #[test]
    fn limits_refuse_without_change() {
        let mut s = StringState::new(Limits { max_value_bytes: 4, max_string_bytes: 6 });
        s.apply(&write(1, 1, WriteOp::Append("abcd".into())));
        let r = s.apply(&write(1, 2, WriteOp::Append("efg".into())));
        assert_eq!(r, Applied::Fresh(Err(Error::StringTooLarge { would_be: 7, max: 6 })));
        let r = s.apply(&write(1, 3, WriteOp::Set("12345".into())));
        assert_eq!(r, Applied::Fresh(Err(Error::ValueTooLarge { size: 5, max: 4 })));
        assert_eq!(s.value(), b"abcd");
    }
}
