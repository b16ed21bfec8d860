//! What passes between the engine and its driver: logical time in, waiters to answer, and the
//! [`Ready`] the driver drains after every input.

use strstore_protocol::{Envelope, Reply, Timestamp, View};

use super::records::LogRecord;

/// Logical time. The driver calls [`Replica::tick`](super::Replica::tick) every `tick_ms` of
/// wall time.
pub type Ticks = u64;
/// Opaque handle the driver uses to route a reply back to a waiting client connection.
pub type WaiterId = u64;

/// A reply for the client connection that waits on `waiter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub waiter: WaiterId,
    pub reply: Reply,
}

/// Everything the replica asks its driver to do. Order matters: `log` is written in order and
/// made durable before any of `after_sync` is sent (and a later `Ready`'s log never becomes
/// durable before an earlier one's). `messages` and `replies` may go out at once.
#[derive(Debug, Default)]
pub struct Ready {
    pub log: Vec<LogRecord>,
    pub after_sync: Vec<Envelope>,
    pub messages: Vec<Envelope>,
    pub replies: Vec<ClientReply>,
    /// Write actions applied, in order (for checkers and metrics).
    pub applied: Vec<Timestamp>,
    /// Set when the view changed: the driver updates its peer addresses.
    pub view_changed: Option<View>,
}

impl Ready {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
            && self.after_sync.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.applied.is_empty()
            && self.view_changed.is_none()
    }
}
