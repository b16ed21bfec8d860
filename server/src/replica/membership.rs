//! Heartbeats, failure detection and joins.
//!
//! Members send the master a heartbeat with their health every `heartbeat_ticks`; the master
//! answers each with the view and its table of members, so members notice a dead master and
//! any node can report the cluster's status. The master declares a member failed after a
//! silence longer than its adaptive timeout (`detector::Gaps`), and slow when its acks hold
//! commits back (`detector::AckLag`); the view change that removes it lives in
//! `view_change.rs`. A removed node is added again once it passed its hold-down.

use strstore_protocol::{
    Epoch, Health, Member, MemberState, MemberStatus, NodeId, PeerMsg, View, ViewProposal,
};

use super::node::Replica;
use super::ready::Ticks;

/// Longest failure timeouts a member the view just added may stay silent (see
/// `removal_timeout`).
const NEWCOMER_GRACE: Ticks = 4;

impl Replica {
    pub(super) fn tick_membership(&mut self) {
        if !self.cluster.heartbeat_due(self.now, &self.cfg) {
            return;
        }
        // A node that heard of a newer view keeps asking, once per heartbeat, until it is in
        // one: the master adds a node it removed only once it has heard it steadily.
        if !self.is_member() || !self.membership.join_hints.is_empty() {
            self.ask_to_join(None);
        }
        if self.is_member() && !self.is_master() {
            let mut health = self.cluster.health.clone();
            health.applied = self.progress.actions;
            health.clock = self.clock.time();
            health.epoch = self.view.epoch;
            let member = self.cfg.me.clone();
            let master_lags = self.finds_master_lagging();
            let env =
                self.envelope(self.view.master, PeerMsg::Heartbeat { health, member, master_lags });
            self.ready.messages.push(env);
        }
    }

    pub(super) fn reset_election_timer(&mut self) {
        self.view_changes.reset_election_timer(&self.cfg);
    }

    /// Silence after which `peer` counts as failed here: adapted to the gaps it has shown.
    pub(super) fn silence_timeout(&self, peer: NodeId) -> Ticks {
        self.cluster.silence_timeout(peer, &self.cfg)
    }

    pub(super) fn on_heartbeat(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        health: Health,
        member: Member,
        master_lags: bool,
    ) {
        if member.id == from {
            self.cluster.announced.insert(from, member);
        }
        if !self.is_master() {
            if epoch < self.view.epoch {
                let env = self.envelope(from, PeerMsg::StaleEpoch { current: self.view.epoch });
                self.ready.messages.push(env);
            }
            return;
        }
        if epoch + 1 == self.view.epoch && self.view.contains(from) {
            // It missed the decision that started this view.
            if let Some(proposal) = self.view_changes.last_decided.clone() {
                let env = self.envelope(from, PeerMsg::Decided { proposal, snapshot: None });
                self.ready.messages.push(env);
            }
            return;
        }
        if epoch == self.view.epoch && self.view.contains(from) {
            self.membership.heartbeat(from, self.now, master_lags);
            self.cluster.heard(from, self.now, &self.cfg);
            self.cluster.member_health.insert(from, health);
        }
        let ack =
            PeerMsg::HeartbeatAck { view: self.view.clone(), members: self.master_status_table() };
        let env = self.envelope(from, ack);
        self.ready.messages.push(env);
    }

    pub(super) fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        view: View,
        members: Vec<MemberStatus>,
    ) {
        if view.epoch == self.view.epoch && from == self.view.master {
            self.membership.master_heard = self.now;
            self.cluster.heard(from, self.now, &self.cfg);
            self.membership.master_table = members;
            if view.limits != self.view.limits {
                // Only the first view is not agreed by a view change: each node built it
                // from its own flags, and the master's count.
                self.view.limits = view.limits;
                self.warn_if_flags_differ();
            }
        } else if view.epoch > self.view.epoch + 1
            || (view.epoch > self.view.epoch && !view.contains(self.id()))
        {
            self.ask_to_join(Some(from));
        }
    }

    pub(super) fn on_stale_epoch(&mut self, from: NodeId, current: Epoch) {
        if current > self.view.epoch {
            self.ask_to_join(Some(from));
        }
    }

    /// Asks to be (re)added, at most once per heartbeat interval: to every node seen in a
    /// newer view (`hint` and earlier ones) and to every member of the view this node knows.
    /// Hints are kept until this node enters a view: a node whose view's members have all
    /// moved on or left may hear of the newer view only once (a `Prepare` from a view that
    /// lists it, say), and that call may fall inside the interval.
    pub(super) fn ask_to_join(&mut self, hint: Option<NodeId>) {
        self.membership.join_hints.extend(hint);
        if !self.cluster.may_ask_to_join(self.now, &self.cfg) {
            return;
        }
        let me = self.cfg.me.clone();
        let mut targets: Vec<NodeId> = self.view.ids();
        targets.extend(self.membership.join_hints.iter().copied());
        targets.sort_unstable();
        targets.dedup();
        let my_id = self.id();
        for to in targets.into_iter().filter(|&t| t != my_id) {
            let fresh = self.cluster.fresh_incarnation;
            let env = self.envelope(to, PeerMsg::Join { member: me.clone(), fresh });
            self.ready.messages.push(env);
        }
    }

    pub(super) fn on_join(&mut self, from: NodeId, epoch: Epoch, member: Member, fresh: bool) {
        if from != member.id && !self.view.contains(from) {
            return; // only the node itself, or a member forwarding, may ask
        }
        if epoch > self.view.epoch {
            self.ask_to_join(Some(from)); // the forwarder knows a newer view than we do
            return;
        }
        if fresh && from == member.id && self.view.contains(from) && from != self.id() {
            self.membership.lost_data.insert(from);
        }
        // A member of our view that asks to join missed the decision that started it, so no
        // action of this epoch can have committed (that needs its ack). If we applied nothing
        // in this epoch either, our state is the state at its start: hand it over. This works
        // even from a node the view left out, which is how a view whose only members are
        // lagging gets going. Not for a fresh incarnation: it may have acked actions of this
        // epoch before it lost them, so only a view change may add it again.
        if !fresh
            && self.view.contains(member.id)
            && member.id != self.id()
            && self.replication.applied_oseq.is_empty()
        {
            // Only to a member behind us: a catch-up of our own epoch is no news to a node
            // in it, and each one carries the whole string.
            if epoch < self.view.epoch {
                self.send_catch_up(member.id);
            }
            return;
        }
        // A member still in the epoch before ours missed the decision that started it (it
        // was down, or the message was lost): hand it that decision, as an answer to its
        // heartbeat would. Its heartbeats may go to the old master, which left the view, and
        // without its promise a view of two could never change again.
        if !fresh && epoch + 1 == self.view.epoch && from == member.id {
            if let Some(proposal) =
                self.view_changes.last_decided.clone().filter(|p| p.view.contains(from))
            {
                let env = self.envelope(from, PeerMsg::Decided { proposal, snapshot: None });
                self.ready.messages.push(env);
                return;
            }
        }
        if !self.is_member() {
            return;
        }
        if !self.is_master() {
            if fresh && self.view.contains(member.id) {
                // A member that lost its state: if this node ends up proposing (an election,
                // a takeover), its proposal must re-add it from a snapshot, not keep it as a
                // member that can no longer vote.
                self.cluster.joiners.insert(member.id, member.clone());
            }
            let env = self.envelope(self.view.master, PeerMsg::Join { member, fresh });
            self.ready.messages.push(env);
            return;
        }
        // A member that asks after actions were applied in this epoch is added again by a
        // view change, unless it just joined.
        if self.view.contains(member.id)
            && self.now < self.membership.started + self.cfg.failure_ticks
        {
            return;
        }
        if !self.view.contains(member.id)
            && !self.cluster.may_rejoin(member.id, self.now, &self.cfg)
        {
            return; // removed lately: it must first be heard steadily for its hold-down
        }
        self.cluster.joiners.insert(member.id, member);
    }

    /// Sends a lagging member of the current view the view and the state it starts from, at
    /// most once per longest failure timeout: it asks every heartbeat, and a state of
    /// hundreds of megabytes sent ten times a second filled the senders' memory until the
    /// kernel killed them.
    fn send_catch_up(&mut self, to: NodeId) {
        let every = self.cfg.heartbeat_ticks.max(1);
        if !self.membership.catch_up_due(to, self.now, every) {
            return;
        }
        tracing::info!(
            node = self.id(),
            to,
            bytes = self.state.text().len(),
            "n{to} asked to join a view it missed; sending it the view and the state"
        );
        let proposal = ViewProposal {
            view: self.view.clone(),
            applied_upto: self.progress.last,
            committed: Vec::new(),
            joiners: vec![to],
        };
        let snapshot = Some(self.state.to_snapshot(self.view.epoch, self.progress.last));
        let env =
            self.envelope(to, PeerMsg::Decided { proposal, snapshot: snapshot.map(Box::new) });
        self.ready.messages.push(env);
    }

    /// The master's table of members (and nodes asking to join).
    pub(super) fn master_status_table(&self) -> Vec<MemberStatus> {
        let mut table: Vec<MemberStatus> = self
            .view
            .members
            .iter()
            .map(|m| {
                let announced = if m.id == self.id() {
                    Some(&self.cfg.me)
                } else {
                    self.cluster.announced.get(&m.id)
                };
                let member = Member {
                    id: m.id,
                    peer_addr: m.peer_addr.clone(),
                    client_addr: announced
                        .map_or_else(|| m.client_addr.clone(), |a| a.client_addr.clone()),
                };
                let silent = if m.id == self.id() {
                    0
                } else {
                    self.now.saturating_sub(self.membership.last_heard_of(m.id))
                };
                let state = if silent > self.silence_timeout(m.id) {
                    MemberState::Failed
                } else if silent > 2 * self.cfg.heartbeat_ticks {
                    MemberState::Suspect
                } else {
                    MemberState::Alive
                };
                let health = if m.id == self.id() {
                    let mut h = self.cluster.health.clone();
                    h.applied = self.progress.actions;
                    h.clock = self.clock.time();
                    h.epoch = self.view.epoch;
                    h
                } else {
                    self.cluster.member_health.get(&m.id).cloned().unwrap_or_default()
                };
                MemberStatus { member, state, last_heard_ms: silent * self.cfg.tick_ms, health }
            })
            .collect();
        for (m, since) in self.cluster.departed.values() {
            table.push(MemberStatus {
                member: m.clone(),
                state: MemberState::Failed,
                last_heard_ms: self.now.saturating_sub(*since) * self.cfg.tick_ms,
                health: Health::default(),
            });
        }
        for j in self.cluster.joiners.values().filter(|j| !self.view.contains(j.id)) {
            table.push(MemberStatus {
                member: j.clone(),
                state: MemberState::Joining,
                last_heard_ms: 0,
                health: Health::default(),
            });
        }
        table
    }

    /// Says, for the operator, why each of `failed` is about to be removed.
    pub(super) fn log_silent(&self, failed: &[NodeId]) {
        for &m in failed {
            let heard = self.membership.last_heard_of(m);
            let ms = |ticks: Ticks| ticks * self.cfg.tick_ms;
            tracing::warn!(
                node = self.id(),
                member = m,
                "n{m} silent for {} ms, over its failure timeout of {} ms; removing it",
                ms(self.now.saturating_sub(heard)),
                ms(self.removal_timeout(m)),
            );
        }
    }

    /// The silence after which the master removes member `m`. A node this view added has
    /// the state to install first (hundreds of megabytes, for a large string), which keeps
    /// it silent for longer than a failure timeout: judged by that, it was removed again
    /// every time it was added, for good. Until its first heartbeat in the view it gets
    /// `NEWCOMER_GRACE` longest failure timeouts.
    fn removal_timeout(&self, m: NodeId) -> Ticks {
        let timeout = self.silence_timeout(m);
        if self.membership.newcomers.contains(&m) {
            timeout.max(NEWCOMER_GRACE * self.cfg.failure_ticks)
        } else {
            timeout
        }
    }

    /// Members the master has not heard from for longer than their failure timeout.
    pub(super) fn failed_members(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .copied()
            .filter(|&m| m != self.id())
            .filter(|&m| {
                let heard = self.membership.last_heard_of(m);
                self.now.saturating_sub(heard) > self.removal_timeout(m)
            })
            .collect()
    }

    /// Whether the master may remove a member for holding commits back: removing one leaves
    /// the view a majority of the cluster (so that the next view changes still find their
    /// quorums, and slowness alone never shrinks a 3-node cluster below 2 or a 5-node one
    /// below 3), and nothing else is wrong (a member is slow only next to healthy ones).
    fn may_remove_for_lag(&self) -> bool {
        let cluster = self.cfg.initial_view.members.len().max(self.members.len());
        self.cfg.ack_lag_ticks > 0
            && self.cluster.joiners.is_empty()
            && self.members.len() > cluster / 2 + 1
            && self.members.len() >= 3
    }

    /// A member to remove for holding commits back (see `may_remove_for_lag`).
    pub(super) fn slow_member(&self) -> Option<NodeId> {
        if !self.may_remove_for_lag() {
            return None;
        }
        let me = self.id();
        self.membership
            .ack_lag
            .slow(self.now, self.cfg.ack_lag_for_ticks)
            .into_iter()
            .find(|&m| m != me && self.members.contains(&m))
    }

    /// Member: whether its ack-lag judge finds the master holding its commits back.
    fn finds_master_lagging(&self) -> bool {
        let slow = self.membership.ack_lag.slow(self.now, self.cfg.ack_lag_for_ticks);
        self.cfg.ack_lag_ticks > 0 && slow.contains(&self.view.master)
    }

    /// Master: the member to hand the master role to, when every other member finds this
    /// master's acks holding its commits back. Only the master removes slow members, so a
    /// slow master would never be removed and would hold every write back for good; under
    /// the next master it is removed like any slow member, which is why it hands over only
    /// where that removal may happen.
    pub(super) fn successor(&self) -> Option<NodeId> {
        let others = self.others();
        let reported = others.iter().all(|m| self.membership.lag_reports.contains(m));
        if !self.may_remove_for_lag() || others.is_empty() || !reported {
            return None;
        }
        others.into_iter().min()
    }

    /// Master: notes for the ack-lag judge that every member but `missing` acked `id`. A
    /// member this view added is not judged before its first ack (within `NEWCOMER_GRACE`
    /// longest failure timeouts) while it heartbeats: that ack waits until the state it
    /// installed is on disk, seconds for a string of hundreds of megabytes, and judged by it
    /// a re-added member was removed for lagging every time it came back. One that is not
    /// heard (it died on arrival) is judged at once, as any member: otherwise only the
    /// newcomer's long silence grace would remove it, and writes would wait that long.
    pub(super) fn acks_wait_on(&mut self, id: strstore_protocol::Timestamp, missing: NodeId) {
        let grace_ends = self.membership.started + NEWCOMER_GRACE * self.cfg.failure_ticks;
        let timeout = self.silence_timeout(missing);
        let heard = self.membership.heard_within(missing, self.now, timeout);
        if self.membership.settling.contains(&missing) && heard && self.now <= grace_ends {
            return;
        }
        if self.is_member() && self.cfg.ack_lag_ticks > 0 {
            self.membership.ack_lag.waiting_on(id, missing, self.now);
        }
    }
}
