//! What the engine writes to its durable log and what a restart reads back from it.

use strstore_protocol::{
    Action, Ballot, Deps, Epoch, NodeId, Oseq, Snapshot, Timestamp, View, ViewProposal,
};

/// How far the persisted clock bound runs ahead of the clock. A restarted node starts its
/// clock at the bound, so its clock never goes back below a time it has shown to a peer; a
/// larger lease means fewer bound records in the log.
pub const CLOCK_LEASE: u64 = 1 << 20;

/// A record for the durable log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogRecord {
    /// An action this node created or received. Must be on disk before it is acked.
    Action(Action),
    /// The action `id` committed with these deps. Lets a restarted node apply its log without
    /// asking the origin again.
    Commit { id: Timestamp, deps: Deps },
    /// The clock may have reached at most this value; a restart resumes from it.
    ClockBound(u64),
    /// Applied state and view; every action applied before it (and every action of an earlier
    /// epoch) may be dropped from the log.
    Snapshot(std::sync::Arc<SnapshotRecord>),
    /// Promise not to accept ballots below `ballot` for the view change to `epoch`.
    Promise { epoch: Epoch, ballot: Ballot },
    /// Proposal accepted for the view change to `proposal.view.epoch`.
    Accepted { ballot: Ballot, proposal: ViewProposal },
}

/// What a snapshot record holds besides the applied state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRecord {
    pub snapshot: Snapshot,
    /// The view the node is in.
    pub view: View,
    /// Per origin, the last oseq of the current epoch covered by the snapshot.
    pub received: Vec<(NodeId, Oseq)>,
    /// Deps of own applied actions that members may still ask for.
    pub own_commits: Vec<(Timestamp, Deps)>,
    /// This node's next oseq in the epoch.
    pub next_oseq: Oseq,
}

/// What a restarting node read back from its log.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub snapshot: Option<SnapshotRecord>,
    pub actions: Vec<Action>,
    pub commits: Vec<(Timestamp, Deps)>,
    pub clock_bound: u64,
    pub promise: Option<(Epoch, Ballot)>,
    pub accepted: Option<(Ballot, ViewProposal)>,
}
