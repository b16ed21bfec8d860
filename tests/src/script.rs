//! Scenario scripts for the engine (goldenscript): a few nodes and a network the script drives
//! message by message, with the output checked against a golden file. The nodes are the
//! simulation's: the real engine over the real write-ahead file on a file system in memory,
//! a crash losing what was not synced.
//!
//! Commands (arguments in brackets are optional):
//! - `cluster nodes=N [ack_lag_ms=M]`: nodes 1..=N in one view, node 1 master.
//! - `request NODE append|set VALUE` and `request NODE get`: a client request at NODE.
//! - `tick [NODE...] [times=N]`: advances the nodes' clocks (10 ms a tick); what they send
//!   goes to the network.
//! - `deliver [from=ID] [to=ID] [kind=NAME]`: delivers the matching messages now in the
//!   network, in the order they were sent; `stabilize [heartbeats=true]` delivers until the
//!   network is empty. Delivered messages are printed, heartbeats only when asked.
//! - `run [NODE...] [times=N]`: N rounds of a tick at every node (or at those listed: the
//!   others' clocks stand still, as in a paused process) and a `stabilize`.
//! - `drop [from=ID] [to=ID] [kind=NAME]`: loses the matching messages now in the network.
//! - `cut NODE...` / `heal`: messages from or to a cut node are lost as they are sent.
//! - `lose [from=ID] [to=ID] [kind=NAME]`: the next message sent that matches is lost.
//! - `hold [from=ID] [to=ID] [kind=NAME]`: the next message sent that matches is kept out of
//!   the network (delayed) until `release`, which sends every held message, in order.
//! - `crash NODE` / `restart NODE`: a power cut, and a restart from what the log kept;
//!   `repair NODE`: a crash that destroys the node's data (it restarts as a fresh
//!   incarnation, as after `--repair`).
//! - `status [NODE...]`: each node's view, applied count and string.
//!
//! Replies to clients, views entered and snapshots installed are printed as they happen. A
//! node reports what it applied after the state it installed; one that reports an action the
//! snapshot already holds is flagged (observers would count it twice).

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fmt::Write as _;

use goldenscript::{Command, Runner};
use strstore_protocol::{Envelope, NodeId, Op, PeerMsg, Request, Response, Timestamp, WriteOp};
use strstore_server::replica::{self, WaiterId};

use crate::sim::node::{Output, SimNode};

/// The one client of a script.
const CLIENT: u64 = 7;
/// Deliveries `stabilize` makes before it gives up on a network that never empties.
const MAX_DELIVERIES: usize = 10_000;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[derive(Default)]
pub struct ScriptRunner {
    nodes: BTreeMap<NodeId, SimNode>,
    /// Sent and not yet delivered, in the order sent.
    network: Vec<Envelope>,
    cut: BTreeSet<NodeId>,
    /// One message each is lost as it is sent (`lose`).
    lose: Vec<Filter>,
    /// One message each is held back as it is sent (`hold`), and those held.
    hold: Vec<Filter>,
    held: Vec<Envelope>,
    /// Each node's replay base as last printed: a move is a snapshot installed.
    bases: BTreeMap<NodeId, Timestamp>,
    next_seq: u64,
    /// Each waiting request: where it was made, and what it asked.
    waiting: BTreeMap<WaiterId, String>,
}

/// Which messages a `deliver` or `drop` takes.
struct Filter {
    from: Option<NodeId>,
    to: Option<NodeId>,
    kind: Option<String>,
}

impl Filter {
    fn matches(&self, env: &Envelope) -> bool {
        self.from.is_none_or(|f| env.from == f)
            && self.to.is_none_or(|t| env.to == t)
            && self.kind.as_deref().is_none_or(|k| kind(&env.msg) == k)
    }
}

impl Runner for ScriptRunner {
    fn run(&mut self, command: &Command) -> Result<String> {
        let mut out = String::new();
        match command.name.as_str() {
            "cluster" => self.cluster(command)?,
            "request" => self.request(command)?,
            "tick" => self.tick(command, &mut out)?,
            "deliver" => {
                let filter = self.filter(command)?;
                self.deliver(&filter, true, &mut out)?;
            }
            "stabilize" => self.stabilize(command, &mut out)?,
            "run" => self.run_ticks(command, &mut out)?,
            "drop" => self.drop_messages(command, &mut out)?,
            "cut" => self.cut.extend(node_args(command)?),
            "lose" => {
                let filter = self.filter(command)?;
                self.lose.push(filter);
            }
            "hold" => {
                let filter = self.filter(command)?;
                self.hold.push(filter);
            }
            "release" => self.network.append(&mut self.held),
            "heal" => self.cut.clear(),
            "crash" => self.crash(command, false, &mut out)?,
            "repair" => self.crash(command, true, &mut out)?,
            "restart" => self.restart(command, &mut out)?,
            "status" => self.status(command, &mut out)?,
            name => return Err(format!("unknown command {name}").into()),
        }
        Ok(out)
    }
}

impl ScriptRunner {
    fn cluster(&mut self, command: &Command) -> Result<()> {
        let mut args = command.consume_args();
        let n: u64 = args.lookup_parse("nodes")?.ok_or("cluster needs nodes=N")?;
        let ack_lag_ms: Option<u64> = args.lookup_parse("ack_lag_ms")?;
        args.reject_rest()?;
        let ids: Vec<NodeId> = (1..=n).collect();
        for &id in &ids {
            let mut cfg = replica::Config::new(id, ids.clone());
            if let Some(ms) = ack_lag_ms {
                cfg.ack_lag_ticks = ms.div_ceil(cfg.tick_ms);
            }
            self.nodes.insert(id, SimNode::new(cfg));
        }
        Ok(())
    }

    fn request(&mut self, command: &Command) -> Result<()> {
        let mut args = command.consume_args();
        let node: NodeId = args.next_pos().ok_or("request needs a node")?.parse()?;
        let what = args.next_pos().ok_or("request needs append, set or get")?.value.clone();
        let value = args.next_pos().map(|a| a.value.clone());
        args.reject_rest()?;
        let op = match (what.as_str(), value) {
            ("append", Some(v)) => Op::Append(v.into()),
            ("set", Some(v)) => Op::Set(v.into()),
            ("get", None) => Op::Get,
            _ => return Err(format!("request {what}: append V, set V or get").into()),
        };
        self.next_seq += 1;
        let waiter = self.next_seq;
        self.waiting.insert(waiter, format!("n{node} {}", describe_op(&op)));
        let req = Request { client: CLIENT, seq: self.next_seq, op };
        self.node(node)?.client_request(waiter, req);
        Ok(())
    }

    fn tick(&mut self, command: &Command, out: &mut String) -> Result<()> {
        let mut args = command.consume_args();
        let times: u64 = args.lookup_parse("times")?.unwrap_or(1);
        let ids = self.listed_or_all(args.rest())?;
        for _ in 0..times {
            for &id in &ids {
                let output = self.node(id)?.advance(true, true)?;
                self.record(id, output, out);
            }
        }
        Ok(())
    }

    fn stabilize(&mut self, command: &Command, out: &mut String) -> Result<()> {
        let mut args = command.consume_args();
        let heartbeats: bool = args.lookup_parse("heartbeats")?.unwrap_or(false);
        args.reject_rest()?;
        let all = Filter { from: None, to: None, kind: None };
        let mut delivered = 0;
        while !self.network.is_empty() {
            delivered += self.deliver(&all, heartbeats, out)?;
            if delivered > MAX_DELIVERIES {
                return Err("the network never became empty".into());
            }
        }
        Ok(())
    }

    fn run_ticks(&mut self, command: &Command, out: &mut String) -> Result<()> {
        let mut args = command.consume_args();
        let times: u64 = args.lookup_parse("times")?.unwrap_or(1);
        let ids = self.listed_or_all(args.rest())?;
        let all = Filter { from: None, to: None, kind: None };
        for _ in 0..times {
            for &id in &ids {
                let output = self.node(id)?.advance(true, true)?;
                self.record(id, output, out);
            }
            let mut delivered = 0;
            while !self.network.is_empty() && delivered <= MAX_DELIVERIES {
                delivered += self.deliver(&all, false, out)?;
            }
        }
        Ok(())
    }

    /// Delivers the matching messages now in the network; how many.
    fn deliver(&mut self, filter: &Filter, heartbeats: bool, out: &mut String) -> Result<usize> {
        let (now, later): (Vec<Envelope>, Vec<Envelope>) =
            std::mem::take(&mut self.network).into_iter().partition(|e| filter.matches(e));
        self.network = later;
        let mut receivers = BTreeSet::new();
        for env in &now {
            if heartbeats || !matches!(kind(&env.msg), "Heartbeat" | "HeartbeatAck") {
                writeln!(out, "n{} -> n{} {}", env.from, env.to, brief(&env.msg))?;
            }
        }
        let count = now.len();
        for env in now {
            receivers.insert(env.to);
            self.node(env.to)?.deliver(env);
        }
        for id in receivers {
            let output = self.node(id)?.advance(false, true)?;
            self.record(id, output, out);
        }
        Ok(count)
    }

    fn drop_messages(&mut self, command: &Command, out: &mut String) -> Result<()> {
        let filter = self.filter(command)?;
        let (dropped, kept): (Vec<Envelope>, Vec<Envelope>) =
            std::mem::take(&mut self.network).into_iter().partition(|e| filter.matches(e));
        self.network = kept;
        for env in dropped {
            writeln!(out, "dropped n{} -> n{} {}", env.from, env.to, brief(&env.msg))?;
        }
        Ok(())
    }

    /// `crash N`: a power cut. `repair N`: a crash that destroys the node's data, as when a
    /// node finds its log damaged and `--repair` moves it aside; it restarts fresh.
    fn crash(&mut self, command: &Command, damaged: bool, out: &mut String) -> Result<()> {
        for id in node_args(command)? {
            self.node(id)?.crash(0, damaged, 0.0);
            self.network.retain(|e| e.to != id);
            let what = if damaged { "lost its data" } else { "crashed" };
            writeln!(out, "n{id} {what}")?;
        }
        Ok(())
    }

    fn restart(&mut self, command: &Command, out: &mut String) -> Result<()> {
        for id in node_args(command)? {
            let replayed = self.node(id)?.restart();
            let base = self.node(id)?.replica().map(|r| r.replay_base()).unwrap_or_default();
            self.bases.insert(id, base);
            writeln!(out, "n{id} restarted: replayed {} actions from its log", replayed.len())?;
        }
        Ok(())
    }

    fn status(&mut self, command: &Command, out: &mut String) -> Result<()> {
        let mut ids = node_args(command)?;
        if ids.is_empty() {
            ids = self.nodes.keys().copied().collect();
        }
        for id in ids {
            let Some(r) = self.node(id)?.replica() else {
                writeln!(out, "n{id}: down")?;
                continue;
            };
            let view = r.view();
            writeln!(
                out,
                "n{id}: epoch {} master n{} members {:?} applied {} string {:?}",
                view.epoch,
                view.master,
                view.ids(),
                r.digest().actions,
                String::from_utf8_lossy(&r.value())
            )?;
        }
        Ok(())
    }

    /// Sends what a node put out, and prints its replies and views.
    fn record(&mut self, id: NodeId, output: Output, out: &mut String) {
        for view in output.views {
            let _ = writeln!(
                out,
                "n{id} entered view {} master n{} {:?}",
                view.epoch,
                view.master,
                view.ids()
            );
        }
        self.record_install(id, &output.applied, out);
        for reply in output.replies {
            let asked = self.waiting.remove(&reply.waiter).unwrap_or_default();
            let result = match reply.reply.result {
                Ok(Response::Len(n)) => format!("ok, length {n}"),
                Ok(Response::Value(v)) => format!("ok {:?}", String::from_utf8_lossy(&v)),
                Err(e) => format!("error: {e}"),
            };
            let _ = writeln!(out, "reply to {asked}: {result}");
        }
        for env in output.messages {
            if let Some(i) = self.lose.iter().position(|f| f.matches(&env)) {
                self.lose.remove(i);
                let _ = writeln!(out, "lost n{} -> n{} {}", env.from, env.to, brief(&env.msg));
            } else if let Some(i) = self.hold.iter().position(|f| f.matches(&env)) {
                self.hold.remove(i);
                let _ = writeln!(out, "held n{} -> n{} {}", env.from, env.to, brief(&env.msg));
                self.held.push(env);
            } else if !self.cut.contains(&env.from) && !self.cut.contains(&env.to) {
                self.network.push(env);
            }
        }
    }

    /// Prints a snapshot install, and what the node reports applied beyond it.
    fn record_install(&mut self, id: NodeId, applied: &[Timestamp], out: &mut String) {
        let Some(base) = self.nodes.get(&id).and_then(|n| n.replica()).map(|r| r.replay_base())
        else {
            return;
        };
        if self.bases.insert(id, base).unwrap_or_default() == base {
            return;
        }
        let after: Vec<String> = applied.iter().map(|t| t.to_string()).collect();
        let _ = writeln!(
            out,
            "n{id} installed a snapshot up to {base}; reports applied after it: [{}]",
            after.join(", ")
        );
        for t in applied.iter().filter(|t| **t <= base) {
            let _ = writeln!(out, "ERROR: n{id} reports {t} applied, which its snapshot holds");
        }
    }

    /// The nodes `args` name, or every node if they name none.
    fn listed_or_all(&self, args: Vec<&goldenscript::Argument>) -> Result<Vec<NodeId>> {
        let ids: Vec<NodeId> = args
            .iter()
            .map(|a| a.value.parse::<NodeId>())
            .collect::<std::result::Result<_, _>>()?;
        Ok(if ids.is_empty() { self.nodes.keys().copied().collect() } else { ids })
    }

    fn node(&mut self, id: NodeId) -> Result<&mut SimNode> {
        self.nodes.get_mut(&id).ok_or_else(|| format!("no node {id}").into())
    }

    fn filter(&self, command: &Command) -> Result<Filter> {
        let mut args = command.consume_args();
        let filter = Filter {
            from: args.lookup_parse("from")?,
            to: args.lookup_parse("to")?,
            kind: args.lookup("kind").map(|a| a.value.clone()),
        };
        args.reject_rest()?;
        Ok(filter)
    }
}

fn node_args(command: &Command) -> Result<Vec<NodeId>> {
    command.args.iter().map(|a| Ok(a.value.parse::<NodeId>()?)).collect()
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Append(v) => format!("append {:?}", String::from_utf8_lossy(v)),
        Op::Set(v) => format!("set {:?}", String::from_utf8_lossy(v)),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The name of a message's variant.
fn kind(msg: &PeerMsg) -> &'static str {
    match msg {
        PeerMsg::Action(_) => "Action",
        PeerMsg::Fence { .. } => "Fence",
        PeerMsg::Ack { .. } => "Ack",
        PeerMsg::Execute { .. } => "Execute",
        PeerMsg::StaleEpoch { .. } => "StaleEpoch",
        PeerMsg::Heartbeat { .. } => "Heartbeat",
        PeerMsg::HeartbeatAck { .. } => "HeartbeatAck",
        PeerMsg::Prepare { .. } => "Prepare",
        PeerMsg::Promise { .. } => "Promise",
        PeerMsg::Nack { .. } => "Nack",
        PeerMsg::Accept { .. } => "Accept",
        PeerMsg::Accepted { .. } => "Accepted",
        PeerMsg::Decided { .. } => "Decided",
        PeerMsg::Join { .. } => "Join",
    }
}

/// A message in one line: its kind and the fields a reader of a scenario follows.
fn brief(msg: &PeerMsg) -> String {
    let kind = kind(msg);
    match msg {
        PeerMsg::Action(a) => {
            let writes: Vec<String> = a
                .writes
                .iter()
                .map(|w| match &w.op {
                    WriteOp::Append(v) => format!("append {:?}", String::from_utf8_lossy(v)),
                    WriteOp::Set(v) => format!("set {:?}", String::from_utf8_lossy(v)),
                })
                .collect();
            format!("{kind} {} e{} oseq {} [{}]", a.id, a.epoch, a.oseq, writes.join(", "))
        }
        PeerMsg::Fence { id } => format!("{kind} {id}"),
        PeerMsg::Ack { id, hw, .. } => format!("{kind} {id} hw {hw}"),
        PeerMsg::Execute { id, deps } => format!("{kind} {id} deps {deps:?}"),
        PeerMsg::StaleEpoch { current } => format!("{kind} current e{current}"),
        PeerMsg::HeartbeatAck { view, .. } => format!("{kind} e{}", view.epoch),
        PeerMsg::Prepare { ballot, deposes_master } => {
            format!(
                "{kind} ballot {}.{} deposes_master {deposes_master}",
                ballot.round, ballot.node
            )
        }
        PeerMsg::Promise { ballot, accepted, .. } => {
            let accepted = accepted
                .as_ref()
                .map(|(b, p)| format!(" accepted {}.{} e{}", b.round, b.node, p.view.epoch));
            format!(
                "{kind} ballot {}.{}{}",
                ballot.round,
                ballot.node,
                accepted.unwrap_or_default()
            )
        }
        PeerMsg::Nack { ballot, promised } => format!(
            "{kind} ballot {}.{} promised {}.{}",
            ballot.round, ballot.node, promised.round, promised.node
        ),
        PeerMsg::Accept { ballot, proposal } => format!(
            "{kind} ballot {}.{} view e{} {:?}",
            ballot.round,
            ballot.node,
            proposal.view.epoch,
            proposal.view.ids()
        ),
        PeerMsg::Accepted { ballot } => format!("{kind} ballot {}.{}", ballot.round, ballot.node),
        PeerMsg::Decided { proposal, snapshot } => format!(
            "{kind} view e{} master n{} {:?}{}",
            proposal.view.epoch,
            proposal.view.master,
            proposal.view.ids(),
            snapshot
                .as_ref()
                .map(|s| format!(" with a snapshot of {} bytes", s.value.len()))
                .unwrap_or_default()
        ),
        PeerMsg::Join { member, fresh } => format!("{kind} n{} fresh {fresh}", member.id),
        PeerMsg::Heartbeat { .. } => kind.to_string(),
    }
}
