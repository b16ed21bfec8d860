//! The Jepsen-style chaos test: concurrent clients run a workload against a real cluster while a
//! nemesis injects faults; then the faults are healed, the cluster is given time to settle,
//! and the history and the replicas' final states are judged by [`crate::checker`].
//!
//! Entry point: `deploy/chaos.sh` (which builds and runs the `strstore-chaos` binary).
//!
//! Layout:
//! - [`backend`]: where the nodes run and how a fault reaches them: local processes in network
//!   namespaces ([`netns`]) or the docker-compose cluster ([`docker`]).
//! - [`nemesis`]: the faults (kill, pause, partition, loss, slow), drawn from the seed, each
//!   applied, held and healed in turn.
//! - [`workload`]: the clients and the history they record.
//! - [`settle`]: after the run, wait until every node is back in one view with the same applied
//!   digest, read each node's final state and do a final read through each node.
//! - [`stats`], [`timeline`]: the summary and the timeline picture.

pub mod backend;
pub mod docker;
pub mod faults;
pub mod nemesis;
pub mod netns;
pub mod settle;
pub mod stats;
pub mod timeline;
pub mod workload;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::checker::{self, History, ReplicaState};
use backend::Backend;
use nemesis::{NemesisKind, NemesisPlan};
use stats::FaultWindow;

/// Which cluster the chaos test drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
pub enum BackendKind {
    /// The docker-compose cluster of `deploy/` (faults with docker kill/pause and nftables
    /// entered with nsenter).
    Docker,
    /// Local processes, each in its own network namespace joined by a bridge (needs root).
    Netns,
}

/// `strstore-chaos`: run a workload under faults and check the history.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "strstore-chaos",
    about = "Jepsen-style chaos test for strstore: clients, a nemesis, and a history checker",
    long_about = "Starts a cluster (docker-compose or network namespaces), runs concurrent \
                  clients that append unique tokens, set and get, while a nemesis kills, \
                  pauses, partitions and degrades nodes. Then heals every fault, waits for the \
                  cluster to settle and checks that the history is linearizable, that no \
                  acknowledged write was lost or duplicated, and that every node holds the \
                  same string and applied the same actions. Exit code 0 if and only if every \
                  check holds; 1 if a check failed; 2 if the test could not run."
)]
pub struct Args {
    /// Where the nodes run.
    #[arg(long, value_enum, default_value = "netns")]
    pub backend: BackendKind,
    /// Seconds of workload under faults (the settling afterwards comes on top).
    #[arg(long, default_value = "60")]
    pub duration: u64,
    /// Which faults to inject.
    #[arg(long, value_enum, default_value = "mix")]
    pub nemesis: NemesisKind,
    /// Seed for the fault schedule and the clients' choices (the run itself still depends on
    /// timing; the seed makes the plan repeatable).
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Directory for the report: summary.txt, history.jsonl, replicas.jsonl, faults.jsonl,
    /// timeline.svg and the nodes' logs. Created if missing.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of nodes (3 or 5).
    #[arg(long, default_value = "3")]
    pub nodes: u64,
    /// Concurrent clients (spread over the nodes; at least 5).
    #[arg(long, default_value = "6")]
    pub clients: u64,
    /// Seconds a client waits for an answer before recording the op as unknown.
    #[arg(long, default_value = "5")]
    pub op_timeout: u64,
    /// Milliseconds a client waits between two ops (keeps histories checkable and small).
    #[arg(long, default_value = "10")]
    pub think_ms: u64,
    /// Seconds the cluster gets, after healing, to bring every node back into one view with
    /// the same applied actions.
    #[arg(long, default_value = "120")]
    pub settle_timeout: u64,
    /// Directory holding strstore-server (and, for docker, the image built from it).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// The deploy/ directory (docker backend: cluster.sh and the compose files).
    #[arg(long, default_value = "deploy")]
    pub deploy_dir: PathBuf,
}

/// What one run found; `passed` decides the exit code.
#[derive(Debug)]
pub struct Outcome {
    pub passed: bool,
    pub summary: String,
}

/// Runs the whole test. `Err` means the test could not run (setup failed), not that a check
/// failed.
pub fn run(args: &Args) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.clients >= 5, "--clients must be at least 5");
    anyhow::ensure!(matches!(args.nodes, 3 | 5), "--nodes must be 3 or 5");
    // Shorter runs leave no room for a fault between the calm lead-in and tail.
    anyhow::ensure!(args.duration >= 15, "--duration must be at least 15 seconds");
    anyhow::ensure!(args.op_timeout >= 1, "--op-timeout must be at least 1 second");
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output directory {}", args.out.display()))?;
    let out = fs::canonicalize(&args.out)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;

    println!(
        "chaos: starting a {}-node {:?} cluster (seed {})",
        args.nodes, args.backend, args.seed
    );
    let mut backend = Backend::start(args, &out)?;
    let result = run_on(args, &out, &mut backend, &runtime);
    backend.collect_logs(&out.join("logs"));
    backend.teardown();
    result
}

fn run_on(
    args: &Args,
    out: &Path,
    backend: &mut Backend,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Outcome> {
    let nodes = backend.nodes().to_vec();
    runtime.block_on(settle::wait_ready(&nodes, Duration::from_secs(90)))?;
    println!("chaos: cluster ready; running the workload for {} s", args.duration);

    let start = Instant::now();
    let duration = Duration::from_secs(args.duration);
    let plan =
        NemesisPlan::new(args.nemesis, args.seed, &nodes, duration, backend.has_failpoints());
    let kinds = plan.kind_names();
    // Set when the workload is over, or at Ctrl-C: the nemesis and the clients stop, and the
    // cluster is healed and removed as after any run.
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let watcher = runtime.spawn({
        let (stop, interrupted) = (stop.clone(), interrupted.clone());
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("chaos: interrupted; healing and removing the cluster");
                interrupted.store(true, Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
            }
        }
    });
    let workload = workload::Config::new(args, &nodes);
    let (history, faults) = std::thread::scope(|scope| {
        let nemesis = scope.spawn(|| plan.run(backend, start, &stop));
        let until = start + duration;
        let history = runtime.block_on(workload::run(workload, start, until, stop.clone()));
        stop.store(true, Ordering::SeqCst);
        let faults = nemesis.join().expect("the nemesis thread panicked");
        (history, faults)
    });
    watcher.abort();
    let faults = faults?;
    if interrupted.load(Ordering::SeqCst) {
        backend.heal_all();
        anyhow::bail!("interrupted after {} ops", history.len());
    }
    let run_end = start.elapsed().as_nanos() as u64;
    println!("chaos: workload done ({} ops); healing and settling", history.len());

    backend.heal_all();
    let settle_timeout = Duration::from_secs(args.settle_timeout);
    let settled = runtime.block_on(settle::settle(&nodes, settle_timeout, start));
    let mut history = history;
    let final_reads = runtime.block_on(settle::final_reads(&nodes, start, &mut history));
    // The final states are taken after the final reads, so that they are the end of the
    // history the checker linearizes.
    let after = runtime.block_on(settle::settle(&nodes, settle_timeout, start));
    let replicas = after.replicas.clone();
    write_files(out, &history, &replicas, &faults, run_end)?;

    let report = checker::check(&history, &replicas);
    let summary = stats::summarize(&history, &faults, run_end);
    let mut text = header(args, backend);
    let _ = writeln!(text, "\n{summary}");
    let _ = writeln!(text, "faults injected:");
    write_faults(&mut text, &faults, &kinds);
    let _ = writeln!(text, "\nsettling: {}", settled.describe());
    if !after.ok {
        let _ = writeln!(text, "settling after the final reads: {}", after.describe());
    }
    let _ = writeln!(text, "final reads: {}", final_reads.describe());
    let _ = writeln!(text, "checker: {report}");
    // A run in which no client ever succeeded proves nothing, and means the cluster never
    // served: that is a failure, not a pass.
    let served = history
        .ops
        .iter()
        .any(|op| op.client <= args.clients && matches!(op.outcome, checker::Outcome::Ok(_)));
    if !served {
        let _ = writeln!(text, "workload: FAILED: no client op succeeded");
    }
    // A history no complete layer of the checker decided was not judged: not a pass.
    let sound = served && report.is_ok() && settled.ok && after.ok && final_reads.ok;
    let passed = sound && !report.inconclusive;
    let verdict = match (passed, sound) {
        (true, _) => "PASS",
        (false, true) => "INCONCLUSIVE (the checker could not decide the history)",
        (false, false) => "FAIL",
    };
    let _ = writeln!(text, "\nverdict: {verdict}: see {}", out.display());
    fs::write(out.join("summary.txt"), &text)?;
    fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    Ok(Outcome { passed, summary: text })
}

/// The faults injected, each with what showed it acted, and any kind this run named but
/// never dealt (a run too short for all of them).
fn write_faults(text: &mut String, faults: &[FaultWindow], kinds: &[&str]) {
    for fault in faults {
        let (from, to) = (fault.start as f64 / 1e9, fault.end as f64 / 1e9);
        let _ = writeln!(text, "  {from:7.1}s - {to:7.1}s  {:<9} {}", fault.kind, fault.label);
        let effect = if fault.effect.is_empty() { "NO EFFECT SEEN" } else { &fault.effect };
        let _ = writeln!(text, "  {:21}{effect}", "");
    }
    let silent = faults.iter().filter(|f| f.effect.is_empty()).count();
    let missed: Vec<&str> =
        kinds.iter().copied().filter(|k| !faults.iter().any(|f| f.kind == *k)).collect();
    let _ = writeln!(
        text,
        "every fault kind injected: {}; faults without a visible effect: {silent}",
        if missed.is_empty() {
            "yes".to_string()
        } else {
            format!("no, missing {}", missed.join(", "))
        }
    );
}

fn header(args: &Args, backend: &Backend) -> String {
    format!(
        "strstore chaos test: backend {:?}, {} nodes, {} clients, nemesis {:?}, seed {}, \
         {} s of workload, op timeout {} s\nnodes: {}",
        args.backend,
        args.nodes,
        args.clients,
        args.nemesis,
        args.seed,
        args.duration,
        args.op_timeout,
        backend.describe(),
    )
}

fn write_files(
    out: &Path,
    history: &History,
    replicas: &[ReplicaState],
    faults: &[FaultWindow],
    run_end: u64,
) -> anyhow::Result<()> {
    let create = |name: &str| {
        let path = out.join(name);
        fs::File::create(&path)
            .map(std::io::BufWriter::new)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    history.write_jsonl(create("history.jsonl")?)?;
    ReplicaState::write_jsonl(replicas, create("replicas.jsonl")?)?;
    let mut lines = String::new();
    for fault in faults {
        lines.push_str(&serde_json::to_string(fault)?);
        lines.push('\n');
    }
    fs::write(out.join("faults.jsonl"), lines)?;
    fs::write(out.join("timeline.svg"), timeline::render_svg(history, faults, run_end))?;
    Ok(())
}
