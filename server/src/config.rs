//! Command-line configuration of a node, with defaults in one place and a `validate` that
//! says exactly what is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use strstore_protocol::{NodeId, DEFAULT_MAX_FRAME_BYTES};

use crate::detection::{DetectionArgs, InvalidDetection};
use crate::edge::reader::RequestBudget;
use crate::replica::{self, Limits};
use crate::tls::{ClientAuth, NodeFiles, TlsSettings};

/// Flags of `strstore-server` (run mode).
#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// This node's id. Must appear in --peers when --peers is given.
    #[arg(long, default_value_t = 1, env = "STRSTORE_ID")]
    pub id: NodeId,

    /// Address clients connect to.
    #[arg(long, default_value = "127.0.0.1:7379", env = "STRSTORE_LISTEN")]
    pub listen: SocketAddr,

    /// Address other nodes connect to. Defaults to this node's entry in --peers.
    #[arg(long, env = "STRSTORE_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// Every node of the cluster with its peer address, this node included:
    /// `1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103`. Empty: a single-node store.
    #[arg(long, default_value = "", env = "STRSTORE_PEERS")]
    pub peers: String,

    /// Directory of the node's durable log. Created if missing.
    #[arg(long, default_value = "strstore-data", env = "STRSTORE_DATA_DIR")]
    pub data_dir: PathBuf,

    /// Id of the node that starts as master (membership; defaults to the lowest id).
    #[arg(long, env = "STRSTORE_MASTER")]
    pub master: Option<NodeId>,

    /// Join a running cluster: start outside the view and ask the nodes in --peers to be
    /// added (they send the current state). For a node the running cluster did not list.
    #[arg(long)]
    pub join: bool,

    /// If this node's durable state is found damaged at start (a bad record inside synced
    /// data, a missing snapshot, a gap between snapshot and log), move it aside into
    /// DATA_DIR/damaged-UNIXTIME/ (nothing is deleted) and rejoin the cluster as a new
    /// incarnation that holds nothing: the others send it the current state, and nothing it
    /// acked before counts. Without it a damaged node refuses to start. Needs other nodes in
    /// --peers (a single node has nobody to copy from). Harmless on undamaged data.
    #[arg(long, env = "STRSTORE_REPAIR")]
    pub repair: bool,

    /// Largest value an append or set may carry, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_value_bytes: u64,

    /// Largest the string may grow to, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_string_bytes: u64,

    /// Largest frame accepted from a client or peer, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,

    /// Length of one engine tick in milliseconds (re-send timers count in ticks).
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,

    /// Most own actions awaiting commit at once.
    #[arg(long, default_value_t = 64)]
    pub window: usize,

    /// Threads running the node's connections and engine. The engine is one task, so one
    /// thread (the default) avoids cross-thread wake-ups, which cost more than they buy
    /// unless many TLS clients keep several cores busy with crypto. The log writer always
    /// has its own thread.
    #[arg(long, default_value_t = 1, env = "STRSTORE_WORKER_THREADS")]
    pub worker_threads: usize,

    /// Most client connections served at once. Default: what the open-files limit affords
    /// (the node raises its soft limit to the hard one at start, keeps descriptors for its
    /// log, snapshots and peers, and gives an eighth of the rest to peer handshakes); a
    /// larger value is lowered to that. At the cap, the oldest connection still in its hello,
    /// then the one idle longest, is closed to let a new one in.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Seconds a client connection with no request in flight may send nothing before the
    /// node closes it (0: never). Clients reconnect by themselves.
    #[arg(long, value_name = "SECS", default_value_t = crate::client_conn::DEFAULT_IDLE_TIMEOUT.as_secs())]
    pub client_idle_timeout: u64,

    /// Bytes that client requests being read may hold in memory, across all connections; a
    /// request that finds it in use waits up to 2 s, then is refused as busy (clients retry).
    /// Default: half of --max-string-bytes, but at least 2 x --max-frame-bytes so that the
    /// largest frame always fits.
    #[arg(long, value_name = "BYTES")]
    pub request_memory_bytes: Option<usize>,

    /// Applied actions between two snapshots; a snapshot compacts the log (0: only at view
    /// changes). A large string waits longer: until the writes since the last snapshot add up
    /// to a quarter of its size, so snapshots never dominate the cost of a write.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,

    /// Directory with the cluster's TLS material, as `strstore-server certs` writes it:
    /// this node loads `ca.pem`, `node-<ID>.pem` and `node-<ID>-key.pem`. Required when
    /// --peers lists more than one node, because peers talk only over mutual TLS. Re-read on
    /// SIGHUP.
    #[arg(long, value_name = "DIR", env = "STRSTORE_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Serve clients over TLS too, with this node's certificate (needs --tls-dir). Clients
    /// then need --tls-ca.
    #[arg(long, env = "STRSTORE_CLIENT_TLS")]
    pub client_tls: bool,

    /// With --client-tls: whether clients must present a certificate signed by the cluster
    /// CA (`required`), or any client may connect (`none`).
    #[arg(long, value_enum, default_value_t = ClientAuth::None, env = "STRSTORE_CLIENT_AUTH")]
    pub client_auth: ClientAuth,

    /// Testing only: start even if this node's own certificate would fail its peers' checks,
    /// so that tests can play a misconfigured or hostile node and watch it being refused.
    #[arg(long, hide = true)]
    pub tls_skip_own_check: bool,

    #[command(flatten)]
    pub detection: DetectionArgs,
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub listen: SocketAddr,
    pub peer_listen: Option<SocketAddr>,
    /// Peer address of every member, this node included.
    pub peers: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    /// Master of the first view (lowest id if unset).
    pub master: Option<NodeId>,
    /// Start outside the view and ask to join.
    pub join: bool,
    /// Move damaged durable state aside and rejoin as a new incarnation.
    pub repair: bool,
    pub limits: Limits,
    pub max_frame_bytes: usize,
    pub tick: Duration,
    pub window: usize,
    /// The operator's cap on client connections; the open-files limit may lower it.
    pub max_connections: Option<usize>,
    /// `None`: idle client connections are never closed.
    pub client_idle_timeout: Option<Duration>,
    pub request_memory_bytes: usize,
    pub snapshot_every: u64,
    /// TLS material and client-port mode; `None` only for a single node without --tls-dir.
    pub tls: Option<TlsSettings>,
    pub detection: DetectionArgs,
}

/// A configuration mistake, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--peers entry {entry:?} is not ID=HOST:PORT (for example 2=127.0.0.1:7102)")]
    BadPeer { entry: String },
    #[error("--peers names node {0} twice")]
    DuplicatePeer(NodeId),
    #[error("--id {id} is not in --peers ({peers}); a node must be one of the listed peers")]
    NotInPeers { id: NodeId, peers: String },
    #[error("--peers is given but this node's peer address is unknown: add {id}=HOST:PORT or pass --peer-listen")]
    NoPeerListen { id: NodeId },
    #[error(
        "--peers lists {nodes} nodes, so peers must talk over mutual TLS, but no --tls-dir was \
         given. Create the certificates once (it makes a cluster CA and one certificate per \
         node):\n\n    {command}\n\nthen start every node with --tls-dir {dir}"
    )]
    TlsRequired { nodes: usize, command: String, dir: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Detection(#[from] InvalidDetection),
}

/// Where the error message suggests putting the certificates.
const SUGGESTED_TLS_DIR: &str = "strstore-tls";

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::BadPeer { entry: entry.to_string() };
        let (id, addr) = entry.split_once('=').ok_or_else(bad)?;
        let id: NodeId = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(bad());
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError::DuplicatePeer(id));
        }
    }
    Ok(peers)
}

impl NodeArgs {
    /// Checks the flags and fills in derived values.
    pub fn validate(&self) -> Result<NodeConfig, ConfigError> {
        let (peers, peer_listen) = self.peers_and_listen()?;
        let request_memory_bytes = self.checked_sizes()?;
        if self.tick_ms == 0 || self.window == 0 || self.max_connections == Some(0) {
            return Err(ConfigError::Invalid(
                "--tick-ms, --window and --max-connections must be > 0".into(),
            ));
        }
        self.detection.validate(self.tick_ms)?;
        if self.repair && peers.len() < 2 {
            return Err(ConfigError::Invalid(
                "--repair rebuilds a node from the other members of its cluster, and --peers \
                 lists no other node; a single node's damaged data can only be restored from \
                 a backup"
                    .into(),
            ));
        }
        let tls = self.tls_settings(&peers)?;
        Ok(NodeConfig {
            id: self.id,
            listen: self.listen,
            peer_listen,
            peers,
            data_dir: self.data_dir.clone(),
            master: self.master,
            join: self.join,
            repair: self.repair,
            limits: Limits {
                max_value_bytes: self.max_value_bytes,
                max_string_bytes: self.max_string_bytes,
            },
            max_frame_bytes: self.max_frame_bytes,
            tick: Duration::from_millis(self.tick_ms),
            window: self.window,
            max_connections: self.max_connections,
            client_idle_timeout: (self.client_idle_timeout > 0)
                .then(|| Duration::from_secs(self.client_idle_timeout)),
            request_memory_bytes,
            snapshot_every: self.snapshot_every,
            tls,
            detection: self.detection.clone(),
        })
    }

    /// The peer table (this node alone when `--peers` is empty) and the peer address to bind.
    fn peers_and_listen(
        &self,
    ) -> Result<(BTreeMap<NodeId, String>, Option<SocketAddr>), ConfigError> {
        let mut peers = parse_peers(&self.peers)?;
        if peers.is_empty() {
            peers.insert(self.id, self.peer_listen.map(|a| a.to_string()).unwrap_or_default());
        }
        if !peers.contains_key(&self.id) {
            let list = peers.keys().map(|k| k.to_string()).collect::<Vec<_>>().join(",");
            return Err(ConfigError::NotInPeers { id: self.id, peers: list });
        }
        let peer_listen = match self.peer_listen {
            Some(a) => Some(a),
            None if peers.len() == 1 => None,
            None => Some(
                peers[&self.id].parse().map_err(|_| ConfigError::NoPeerListen { id: self.id })?,
            ),
        };
        Ok((peers, peer_listen))
    }

    /// Checks the size limits against each other; the request memory budget they leave.
    fn checked_sizes(&self) -> Result<usize, ConfigError> {
        if self.max_value_bytes == 0 || self.max_string_bytes == 0 {
            return Err(ConfigError::Invalid(
                "--max-value-bytes and --max-string-bytes must be > 0".into(),
            ));
        }
        if self.max_value_bytes as usize + 1024 > self.max_frame_bytes {
            return Err(ConfigError::Invalid(format!(
                "--max-frame-bytes ({}) must exceed --max-value-bytes ({}) by at least 1 KiB",
                self.max_frame_bytes, self.max_value_bytes
            )));
        }
        // A snapshot travels in one peer frame and a `get` in one reply, whose length prefix
        // is 4 bytes.
        let max_string = strstore_protocol::codec::MAX_FRAME_FORMAT_BYTES as u64 - (1 << 20);
        if self.max_string_bytes > max_string {
            return Err(ConfigError::Invalid(format!(
                "--max-string-bytes ({}) must be at most {max_string}: a snapshot travels in one \
                 frame, whose length is a 4-byte number",
                self.max_string_bytes
            )));
        }
        let request_memory_bytes = self.request_memory_bytes();
        if RequestBudget::new(request_memory_bytes, self.max_frame_bytes).is_none() {
            return Err(ConfigError::Invalid(format!(
                "--request-memory-bytes ({request_memory_bytes}) must be at most 4 GiB and leave \
                 --max-frame-bytes ({}) for one frame after its eighth kept for small requests",
                self.max_frame_bytes
            )));
        }
        Ok(request_memory_bytes)
    }

    fn request_memory_bytes(&self) -> usize {
        self.request_memory_bytes.unwrap_or_else(|| {
            let half_string = usize::try_from(self.max_string_bytes / 2).unwrap_or(usize::MAX);
            half_string.max(self.max_frame_bytes.saturating_mul(2)).min(u32::MAX as usize)
        })
    }

    /// TLS is mandatory with peers and optional for one node; client TLS needs the material.
    fn tls_settings(
        &self,
        peers: &BTreeMap<NodeId, String>,
    ) -> Result<Option<TlsSettings>, ConfigError> {
        let Some(dir) = &self.tls_dir else {
            if peers.len() > 1 {
                return Err(ConfigError::TlsRequired {
                    nodes: peers.len(),
                    command: certs_command(peers),
                    dir: SUGGESTED_TLS_DIR.into(),
                });
            }
            if self.client_tls {
                return Err(ConfigError::Invalid(
                    "--client-tls needs --tls-dir (the node's certificate serves clients too)"
                        .into(),
                ));
            }
            return Ok(None);
        };
        if self.client_auth == ClientAuth::Required && !self.client_tls {
            return Err(ConfigError::Invalid("--client-auth required needs --client-tls".into()));
        }
        Ok(Some(TlsSettings {
            files: NodeFiles { dir: dir.clone(), node: self.id },
            clients: self.client_tls.then_some(self.client_auth),
            check_own_certificate: !self.tls_skip_own_check,
        }))
    }
}

/// The exact `strstore-server certs` command for the cluster in `peers`: every node id, and
/// the hosts of their peer addresses so the certificates also fit clients dialling by host.
fn certs_command(peers: &BTreeMap<NodeId, String>) -> String {
    let ids: Vec<String> = peers.keys().map(ToString::to_string).collect();
    let mut hosts: Vec<&str> = peers
        .values()
        .filter_map(|addr| addr.rsplit_once(':').map(|(host, _)| host.trim_matches(['[', ']'])))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    format!(
        "strstore-server certs --dir {SUGGESTED_TLS_DIR} --nodes {} --hosts {}",
        ids.join(","),
        hosts.join(",")
    )
}

impl NodeConfig {
    /// The engine's configuration for this node; `fresh_incarnation`: its durable state was
    /// moved aside (or it never finished rejoining since), so it starts outside the view.
    pub fn replica_config(&self, fresh_incarnation: bool) -> replica::Config {
        let mut cfg = replica::Config::new(self.id, self.peers.keys().copied().collect());
        if let Some(master) = self.master.filter(|m| self.peers.contains_key(m)) {
            cfg.initial_view.master = master;
        }
        for m in &mut cfg.initial_view.members {
            m.peer_addr = self.peers.get(&m.id).cloned().unwrap_or_default();
        }
        if let Some(me) = cfg.initial_view.members.iter_mut().find(|m| m.id == self.id) {
            me.client_addr = self.listen.to_string();
        }
        // Announce the address the others dial (this node's --peers entry), not the listen
        // address, which may be 0.0.0.0 in a container.
        cfg.me.peer_addr = self
            .peers
            .get(&self.id)
            .filter(|a| !a.is_empty())
            .cloned()
            .or_else(|| self.peer_listen.map(|a| a.to_string()))
            .unwrap_or_default();
        cfg.me.client_addr = self.listen.to_string();
        cfg.tick_ms = self.tick.as_millis() as u64;
        cfg.seed = rand::random();
        cfg.fresh_incarnation = fresh_incarnation;
        if self.join || fresh_incarnation {
            cfg.start_outside_views();
        }
        cfg.limits = self.limits;
        cfg.initial_view.limits = self.limits;
        cfg.window = self.window;
        cfg.snapshot_every = self.snapshot_every;
        self.detection.apply(cfg.tick_ms, &mut cfg);
        // An action must fit in a frame with room for its header.
        cfg.max_action_bytes = cfg.max_action_bytes.min(self.max_frame_bytes / 2);
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject() {
        let p = parse_peers("1=127.0.0.1:7101, 2=node2:7102").unwrap();
        assert_eq!(p[&2], "node2:7102");
        assert!(matches!(parse_peers("1=127.0.0.1"), Err(ConfigError::BadPeer { .. })));
        assert!(matches!(parse_peers("x=a:1"), Err(ConfigError::BadPeer { .. })));
        assert!(matches!(parse_peers("1=a:1,1=b:2"), Err(ConfigError::DuplicatePeer(1))));
        assert!(parse_peers("").unwrap().is_empty());
    }

    fn args(flags: &[&str]) -> NodeArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeArgs,
        }
        let argv = std::iter::once("strstore-server").chain(flags.iter().copied());
        Cli::try_parse_from(argv).expect("flags parse").node
    }

    #[test]
    fn peers_without_tls_name_the_certs_command() {
        let peers = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=10.0.0.3:7103";
        let err = args(&["--peers", peers]).validate().unwrap_err().to_string();
        assert!(
            err.contains(
                "strstore-server certs --dir strstore-tls --nodes 1,2,3 --hosts 10.0.0.3,127.0.0.1"
            ),
            "{err}"
        );
        assert!(err.contains("--tls-dir strstore-tls"), "{err}");
        let cfg = args(&["--peers", peers, "--tls-dir", "t"]).validate().unwrap();
        let tls = cfg.tls.expect("TLS settings");
        assert_eq!(tls.files.cert(), std::path::Path::new("t/node-1.pem"));
        assert_eq!(tls.clients, None);
    }

    #[test]
    fn single_node_needs_no_tls_and_client_flags_are_checked() {
        assert!(args(&[]).validate().unwrap().tls.is_none());
        let err = args(&["--client-tls"]).validate().unwrap_err().to_string();
        assert!(err.contains("--client-tls needs --tls-dir"), "{err}");
        let err = args(&["--tls-dir", "t", "--client-auth", "required"]).validate().unwrap_err();
        assert!(err.to_string().contains("needs --client-tls"), "{err}");
        let flags = ["--tls-dir", "t", "--client-tls", "--client-auth", "required"];
        let tls = args(&flags).validate().unwrap().tls.expect("TLS");
        assert_eq!(tls.clients, Some(ClientAuth::Required));
    }
}
