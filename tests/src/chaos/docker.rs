//! The docker-compose backend: the cluster of `deploy/docker-compose.yml`, started by
//! `deploy/cluster.sh up` under a compose project, network and volumes of its own. Faults use
//! `docker kill -s KILL` / `docker start`, `docker pause` / `unpause`, and nftables and tc run
//! in a container's network namespace with `nsenter` (the image has neither tool, and needs
//! none). Clients talk to the containers' own addresses, as the peers do, over TLS with the
//! write certificate cluster.sh made (the deployment's default).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use rand::Rng;
use strstore_protocol::NodeId;

use super::backend::{cmd, run, NodeInfo};
use super::Args;

/// The image `deploy/cluster.sh build` makes.
const IMAGE: &str = "strstore:latest";

pub struct Cluster {
    cluster_sh: PathBuf,
    env: Vec<(String, String)>,
    nodes: Vec<NodeInfo>,
    containers: Vec<String>,
    torn_down: bool,
}

impl Cluster {
    pub fn start(args: &Args, out: &Path) -> anyhow::Result<Self> {
        run(cmd("docker", &["info"])).context("docker is not usable here")?;
        run(cmd("docker", &["image", "inspect", IMAGE]))
            .with_context(|| format!("image {IMAGE} is missing: run deploy/cluster.sh build"))?;
        let cluster_sh = std::fs::canonicalize(args.deploy_dir.join("cluster.sh"))
            .with_context(|| format!("no cluster.sh in {}", args.deploy_dir.display()))?;
        let target = std::fs::canonicalize(&args.bin_dir)?
            .parent()
            .context("--bin-dir must be <target>/release")?
            .to_path_buf();
        // cluster.sh writes the CA, node certificates naming each node's address on `net`,
        // and client.pem there.
        let tls_dir = out.join("tls");
        let mut rng = rand::thread_rng();
        let net = format!("172.30.{}", rng.gen_range(100..250u8));
        let mut env = vec![
            ("COMPOSE_PROJECT_NAME".into(), format!("strstore-chaos-{:04x}", rng.gen::<u16>())),
            ("STRSTORE_NET".into(), net.clone()),
            ("STRSTORE_NODES".into(), args.nodes.to_string()),
            ("STRSTORE_TLS_HOST_DIR".into(), tls_dir.display().to_string()),
            ("CARGO_TARGET_DIR".into(), target.display().to_string()),
        ];
        for id in 1..=args.nodes {
            env.push((
                format!("STRSTORE_PORT_{id}"),
                crate::cluster::free_addr().port().to_string(),
            ));
        }
        let mut cluster = Cluster {
            cluster_sh,
            env,
            nodes: Vec::new(),
            containers: Vec::new(),
            torn_down: false,
        };
        cluster.cluster(&["up"]).context("deploy/cluster.sh up")?;
        for id in 1..=args.nodes {
            let container = cluster.cluster(&["compose", "ps", "-q", &format!("node{id}")])?;
            let container = container.trim().to_string();
            anyhow::ensure!(!container.is_empty(), "no container for node{id}");
            cluster.containers.push(container);
            let ip: Ipv4Addr = format!("{net}.{}", 10 + id).parse()?;
            cluster.nodes.push(NodeInfo::new(id, ip, 7379, &tls_dir));
        }
        Ok(cluster)
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    fn cluster(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(&self.cluster_sh);
        command.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        run(command)
    }

    fn container(&self, id: NodeId) -> anyhow::Result<&str> {
        let index = self.nodes.iter().position(|n| n.id == id).context("no such node")?;
        Ok(&self.containers[index])
    }

    /// `docker <args> <node id's container>`.
    pub fn docker(&self, args: &[&str], id: NodeId) -> anyhow::Result<()> {
        let mut command = cmd("docker", args);
        command.arg(self.container(id)?);
        run(command).map(drop)
    }

    pub fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        if self.running(id)? {
            self.docker(&["kill", "-s", "KILL"], id)?;
        }
        Ok(())
    }

    /// `docker start` (the restart policy may have restarted it already; that is fine).
    pub fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        self.docker(&["start"], id)
    }

    fn running(&self, id: NodeId) -> anyhow::Result<bool> {
        let mut command = cmd("docker", &["inspect", "-f", "{{.State.Running}}"]);
        command.arg(self.container(id)?);
        Ok(run(command)?.trim() == "true")
    }

    /// `nsenter` into the container's network namespace (its pid changes with every start).
    pub fn netns_command(&self, id: NodeId) -> anyhow::Result<Command> {
        let mut command = cmd("docker", &["inspect", "-f", "{{.State.Pid}}"]);
        command.arg(self.container(id)?);
        let pid = run(command)?.trim().to_string();
        anyhow::ensure!(pid != "0", "n{id}'s container is not running");
        Ok(cmd("nsenter", &["-t", &pid, "-n"]))
    }

    pub fn collect_logs(&self, dir: &Path) {
        for (node, container) in self.nodes.iter().zip(&self.containers) {
            let output = Command::new("docker").args(["logs", container]).output();
            match output {
                Ok(output) => {
                    let mut log = output.stdout;
                    log.extend_from_slice(&output.stderr);
                    let _ = std::fs::write(dir.join(format!("n{}.log", node.id)), log);
                }
                Err(e) => eprintln!("chaos: docker logs for n{}: {e}", node.id),
            }
        }
    }

    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        if let Err(e) = self.cluster(&["down", "-v", "--remove-orphans"]) {
            eprintln!("chaos: removing the compose project failed: {e:#}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
