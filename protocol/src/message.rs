//! Every message that crosses a strstore connection.
//!
//! A client connection carries [`ClientFrame`]s one way and [`ServerFrame`]s back; a peer
//! connection carries [`PeerFrame`]s both ways. Each connection opens with a hello that names
//! the protocol version (and, for peers, the node id), so a mismatch is caught before any
//! request is decoded. New variants are only ever appended at the end of an enum, so older
//! messages keep their encoding.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Chunks, Error};

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
    /// Read at most `len` bytes from `offset` at one point of the total order (fewer, or
    /// none, where the string ends sooner), so that a client need not move a large string to
    /// read a part of it.
    GetRange { offset: u64, len: u64 },
    /// The string's length at one point of the total order; the reply is `Len`.
    Len,
}

impl Op {
    /// Whether the request only reads (it rides on a fence, with no log write).
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Get | Op::GetRange { .. } | Op::Len)
    }
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
    /// Asks for the cluster's status; the node answers with a [`ServerFrame::Status`].
    Status,
    /// Asks this node for its own replica state; it answers with a
    /// [`ServerFrame::Inspection`]. Not a linearizable read: it shows what this one node has
    /// applied, for operators and for the chaos test's final comparison.
    Inspect,
}

/// Frames from node to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Accepts the hello; names the node so the client can log whom it talks to.
    /// `max_request_bytes`: the largest frame this node reads; a client refuses a larger
    /// request itself rather than send what the node can only cut off.
    Welcome { version: u32, node: NodeId, max_request_bytes: u64 },
    /// Answer to one request.
    Reply(Reply),
    /// The node closes the connection because of this error (version mismatch, bad frame,
    /// shutdown). Sent at most once, as the last frame.
    Goodbye(Error),
    /// Answer to [`ClientFrame::Status`].
    Status(ClusterReport),
    /// Answer to [`ClientFrame::Inspect`].
    Inspection(ReplicaReport),
}

/// One node's own replica state, for `strstore-cli inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub node: NodeId,
    /// The node's current view.
    pub epoch: Epoch,
    pub master: NodeId,
    pub members: Vec<NodeId>,
    /// Whether the node is a member of that view.
    pub member: bool,
    /// Whether a view change is under way at this node.
    pub frozen: bool,
    /// The last action applied.
    pub applied: Timestamp,
    /// Fingerprint of every action applied since the cluster began.
    pub digest: AppliedDigest,
    /// Hash of what the node holds now: the string and the exactly-once table. Replicas
    /// that differ in any byte show different values.
    pub content: u64,
    /// The limits of the node's view.
    pub limits: Limits,
    /// The string as this node holds it now.
    pub value: Bytes,
}

/// A fingerprint of the whole sequence of actions a replica has applied: their number and a
/// hash chained over each `(epoch, id)` in order. Two replicas that applied the same
/// sequence hold equal digests; it travels in snapshots, so it survives log compaction, which
/// a list of action ids would not.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct AppliedDigest {
    /// Actions applied.
    pub actions: u64,
    /// Chained hash of their `(epoch, id)`, in order.
    pub hash: u64,
}

impl AppliedDigest {
    /// Extends the digest with the next applied action. The mixing is fixed integer
    /// arithmetic (no std hasher, whose output may change between Rust releases), so every
    /// build of every node computes the same value.
    pub fn advance(&mut self, epoch: Epoch, id: Timestamp) {
        let mut h = self.hash;
        for word in [epoch, id.time, id.node] {
            h = mix64(h ^ word);
        }
        self.actions += 1;
        self.hash = h;
    }
}

impl std::fmt::Display for AppliedDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{:016x}", self.actions, self.hash)
    }
}

/// The SplitMix64 finaliser: a bijection on `u64` that spreads every input bit.
fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The cluster as the master sees it, for `strstore-cli status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    pub epoch: Epoch,
    pub master: NodeId,
    /// The node that answered (its view may lag the master's by one heartbeat).
    pub reporter: NodeId,
    /// Whether the reporter is a member of the view.
    pub reporter_is_member: bool,
    pub members: Vec<MemberStatus>,
    /// How the reporter runs, so that a benchmark or an operator can say what was measured.
    pub settings: NodeSettings,
}

/// The settings of one node that decide what its numbers mean.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    /// Peers talk over mutual TLS.
    pub peer_tls: bool,
    /// Clients must speak TLS.
    pub client_tls: bool,
    /// Clients must also present a certificate.
    pub client_auth: bool,
    /// The log is flushed to disk before anything that depends on it is acknowledged.
    pub fsync: bool,
    /// Most own actions awaiting commit at once (`--window`).
    pub window: u64,
    /// Applied actions between snapshots (`--snapshot-every`).
    pub snapshot_every: u64,
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
    /// The limits every replica applies the writes under: the origin's view's, so that
    /// whether a write applies is decided by the log alone, never by a node's own flags.
    pub limits: Limits,
}

/// Size limits that decide whether a write applies. Cluster-wide: agreed in the view and
/// carried in every action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max value {} bytes, max string {} bytes",
            self.max_value_bytes, self.max_string_bytes
        )
    }
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
    /// Member -> master, every heartbeat interval: I am alive, this is my health, and these
    /// are my addresses (so the master can tell clients where every member listens).
    /// `master_lags`: this member finds the master's own acks holding its commits back (the
    /// master cannot judge itself when only its outgoing link is slow); once every other
    /// member says so, the master hands its role over.
    Heartbeat { health: Health, member: Member, master_lags: bool },
    /// Master -> member, answering each heartbeat: the current view and the master's table
    /// of every member, so any node can answer `status` and notice a newer view.
    HeartbeatAck { view: View, members: Vec<MemberStatus> },
    /// Proposer -> members of view `epoch`: phase 1 of the view change to `epoch + 1`.
    /// `deposes_master` is set by an election; members that still hear their master refuse
    /// it, so a node that was merely cut off cannot unseat a working master.
    Prepare { ballot: Ballot, deposes_master: bool },
    /// Member -> proposer: promise to accept nothing below `ballot` and to ack no more actions
    /// of this epoch. Carries any accepted proposal, and the member's pending log state.
    Promise { ballot: Ballot, accepted: Option<(Ballot, ViewProposal)>, pending: PendingLog },
    /// Member -> proposer: refused, a higher ballot was promised already.
    Nack { ballot: Ballot, promised: Ballot },
    /// Proposer -> members of view `epoch`: phase 2, accept this proposal.
    Accept { ballot: Ballot, proposal: ViewProposal },
    /// Member -> proposer: accepted (and persisted).
    Accepted { ballot: Ballot },
    /// The decided view change, to every member of the old and the new view, with a snapshot
    /// of the state at the end of the old epoch for joiners.
    Decided { proposal: ViewProposal, snapshot: Option<Box<Snapshot>> },
    /// A node outside the current view (new, restarted, or left behind) -> any node, which
    /// forwards it to the master: add me. `fresh`: the node lost the state it may once have
    /// acked with (it was repaired), so it must be added by a view change, never handed the
    /// current epoch as if it had been there all along.
    Join { member: Member, fresh: bool },
}

/// Health a member reports in its heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// CPU utilisation of the host, in tenths of a percent (0..=1000).
    pub cpu_permille: u32,
    /// Memory utilisation of the host, in tenths of a percent (0..=1000).
    pub mem_permille: u32,
    /// Resident set size of the node process, bytes.
    pub rss_bytes: u64,
    /// Bytes used by the node's data directory.
    pub disk_bytes: u64,
    /// Entries in the node's log.
    pub log_len: u64,
    /// Actions applied since the node started.
    pub applied: u64,
    /// The node's Lamport clock.
    pub clock: u64,
    /// The node's epoch.
    pub epoch: Epoch,
}

/// A node and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Address peers dial.
    pub peer_addr: String,
    /// Address clients dial.
    pub client_addr: String,
}

/// A membership view: who is in the cluster during `epoch`, and who is master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub epoch: Epoch,
    pub master: NodeId,
    /// Sorted by id.
    pub members: Vec<Member>,
    /// The limits origins stamp on their actions in this view: the proposer's flags.
    pub limits: Limits,
}

impl View {
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// A Paxos ballot for a view change: `(round, proposer)`, ordered lexicographically.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

/// The value a view change decides: the next view, and which actions of the old epoch commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewProposal {
    /// The new view (its epoch is the old epoch + 1).
    pub view: View,
    /// Every action of the old epoch up to here is committed (some promiser applied it).
    pub applied_upto: Timestamp,
    /// Actions of the old epoch after `applied_upto` that commit, with their bodies (so any
    /// acceptor can hand them on), sorted by id; every other action of the old epoch after
    /// `applied_upto` is aborted.
    pub committed: Vec<Action>,
    /// Nodes that get a snapshot instead of replaying the old epoch.
    pub joiners: Vec<NodeId>,
}

/// What a promiser reports about the old epoch's actions it has not applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLog {
    /// Last action it applied (in the old epoch or before).
    pub applied: Timestamp,
    /// Actions of the old epoch it holds but has not applied.
    pub held: Vec<Action>,
    /// Those of `held` it knows are committed (it saw their Execute).
    pub committed: Vec<Timestamp>,
}

/// A member as the master sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub member: Member,
    pub state: MemberState,
    /// Milliseconds since the master last heard from it.
    pub last_heard_ms: u64,
    pub health: Health,
}

/// Liveness of a member in the master's eyes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Alive,
    /// Missed heartbeats; not yet declared failed.
    Suspect,
    /// Declared failed; being removed from the view.
    Failed,
    /// Asked to join; being added.
    Joining,
}

/// The applied state at one point of the order, for compaction and for joiners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Epoch of the view the state belongs to.
    pub epoch: Epoch,
    /// Last action applied into `value`.
    pub applied: Timestamp,
    /// The string, in pieces shared with the state it was taken from.
    pub value: Chunks,
    /// Exactly-once table: `(client, last seq, result, last used)`.
    pub sessions: Vec<SessionEntry>,
    /// Writes applied in total (the exactly-once expiry clock).
    pub writes_applied: u64,
    /// Fingerprint of the actions applied up to `applied`.
    pub digest: AppliedDigest,
}

/// One client's exactly-once entry in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEntry {
    pub client: ClientId,
    pub seq: ReqSeq,
    pub result: Result<u64, Error>,
    pub last_used: u64,
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

/// Frames on a peer connection. Nearly every frame is a `Msg`, and a frame lives only
/// between the socket and the engine, so boxing it would buy one allocation per message
/// and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    Hello(PeerHello),
    Msg(Envelope),
    /// The receiver refuses the connection for this reason and closes it.
    Refused(String),
}
