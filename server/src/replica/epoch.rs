//! What a node keeps for its current view only. Entering a view replaces each part whole, so
//! a field added here cannot be left over from the epoch before.

use std::collections::{BTreeMap, BTreeSet};

use strstore_protocol::{Ballot, Deps, MemberStatus, NodeId, Oseq, Timestamp, ViewProposal};

use super::detector::AckLag;
use super::held::InFlight;
use super::proposer::Proposer;
use super::ready::Ticks;
use super::received::Received;

/// Most actions early acks are kept for (a window of each other member's actions, and more).
const MAX_EARLY_ACKS: usize = 4096;

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
    early_acks: BTreeMap<Timestamp, BTreeMap<NodeId, Oseq>>,
    /// Deps of own applied actions, kept until every member reports it applied them.
    pub(super) own_commits: BTreeMap<Timestamp, Deps>,
    /// Last applied timestamp each member reported in an ack.
    peer_applied: BTreeMap<NodeId, Timestamp>,
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

    /// The number of this node's next action (`me`), which it now holds.
    pub(super) fn number_own_action(&mut self, me: NodeId) -> Oseq {
        let oseq = self.next_oseq;
        self.next_oseq += 1;
        self.received.insert(me, oseq);
        oseq
    }

    /// The highest number this node has given an own action: its `hw` in acks.
    pub(super) fn hw(&self) -> Oseq {
        self.next_oseq - 1
    }

    /// Keeps `from`'s ack of `id`, an action not here yet, until it arrives (it will: the
    /// origin re-sends until this node acks) or the epoch ends. Bounded, so that a confused
    /// peer cannot grow it without end.
    pub(super) fn keep_early_ack(&mut self, id: Timestamp, from: NodeId, hw: Oseq) {
        if self.early_acks.len() < MAX_EARLY_ACKS {
            self.early_acks.entry(id).or_default().entry(from).or_insert(hw);
        }
    }

    /// The acks of `id` that came before it.
    pub(super) fn take_early_acks(&mut self, id: Timestamp) -> BTreeMap<NodeId, Oseq> {
        self.early_acks.remove(&id).unwrap_or_default()
    }

    /// Early acks of actions up to `id`, applied now, are of no more use.
    pub(super) fn forget_early_acks_through(&mut self, id: Timestamp) {
        while self.early_acks.first_key_value().is_some_and(|(t, _)| *t <= id) {
            self.early_acks.pop_first();
        }
    }

    /// `peer` reported in an ack that it applied up to `applied`: the deps of own actions
    /// every one of `others` has applied are of no more use (they answer re-acks of members
    /// that missed the commit).
    pub(super) fn note_peer_applied(
        &mut self,
        peer: NodeId,
        applied: Timestamp,
        others: &[NodeId],
    ) {
        let seen = self.peer_applied.entry(peer).or_default();
        *seen = (*seen).max(applied);
        let low =
            others.iter().map(|m| self.peer_applied.get(m).copied().unwrap_or_default()).min();
        match low {
            None => self.own_commits.clear(),
            Some(low) => {
                self.own_commits =
                    self.own_commits.split_off(&Timestamp::new(low.time, low.node + 1));
            }
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
    catch_ups_sent: BTreeMap<NodeId, Ticks>,
    /// Master: members whose last heartbeat said this master's acks hold their commits back.
    pub(super) lag_reports: BTreeSet<NodeId>,
    /// Members that asked in this epoch to join as a fresh incarnation (they lost their data)
    /// and were not heard in it since: they can answer no view change, and stand in for
    /// one that answers nothing (`quorum`).
    pub(super) lost_data: BTreeSet<NodeId>,
}

impl EpochMembership {
    /// Master: `member` heartbeat in this epoch at `now`, finding this master lagging or not.
    pub(super) fn heartbeat(&mut self, member: NodeId, now: Ticks, master_lags: bool) {
        if master_lags {
            self.lag_reports.insert(member);
        } else {
            self.lag_reports.remove(&member);
        }
        self.newcomers.remove(&member);
        self.heard_from(member);
        self.last_heard.insert(member, now);
    }

    /// Master: when `member` was last heard (the view's start, if not since).
    pub(super) fn last_heard_of(&self, member: NodeId) -> Ticks {
        self.last_heard.get(&member).copied().unwrap_or(self.started)
    }

    /// Master: whether `member` was heard within `timeout` of `now`.
    pub(super) fn heard_within(&self, member: NodeId, now: Ticks, timeout: Ticks) -> bool {
        self.last_heard.get(&member).is_some_and(|&at| now.saturating_sub(at) <= timeout)
    }

    /// Whether `member`, behind this epoch, may be sent the state again at `now`: once per
    /// `every` ticks (each catch-up carries the whole string).
    pub(super) fn catch_up_due(&mut self, member: NodeId, now: Ticks, every: Ticks) -> bool {
        if self.catch_ups_sent.get(&member).is_some_and(|&at| now < at + every) {
            return false;
        }
        self.catch_ups_sent.insert(member, now);
        true
    }

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
            lag_reports: BTreeSet::new(),
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

/// How an acceptor answers a Prepare or an Accept.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Refuse,
    /// A higher ballot than any promised: promise it (durably) first.
    Promise,
    /// The ballot already promised: answer again, as before.
    AsPromised,
}

impl NextView {
    /// Phase 1: a Prepare of `ballot`; `sticky` if it would depose a master this node still
    /// sees working. The ballot already promised is a re-sent or duplicated Prepare and is
    /// answered again: a refusal would make the proposer give up, and a slow member gets
    /// every Prepare twice (the proposer re-sends before the first answer is back).
    pub(super) fn answer_prepare(&self, ballot: Ballot, sticky: bool) -> Answer {
        if ballot == self.promised {
            Answer::AsPromised
        } else if ballot < self.promised || sticky {
            Answer::Refuse
        } else {
            Answer::Promise
        }
    }

    /// Phase 2: an Accept of `ballot`. One above the promise counts as its Prepare too.
    pub(super) fn answer_accept(&self, ballot: Ballot) -> Answer {
        match ballot.cmp(&self.promised) {
            std::cmp::Ordering::Less => Answer::Refuse,
            std::cmp::Ordering::Equal => Answer::AsPromised,
            std::cmp::Ordering::Greater => Answer::Promise,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deps of an own action answer the re-ack of a member that missed its commit; they
    /// are dropped once every other member reported applying it, not before.
    #[test]
    fn own_commits_are_kept_until_every_other_member_applied_them() {
        let mut r = EpochReplication::new();
        let (a, b) = (Timestamp::new(5, 1), Timestamp::new(9, 1));
        r.own_commits.insert(a, vec![(1, 0)]);
        r.own_commits.insert(b, vec![(1, 1)]);
        r.note_peer_applied(2, b, &[2, 3]);
        assert_eq!(r.own_commits.len(), 2, "n3 has applied nothing yet");
        r.note_peer_applied(3, a, &[2, 3]);
        assert_eq!(r.own_commits.keys().collect::<Vec<_>>(), vec![&b], "both applied a");
        r.note_peer_applied(3, Timestamp::new(4, 3), &[2, 3]);
        assert_eq!(r.own_commits.len(), 1, "an older report never brings one back or drops b");
    }

    /// Acceptor rules: never below the promise; the promised ballot answered again even where
    /// the master now looks healthy (a re-sent Prepare); a higher one refused only to depose a
    /// master that still works.
    #[test]
    fn an_acceptor_keeps_its_promise_and_answers_a_resent_prepare_again() {
        let ballot = |round| Ballot { round, node: 2 };
        let next = NextView { promised: ballot(5), ..NextView::default() };
        assert_eq!(next.answer_prepare(ballot(5), true), Answer::AsPromised);
        assert_eq!(next.answer_prepare(ballot(4), false), Answer::Refuse);
        assert_eq!(next.answer_prepare(ballot(6), true), Answer::Refuse);
        assert_eq!(next.answer_prepare(ballot(6), false), Answer::Promise);
        assert_eq!(next.answer_accept(ballot(4)), Answer::Refuse);
        assert_eq!(next.answer_accept(ballot(5)), Answer::AsPromised);
        assert_eq!(next.answer_accept(ballot(6)), Answer::Promise);
    }

    /// Early acks wait for their action, up to a bound, and go once it applied.
    #[test]
    fn early_acks_are_bounded_and_forgotten_once_applied() {
        let mut r = EpochReplication::new();
        for t in 1..=MAX_EARLY_ACKS as u64 + 10 {
            r.keep_early_ack(Timestamp::new(t, 2), 3, 0);
        }
        assert_eq!(r.early_acks.len(), MAX_EARLY_ACKS);
        r.forget_early_acks_through(Timestamp::new(100, 2));
        assert_eq!(r.early_acks.len(), MAX_EARLY_ACKS - 100);
        assert_eq!(r.take_early_acks(Timestamp::new(101, 2)), BTreeMap::from([(3, 0)]));
        assert!(r.take_early_acks(Timestamp::new(101, 2)).is_empty());
    }
}
