//! What a node keeps for its current view only. Entering a view replaces each part whole, so
//! a field added here cannot be left over from the epoch before.

use std::collections::{BTreeMap, BTreeSet};

use strstore_protocol::{Ballot, Deps, MemberStatus, NodeId, Oseq, Timestamp, ViewProposal};

use super::detector::AckLag;
use super::held::InFlight;
use super::proposer::Proposer;
use super::ready::Ticks;
use super::received::Received;

/// Replication within the epoch (`replication.rs`).
#[derive(Debug)]
pub(super) struct EpochReplication {
    /// This node's next action number.
    pub(super) next_oseq: Oseq,
    /// Which actions of each origin this node holds.
    pub(super) received: Received,
    /// Own actions and fences not committed yet.
    pub(super) in_flight: BTreeMap<Timestamp, InFlight>,
    /// Acks for other origins' actions that came before the action itself (another
    /// member's ack can overtake the origin's message on its own connection).
    pub(super) early_acks: BTreeMap<Timestamp, BTreeMap<NodeId, Oseq>>,
    /// Deps of own applied actions, kept until every member reports it applied them.
    pub(super) own_commits: BTreeMap<Timestamp, Deps>,
    /// Last applied timestamp each member reported in an ack.
    pub(super) peer_applied: BTreeMap<NodeId, Timestamp>,
    /// Per origin, the oseq of its last action applied in this epoch.
    pub(super) applied_oseq: BTreeMap<NodeId, Oseq>,
}

impl EpochReplication {
    pub(super) fn new() -> Self {
        Self {
            next_oseq: 1,
            received: Received::default(),
            in_flight: BTreeMap::new(),
            early_acks: BTreeMap::new(),
            own_commits: BTreeMap::new(),
            peer_applied: BTreeMap::new(),
            applied_oseq: BTreeMap::new(),
        }
    }
}

/// Who is heard and who is behind, within the view (`membership.rs`).
#[derive(Debug)]
pub(super) struct EpochMembership {
    /// When this node entered the view.
    pub(super) started: Ticks,
    /// Master: when each member was last heard.
    pub(super) last_heard: BTreeMap<NodeId, Ticks>,
    /// Member: when the master last answered, and the table it sent.
    pub(super) master_heard: Ticks,
    pub(super) master_table: Vec<MemberStatus>,
    /// Master: members whose acks hold commits back.
    pub(super) ack_lag: AckLag,
    /// Members this view added that have not heartbeat in it yet (they install the state).
    pub(super) newcomers: BTreeSet<NodeId>,
    /// Members this view added that have not acked in it yet: their first acks wait until
    /// the state they installed is written.
    pub(super) settling: BTreeSet<NodeId>,
    /// Nodes seen in a newer view since this node entered its own: asked to join as well.
    pub(super) join_hints: BTreeSet<NodeId>,
    /// When each member behind this epoch was last sent the state (`send_catch_up`).
    pub(super) catch_ups_sent: BTreeMap<NodeId, Ticks>,
    /// Members that asked in this epoch to join as a fresh incarnation (they lost their data)
    /// and were not heard in it since: they can answer no view change, and stand in for
    /// one that answers nothing (`quorum`).
    pub(super) lost_data: BTreeSet<NodeId>,
}

impl EpochMembership {
    /// `member` spoke in this epoch (a heartbeat, a replication message, a promise) after
    /// any fresh join of it: it holds its data (the join was an old message).
    pub(super) fn heard_from(&mut self, member: NodeId) {
        self.lost_data.remove(&member);
    }
}

impl EpochMembership {
    /// Entering a view at `now`, which adds `newcomers`.
    pub(super) fn entering(now: Ticks, newcomers: BTreeSet<NodeId>) -> Self {
        Self {
            started: now,
            last_heard: BTreeMap::new(),
            master_heard: now,
            master_table: Vec::new(),
            ack_lag: AckLag::default(),
            settling: newcomers.clone(),
            newcomers,
            join_hints: BTreeSet::new(),
            catch_ups_sent: BTreeMap::new(),
            lost_data: BTreeSet::new(),
        }
    }
}

/// The Paxos instance that decides the view after this one (`view_change.rs`).
#[derive(Debug, Default)]
pub(super) struct NextView {
    /// Highest ballot promised.
    pub(super) promised: Ballot,
    pub(super) accepted: Option<(Ballot, ViewProposal)>,
    /// This node's own proposal, if it is running one.
    pub(super) proposer: Option<Proposer>,
}
