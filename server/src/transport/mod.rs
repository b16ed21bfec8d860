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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use strstore_protocol::{Envelope, NodeId, PeerMsg, View};
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

/// Per peer: the address its link dials, the link's queue, and whether a message carrying a
/// snapshot is in that queue.
type PeerTable = BTreeMap<NodeId, (String, mpsc::Sender<Queued>, Arc<AtomicBool>)>;

/// A message waiting for its link. One that carries a snapshot (the whole string) holds its
/// peer's snapshot slot until the link has taken it: a peer is never sent a second state
/// while the first is still queued, however often it asks, so a queue of a large string
/// cannot grow without bound.
pub(crate) struct Queued {
    pub env: Envelope,
    _slot: Option<SnapshotSlot>,
}

struct SnapshotSlot(Arc<AtomicBool>);

impl Drop for SnapshotSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn carries_snapshot(env: &Envelope) -> bool {
    matches!(env.msg, PeerMsg::Decided { snapshot: Some(_), .. })
}

/// Queues `env` unless the queue is full or it carries a snapshot while another one for the
/// same peer is still queued; whether it was queued.
fn enqueue(q: &mpsc::Sender<Queued>, snapshot_queued: &Arc<AtomicBool>, env: Envelope) -> bool {
    let slot = if carries_snapshot(&env) {
        if snapshot_queued.swap(true, Ordering::AcqRel) {
            return false;
        }
        Some(SnapshotSlot(Arc::clone(snapshot_queued)))
    } else {
        None
    };
    q.try_send(Queued { env, _slot: slot }).is_ok()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use strstore_protocol::{Snapshot, ViewProposal};

    fn decided(snapshot: Option<Snapshot>) -> Envelope {
        let view = View { epoch: 1, master: 1, members: Vec::new(), limits: Default::default() };
        let proposal = ViewProposal {
            view,
            applied_upto: Default::default(),
            committed: Vec::new(),
            joiners: vec![2],
        };
        let msg = PeerMsg::Decided { proposal, snapshot: snapshot.map(Box::new) };
        Envelope { from: 1, to: 2, epoch: 1, msg }
    }

    /// A member asking to join every heartbeat was sent the whole string each time; queued
    /// by the hundred, 216 MB states took two nodes to 24 GB. One at a time per peer.
    #[test]
    fn a_peer_has_at_most_one_snapshot_queued() {
        let (tx, mut rx) = mpsc::channel(16);
        let slot = Arc::new(AtomicBool::new(false));
        let state = || {
            Some(Snapshot {
                epoch: 1,
                applied: Default::default(),
                value: Default::default(),
                sessions: Vec::new(),
                writes_applied: 0,
                digest: Default::default(),
            })
        };
        assert!(enqueue(&tx, &slot, decided(state())));
        assert!(!enqueue(&tx, &slot, decided(state())), "a second state waits for the first");
        assert!(enqueue(&tx, &slot, decided(None)), "other messages are not held back");
        drop(rx.try_recv().expect("the first state"));
        assert!(enqueue(&tx, &slot, decided(state())), "once the link took it, the next may go");
    }
}
