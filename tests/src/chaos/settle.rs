//! After the faults: wait until the cluster is whole again and quiet, read through every node,
//! and take each node's final state for the checker.
//!
//! "Settled" means every node answers, is a member of the same view (same epoch, every node in
//! it, no view change under way) and has applied the same actions (same digest), twice in a
//! row a second apart. The states come from `Inspect`, which reads one node's replica without
//! going through the order, so they are taken only once the cluster is quiet.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use strstore_client::protocol::ReplicaReport;
use strstore_client::Client;
use strstore_protocol::NodeId;

use super::backend::{client_config, NodeInfo};
use crate::checker::{History, OkValue, OpKind, Outcome, ReplicaState};

/// How often to poll the nodes while waiting.
const POLL: Duration = Duration::from_millis(500);

/// Client id of the final read through node `n`: above every workload client.
const FINAL_READ_CLIENT: u64 = 1_000_000;

/// The result of [`settle`].
#[derive(Clone, Debug)]
pub struct Settled {
    pub ok: bool,
    /// Each answering node's final state (all of them when `ok`).
    pub replicas: Vec<ReplicaState>,
    /// How long settling took, or what was still wrong at the deadline.
    pub detail: String,
}

impl Settled {
    pub fn describe(&self) -> String {
        let verdict = if self.ok { "ok" } else { "FAILED" };
        format!("{verdict}: {}", self.detail)
    }
}

/// Waits until the cluster is ready for the workload: settled, with every node a member.
pub async fn wait_ready(nodes: &[NodeInfo], timeout: Duration) -> anyhow::Result<()> {
    let settled = settle(nodes, timeout, Instant::now()).await;
    anyhow::ensure!(settled.ok, "the cluster did not come up: {}", settled.detail);
    Ok(())
}

/// Polls every node until the cluster is settled or `timeout` passes.
pub async fn settle(nodes: &[NodeInfo], timeout: Duration, run_start: Instant) -> Settled {
    let began = Instant::now();
    let deadline = began + timeout;
    let mut previous: Option<Vec<ReplicaReport>> = None;
    loop {
        let polled = inspect_all(nodes).await;
        let problem = problem(nodes, &polled);
        let reports: Vec<ReplicaReport> =
            polled.iter().filter_map(|r| r.as_ref().ok()).cloned().collect();
        if problem.is_none() {
            // Quiet: the same digests as one poll ago.
            if previous.as_ref().is_some_and(|p| digests(p) == digests(&reports)) {
                let detail = format!(
                    "every node in epoch {} with {} actions applied, {:.1} s after healing \
                     (run time {:.1} s)",
                    reports[0].epoch,
                    reports[0].digest.actions,
                    began.elapsed().as_secs_f64(),
                    run_start.elapsed().as_secs_f64(),
                );
                return Settled { ok: true, replicas: replicas(&reports), detail };
            }
        }
        if Instant::now() >= deadline {
            let problem = problem.unwrap_or_else(|| "the nodes kept applying actions".into());
            let detail = format!("after {} s: {problem}", timeout.as_secs());
            return Settled { ok: false, replicas: replicas(&reports), detail };
        }
        let quiet = problem.is_none();
        previous = quiet.then_some(reports);
        tokio::time::sleep(if quiet { Duration::from_secs(1) } else { POLL }).await;
    }
}

/// What keeps the cluster from being settled, if anything.
fn problem(nodes: &[NodeInfo], polled: &[Result<ReplicaReport, String>]) -> Option<String> {
    let mut problems = Vec::new();
    let all: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();
    let mut epochs = BTreeSet::new();
    let mut digests = BTreeSet::new();
    for (node, result) in nodes.iter().zip(polled) {
        match result {
            Err(e) => problems.push(format!("n{} does not answer ({e})", node.id)),
            Ok(r) => {
                epochs.insert(r.epoch);
                digests.insert(r.digest);
                if !r.member {
                    problems.push(format!(
                        "n{} is not a member of its view (epoch {})",
                        r.node, r.epoch
                    ));
                } else if r.frozen {
                    problems.push(format!("n{} is in a view change", r.node));
                }
                let members: BTreeSet<NodeId> = r.members.iter().copied().collect();
                if members != all {
                    problems
                        .push(format!("n{}'s view {} has members {members:?}", r.node, r.epoch));
                }
            }
        }
    }
    if epochs.len() > 1 {
        problems.push(format!("nodes are in different epochs {epochs:?}"));
    }
    if digests.len() > 1 {
        let shown: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        problems.push(format!("applied digests differ: {}", shown.join(" ")));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn digests(reports: &[ReplicaReport]) -> Vec<(NodeId, strstore_protocol::AppliedDigest)> {
    reports.iter().map(|r| (r.node, r.digest)).collect()
}

fn replicas(reports: &[ReplicaReport]) -> Vec<ReplicaState> {
    reports
        .iter()
        .map(|r| ReplicaState {
            node: r.node,
            string: r.value.to_vec(),
            applied: Vec::new(),
            digest: Some(r.digest),
        })
        .collect()
}

/// A client that talks to `node` only.
fn client_for(node: &NodeInfo, timeout: Duration) -> Option<Client> {
    Client::new(client_config(&[node], timeout, timeout)).ok()
}

async fn inspect_all(nodes: &[NodeInfo]) -> Vec<Result<ReplicaReport, String>> {
    let mut reports = Vec::with_capacity(nodes.len());
    for node in nodes {
        let report = match client_for(node, Duration::from_secs(2)) {
            Some(mut client) => client.inspect().await.map_err(|e| e.to_string()),
            None => Err("bad client configuration".to_string()),
        };
        reports.push(report);
    }
    reports
}

/// The result of [`final_reads`].
#[derive(Clone, Debug)]
pub struct FinalReads {
    pub ok: bool,
    pub detail: String,
}

impl FinalReads {
    pub fn describe(&self) -> String {
        let verdict = if self.ok { "ok" } else { "FAILED" };
        format!("{verdict}: {}", self.detail)
    }
}

/// A linearizable `get` through every node, recorded in the history like any other op, so
/// that the checker also judges what the healed cluster serves.
pub async fn final_reads(nodes: &[NodeInfo], start: Instant, history: &mut History) -> FinalReads {
    let nanos = |at: Instant| at.duration_since(start).as_nanos() as u64;
    let mut failures = Vec::new();
    for node in nodes {
        let client = FINAL_READ_CLIENT + node.id;
        let index = history.invoke(client, OpKind::Get, nanos(Instant::now()), Some(node.id));
        let result = match client_for(node, Duration::from_secs(10)) {
            Some(mut c) => c.get().await.map_err(|e| e.to_string()),
            None => Err("bad client configuration".to_string()),
        };
        match result {
            Ok(value) => {
                history.complete(
                    index,
                    nanos(Instant::now()),
                    Outcome::Ok(OkValue::Value(value.to_vec())),
                );
            }
            Err(e) => failures.push(format!("n{}: {e}", node.id)),
        }
    }
    if failures.is_empty() {
        FinalReads { ok: true, detail: format!("a get through each of the {} nodes", nodes.len()) }
    } else {
        FinalReads { ok: false, detail: failures.join("; ") }
    }
}
