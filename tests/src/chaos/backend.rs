//! Where the nodes run, and the handful of operations the nemesis needs from it: kill and
//! restart a node, pause and resume it, and run a command (nft, tc) inside its network
//! namespace. Both backends give every node its own IP address, so network faults are the same
//! nftables and tc commands on either.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use strstore_client::{ClientConfig, TlsFiles};
use strstore_protocol::NodeId;

use super::{docker, netns, Args, BackendKind};

/// One node as the chaos test sees it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: NodeId,
    /// The node's own address; peers reach each other at it, and network faults match it.
    pub ip: Ipv4Addr,
    /// Where clients connect (`ip:port`).
    pub client_addr: String,
    /// How clients authenticate there: TLS with the cluster's write certificate, as deployed.
    pub client_tls: TlsFiles,
}

impl NodeInfo {
    /// Node `id` at `ip`, its clients on `client_port` over TLS with the CA and the write
    /// certificate (client.pem) that `strstore-server certs` wrote to `tls_dir`.
    pub fn new(id: NodeId, ip: Ipv4Addr, client_port: u16, tls_dir: &Path) -> Self {
        let client_tls = TlsFiles {
            ca: tls_dir.join("ca.pem"),
            identity: Some((tls_dir.join("client.pem"), tls_dir.join("client-key.pem"))),
        };
        Self { id, ip, client_addr: format!("{ip}:{client_port}"), client_tls }
    }
}

/// A client of `nodes`, tried in this order, with one second to connect to each.
pub fn client_config(nodes: &[&NodeInfo], request: Duration, attempt: Duration) -> ClientConfig {
    ClientConfig {
        addrs: nodes.iter().map(|n| n.client_addr.clone()).collect(),
        request_timeout: request,
        attempt_timeout: attempt,
        connect_timeout: Duration::from_secs(1),
        tls: nodes.first().map(|n| n.client_tls.clone()),
        ..Default::default()
    }
}

/// The cluster under test.
pub enum Backend {
    Netns(netns::Cluster),
    Docker(docker::Cluster),
}

impl Backend {
    /// Creates the cluster and starts every node.
    pub fn start(args: &Args, out: &Path) -> anyhow::Result<Self> {
        Ok(match args.backend {
            BackendKind::Netns => Backend::Netns(netns::Cluster::start(args, out)?),
            BackendKind::Docker => Backend::Docker(docker::Cluster::start(args, out)?),
        })
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        match self {
            Backend::Netns(c) => c.nodes(),
            Backend::Docker(c) => c.nodes(),
        }
    }

    /// One line naming the nodes and their addresses, for the report.
    pub fn describe(&self) -> String {
        let nodes: Vec<String> =
            self.nodes().iter().map(|n| format!("n{} at {}", n.id, n.client_addr)).collect();
        nodes.join(", ")
    }

    /// SIGKILL: the node loses everything it had not synced.
    pub fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Netns(c) => c.kill(id),
            Backend::Docker(c) => c.kill(id),
        }
    }

    /// Starts a killed node again on its data directory (no-op if it runs).
    pub fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Netns(c) => c.restart(id),
            Backend::Docker(c) => c.restart(id),
        }
    }

    /// Freezes the node's processes (SIGSTOP, or the cgroup freezer under docker).
    pub fn pause(&mut self, id: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Netns(c) => c.signal(id, "STOP"),
            Backend::Docker(c) => c.docker(&["pause"], id),
        }
    }

    pub fn resume(&mut self, id: NodeId) -> anyhow::Result<()> {
        match self {
            Backend::Netns(c) => c.signal(id, "CONT"),
            Backend::Docker(c) => c.docker(&["unpause"], id),
        }
    }

    /// Runs `program args` in node `id`'s network namespace, feeding it `stdin`.
    pub fn in_netns(
        &self,
        id: NodeId,
        program: &str,
        args: &[&str],
        stdin: &str,
    ) -> anyhow::Result<()> {
        let mut command = match self {
            Backend::Netns(c) => c.netns_command(id),
            Backend::Docker(c) => c.netns_command(id)?,
        };
        command.arg(program).args(args);
        run_with_stdin(command, stdin)
    }

    /// [`Backend::in_netns`] without input, returning what the command printed (`None` when
    /// it failed).
    pub fn in_netns_output(&self, id: NodeId, program: &str, args: &[&str]) -> Option<String> {
        let mut command = match self {
            Backend::Netns(c) => c.netns_command(id),
            Backend::Docker(c) => c.netns_command(id).ok()?,
        };
        command.arg(program).args(args);
        run(command).ok()
    }

    /// Whether nodes read failpoints (the netns backend, whose nodes each watch a file).
    pub fn has_failpoints(&self) -> bool {
        matches!(self, Backend::Netns(_))
    }

    /// Replaces node `id`'s failpoint configuration (see `strstore_server::failpoints`).
    pub fn set_failpoints(&self, id: NodeId, config: &str) -> anyhow::Result<()> {
        match self {
            Backend::Netns(c) => c.set_failpoints(id, config),
            Backend::Docker(_) => anyhow::bail!("the docker backend's nodes have no failpoints"),
        }
    }

    /// What node `id` has logged so far, where the backend can read it at once.
    pub fn node_log(&self, id: NodeId) -> Option<String> {
        match self {
            Backend::Netns(c) => c.node_log(id),
            Backend::Docker(_) => None,
        }
    }

    /// Best effort: resumes every node, restarts dead ones and removes every network fault,
    /// so that the settling phase starts from a whole cluster whatever the nemesis left.
    pub fn heal_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes().iter().map(|n| n.id).collect();
        for id in ids {
            let _ = self.resume(id);
            if let Err(e) = self.restart(id) {
                eprintln!("chaos: restarting n{id} while healing: {e:#}");
            }
            super::faults::clear_network_faults(self, id);
        }
    }

    /// Copies every node's log into `dir` (best effort).
    pub fn collect_logs(&self, dir: &Path) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("chaos: cannot create {}: {e}", dir.display());
            return;
        }
        match self {
            Backend::Netns(c) => c.collect_logs(dir),
            Backend::Docker(c) => c.collect_logs(dir),
        }
    }

    /// Stops the nodes and removes everything the backend created (idempotent).
    pub fn teardown(&mut self) {
        match self {
            Backend::Netns(c) => c.teardown(),
            Backend::Docker(c) => c.teardown(),
        }
    }
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(mut command: Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let output =
        command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {shown}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{shown} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// [`run`] with `input` on the command's stdin.
pub fn run_with_stdin(mut command: Command, input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).with_context(|| format!("writing to {shown}"))?;
    }
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "{shown} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Shorthand: a [`Command`] from a program and its arguments.
pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    command
}
