//! strstore-bench: a closed-loop load generator for a running strstore cluster.
//!
//! Each of `--clients` sessions sends one request, waits for its answer and sends the next:
//! no pipelining and no batching on the client side, so throughput is what the cluster
//! sustains at that concurrency and latency is what one caller sees. Requests started in
//! the first `--warmup` seconds (connecting, caches) are left out of the statistics. Errors
//! are counted, not retried beyond the library's normal retry of a request.

use std::io::{self, IsTerminal};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use strstore_client::args::{parse_addr_list, parse_secs, parse_secs_or_zero, Addrs};
use strstore_client::{Client, ClientConfig, Op, TlsArgs, ADDR_ENV, DEFAULT_ADDR};
use tokio::time::Instant;

/// Most sessions one run opens: each holds a connection, and nodes limit those too.
const MAX_CLIENTS: u32 = 1024;
/// Largest value the generator sends: a node's default value limit is 1 MiB, and anything
/// larger only measures the rejection path.
const MAX_VALUE_BYTES: usize = 1 << 20;
/// Highest latency the histogram tracks, in microseconds (a minute: beyond any request
/// timeout); higher samples are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;
/// How often the progress bar refreshes.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Parser, Debug)]
#[command(
    name = "strstore-bench",
    version,
    about = "Closed-loop benchmark against a running strstore cluster",
    long_about = "Closed-loop benchmark against a running strstore cluster. Each client sends \
        one request, waits for the reply, then sends the next; client i talks to node \
        i mod N first. Prints throughput and latency percentiles (microseconds)."
)]
struct Args {
    /// Nodes to load, comma-separated. Clients are spread over them round robin.
    #[arg(
        long,
        short,
        env = ADDR_ENV,
        default_value = DEFAULT_ADDR,
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_parser = parse_addr_list
    )]
    addr: Addrs,

    /// Concurrent clients, each with its own connection and one request in flight.
    #[arg(
        long,
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CLIENTS))
    )]
    clients: u32,

    /// What each request does: append, get, or mix (90% append, 10% get). Note that a get
    /// returns the whole string, so under `mix` gets grow costlier as the string grows.
    #[arg(long, value_enum, default_value_t = Workload::Append)]
    workload: Workload,

    /// Size of each appended value in bytes; values differ per client and request.
    #[arg(long, default_value_t = 16, value_parser = parse_value_bytes)]
    value_bytes: usize,

    /// Stop after this many measured requests in total (instead of after --duration).
    #[arg(long, conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    ops: Option<u64>,

    /// Seconds to measure for, after the warmup.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    duration: Duration,

    /// Seconds to run before measuring; requests started in it are not counted.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = parse_secs_or_zero)]
    warmup: Duration,

    /// Per-request deadline in seconds, the library's retries included.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    timeout: Duration,

    /// Print one JSON object with the results on stdout, and nothing else.
    #[arg(long)]
    json: bool,

    /// A free-form label copied into the JSON results (e.g. `string=1MiB`), so that a script
    /// running several configurations can tell the results apart.
    #[arg(long, default_value = "")]
    tag: String,

    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    Append,
    Get,
    Mix,
}

impl Workload {
    /// The `n`th request of client `client`.
    fn op(self, rng: &mut StdRng, client: usize, n: u64, value_bytes: usize) -> Op {
        let append = match self {
            Workload::Append => true,
            Workload::Get => false,
            Workload::Mix => rng.gen_bool(0.9),
        };
        if append {
            Op::Append(payload(client, n, value_bytes))
        } else {
            Op::Get
        }
    }
}

/// `len` bytes that name the client and request (`c3.17;c3.17;c…`), so a dumped string shows
/// who wrote what.
fn payload(client: usize, n: u64, len: usize) -> Bytes {
    let tag = format!("c{client}.{n};");
    tag.bytes().cycle().take(len).collect::<Vec<u8>>().into()
}

fn parse_value_bytes(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_VALUE_BYTES).contains(&n) => Ok(n),
        _ => Err(format!("must be a number of bytes from 1 to {MAX_VALUE_BYTES}")),
    }
}

/// When measuring starts and what ends it.
struct Plan {
    started: Instant,
    measure_from: Instant,
    /// End of the run in `--duration` mode.
    until: Option<Instant>,
    /// Total measured requests in `--ops` mode.
    ops: Option<u64>,
}

/// Counters every client updates, read by the progress bar and by Ctrl-C.
#[derive(Default)]
struct Shared {
    /// Measured requests handed out so far (`--ops` mode).
    claimed: AtomicU64,
    /// Measured requests that succeeded / failed.
    ok: AtomicU64,
    errors: AtomicU64,
    /// Set on Ctrl-C: clients finish their request in flight and stop.
    stop: AtomicBool,
}

impl Plan {
    /// Whether a client may start another measured request.
    fn claim(&self, shared: &Shared) -> bool {
        if self.until.is_some_and(|until| Instant::now() >= until) {
            return false;
        }
        self.ops.is_none_or(|ops| shared.claimed.fetch_add(1, Relaxed) < ops)
    }
}

/// What one client measured.
struct ClientStats {
    latency_us: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// One closed loop: send, wait, record, repeat.
async fn run_client(
    index: usize,
    mut client: Client,
    args: Arc<Args>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
) -> ClientStats {
    let mut rng = StdRng::seed_from_u64(index as u64);
    let mut stats = ClientStats { latency_us: new_histogram(), errors: 0, first_error: None };
    for n in 0.. {
        let measured = Instant::now() >= plan.measure_from;
        if shared.stop.load(Relaxed) || measured && !plan.claim(&shared) {
            break;
        }
        let op = args.workload.op(&mut rng, index, n, args.value_bytes);
        let sent = Instant::now();
        let result = client.execute(op).await;
        let latency_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        if !measured {
            continue;
        }
        match result {
            Ok(_) => {
                stats.latency_us.saturating_record(latency_us.max(1));
                shared.ok.fetch_add(1, Relaxed);
            }
            Err(error) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| error.to_string());
                shared.errors.fetch_add(1, Relaxed);
            }
        }
    }
    stats
}

/// The results, printed as JSON or as text.
#[derive(Serialize)]
struct Report {
    workload: Workload,
    clients: u32,
    nodes: usize,
    /// Measured requests that succeeded.
    ops: u64,
    /// Measured requests that failed.
    errors: u64,
    elapsed_s: f64,
    ops_per_sec: f64,
    latency_us: Latency,
    first_error: Option<String>,
    /// What was measured: the cluster's size and settings, as its status reported them.
    cluster: Option<ClusterInfo>,
    /// `--tag`.
    tag: String,
}

/// The cluster under test, from its status: a figure means little without these.
#[derive(Serialize)]
struct ClusterInfo {
    members: usize,
    epoch: u64,
    /// The settings of the node that answered (every node of a deployment runs the same).
    settings: strstore_client::protocol::NodeSettings,
}

/// Asks the cluster for its size and settings before loading it.
async fn cluster_info(args: &Args) -> anyhow::Result<ClusterInfo> {
    let config = ClientConfig {
        addrs: args.addr.0.clone(),
        request_timeout: args.timeout,
        tls: args.tls.files()?,
        ..Default::default()
    };
    let report = Client::new(config)?.status().await.context("cannot get the cluster's status")?;
    Ok(ClusterInfo {
        members: report.members.len(),
        epoch: report.epoch,
        settings: report.settings,
    })
}

#[derive(Serialize)]
struct Latency {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

// One thread drives every client: the generator shares the machine with the nodes it loads,
// and a multi-threaded runtime would spend the cores on cross-thread wake-ups instead.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Arc::new(Args::parse());
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(io::stderr)
            .init();
    }
    match bench(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark and prints the report; fails if not a single request succeeded.
async fn bench(args: Arc<Args>) -> anyhow::Result<()> {
    let cluster = cluster_info(&args).await?;
    if !args.json {
        print_header(&args, &cluster);
    }
    let mut report = run(args.clone()).await?;
    report.cluster = Some(cluster);
    if args.json {
        println!("{}", serde_json::to_string(&report).context("cannot encode the report")?);
    } else {
        print_report(&report);
    }
    if report.ops == 0 && report.errors > 0 {
        anyhow::bail!("no request succeeded; is the cluster up?");
    }
    Ok(())
}

/// Starts the clients, waits for them and merges what they measured.
async fn run(args: Arc<Args>) -> anyhow::Result<Report> {
    let addrs = &args.addr.0;
    let tls = args.tls.files()?;
    let clients: Vec<Client> = (0..args.clients as usize)
        .map(|i| {
            // Client i starts at node i mod N; the rest of the list is its fallback order.
            let mut addrs = addrs.clone();
            let first = i % addrs.len();
            addrs.rotate_left(first);
            let tls = tls.clone();
            let config =
                ClientConfig { addrs, request_timeout: args.timeout, tls, ..Default::default() };
            Client::new(config)
        })
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let measure_from = started + args.warmup;
    let until = args.ops.is_none().then(|| measure_from + args.duration);
    let plan = Arc::new(Plan { started, measure_from, until, ops: args.ops });
    let shared = Arc::new(Shared::default());
    let stopper = shared.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stopper.stop.store(true, Relaxed);
        }
    });
    let progress = io::stderr().is_terminal().then(|| spawn_progress(plan.clone(), shared.clone()));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(run_client(i, client, args.clone(), plan.clone(), shared.clone()))
        })
        .collect();
    let mut latency_us = new_histogram();
    let (mut errors, mut first_error) = (0, None);
    for task in tasks {
        let stats = task.await.context("a client task panicked")?;
        latency_us.add(&stats.latency_us).expect("histograms share bounds");
        errors += stats.errors;
        first_error = first_error.or(stats.first_error);
    }
    let elapsed_s = Instant::now().saturating_duration_since(plan.measure_from).as_secs_f64();
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    let ops = latency_us.len();
    Ok(Report {
        workload: args.workload,
        clients: args.clients,
        nodes: addrs.len(),
        ops,
        errors,
        elapsed_s,
        ops_per_sec: if elapsed_s > 0.0 { ops as f64 / elapsed_s } else { 0.0 },
        latency_us: Latency::of(&latency_us),
        first_error,
        cluster: None,
        tag: args.tag.clone(),
    })
}

/// A progress bar on stderr (only called when stderr is a terminal): time for `--duration`
/// runs, requests for `--ops` runs.
fn spawn_progress(
    plan: Arc<Plan>,
    shared: Arc<Shared>,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let (len, template) = match (plan.ops, plan.until) {
        (Some(ops), _) => (ops, "{bar:40} {pos}/{len} requests  {msg}"),
        (None, Some(until)) => {
            let total = until.duration_since(plan.started).as_millis();
            (u64::try_from(total).unwrap_or(u64::MAX), "{bar:40} {elapsed}  {msg}")
        }
        (None, None) => unreachable!("a run ends by time or by count"),
    };
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("valid progress template"));
    let updater = bar.clone();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        loop {
            ticker.tick().await;
            let (ok, errors) = (shared.ok.load(Relaxed), shared.errors.load(Relaxed));
            let now = Instant::now();
            let position = match plan.ops {
                Some(_) => ok + errors,
                None => {
                    u64::try_from(now.duration_since(plan.started).as_millis()).unwrap_or(u64::MAX)
                }
            };
            updater.set_position(position);
            if now < plan.measure_from {
                updater.set_message("warming up");
            } else {
                updater.set_message(format!("{ok} ok, {errors} errors"));
            }
        }
    });
    (bar, task)
}

fn print_header(args: &Args, cluster: &ClusterInfo) {
    let stop = match args.ops {
        Some(ops) => format!("{ops} requests"),
        None => format!("{:.1} s", args.duration.as_secs_f64()),
    };
    let workload = args.workload.to_possible_value().expect("no skipped variants");
    println!("strstore-bench: {} against {}", workload.get_name(), args.addr.0.join(","));
    println!(
        "  {} clients, {}-byte values, warmup {:.1} s, then {stop}",
        args.clients,
        args.value_bytes,
        args.warmup.as_secs_f64()
    );
    let s = &cluster.settings;
    let yes_no = |on: bool, yes: &'static str, no: &'static str| if on { yes } else { no };
    println!(
        "  cluster: {} members (epoch {}); peers {}; clients {}; log fsync before ack: {}; \
         window {}, snapshot every {}",
        cluster.members,
        cluster.epoch,
        yes_no(s.peer_tls, "over mutual TLS", "in plaintext"),
        match (s.client_tls, s.client_auth) {
            (false, _) => "in plaintext",
            (true, false) => "over TLS",
            (true, true) => "over mutual TLS",
        },
        yes_no(s.fsync, "yes", "NO"),
        s.window,
        s.snapshot_every,
    );
}

fn print_report(r: &Report) {
    let l = &r.latency_us;
    println!("  requests:   {} ok, {} errors in {:.2} s", r.ops, r.errors, r.elapsed_s);
    println!("  throughput: {:.1} ops/s", r.ops_per_sec);
    println!(
        "  latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    );
    if let Some(error) = &r.first_error {
        println!("  first error: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn payload_has_the_requested_size_and_names_its_writer() {
        assert_eq!(&payload(3, 17, 16)[..], b"c3.17;c3.17;c3.1");
        assert_eq!(payload(1, 1, 1).len(), 1);
    }

    #[test]
    fn ops_mode_hands_out_exactly_the_requested_count() {
        let now = Instant::now();
        let plan = Plan { started: now, measure_from: now, until: None, ops: Some(3) };
        let shared = Shared::default();
        let granted = (0..10).filter(|_| plan.claim(&shared)).count();
        assert_eq!(granted, 3);
    }
}
