//! The faults themselves: how each is applied, held, shown to have taken effect, and healed.
//!
//! Network faults are nftables rules in a table of our own (`inet strstore_chaos`) in the
//! victim's network namespace, matching peers by address (clients come from another address
//! and are never cut off: a client stuck with a minority node must see timeouts, not a clean
//! refusal), and tc's token bucket filter for slow links. Every rule counts what it drops and
//! every fault is read back before it is healed (nft counters, `tc -s` overlimits, a node
//! that does not answer, a view change, a failpoint the node logged), so that a report never
//! lists a fault that did nothing without saying so.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use strstore_client::Client;
use strstore_protocol::NodeId;

use super::backend::{client_config, Backend, NodeInfo};
use super::nemesis::pause_until;

/// Who drops packets from whom: each `(node, peers)`, `node` drops every packet from `peers`.
pub type Drops = Vec<(NodeId, Vec<NodeId>)>;

/// One fault, ready to apply.
#[derive(Clone, Debug)]
pub enum Fault {
    Kill(Vec<NodeId>),
    Pause(NodeId),
    /// Paused for this long, then running for as long again, over and over: each pause is
    /// shorter than the failure detector's timeout.
    Flap(NodeId, Duration),
    Partition(Drops),
    /// Every node drops this percentage of the packets from its peers.
    Loss(u32),
    /// This node and its peers drop this percentage of the packets between them.
    Lossy(NodeId, u32),
    /// These nodes' outgoing traffic goes through a token bucket of this many kbit/s.
    Slow(Vec<NodeId>, u32),
    /// Every sync of this node's log takes this many milliseconds longer (failpoint).
    SlowDisk(NodeId, u32),
}

impl Fault {
    /// The nodes the fault acts on: one for a gray fault or a single kill, several for a
    /// partition or a cluster-wide loss.
    pub fn touches(&self, all: &[NodeId]) -> Vec<NodeId> {
        match self {
            Fault::Kill(ids) | Fault::Slow(ids, _) => ids.clone(),
            Fault::Pause(id)
            | Fault::Flap(id, _)
            | Fault::Lossy(id, _)
            | Fault::SlowDisk(id, _) => {
                vec![*id]
            }
            Fault::Partition(drops) => {
                one_cut_off(drops, all).map_or_else(|| all.to_vec(), |id| vec![id])
            }
            Fault::Loss(_) => all.to_vec(),
        }
    }
}

/// The node a partition cuts off from all the others, if it cuts off just one (an isolated
/// node, or one that hears nobody).
fn one_cut_off(drops: &[(NodeId, Vec<NodeId>)], all: &[NodeId]) -> Option<NodeId> {
    let deaf = drops.iter().find(|(_, from)| from.len() + 1 == all.len())?.0;
    drops.iter().all(|(node, from)| *node == deaf || from == &[deaf]).then_some(deaf)
}

pub fn apply(backend: &mut Backend, fault: &Fault, nodes: &[NodeInfo]) -> anyhow::Result<()> {
    let ip = |id: NodeId| {
        nodes.iter().find(|n| n.id == id).map(|n| n.ip.to_string()).unwrap_or_default()
    };
    let peers_of =
        |id: NodeId| -> Vec<NodeId> { nodes.iter().map(|n| n.id).filter(|&p| p != id).collect() };
    let drop_from = |backend: &Backend, node: NodeId, from: &[NodeId], percent: u32| {
        let set: Vec<String> = from.iter().map(|&id| ip(id)).collect();
        let random = if percent < 100 {
            format!("numgen random mod 100 < {percent} ")
        } else {
            String::new()
        };
        install_rules(
            backend,
            node,
            &format!("ip saddr {{ {} }} {random}counter drop", set.join(", ")),
        )
    };
    match fault {
        Fault::Kill(victims) => victims.iter().try_for_each(|&id| backend.kill(id)),
        Fault::Pause(victim) => backend.pause(*victim),
        Fault::Flap(..) => Ok(()),
        Fault::Partition(drops) => {
            drops.iter().try_for_each(|(node, from)| drop_from(backend, *node, from, 100))
        }
        Fault::Loss(percent) => {
            nodes.iter().try_for_each(|n| drop_from(backend, n.id, &peers_of(n.id), *percent))
        }
        Fault::Lossy(victim, percent) => {
            drop_from(backend, *victim, &peers_of(*victim), *percent)?;
            peers_of(*victim).iter().try_for_each(|&p| drop_from(backend, p, &[*victim], *percent))
        }
        Fault::Slow(victims, kbit) => victims.iter().try_for_each(|&id| {
            let rate = format!("{kbit}kbit");
            // The burst must exceed the MTU (1500): a smaller bucket never holds a whole
            // packet and blocks the link instead of slowing it.
            let args = [
                "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "16kb",
                "latency", "2s",
            ];
            backend.in_netns(id, "tc", &args, "")
        }),
        Fault::SlowDisk(victim, ms) => {
            backend.set_failpoints(*victim, &format!("wal-sync=sleep({ms})\n"))
        }
    }
}

/// Keeps the fault in place until `until` (or `stop`): most faults just stay; a flapping
/// node is paused and resumed in turn. Returns how many pauses a flapping node went through.
pub fn hold(
    backend: &mut Backend,
    fault: &Fault,
    until: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<u32> {
    let Fault::Flap(victim, paused) = fault else {
        pause_until(until, stop);
        return Ok(0);
    };
    let mut pauses = 0;
    while Instant::now() + *paused < until && !stop.load(std::sync::atomic::Ordering::SeqCst) {
        backend.pause(*victim)?;
        std::thread::sleep(*paused);
        backend.resume(*victim)?;
        pauses += 1;
        pause_until((Instant::now() + *paused).min(until), stop);
    }
    pause_until(until, stop);
    Ok(pauses)
}

pub fn heal(backend: &mut Backend, fault: &Fault) -> anyhow::Result<()> {
    match fault {
        Fault::Kill(victims) => victims.iter().try_for_each(|&id| backend.restart(id)),
        Fault::Pause(victim) | Fault::Flap(victim, _) => backend.resume(*victim),
        Fault::Partition(drops) => {
            drops.iter().try_for_each(|(node, _)| remove_rules(backend, *node))
        }
        Fault::Loss(_) | Fault::Lossy(..) => {
            let ids: Vec<NodeId> = backend.nodes().iter().map(|n| n.id).collect();
            ids.into_iter().try_for_each(|id| remove_rules(backend, id))
        }
        Fault::Slow(victims, _) => victims.iter().try_for_each(|&id| {
            backend.in_netns(id, "tc", &["qdisc", "del", "dev", "eth0", "root"], "")
        }),
        Fault::SlowDisk(victim, _) => backend.set_failpoints(*victim, ""),
    }
}

/// Evidence that `fault`, still in place, acts: read before [`heal`] removes it; `pauses`
/// is what [`hold`] returned. An empty answer means the fault did nothing measurable, which
/// the report flags.
pub fn evidence(
    backend: &Backend,
    fault: &Fault,
    nodes: &[NodeInfo],
    pauses: u32,
) -> Option<String> {
    match fault {
        Fault::Kill(victims) => silent(nodes, victims, "down"),
        Fault::Pause(victim) => silent(nodes, &[*victim], "paused"),
        // Between pauses the node answers; that it was paused is the backend's word.
        Fault::Flap(victim, paused) => (pauses > 0)
            .then(|| format!("n{victim} paused {pauses} times, {} ms each", paused.as_millis())),
        Fault::Partition(_) | Fault::Loss(_) | Fault::Lossy(..) => {
            let dropped: u64 = nodes.iter().map(|n| dropped_packets(backend, n.id)).sum();
            (dropped > 0).then(|| format!("nftables dropped {dropped} packets"))
        }
        Fault::Slow(victims, _) => {
            let (over, dropped) = victims
                .iter()
                .map(|&id| tbf_counts(backend, id))
                .fold((0, 0), |(o, d), (o2, d2)| (o + o2, d + d2));
            (over > 0).then(|| format!("tc: {over} packets over the rate, {dropped} dropped"))
        }
        // On now: the node logged the point on more often than off (each heal logs off).
        Fault::SlowDisk(victim, _) => backend
            .node_log(*victim)
            .filter(|log| {
                let on = log.matches("failpoint on point=\"wal-sync\"").count();
                on > log.matches("failpoint off point=wal-sync").count()
            })
            .map(|_| format!("n{victim} logged its wal-sync failpoint on")),
    }
}

/// Some when none of `victims` answers a status request within a second.
fn silent(nodes: &[NodeInfo], victims: &[NodeId], state: &str) -> Option<String> {
    let answered = victims.iter().any(|&id| status_of(nodes, &[id]).is_some());
    (!answered).then(|| format!("{} did not answer while {state}", super::nemesis::names(victims)))
}

/// The status report of the first of `ids` that answers within about a second.
pub fn status_of(nodes: &[NodeInfo], ids: &[NodeId]) -> Option<strstore_protocol::ClusterReport> {
    let asked: Vec<&NodeInfo> = nodes.iter().filter(|n| ids.contains(&n.id)).collect();
    let config = client_config(&asked, Duration::from_secs(2), Duration::from_secs(1));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    rt.block_on(async { Client::new(config).ok()?.status().await.ok() })
}

/// Packets node `id`'s chaos table has dropped so far (0 when it has none).
fn dropped_packets(backend: &Backend, id: NodeId) -> u64 {
    let listed = backend.in_netns_output(id, "nft", &["list", "table", "inet", "strstore_chaos"]);
    listed.map_or(0, |text| numbers_after(&text, "packets").sum())
}

/// `(overlimits, dropped)` of node `id`'s token bucket.
fn tbf_counts(backend: &Backend, id: NodeId) -> (u64, u64) {
    let shown = backend.in_netns_output(id, "tc", &["-s", "qdisc", "show", "dev", "eth0"]);
    shown.map_or((0, 0), |text| {
        (numbers_after(&text, "overlimits").sum(), numbers_after(&text, "(dropped").sum())
    })
}

/// Every number that directly follows the word `word` in `text`.
fn numbers_after<'a>(text: &'a str, word: &'a str) -> impl Iterator<Item = u64> + 'a {
    let mut words = text.split_whitespace().peekable();
    std::iter::from_fn(move || loop {
        let w = words.next()?;
        if w == word {
            if let Some(n) = words.peek().and_then(|n| n.trim_end_matches(',').parse().ok()) {
                return Some(n);
            }
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_nft_and_tc_output() {
        let nft = "table inet strstore_chaos {\n chain input {\n  ip saddr { 10.0.0.2, \
                   10.0.0.3 } counter packets 17 bytes 2040 drop\n }\n}\n";
        assert_eq!(numbers_after(nft, "packets").sum::<u64>(), 17);
        let tc = "qdisc tbf 8001: root refcnt 2 rate 128Kbit burst 16Kb lat 2s\n Sent 1234 \
                  bytes 20 pkt (dropped 3, overlimits 45 requeues 0)\n";
        assert_eq!(numbers_after(tc, "overlimits").sum::<u64>(), 45);
        assert_eq!(numbers_after(tc, "(dropped").sum::<u64>(), 3);
        assert_eq!(numbers_after(nft, "nothing").count(), 0);
    }

    #[test]
    fn one_node_faults_are_told_from_splits() {
        let all = [1, 2, 3];
        let isolate = Fault::Partition(vec![(2, vec![1, 3]), (1, vec![2]), (3, vec![2])]);
        assert_eq!(isolate.touches(&all), vec![2]);
        let one_way = Fault::Partition(vec![(3, vec![1, 2])]);
        assert_eq!(one_way.touches(&all), vec![3]);
        let five = [1, 2, 3, 4, 5];
        let split = Fault::Partition(vec![(3, vec![1, 2]), (4, vec![1, 2]), (1, vec![3, 4])]);
        assert_eq!(split.touches(&five), five.to_vec());
        assert_eq!(Fault::Loss(20).touches(&all), all.to_vec());
        assert_eq!(Fault::SlowDisk(1, 50).touches(&all), vec![1]);
    }
}
