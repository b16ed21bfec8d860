//! The nemesis: one fault at a time, drawn from the seed, applied, held, shown to have taken
//! effect, healed, then a calm gap so that the report can compare the cluster with and
//! without faults. Kinds are dealt from a shuffled deck, so a run injects every kind it names
//! before any kind comes twice; the first round's holds are shortened to fit the run.
//!
//! The kernel here has no `netem`, so delay comes from queueing behind a low rate;
//! duplication and reordering are left to the deterministic simulation. What each fault does
//! to the nodes is in [`super::faults`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use strstore_protocol::NodeId;

use super::backend::{Backend, NodeInfo};
use super::faults::{self, Drops, Fault};
use super::stats::FaultWindow;

/// The `--nemesis` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
pub enum NemesisKind {
    /// Every kind below, drawn at random (but each once before any twice).
    Mix,
    /// `kill -9` and restart: a random node, the master, or a minority at once.
    Kill,
    /// SIGSTOP / SIGCONT (docker pause) for longer than the failure timeout.
    Pause,
    /// A gray fault: one node paused for 80 % of the failure timeout, then running as
    /// long, over and over; never silent long enough to look dead.
    Flap,
    /// Network partitions: isolate a node or the master, majority/minority, bridge, one-way.
    Partition,
    /// Random loss of 10-30% of the packets between peers.
    Loss,
    /// A gray fault: 60-90 % of the packets between one node and its peers dropped.
    Lossy,
    /// Slow links: a token bucket on one node's or every node's outgoing traffic.
    Slow,
    /// A gray fault: every sync of one node's log 20-100 ms slower (the wal-sync failpoint;
    /// the netns backend and a server built with `--features strstore-server/failpoints`).
    Disk,
}

impl NemesisKind {
    /// The kinds this choice deals, those `backend_has_failpoints` allows.
    fn kinds(self, backend_has_failpoints: bool) -> Vec<NemesisKind> {
        use NemesisKind::*;
        let kinds = match self {
            Mix => vec![Kill, Pause, Flap, Partition, Loss, Lossy, Slow, Disk],
            one => vec![one],
        };
        kinds.into_iter().filter(|&k| k != Disk || backend_has_failpoints).collect()
    }

    fn name(self) -> &'static str {
        match self {
            NemesisKind::Mix => "mix",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Flap => "flap",
            NemesisKind::Partition => "partition",
            NemesisKind::Loss => "loss",
            NemesisKind::Lossy => "lossy",
            NemesisKind::Slow => "slow",
            NemesisKind::Disk => "disk",
        }
    }
}

/// Quiet time at the start (the calm baseline) and at the end (no fault is still being healed
/// when the workload stops).
const LEAD_IN: Duration = Duration::from_secs(5);
const TAIL: Duration = Duration::from_secs(5);
/// No fault starts unless it can be held this long before the tail.
const SHORTEST_HOLD: Duration = Duration::from_secs(2);
/// The calm gap after each fault of the first round (later ones: 3-7 s).
const FIRST_ROUND_CALM: Duration = Duration::from_millis(2500);
/// What the nodes run with (`--failure-timeout-ms`): a flapping node pauses for 80 % of it.
const FAILURE_TIMEOUT: Duration = Duration::from_millis(500);

struct Drawn {
    fault: Fault,
    kind: NemesisKind,
    label: String,
    hold: Duration,
    /// The node a partition isolates when it was the master: a view change must follow.
    master_isolated: Option<NodeId>,
}

/// The fault schedule for one run.
pub struct NemesisPlan {
    kinds: Vec<NemesisKind>,
    /// Kinds not dealt yet in this round.
    deck: Vec<NemesisKind>,
    first_round: bool,
    rng: StdRng,
    nodes: Vec<NodeInfo>,
    duration: Duration,
}

impl NemesisPlan {
    pub fn new(
        kind: NemesisKind,
        seed: u64,
        nodes: &[NodeInfo],
        duration: Duration,
        backend_has_failpoints: bool,
    ) -> Self {
        Self {
            kinds: kind.kinds(backend_has_failpoints),
            deck: Vec::new(),
            first_round: true,
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            nodes: nodes.to_vec(),
            duration,
        }
    }

    /// The kinds this run deals, by name.
    pub fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }

    /// Injects faults until the workload's end (or `stop`) and returns what it did. Every
    /// fault is healed before the next one and before returning.
    pub fn run(
        mut self,
        backend: &mut Backend,
        start: Instant,
        stop: &AtomicBool,
    ) -> anyhow::Result<Vec<FaultWindow>> {
        let since = |at: Instant| at.duration_since(start).as_nanos() as u64;
        let last_start = start + self.duration.saturating_sub(TAIL);
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let mut windows = Vec::new();
        pause_until(start + LEAD_IN, stop);
        while !stop.load(Ordering::SeqCst) && Instant::now() + SHORTEST_HOLD < last_start {
            let first_round = self.first_round;
            let mut drawn = self.draw();
            if first_round {
                drawn.hold = drawn.hold.min(self.first_round_hold(last_start));
            }
            let began = Instant::now();
            println!(
                "chaos: {:7.1}s  {} ({})",
                since(began) as f64 / 1e9,
                drawn.label,
                drawn.kind.name()
            );
            let applied = faults::apply(backend, &drawn.fault, &self.nodes);
            let mut effect = None;
            if applied.is_ok() {
                let until = (began + drawn.hold).min(last_start);
                let pauses = faults::hold(backend, &drawn.fault, until, stop)?;
                effect = self.evidence(backend, &drawn, pauses);
            }
            let healed = faults::heal(backend, &drawn.fault);
            let ended = Instant::now();
            windows.push(FaultWindow {
                start: since(began),
                end: since(ended),
                kind: drawn.kind.name().to_string(),
                label: drawn.label,
                nodes: drawn.fault.touches(&ids),
                effect: effect.unwrap_or_default(),
            });
            applied?;
            healed?;
            let calm = if self.first_round {
                FIRST_ROUND_CALM
            } else {
                Duration::from_millis(self.rng.gen_range(3000..=7000))
            };
            pause_until(ended + calm, stop);
        }
        Ok(windows)
    }

    /// While the first round is dealt: the hold that leaves room for the kinds still in the
    /// deck before `last_start`, and for this fault's own hold.
    fn first_round_hold(&self, last_start: Instant) -> Duration {
        let left = last_start.saturating_duration_since(Instant::now());
        let faults_left = self.deck.len() as u32 + 1;
        (left / faults_left).saturating_sub(FIRST_ROUND_CALM).max(SHORTEST_HOLD)
    }

    /// What shows that the fault acts, read before it is healed (see [`faults::evidence`]);
    /// for an isolated master, also the view change the others made without it.
    fn evidence(&self, backend: &Backend, drawn: &Drawn, pauses: u32) -> Option<String> {
        let seen = faults::evidence(backend, &drawn.fault, &self.nodes, pauses)?;
        let Some(master) = drawn.master_isolated else { return Some(seen) };
        let others: Vec<NodeId> =
            self.nodes.iter().map(|n| n.id).filter(|&id| id != master).collect();
        match faults::status_of(&self.nodes, &others) {
            Some(report) if report.master != master => Some(format!(
                "{seen}; the others moved on to epoch {} with master n{}",
                report.epoch, report.master
            )),
            _ => None,
        }
    }

    fn draw(&mut self) -> Drawn {
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            self.deck.shuffle(&mut self.rng);
        }
        let kind = self.deck.pop().expect("at least one kind");
        if self.deck.is_empty() {
            self.first_round = false;
        }
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let pick = |rng: &mut StdRng| *ids.choose(rng).expect("nodes");
        let hold = |rng: &mut StdRng, secs: std::ops::RangeInclusive<u64>| {
            Duration::from_millis(rng.gen_range(secs.start() * 1000..=secs.end() * 1000))
        };
        let drawn = |fault, label, hold| Drawn { fault, kind, label, hold, master_isolated: None };
        match kind {
            NemesisKind::Kill => {
                let (victims, how) = self.kill_victims(&ids);
                let label = format!("kill -9 {} ({how}), restart after the hold", names(&victims));
                drawn(Fault::Kill(victims), label, hold(&mut self.rng, 2..=8))
            }
            NemesisKind::Pause => {
                let (victim, how) = self.master_or_random(&ids);
                let label = format!("pause n{victim} ({how})");
                drawn(Fault::Pause(victim), label, hold(&mut self.rng, 3..=8))
            }
            NemesisKind::Flap => {
                let (victim, how) = self.master_or_random(&ids);
                let paused = FAILURE_TIMEOUT * 4 / 5;
                let label = format!(
                    "flap n{victim} ({how}): paused {} ms, running {0} ms, again and again",
                    paused.as_millis()
                );
                drawn(Fault::Flap(victim, paused), label, hold(&mut self.rng, 5..=10))
            }
            NemesisKind::Partition => {
                let (drops, label, master_isolated) = self.partition(&ids);
                let mut d = drawn(Fault::Partition(drops), label, hold(&mut self.rng, 3..=10));
                d.master_isolated = master_isolated;
                d
            }
            NemesisKind::Loss => {
                let percent = self.rng.gen_range(10..=30);
                let label = format!("drop {percent}% of the packets between peers");
                drawn(Fault::Loss(percent), label, hold(&mut self.rng, 5..=10))
            }
            NemesisKind::Lossy => {
                let victim = pick(&mut self.rng);
                let percent = self.rng.gen_range(60..=90);
                let label =
                    format!("drop {percent}% of the packets between n{victim} and its peers");
                drawn(Fault::Lossy(victim, percent), label, hold(&mut self.rng, 5..=10))
            }
            NemesisKind::Slow => {
                let kbit = *[128, 512, 2048].choose(&mut self.rng).expect("rates");
                let victims =
                    if self.rng.gen_bool(0.5) { vec![pick(&mut self.rng)] } else { ids.clone() };
                let label = format!("limit {} to {kbit} kbit/s outgoing", names(&victims));
                drawn(Fault::Slow(victims, kbit), label, hold(&mut self.rng, 5..=10))
            }
            NemesisKind::Disk => {
                let victim = pick(&mut self.rng);
                let ms = *[20, 50, 100].choose(&mut self.rng).expect("delays");
                let label = format!("slow disk on n{victim}: every log sync {ms} ms longer");
                drawn(Fault::SlowDisk(victim, ms), label, hold(&mut self.rng, 5..=10))
            }
            NemesisKind::Mix => unreachable!("Mix is never dealt"),
        }
    }

    fn kill_victims(&mut self, ids: &[NodeId]) -> (Vec<NodeId>, String) {
        let minority = (ids.len() - 1) / 2;
        match self.rng.gen_range(0..3) {
            0 => (vec![*ids.choose(&mut self.rng).expect("nodes")], "a random node".to_string()),
            1 => (vec![self.master()], "the master".to_string()),
            _ => {
                let mut shuffled = ids.to_vec();
                shuffled.shuffle(&mut self.rng);
                shuffled.truncate(minority);
                (shuffled, format!("a minority of {minority}"))
            }
        }
    }

    fn master_or_random(&mut self, ids: &[NodeId]) -> (NodeId, &'static str) {
        if self.rng.gen_bool(0.5) {
            (self.master(), "the master")
        } else {
            (*ids.choose(&mut self.rng).expect("nodes"), "a random node")
        }
    }

    /// The partitions: who drops packets from whom, a label saying what it means, and the
    /// master when it is the node isolated.
    fn partition(&mut self, ids: &[NodeId]) -> (Drops, String, Option<NodeId>) {
        let mut shuffled = ids.to_vec();
        shuffled.shuffle(&mut self.rng);
        let others = |x: NodeId| ids.iter().copied().filter(|&y| y != x).collect::<Vec<_>>();
        match self.rng.gen_range(0..5) {
            0 | 1 => {
                let (victim, how) = if self.rng.gen_bool(0.5) {
                    (self.master(), "the master")
                } else {
                    (shuffled[0], "a random node")
                };
                let isolated_master = (how == "the master").then_some(victim);
                let label = format!("isolate n{victim} ({how})");
                (split(&[victim], &others(victim)), label, isolated_master)
            }
            2 => {
                let (small, big) = shuffled.split_at((ids.len() - 1) / 2);
                let label = format!("split {} | {}", names(small), names(big));
                (split(small, big), label, None)
            }
            3 => {
                // The bridge hears both halves, which cannot hear each other.
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let (a, b) = rest.split_at(rest.len() / 2);
                let label = format!(
                    "bridge: {} | {} | {}, only n{bridge} sees both",
                    names(a),
                    names(&[bridge]),
                    names(b)
                );
                (split(a, b), label, None)
            }
            _ => {
                let victim = shuffled[0];
                let label = format!("one-way: n{victim} hears nobody, everyone hears n{victim}");
                (vec![(victim, others(victim))], label, None)
            }
        }
    }

    /// The current master as the cluster reports it, or a random node if nobody answers
    /// quickly (a fault may be under way).
    fn master(&mut self) -> NodeId {
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        match faults::status_of(&self.nodes, &ids) {
            Some(report) => report.master,
            None => *ids.choose(&mut self.rng).expect("nodes"),
        }
    }
}

/// Both ways: every node of `a` drops packets from every node of `b`, and the reverse.
fn split(a: &[NodeId], b: &[NodeId]) -> Drops {
    let one_way =
        |from: &[NodeId], to: &[NodeId]| to.iter().map(|&x| (x, from.to_vec())).collect::<Vec<_>>();
    let mut drops = one_way(a, b);
    drops.extend(one_way(b, a));
    drops
}

pub fn names(ids: &[NodeId]) -> String {
    let names: Vec<String> = ids.iter().map(|id| format!("n{id}")).collect();
    names.join(",")
}

/// Sleeps until `deadline`, waking early when `stop` is set.
pub fn pause_until(deadline: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}
