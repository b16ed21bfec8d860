//! The replica: a deterministic state machine that runs action / ack / execute inside a view,
//! and the membership protocol (heartbeats, view changes, elections, joins) between views.
//!
//! Inputs are client requests, peer envelopes and ticks; outputs collect in a [`Ready`] that
//! the caller drains. The replica never touches a socket, a disk or a clock; its randomness
//! comes from a seeded RNG. The same code runs under tokio and under the seeded simulation.
//!
//! The replication half lives in `replication.rs`, heartbeats and joins in `membership.rs`,
//! the view change (single-decree Paxos per epoch) in `view_change.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use strstore_protocol::{
    Action, AppliedDigest, Ballot, ClusterReport, Deps, Envelope, Epoch, Error, Health, NodeId, Op,
    PeerMsg, ReplicaReport, Reply, ReqSeq, Request, Response, Timestamp, View, Write, WriteOp,
};

use super::clients::ClientQueue;
use super::clock::Clock;
use super::cluster::Cluster;
use super::config::Config;
use super::detector::LagRule;
use super::epoch::{EpochMembership, EpochReplication, NextView};
use super::held::{Held, HeldBody, InFlight};
use super::progress::Progress;
use super::ready::{ClientReply, Ready, Ticks, WaiterId};
use super::records::Restored;
use super::snapshot_schedule::SnapshotSchedule;
use super::state::StringState;
use super::view_changes::ViewChanges;

/// Counters the node reports in its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub clock: u64,
    pub epoch: Epoch,
    /// Write actions applied since start (including replay).
    pub applied_actions: u64,
    /// Timestamp of the last action applied.
    pub applied_ts: Timestamp,
    /// Entries in the hold-back queue.
    pub held: usize,
    /// Own actions and fences awaiting commit.
    pub in_flight: usize,
    /// Requests queued for the next action.
    pub queued: usize,
    /// Whether this node is a member of its current view.
    pub member: bool,
    /// Whether a view change is under way (this node promised the next epoch).
    pub frozen: bool,
}

/// One node's replication and membership engine: a part per concern, each with its own
/// module. The three epoch parts are replaced whole on entering a view; the rest lasts.
pub struct Replica {
    pub(super) cfg: Config,
    pub(super) now: Ticks,
    pub(super) view: View,
    /// Ids of `view.members`, cached.
    pub(super) members: Vec<NodeId>,
    /// Replication within the current epoch.
    pub(super) replication: EpochReplication,
    /// Heartbeats and catch-up within the current view.
    pub(super) membership: EpochMembership,
    /// The Paxos instance for the next view.
    pub(super) next_view: NextView,
    pub(super) clock: Clock,
    /// The hold-back queue: actions and fences in timestamp order, until they apply.
    pub(super) held: BTreeMap<Timestamp, Held>,
    /// The applied string, and the table of client sessions.
    pub(super) state: StringState,
    pub(super) progress: Progress,
    pub(super) snapshots: SnapshotSchedule,
    /// Requests waiting here: to be proposed, or for their write to apply.
    pub(super) clients: ClientQueue,
    /// Membership beyond the current view.
    pub(super) cluster: Cluster,
    /// Ballots, election timers and the last decision, across epochs.
    pub(super) view_changes: ViewChanges,
    pub(super) ready: Ready,
}

impl Replica {
    /// A replica that resumes from what its log held (empty for a fresh node).
    pub fn new(cfg: Config, restored: Restored) -> Self {
        let view =
            restored.snapshot.as_ref().map_or_else(|| cfg.initial_view.clone(), |s| s.view.clone());
        let mut r = Replica {
            members: view.ids(),
            view,
            now: 0,
            replication: EpochReplication::new(),
            membership: EpochMembership::entering(0, BTreeSet::new()),
            next_view: NextView::default(),
            clock: Clock::restored(restored.clock_bound),
            held: BTreeMap::new(),
            state: StringState::default(),
            progress: Progress::default(),
            snapshots: SnapshotSchedule::default(),
            clients: ClientQueue::default(),
            cluster: Cluster::new(cfg.fresh_incarnation),
            view_changes: ViewChanges::new(cfg.seed),
            ready: Ready::default(),
            cfg,
        };
        r.restore(restored);
        r.view_changes.reset_election_timer(&r.cfg);
        r.warn_if_flags_differ();
        r
    }

    fn restore(&mut self, restored: Restored) {
        if let Some(rec) = restored.snapshot {
            self.state = StringState::from_snapshot(&rec.snapshot);
            self.progress.installed(rec.snapshot.applied);
            self.clock.replayed(rec.snapshot.applied.time);
            for (origin, oseq) in rec.received {
                self.replication.received.fill_to(origin, oseq);
                self.replication.applied_oseq.insert(origin, oseq);
            }
            self.replication.own_commits = rec.own_commits.into_iter().collect();
            self.replication.next_oseq = rec.next_oseq;
        }
        let next_epoch = self.view.epoch + 1;
        if let Some((_, ballot)) = restored.promise.filter(|(e, _)| *e == next_epoch) {
            self.next_view.promised = ballot;
        }
        self.next_view.accepted = restored.accepted.filter(|(_, p)| p.view.epoch == next_epoch);
        tracing::debug!(
            node = self.id(),
            actions = restored.actions.len(),
            commits = restored.commits.len(),
            bound = restored.clock_bound,
            "restoring"
        );
        let commits: HashMap<Timestamp, Deps> = restored.commits.into_iter().collect();
        for action in restored.actions {
            self.clock.replayed(action.id.time);
            if action.epoch != self.view.epoch
                || action.id <= self.progress.last
                || !self.replication.received.insert(action.id.node, action.oseq)
            {
                continue;
            }
            self.restore_action(action, &commits);
        }
        // Own actions whose commit record did not reach the disk are asked of the others
        // again; when there are no others (a single-node view) every ack is already in, and
        // nothing else would ever commit them.
        let complete: Vec<Timestamp> = self
            .replication
            .in_flight
            .iter()
            .filter(|(_, f)| f.acks.len() == self.members.len())
            .map(|(id, _)| *id)
            .collect();
        for id in complete {
            self.commit(id);
        }
        self.deliver();
        // Replay produces no messages or replies; what it applied is reported like any other
        // application so observers can follow the sequence from the start.
        self.ready = Ready { applied: std::mem::take(&mut self.ready.applied), ..Ready::default() };
    }

    fn restore_action(&mut self, action: Action, commits: &HashMap<Timestamp, Deps>) {
        let deps = commits.get(&action.id).cloned();
        let own = action.id.node == self.id();
        if own {
            self.replication.next_oseq = self.replication.next_oseq.max(action.oseq + 1);
            match &deps {
                Some(d) => {
                    self.replication.own_commits.insert(action.id, d.clone());
                }
                None => {
                    // Durable here, so it acks itself; the others are asked again at once.
                    let mut acks = BTreeMap::new();
                    acks.insert(self.id(), action.oseq - 1);
                    let msg = PeerMsg::Action(action.clone());
                    self.replication
                        .in_flight
                        .insert(action.id, InFlight { msg, acks, resend_at: 0, backoff: 1 });
                }
            }
        }
        self.clients.hold(&action.writes);
        let held = self.new_held(HeldBody::Write(action.clone()), deps);
        self.held.insert(action.id, held);
    }

    /// The view's limits are the cluster's; a node started with other flags follows them,
    /// and says so, since an operator who set a flag expects it to hold.
    pub(super) fn warn_if_flags_differ(&self) {
        if self.view.limits != self.cfg.limits {
            tracing::warn!(
                node = self.id(),
                epoch = self.view.epoch,
                cluster = %self.view.limits,
                flags = %self.cfg.limits,
                "this node's --max-value-bytes/--max-string-bytes differ from the cluster's \
                 limits; following the cluster's (see docs/protocol.md, \"Limits\")"
            );
        }
    }

    pub(super) fn new_held(&self, body: HeldBody, deps: Option<Deps>) -> Held {
        Held {
            body,
            deps,
            acks: BTreeMap::new(),
            reack_at: self.now + self.cfg.resend_ticks,
            reack_backoff: 1,
        }
    }

    pub fn id(&self) -> NodeId {
        self.cfg.me.id
    }

    /// A copy of the applied string.
    pub fn value(&self) -> bytes::Bytes {
        self.state.share_value().to_bytes()
    }

    /// Bytes in the applied string.
    pub fn string_len(&self) -> usize {
        self.state.text().len()
    }

    /// Fingerprint of every action applied so far.
    pub fn digest(&self) -> AppliedDigest {
        self.state.digest()
    }

    /// The last applied action before the ones `Ready::applied` reported since the last
    /// restart or snapshot install (the default timestamp if they start from the beginning).
    pub fn replay_base(&self) -> Timestamp {
        self.progress.replay_base
    }

    /// The current view.
    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn is_member(&self) -> bool {
        self.view.contains(self.id())
    }

    pub fn is_master(&self) -> bool {
        self.view.master == self.id() && self.is_member()
    }

    /// Whether this node promised the next epoch and so may not ack actions of this one.
    pub fn is_frozen(&self) -> bool {
        self.next_view.promised != Ballot::default()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            clock: self.clock.time(),
            epoch: self.view.epoch,
            applied_actions: self.progress.actions,
            applied_ts: self.progress.last,
            held: self.held.len(),
            in_flight: self.replication.in_flight.len(),
            queued: self.clients.len(),
            member: self.is_member(),
            frozen: self.is_frozen(),
        }
    }

    /// Updates the health this node reports in its heartbeats.
    pub fn set_health(&mut self, health: Health) {
        self.cluster.health = health;
    }

    /// Hands over everything produced since the last call.
    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    // -----------------------------------------------------------------------------------------
    // Clients

    /// Accepts a client request. Its reply comes out of a later `Ready`, addressed to `waiter`.
    pub fn client_request(&mut self, waiter: WaiterId, req: Request) {
        if let Some(err) = self.unavailable() {
            return self.reply(waiter, req.seq, Err(err));
        }
        let op = match req.op {
            read @ (Op::Get | Op::GetRange { .. } | Op::Len) => {
                self.clients.push_get((waiter, req.seq, read));
                return;
            }
            Op::Append(v) => WriteOp::Append(v),
            Op::Set(v) => WriteOp::Set(v),
        };
        let size = op.value().len() as u64;
        let max = self.view.limits.max_value_bytes;
        if size > max {
            return self.reply(waiter, req.seq, Err(Error::ValueTooLarge { size, max }));
        }
        if let Some(decided) = self.state.lookup(req.client, req.seq) {
            return self.reply(waiter, req.seq, decided.result(req.seq).map(Response::Len));
        }
        self.clients.push_write(waiter, Write { client: req.client, seq: req.seq, op });
    }

    /// Why this node cannot take requests now, if it cannot: it is outside the view, or it
    /// has lost the master for longer than the failure timeout (it may be on the minority side
    /// of a partition, where nothing can commit).
    fn unavailable(&self) -> Option<Error> {
        let reason = if !self.is_member() {
            format!("node {} is not a member of view {}", self.id(), self.view.epoch)
        } else if !self.is_master()
            && self.now.saturating_sub(self.membership.master_heard)
                > self.silence_timeout(self.view.master)
        {
            format!("node {} has lost contact with master {}", self.id(), self.view.master)
        } else {
            return None;
        };
        // Client addresses from the view, or from the master's table when the view lacks them.
        let try_nodes = self
            .view
            .members
            .iter()
            .filter(|m| m.id != self.id())
            .filter_map(|m| {
                let from_table = || {
                    self.membership
                        .master_table
                        .iter()
                        .find(|s| s.member.id == m.id)
                        .map(|s| &s.member.client_addr)
                };
                Some(m.client_addr.clone())
                    .filter(|a| !a.is_empty())
                    .or_else(|| from_table().filter(|a| !a.is_empty()).cloned())
            })
            .collect();
        Some(Error::Unavailable { reason, try_nodes })
    }

    pub(super) fn reply(&mut self, waiter: WaiterId, seq: ReqSeq, result: Result<Response, Error>) {
        self.ready.replies.push(ClientReply { waiter, reply: Reply { seq, result } });
    }

    /// The node can no longer make anything durable: every waiting client gets `err`, and
    /// the driver stops stepping the engine.
    pub fn stop_serving(&mut self, err: Error) {
        self.fail_waiters(err);
    }

    /// Answers every waiting client with `err` (the node left the view).
    pub(super) fn fail_waiters(&mut self, err: Error) {
        let (gets, waiters) = self.clients.drain();
        for (waiter, seq) in gets.into_iter().map(|(w, seq, _)| (w, seq)).chain(waiters) {
            self.reply(waiter, seq, Err(err.clone()));
        }
    }

    pub(super) fn envelope(&self, to: NodeId, msg: PeerMsg) -> Envelope {
        Envelope { from: self.id(), to, epoch: self.view.epoch, msg }
    }

    pub(super) fn others(&self) -> Vec<NodeId> {
        self.members.iter().copied().filter(|&m| m != self.id()).collect()
    }

    // -----------------------------------------------------------------------------------------
    // Peers

    /// Handles one message from a peer (or from this node to itself).
    pub fn step(&mut self, env: Envelope) {
        assert_eq!(env.to, self.id(), "misrouted message {env:?}");
        match env.msg {
            PeerMsg::Action(_)
            | PeerMsg::Fence { .. }
            | PeerMsg::Ack { .. }
            | PeerMsg::Execute { .. } => self.step_replication(env),
            PeerMsg::StaleEpoch { current } => self.on_stale_epoch(env.from, current),
            PeerMsg::Heartbeat { health, member, master_lags } => {
                self.on_heartbeat(env.from, env.epoch, health, member, master_lags)
            }
            PeerMsg::HeartbeatAck { view, members } => {
                self.on_heartbeat_ack(env.from, view, members)
            }
            PeerMsg::Join { member, fresh } => self.on_join(env.from, env.epoch, member, fresh),
            PeerMsg::Prepare { ballot, deposes_master } => {
                self.on_prepare(env.from, env.epoch, ballot, deposes_master)
            }
            PeerMsg::Promise { ballot, accepted, pending } => {
                self.on_promise(env.from, env.epoch, ballot, accepted, pending)
            }
            PeerMsg::Nack { ballot, promised } => self.on_nack(env.epoch, ballot, promised),
            PeerMsg::Accept { ballot, proposal } => {
                self.on_accept(env.from, env.epoch, ballot, proposal)
            }
            PeerMsg::Accepted { ballot } => self.on_accepted(env.from, env.epoch, ballot),
            PeerMsg::Decided { proposal, snapshot } => {
                self.on_decided(env.from, proposal, snapshot.map(|s| *s))
            }
        }
    }

    /// Replication messages count only between members of the same epoch.
    fn step_replication(&mut self, env: Envelope) {
        if env.epoch < self.view.epoch {
            let reply = PeerMsg::StaleEpoch { current: self.view.epoch };
            self.ready.messages.push(self.envelope(env.from, reply));
            return;
        }
        if env.epoch > self.view.epoch {
            self.ask_to_join(Some(env.from));
            return;
        }
        if !self.is_member() || !self.members.contains(&env.from) {
            return;
        }
        self.membership.heard_from(env.from);
        match env.msg {
            PeerMsg::Action(action) => self.on_action(env.from, action),
            PeerMsg::Fence { id } => self.on_fence(env.from, id),
            PeerMsg::Ack { id, hw, applied } => self.on_ack(env.from, id, hw, applied),
            PeerMsg::Execute { id, deps } => self.on_commit(id, deps),
            _ => unreachable!("only replication messages come here"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Time

    /// Advances logical time: re-sends, heartbeats, failure detection, elections.
    pub fn tick(&mut self) {
        self.now += 1;
        // Every member judges ack lag: the master to remove a slow member, the others to
        // tell the master when it is the slow one.
        if self.is_member() {
            let bound = self.cfg.ack_lag_ticks;
            let hold = self.cfg.ack_lag_for_ticks;
            let bridge = (2 * bound).max(hold / 4);
            let rule = LagRule { bound, bridge, hold };
            self.membership.ack_lag.tick(self.now, rule, self.progress.last);
        }
        self.tick_replication();
        self.tick_membership();
        self.tick_view_change();
    }

    /// The cluster as the master sees it (this node's own table if it is the master, else the
    /// last table the master sent with a heartbeat answer).
    pub fn cluster_status(&self) -> ClusterReport {
        let members = if self.is_master() {
            self.master_status_table()
        } else {
            self.membership.master_table.clone()
        };
        ClusterReport {
            epoch: self.view.epoch,
            master: self.view.master,
            reporter: self.id(),
            reporter_is_member: self.is_member(),
            members,
            // The engine does not know how its node is wired; the driver fills this in.
            settings: Default::default(),
        }
    }

    /// This node's own replica state (not a linearizable read: no fence is taken).
    pub fn replica_report(&self) -> ReplicaReport {
        ReplicaReport {
            node: self.id(),
            epoch: self.view.epoch,
            master: self.view.master,
            members: self.view.ids(),
            member: self.is_member(),
            frozen: self.stats().frozen,
            applied: self.progress.last,
            digest: self.state.digest(),
            content: self.state.content_digest(),
            limits: self.view.limits,
            value: self.state.share_value().to_bytes(),
        }
    }

    /// Actions in the log beyond the last snapshot (applied since, or held).
    pub fn log_len(&self) -> u64 {
        self.snapshots.actions_since() + self.held.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use strstore_protocol::{Health, Member};

    use super::super::records::LogRecord;
    use super::super::state::Limits;
    use super::*;

    /// What node 1 finds in its log after a crash between its action's flush and its
    /// commit's: the action `append a`, durable, and no commit record.
    fn own_uncommitted_action() -> Restored {
        let action = Action {
            id: Timestamp::new(5, 1),
            epoch: 1,
            oseq: 1,
            writes: vec![Write { client: 7, seq: 1, op: WriteOp::Append("a".into()) }],
            limits: Default::default(),
        };
        Restored { actions: vec![action], clock_bound: 10, ..Restored::default() }
    }

    /// A single node killed after its action was durable but before the commit record was:
    /// nobody else can ack it again, so the restart itself must commit and apply it.
    #[test]
    fn single_node_commits_its_own_durable_action_on_restart() {
        let restored = own_uncommitted_action();
        let replica = Replica::new(Config::new(1, vec![1]), restored);
        assert_eq!(&replica.value()[..], b"a");
        assert_eq!(replica.digest().actions, 1);
    }

    /// With peers, the same action waits for their acks (asked again at once).
    #[test]
    fn member_keeps_its_own_uncommitted_action_in_flight_on_restart() {
        let restored = own_uncommitted_action();
        let replica = Replica::new(Config::new(1, vec![1, 2, 3]), restored);
        assert_eq!(&replica.value()[..], b"");
        assert_eq!(replica.stats().in_flight, 1);
    }

    /// Runs one request through a single-node replica, feeding its after-sync messages back
    /// as the log writer would; returns how many snapshot records it logged.
    fn write_alone(replica: &mut Replica, seq: u64, op: Op) -> usize {
        replica.client_request(1, Request { client: 7, seq, op });
        let mut snapshots = 0;
        loop {
            replica.propose();
            let ready = replica.take_ready();
            snapshots += ready.log.iter().filter(|r| matches!(r, LogRecord::Snapshot(_))).count();
            if ready.after_sync.is_empty() {
                return snapshots;
            }
            for env in ready.after_sync {
                replica.step(env);
            }
        }
    }

    /// Snapshots copy the whole string: with a large string, a snapshot waits until the log
    /// since the last one is a quarter of the string's size, however small `snapshot_every`.
    #[test]
    fn a_large_string_is_snapshotted_only_after_a_quarter_of_its_size_was_logged() {
        let mut cfg = Config::new(1, vec![1]);
        cfg.snapshot_every = 1;
        let mut replica = Replica::new(cfg, Restored::default());
        assert_eq!(write_alone(&mut replica, 1, Op::Set(vec![b'x'; 4096].into())), 1);
        // Each 1-byte append logs 1 + 32 bytes; 4 * 33 * k >= 4096 + k first holds at k = 32.
        let taken: Vec<usize> =
            (2..=40).map(|seq| write_alone(&mut replica, seq, Op::Append("a".into()))).collect();
        assert_eq!(replica.string_len(), 4096 + 39);
        assert_eq!(taken.iter().sum::<usize>(), 1, "one snapshot in 39 appends: {taken:?}");
        assert_eq!(taken.iter().position(|n| *n == 1), Some(31), "at the 32nd append");
    }
    /// Runs an append at node 1 of a 3-node view with every Execute dropped; `late` picks
    /// messages that arrive one round later, after the next round's messages. Returns the client replies and
    /// the deps each node logged with its commit record, after checking that all three
    /// nodes applied the append.
    fn append_without_executes(late: fn(&Envelope) -> bool) -> (Vec<ClientReply>, Vec<Deps>) {
        let mut nodes: Vec<Replica> = (1..=3)
            .map(|id| Replica::new(Config::new(id, vec![1, 2, 3]), Restored::default()))
            .collect();
        nodes[0].client_request(9, Request { client: 7, seq: 1, op: Op::Append("ab".into()) });
        let (mut replies, mut commits, mut delayed) = (Vec::new(), Vec::new(), Vec::new());
        for _round in 0..10 {
            let held_back = std::mem::take(&mut delayed);
            let mut inbox = Vec::new();
            for node in &mut nodes {
                node.propose();
                let ready = node.take_ready();
                for record in &ready.log {
                    if let LogRecord::Commit { deps, .. } = record {
                        commits.push(deps.clone());
                    }
                }
                replies.extend(ready.replies);
                for env in ready.after_sync.into_iter().chain(ready.messages) {
                    assert!(!matches!(env.msg, PeerMsg::Execute { .. }), "Execute sent: {env:?}");
                    if late(&env) {
                        delayed.push(env);
                    } else {
                        inbox.push(env);
                    }
                }
            }
            // Late messages come after everything sent in this round.
            for env in inbox.into_iter().chain(held_back) {
                nodes[env.to as usize - 1].step(env);
            }
        }
        for node in &nodes {
            assert_eq!(&node.value()[..], b"ab", "n{} applied the append", node.id());
        }
        (replies, commits)
    }

    /// Members learn a commit from each other's acks: no Execute is sent, all three nodes
    /// apply the append, node 1 answers its client, and every node logs the deps node 1
    /// computed.
    #[test]
    fn members_learn_a_commit_from_the_acks_without_the_origins_execute() {
        let (replies, commits) = append_without_executes(|_| false);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].waiter, 9);
        assert_eq!(commits.len(), 3, "each node logged the commit: {commits:?}");
        assert!(commits.iter().all(|d| *d == commits[0]), "same deps: {commits:?}");
    }

    /// Node 3's ack reaches node 2 before node 1's action does: node 2 keeps it and still
    /// commits without an Execute.
    #[test]
    fn an_ack_that_overtakes_the_action_still_counts() {
        let late = |env: &Envelope| env.to == 2 && matches!(env.msg, PeerMsg::Action(_));
        let (replies, commits) = append_without_executes(late);
        assert_eq!(replies.len(), 1);
        assert_eq!(commits.len(), 3, "each node logged the commit: {commits:?}");
    }
    /// Nodes that `replica` asks to join over `ticks` ticks.
    fn join_targets(replica: &mut Replica, ticks: u64) -> BTreeSet<NodeId> {
        let mut to = BTreeSet::new();
        for _ in 0..ticks {
            replica.tick();
            let ready = replica.take_ready();
            for env in ready.messages.iter().filter(|e| matches!(e.msg, PeerMsg::Join { .. })) {
                to.insert(env.to);
            }
        }
        to
    }

    /// A node outside its view that hears of a newer view once (a `Prepare` from node 2, at a
    /// moment its join requests are rate-limited) keeps asking node 2 as well, not only the
    /// members of its own stale view, who may all have left it.
    #[test]
    fn a_node_left_behind_keeps_asking_the_node_that_showed_it_a_newer_view() {
        let mut cfg = Config::new(3, vec![1]);
        cfg.heartbeat_ticks = 10;
        let mut replica = Replica::new(cfg, Restored::default());
        assert_eq!(join_targets(&mut replica, 11), BTreeSet::from([1]));
        let prepare =
            PeerMsg::Prepare { ballot: Ballot { round: 9, node: 2 }, deposes_master: false };
        replica.step(Envelope { from: 2, to: 3, epoch: 6, msg: prepare });
        assert!(replica.take_ready().messages.is_empty(), "rate-limited for now");
        assert_eq!(join_targets(&mut replica, 20), BTreeSet::from([1, 2]));
    }

    /// A view that re-adds n3 after it lagged: n3 first writes the state it installed, and
    /// only then acks. With a 300 MB string those acks came seconds late and the master
    /// removed n3 for lagging two seconds after every re-add (hold-downs of 1, 4, 16, 30 s).
    /// Its lag counts from its first ack in the view on.
    #[test]
    fn a_member_just_added_is_not_judged_slow_before_its_first_ack() {
        let mut cfg = Config::new(1, vec![1, 2, 3]);
        let judged_after = cfg.ack_lag_ticks + cfg.ack_lag_for_ticks + 10;
        // A grace far longer than both phases below: only n3's ack may end it.
        cfg.failure_ticks = judged_after;
        let mut master = Replica::new(cfg, Restored::default());
        master.membership = EpochMembership::entering(master.now, BTreeSet::from([3]));
        let lag_behind_n3 = |master: &mut Replica, ticks: u64| {
            for _ in 0..ticks {
                for m in [2, 3] {
                    master.membership.last_heard.insert(m, master.now);
                }
                master.acks_wait_on(Timestamp::new(1_000 + master.now, 2), 3);
                master.tick();
            }
            master.slow_member()
        };
        assert_eq!(lag_behind_n3(&mut master, judged_after), None, "n3 has not acked yet");
        // A newcomer that stops heartbeating (it died on arrival) is judged like any member.
        let mut dead = Replica::new(master.cfg.clone(), Restored::default());
        dead.membership = EpochMembership::entering(dead.now, BTreeSet::from([3]));
        for _ in 0..judged_after {
            dead.acks_wait_on(Timestamp::new(1_000 + dead.now, 2), 3);
            dead.membership.last_heard.insert(2, dead.now);
            dead.tick();
        }
        assert_eq!(dead.slow_member(), Some(3), "a silent newcomer holds writes back");
        let ack = PeerMsg::Ack { id: Timestamp::new(1, 2), hw: 0, applied: Timestamp::default() };
        master.step(Envelope { from: 3, to: 1, epoch: master.view.epoch, msg: ack });
        assert_eq!(lag_behind_n3(&mut master, judged_after), Some(3), "n3 acked: judged now");
    }

    /// A master hands its role over only when every other member's heartbeat finds it
    /// lagging, and only where the next master may then remove it (three members or more).
    #[test]
    fn a_master_hands_over_once_every_other_member_finds_it_lagging() {
        let heartbeat = |master: &mut Replica, from: NodeId, master_lags: bool| {
            let member = Member { id: from, peer_addr: String::new(), client_addr: String::new() };
            let msg = PeerMsg::Heartbeat { health: Health::default(), member, master_lags };
            master.step(Envelope { from, to: 1, epoch: master.view.epoch, msg });
        };
        let mut master = Replica::new(Config::new(1, vec![1, 2, 3]), Restored::default());
        heartbeat(&mut master, 2, true);
        heartbeat(&mut master, 3, false);
        assert_eq!(master.successor(), None, "n3 finds the master fine");
        heartbeat(&mut master, 3, true);
        assert_eq!(master.successor(), Some(2));
        heartbeat(&mut master, 2, false);
        assert_eq!(master.successor(), None, "n2 no longer finds it lagging");
        let mut two = Replica::new(Config::new(1, vec![1, 2]), Restored::default());
        heartbeat(&mut two, 2, true);
        assert_eq!(two.successor(), None, "n2 could not remove it from a view of two");
    }

    proptest::proptest! {
        /// Apply is a pure function of the log: two replicas started with any different
        /// local limits replay the same actions to the same bytes, table and digests.
        #[test]
        fn replicas_with_different_flags_apply_the_same_log_alike(
            writes in proptest::collection::vec(
                (proptest::collection::vec(proptest::num::u8::ANY, 0..40), proptest::bool::ANY,
                 0u64..30, 0u64..200),
                1..40),
            (v1, s1, v2, s2) in (0u64..50, 0u64..300, 0u64..50, 0u64..300),
        ) {
            let mut restored = Restored::default();
            for (i, (value, append, max_value, max_string)) in writes.into_iter().enumerate() {
                let oseq = i as u64 + 1;
                let op = if append { WriteOp::Append(value.into()) } else { WriteOp::Set(value.into()) };
                let limits = Limits { max_value_bytes: max_value, max_string_bytes: max_string };
                let id = Timestamp::new(oseq, 1);
                let writes = vec![Write { client: 7, seq: oseq, op }];
                restored.actions.push(Action { id, epoch: 1, oseq, writes, limits });
                restored.commits.push((id, vec![(1, oseq - 1)]));
            }
            let replica = |max_value_bytes, max_string_bytes| {
                let mut cfg = Config::new(1, vec![1]);
                cfg.limits = Limits { max_value_bytes, max_string_bytes };
                cfg.initial_view.limits = cfg.limits;
                Replica::new(cfg, restored.clone())
            };
            let (a, b) = (replica(v1, s1), replica(v2, s2));
            proptest::prop_assert_eq!(a.value(), b.value());
            proptest::prop_assert_eq!(a.digest(), b.digest());
            proptest::prop_assert_eq!(
                a.replica_report().content, b.replica_report().content
            );
        }
    }

    /// A member of the view that asks to join is handed the epoch's start state when nothing
    /// was applied in the epoch yet, unless it is a fresh incarnation: it may have acked
    /// actions of this epoch before it lost them, so only a view change may add it again.
    #[test]
    fn a_fresh_incarnation_is_never_handed_the_current_epoch() {
        let member = Member { id: 3, peer_addr: String::new(), client_addr: String::new() };
        for fresh in [false, true] {
            let mut master = Replica::new(Config::new(1, vec![1, 2, 3]), Restored::default());
            let join = PeerMsg::Join { member: member.clone(), fresh };
            master.step(Envelope { from: 3, to: 1, epoch: 0, msg: join });
            let ready = master.take_ready();
            let handed = ready.messages.iter().any(|e| matches!(e.msg, PeerMsg::Decided { .. }));
            assert_eq!(handed, !fresh, "fresh = {fresh}");
        }
    }

    /// A member behind the epoch asks to join every heartbeat; each catch-up carries the
    /// whole string. Sent at every ask (duplicates and re-sends included), a 216 MB state
    /// queued by the hundred took two nodes to 24 GB: one per heartbeat (and the transport
    /// queues one at a time), and none to a member of our own epoch, for which it is no news.
    #[test]
    fn a_member_behind_is_sent_the_state_once_per_heartbeat_not_at_every_ask() {
        let member = Member { id: 3, peer_addr: String::new(), client_addr: String::new() };
        let mut master = Replica::new(Config::new(1, vec![1, 2, 3]), Restored::default());
        let heartbeat = master.cfg.heartbeat_ticks;
        let ask = |master: &mut Replica, epoch| {
            let join = PeerMsg::Join { member: member.clone(), fresh: false };
            master.step(Envelope { from: 3, to: 1, epoch, msg: join });
            let ready = master.take_ready();
            ready.messages.iter().filter(|e| matches!(e.msg, PeerMsg::Decided { .. })).count()
        };
        let mut handed = 0;
        for _ in 0..4 * heartbeat {
            handed += ask(&mut master, 0) + ask(&mut master, 0);
            master.tick();
        }
        assert_eq!(handed, 4, "one catch-up per heartbeat, for eight asks in each");
        assert_eq!(ask(&mut master, 1), 0, "a member of this epoch gets none");
    }

    /// A node a view just added installs the state before it heartbeats: with a 250 MB
    /// string that took longer than a failure timeout, and the master removed it every time
    /// it was added. Until its first heartbeat it gets four longest failure timeouts.
    #[test]
    fn a_member_just_added_is_not_judged_silent_while_it_installs_the_state() {
        let mut master = Replica::new(Config::new(1, vec![1, 2, 3]), Restored::default());
        master.membership.newcomers.insert(3);
        let grace = 4 * master.cfg.failure_ticks;
        master.now = master.membership.started + 2 * master.cfg.failure_ticks;
        assert_eq!(master.failed_members(), vec![2], "n2 is judged by its timeout, n3 not yet");
        master.now = master.membership.started + grace + 1;
        assert_eq!(master.failed_members(), vec![2, 3]);
    }
}
