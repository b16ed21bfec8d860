//! Peer transport over mutual TLS: one outgoing connection per peer (reconnecting with
//! back-off) for sending, and a listener that accepts the peers' own outgoing connections for
//! receiving.
//!
//! Both ends authenticate: the dialler verifies that the server certificate names
//! `node-<peer id>`, and the acceptor checks that the id claimed in the hello is the one its
//! client certificate names, and that every message's `from` is that id (no node can speak
//! for another). A refused connection is logged with its reason on the refusing node; the dialler learns
//! the reason from a [`PeerFrame::Refused`](strstore_protocol::PeerFrame) or a TLS alert.
//!
//! Delivery is best effort by design: a full queue or a broken connection drops messages, and
//! the replication protocol re-sends what matters (actions until acked, acks while uncommitted,
//! executes on a duplicate ack).
//!
//! Layout: `link` dials and sends; `accept` authenticates and receives.

mod accept;
mod link;

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use strstore_protocol::{Envelope, NodeId, View};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

pub use accept::{accept_peers, AcceptConfig};

use crate::tls::TlsState;

/// Messages queued for one peer before new ones are dropped. Large enough to ride out a
/// reconnect under full load; everything dropped is re-sent by the protocol.
pub const PEER_QUEUE: usize = 16_384;

/// Handles to the outgoing queues, one per peer. Shared by the engine task and the log
/// writer; the set grows when a view adds a node that was not in `--peers`.
#[derive(Clone)]
pub struct PeerSenders {
    me: NodeId,
    max_frame_bytes: usize,
    /// Material for the links; `None` only for a single node without `--tls-dir`, which
    /// never links to anyone (no peer may exist without TLS).
    tls: Option<TlsState>,
    shutdown: watch::Receiver<bool>,
    queues: Arc<RwLock<PeerTable>>,
}

/// Per peer: the address its link dials, and the link's queue.
type PeerTable = BTreeMap<NodeId, (String, mpsc::Sender<Envelope>)>;

impl PeerSenders {
    /// Starts a sender task per member of `view` other than this node. Links use the TLS
    /// material current at each (re)connection.
    pub fn start(
        me: NodeId,
        view: &View,
        max_frame_bytes: usize,
        tls: Option<TlsState>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let senders = Self { me, max_frame_bytes, tls, shutdown, queues: Arc::default() };
        senders.update(view);
        senders
    }

    /// Opens links to members of `view` this node has no link to yet (or whose address
    /// changed). Links to nodes that left stay: they may rejoin, and their queues are bounded.
    pub fn update(&self, view: &View) {
        let mut queues = self.queues.write().unwrap_or_else(PoisonError::into_inner);
        for m in view.members.iter().filter(|m| m.id != self.me && !m.peer_addr.is_empty()) {
            if queues.get(&m.id).is_some_and(|(addr, _)| *addr == m.peer_addr) {
                continue;
            }
            let Some(tls) = self.tls.clone() else {
                warn!(peer = m.id, "no TLS material (--tls-dir): cannot link to peer n{}", m.id);
                continue;
            };
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let link = link::Link {
                me: self.me,
                peer: m.id,
                addr: m.peer_addr.clone(),
                max_frame_bytes: self.max_frame_bytes,
                tls,
            };
            tokio::spawn(link.run(rx, self.shutdown.clone()));
            queues.insert(m.id, (m.peer_addr.clone(), tx));
        }
    }

    /// Queues `env` for its destination; drops it if the queue is full or the peer unknown.
    pub fn send(&self, env: Envelope) {
        let queues = self.queues.read().unwrap_or_else(PoisonError::into_inner);
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
