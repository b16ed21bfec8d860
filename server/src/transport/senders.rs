//! One outgoing queue and link per peer, opened as views name new members.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, PoisonError, RwLock};

use strstore_protocol::{Envelope, NodeId, View};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::link;
use super::queue::{enqueue, Queued, PEER_QUEUE};
use crate::tls::TlsState;

/// Handles to the outgoing queues, one per peer. Held by the node's driver; the set
/// grows when a view adds a node that was not in `--peers`.
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

/// Per peer: the address its link dials, the link's queue, and whether a message carrying a
/// snapshot is in that queue.
type PeerTable = BTreeMap<NodeId, (String, mpsc::Sender<Queued>, Arc<AtomicBool>)>;

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
            if queues.get(&m.id).is_some_and(|(addr, ..)| *addr == m.peer_addr) {
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
            queues.insert(m.id, (m.peer_addr.clone(), tx, Arc::default()));
        }
    }

    /// Queues `env` for its destination; drops it if the queue is full or the peer unknown.
    pub fn send(&self, env: Envelope) {
        let queues = self.queues.read().unwrap_or_else(PoisonError::into_inner);
        match queues.get(&env.to) {
            Some((_, q, snapshot_queued)) => {
                if !enqueue(q, snapshot_queued, env) {
                    debug!("peer queue full or closed; message dropped (the protocol re-sends)");
                }
            }
            None => debug!(to = env.to, "message for an unknown peer dropped"),
        }
    }
}
