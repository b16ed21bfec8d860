//! The node: one task owns the replication engine and connects it to clients, peers and the
//! log writer through channels. No lock guards engine state.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use strstore_protocol::{NodeSettings, ServerFrame};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::client_conn;
use crate::config::NodeConfig;
use crate::edge::fd_limits::{self, FdLimitError};
use crate::edge::reader::RequestBudget;
use crate::edge::slots::Slots;
use crate::edge::throttle::Throttle;
use crate::engine::{Engine, Output};
use crate::health::Sampler;
use crate::inbox::Input;
use crate::log_writer::LogWriter;
use crate::replica::{Replica, WaiterId};
use crate::storage::{self, Storage, StorageError};
use crate::tls::{ClientAuth, TlsError, TlsState};
use crate::transport::{self, PeerSenders};

/// Inputs queued for the engine before senders wait. Bounds memory under overload; the
/// waiting then pushes back on client and peer connections.
const INBOX_CAPACITY: usize = 65_536;

/// Most inputs handled before the engine cuts an action, so batches stay bounded and ticks
/// are not starved.
const MAX_INPUTS_PER_STEP: usize = 4096;

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    FdLimit(#[from] FdLimitError),
}

/// Addresses a running node is listening on (useful when binding port 0).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub client: SocketAddr,
    pub peer: Option<SocketAddr>,
}

/// Runs a node until `shutdown` resolves, then flushes the log and returns. While it runs,
/// SIGHUP reloads the TLS material (`watch_sighup`).
///
/// A log that fails does not end the process: the node stops serving from it (see
/// `EngineDriver::log_failed`); when the failure was a full disk and space comes back, the node
/// starts again from what its log holds, as after a restart, and rejoins the cluster.
pub async fn run(
    cfg: NodeConfig,
    shutdown: impl Future<Output = ()>,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServerError> {
    tokio::pin!(shutdown);
    let edge = Edge::new(&cfg)?;
    let mut storage = open_storage(&cfg)?;
    let tls = cfg.tls.clone().map(TlsState::load).transpose()?;
    let listeners = bind_listeners(&cfg, &tls).await?;
    let (stop_sighup, sighup_stopped) = watch::channel(false);
    tokio::spawn(watch_sighup(tls.clone(), sighup_stopped));
    on_bound(listeners.bound);
    loop {
        match run_life(&cfg, storage, &listeners, &edge, &tls, shutdown.as_mut()).await {
            Stopped::Shutdown => break,
            Stopped::DiskHasRoom => {
                info!("the data directory has room again; restarting the node from its log");
                storage = open_storage(&cfg)?;
            }
        }
    }
    let _ = stop_sighup.send(true);
    info!("node stopped; log flushed");
    Ok(())
}

/// What bounds the connections strangers can open, shared by every life of the node.
struct Edge {
    client_slots: Slots,
    peer_handshakes: Slots,
    budget: RequestBudget,
}

impl Edge {
    /// Raises the open-files limit and derives the connection caps from it.
    fn new(cfg: &NodeConfig) -> Result<Self, ServerError> {
        let open_files = fd_limits::raise_open_files_limit();
        let caps = fd_limits::derive_caps(open_files, cfg.peers.len(), cfg.max_connections)?;
        if let Some(wanted) = cfg.max_connections.filter(|w| *w > caps.clients) {
            warn!(
                wanted,
                open_files,
                "--max-connections {wanted} does not fit the open-files limit ({open_files}); \
                 serving at most {} clients (raise the hard limit to serve more)",
                caps.clients
            );
        }
        info!(
            open_files,
            clients = caps.clients,
            peer_handshakes = caps.peer_handshakes,
            request_memory_bytes = cfg.request_memory_bytes,
            "connection limits: at most {} client connections and {} peer connections in \
             their handshake; the other descriptors stay with the log, snapshots and peers",
            caps.clients,
            caps.peer_handshakes
        );
        let budget = RequestBudget::new(cfg.request_memory_bytes, cfg.max_frame_bytes)
            .expect("the configuration checks the request budget");
        Ok(Self {
            client_slots: Slots::new(caps.clients),
            peer_handshakes: Slots::new(caps.peer_handshakes),
            budget,
        })
    }
}

/// Why [`EngineDriver::run`] returned.
enum Stopped {
    Shutdown,
    /// The log failed for lack of space, and there is room again.
    DiskHasRoom,
}

fn open_storage(cfg: &NodeConfig) -> Result<Storage, ServerError> {
    Ok(storage::open(&cfg.data_dir, cfg.repair, cfg.peers.len() > 1)?)
}

/// The node's sockets. They outlive a restart after a full disk, so that no other process
/// can take the ports in between.
struct Listeners {
    client: Arc<TcpListener>,
    /// Peers only ever speak mutual TLS, so without TLS material there is no peer port.
    peer: Option<Arc<TcpListener>>,
    bound: Bound,
}

async fn bind_listeners(
    cfg: &NodeConfig,
    tls: &Option<TlsState>,
) -> Result<Listeners, ServerError> {
    let client = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: cfg.listen, source })?;
    let peer = match (cfg.peer_listen, tls) {
        (Some(addr), Some(_)) => Some(
            TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })?,
        ),
        (Some(addr), None) => {
            info!(%addr, "single node without --tls-dir: not listening for peers");
            None
        }
        (None, _) => None,
    };
    let bound = Bound {
        client: client.local_addr().expect("bound socket has an address"),
        peer: peer.as_ref().map(|l| l.local_addr().expect("bound socket has an address")),
    };
    Ok(Listeners { client: Arc::new(client), peer: peer.map(Arc::new), bound })
}

/// One life of the node, from its log as it finds it to a shutdown, or to a log failure it
/// can recover from.
async fn run_life(
    cfg: &NodeConfig,
    storage: Storage,
    listeners: &Listeners,
    edge: &Edge,
    tls: &Option<TlsState>,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Stopped {
    let Storage { log, restored, fresh_incarnation } = storage;
    let replica = Replica::new(cfg.replica_config(fresh_incarnation), restored);
    let stats = replica.stats();
    info!(
        id = cfg.id,
        members = ?cfg.peers.keys().collect::<Vec<_>>(),
        data_dir = %cfg.data_dir.display(),
        applied_actions = stats.applied_actions,
        string_bytes = replica.string_len(),
        "node starting"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
    let peers = spawn_io(cfg, listeners, edge, tls, replica.view(), &inbox_tx, &stop_rx);
    let sampler = Sampler::new(&cfg.data_dir);
    tokio::spawn(sampler.run_every(HEALTH_EVERY, inbox_tx.clone(), stop_rx.clone()));
    let writer = LogWriter::spawn(log, inbox_tx);
    info!(client = %listeners.bound.client, peer = ?listeners.bound.peer, "node ready");
    let driver = EngineDriver {
        engine: Engine::new(replica),
        writer,
        peers,
        waiters: HashMap::new(),
        next_waiter: 1,
        settings: node_settings(cfg),
        data_dir: cfg.data_dir.clone(),
        failed: None,
    };
    let (writer, stopped) = driver.run(inbox_rx, cfg.tick, shutdown).await;
    let _ = stop_tx.send(true);
    writer.close();
    stopped
}

/// Starts the tasks that carry client and peer traffic to the engine's inbox, until `stop`.
fn spawn_io(
    cfg: &NodeConfig,
    listeners: &Listeners,
    edge: &Edge,
    tls: &Option<TlsState>,
    view: &strstore_protocol::View,
    inbox: &mpsc::Sender<Input>,
    stop: &watch::Receiver<bool>,
) -> PeerSenders {
    // Peers may carry a whole snapshot in one frame, as large as the cluster's string limit,
    // which may exceed this node's own flag (the view's limits are the proposer's): they are
    // the cluster's own nodes, authenticated by mutual TLS before any frame is read.
    let peer_frame_bytes = strstore_protocol::codec::MAX_FRAME_FORMAT_BYTES;
    let peers = PeerSenders::start(cfg.id, view, peer_frame_bytes, tls.clone(), stop.clone());
    if let (Some(listener), Some(tls)) = (&listeners.peer, tls) {
        let accept = transport::AcceptConfig {
            me: cfg.id,
            max_frame_bytes: peer_frame_bytes,
            tls: tls.clone(),
            handshakes: edge.peer_handshakes.clone(),
            throttle: Throttle::new("the peer port"),
        };
        let listener = Arc::clone(listener);
        tokio::spawn(transport::accept_peers(listener, accept, inbox.clone(), stop.clone()));
    }
    let limits = client_conn::ConnLimits {
        node: cfg.id,
        max_frame_bytes: cfg.max_frame_bytes,
        slots: edge.client_slots.clone(),
        budget: edge.budget.clone(),
        idle_timeout: cfg.client_idle_timeout,
        tls: tls.clone().filter(TlsState::serves_clients),
        throttle: Throttle::new("the client port"),
    };
    let listener = Arc::clone(&listeners.client);
    tokio::spawn(client_conn::accept_clients(listener, limits, inbox.clone(), stop.clone()));
    peers
}

fn node_settings(cfg: &NodeConfig) -> NodeSettings {
    NodeSettings {
        peer_tls: cfg.tls.is_some() && cfg.peers.len() > 1,
        client_tls: cfg.tls.as_ref().is_some_and(|t| t.clients.is_some()),
        client_auth: cfg.tls.as_ref().is_some_and(|t| t.clients == Some(ClientAuth::Required)),
        fsync: true,
        window: cfg.window as u64,
        snapshot_every: cfg.snapshot_every,
    }
}

/// Reloads the TLS material on every SIGHUP until shutdown: new connections use the new
/// certificates, open ones keep theirs, and bad files leave the old material in place. The
/// handler is installed even without TLS, so that a stray SIGHUP never kills a node.
async fn watch_sighup(tls: Option<TlsState>, mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            warn!(error = %e, "cannot install the SIGHUP handler; reload by restarting");
            return;
        }
    };
    loop {
        tokio::select! {
            Some(()) = hangup.recv() => {}
            _ = shutdown.changed() => return,
        }
        match &tls {
            None => info!("SIGHUP received; no TLS material to reload (no --tls-dir)"),
            Some(tls) => match tls.reload() {
                Ok(()) => {}
                Err(e) => error!(error = %e, "SIGHUP: cannot reload TLS material; keeping the old"),
            },
        }
    }
}

/// An engine step longer than this is logged: while the engine works, this node sends no
/// heartbeat, so a step near the failure timeout gets the node removed for silence.
const STALL_WARN: std::time::Duration = std::time::Duration::from_millis(100);

/// What woke the engine. Lives on the stack for one step, so the large variant costs nothing
/// that boxing it (an allocation per input) would save.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Input(Input),
    Tick,
}

/// Warns of engine steps longer than [`STALL_WARN`]: at once for a new longest one, else at
/// most every [`STALL_WARN_EVERY`], counting those in between.
#[derive(Default)]
struct StallWatch {
    longest: std::time::Duration,
    last_warned: Option<std::time::Instant>,
    unreported: u64,
}

/// How often a node that keeps stalling says so.
const STALL_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl StallWatch {
    fn observe(&mut self, took: std::time::Duration, what: &'static str, string_bytes: usize) {
        if took < STALL_WARN {
            return;
        }
        let now = std::time::Instant::now();
        let record = took > self.longest;
        let due = self.last_warned.is_none_or(|t| now.duration_since(t) >= STALL_WARN_EVERY);
        self.longest = self.longest.max(took);
        if !(record || due) {
            self.unreported += 1;
            return;
        }
        warn!(
            took_ms = took.as_millis() as u64,
            handling = what,
            string_bytes,
            longest_ms = self.longest.as_millis() as u64,
            stalls_not_reported = std::mem::take(&mut self.unreported),
            "the engine was busy for long: no heartbeats went out meanwhile"
        );
        self.last_warned = Some(now);
    }
}

/// The task that drives the engine: feeds it inputs and ticks, and carries out its
/// [`Output`]: the log writer, the peers, the waiting clients. What may leave before which
/// write is durable is the engine's business.
struct EngineDriver {
    engine: Engine,
    writer: LogWriter,
    peers: PeerSenders,
    waiters: HashMap<WaiterId, mpsc::UnboundedSender<ServerFrame>>,
    next_waiter: WaiterId,
    /// Reported with the status.
    settings: NodeSettings,
    data_dir: std::path::PathBuf,
    /// Set once the log failed: the node serves nothing from then on.
    failed: Option<LogFailure>,
}

/// What the engine knows of a failed log.
struct LogFailure {
    /// What clients are told.
    reason: String,
    /// A full disk: the node restarts by itself once there is room.
    disk_full: bool,
}

/// How often a node whose disk is full checks for room.
const ROOM_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the node samples its health for heartbeats.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl EngineDriver {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Input>,
        tick: std::time::Duration,
        shutdown: impl Future<Output = ()>,
    ) -> (LogWriter, Stopped) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut room_check = tokio::time::interval(ROOM_CHECK_EVERY);
        let mut stalls = StallWatch::default();
        tokio::pin!(shutdown);
        loop {
            let wake = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = room_check.tick(), if self.failed.as_ref().is_some_and(|f| f.disk_full) => {
                    if storage::has_room(&self.data_dir) {
                        return (self.writer, Stopped::DiskHasRoom);
                    }
                    continue;
                }
                input = inbox.recv() => match input {
                    Some(input) => Wake::Input(input),
                    None => break,
                },
                _ = ticker.tick(), if self.failed.is_none() => Wake::Tick,
            };
            let started = std::time::Instant::now();
            let what = self.wake(wake, &mut inbox);
            self.drain_output();
            stalls.observe(started.elapsed(), what, self.engine.replica().string_len());
        }
        info!("shutting down: no new requests; flushing the log");
        if let Some(write) = self.engine.flush() {
            self.writer.submit(write);
        }
        (self.writer, Stopped::Shutdown)
    }

    /// Does what woke the engine; says what it was, for the stall warning.
    fn wake(&mut self, wake: Wake, inbox: &mut mpsc::Receiver<Input>) -> &'static str {
        match wake {
            Wake::Input(input) => {
                let what = input.kind();
                self.handle(input);
                for _ in 1..MAX_INPUTS_PER_STEP {
                    match inbox.try_recv() {
                        Ok(input) => self.handle(input),
                        Err(_) => break,
                    }
                }
                what
            }
            Wake::Tick => {
                self.engine.tick();
                "tick"
            }
        }
    }

    /// Carries out everything the engine has to say.
    fn drain_output(&mut self) {
        while self.failed.is_none() {
            let Some(output) = self.engine.take_output() else { break };
            self.dispatch(output);
        }
    }

    /// The log failed: nothing more can be made durable, so the node must not ack, vote or
    /// answer from here on. It goes silent towards its peers (the master removes it from the
    /// view as for a crash, and the others go on), and tells each client why and where to go.
    fn log_failed(&mut self, error: crate::log::LogError) {
        let me = self.engine.replica().id();
        let disk_full = error.is_disk_full();
        let reason = if disk_full {
            format!("disk full on n{me}: it cannot log writes and is leaving the cluster")
        } else {
            format!("the log of n{me} failed ({error}): it is leaving the cluster")
        };
        if disk_full {
            error!(%error, "the disk is full: serving nothing until there is room again (checked every second), then restarting from the log");
        } else {
            error!(%error, "the log failed: serving nothing; check the disk, then restart the node (it verifies its log at start)");
        }
        self.failed = Some(LogFailure { reason, disk_full });
        let err = self.refusal();
        self.engine.stop_serving(err);
        // Only the refusals go out: nothing more leaves a node whose log failed.
        if let Some(output) = self.engine.take_output() {
            self.send_replies(output.replies);
        }
    }

    /// What a client is told while the log is failed: unavailable here, try the others.
    fn refusal(&self) -> strstore_protocol::Error {
        let replica = self.engine.replica();
        let me = replica.id();
        let reason = self.failed.as_ref().map_or_else(String::new, |f| f.reason.clone());
        let try_nodes = replica
            .view()
            .members
            .iter()
            .filter(|m| m.id != me && !m.client_addr.is_empty())
            .map(|m| m.client_addr.clone())
            .collect();
        strstore_protocol::Error::Unavailable { reason, try_nodes }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::LogFailed(error) => self.log_failed(error),
            Input::Health(mut health) => {
                health.log_len = self.engine.replica().log_len();
                self.engine.set_health(health);
            }
            Input::Request { req, reply } if self.failed.is_some() => {
                let result = Err(self.refusal());
                let _ = reply
                    .send(ServerFrame::Reply(strstore_protocol::Reply { seq: req.seq, result }));
            }
            Input::Peer(_) if self.failed.is_some() => {}
            Input::Request { req, reply } => {
                let waiter = self.next_waiter;
                self.next_waiter += 1;
                self.waiters.insert(waiter, reply);
                self.engine.client_request(waiter, req);
            }
            Input::Peer(env) => self.engine.step(env),
            Input::Synced { through } => self.engine.on_persisted(through),
            Input::Status { reply } => {
                let mut report = self.engine.replica().cluster_status();
                report.settings = self.settings.clone();
                let _ = reply.send(ServerFrame::Status(report));
            }
            Input::Inspect { reply } => {
                let _ = reply.send(ServerFrame::Inspection(self.engine.replica().replica_report()));
            }
        }
    }

    fn send_replies(&mut self, replies: Vec<crate::replica::ClientReply>) {
        for r in replies {
            match self.waiters.remove(&r.waiter) {
                Some(tx) => {
                    let _ = tx.send(ServerFrame::Reply(r.reply));
                }
                None => debug!(waiter = r.waiter, "reply for a vanished waiter"),
            }
        }
    }

    fn dispatch(&mut self, output: Output) {
        if let Some(view) = &output.view_changed {
            info!(
                epoch = view.epoch,
                master = view.master,
                members = ?view.ids(),
                member = view.contains(self.engine.replica().id()),
                "view changed"
            );
            self.peers.update(view);
        }
        // Clients first: nothing they are told waits on what follows.
        self.send_replies(output.replies);
        for env in output.messages {
            self.peers.send(env);
        }
        for write in output.writes {
            self.writer.submit(write);
        }
    }
}
