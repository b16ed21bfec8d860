//! Every message that crosses a strstore connection.
//!
//! A client connection carries [`ClientFrame`]s one way and [`ServerFrame`]s back; a peer
//! connection carries [`PeerFrame`]s both ways. Each connection opens with a hello that names
//! the protocol version (and, for peers, the node id), so a mismatch is caught before any
//! request is decoded. New variants are only ever appended at the end of an enum, so older
//! messages keep their encoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Identifies a node for its whole life, across restarts. Printed as `n<id>`.
pub type NodeId = u64;
/// Identifies one client session; chosen at random by the client library.
pub type ClientId = u64;
/// Per-client request number, starting at 1. A retry reuses the number of the original.
pub type ReqSeq = u64;
/// Number of a membership view. The total order is `(epoch, timestamp)`.
pub type Epoch = u64;
/// A Lamport clock value.
pub type LamportTime = u64;
/// Per-origin action number (1, 2, ...), counted over the node's whole life.
pub type Oseq = u64;

/// A Lamport timestamp `(time, node)`. Ordered lexicographically, so ties in time break by node
/// id: this is the total order in which every node applies actions. It also names an action,
/// because no node stamps two actions with the same time.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Lamport clock of the origin when it created the action.
    pub time: LamportTime,
    /// The origin node; breaks ties between equal times.
    pub node: NodeId,
}

impl Timestamp {
    pub fn new(time: LamportTime, node: NodeId) -> Self {
        Self { time, node }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({},n{})", self.time, self.node)
    }
}

// ---------------------------------------------------------------------------------------------
// Client <-> node

/// What a client asks of the string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Append bytes at the end of the string; the reply is the new length.
    Append(Bytes),
    /// Replace the whole string; the reply is the new length.
    Set(Bytes),
    /// Read the whole string at one point of the total order.
    Get,
}

/// One client request. `(client, seq)` identifies it across retries for exactly-once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub client: ClientId,
    pub seq: ReqSeq,
    pub op: Op,
}

/// What a successful request returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Length of the string after an `append` or `set`.
    Len(u64),
    /// The string, for a `get`.
    Value(Bytes),
}

/// The answer to the request numbered `seq` on this connection. Replies may come in any order
/// when a client has several requests in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub seq: ReqSeq,
    pub result: Result<Response, Error>,
}

/// First frame a client sends. Its layout never changes, so any version can read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    pub version: u32,
}

/// Frames from client to node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Opens the connection; must come first.
    Hello(ClientHello),
    /// A request; the node answers with a [`ServerFrame::Reply`] carrying the same `seq`.
    Request(Request),
}

/// Frames from node to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Accepts the hello; names the node so the client can log whom it talks to.
    Welcome { version: u32, node: NodeId },
    /// Answer to one request.
    Reply(Reply),
    /// The node closes the connection because of this error (version mismatch, bad frame,
    /// shutdown). Sent at most once, as the last frame.
    Goodbye(Error),
}

// ---------------------------------------------------------------------------------------------
// Node <-> node

/// A write inside an action, with its client identity for exactly-once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub client: ClientId,
    pub seq: ReqSeq,
    pub op: WriteOp,
}

/// The two commands that change the string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Append(Bytes),
    Set(Bytes),
}

impl WriteOp {
    /// Bytes carried by the command.
    pub fn value(&self) -> &Bytes {
        match self {
            WriteOp::Append(v) | WriteOp::Set(v) => v,
        }
    }
}

/// A batch of writes created at one origin, logged by every member and applied everywhere at
/// the position of its timestamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Timestamp, which is also the action's id.
    pub id: Timestamp,
    /// Epoch of the view the action was created in.
    pub epoch: Epoch,
    /// Number of this action among the origin's actions (1, 2, ...): lets a receiver know it
    /// holds every action of the origin up to some number.
    pub oseq: Oseq,
    /// The writes, applied in this order.
    pub writes: Vec<Write>,
}

/// Highest `oseq` of each member that a receiver must hold before it may apply a committed
/// action. Sorted by node id.
pub type Deps = Vec<(NodeId, Oseq)>;

/// Replication messages between members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Origin -> member: log this action (fsync) and ack it. Re-sent until acked.
    Action(Action),
    /// Origin -> member: a read-only ordering point at `id`. The member moves its clock past
    /// it and acks once its own earlier actions are durable; nothing is logged.
    Fence { id: Timestamp },
    /// Member -> origin: the action or fence `id` is durable here (or needs no log), and `hw`
    /// is the highest `oseq` this member has originated so far. `applied` is the last action
    /// the member has applied, with its commit record on disk: the origin may forget the deps
    /// of its actions up to there. A member re-sends its ack for an action that stays
    /// uncommitted; the origin answers a duplicate with `Execute`.
    Ack { id: Timestamp, hw: Oseq, applied: Timestamp },
    /// Origin -> members: every member acked `id`, so it is committed; `deps` tells the
    /// receiver which actions must be present before it applies `id`.
    Execute { id: Timestamp, deps: Deps },
    /// Reply to a message of another epoch: the sender learns the receiver's epoch.
    StaleEpoch { current: Epoch },
}

/// A peer message with its routing header. `from` must equal the authenticated id of the
/// connection it arrived on; the receiver drops it otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub epoch: Epoch,
    pub msg: PeerMsg,
}

/// First frame on a peer connection, sent by the side that dialled. Its layout never changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    pub version: u32,
    /// Who the dialler says it is; checked against the configured peer list (and, with TLS,
    /// against its certificate).
    pub node: NodeId,
}

/// Frames on a peer connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    Hello(PeerHello),
    Msg(Envelope),
    /// The receiver refuses the connection for this reason and closes it.
    Refused(String),
}
