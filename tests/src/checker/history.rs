//! The recorded history: what each client asked, when, and what it was told, plus the final
//! state of each replica.
//!
//! These types are the interface between the recorders (the deterministic simulation and the
//! chaos test) and the checker, and they are written to disk as JSON lines so that a failing
//! run can be checked again offline. Byte strings are written as JSON strings when they are
//! UTF-8 (tokens always are) so that the files stay readable, and as arrays of numbers
//! otherwise.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
pub use strstore_protocol::AppliedDigest;

use super::jsonl::{self, JsonlError};

/// Index of an op in [`History::ops`]; anomalies name ops by it.
pub type OpIndex = usize;

/// Identifies one replicated action: `(origin node, origin sequence number)`.
pub type ActionId = (u64, u64);

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OpKind {
    /// Append these bytes to the shared string; the reply is the new length.
    Append(#[serde(with = "jsonl::bytes")] Vec<u8>),
    /// Replace the shared string with these bytes; the reply is the new length.
    Set(#[serde(with = "jsonl::bytes")] Vec<u8>),
    /// Read the whole string.
    Get,
}

/// The value of a successful reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OkValue {
    /// The new length, the reply to `append` and `set`.
    Len(u64),
    /// The whole string, the reply to `get`.
    Value(#[serde(with = "jsonl::bytes")] Vec<u8>),
}

/// What the client learned about its request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The request took effect exactly once, with this result.
    Ok(OkValue),
    /// The request definitely did not take effect (the server said so); the text says why.
    Failed(String),
    /// Timeout or lost connection: the request may take effect at any time after its invoke,
    /// or never.
    Unknown,
}

/// One client request, from invocation to completion.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Op {
    /// The client that issued it; a client has at most one request outstanding.
    pub client: u64,
    /// The request.
    pub op: OpKind,
    /// When the client sent it, in any monotonic unit shared by all ops of the history.
    pub invoke: u64,
    /// When the client got its answer; `None` while open or when the answer never came.
    #[serde(default)]
    pub complete: Option<u64>,
    /// What the client learned.
    pub outcome: Outcome,
    /// The node the client talked to, for the anomaly reports.
    #[serde(default)]
    pub node: Option<u64>,
}

impl Op {
    /// The value this op writes, if it is an `append` or a `set`.
    pub fn written(&self) -> Option<&[u8]> {
        match &self.op {
            OpKind::Append(value) | OpKind::Set(value) => Some(value),
            OpKind::Get => None,
        }
    }
}

/// Everything the clients did during one run, in any order (usually invocation order).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The ops; anomalies refer to them by index into this vector.
    pub ops: Vec<Op>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a complete op and returns its index.
    pub fn push(&mut self, op: Op) -> OpIndex {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// Records that `client` sent `op` to `node` at `time`. The op stays `Unknown` until
    /// [`History::complete`] is called, which is exactly right for a request that never
    /// gets an answer.
    pub fn invoke(&mut self, client: u64, op: OpKind, time: u64, node: Option<u64>) -> OpIndex {
        self.push(Op { client, op, invoke: time, complete: None, outcome: Outcome::Unknown, node })
    }

    /// Records the answer to the op returned by [`History::invoke`].
    pub fn complete(&mut self, index: OpIndex, time: u64, outcome: Outcome) {
        let op = &mut self.ops[index];
        op.complete = Some(time);
        op.outcome = outcome;
    }

    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when no op was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Writes one op per line as JSON.
    pub fn write_jsonl(&self, writer: impl Write) -> Result<(), JsonlError> {
        jsonl::write(writer, &self.ops)
    }

    /// Reads a history written by [`History::write_jsonl`]; blank lines are skipped.
    pub fn read_jsonl(reader: impl BufRead) -> Result<Self, JsonlError> {
        Ok(Self { ops: jsonl::read(reader)? })
    }
}

impl FromIterator<Op> for History {
    fn from_iter<I: IntoIterator<Item = Op>>(iter: I) -> Self {
        Self { ops: iter.into_iter().collect() }
    }
}

/// The state of one replica at the end of a run, after the cluster has quiesced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// Which node this is.
    pub node: u64,
    /// Its copy of the shared string.
    #[serde(with = "jsonl::bytes")]
    pub string: Vec<u8>,
    /// The actions it applied, in order; every replica must apply the same sequence.
    #[serde(default)]
    pub applied: Vec<ActionId>,
    /// The replica's own fingerprint of its applied sequence, for recorders that cannot list
    /// the actions (a real node compacts its log): equal action counts must come with equal
    /// hashes.
    #[serde(default)]
    pub digest: Option<AppliedDigest>,
}

impl ReplicaState {
    /// Writes one replica per line as JSON.
    pub fn write_jsonl(replicas: &[ReplicaState], writer: impl Write) -> Result<(), JsonlError> {
        jsonl::write(writer, replicas)
    }

    /// Reads replicas written by [`ReplicaState::write_jsonl`].
    pub fn read_jsonl(reader: impl BufRead) -> Result<Vec<ReplicaState>, JsonlError> {
        jsonl::read(reader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> History {
        let mut history = History::new();
        let a = history.invoke(1, OpKind::Append(b"<c1-1>".to_vec()), 10, Some(2));
        history.complete(a, 20, Outcome::Ok(OkValue::Len(6)));
        let g = history.invoke(2, OpKind::Get, 15, None);
        history.complete(g, 25, Outcome::Ok(OkValue::Value(vec![0xff, b'a'])));
        let s = history.invoke(3, OpKind::Set(b"<c3-1>".to_vec()), 30, None);
        history.complete(s, 31, Outcome::Failed("not a member".into()));
        history.invoke(4, OpKind::Get, 40, None);
        history
    }

    #[test]
    fn jsonl_round_trips_and_stays_readable() {
        let history = sample();
        let mut out = Vec::new();
        history.write_jsonl(&mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains(r#"{"Append":"<c1-1>"}"#), "{text}");
        assert!(text.contains("[255,97]"), "non-UTF-8 bytes become a number array: {text}");
        assert_eq!(History::read_jsonl(&out[..]).unwrap(), history);
    }

    #[test]
    fn jsonl_reports_the_bad_line() {
        let input = b"{\"client\":1,\"op\":\"Get\",\"invoke\":1,\"outcome\":\"Unknown\"}\n\nnope\n";
        let err = History::read_jsonl(&input[..]).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn replicas_round_trip() {
        let replicas = vec![ReplicaState {
            node: 1,
            string: b"<c1-1>".to_vec(),
            applied: vec![(1, 1)],
            digest: Some(AppliedDigest { actions: 1, hash: 7 }),
        }];
        let mut out = Vec::new();
        ReplicaState::write_jsonl(&replicas, &mut out).unwrap();
        assert_eq!(ReplicaState::read_jsonl(&out[..]).unwrap(), replicas);
    }
}
