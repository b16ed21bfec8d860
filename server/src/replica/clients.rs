//! Client requests a node holds: writes not yet proposed, reads waiting for the next fence,
//! and which connections wait for which write.

use std::collections::{HashMap, HashSet};

use strstore_protocol::{ClientId, Op, ReqSeq, Write};

use super::ready::WaiterId;

/// A read waiting for its fence: who asked, under which sequence number, and what it reads.
pub(super) type QueuedGet = (WaiterId, ReqSeq, Op);

#[derive(Debug, Default)]
pub(super) struct ClientQueue {
    /// Writes not yet in an action, in arrival order.
    writes: Vec<Write>,
    gets: Vec<QueuedGet>,
    /// Writes queued or held here, so a retry joins the original instead of being re-sent.
    pending: HashSet<(ClientId, ReqSeq)>,
    waiters: HashMap<(ClientId, ReqSeq), Vec<WaiterId>>,
}

impl ClientQueue {
    /// Requests not yet proposed.
    pub(super) fn len(&self) -> usize {
        self.writes.len() + self.gets.len()
    }

    pub(super) fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    pub(super) fn has_gets(&self) -> bool {
        !self.gets.is_empty()
    }

    pub(super) fn push_get(&mut self, get: QueuedGet) {
        self.gets.push(get);
    }

    /// `waiter` waits for `write`, which is queued unless a retry finds it queued or held.
    pub(super) fn push_write(&mut self, waiter: WaiterId, write: Write) {
        let key = (write.client, write.seq);
        self.waiters.entry(key).or_default().push(waiter);
        if self.pending.insert(key) {
            self.writes.push(write);
        }
    }

    /// The writes of the next action: the first queued, then as many as keep the action
    /// within `max_bytes` of values and `max_writes` writes.
    pub(super) fn take_action(&mut self, max_bytes: usize, max_writes: usize) -> Vec<Write> {
        let mut bytes = 0;
        let mut take = 0;
        for w in &self.writes {
            let size = w.op.value().len();
            if take > 0 && (bytes + size > max_bytes || take == max_writes) {
                break;
            }
            bytes += size;
            take += 1;
        }
        self.writes.drain(..take).collect()
    }

    pub(super) fn take_gets(&mut self) -> Vec<QueuedGet> {
        std::mem::take(&mut self.gets)
    }

    /// The writes of an action held here: a client's retry must wait for it, not re-send it.
    pub(super) fn hold(&mut self, writes: &[Write]) {
        self.pending.extend(writes.iter().map(|w| (w.client, w.seq)));
    }

    /// Whether a client waits here for the write `(client, seq)`.
    pub(super) fn is_awaited(&self, client: ClientId, seq: ReqSeq) -> bool {
        self.waiters.contains_key(&(client, seq))
    }

    /// The write `(client, seq)` was applied: who waited for it.
    pub(super) fn applied(&mut self, client: ClientId, seq: ReqSeq) -> Vec<WaiterId> {
        self.pending.remove(&(client, seq));
        self.waiters.remove(&(client, seq)).unwrap_or_default()
    }

    /// Empties the queue: the reads, and each waiting connection with the sequence number of
    /// its write.
    pub(super) fn drain(&mut self) -> (Vec<QueuedGet>, Vec<(WaiterId, ReqSeq)>) {
        let gets = self.take_gets();
        let waiters =
            self.waiters.drain().flat_map(|((_, seq), ws)| ws.into_iter().map(move |w| (w, seq)));
        let waiters = waiters.collect();
        self.writes.clear();
        self.pending.clear();
        (gets, waiters)
    }

    /// After a view change: the old epoch's `aborted` writes that a client here still waits
    /// for go first, then the writes queued meanwhile; the old epoch's `gets` go before those
    /// queued meanwhile.
    pub(super) fn requeue(&mut self, aborted: Vec<Write>, mut gets: Vec<QueuedGet>) {
        let mut queue: Vec<Write> =
            aborted.into_iter().filter(|w| self.is_awaited(w.client, w.seq)).collect();
        queue.append(&mut self.writes);
        self.pending = queue.iter().map(|w| (w.client, w.seq)).collect();
        self.writes = queue;
        gets.append(&mut self.gets);
        self.gets = gets;
    }
}
