//! View changes: one single-decree Paxos instance per epoch decides the next view and which
//! pending actions of the old epoch commit.
//!
//! Any member may propose (the master to drop failed members or add joiners, another member
//! to depose a silent master). Phase 1 (`Prepare`/`Promise`) needs a majority of the current
//! view; a promiser persists its promise and acks no more actions of the epoch. The proposer
//! re-proposes the highest accepted proposal it hears of, or builds its own: the new members,
//! and every pending action resolved as committed if some promiser applied past it, knew it
//! committed (from acks or an Execute), or if every promiser holds it (a promiser lacking it never acked it, so it cannot
//! have committed). Phase 2 (`Accept`/`Accepted`) needs a majority too; then `Decided` goes to
//! everyone. Installing a decision applies the committed actions of the old epoch in
//! timestamp order, drops the rest, and starts the new epoch: the view change is a barrier.

use std::collections::{BTreeMap, BTreeSet};

use strstore_protocol::{
    Action, Ballot, Epoch, Error, Member, NodeId, PeerMsg, PendingLog, Snapshot, Timestamp, View,
    ViewProposal, Write,
};
use tracing::{info, warn};

use super::epoch::{Answer, EpochMembership, EpochReplication, NextView};
use super::held::HeldBody;
use super::node::Replica;
use super::proposer::Proposer;
use super::quorum;
use super::ready::Ticks;
use super::records::LogRecord;
use super::state::StringState;

impl Replica {
    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// How many members count as having answered a phase (`quorum`): members that lost
    /// their data stand in for themselves once every other member answered.
    fn quorum_count(&self, answered: &BTreeSet<NodeId>) -> usize {
        quorum::answers(&self.members, answered, &self.membership.lost_data)
    }

    pub(super) fn tick_view_change(&mut self) {
        if let Some(p) = &self.next_view.proposer {
            if self.now > p.started + self.cfg.failure_ticks {
                info!(node = self.id(), epoch = p.epoch + 1, "view change timed out; will retry");
                self.next_view.proposer = None;
                self.view_changes.back_off(self.now, &self.cfg);
            } else {
                self.maybe_accept_phase();
                self.resend_phase();
            }
            return;
        }
        if !self.is_member() || !self.view_changes.may_propose(self.now) {
            return;
        }
        let stuck = self.is_frozen() && self.view_changes.stalled(self.now);
        if self.is_frozen() && !stuck {
            return; // another node's view change is under way
        }
        if stuck {
            // Promised a view change that never finished: finish one ourselves, or this epoch
            // stays frozen for good.
            info!(
                node = self.id(),
                epoch = self.view.epoch + 1,
                "view change stalled; taking it over"
            );
            let (remove, add) = if self.is_master() {
                (self.failed_members().into_iter().collect(), self.cluster.joiners.clone())
            } else {
                self.repaired_members()
            };
            self.view_changes.froze(self.now, &self.cfg);
            self.start_proposal(remove, add);
        } else if self.is_master() {
            self.propose_as_master();
        } else if self.now.saturating_sub(self.membership.master_heard)
            > self.silence_timeout(self.view.master) + self.view_changes.election_jitter()
        {
            info!(
                node = self.id(),
                master = self.view.master,
                "master silent; starting an election"
            );
            let (mut remove, add) = self.repaired_members();
            remove.insert(self.view.master);
            self.start_proposal(remove, add);
            self.reset_election_timer();
        }
    }

    /// The master's view changes: remove failed members and add joiners, else remove a
    /// slow member, else hand the master role over if this master is the slow one.
    fn propose_as_master(&mut self) {
        // With the removals held back (see `keeping_two_members`) the proposal still goes
        // out: a master restarted into a view the others left learns so from the answers.
        let failed = self.failed_members();
        self.log_silent(&failed);
        if !failed.is_empty() || !self.cluster.joiners.is_empty() {
            let add = self.cluster.joiners.clone();
            self.start_proposal(failed.into_iter().collect(), add);
        } else if let Some(slow) = self.slow_member() {
            let ms = |ticks: Ticks| ticks * self.cfg.tick_ms;
            warn!(
                node = self.id(),
                member = slow,
                "n{slow}'s acks have come more than {} ms after the others' for {} ms, \
                 holding every write back; removing it until it keeps up",
                ms(self.cfg.ack_lag_ticks),
                ms(self.cfg.ack_lag_for_ticks),
            );
            self.start_proposal([slow].into_iter().collect(), BTreeMap::new());
        } else if let Some(next) = self.successor() {
            warn!(
                node = self.id(),
                next,
                "every other member finds this master's acks holding its writes back; \
                 handing the master role to n{next}, which removes this node if it stays slow"
            );
            self.propose_view(BTreeSet::new(), BTreeMap::new(), next);
        }
    }

    /// Members that said they lost their state (a fresh incarnation asking to join), to be
    /// removed and added again from a snapshot by a proposal this non-master makes.
    fn repaired_members(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, Member>) {
        let add: BTreeMap<NodeId, Member> = self
            .cluster
            .joiners
            .iter()
            .filter(|(id, _)| self.view.contains(**id))
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        (add.keys().copied().collect(), add)
    }

    /// Phase messages get lost like any other: ask again those that have not answered.
    fn resend_phase(&mut self) {
        let now = self.now;
        let every = self.cfg.resend_ticks.max(1);
        let me = self.id();
        let members = self.members.clone();
        let master = self.view.master;
        let Some(p) = &mut self.next_view.proposer else { return };
        if now < p.resend_at {
            return;
        }
        p.resend_at = now + every;
        let (msg, answered): (PeerMsg, &BTreeSet<NodeId>) = match &p.proposal {
            None => {
                let deposes_master = p.remove.contains(&master);
                let answered: &BTreeSet<NodeId> = &p.promised_by;
                (PeerMsg::Prepare { ballot: p.ballot, deposes_master }, answered)
            }
            Some(proposal) => {
                (PeerMsg::Accept { ballot: p.ballot, proposal: proposal.clone() }, &p.accepts)
            }
        };
        let targets: Vec<NodeId> =
            members.into_iter().filter(|m| *m != me && !answered.contains(m)).collect();
        for to in targets {
            let env = self.envelope(to, msg.clone());
            self.ready.messages.push(env);
        }
    }

    /// Proposes the next view, with this node as its master.
    fn start_proposal(&mut self, remove: BTreeSet<NodeId>, add: BTreeMap<NodeId, Member>) {
        self.propose_view(remove, add, self.id());
    }

    fn propose_view(
        &mut self,
        mut remove: BTreeSet<NodeId>,
        mut add: BTreeMap<NodeId, Member>,
        master: NodeId,
    ) {
        // A member that lost its data comes back only from a snapshot, as a joiner.
        for m in self.view.members.iter().filter(|m| self.membership.lost_data.contains(&m.id)) {
            remove.insert(m.id);
            add.entry(m.id).or_insert_with(|| m.clone());
        }
        let remove = self.keeping_two_members(remove, &add);
        let ballot = self.view_changes.next_ballot(self.next_view.promised, self.id());
        info!(
            node = self.id(),
            epoch = self.view.epoch + 1,
            ?remove,
            add = ?add.keys().collect::<Vec<_>>(),
            round = ballot.round,
            master,
            "starting view change"
        );
        let resend_at = self.now + self.cfg.resend_ticks;
        let changes = (remove, add, master);
        self.next_view.proposer =
            Some(Proposer::new(self.view.epoch, ballot, changes, self.now, resend_at));
        let deposes_master =
            self.next_view.proposer.as_ref().is_some_and(|p| p.remove.contains(&self.view.master));
        self.send_to_view(PeerMsg::Prepare { ballot, deposes_master });
    }

    /// `remove`, or nothing if it would shrink the view of a cluster of several nodes to
    /// one member. Removing a member from a view of two takes that member's own promise, so
    /// it is alive and only seemed failed (a one-way partition, a pause): a view of the
    /// proposer alone would keep a single copy of the data and make the others rejoin. The
    /// proposal still goes out without the removals: it resolves a stalled epoch, and its
    /// answers tell a node left behind which view is current.
    fn keeping_two_members(
        &self,
        remove: BTreeSet<NodeId>,
        add: &BTreeMap<NodeId, Member>,
    ) -> BTreeSet<NodeId> {
        let remaining = self.members.iter().filter(|m| !remove.contains(m)).count()
            + add.keys().filter(|a| !self.members.contains(a)).count();
        let cluster = self.cfg.initial_view.members.len().max(self.members.len());
        if remaining >= cluster.min(2) {
            return remove;
        }
        tracing::debug!(node = self.id(), ?remove, "not removing down to a view of one member");
        BTreeSet::new()
    }

    /// Sends to every member of the current view; to ourselves through the log, so that our
    /// own promise or acceptance is durable before we count it.
    fn send_to_view(&mut self, msg: PeerMsg) {
        for to in self.members.clone() {
            let env = self.envelope(to, msg.clone());
            if to == self.id() {
                self.ready.after_sync.push(env);
            } else {
                self.ready.messages.push(env);
            }
        }
    }

    /// Whether this node still sees a working master, so that a lone node cut off from the
    /// others cannot depose it when it comes back.
    fn master_is_healthy(&self) -> bool {
        if self.is_master() {
            let heard = self
                .members
                .iter()
                .filter(|&&m| {
                    m == self.id()
                        || self.membership.heard_within(m, self.now, self.silence_timeout(m))
                })
                .count();
            heard >= self.majority()
        } else {
            // Heard within half its timeout: a master that answers heartbeats (one every
            // `heartbeat_ticks`), not one that has just gone quiet.
            let master = self.view.master;
            self.now.saturating_sub(self.membership.master_heard)
                <= self.silence_timeout(master) / 2
        }
    }

    /// Common checks of phase 1 and 2 requests: same epoch, and this node is a member.
    fn acceptor_ready(&mut self, from: NodeId, epoch: Epoch) -> bool {
        if epoch < self.view.epoch {
            // Our own request of the old epoch, back through the log after the change: nothing
            // to tell ourselves.
            if from != self.id() {
                let env = self.envelope(from, PeerMsg::StaleEpoch { current: self.view.epoch });
                self.ready.messages.push(env);
            }
            return false;
        }
        if epoch > self.view.epoch {
            self.ask_to_join(Some(from));
            return false;
        }
        self.is_member() && self.members.contains(&from)
    }

    /// Refuses `ballot`. A refusal of our own Prepare (back through the log after we promised
    /// a higher ballot) is addressed to ourselves: the engine steps it at once (`engine`).
    fn refuse(&mut self, from: NodeId, ballot: Ballot) {
        let promised = self.next_view.promised;
        let env = self.envelope(from, PeerMsg::Nack { ballot, promised });
        self.ready.messages.push(env);
    }

    fn promise(&mut self, ballot: Ballot) {
        if !self.is_frozen() {
            self.view_changes.froze(self.now, &self.cfg);
        }
        self.next_view.promised = ballot;
        self.view_changes.saw_round(ballot.round);
        self.ready.log.push(LogRecord::Promise { epoch: self.view.epoch + 1, ballot });
    }

    pub(super) fn on_prepare(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        ballot: Ballot,
        deposes_master: bool,
    ) {
        if !self.acceptor_ready(from, epoch) {
            return;
        }
        let sticky = deposes_master && from != self.id() && self.master_is_healthy();
        match self.next_view.answer_prepare(ballot, sticky) {
            Answer::Refuse => return self.refuse(from, ballot),
            Answer::Promise => self.promise(ballot),
            Answer::AsPromised => {}
        }
        let pending = self.pending_log();
        let msg = PeerMsg::Promise { ballot, accepted: self.next_view.accepted.clone(), pending };
        let env = self.envelope(from, msg);
        self.ready.after_sync.push(env);
    }

    fn pending_log(&self) -> PendingLog {
        let mut held = Vec::new();
        let mut committed = Vec::new();
        for (id, h) in &self.held {
            if let HeldBody::Write(a) = &h.body {
                held.push(a.clone());
                if h.deps.is_some() {
                    committed.push(*id);
                }
            }
        }
        PendingLog { applied: self.progress.last, held, committed }
    }

    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        ballot: Ballot,
        accepted: Option<(Ballot, ViewProposal)>,
        pending: PendingLog,
    ) {
        let Some(p) = &mut self.next_view.proposer else { return };
        if !p.answers(epoch, ballot, false) {
            return;
        }
        p.promises.insert(from, (accepted, pending));
        p.promised_by.insert(from);
        self.membership.heard_from(from);
        self.maybe_accept_phase();
    }

    /// Moves to phase 2 once a majority promised and either every member we hope to keep
    /// answered or a short grace period passed (so a slow member is not dropped needlessly).
    fn maybe_accept_phase(&mut self) {
        let majority = self.majority();
        let grace = 2 * self.cfg.resend_ticks;
        let now = self.now;
        let members = self.members.clone();
        let Some(promised) =
            self.next_view.proposer.as_ref().map(|p| self.quorum_count(&p.promised_by))
        else {
            return;
        };
        let Some(p) = &mut self.next_view.proposer else { return };
        if p.proposal.is_some() || promised < majority {
            return;
        }
        let quorum_at = *p.quorum_at.get_or_insert(now);
        let all_in =
            members.iter().filter(|m| !p.remove.contains(m)).all(|m| p.promises.contains_key(m));
        if !all_in && now < quorum_at + grace {
            return;
        }
        let proposal = p.choose(&self.view, self.cfg.limits);
        p.proposal = Some(proposal.clone());
        let ballot = p.ballot;
        self.send_to_view(PeerMsg::Accept { ballot, proposal });
    }

    pub(super) fn on_nack(&mut self, epoch: Epoch, ballot: Ballot, promised: Ballot) {
        let Some(p) = &self.next_view.proposer else { return };
        if p.epoch != epoch || p.ballot != ballot || promised == ballot {
            return; // a late refusal from before that node promised this very ballot
        }
        info!(node = self.id(), ?ballot, ?promised, "view change refused; backing off");
        self.view_changes.saw_round(promised.round);
        self.next_view.proposer = None;
        self.view_changes.back_off(self.now, &self.cfg);
    }

    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        ballot: Ballot,
        proposal: ViewProposal,
    ) {
        if !self.acceptor_ready(from, epoch) || proposal.view.epoch != self.view.epoch + 1 {
            return;
        }
        match self.next_view.answer_accept(ballot) {
            Answer::Refuse => return self.refuse(from, ballot),
            Answer::Promise => self.promise(ballot),
            Answer::AsPromised => {}
        }
        self.next_view.accepted = Some((ballot, proposal.clone()));
        self.ready.log.push(LogRecord::Accepted { ballot, proposal });
        let env = self.envelope(from, PeerMsg::Accepted { ballot });
        self.ready.after_sync.push(env);
    }

    pub(super) fn on_accepted(&mut self, from: NodeId, epoch: Epoch, ballot: Ballot) {
        let majority = self.majority();
        let Some(p) = &mut self.next_view.proposer else { return };
        if !p.answers(epoch, ballot, true) {
            return;
        }
        p.accepts.insert(from);
        let accepts = p.accepts.clone();
        if self.quorum_count(&accepts) < majority {
            return;
        }
        let p = self.next_view.proposer.take().expect("proposer");
        let proposal = p.proposal.expect("phase 2");
        let old: Vec<NodeId> = self.members.clone();
        self.install_decided(proposal.clone());
        let snapshot = (!proposal.joiners.is_empty())
            .then(|| self.state.to_snapshot(self.view.epoch, self.progress.last));
        let mut targets: BTreeSet<NodeId> = old.into_iter().collect();
        targets.extend(proposal.view.ids());
        targets.remove(&self.id());
        for to in targets {
            let snapshot = proposal.joiners.contains(&to).then(|| snapshot.clone()).flatten();
            let env = self.envelope(
                to,
                PeerMsg::Decided { proposal: proposal.clone(), snapshot: snapshot.map(Box::new) },
            );
            self.ready.messages.push(env);
        }
    }

    pub(super) fn on_decided(
        &mut self,
        from: NodeId,
        proposal: ViewProposal,
        snapshot: Option<Snapshot>,
    ) {
        let target = proposal.view.epoch;
        if target <= self.view.epoch {
            return;
        }
        if proposal.joiners.contains(&self.id()) {
            match snapshot {
                Some(s) => self.install_snapshot(proposal.view, s),
                None => self.ask_to_join(Some(from)),
            }
        } else if target == self.view.epoch + 1 && self.is_member() {
            self.install_decided(proposal);
        } else {
            self.ask_to_join(Some(from));
        }
    }

    /// Applies the old epoch's committed actions in order, aborts the rest (re-queueing the
    /// writes clients here still wait for), and enters the new view.
    fn install_decided(&mut self, proposal: ViewProposal) {
        let committed: BTreeSet<Timestamp> = proposal.committed.iter().map(|a| a.id).collect();
        let mut to_apply: BTreeMap<Timestamp, Action> = BTreeMap::new();
        let mut aborted: Vec<Write> = Vec::new();
        let mut gets = Vec::new();
        for (id, held) in std::mem::take(&mut self.held) {
            match held.body {
                HeldBody::Write(a) if id <= proposal.applied_upto || committed.contains(&id) => {
                    to_apply.insert(id, a);
                }
                HeldBody::Write(a) => aborted.extend(a.writes),
                HeldBody::Fence { gets: g } => gets.extend(g),
            }
        }
        for a in &proposal.committed {
            to_apply.entry(a.id).or_insert_with(|| a.clone());
        }
        for (id, action) in to_apply {
            if id > self.progress.last {
                self.apply_action(action);
            }
        }
        // Writes that did not commit are re-queued for the new epoch if a client waits here.
        self.clients.requeue(aborted, gets);
        self.enter_view(proposal.view.clone());
        self.view_changes.last_decided = Some(proposal);
    }

    /// A joiner (or a node left behind) takes the state at the end of the old epoch.
    fn install_snapshot(&mut self, view: View, snapshot: Snapshot) {
        self.held.clear();
        self.fail_waiters(Error::Unavailable {
            reason: format!("node {} was re-synchronised from a snapshot; retry", self.id()),
            try_nodes: vec![],
        });
        self.state = StringState::from_snapshot(&snapshot);
        info!(
            node = self.id(),
            epoch = view.epoch,
            applied = self.state.digest().actions,
            string_bytes = snapshot.value.len(),
            "installed the cluster's state from a snapshot instead of replaying the old epoch"
        );
        self.progress.installed(snapshot.applied);
        // `Ready::applied` lists what was applied after `replay_base`; what this step applied
        // before the install is covered by the snapshot (observers re-align on the base).
        self.ready.applied.clear();
        self.enter_view(view);
        self.view_changes.last_decided = None;
    }

    /// Resets everything scoped to an epoch and starts `view`.
    fn enter_view(&mut self, view: View) {
        let me = self.id();
        let newcomers =
            view.ids().into_iter().filter(|&m| m != me && !self.view.contains(m)).collect();
        self.replication = EpochReplication::new();
        self.membership = EpochMembership::entering(self.now, newcomers);
        self.next_view = NextView::default();
        self.clock.witness(self.progress.last.time, &mut self.ready.log);
        info!(
            node = self.id(),
            epoch = view.epoch,
            master = view.master,
            members = ?view.ids(),
            applied = self.progress.actions,
            "entered view"
        );
        self.note_departures(&view);
        self.cluster.entered(&view);
        self.members = view.ids();
        self.view = view;
        self.reset_election_timer();
        self.warn_if_flags_differ();
        self.write_snapshot();
        self.ready.view_changed = Some(self.view.clone());
        if !self.is_member() {
            self.fail_waiters(Error::Unavailable {
                reason: format!("node {} was removed from the cluster; it is rejoining", self.id()),
                try_nodes: self.view.members.iter().map(|m| m.client_addr.clone()).collect(),
            });
        }
    }

    /// Members of the old view that `view` leaves out: `status` lists them as failed, and each
    /// is held down before it may come back.
    fn note_departures(&mut self, view: &View) {
        for m in self.view.members.iter().filter(|m| !view.contains(m.id)) {
            let hold = self.cluster.departs(m, self.now, &self.cfg);
            info!(
                node = self.id(),
                removed = m.id,
                "n{} left the view; it is added again once heard steadily for {} ms",
                m.id,
                hold * self.cfg.tick_ms
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::Config;
    use super::super::records::Restored;
    use super::*;

    /// Runs `nodes` for `ticks` ticks, delivering every message at once (those that wait for
    /// the log as if it were durable at once); `to` indexes `nodes` by node id - 1.
    fn run(nodes: &mut [Replica], ticks: usize) {
        for _ in 0..ticks {
            for i in 0..nodes.len() {
                nodes[i].tick();
                let mut inbox: Vec<strstore_protocol::Envelope> = Vec::new();
                loop {
                    nodes[i].propose();
                    let ready = nodes[i].take_ready();
                    if ready.messages.is_empty() && ready.after_sync.is_empty() {
                        break;
                    }
                    for env in ready.after_sync.into_iter().chain(ready.messages) {
                        if env.to == nodes[i].id() {
                            nodes[i].step(env);
                        } else {
                            inbox.push(env);
                        }
                    }
                }
                for env in inbox {
                    let to = env.to as usize - 1;
                    nodes[to].step(env);
                }
            }
        }
    }

    /// A view of two whose other member lost its data (it restarted repaired and asks to
    /// join as a fresh incarnation, so it answers no view change of this epoch): the master
    /// re-adds it from a snapshot on its own, since nothing the lost member forgot can be
    /// missing from the master. Without the rule the master stays frozen for good.
    #[test]
    fn a_view_of_two_whose_other_member_lost_its_data_changes_without_it() {
        let master = Replica::new(Config::new(1, vec![1, 2]), Restored::default());
        let mut cfg = Config::new(2, vec![1, 2]);
        cfg.fresh_incarnation = true;
        cfg.start_outside_views();
        let lost = Replica::new(cfg, Restored::default());
        let mut nodes = vec![master, lost];
        let failure = nodes[0].cfg.failure_ticks as usize;
        run(&mut nodes, 10 * failure);
        let (master, lost) = (&nodes[0], &nodes[1]);
        assert!(master.view().epoch >= 2, "the master moved on: {:?}", master.view());
        assert!(!master.is_frozen(), "the master is not stuck in the view change");
        assert_eq!(lost.view().epoch, master.view().epoch, "the lost member entered it");
        assert!(lost.is_member());
    }
}
