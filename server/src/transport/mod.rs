//! Peer transport over mutual TLS: one outgoing connection per peer (reconnecting with
//! back-off) for sending, and a listener that accepts the peers' own outgoing connections for
//! receiving.
//!
//! Both ends authenticate: the dialler verifies that the server certificate names
//! `strstore:node:<peer id>`, and the acceptor checks that the id claimed in the hello is the one its
//! client certificate names, and that every message's `from` is that id (no node can speak
//! for another). A refused connection is logged with its reason on the refusing node; the dialler learns
//! the reason from a [`PeerFrame::Refused`](strstore_protocol::PeerFrame) or a TLS alert.
//!
//! Delivery is best effort by design: a full queue or a broken connection drops messages, and
//! the replication protocol re-sends what matters (actions until acked, acks while uncommitted,
//! executes on a duplicate ack).
//!
//! Layout: `senders` keeps one `queue` per peer, drained by that peer's `link`, which dials and
//! sends; `accept` authenticates and receives.

mod accept;
mod link;
mod queue;
mod senders;

pub use accept::{accept_peers, AcceptConfig};
pub use queue::PEER_QUEUE;
pub use senders::PeerSenders;
