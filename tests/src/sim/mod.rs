//! Deterministic simulation of a strstore cluster.
//!
//! One thread, one seeded RNG, a simulated clock counted in steps. The network delays,
//! drops, duplicates and reorders messages; nodes crash (losing whatever their log had not
//! synced) and restart from their log; clients retry the same request at other nodes when an
//! answer does not come. After the fault phase everything heals and the run must settle: every
//! client finishes and every replica holds the same string and applied sequence. The history
//! then goes to the checker. The same seed replays the same run exactly.

mod log;
mod network;
pub mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strstore_protocol::{Epoch, Error, NodeId, Op, ReqSeq, Request, Response, Timestamp, View};
use strstore_server::replica::{self, WaiterId};

use crate::checker::{self, History, OkValue, OpKind, Outcome, ReplicaState};
use network::Network;
use node::SimNode;

/// Steps between two engine ticks.
const STEPS_PER_TICK: u64 = 10;
/// Steps a client waits for an answer before it tries the next node.
const CLIENT_TIMEOUT_STEPS: u64 = 400;
/// Attempts (at successive nodes) before a client gives up on a request as "unknown".
const CLIENT_ATTEMPTS: u32 = 4;
/// Steps allowed after healing for everything to settle.
const SETTLE_STEPS: u64 = 20_000;
/// SplitMix64's finaliser: spreads the bits of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// At least one op in this many must succeed.
const MIN_OK_SHARE_DENOMINATOR: usize = 4;
/// Attempts of a probe: it may take all of `SETTLE_STEPS`.
const PROBE_ATTEMPTS: u32 = (SETTLE_STEPS / CLIENT_TIMEOUT_STEPS) as u32;
/// Client ids of the probes after healing, above every workload client's.
const PROBE_CLIENT_BASE: u64 = 1 << 40;

/// Settings of one run, all drawn from the seed unless overridden.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub ops_per_client: usize,
    /// Steps of the fault phase.
    pub fault_steps: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Largest delay of a message, in steps (delays are uniform, so messages reorder).
    pub max_delay: u64,
    /// Probability per step that a running node crashes (during the fault phase).
    pub crash: f64,
    /// Largest time a node stays down, in steps.
    pub max_down_steps: u64,
    /// Probability per step that a node's pending log writes become durable.
    pub sync: f64,
    /// Share of writes that are `set` rather than `append`.
    pub set_ratio: f64,
    /// Share of requests that are `get`.
    pub get_ratio: f64,
    /// Largest pause of a client between two requests, in steps: spreads the workload over
    /// the fault phase.
    pub think_steps: u64,
    /// Probability per step that a network partition starts (during the fault phase).
    pub partition: f64,
    /// Largest duration of a partition, in steps.
    pub max_partition_steps: u64,
    /// Applied actions between snapshots (0: never), to exercise compaction.
    pub snapshot_every: u64,
    /// Probability that a crash also destroys the node's durable state, so that it restarts
    /// repaired (`--repair`): empty, as a fresh incarnation that must rejoin. Only while
    /// another member of its view holds everything and no other node is still rejoining.
    pub damage: f64,
    /// A member whose replication messages (its acks, its actions) are delayed (not lost) by
    /// this much during the fault phase, while its heartbeats come on time: slow but alive,
    /// as with a slow disk.
    pub slow: Option<SlowNode>,
}

/// See [`SimConfig::slow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowNode {
    pub node: NodeId,
    pub delay_steps: u64,
}

impl SimConfig {
    /// Draws every setting from the seed.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c0f1_6000_0000);
        Self {
            seed,
            nodes: if rng.gen_bool(0.5) { 3 } else { 5 },
            clients: rng.gen_range(2..=5),
            ops_per_client: rng.gen_range(10..=30),
            fault_steps: rng.gen_range(2_000..=8_000),
            loss: *[0.0, 0.01, 0.05, 0.2].get(rng.gen_range(0..4)).expect("index"),
            duplicate: *[0.0, 0.02, 0.1].get(rng.gen_range(0..3)).expect("index"),
            max_delay: rng.gen_range(1..=40),
            crash: *[0.0, 0.0002, 0.001].get(rng.gen_range(0..3)).expect("index"),
            max_down_steps: rng.gen_range(50..=2_000),
            sync: rng.gen_range(0.05..0.9),
            set_ratio: if rng.gen_bool(0.3) { 0.05 } else { 0.0 },
            get_ratio: rng.gen_range(0.1..0.4),
            think_steps: rng.gen_range(0..=300),
            partition: *[0.0, 0.0003, 0.001].get(rng.gen_range(0..3)).expect("index"),
            max_partition_steps: rng.gen_range(100..=3_000),
            snapshot_every: *[0, 3, 20].get(rng.gen_range(0..3)).expect("index"),
            damage: *[0.0, 0.0, 0.5].get(rng.gen_range(0..3)).expect("index"),
            slow: None,
        }
        .with_slow_node_from_seed()
    }

    /// One seed in four gets a slow member, drawn from a stream of its own so that the
    /// other settings of every seed stay what they were before slow members existed.
    fn with_slow_node_from_seed(mut self) -> Self {
        let mut rng = StdRng::seed_from_u64(mix(self.seed ^ 0x510e_0000_0000_0000));
        if rng.gen_ratio(1, 4) {
            self.slow = Some(SlowNode {
                node: rng.gen_range(1..=self.nodes as NodeId),
                delay_steps: rng.gen_range(50..=400),
            });
        }
        self
    }
}

impl fmt::Display for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} nodes={} clients={} ops/client={} fault_steps={} loss={} dup={} max_delay={} crash={} max_down={} sync={:.2} set={} get={:.2} think={} partition={} max_partition={} snapshot_every={} damage={} slow={:?}",
            self.seed,
            self.nodes,
            self.clients,
            self.ops_per_client,
            self.fault_steps,
            self.loss,
            self.duplicate,
            self.max_delay,
            self.crash,
            self.max_down_steps,
            self.sync,
            self.set_ratio,
            self.get_ratio,
            self.think_steps,
            self.partition,
            self.max_partition_steps,
            self.snapshot_every,
            self.damage,
            self.slow.map(|s| (s.node, s.delay_steps))
        )
    }
}

/// What a passing run did.
#[derive(Clone, Debug, Default)]
pub struct SimSummary {
    pub ops_ok: usize,
    pub ops_unknown: usize,
    pub crashes: usize,
    /// Crashes that destroyed the node's data (it rejoined as a fresh incarnation).
    pub repairs: usize,
    pub partitions: usize,
    pub views: usize,
    /// With a slow member: whether some view left it out (it was removed at least once).
    pub slow_node_removed: bool,
    pub messages: u64,
    pub steps: u64,
    pub final_len: usize,
}

/// A failed run: the seed and settings to replay it, and what went wrong.
#[derive(Debug)]
pub struct SimFailure {
    pub config: Box<SimConfig>,
    pub reason: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation failed: {}\n  {}\n  replay: STRSTORE_SIM_SEED={} cargo test -p strstore-tests --test simulation -- --nocapture",
            self.reason, self.config, self.config.seed
        )
    }
}

/// A network partition: `side` cannot talk to the rest, except through `bridge`, a node that
/// talks to everyone (a "bridge" partition). Isolating one node, the master or a minority are
/// special cases, drawn at random.
struct Partition {
    side: BTreeSet<NodeId>,
    bridge: Option<NodeId>,
    until: u64,
}

/// A client of the simulation: one request at a time, retried at other nodes on timeout.
struct SimClient {
    id: u64,
    next_seq: ReqSeq,
    ops_left: usize,
    appended: u64,
    current: Option<Pending>,
    /// Step before which the client sends nothing new.
    idle_until: u64,
}

struct Pending {
    seq: ReqSeq,
    op: Op,
    history_index: usize,
    attempt: u32,
    node: NodeId,
    deadline: u64,
}

/// Runs one simulation.
pub fn run(config: SimConfig) -> Result<SimSummary, SimFailure> {
    let fail = |reason: String| SimFailure { config: Box::new(config.clone()), reason };
    let mut sim = Sim::new(&config);
    sim.run_faults().map_err(&fail)?;
    sim.heal();
    sim.settle().map_err(&fail)?;
    sim.probe_every_node().map_err(&fail)?;
    sim.settle().map_err(&fail)?;
    let replicas = sim.replica_states();
    let report = checker::check(&sim.history, &replicas);
    if !report.is_ok() {
        return Err(fail(format!("checker found anomalies:\n{report}")));
    }
    if report.inconclusive {
        return Err(fail(format!("the checker gave up, so the run was not judged:\n{report}")));
    }
    let summary = sim.summary();
    let ops = sim.history.ops.len();
    if summary.ops_ok * MIN_OK_SHARE_DENOMINATOR < ops {
        return Err(fail(format!(
            "only {} of {ops} ops succeeded (need at least 1 in {MIN_OK_SHARE_DENOMINATOR}): \
             a cluster that refuses nearly everything is not working",
            summary.ops_ok
        )));
    }
    Ok(summary)
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    rng: StdRng,
    now: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    net: Network,
    clients: Vec<SimClient>,
    /// Which client and attempt a waiter id stands for.
    waiters: BTreeMap<WaiterId, (usize, ReqSeq)>,
    next_waiter: WaiterId,
    history: History,
    crashes: usize,
    repairs: usize,
    faults: bool,
    /// The one applied order every node must follow.
    order: Vec<Timestamp>,
    /// Every view entered, by epoch: there must be one per epoch.
    views: BTreeMap<Epoch, View>,
    /// The current partition, if any.
    partition: Option<Partition>,
    partitions: usize,
}

impl<'a> Sim<'a> {
    fn new(cfg: &'a SimConfig) -> Self {
        let ids: Vec<NodeId> = (1..=cfg.nodes as NodeId).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut rc = replica::Config::new(id, ids.clone());
                rc.window = 8;
                rc.heartbeat_ticks = 5;
                rc.failure_ticks = 20;
                rc.min_failure_ticks = 15;
                rc.ack_lag_ticks = 8;
                rc.ack_lag_for_ticks = 30;
                rc.hold_down_ticks = 20;
                rc.max_hold_down_ticks = 320;
                rc.snapshot_every = cfg.snapshot_every;
                rc.seed = cfg.seed ^ id;
                (id, SimNode::new(rc))
            })
            .collect();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let clients = (0..cfg.clients)
            .map(|i| SimClient {
                id: (i as u64 + 1) * 1000 + rng.gen_range(0..1000),
                next_seq: 1,
                ops_left: cfg.ops_per_client,
                appended: 0,
                current: None,
                idle_until: 0,
            })
            .collect();
        Sim {
            cfg,
            rng,
            now: 0,
            nodes,
            net: Network::default(),
            clients,
            waiters: BTreeMap::new(),
            next_waiter: 1,
            history: History::default(),
            crashes: 0,
            repairs: 0,
            faults: true,
            order: Vec::new(),
            views: BTreeMap::new(),
            partition: None,
            partitions: 0,
        }
    }

    fn run_faults(&mut self) -> Result<(), String> {
        while self.now < self.cfg.fault_steps {
            self.step()?;
        }
        Ok(())
    }

    fn heal(&mut self) {
        self.faults = false;
        self.partition = None;
        for node in self.nodes.values_mut() {
            node.down_until = node.down_until.min(self.now);
        }
    }

    fn settle(&mut self) -> Result<(), String> {
        let deadline = self.now + SETTLE_STEPS;
        while self.now < deadline {
            self.step()?;
            if self.clients.iter().all(|c| c.ops_left == 0 && c.current.is_none())
                && self.net.is_empty()
                && self.converged()
            {
                return Ok(());
            }
        }
        let busy = self.clients.iter().filter(|c| c.ops_left > 0 || c.current.is_some()).count();
        Err(format!(
            "no progress: the cluster did not settle within {SETTLE_STEPS} steps after healing ({busy} clients unfinished)\n  {}",
            self.node_stats()
        ))
    }

    fn node_stats(&self) -> String {
        let stats: Vec<String> = self
            .nodes
            .iter()
            .map(|(id, n)| format!("n{id}: {:?}", n.replica().map(|r| r.stats())))
            .collect();
        stats.join("\n  ")
    }

    /// Every node up, in the same view that holds every node, idle, and at the end of the
    /// one applied order.
    fn converged(&self) -> bool {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let Some(first) = self.nodes.values().next().and_then(|n| n.replica()) else {
            return false;
        };
        let epoch = first.view().epoch;
        self.nodes.values().all(|n| {
            n.replica().is_some_and(|r| {
                let s = r.stats();
                r.view().epoch == epoch
                    && r.view().ids() == all
                    && !s.frozen
                    && s.held == 0
                    && s.in_flight == 0
                    && s.queued == 0
                    && n.position == self.order.len()
            })
        })
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        if self.faults {
            self.maybe_crash();
            self.maybe_partition();
        }
        self.restart_due()?;
        for env in self.net.due(self.now) {
            if self.cut(env.from, env.to) {
                continue;
            }
            if let Some(node) = self.nodes.get_mut(&env.to) {
                node.deliver(env);
            }
        }
        let tick = self.now % STEPS_PER_TICK == 0;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.advance_node(id, tick)?;
        }
        self.drive_clients();
        Ok(())
    }

    fn advance_node(&mut self, id: NodeId, tick: bool) -> Result<(), String> {
        let sync = self.rng.gen_bool(self.cfg.sync);
        let node = self.nodes.get_mut(&id).expect("node");
        let out = node.advance(tick, sync).map_err(|e| format!("n{id}: {e}"))?;
        for view in out.views {
            self.record_view(id, view)?;
        }
        self.align(id)?;
        self.record_applied(id, &out.applied)?;
        for env in out.messages {
            self.net.send(env, self.now, &mut self.rng, self.faults.then_some(self.cfg));
        }
        if out.reads_outside_view > 0 {
            return Err(format!("n{id} answered a get while outside its view"));
        }
        for reply in out.replies {
            self.on_reply(reply.waiter, reply.reply.seq, reply.reply.result);
        }
        Ok(())
    }

    fn maybe_crash(&mut self) {
        if self.cfg.crash == 0.0 || !self.rng.gen_bool(self.cfg.crash) {
            return;
        }
        let up: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.is_up() && !self.crash_unsupported(**id))
            .map(|(id, _)| *id)
            .collect();
        if up.is_empty() {
            return;
        }
        let victim = up[self.rng.gen_range(0..up.len())];
        let down = self.rng.gen_range(1..=self.cfg.max_down_steps);
        let damaged =
            self.cfg.damage > 0.0 && self.may_damage(victim) && self.rng.gen_bool(self.cfg.damage);
        // How much of the write under way the disk keeps: from the seed and the step, not the
        // run's random stream, so that adding it left every seed's schedule as it was.
        let torn =
            (mix(self.cfg.seed ^ self.now.rotate_left(32)) >> 11) as f64 / (1u64 << 53) as f64;
        tracing::info!(step = self.now, node = victim, damaged, down, "sim: crash");
        self.nodes.get_mut(&victim).expect("node").crash(self.now + down, damaged, torn);
        self.crashes += 1;
        self.repairs += usize::from(damaged);
    }

    /// Destroying a node's data loses nothing acknowledged as long as another member of its
    /// view holds it (every committed action is on every member), and no other node is
    /// still rejoining empty: so not the only member of a view. The others stand in for a
    /// repaired member's votes while fewer than a majority of the view lost their data
    /// (docs/protocol.md, "Damage and repair"), which a view of two keeps.
    /// Judged on the newest view any node entered, with every node up and none frozen, so
    /// that no newer view can be under way.
    fn may_damage(&self, victim: NodeId) -> bool {
        let settled = self
            .nodes
            .values()
            .all(|n| n.replica().is_some_and(|r| !r.is_frozen()) && !n.rejoining());
        let newest = self.views.values().next_back();
        settled && newest.is_some_and(|v| !v.contains(victim) || v.members.len() >= 2)
    }

    /// A repaired node that has not yet made its rejoin durable is fresh again after a crash,
    /// and a fresh member of a view of two (it may be added to one that has a single member)
    /// stops that view's changes (docs/protocol.md, "Damage and repair": the other members
    /// must be a majority): the case the docs rule out, so the simulation does not create it.
    fn crash_unsupported(&self, id: NodeId) -> bool {
        let newest = self.views.values().next_back();
        self.nodes[&id].rejoining() && newest.is_some_and(|v| v.members.len() <= 2)
    }

    fn restart_due(&mut self) -> Result<(), String> {
        let now = self.now;
        let due: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.is_up() && n.down_until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            tracing::info!(step = now, node = id, "sim: restart");
            let node = self.nodes.get_mut(&id).expect("node");
            let replayed = node.restart();
            // Replay starts from the node's snapshot, or from the very beginning.
            node.base = Timestamp::new(u64::MAX, u64::MAX);
            self.align(id)?;
            self.record_applied(id, &replayed)?;
        }
        Ok(())
    }

    fn maybe_partition(&mut self) {
        if let Some(p) = &self.partition {
            if p.until <= self.now {
                self.partition = None;
            }
            return;
        }
        if self.cfg.partition == 0.0 || !self.rng.gen_bool(self.cfg.partition) {
            return;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let master = self.nodes.values().filter_map(|n| n.replica()).map(|r| r.view().master).max();
        let mut side = BTreeSet::new();
        let mut bridge = None;
        match self.rng.gen_range(0..4) {
            // Isolate the master.
            0 => side.extend(master),
            // A bridge: two halves that reach each other only through one node.
            1 => {
                let b = ids[self.rng.gen_range(0..ids.len())];
                bridge = Some(b);
                for &id in ids.iter().filter(|&&id| id != b) {
                    if self.rng.gen_bool(0.5) {
                        side.insert(id);
                    }
                }
            }
            // A minority (often a single node) cut off from the majority.
            _ => {
                let size = self.rng.gen_range(1..=ids.len() / 2);
                while side.len() < size {
                    side.insert(ids[self.rng.gen_range(0..ids.len())]);
                }
            }
        }
        let until = self.now + self.rng.gen_range(1..=self.cfg.max_partition_steps);
        self.partition = Some(Partition { side, bridge, until });
        self.partitions += 1;
    }

    /// Whether the partition separates `a` from `b`.
    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.partition.as_ref().is_some_and(|p| {
            p.bridge != Some(a) && p.bridge != Some(b) && p.side.contains(&a) != p.side.contains(&b)
        })
    }

    /// Re-aligns a node's position after a restart or a snapshot install.
    fn align(&mut self, id: NodeId) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(base) = node.moved_base() else { return Ok(()) };
        node.base = base;
        node.position =
            if base == Timestamp::default() {
                0
            } else {
                self.order.iter().position(|t| *t == base).map(|i| i + 1).ok_or_else(|| {
                    format!("n{id} resumed from {base}, which no node ever applied")
                })?
            };
        Ok(())
    }

    /// Checks that a node applies exactly the one global order.
    fn record_applied(&mut self, id: NodeId, applied: &[Timestamp]) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("node");
        for ts in applied {
            match self.order.get(node.position) {
                Some(expected) if expected != ts => {
                    return Err(format!(
                        "total order broken: n{id} applied {ts} as action #{} where others applied {expected}",
                        node.position + 1
                    ))
                }
                Some(_) => {}
                None => self.order.push(*ts),
            }
            node.position += 1;
        }
        Ok(())
    }

    /// Checks that there is one view per epoch.
    fn record_view(&mut self, id: NodeId, view: View) -> Result<(), String> {
        match self.views.get(&view.epoch) {
            Some(seen) if *seen != view => {
                Err(format!("two views for epoch {}: {seen:?} and, at n{id}, {view:?}", view.epoch))
            }
            Some(_) => Ok(()),
            None => {
                self.views.insert(view.epoch, view);
                Ok(())
            }
        }
    }

    fn drive_clients(&mut self) {
        for i in 0..self.clients.len() {
            match &self.clients[i].current {
                Some(p) if p.deadline <= self.now => self.retry(i),
                Some(_) => {}
                None if self.clients[i].ops_left > 0 && self.clients[i].idle_until <= self.now => {
                    self.invoke(i)
                }
                None => {}
            }
        }
    }

    fn invoke(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.ops_left -= 1;
        let seq = c.next_seq;
        c.next_seq += 1;
        let roll: f64 = self.rng.gen();
        let (op, kind) = if roll < self.cfg.get_ratio {
            (Op::Get, OpKind::Get)
        } else {
            c.appended += 1;
            let token = checker::token(c.id, c.appended);
            if self.rng.gen_bool(self.cfg.set_ratio) {
                (Op::Set(token.clone().into()), OpKind::Set(token))
            } else {
                (Op::Append(token.clone().into()), OpKind::Append(token))
            }
        };
        let node = self.rng.gen_range(1..=self.cfg.nodes as NodeId);
        self.begin(i, seq, op, kind, node, CLIENT_TIMEOUT_STEPS);
    }

    /// Records the op in the history and sends its first attempt to `node`.
    fn begin(&mut self, i: usize, seq: ReqSeq, op: Op, kind: OpKind, node: NodeId, timeout: u64) {
        let history_index = self.history.ops.len();
        self.history.ops.push(checker::Op {
            client: self.clients[i].id,
            op: kind,
            invoke: self.now,
            complete: None,
            outcome: Outcome::Unknown,
            node: Some(node),
        });
        let deadline = self.now + timeout;
        self.clients[i].current =
            Some(Pending { seq, op, history_index, attempt: 1, node, deadline });
        self.send_request(i);
    }

    /// After healing, every node must serve an append and then a get that sees it. Without
    /// this, a build that refuses every request would pass: every op failed or unknown, and
    /// nothing left for the checker to contradict.
    fn probe_every_node(&mut self) -> Result<(), String> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let client = PROBE_CLIENT_BASE + id;
            self.clients.push(SimClient {
                id: client,
                next_seq: 1,
                ops_left: 0,
                appended: 1,
                current: None,
                idle_until: 0,
            });
            let i = self.clients.len() - 1;
            let token = checker::token(client, 1);
            let append = (Op::Append(token.clone().into()), OpKind::Append(token.clone()));
            for (seq, (op, kind)) in [append, (Op::Get, OpKind::Get)].into_iter().enumerate() {
                self.begin(i, seq as ReqSeq + 1, op, kind, id, CLIENT_TIMEOUT_STEPS);
                let deadline = self.now + SETTLE_STEPS;
                while self.clients[i].current.is_some() && self.now < deadline {
                    self.step()?;
                }
                let done = &self.history.ops[self.history.ops.len() - 1];
                let ok = match &done.outcome {
                    Outcome::Ok(OkValue::Value(v)) => v.ends_with(&token),
                    Outcome::Ok(OkValue::Len(_)) => true,
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "after healing, n{id} did not serve {:?}: {:?}\n  {}",
                        done.op,
                        done.outcome,
                        self.node_stats()
                    ));
                }
            }
        }
        Ok(())
    }

    fn retry(&mut self, i: usize) {
        // A probe asks the same node again (an answer such as "view change under way" is
        // retried, not final), for as long as the cluster has to settle.
        let probe = self.clients[i].id >= PROBE_CLIENT_BASE;
        let attempts = if probe { PROBE_ATTEMPTS } else { CLIENT_ATTEMPTS };
        let p = self.clients[i].current.as_mut().expect("pending");
        if p.attempt >= attempts {
            // Outcome unknown: the history already says so.
            self.clients[i].current = None;
            self.clients[i].idle_until = self.now + self.rng.gen_range(0..=self.cfg.think_steps);
            return;
        }
        p.attempt += 1;
        if !probe {
            p.node = p.node % self.cfg.nodes as NodeId + 1;
        }
        p.deadline = self.now + CLIENT_TIMEOUT_STEPS;
        self.send_request(i);
    }

    fn send_request(&mut self, i: usize) {
        let c = &self.clients[i];
        let p = c.current.as_ref().expect("pending");
        let waiter = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.insert(waiter, (i, p.seq));
        let req = Request { client: c.id, seq: p.seq, op: p.op.clone() };
        let lost = self.faults && self.rng.gen_bool(self.cfg.loss);
        if let Some(node) = self.nodes.get_mut(&p.node) {
            if !lost {
                node.client_request(waiter, req);
            }
        }
    }

    fn on_reply(&mut self, waiter: WaiterId, seq: ReqSeq, result: Result<Response, Error>) {
        let Some((i, wanted)) = self.waiters.remove(&waiter) else { return };
        let Some(p) = &self.clients[i].current else { return };
        if wanted != seq || p.seq != seq {
            return; // an answer to an attempt the client gave up on
        }
        let op = &mut self.history.ops[p.history_index];
        op.complete = Some(self.now);
        op.outcome = match result {
            Ok(Response::Len(n)) => Outcome::Ok(OkValue::Len(n)),
            Ok(Response::Value(v)) => Outcome::Ok(OkValue::Value(v.to_vec())),
            Err(e) if e.is_retryable() => return,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        self.clients[i].current = None;
        self.clients[i].idle_until = self.now + self.rng.gen_range(0..=self.cfg.think_steps);
    }

    fn replica_states(&self) -> Vec<ReplicaState> {
        self.nodes
            .iter()
            .map(|(id, n)| ReplicaState {
                node: *id,
                string: n.replica().map(|r| r.value().to_vec()).unwrap_or_default(),
                applied: self.order[..n.position].iter().map(|ts| (ts.time, ts.node)).collect(),
                digest: n.replica().map(|r| r.digest()),
            })
            .collect()
    }

    fn summary(&self) -> SimSummary {
        let ops_ok =
            self.history.ops.iter().filter(|o| matches!(o.outcome, Outcome::Ok(_))).count();
        SimSummary {
            ops_ok,
            ops_unknown: self
                .history
                .ops
                .iter()
                .filter(|o| matches!(o.outcome, Outcome::Unknown))
                .count(),
            crashes: self.crashes,
            repairs: self.repairs,
            partitions: self.partitions,
            views: self.views.len(),
            slow_node_removed: self
                .cfg
                .slow
                .is_some_and(|s| self.views.values().any(|v| !v.contains(s.node))),
            messages: self.net.sent,
            steps: self.now,
            final_len: self
                .nodes
                .values()
                .next()
                .and_then(|n| n.replica())
                .map_or(0, |r| r.string_len()),
        }
    }
}
