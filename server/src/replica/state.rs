//! The replicated state machine: one byte string plus the exactly-once table.
//!
//! Every node applies the same writes in the same order, so every node computes the same
//! results; that is why results can be cached here and returned to a retry at any node.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use strstore_protocol::{
    AppliedDigest, Chunks, ClientId, Epoch, Error, ReqSeq, SessionEntry, Snapshot, Timestamp,
    Write, WriteOp,
};

use super::text::Text;

/// A client's entry in the exactly-once table is forgotten after this many applied writes
/// without use. Counted in writes, never wall time, so every node forgets at the same point.
pub const CLIENT_EXPIRY_WRITES: u64 = 10_000_000;

/// How often (in applied writes) expired clients are swept.
const SWEEP_EVERY_WRITES: u64 = 65_536;

pub use strstore_protocol::Limits;

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StringState {
    text: Text,
    sessions: HashMap<ClientId, Session>,
    /// Writes applied so far (fresh or not): the clock for session expiry.
    writes_applied: u64,
    /// Which actions built this state, in order; compared across replicas by operators and
    /// the chaos test.
    digest: AppliedDigest,
}

impl StringState {
    /// The current string.
    pub fn text(&self) -> &Text {
        &self.text
    }

    /// The current string, sharing its frozen pieces instead of copying them.
    pub fn share_value(&self) -> Chunks {
        self.text.share()
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

    /// Applies one write, at most once per `(client, seq)`, under the limits its action
    /// carries (never this node's own). Costs O(value), not O(string).
    pub fn apply(&mut self, write: &Write, limits: &Limits) -> Applied {
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
        let result = self.apply_op(&write.op, limits);
        let session =
            Session { seq: write.seq, result: result.clone(), last_used: self.writes_applied };
        self.sessions.insert(write.client, session);
        Applied::Fresh(result)
    }

    fn apply_op(&mut self, op: &WriteOp, limits: &Limits) -> WriteResult {
        let value = op.value();
        if value.len() as u64 > limits.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: value.len() as u64,
                max: limits.max_value_bytes,
            });
        }
        let new_len = match op {
            WriteOp::Append(v) => self.text.len() as u64 + v.len() as u64,
            WriteOp::Set(v) => v.len() as u64,
        };
        if new_len > limits.max_string_bytes {
            return Err(Error::StringTooLarge { would_be: new_len, max: limits.max_string_bytes });
        }
        match op {
            WriteOp::Append(v) => self.text.append(v),
            WriteOp::Set(v) => self.text.set(v),
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

    /// A hash of everything applied: the string, the exactly-once table and the write
    /// count. Where [`StringState::digest`] says which actions were applied, this says what
    /// they made, so replicas that differ in any byte differ here. O(string): computed for
    /// `inspect`, not on the write path.
    pub fn content_digest(&self) -> u64 {
        let mut h = ContentHash::default();
        h.pieces(self.text.len(), self.text.pieces());
        h.word(self.writes_applied);
        let mut clients: Vec<&ClientId> = self.sessions.keys().collect();
        clients.sort_unstable();
        for client in clients {
            let s = &self.sessions[client];
            h.word(*client);
            h.word(s.seq);
            h.word(s.last_used);
            h.bytes(&postcard::to_allocvec(&s.result).expect("encoding to memory"));
        }
        h.finish()
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
            value: self.share_value(),
            sessions,
            writes_applied: self.writes_applied,
            digest: self.digest,
        }
    }

    /// Rebuilds the state a snapshot describes.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        Self {
            text: Text::from_chunks(snapshot.value.clone()),
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
        }
    }
}

/// A fixed, portable 64-bit hash (SplitMix64 mixing over 8-byte words, with lengths), so
/// every build of every node computes the same value for the same content.
#[derive(Default)]
struct ContentHash(u64);

impl ContentHash {
    fn word(&mut self, w: u64) {
        self.0 = mix64(self.0 ^ w);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.pieces(bytes.len(), [bytes]);
    }

    /// Hashes the concatenation of `pieces` (`len` bytes in all) as [`ContentHash::bytes`]
    /// would hash it in one slice: 8-byte words, the last one padded with zeros.
    fn pieces<'a>(&mut self, len: usize, pieces: impl IntoIterator<Item = &'a [u8]>) {
        self.word(len as u64);
        let mut word = [0u8; 8];
        let mut filled = 0;
        for piece in pieces {
            let mut rest = piece;
            while !rest.is_empty() {
                let take = (8 - filled).min(rest.len());
                word[filled..filled + take].copy_from_slice(&rest[..take]);
                filled += take;
                rest = &rest[take..];
                if filled == 8 {
                    self.word(u64::from_le_bytes(word));
                    filled = 0;
                }
            }
        }
        word[filled..].fill(0);
        self.word(u64::from_le_bytes(word));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(client: u64, seq: u64, op: WriteOp) -> Write {
        Write { client, seq, op }
    }

    #[test]
    fn appends_and_sets_return_new_length() {
        let mut s = StringState::default();
        assert_eq!(
            s.apply(&write(1, 1, WriteOp::Append("ab".into())), &Limits::default()),
            Applied::Fresh(Ok(2))
        );
        assert_eq!(
            s.apply(&write(1, 2, WriteOp::Append("c".into())), &Limits::default()),
            Applied::Fresh(Ok(3))
        );
        assert_eq!(s.text().to_vec(), b"abc");
        assert_eq!(
            s.apply(&write(2, 1, WriteOp::Set("z".into())), &Limits::default()),
            Applied::Fresh(Ok(1))
        );
        assert_eq!(s.text().to_vec(), b"z");
    }

    #[test]
    fn retry_is_applied_once_and_gets_original_result() {
        let mut s = StringState::default();
        s.apply(&write(1, 1, WriteOp::Append("a".into())), &Limits::default());
        s.apply(&write(2, 1, WriteOp::Append("b".into())), &Limits::default());
        assert_eq!(
            s.apply(&write(1, 1, WriteOp::Append("a".into())), &Limits::default()),
            Applied::Duplicate(Ok(1))
        );
        assert_eq!(s.text().to_vec(), b"ab");
        s.apply(&write(1, 2, WriteOp::Append("c".into())), &Limits::default());
        assert_eq!(
            s.apply(&write(1, 1, WriteOp::Append("a".into())), &Limits::default()),
            Applied::Superseded
        );
        assert_eq!(s.text().to_vec(), b"abc");
    }

    #[test]
    fn snapshot_round_trip_keeps_value_and_sessions() {
        let mut s = StringState::default();
        s.apply(&write(7, 3, WriteOp::Append("abc".into())), &Limits::default());
        s.seal_action(1, Timestamp::new(9, 1));
        let snap = s.to_snapshot(2, Timestamp::new(9, 1));
        let back = StringState::from_snapshot(&snap);
        assert_eq!(back, s);
        assert_eq!(back.lookup(7, 3), Some(Applied::Duplicate(Ok(3))));
    }

    #[test]
    fn the_content_digest_tells_apart_states_that_differ_in_any_byte() {
        let limits = Limits::default();
        let mut a = StringState::default();
        let mut b = StringState::default();
        a.apply(&write(1, 1, WriteOp::Append("abc".into())), &limits);
        b.apply(&write(1, 1, WriteOp::Append("abd".into())), &limits);
        assert_ne!(a.content_digest(), b.content_digest(), "string differs");
        let mut c = StringState::default();
        c.apply(&write(2, 1, WriteOp::Append("abc".into())), &limits);
        assert_eq!(a.text().to_vec(), c.text().to_vec());
        assert_ne!(a.content_digest(), c.content_digest(), "exactly-once table differs");
        let back = StringState::from_snapshot(&a.to_snapshot(1, Timestamp::new(1, 1)));
        assert_eq!(back.content_digest(), a.content_digest());
    }

    #[test]
    fn limits_refuse_without_change() {
        let mut s = StringState::default();
        let small = Limits { max_value_bytes: 4, max_string_bytes: 6 };
        s.apply(&write(1, 1, WriteOp::Append("abcd".into())), &small);
        let r = s.apply(&write(1, 2, WriteOp::Append("efg".into())), &small);
        assert_eq!(r, Applied::Fresh(Err(Error::StringTooLarge { would_be: 7, max: 6 })));
        let r = s.apply(&write(1, 3, WriteOp::Set("12345".into())), &small);
        assert_eq!(r, Applied::Fresh(Err(Error::ValueTooLarge { size: 5, max: 4 })));
        assert_eq!(s.text().to_vec(), b"abcd");
    }
}
