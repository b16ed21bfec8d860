//! The nemesis: one fault at a time, drawn from the seed, applied, held, healed, then a calm
//! gap so that the report can compare the cluster with and without faults.
//!
//! Network faults are nftables rules in a table of our own (`inet strstore_chaos`) in the
//! victim's network namespace, matching peers by address (clients come from another address
//! and are never cut off: a client stuck with a minority node must see timeouts, not a clean
//! refusal), and tc's token bucket filter for slow links. The kernel here has no `netem`, so
//! delay comes from queueing behind a low rate; duplication and reordering are left to the
//! deterministic simulation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use strstore_client::Client;
use strstore_protocol::NodeId;

use super::backend::{client_config, Backend, NodeInfo};
use super::stats::FaultWindow;

/// The `--nemesis` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
pub enum NemesisKind {
    /// Every kind below, drawn at random.
    Mix,
    /// `kill -9` and restart: a random node, the master, or a minority at once.
    Kill,
    /// SIGSTOP / SIGCONT (docker pause) for longer than the failure timeout.
    Pause,
    /// Network partitions: isolate a node or the master, majority/minority, bridge, one-way.
    Partition,
    /// Random loss of 10-30% of the packets between peers.
    Loss,
    /// Slow links: a token bucket on one node's or every node's outgoing traffic.
    Slow,
}

impl NemesisKind {
    fn kinds(self) -> &'static [NemesisKind] {
        use NemesisKind::*;
        match self {
            Mix => &[Kill, Pause, Partition, Loss, Slow],
            Kill => &[Kill],
            Pause => &[Pause],
            Partition => &[Partition],
            Loss => &[Loss],
            Slow => &[Slow],
        }
    }
}

/// Quiet time at the start (the calm baseline) and at the end (no fault is still being healed
/// when the workload stops).
const LEAD_IN: Duration = Duration::from_secs(5);
const TAIL: Duration = Duration::from_secs(5);
/// No fault starts unless it can be held this long before the tail.
const SHORTEST_HOLD: Duration = Duration::from_secs(2);

/// One fault, ready to apply.
#[derive(Clone, Debug)]
enum Fault {
    Kill(Vec<NodeId>),
    Pause(NodeId),
    /// Each `(node, peers)`: `node` drops every packet from `peers`.
    Partition(Vec<(NodeId, Vec<NodeId>)>),
    /// Every node drops this percentage of the packets from its peers.
    Loss(u32),
    /// These nodes' outgoing traffic goes through a token bucket of this many kbit/s.
    Slow(Vec<NodeId>, u32),
}

struct Drawn {
    fault: Fault,
    kind: &'static str,
    label: String,
    hold: Duration,
}

/// The fault schedule for one run.
pub struct NemesisPlan {
    kinds: &'static [NemesisKind],
    rng: StdRng,
    nodes: Vec<NodeInfo>,
    duration: Duration,
}

impl NemesisPlan {
    pub fn new(kind: NemesisKind, seed: u64, nodes: &[NodeInfo], duration: Duration) -> Self {
        Self {
            kinds: kind.kinds(),
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            nodes: nodes.to_vec(),
            duration,
        }
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
        let mut windows = Vec::new();
        pause_until(start + LEAD_IN, stop);
        while !stop.load(Ordering::SeqCst) && Instant::now() + SHORTEST_HOLD < last_start {
            let drawn = self.draw();
            let began = Instant::now();
            println!("chaos: {:7.1}s  {} ({})", since(began) as f64 / 1e9, drawn.label, drawn.kind);
            let applied = apply(backend, &drawn.fault, &self.nodes);
            if applied.is_ok() {
                pause_until((began + drawn.hold).min(last_start), stop);
            }
            let healed = heal(backend, &drawn.fault);
            let ended = Instant::now();
            windows.push(FaultWindow {
                start: since(began),
                end: since(ended),
                kind: drawn.kind.to_string(),
                label: drawn.label,
            });
            applied?;
            healed?;
            let calm = Duration::from_millis(self.rng.gen_range(3000..=7000));
            pause_until(ended + calm, stop);
        }
        Ok(windows)
    }

    fn draw(&mut self) -> Drawn {
        let kind = *self.kinds.choose(&mut self.rng).expect("at least one kind");
        let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let minority = (ids.len() - 1) / 2;
        let pick = |rng: &mut StdRng| *ids.choose(rng).expect("nodes");
        let hold = |rng: &mut StdRng, secs: std::ops::RangeInclusive<u64>| {
            Duration::from_millis(rng.gen_range(secs.start() * 1000..=secs.end() * 1000))
        };
        match kind {
            NemesisKind::Kill => {
                let (victims, how) = match self.rng.gen_range(0..3) {
                    0 => (vec![pick(&mut self.rng)], "a random node".to_string()),
                    1 => (vec![self.master()], "the master".to_string()),
                    _ => {
                        let mut shuffled = ids.clone();
                        shuffled.shuffle(&mut self.rng);
                        shuffled.truncate(minority);
                        (shuffled, format!("a minority of {minority}"))
                    }
                };
                let label = format!("kill -9 {} ({how}), restart after the hold", names(&victims));
                Drawn {
                    hold: hold(&mut self.rng, 2..=8),
                    fault: Fault::Kill(victims),
                    kind: "kill",
                    label,
                }
            }
            NemesisKind::Pause => {
                let (victim, how) = if self.rng.gen_bool(0.5) {
                    (self.master(), "the master")
                } else {
                    (pick(&mut self.rng), "a random node")
                };
                let label = format!("pause n{victim} ({how})");
                Drawn {
                    hold: hold(&mut self.rng, 3..=8),
                    fault: Fault::Pause(victim),
                    kind: "pause",
                    label,
                }
            }
            NemesisKind::Partition => {
                let (drops, label) = self.partition(&ids);
                Drawn {
                    hold: hold(&mut self.rng, 3..=10),
                    fault: Fault::Partition(drops),
                    kind: "partition",
                    label,
                }
            }
            NemesisKind::Loss => {
                let percent = self.rng.gen_range(10..=30);
                let label = format!("drop {percent}% of the packets between peers");
                Drawn {
                    hold: hold(&mut self.rng, 5..=10),
                    fault: Fault::Loss(percent),
                    kind: "loss",
                    label,
                }
            }
            NemesisKind::Slow => {
                let kbit = *[128, 512, 2048].choose(&mut self.rng).expect("rates");
                let victims = if self.rng.gen_bool(0.5) { vec![pick(&mut self.rng)] } else { ids };
                let label = format!("limit {} to {kbit} kbit/s outgoing", names(&victims));
                Drawn {
                    hold: hold(&mut self.rng, 5..=10),
                    fault: Fault::Slow(victims, kbit),
                    kind: "slow",
                    label,
                }
            }
            NemesisKind::Mix => unreachable!("Mix is never drawn"),
        }
    }

    /// The partitions: who drops packets from whom, and a label saying what it means.
    fn partition(&mut self, ids: &[NodeId]) -> (Vec<(NodeId, Vec<NodeId>)>, String) {
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
                (split(&[victim], &others(victim)), format!("isolate n{victim} ({how})"))
            }
            2 => {
                let (small, big) = shuffled.split_at((ids.len() - 1) / 2);
                let label = format!("split {} | {}", names(small), names(big));
                (split(small, big), label)
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
                (split(a, b), label)
            }
            _ => {
                let victim = shuffled[0];
                let label = format!("one-way: n{victim} hears nobody, everyone hears n{victim}");
                (vec![(victim, others(victim))], label)
            }
        }
    }

    /// The current master as the cluster reports it, or a random node if nobody answers
    /// quickly (a fault may be under way).
    fn master(&mut self) -> NodeId {
        let nodes: Vec<&NodeInfo> = self.nodes.iter().collect();
        let config = client_config(&nodes, Duration::from_secs(3), Duration::from_secs(1));
        let asked =
            tokio::runtime::Builder::new_current_thread().enable_all().build().ok().and_then(
                |rt| rt.block_on(async { Client::new(config).ok()?.status().await.ok() }),
            );
        match asked {
            Some(report) => report.master,
            None => self.nodes.choose(&mut self.rng).expect("nodes").id,
        }
    }
}

/// Both ways: every node of `a` drops packets from every node of `b`, and the reverse.
fn split(a: &[NodeId], b: &[NodeId]) -> Vec<(NodeId, Vec<NodeId>)> {
    let one_way =
        |from: &[NodeId], to: &[NodeId]| to.iter().map(|&x| (x, from.to_vec())).collect::<Vec<_>>();
    let mut drops = one_way(a, b);
    drops.extend(one_way(b, a));
    drops
}

fn names(ids: &[NodeId]) -> String {
    let names: Vec<String> = ids.iter().map(|id| format!("n{id}")).collect();
    names.join(",")
}

/// Sleeps until `deadline`, waking early when `stop` is set.
fn pause_until(deadline: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

fn apply(backend: &mut Backend, fault: &Fault, nodes: &[NodeInfo]) -> anyhow::Result<()> {
    let ip = |id: NodeId| {
        nodes.iter().find(|n| n.id == id).map(|n| n.ip.to_string()).unwrap_or_default()
    };
    match fault {
        Fault::Kill(victims) => victims.iter().try_for_each(|&id| backend.kill(id)),
        Fault::Pause(victim) => backend.pause(*victim),
        Fault::Partition(drops) => drops.iter().try_for_each(|(node, from)| {
            let set: Vec<String> = from.iter().map(|&id| ip(id)).collect();
            install_rules(backend, *node, &format!("ip saddr {{ {} }} drop", set.join(", ")))
        }),
        Fault::Loss(percent) => nodes.iter().try_for_each(|node| {
            let peers: Vec<String> =
                nodes.iter().filter(|n| n.id != node.id).map(|n| n.ip.to_string()).collect();
            let rule = format!(
                "ip saddr {{ {} }} numgen random mod 100 < {percent} drop",
                peers.join(", ")
            );
            install_rules(backend, node.id, &rule)
        }),
        Fault::Slow(victims, kbit) => victims.iter().try_for_each(|&id| {
            let rate = format!("{kbit}kbit");
            let args = [
                "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "16kb",
                "latency", "2s",
            ];
            backend.in_netns(id, "tc", &args, "")
        }),
    }
}

fn heal(backend: &mut Backend, fault: &Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Kill(victims) => victims.iter().try_for_each(|&id| backend.restart(id)),
        Fault::Pause(victim) => backend.resume(*victim),
        Fault::Partition(drops) => {
            drops.iter().try_for_each(|(node, _)| remove_rules(backend, *node))
        }
        Fault::Loss(_) => {
            let ids: Vec<NodeId> = backend.nodes().iter().map(|n| n.id).collect();
            ids.into_iter().try_for_each(|id| remove_rules(backend, id))
        }
        Fault::Slow(victims, _) => victims.iter().try_for_each(|&id| {
            backend.in_netns(id, "tc", &["qdisc", "del", "dev", "eth0", "root"], "")
        }),
    }
}

/// Replaces node `id`'s chaos table with one input rule, atomically (one `nft -f` run).
fn install_rules(backend: &Backend, id: NodeId, rule: &str) -> anyhow::Result<()> {
    let script = format!(
        "table inet strstore_chaos\ndelete table inet strstore_chaos\n\
         table inet strstore_chaos {{\n  chain input {{\n    \
         type filter hook input priority -10; policy accept;\n    {rule}\n  }}\n}}\n"
    );
    backend.in_netns(id, "nft", &["-f", "-"], &script)
}

fn remove_rules(backend: &Backend, id: NodeId) -> anyhow::Result<()> {
    let script = "table inet strstore_chaos\ndelete table inet strstore_chaos\n";
    backend.in_netns(id, "nft", &["-f", "-"], script)
}

/// Removes every network fault from node `id`, ignoring what was not there.
pub fn clear_network_faults(backend: &Backend, id: NodeId) {
    if let Err(e) = remove_rules(backend, id) {
        eprintln!("chaos: clearing n{id}'s nftables rules: {e:#}");
    }
    // Fails harmlessly when no qdisc of ours is installed.
    let _ = backend.in_netns(id, "tc", &["qdisc", "del", "dev", "eth0", "root"], "");
}
