//! How far this node has applied the replicated log.

use strstore_protocol::Timestamp;

#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The last action applied.
    pub(super) last: Timestamp,
    /// Write actions applied since start (replay included).
    pub(super) actions: u64,
    /// Where `Ready::applied` starts: the last action applied before the ones it reported
    /// since the last restart or snapshot install.
    pub(super) replay_base: Timestamp,
}

impl Progress {
    pub(super) fn applied(&mut self, id: Timestamp) {
        debug_assert!(id > self.last, "applied {id} after {}", self.last);
        self.last = id;
        self.actions += 1;
    }

    /// The state up to `at` came whole, from a snapshot.
    pub(super) fn installed(&mut self, at: Timestamp) {
        self.last = at;
        self.replay_base = at;
    }
}
