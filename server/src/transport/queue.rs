//! A peer's outgoing queue, and the rule that keeps at most one whole state in it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use strstore_protocol::{Envelope, PeerMsg};
use tokio::sync::mpsc;

/// Messages queued for one peer before new ones are dropped. Large enough to ride out a
/// reconnect under full load; everything dropped is re-sent by the protocol.
pub const PEER_QUEUE: usize = 16_384;

/// A message waiting for its link. One that carries a snapshot (the whole string) holds its
/// peer's snapshot slot until the link has taken it: a peer is never sent a second state
/// while the first is still queued, however often it asks, so a queue of a large string
/// cannot grow without bound.
pub(super) struct Queued {
    pub env: Envelope,
    _slot: Option<SnapshotSlot>,
}

struct SnapshotSlot(Arc<AtomicBool>);

impl Drop for SnapshotSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub(super) fn carries_snapshot(env: &Envelope) -> bool {
    matches!(env.msg, PeerMsg::Decided { snapshot: Some(_), .. })
}

/// Queues `env` unless the queue is full or it carries a snapshot while another one for the
/// same peer is still queued; whether it was queued.
pub(super) fn enqueue(
    q: &mpsc::Sender<Queued>,
    snapshot_queued: &Arc<AtomicBool>,
    env: Envelope,
) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use strstore_protocol::{Snapshot, View, ViewProposal};

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
