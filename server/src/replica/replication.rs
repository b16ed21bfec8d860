//! Action / ack / execute inside one view, and delivery in timestamp order.

use std::collections::BTreeMap;

use bytes::Bytes;
use strstore_protocol::{Action, Deps, NodeId, Op, Oseq, PeerMsg, ReqSeq, Response, Timestamp};

use super::held::{HeldBody, InFlight};
use super::node::Replica;
use super::ready::WaiterId;
use super::records::{LogRecord, SnapshotRecord};
use super::state::Applied;

/// The deps of a committed action, from its acks: each member's `hw`, and for the origin
/// `oseq - 1` (every earlier action of the origin precedes this one; its own ack may carry a
/// larger `hw`, or be missing where the acks of the others proved the commit).
fn action_deps(mut acks: BTreeMap<NodeId, Oseq>, action: &Action) -> Deps {
    acks.insert(action.id.node, action.oseq - 1);
    acks.into_iter().collect()
}

impl Replica {
    /// Turns queued requests into actions and fences, as far as the window allows. The driver
    /// calls it after draining its inputs, so everything that arrived together shares one
    /// action and one fsync. Nothing is proposed while a view change is under way.
    pub fn propose(&mut self) {
        if !self.is_member() || self.is_frozen() {
            return;
        }
        while self.clients.has_writes() && self.replication.in_flight.len() < self.cfg.window {
            self.propose_action();
        }
        if self.clients.has_gets() && self.replication.in_flight.len() < self.cfg.window {
            self.propose_fence();
        }
    }

    fn propose_action(&mut self) {
        let writes =
            self.clients.take_action(self.cfg.max_action_bytes, self.cfg.max_action_writes);
        let id = self.stamp();
        let oseq = self.replication.number_own_action(self.id());
        let action = Action { id, epoch: self.view.epoch, oseq, writes, limits: self.view.limits };
        tracing::debug!(node = self.id(), id = %id, oseq, "created action");
        self.ready.log.push(LogRecord::Action(action.clone()));
        self.start_in_flight(id, PeerMsg::Action(action.clone()));
        self.held.insert(id, self.new_held(HeldBody::Write(action), None));
    }

    fn propose_fence(&mut self) {
        let gets = self.clients.take_gets();
        let id = self.stamp();
        self.start_in_flight(id, PeerMsg::Fence { id });
        self.held.insert(id, self.new_held(HeldBody::Fence { gets }, None));
    }

    /// Registers an own action or fence and sends it: to the others once it is durable here,
    /// and to ourselves as the ack that proves our own log write.
    fn start_in_flight(&mut self, id: Timestamp, msg: PeerMsg) {
        for to in self.others() {
            let env = self.envelope(to, msg.clone());
            self.ready.after_sync.push(env);
        }
        let ack = self.own_ack(id);
        self.ready.after_sync.push(self.envelope(self.id(), ack));
        let resend_at = self.now + self.cfg.resend_ticks;
        self.replication
            .in_flight
            .insert(id, InFlight { msg, acks: BTreeMap::new(), resend_at, backoff: 1 });
    }

    fn stamp(&mut self) -> Timestamp {
        Timestamp::new(self.clock.tick(&mut self.ready.log), self.id())
    }

    fn own_ack(&self, id: Timestamp) -> PeerMsg {
        PeerMsg::Ack { id, hw: self.replication.hw(), applied: self.progress.last }
    }

    fn observe(&mut self, ts: Timestamp) {
        self.clock.witness(ts.time, &mut self.ready.log);
    }

    pub(super) fn on_action(&mut self, from: NodeId, action: Action) {
        if from != action.id.node || action.oseq == 0 || action.epoch != self.view.epoch {
            return;
        }
        if self.is_frozen() {
            return; // promised the next epoch: acks nothing more of this one
        }
        let id = action.id;
        tracing::debug!(node = self.id(), id = %id, oseq = action.oseq, frozen = self.is_frozen(), "received action");
        if self.replication.received.insert(id.node, action.oseq) {
            assert!(
                id > self.progress.last,
                "n{} received {id} after applying {}: the delivery rule was broken",
                self.id(),
                self.progress.last
            );
            self.observe(id);
            self.clients.hold(&action.writes);
            self.ready.log.push(LogRecord::Action(action.clone()));
            let mut held = self.new_held(HeldBody::Write(action), None);
            held.acks = self.replication.take_early_acks(id);
            self.held.insert(id, held);
            // A committed head may have been waiting for exactly this action.
            self.deliver();
            // The first ack goes to every member, ourselves included (our own log write
            // counts once it is durable), so each learns the commit from the acks without
            // waiting for the origin's Execute: one hop less before others' actions deliver.
            let ack = self.own_ack(id);
            for to in self.members.clone() {
                if to != from {
                    let env = self.envelope(to, ack.clone());
                    self.ready.after_sync.push(env);
                }
            }
        }
        // New or duplicate, the ack to the origin goes out once the log holds the action.
        let ack = self.own_ack(id);
        self.ready.after_sync.push(self.envelope(from, ack));
    }

    pub(super) fn on_fence(&mut self, from: NodeId, id: Timestamp) {
        if from != id.node || self.is_frozen() {
            return;
        }
        self.observe(id);
        // Our earlier actions (up to hw) must be durable and sent before the origin counts
        // on them, so this ack waits for the log like any other.
        let ack = self.own_ack(id);
        self.ready.after_sync.push(self.envelope(from, ack));
    }

    pub(super) fn on_ack(&mut self, from: NodeId, id: Timestamp, hw: Oseq, applied: Timestamp) {
        self.membership.settling.remove(&from);
        if from != self.id() {
            let others = self.others();
            self.replication.note_peer_applied(from, applied, &others);
        }
        if id.node != self.id() {
            return self.count_ack(from, id, hw);
        }
        if let Some(f) = self.replication.in_flight.get_mut(&id) {
            f.acks.entry(from).or_insert(hw);
            if f.acks.len() == self.members.len() {
                self.membership.ack_lag.done(id);
                self.commit(id);
            } else if f.acks.len() + 1 == self.members.len() {
                let acks = &f.acks;
                let missing = self.members.iter().copied().find(|m| !acks.contains_key(m));
                self.acks_wait_on(id, missing.expect("one member has not acked"));
            }
            return;
        }
        // A duplicate ack for a committed action: the member missed the Execute.
        let deps = self
            .replication
            .own_commits
            .get(&id)
            .or_else(|| self.held.get(&id).and_then(|h| h.deps.as_ref()));
        if let Some(deps) = deps.cloned() {
            if from != self.id() {
                let env = self.envelope(from, PeerMsg::Execute { id, deps });
                self.ready.messages.push(env);
            }
        }
    }

    pub(super) fn commit(&mut self, id: Timestamp) {
        let f = self.replication.in_flight.remove(&id).expect("committing an action in flight");
        let deps = match &f.msg {
            PeerMsg::Action(a) => action_deps(f.acks, a),
            _ => f.acks.into_iter().collect(),
        };
        if matches!(f.msg, PeerMsg::Action(_)) {
            // The members learn the commit from each other's acks; the Execute goes only to
            // a member that acks again (it missed an ack), see above.
            self.ready.log.push(LogRecord::Commit { id, deps: deps.clone() });
            self.replication.own_commits.insert(id, deps.clone());
        }
        self.held.get_mut(&id).expect("own entry is held").deps = Some(deps);
        self.deliver();
    }

    /// An ack for another origin's action. Once every member but the origin acked it (the
    /// origin logged it before sending it), every member holds it durably: it is committed,
    /// with the same deps the origin computes (`deps[origin] = oseq - 1`, each member's `hw`).
    /// A member that acked twice may have sent a larger `hw` the second time; larger deps
    /// only wait for more actions that exist, so the order is the same either way.
    fn count_ack(&mut self, from: NodeId, id: Timestamp, hw: Oseq) {
        if from == id.node {
            return;
        }
        let Some(held) = self.held.get_mut(&id) else {
            if id > self.progress.last {
                self.replication.keep_early_ack(id, from, hw);
            }
            return;
        };
        let HeldBody::Write(action) = &held.body else { return };
        if held.deps.is_some() {
            return;
        }
        held.acks.entry(from).or_insert(hw);
        // Counted without collecting: this runs for every ack of every action.
        let mut missing =
            self.members.iter().copied().filter(|m| *m != id.node && !held.acks.contains_key(m));
        match (missing.next(), missing.next()) {
            (None, _) => {
                let deps = action_deps(std::mem::take(&mut held.acks), action);
                self.membership.ack_lag.done(id);
                self.on_commit(id, deps);
            }
            (Some(last), None) => self.acks_wait_on(id, last),
            _ => {}
        }
    }

    /// Action `id` committed with `deps`, learnt from the last ack or from the origin's
    /// `Execute`: logs the commit and delivers what it unblocks.
    pub(super) fn on_commit(&mut self, id: Timestamp, deps: Deps) {
        let Some(held) = self.held.get_mut(&id) else { return };
        if held.deps.is_some() {
            return;
        }
        held.deps = Some(deps.clone());
        self.ready.log.push(LogRecord::Commit { id, deps });
        self.deliver();
    }

    /// Applies entries from the head of the hold-back queue while the head is committed and
    /// every action it depends on is here. Anything with a smaller timestamp is then already
    /// in the queue ahead of it (see docs/protocol.md, "Why the order is the same everywhere").
    pub(super) fn deliver(&mut self) {
        while let Some(entry) = self.held.first_entry() {
            let Some(deps) = &entry.get().deps else { break };
            if !deps.iter().all(|&(node, upto)| self.replication.received.contiguous(node) >= upto)
            {
                break;
            }
            let (id, held) = entry.remove_entry();
            debug_assert!(id > self.progress.last, "delivery out of order");
            self.replication.forget_early_acks_through(id);
            match held.body {
                HeldBody::Write(action) => self.apply_action(action),
                HeldBody::Fence { gets } => self.answer_reads(gets),
            }
        }
        self.maybe_snapshot();
    }

    /// Answers the reads of a fence at its place in the order. The whole string is copied
    /// once for all the `get`s of the fence; ranges copy only their part.
    fn answer_reads(&mut self, gets: Vec<(WaiterId, ReqSeq, Op)>) {
        let mut whole: Option<Bytes> = None;
        for (waiter, seq, read) in gets {
            let response = match read {
                Op::Len => Response::Len(self.state.text().len() as u64),
                Op::GetRange { offset, len } => {
                    let start = usize::try_from(offset).unwrap_or(usize::MAX);
                    let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX);
                    Response::Value(self.state.text().slice(start, end).into())
                }
                _ => Response::Value(
                    whole.get_or_insert_with(|| self.state.share_value().to_bytes()).clone(),
                ),
            };
            self.reply(waiter, seq, Ok(response));
        }
    }

    pub(super) fn apply_action(&mut self, action: Action) {
        for w in &action.writes {
            let applied: Applied = self.state.apply(w, &action.limits);
            for waiter in self.clients.applied(w.client, w.seq) {
                self.reply(waiter, w.seq, applied.result(w.seq).map(Response::Len));
            }
        }
        self.state.seal_action(action.epoch, action.id);
        self.progress.applied(action.id);
        self.snapshots.applied(&action);
        tracing::debug!(node = self.id(), epoch = self.view.epoch, id = %action.id, oseq = action.oseq, "applied");
        self.replication.applied_oseq.insert(action.id.node, action.oseq);
        self.ready.applied.push(action.id);
    }

    /// See `snapshot_schedule` for when a snapshot is due.
    fn maybe_snapshot(&mut self) {
        let string_len = self.state.text().len() as u64;
        if self.snapshots.due(self.cfg.snapshot_every, string_len) {
            self.write_snapshot();
        }
    }

    /// Logs the applied state; the log drops everything the snapshot covers.
    pub(super) fn write_snapshot(&mut self) {
        self.snapshots.taken();
        let record = SnapshotRecord {
            snapshot: self.state.to_snapshot(self.view.epoch, self.progress.last),
            view: self.view.clone(),
            received: self.replication.applied_oseq.iter().map(|(n, o)| (*n, *o)).collect(),
            own_commits: self
                .replication
                .own_commits
                .iter()
                .map(|(t, d)| (*t, d.clone()))
                .collect(),
            next_oseq: self.replication.next_oseq,
        };
        self.ready.log.push(LogRecord::Snapshot(std::sync::Arc::new(record)));
    }

    /// Re-sends unacked actions, and re-acks a head that stays uncommitted.
    pub(super) fn tick_replication(&mut self) {
        let now = self.now;
        let max = self.cfg.max_resend_ticks;
        let me = self.id();
        let mut resend = Vec::new();
        for f in self.replication.in_flight.values_mut().filter(|f| f.resend_at <= now) {
            f.backoff = (f.backoff * 2).min(max);
            f.resend_at = now + f.backoff;
            for &m in self.members.iter().filter(|m| **m != me && !f.acks.contains_key(m)) {
                resend.push((m, f.msg.clone()));
            }
        }
        // Through the log queue: an action may not be durable here yet (its first send is
        // still waiting for the sync), and no peer may see an action its origin could lose.
        for (to, msg) in resend {
            let env = self.envelope(to, msg);
            self.ready.after_sync.push(env);
        }
        if !self.is_frozen() {
            self.reack_head();
        }
    }

    /// A head that stays uncommitted blocks delivery; if it is another origin's, our ack or
    /// its Execute may have been lost, so we ack again and the origin answers.
    fn reack_head(&mut self) {
        let now = self.now;
        let max = self.cfg.max_resend_ticks;
        let me = self.id();
        let Some((&id, held)) = self.held.iter_mut().next() else { return };
        if held.deps.is_some() || id.node == me || held.reack_at > now {
            if held.deps.is_some() && held.reack_at <= now {
                held.reack_at = now + max;
                tracing::debug!(node = me, %id, deps = ?held.deps, received = ?self.replication.received.watermarks(), "head committed but blocked");
            }
            return;
        }
        tracing::debug!(node = me, %id, "re-acking uncommitted head");
        held.reack_backoff = (held.reack_backoff * 2).min(max);
        held.reack_at = now + held.reack_backoff;
        let ack = self.own_ack(id);
        let env = self.envelope(id.node, ack);
        self.ready.after_sync.push(env);
    }
}
