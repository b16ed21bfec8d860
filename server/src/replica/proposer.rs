//! A view change this node proposes: the ballot, what it collected, and the choice of the
//! value Paxos lets it propose (`view_change.rs` sends and counts the phases).

use std::collections::{BTreeMap, BTreeSet};

use strstore_protocol::{
    Action, Ballot, Epoch, Member, NodeId, PendingLog, Timestamp, View, ViewProposal,
};

use super::ready::Ticks;
use super::state::Limits;

/// What a promise carries: the acceptor's last accepted proposal, and its pending log.
pub(super) type PromiseBody = (Option<(Ballot, ViewProposal)>, PendingLog);

/// An own view change under way.
#[derive(Debug)]
pub(super) struct Proposer {
    /// The epoch being left.
    pub(super) epoch: Epoch,
    pub(super) ballot: Ballot,
    pub(super) remove: BTreeSet<NodeId>,
    pub(super) add: BTreeMap<NodeId, Member>,
    pub(super) master: NodeId,
    pub(super) promises: BTreeMap<NodeId, PromiseBody>,
    /// Keys of `promises`, for re-sending.
    pub(super) promised_by: BTreeSet<NodeId>,
    pub(super) proposal: Option<ViewProposal>,
    pub(super) resend_at: Ticks,
    pub(super) accepts: BTreeSet<NodeId>,
    pub(super) started: Ticks,
    pub(super) quorum_at: Option<Ticks>,
}

impl Proposer {
    /// A proposal to leave `epoch` at `now`: the members to remove and to add, and the next
    /// master (the proposer, or whom a slow master hands over to).
    pub(super) fn new(
        epoch: Epoch,
        ballot: Ballot,
        changes: (BTreeSet<NodeId>, BTreeMap<NodeId, Member>, NodeId),
        now: Ticks,
        resend_at: Ticks,
    ) -> Self {
        let (remove, add, master) = changes;
        Self {
            epoch,
            ballot,
            remove,
            add,
            master,
            promises: BTreeMap::new(),
            promised_by: BTreeSet::new(),
            proposal: None,
            resend_at,
            accepts: BTreeSet::new(),
            started: now,
            quorum_at: None,
        }
    }

    /// Whether an answer of `epoch` and `ballot` is to this proposal, in phase 2 if `accept`.
    pub(super) fn answers(&self, epoch: Epoch, ballot: Ballot, accept: bool) -> bool {
        self.epoch == epoch && self.ballot == ballot && self.proposal.is_some() == accept
    }

    /// The value phase 2 proposes, from the promises of a quorum. If any promiser accepted a
    /// proposal, the one of the highest ballot (Paxos: it may have been chosen). Otherwise a
    /// new view of `current` without `remove` and with `add`, carrying every action beyond
    /// the highest applied point that is committed at some promiser or held by all of them:
    /// a committed action was acked by every member, so some promiser holds it; one held by
    /// every promiser may have committed at a member outside the quorum.
    pub(super) fn choose(&self, current: &View, limits: Limits) -> ViewProposal {
        let prior = self.promises.values().filter_map(|(a, _)| a.as_ref()).max_by_key(|(b, _)| *b);
        if let Some((_, proposal)) = prior {
            return proposal.clone();
        }
        let pendings: Vec<&PendingLog> = self.promises.values().map(|(_, l)| l).collect();
        let applied_upto = pendings.iter().map(|l| l.applied).max().unwrap_or_default();
        let mut union: BTreeMap<Timestamp, &Action> = BTreeMap::new();
        for l in &pendings {
            for a in &l.held {
                union.entry(a.id).or_insert(a);
            }
        }
        let committed = union
            .into_iter()
            .filter(|(id, _)| *id > applied_upto)
            .filter(|(id, _)| {
                let committed = pendings.iter().any(|l| l.committed.contains(id));
                let everywhere = pendings.iter().all(|l| l.held.iter().any(|a| a.id == *id));
                committed || everywhere
            })
            .map(|(_, a)| a.clone())
            .collect();
        let mut members: Vec<Member> =
            current.members.iter().filter(|m| !self.remove.contains(&m.id)).cloned().collect();
        for m in self.add.values() {
            members.retain(|x| x.id != m.id);
            members.push(m.clone());
        }
        members.sort();
        ViewProposal {
            view: View { epoch: self.epoch + 1, master: self.master, members, limits },
            applied_upto,
            committed,
            joiners: self.add.keys().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use strstore_protocol::{Write, WriteOp};

    use super::*;

    fn member(id: NodeId) -> Member {
        Member { id, peer_addr: String::new(), client_addr: String::new() }
    }

    fn action(time: u64, node: NodeId) -> Action {
        let writes = vec![Write { client: 1, seq: time, op: WriteOp::Append("x".into()) }];
        Action {
            id: Timestamp::new(time, node),
            epoch: 1,
            oseq: 1,
            writes,
            limits: Limits::default(),
        }
    }

    fn pending(applied: u64, held: &[Action], committed: &[Timestamp]) -> PendingLog {
        PendingLog {
            applied: Timestamp::new(applied, 1),
            held: held.to_vec(),
            committed: committed.to_vec(),
        }
    }

    /// n1 leaves epoch 1 of {1, 2, 3}, removing n3.
    fn removing_n3() -> (Proposer, View) {
        let ballot = Ballot { round: 1, node: 1 };
        let changes = (BTreeSet::from([3]), BTreeMap::new(), 1);
        let current = View {
            epoch: 1,
            master: 1,
            members: vec![member(1), member(2), member(3)],
            limits: Limits::default(),
        };
        (Proposer::new(1, ballot, changes, 0, 3), current)
    }

    /// Of the actions beyond what a promiser applied, the new view carries those committed
    /// at any promiser and those every promiser holds; one held by only some, uncommitted
    /// everywhere, cannot have committed (the others never acked it) and is aborted.
    #[test]
    fn the_new_view_carries_what_may_have_committed_and_aborts_the_rest() {
        let (mut p, current) = removing_n3();
        let (a, b, c, old) = (action(5, 2), action(6, 3), action(7, 1), action(2, 1));
        p.promises.insert(1, (None, pending(3, &[old.clone(), a.clone(), c.clone()], &[])));
        p.promises.insert(2, (None, pending(2, &[old, a.clone(), b.clone()], &[b.id])));
        let chosen = p.choose(&current, Limits::default());
        let carried: Vec<Timestamp> = chosen.committed.iter().map(|x| x.id).collect();
        assert_eq!(carried, vec![a.id, b.id], "a is held by both, b committed at n2; c neither");
        assert_eq!(chosen.applied_upto, Timestamp::new(3, 1));
        assert_eq!(chosen.view.epoch, 2);
        assert_eq!(chosen.view.ids(), vec![1, 2]);
    }

    /// Paxos: once a promiser accepted a proposal, that proposal (the one of the highest
    /// ballot) is the only value this proposer may propose, whatever it meant to change.
    #[test]
    fn a_proposal_some_promiser_accepted_is_proposed_again_as_it_was() {
        let (mut p, current) = removing_n3();
        let low = removing_n3().0.choose(&current, Limits::default());
        let mut high = low.clone();
        high.view.members.push(member(4));
        let ballots = (Ballot { round: 1, node: 2 }, Ballot { round: 2, node: 3 });
        p.promises.insert(1, (Some((ballots.0, low)), pending(0, &[], &[])));
        p.promises.insert(2, (Some((ballots.1, high.clone())), pending(0, &[], &[])));
        assert_eq!(p.choose(&current, Limits::default()), high);
    }
}
