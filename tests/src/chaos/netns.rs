//! The network-namespace backend: each node is a local `strstore-server` process in its own
//! network namespace, with its own address on a private /24. The namespaces hang off a bridge
//! that lives in a namespace of its own (the "switch"), so nothing of the host's firewall
//! (e.g. docker's FORWARD policy) sees their traffic; one more veth pair links the host to the
//! switch, which is how the clients reach the nodes.
//!
//! ```text
//!   host: sc<tag>r 10.77.X.254 ── switch ns: br0 ── sc<tag>n1 ── node ns 1: eth0 10.77.X.1
//!                                               └── sc<tag>n2 ── node ns 2: eth0 10.77.X.2 ...
//! ```
//!
//! Every name carries a random tag, so runs do not collide, and [`Cluster::teardown`] (also run
//! on drop) deletes all of it.

use std::fs::{self, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use rand::Rng;
use strstore_protocol::NodeId;

use super::backend::{cmd, run, NodeInfo};
use super::Args;

const CLIENT_PORT: u16 = 7379;
const PEER_PORT: u16 = 7479;

pub struct Cluster {
    tag: String,
    nodes: Vec<NodeInfo>,
    /// The running server of each node (`None` while killed).
    procs: Vec<Option<Child>>,
    server: PathBuf,
    out: PathBuf,
    peers: String,
    torn_down: bool,
}

impl Cluster {
    pub fn start(args: &Args, out: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            run(cmd("id", &["-u"]))?.trim() == "0",
            "the netns backend creates network namespaces and needs root; run as root or use \
             --backend docker"
        );
        let server = fs::canonicalize(args.bin_dir.join("strstore-server")).with_context(|| {
            format!("no strstore-server in {} (build it first)", args.bin_dir.display())
        })?;
        let mut rng = rand::thread_rng();
        let tag = format!("{:04x}", rng.gen::<u16>());
        let subnet = rng.gen_range(1..=254u8);
        let nodes: Vec<NodeInfo> = (1..=args.nodes)
            .map(|id| {
                let ip = Ipv4Addr::new(10, 77, subnet, id as u8);
                NodeInfo::new(id, ip, CLIENT_PORT, &out.join("tls"))
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}:{PEER_PORT}", n.id, n.ip))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            tag,
            procs: nodes.iter().map(|_| None).collect(),
            nodes,
            server,
            out: out.to_path_buf(),
            peers,
            torn_down: false,
        };
        cluster.create_network(subnet).context("creating the network namespaces")?;
        cluster.make_certs()?;
        for id in 1..=args.nodes {
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    fn switch_ns(&self) -> String {
        format!("strstore-chaos-{}-sw", self.tag)
    }

    fn node_ns(&self, id: NodeId) -> String {
        format!("strstore-chaos-{}-n{id}", self.tag)
    }

    fn host_link(&self) -> String {
        format!("sc{}r", self.tag)
    }

    fn create_network(&mut self, subnet: u8) -> anyhow::Result<()> {
        let sw = self.switch_ns();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let host = self.host_link();
        ip(&["link", "add", &host, "type", "veth", "peer", "name", "uplink", "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", "uplink", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("10.77.{subnet}.254/24"), "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        for node in self.nodes.clone() {
            let ns = self.node_ns(node.id);
            let port = format!("sc{}n{}", self.tag, node.id);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", node.ip), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Where [`NodeInfo::new`] expects the certificates (make_certs also writes client.pem).
    fn tls_dir(&self) -> PathBuf {
        self.out.join("tls")
    }

    fn make_certs(&self) -> anyhow::Result<()> {
        let ids: Vec<String> = self.nodes.iter().map(|n| n.id.to_string()).collect();
        let hosts: Vec<String> = self.nodes.iter().map(|n| n.ip.to_string()).collect();
        let mut command = Command::new(&self.server);
        command.arg("certs").arg("--dir").arg(self.tls_dir());
        command.args(["--nodes", &ids.join(","), "--hosts", &hosts.join(",")]);
        run(command).context("making the cluster's TLS certificates")?;
        Ok(())
    }

    /// Starts node `id`'s server in its namespace, on its data directory, appending to its
    /// log; nothing happens if it runs.
    pub fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        let index = self.index(id)?;
        if self.procs[index].is_some() {
            return Ok(());
        }
        let node = &self.nodes[index];
        let logs = self.out.join("logs");
        fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("n{id}.log"));
        let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.node_ns(id)]).arg(&self.server);
        command.args(["--id", &id.to_string()]);
        command.args(["--listen", &format!("{}:{CLIENT_PORT}", node.ip)]);
        command.args(["--peer-listen", &format!("{}:{PEER_PORT}", node.ip)]);
        command.args(["--peers", &self.peers]);
        command.arg("--data-dir").arg(self.out.join("data").join(format!("n{id}")));
        command.arg("--tls-dir").arg(self.tls_dir());
        command.args(["--client-tls", "--client-auth", "required"]);
        // Read only by servers built with the `failpoints` feature (the slow-disk fault).
        command.env("STRSTORE_FAILPOINTS_FILE", self.failpoints_file(id));
        command.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        // As deployed (deploy/local-cluster.sh, deploy/node.env).
        command.env("MALLOC_MMAP_THRESHOLD_", "1048576");
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // `ip netns exec` execs the server, so this pid is the server's own.
        let child = command.spawn().with_context(|| format!("starting n{id}"))?;
        self.procs[index] = Some(child);
        Ok(())
    }

    fn failpoints_file(&self, id: NodeId) -> PathBuf {
        self.out.join("data").join(format!("n{id}.failpoints"))
    }

    pub fn set_failpoints(&self, id: NodeId, config: &str) -> anyhow::Result<()> {
        let path = self.failpoints_file(id);
        fs::write(&path, config).with_context(|| format!("writing {}", path.display()))
    }

    pub fn node_log(&self, id: NodeId) -> Option<String> {
        fs::read_to_string(self.out.join("logs").join(format!("n{id}.log"))).ok()
    }

    pub fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        let index = self.index(id)?;
        if let Some(mut child) = self.procs[index].take() {
            child.kill().with_context(|| format!("kill -9 n{id}"))?;
            child.wait()?;
        }
        Ok(())
    }

    /// Sends `signal` (STOP, CONT) to node `id`'s server, if it runs.
    pub fn signal(&mut self, id: NodeId, signal: &str) -> anyhow::Result<()> {
        let index = self.index(id)?;
        if let Some(child) = &self.procs[index] {
            run(cmd("kill", &["-s", signal, &child.id().to_string()]))?;
        }
        Ok(())
    }

    /// `ip netns exec <node's namespace>`, ready for the program and its arguments.
    pub fn netns_command(&self, id: NodeId) -> Command {
        cmd("ip", &["netns", "exec", &self.node_ns(id)])
    }

    /// The logs are written in place (`<out>/logs`); nothing to copy.
    pub fn collect_logs(&self, _dir: &Path) {}

    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for id in self.nodes.iter().map(|n| n.id).collect::<Vec<_>>() {
            let _ = self.signal(id, "CONT");
            let _ = self.kill(id);
        }
        for id in self.nodes.iter().map(|n| n.id) {
            let _ = ip(&["netns", "del", &self.node_ns(id)]);
        }
        let _ = ip(&["netns", "del", &self.switch_ns()]);
        // Deleting the switch namespace deletes the host's end of the uplink with it.
        let _ = ip(&["link", "del", &self.host_link()]);
    }

    fn index(&self, id: NodeId) -> anyhow::Result<usize> {
        self.nodes.iter().position(|n| n.id == id).with_context(|| format!("no node n{id}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(cmd("ip", args)).map(drop)
}
