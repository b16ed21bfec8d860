//! Entries waiting for their turn: the hold-back queue's entries and this node's own actions
//! and fences that are not committed yet.

use std::collections::BTreeMap;

use strstore_protocol::{Action, Deps, NodeId, Op, Oseq, PeerMsg, ReqSeq};

use super::ready::{Ticks, WaiterId};

/// An entry of the hold-back queue, waiting for its turn in timestamp order.
#[derive(Debug)]
pub(super) struct Held {
    pub body: HeldBody,
    /// Known once the action committed.
    pub deps: Option<Deps>,
    /// Another origin's action: `hw` of each member (the origin aside) whose ack reached us.
    /// With all of them in, the action is committed and we know it without the origin.
    pub acks: BTreeMap<NodeId, Oseq>,
    /// When this member next re-sends its ack if the entry stays uncommitted at the head.
    pub reack_at: Ticks,
    pub reack_backoff: Ticks,
}

#[derive(Debug)]
pub(super) enum HeldBody {
    Write(Action),
    /// A read-only ordering point, held only at its origin.
    Fence {
        gets: Vec<(WaiterId, ReqSeq, Op)>,
    },
}

/// An own action or fence that is not committed yet.
#[derive(Debug)]
pub(super) struct InFlight {
    /// What to re-send.
    pub msg: PeerMsg,
    /// `hw` of each member that acked.
    pub acks: BTreeMap<NodeId, Oseq>,
    pub resend_at: Ticks,
    pub backoff: Ticks,
}
