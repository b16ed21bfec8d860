//! The state of a view change this node proposes (`view_change.rs` runs it).

use std::collections::{BTreeMap, BTreeSet};

use strstore_protocol::{Ballot, Epoch, Member, NodeId, PendingLog, ViewProposal};

use super::ready::Ticks;

/// An own view change under way.
#[derive(Debug)]
pub(super) struct Proposer {
    /// The epoch being left.
    pub(super) epoch: Epoch,
    pub(super) ballot: Ballot,
    pub(super) remove: BTreeSet<NodeId>,
    pub(super) add: BTreeMap<NodeId, Member>,
    pub(super) master: NodeId,
    pub(super) promises: BTreeMap<NodeId, (Option<(Ballot, ViewProposal)>, PendingLog)>,
    /// Keys of `promises`, for re-sending.
    pub(super) promised_by: BTreeSet<NodeId>,
    pub(super) proposal: Option<ViewProposal>,
    pub(super) resend_at: Ticks,
    pub(super) accepts: BTreeSet<NodeId>,
    pub(super) started: Ticks,
    pub(super) quorum_at: Option<Ticks>,
}
