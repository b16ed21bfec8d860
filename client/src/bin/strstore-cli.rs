//! strstore-cli: runs one command against a strstore cluster and prints the result.
//!
//! Output is meant for scripts: `append` and `set` print the new length, `get` prints the raw
//! string and one newline, and nothing else reaches stdout. Errors go to stderr with a hint,
//! and the exit code says what kind of failure it was (see `--help`).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use strstore_client::args::{parse_addr_list, parse_secs, Addrs};
use strstore_client::{Client, ClientConfig, ClientError, TlsArgs, ADDR_ENV, DEFAULT_ADDR};

/// Exit code for a request the cluster (or this client) refused; nothing was applied.
const EXIT_REJECTED: u8 = 1;
/// Exit code for a bad command line, as clap uses for its own usage errors.
const EXIT_USAGE: u8 = 2;
/// Exit code when the cluster could not be reached or did not answer in time.
const EXIT_UNAVAILABLE: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "strstore-cli",
    version,
    about = "Append to, set or read the string kept by a strstore cluster",
    after_help = "\
VALUE is taken as raw bytes; `-` reads the value from standard input instead (all of it, \
unchanged). A value that starts with `-` goes after `--`, as in `strstore-cli append -- -x`.

TIMEOUTS: --timeout bounds the whole request. The client tries the nodes given with --addr \
in turn (each run starts at the first; a failed node is tried again only after the others), \
and each node gets the time left divided by the number of nodes not yet tried: at least \
0.5 s, at most 5 s, and of that at most 2 s to connect. With --timeout 5 and two nodes, a \
node that accepts the request but never answers costs 2.5 s and the second node still has \
2.5 s. A node that refuses, or whose port is closed, costs only the time it takes to say so. \
The request keeps its identity at every node, so it is applied at most once.

TLS: with --tls-ca the client speaks TLS and checks each node's certificate against that CA \
for the host it dials; nodes started with --client-auth required also need --tls-cert and \
--tls-key. The flags can be set once with STRSTORE_TLS_CA, STRSTORE_TLS_CERT and \
STRSTORE_TLS_KEY.

Exit status: 0 on success; 1 if the request was rejected (for example a value over the \
node's size limit), so nothing was applied; 2 for a usage error or a TLS mismatch with the \
node; 3 if no node could be reached or none answered in time, in which case a write may or \
may not have been applied."
)]
struct Cli {
    /// Nodes to send the request to, comma-separated. Any node can serve any request; if one
    /// fails the request is retried at the next.
    #[arg(
        long,
        short,
        global = true,
        env = ADDR_ENV,
        default_value = DEFAULT_ADDR,
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_parser = parse_addr_list
    )]
    addr: Addrs,

    /// Give up after this many seconds, retries included. Each node gets a share of the time
    /// left (see TIMEOUTS below), so one that takes the request and never answers cannot use
    /// it all up.
    #[arg(
        long,
        global = true,
        default_value = "10",
        value_name = "SECS",
        value_parser = parse_secs
    )]
    timeout: Duration,

    /// Largest reply accepted from a node, in bytes: a `get` of a string longer than this
    /// fails (read it in parts with `get --offset --len`). Raise it for nodes run with a
    /// larger --max-string-bytes.
    #[arg(
        long,
        global = true,
        env = "STRSTORE_MAX_REPLY_BYTES",
        default_value_t = strstore_client::DEFAULT_MAX_REPLY_BYTES,
        value_name = "BYTES"
    )]
    max_reply_bytes: usize,

    #[command(flatten)]
    tls: TlsArgs,

    #[command(subcommand)]
    command: Command,
}

/// One subcommand per request type, and `status`.
#[derive(Subcommand, Debug)]
enum Command {
    /// Append VALUE to the end of the string and print the string's new length.
    Append {
        /// Bytes to append, or `-` to read them from standard input.
        value: OsString,
    },
    /// Replace the whole string with VALUE and print its new length.
    Set {
        /// The new string, or `-` to read it from standard input.
        value: OsString,
    },
    /// Print the whole string, followed by one newline; with --offset/--len only that part.
    /// Either way the read takes effect at one point of the order.
    Get {
        /// First byte to print (0 is the start); past the end, nothing is printed.
        #[arg(long, value_name = "N")]
        offset: Option<u64>,
        /// Most bytes to print (default: up to the end).
        #[arg(long, value_name = "M")]
        len: Option<u64>,
    },
    /// Print the string's length.
    Len,
    /// Print the cluster as the master sees it: epoch, master, and per member its state,
    /// addresses, seconds since its last heartbeat and its health.
    Status {
        /// Print JSON instead of a table, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Ask every node given with --addr for its own replica state: its view, the last action
    /// it applied, the digest of every action it applied, and its string's length. Replicas
    /// that applied the same actions show the same digest. Exits 3 if some node does not
    /// answer.
    Inspect {
        /// Print JSON (one object per node, with the string itself) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

/// Logs go to stderr, and only when asked for, so stdout stays exactly the result.
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(io::stderr)
            .init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = ClientConfig {
        addrs: cli.addr.0,
        request_timeout: cli.timeout,
        max_reply_bytes: cli.max_reply_bytes,
        tls: cli.tls.files()?,
        ..Default::default()
    };
    if let Command::Inspect { json } = cli.command {
        return inspect_all(config, json).await;
    }
    let max_value_bytes = config.max_reply_bytes;
    let mut client = Client::new(config)?;
    let output = match cli.command {
        Command::Append { value } => {
            let len = client.append(read_value(value, max_value_bytes)?).await?;
            format!("{len}\n").into_bytes()
        }
        Command::Set { value } => {
            let len = client.set(read_value(value, max_value_bytes)?).await?;
            format!("{len}\n").into_bytes()
        }
        Command::Get { offset: None, len: None } => {
            let mut value = Vec::from(client.get().await?);
            value.push(b'\n');
            value
        }
        Command::Get { offset, len } => {
            let range = client.get_range(offset.unwrap_or(0), len.unwrap_or(u64::MAX));
            let mut value = Vec::from(range.await?);
            value.push(b'\n');
            value
        }
        Command::Len => format!("{}\n", client.string_len().await?).into_bytes(),
        Command::Status { json: true } => {
            let report = client.status().await?;
            format!("{}\n", serde_json::to_string_pretty(&report)?).into_bytes()
        }
        Command::Status { json: false } => status_table(&client.status().await?).into_bytes(),
        Command::Inspect { .. } => unreachable!("handled above"),
    };
    write_stdout(&output)
}

/// Inspects each address on its own, so that one silent node does not hide the others.
async fn inspect_all(config: ClientConfig, json: bool) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    let mut silent = Vec::new();
    for addr in &config.addrs {
        let one = ClientConfig { addrs: vec![addr.clone()], ..config.clone() };
        match Client::new(one)?.inspect().await {
            Ok(report) => reports.push((addr.clone(), report)),
            Err(error) => silent.push(anyhow::Error::new(error).context(format!("inspect {addr}"))),
        }
    }
    let output = if json {
        let objects: Vec<_> = reports
            .iter()
            .map(|(addr, r)| {
                serde_json::json!({
                    "addr": addr, "node": r.node, "epoch": r.epoch, "master": r.master,
                    "members": r.members, "member": r.member, "frozen": r.frozen,
                    "applied": r.applied, "digest": r.digest,
                    "content": format!("{:016x}", r.content), "limits": r.limits,
                    "len": r.value.len(), "value": String::from_utf8_lossy(&r.value),
                })
            })
            .collect();
        format!("{}\n", serde_json::to_string_pretty(&objects)?)
    } else {
        inspect_table(&reports)
    };
    write_stdout(output.as_bytes())?;
    match silent.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// One line per node; a digest (which actions were applied) or a content hash (the string
/// and exactly-once table they made) that differs between nodes at the same action count is
/// a divergence worth reporting.
fn inspect_table(reports: &[(String, strstore_client::protocol::ReplicaReport)]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<22} {:<5} {:>6} {:<7} {:<8} {:<14} {:>10} {:<16} {:<16} {:>10}\n",
        "ADDR",
        "NODE",
        "EPOCH",
        "MASTER",
        "MEMBER",
        "APPLIED",
        "ACTIONS",
        "DIGEST",
        "CONTENT",
        "LENGTH"
    );
    for (addr, r) in reports {
        let member = match (r.member, r.frozen) {
            (true, false) => "yes",
            (true, true) => "frozen",
            (false, _) => "no",
        };
        let _ = writeln!(
            out,
            "{:<22} {:<5} {:>6} {:<7} {:<8} {:<14} {:>10} {:016x} {:016x} {:>10}",
            addr,
            format!("n{}", r.node),
            r.epoch,
            format!("n{}", r.master),
            member,
            r.applied.to_string(),
            r.digest.actions,
            r.digest.hash,
            r.content,
            r.value.len(),
        );
    }
    out
}

/// The status report as a table for people.
fn status_table(report: &strstore_client::protocol::ClusterReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "epoch {}  master n{}  (reported by n{}",
        report.epoch, report.master, report.reporter
    );
    if !report.reporter_is_member {
        out.push_str(", which is not a member of this view");
    }
    out.push_str(")\n");
    let _ = writeln!(
        out,
        "{:<5} {:<8} {:<22} {:<22} {:>8} {:>6} {:>6} {:>9} {:>9} {:>8} {:>9}",
        "ID",
        "STATE",
        "PEER ADDR",
        "CLIENT ADDR",
        "HEARD",
        "CPU%",
        "MEM%",
        "RSS",
        "DISK",
        "LOG",
        "APPLIED"
    );
    for m in &report.members {
        let h = &m.health;
        let _ = writeln!(
            out,
            "{:<5} {:<8} {:<22} {:<22} {:>7.1}s {:>6.1} {:>6.1} {:>9} {:>9} {:>8} {:>9}",
            format!("n{}", m.member.id),
            format!("{:?}", m.state).to_lowercase(),
            if m.member.peer_addr.is_empty() { "-" } else { &m.member.peer_addr },
            if m.member.client_addr.is_empty() { "-" } else { &m.member.client_addr },
            m.last_heard_ms as f64 / 1000.0,
            h.cpu_permille as f64 / 10.0,
            h.mem_permille as f64 / 10.0,
            human_bytes(h.rss_bytes),
            human_bytes(h.disk_bytes),
            h.log_len,
            h.applied,
        );
    }
    out
}

fn human_bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n}B"),
        10_000..=9_999_999 => format!("{}KiB", n >> 10),
        _ => format!("{}MiB", n >> 20),
    }
}

/// The bytes of VALUE, or of standard input for `-`, refusing more than `max` bytes.
fn read_value(value: OsString, max: usize) -> anyhow::Result<Bytes> {
    if value != "-" {
        return Ok(Bytes::from(value.into_encoded_bytes()));
    }
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    io::stdin()
        .lock()
        .take(limit)
        .read_to_end(&mut buf)
        .context("cannot read the value from standard input")?;
    if buf.len() > max {
        anyhow::bail!("standard input holds more than {max} bytes, more than any node accepts");
    }
    Ok(Bytes::from(buf))
}

/// Writes the result; a reader that went away early (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    let client_error = error.downcast_ref::<ClientError>();
    if let Some(hint) = client_error.and_then(hint) {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(match client_error {
        Some(e) if e.is_unavailable() => EXIT_UNAVAILABLE,
        Some(ClientError::Config(_) | ClientError::Tls(_)) => EXIT_USAGE,
        _ => EXIT_REJECTED,
    })
}

fn hint(error: &ClientError) -> Option<&'static str> {
    Some(match error {
        ClientError::NoNodeReachable { request_sent: false, .. } => {
            "start the cluster, or point --addr (or STRSTORE_ADDR) at running nodes; \
             nothing was applied"
        }
        ClientError::NoNodeReachable { request_sent: true, .. } => {
            "the request reached a node before the cluster became unreachable, so it may or may \
             not have been applied; run `get` to check before retrying"
        }
        ClientError::Unavailable { request_sent: false, .. } => {
            "the nodes are up but cannot serve now (no quorum, a view change, or overload); \
             nothing was applied; see `strstore-cli status`"
        }
        ClientError::Unavailable { request_sent: true, .. } => {
            "the nodes are up but cannot serve now; an earlier attempt reached a node, so the \
             request may or may not have been applied: run `get` to check before retrying"
        }
        ClientError::Timeout { .. } => {
            "the cluster may be partitioned or overloaded; run `get` to check whether the request \
             was applied before retrying, or raise --timeout"
        }
        ClientError::RequestTooLarge { .. } => "split the value into several appends",
        ClientError::Protocol(_) => {
            "the node may run another strstore version than this client; the request may or may \
             not have been applied"
        }
        ClientError::Server(_) | ClientError::Config(_) | ClientError::Tls(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_timeouts_the_help_names_are_the_library_defaults() {
        use strstore_client::config::{
            DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, MIN_ATTEMPT_TIMEOUT,
        };
        let help = Cli::command().render_long_help().to_string();
        let named = [
            (MIN_ATTEMPT_TIMEOUT, "at least 0.5 s"),
            (DEFAULT_ATTEMPT_TIMEOUT, "at most 5 s"),
            (DEFAULT_CONNECT_TIMEOUT, "at most 2 s to connect"),
        ];
        for (value, words) in named {
            let secs = value.as_secs_f64();
            assert!(words.contains(&format!("{secs} s")), "{words:?} is not {value:?}");
            assert!(help.contains(words), "the help no longer says {words:?}");
        }
    }

    #[test]
    fn seconds_must_be_positive_numbers() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "nan", "inf", "ten"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_codes_follow_the_failure_kind() {
        let unreachable = ClientError::NoNodeReachable {
            addrs: DEFAULT_ADDR.into(),
            last_error: "connection refused".into(),
            request_sent: false,
        };
        assert_eq!(report(&unreachable.into()), ExitCode::from(EXIT_UNAVAILABLE));
        let too_large =
            ClientError::Server(strstore_protocol::Error::ValueTooLarge { size: 2, max: 1 });
        assert_eq!(report(&too_large.into()), ExitCode::from(EXIT_REJECTED));
    }
}
