//! Peer transport: one outgoing connection per peer (reconnecting with back-off) for sending,
//! and a listener that accepts the peers' own outgoing connections for receiving.
//!
//! Delivery is best effort by design: a full queue or a broken connection drops messages, and
//! the replication protocol re-sends what matters (actions until acked, acks while uncommitted,
//! executes on a duplicate ack).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use strstore_protocol::{Codec, Envelope, NodeId, PeerFrame, PeerHello, View, PROTOCOL_VERSION};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use crate::server::Input;

/// Messages queued for one peer before new ones are dropped. Large enough to ride out a
/// reconnect under full load; everything dropped is re-sent by the protocol.
pub const PEER_QUEUE: usize = 16_384;

/// First and largest pause between connection attempts to a peer.
const RECONNECT_MIN: Duration = Duration::from_millis(20);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Handles to the outgoing queues, one per peer. Shared by the engine task and the log
/// writer; the set grows when a view adds a node that was not in `--peers`.
#[derive(Clone)]
pub struct PeerSenders {
    me: NodeId,
    max_frame_bytes: usize,
    shutdown: watch::Receiver<bool>,
    queues: Arc<RwLock<PeerTable>>,
}

/// Per peer: the address its link dials, and the link's queue.
type PeerTable = BTreeMap<NodeId, (String, mpsc::Sender<Envelope>)>;

impl PeerSenders {
    /// Starts a sender task per member of `view` other than this node.
    pub fn start(
        me: NodeId,
        view: &View,
        max_frame_bytes: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let senders = Self { me, max_frame_bytes, shutdown, queues: Arc::default() };
        senders.update(view);
        senders
    }

    /// Opens links to members of `view` this node has no link to yet (or whose address
    /// changed). Links to nodes that left stay: they may rejoin, and their queues are bounded.
    pub fn update(&self, view: &View) {
        let mut queues = self.queues.write().expect("peer table lock");
        for m in view.members.iter().filter(|m| m.id != self.me && !m.peer_addr.is_empty()) {
            if queues.get(&m.id).is_some_and(|(addr, _)| *addr == m.peer_addr) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let link = Link {
                me: self.me,
                peer: m.id,
                addr: m.peer_addr.clone(),
                max_frame_bytes: self.max_frame_bytes,
            };
            tokio::spawn(link.run(rx, self.shutdown.clone()));
            queues.insert(m.id, (m.peer_addr.clone(), tx));
        }
    }

    /// Queues `env` for its destination; drops it if the queue is full or the peer unknown.
    pub fn send(&self, env: Envelope) {
        let queues = self.queues.read().expect("peer table lock");
        match queues.get(&env.to) {
            Some((_, q)) => {
                if q.try_send(env).is_err() {
                    debug!("peer queue full or closed; message dropped (the protocol re-sends)");
                }
            }
            None => debug!(to = env.to, "message for an unknown peer dropped"),
        }
    }
}

/// The sending side of the connection to one peer.
struct Link {
    me: NodeId,
    peer: NodeId,
    addr: String,
    max_frame_bytes: usize,
}

impl Link {
    async fn run(self, mut rx: mpsc::Receiver<Envelope>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = RECONNECT_MIN;
        let mut was_up = true;
        loop {
            let connected = tokio::select! {
                r = TcpStream::connect(&self.addr) => r,
                _ = shutdown.changed() => return,
            };
            match connected {
                Ok(stream) => {
                    backoff = RECONNECT_MIN;
                    if !was_up {
                        info!(peer = self.peer, addr = %self.addr, "link to peer up again");
                    }
                    let sent = tokio::select! {
                        r = self.send_all(stream, &mut rx) => r,
                        _ = shutdown.changed() => return,
                    };
                    if let Err(e) = sent {
                        info!(peer = self.peer, addr = %self.addr, error = %e, "link to peer broke; reconnecting");
                        was_up = false;
                    } else {
                        return; // queue closed: the node is stopping
                    }
                }
                Err(e) if was_up => {
                    info!(peer = self.peer, addr = %self.addr, error = %e, "cannot reach peer; retrying with back-off");
                    was_up = false;
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    async fn send_all(
        &self,
        stream: TcpStream,
        rx: &mut mpsc::Receiver<Envelope>,
    ) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let mut out = FramedWrite::new(stream, Codec::<(), PeerFrame>::new(self.max_frame_bytes));
        let hello = PeerFrame::Hello(PeerHello { version: PROTOCOL_VERSION, node: self.me });
        out.send(hello).await.map_err(to_io)?;
        while let Some(env) = rx.recv().await {
            out.feed(PeerFrame::Msg(env)).await.map_err(to_io)?;
            while let Ok(more) = rx.try_recv() {
                out.feed(PeerFrame::Msg(more)).await.map_err(to_io)?;
            }
            out.flush().await.map_err(to_io)?;
        }
        Ok(())
    }
}

fn to_io(e: strstore_protocol::CodecError) -> std::io::Error {
    match e {
        strstore_protocol::CodecError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Accepts peer connections and forwards their messages to the engine.
pub async fn accept_peers(
    listener: TcpListener,
    me: NodeId,
    max_frame_bytes: usize,
    inbox: mpsc::Sender<Input>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut stop = shutdown.clone();
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let inbox = inbox.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = receive_from_peer(stream, me, max_frame_bytes, inbox) => {
                    if let Err(reason) = r {
                        warn!(%addr, %reason, "peer connection refused or broken");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

async fn receive_from_peer(
    stream: TcpStream,
    me: NodeId,
    max_frame_bytes: usize,
    inbox: mpsc::Sender<Input>,
) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut frames = FramedRead::new(stream, Codec::<PeerFrame, ()>::new(max_frame_bytes));
    let peer = match frames.next().await {
        Some(Ok(PeerFrame::Hello(h))) if h.version != PROTOCOL_VERSION => {
            return Err(format!("peer speaks protocol {}, we speak {PROTOCOL_VERSION}", h.version))
        }
        Some(Ok(PeerFrame::Hello(h))) if h.node == me => {
            return Err(format!("peer claims this node's own id {}", h.node))
        }
        Some(Ok(PeerFrame::Hello(h))) => h.node,
        Some(Ok(_)) => return Err("first frame was not a hello".into()),
        Some(Err(e)) => return Err(format!("bad first frame: {e}")),
        None => return Ok(()),
    };
    debug!(peer, "peer connected");
    while let Some(frame) = frames.next().await {
        match frame.map_err(|e| format!("from n{peer}: {e}"))? {
            PeerFrame::Msg(env) if env.from == peer && env.to == me => {
                if inbox.send(Input::Peer(env)).await.is_err() {
                    return Ok(());
                }
            }
            PeerFrame::Msg(env) => {
                return Err(format!(
                    "n{peer} sent a message claiming to be from n{} to n{}",
                    env.from, env.to
                ))
            }
            PeerFrame::Hello(_) => return Err(format!("n{peer} sent a second hello")),
            PeerFrame::Refused(reason) => return Err(format!("n{peer} refused: {reason}")),
        }
    }
    Ok(())
}
