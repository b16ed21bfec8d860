//! The replica: a deterministic state machine that runs action / ack / execute.
//!
//! Inputs are client requests, peer envelopes and ticks; outputs collect in a [`Ready`] that
//! the caller drains. The replica never touches a socket, a disk or a clock, so the same code
//! runs under tokio and under the seeded simulation.

use std::collections::{BTreeMap, HashMap, HashSet};

use strstore_protocol::{
    Action, ClientId, Deps, Envelope, Epoch, Error, NodeId, Op, Oseq, PeerMsg, Reply, ReqSeq,
    Request, Response, Timestamp, Write, WriteOp,
};

use super::state::{Applied, Limits, StringState};
use super::Received;

/// Logical time. The driver calls [`Replica::tick`] every `TICK` of wall time.
pub type Ticks = u64;
/// Opaque handle the driver uses to route a reply back to a waiting client connection.
pub type WaiterId = u64;

/// How far the persisted clock bound runs ahead of the clock. A restarted node starts its
/// clock at the bound, so its clock never goes back below a time it has shown to a peer; a
/// larger lease means fewer bound records in the log.
pub const CLOCK_LEASE: u64 = 1 << 20;

/// Tuning of one replica. Every field has a default in [`Config::new`].
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// Members of the current view, this node included.
    pub members: Vec<NodeId>,
    /// Epoch of the current view.
    pub epoch: Epoch,
    /// Value and string size limits.
    pub limits: Limits,
    /// Most own actions and fences awaiting commit at once. Keeps many round trips in flight
    /// without letting one node flood the others' logs.
    pub window: usize,
    /// Most bytes of values in one action; keeps an action well under the frame limit.
    pub max_action_bytes: usize,
    /// Most writes in one action.
    pub max_action_writes: usize,
    /// Ticks before the first re-send of an unacked action (doubles up to `max_resend_ticks`).
    pub resend_ticks: Ticks,
    /// Upper bound of the re-send back-off.
    pub max_resend_ticks: Ticks,
}

impl Config {
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        Self {
            id,
            members,
            epoch: 1,
            limits: Limits::default(),
            window: 64,
            max_action_bytes: 4 << 20,
            max_action_writes: 4096,
            resend_ticks: 3,
            max_resend_ticks: 40,
        }
    }
}

/// A record for the durable log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogRecord {
    /// An action this node created or received. Must be on disk before it is acked.
    Action(Action),
    /// The action `id` committed with these deps. Lets a restarted node apply its log without
    /// asking the origin again.
    Commit { id: Timestamp, deps: Deps },
    /// The clock may have reached at most this value; a restart resumes from it.
    ClockBound(u64),
}

/// A reply for the client connection that waits on `waiter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub waiter: WaiterId,
    pub reply: Reply,
}

/// Everything the replica asks its driver to do. Order matters: `log` is written in order and
/// made durable before any of `after_sync` is sent (and a later `Ready`'s log never becomes
/// durable before an earlier one's). `messages` and `replies` may go out at once.
#[derive(Debug, Default)]
pub struct Ready {
    pub log: Vec<LogRecord>,
    pub after_sync: Vec<Envelope>,
    pub messages: Vec<Envelope>,
    pub replies: Vec<ClientReply>,
    /// Write actions applied, in order (for checkers and metrics).
    pub applied: Vec<Timestamp>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
            && self.after_sync.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.applied.is_empty()
    }
}

/// What a restarting node read back from its log.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub actions: Vec<Action>,
    pub commits: Vec<(Timestamp, Deps)>,
    pub clock_bound: u64,
}

/// An entry of the hold-back queue, waiting for its turn in timestamp order.
#[derive(Debug)]
struct Held {
    body: HeldBody,
    /// Known once the action committed.
    deps: Option<Deps>,
    /// When this member next re-sends its ack if the entry stays uncommitted at the head.
    reack_at: Ticks,
    reack_backoff: Ticks,
}

#[derive(Debug)]
enum HeldBody {
    Write(Action),
    /// A read-only ordering point, held only at its origin.
    Fence {
        gets: Vec<(WaiterId, ReqSeq)>,
    },
}

/// An own action or fence that is not committed yet.
#[derive(Debug)]
struct InFlight {
    /// What to re-send.
    msg: PeerMsg,
    /// `hw` of each member that acked.
    acks: BTreeMap<NodeId, Oseq>,
    resend_at: Ticks,
    backoff: Ticks,
}

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
}

/// One node's replication engine.
pub struct Replica {
    cfg: Config,
    now: Ticks,
    clock: u64,
    clock_bound: u64,
    next_oseq: Oseq,
    received: Received,
    held: BTreeMap<Timestamp, Held>,
    in_flight: BTreeMap<Timestamp, InFlight>,
    /// Deps of own applied actions, kept until every member reports it applied them.
    executed: BTreeMap<Timestamp, Deps>,
    /// Last applied timestamp each member reported in an ack.
    peer_applied: BTreeMap<NodeId, Timestamp>,
    state: StringState,
    applied_actions: u64,
    applied_ts: Timestamp,
    queued_writes: Vec<Write>,
    queued_gets: Vec<(WaiterId, ReqSeq)>,
    /// Writes queued or held here, so a retry joins the original instead of being re-sent.
    pending: HashSet<(ClientId, ReqSeq)>,
    waiters: HashMap<(ClientId, ReqSeq), Vec<WaiterId>>,
    ready: Ready,
}

impl Replica {
    /// A replica that resumes from what its log held (empty for a fresh node).
    pub fn new(cfg: Config, restored: Restored) -> Self {
        assert!(cfg.members.contains(&cfg.id), "a replica must be a member of its view");
        let mut r = Replica {
            state: StringState::new(cfg.limits),
            cfg,
            now: 0,
            clock: 0,
            clock_bound: 0,
            next_oseq: 1,
            received: Received::default(),
            held: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            executed: BTreeMap::new(),
            peer_applied: BTreeMap::new(),
            applied_actions: 0,
            applied_ts: Timestamp::default(),
            queued_writes: Vec::new(),
            queued_gets: Vec::new(),
            pending: HashSet::new(),
            waiters: HashMap::new(),
            ready: Ready::default(),
        };
        r.restore(restored);
        r
    }

    fn restore(&mut self, restored: Restored) {
        self.clock = restored.clock_bound;
        self.clock_bound = restored.clock_bound;
        let commits: HashMap<Timestamp, Deps> = restored.commits.into_iter().collect();
        for action in restored.actions {
            self.clock = self.clock.max(action.id.time);
            if !self.received.insert(action.id.node, action.oseq) {
                continue;
            }
            let own = action.id.node == self.cfg.id;
            if own {
                self.next_oseq = self.next_oseq.max(action.oseq + 1);
            }
            let deps = commits.get(&action.id).cloned();
            if own && deps.is_none() {
                // Durable here, so it acks itself; the others are asked again at once.
                let mut acks = BTreeMap::new();
                acks.insert(self.cfg.id, action.oseq - 1);
                let msg = PeerMsg::Action(action.clone());
                self.in_flight.insert(action.id, InFlight { msg, acks, resend_at: 0, backoff: 1 });
            }
            if own && deps.is_some() {
                self.executed.insert(action.id, deps.clone().expect("checked"));
            }
            for w in &action.writes {
                self.pending.insert((w.client, w.seq));
            }
            self.held.insert(action.id, self.new_held(HeldBody::Write(action), deps));
        }
        self.deliver();
        // Replay produces no messages or replies; what it applied is reported like any other
        // application so observers can follow the sequence from the start.
        self.ready = Ready { applied: std::mem::take(&mut self.ready.applied), ..Ready::default() };
    }

    fn new_held(&self, body: HeldBody, deps: Option<Deps>) -> Held {
        Held { body, deps, reack_at: self.now + self.cfg.resend_ticks, reack_backoff: 1 }
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The applied string.
    pub fn value(&self) -> &[u8] {
        self.state.value()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            clock: self.clock,
            epoch: self.cfg.epoch,
            applied_actions: self.applied_actions,
            applied_ts: self.applied_ts,
            held: self.held.len(),
            in_flight: self.in_flight.len(),
            queued: self.queued_writes.len() + self.queued_gets.len(),
        }
    }

    /// Hands over everything produced since the last call.
    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    // -----------------------------------------------------------------------------------------
    // Clients

    /// Accepts a client request. Its reply comes out of a later `Ready`, addressed to `waiter`.
    pub fn client_request(&mut self, waiter: WaiterId, req: Request) {
        let op = match req.op {
            Op::Get => {
                self.queued_gets.push((waiter, req.seq));
                return;
            }
            Op::Append(v) => WriteOp::Append(v),
            Op::Set(v) => WriteOp::Set(v),
        };
        let size = op.value().len() as u64;
        let max = self.cfg.limits.max_value_bytes;
        if size > max {
            return self.reply(waiter, req.seq, Err(Error::ValueTooLarge { size, max }));
        }
        let key = (req.client, req.seq);
        if let Some(decided) = self.state.lookup(req.client, req.seq) {
            return self.reply(waiter, req.seq, decided.result(req.seq).map(Response::Len));
        }
        self.waiters.entry(key).or_default().push(waiter);
        if self.pending.insert(key) {
            self.queued_writes.push(Write { client: req.client, seq: req.seq, op });
        }
    }

    fn reply(&mut self, waiter: WaiterId, seq: ReqSeq, result: Result<Response, Error>) {
        self.ready.replies.push(ClientReply { waiter, reply: Reply { seq, result } });
    }

    /// Turns queued requests into actions and fences, as far as the window allows. The driver
    /// calls it after draining its inputs, so everything that arrived together shares one
    /// action and one fsync.
    pub fn propose(&mut self) {
        while !self.queued_writes.is_empty() && self.in_flight.len() < self.cfg.window {
            self.propose_action();
        }
        if !self.queued_gets.is_empty() && self.in_flight.len() < self.cfg.window {
            self.propose_fence();
        }
    }

    fn propose_action(&mut self) {
        let mut bytes = 0;
        let mut take = 0;
        for w in &self.queued_writes {
            let size = w.op.value().len();
            if take > 0
                && (bytes + size > self.cfg.max_action_bytes || take == self.cfg.max_action_writes)
            {
                break;
            }
            bytes += size;
            take += 1;
        }
        let writes: Vec<Write> = self.queued_writes.drain(..take).collect();
        let id = self.stamp();
        let oseq = self.next_oseq;
        self.next_oseq += 1;
        self.received.insert(self.cfg.id, oseq);
        let action = Action { id, epoch: self.cfg.epoch, oseq, writes };
        self.ready.log.push(LogRecord::Action(action.clone()));
        let msg = PeerMsg::Action(action.clone());
        self.start_in_flight(id, msg);
        self.held.insert(id, self.new_held(HeldBody::Write(action), None));
    }

    fn propose_fence(&mut self) {
        let gets = std::mem::take(&mut self.queued_gets);
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
        self.ready.after_sync.push(self.envelope(self.cfg.id, ack));
        let resend_at = self.now + self.cfg.resend_ticks;
        self.in_flight.insert(id, InFlight { msg, acks: BTreeMap::new(), resend_at, backoff: 1 });
    }

    fn stamp(&mut self) -> Timestamp {
        self.clock += 1;
        self.bound_clock();
        Timestamp::new(self.clock, self.cfg.id)
    }

    /// Keeps the persisted clock bound ahead of any time this node may show a peer.
    fn bound_clock(&mut self) {
        if self.clock >= self.clock_bound {
            self.clock_bound = self.clock + CLOCK_LEASE;
            self.ready.log.push(LogRecord::ClockBound(self.clock_bound));
        }
    }

    fn own_ack(&self, id: Timestamp) -> PeerMsg {
        PeerMsg::Ack { id, hw: self.next_oseq - 1, applied: self.applied_ts }
    }

    fn others(&self) -> Vec<NodeId> {
        self.cfg.members.iter().copied().filter(|&m| m != self.cfg.id).collect()
    }

    fn envelope(&self, to: NodeId, msg: PeerMsg) -> Envelope {
        Envelope { from: self.cfg.id, to, epoch: self.cfg.epoch, msg }
    }

    // -----------------------------------------------------------------------------------------
    // Peers

    /// Handles one message from a peer (or from this node to itself).
    pub fn step(&mut self, env: Envelope) {
        assert_eq!(env.to, self.cfg.id, "misrouted message {env:?}");
        if !self.cfg.members.contains(&env.from) {
            return;
        }
        if env.epoch != self.cfg.epoch {
            if env.epoch < self.cfg.epoch {
                let reply = PeerMsg::StaleEpoch { current: self.cfg.epoch };
                self.ready.messages.push(self.envelope(env.from, reply));
            }
            return;
        }
        match env.msg {
            PeerMsg::Action(action) => self.on_action(env.from, action),
            PeerMsg::Fence { id } => self.on_fence(env.from, id),
            PeerMsg::Ack { id, hw, applied } => self.on_ack(env.from, id, hw, applied),
            PeerMsg::Execute { id, deps } => self.on_execute(id, deps),
            PeerMsg::StaleEpoch { .. } => {}
        }
    }

    fn observe(&mut self, ts: Timestamp) {
        self.clock = self.clock.max(ts.time) + 1;
        self.bound_clock();
    }

    fn on_action(&mut self, from: NodeId, action: Action) {
        if from != action.id.node || action.oseq == 0 || action.epoch != self.cfg.epoch {
            return;
        }
        let id = action.id;
        if self.received.insert(id.node, action.oseq) {
            assert!(
                id > self.applied_ts,
                "n{} received {id} after applying {}: the delivery rule was broken",
                self.cfg.id,
                self.applied_ts
            );
            self.observe(id);
            for w in &action.writes {
                self.pending.insert((w.client, w.seq));
            }
            self.ready.log.push(LogRecord::Action(action.clone()));
            self.held.insert(id, self.new_held(HeldBody::Write(action), None));
        }
        // New or duplicate, the ack goes out once the log holds the action.
        let ack = self.own_ack(id);
        self.ready.after_sync.push(self.envelope(from, ack));
    }

    fn on_fence(&mut self, from: NodeId, id: Timestamp) {
        if from != id.node {
            return;
        }
        self.observe(id);
        // Our earlier actions (up to hw) must be durable and sent before the origin counts
        // on them, so this ack waits for the log like any other.
        let ack = self.own_ack(id);
        self.ready.after_sync.push(self.envelope(from, ack));
    }

    fn on_ack(&mut self, from: NodeId, id: Timestamp, hw: Oseq, applied: Timestamp) {
        if from != self.cfg.id {
            let seen = self.peer_applied.entry(from).or_default();
            *seen = (*seen).max(applied);
            self.forget_executed();
        }
        if id.node != self.cfg.id {
            return;
        }
        if let Some(f) = self.in_flight.get_mut(&id) {
            f.acks.entry(from).or_insert(hw);
            if f.acks.len() == self.cfg.members.len() {
                self.commit(id);
            }
            return;
        }
        // A duplicate ack for a committed action: the member missed the Execute.
        let deps =
            self.executed.get(&id).or_else(|| self.held.get(&id).and_then(|h| h.deps.as_ref()));
        if let Some(deps) = deps.cloned() {
            if from != self.cfg.id {
                let env = self.envelope(from, PeerMsg::Execute { id, deps });
                self.ready.messages.push(env);
            }
        }
    }

    fn commit(&mut self, id: Timestamp) {
        let f = self.in_flight.remove(&id).expect("committing an action in flight");
        let mut deps: Deps = f.acks.into_iter().collect();
        if let PeerMsg::Action(a) = &f.msg {
            // Our own entry: every earlier own action precedes this one.
            for d in deps.iter_mut().filter(|d| d.0 == self.cfg.id) {
                d.1 = a.oseq - 1;
            }
            self.ready.log.push(LogRecord::Commit { id, deps: deps.clone() });
            for to in self.others() {
                let env = self.envelope(to, PeerMsg::Execute { id, deps: deps.clone() });
                self.ready.messages.push(env);
            }
            self.executed.insert(id, deps.clone());
        }
        self.held.get_mut(&id).expect("own entry is held").deps = Some(deps);
        self.deliver();
    }

    fn on_execute(&mut self, id: Timestamp, deps: Deps) {
        let Some(held) = self.held.get_mut(&id) else { return };
        if held.deps.is_some() {
            return;
        }
        held.deps = Some(deps.clone());
        self.ready.log.push(LogRecord::Commit { id, deps });
        self.deliver();
    }

    fn forget_executed(&mut self) {
        let others = self.others();
        let Some(low) =
            others.iter().map(|m| self.peer_applied.get(m).copied().unwrap_or_default()).min()
        else {
            self.executed.clear();
            return;
        };
        self.executed = self.executed.split_off(&Timestamp::new(low.time, low.node + 1));
    }

    // -----------------------------------------------------------------------------------------
    // Delivery

    /// Applies entries from the head of the hold-back queue while the head is committed and
    /// every action it depends on is here. Anything with a smaller timestamp is then already
    /// in the queue ahead of it (see docs/protocol.md, "Why the order is the same everywhere").
    fn deliver(&mut self) {
        while let Some(entry) = self.held.first_entry() {
            let Some(deps) = &entry.get().deps else { break };
            if !deps.iter().all(|&(node, upto)| self.received.contiguous(node) >= upto) {
                break;
            }
            let (id, held) = entry.remove_entry();
            debug_assert!(id > self.applied_ts, "delivery out of order");
            match held.body {
                HeldBody::Write(action) => self.apply_action(action),
                HeldBody::Fence { gets } => {
                    let value = self.state.snapshot_value();
                    for (waiter, seq) in gets {
                        self.reply(waiter, seq, Ok(Response::Value(value.clone())));
                    }
                }
            }
        }
    }

    fn apply_action(&mut self, action: Action) {
        for w in &action.writes {
            let applied: Applied = self.state.apply(w);
            let key = (w.client, w.seq);
            self.pending.remove(&key);
            for waiter in self.waiters.remove(&key).unwrap_or_default() {
                self.reply(waiter, w.seq, applied.result(w.seq).map(Response::Len));
            }
        }
        self.applied_actions += 1;
        self.applied_ts = action.id;
        self.ready.applied.push(action.id);
    }

    // -----------------------------------------------------------------------------------------
    // Time

    /// Advances logical time: re-sends unacked actions and re-asks for missing commits.
    pub fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        let max = self.cfg.max_resend_ticks;
        let mut resend = Vec::new();
        for (id, f) in self.in_flight.iter_mut().filter(|(_, f)| f.resend_at <= now) {
            f.backoff = (f.backoff * 2).min(max);
            f.resend_at = now + f.backoff;
            for &m in
                self.cfg.members.iter().filter(|m| **m != self.cfg.id && !f.acks.contains_key(m))
            {
                resend.push((m, *id, f.msg.clone()));
            }
        }
        for (to, _, msg) in resend {
            let env = self.envelope(to, msg);
            self.ready.messages.push(env);
        }
        self.reack_head();
    }

    /// A head that stays uncommitted blocks delivery; if it is another origin's, our ack or
    /// its Execute may have been lost, so we ack again and the origin answers.
    fn reack_head(&mut self) {
        let now = self.now;
        let max = self.cfg.max_resend_ticks;
        let Some((&id, held)) = self.held.iter_mut().next() else { return };
        if held.deps.is_some() || id.node == self.cfg.id || held.reack_at > now {
            return;
        }
        held.reack_backoff = (held.reack_backoff * 2).min(max);
        held.reack_at = now + held.reack_backoff;
        let ack = self.own_ack(id);
        let env = self.envelope(id.node, ack);
        self.ready.after_sync.push(env);
    }
}
