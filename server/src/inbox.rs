//! What reaches the engine task: the one type every producer (client connections, peer
//! links, the log writer, the health sampler) shares, kept at the bottom so that none of them
//! imports the node module that owns the engine.

use strstore_protocol::{Envelope, Health, Request, ServerFrame};
use tokio::sync::mpsc;

/// What reaches the engine task.
pub enum Input {
    /// A client request and where its reply goes.
    Request { req: Request, reply: mpsc::UnboundedSender<ServerFrame> },
    /// A client asks for the cluster status.
    Status { reply: mpsc::UnboundedSender<ServerFrame> },
    /// `strstore-cli inspect`: this node's own replica state.
    Inspect { reply: mpsc::UnboundedSender<ServerFrame> },
    /// A message from a peer.
    Peer(Envelope),
    /// The log writer made every write up to `through` durable.
    Synced { through: crate::engine::WriteNumber },
    /// The log writer could not write or sync; it has stopped.
    LogFailed(crate::log::LogError),
    /// A new sample of this node's health, for its heartbeats.
    Health(Health),
}

impl Input {
    /// A name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Request { .. } => "client request",
            Input::Status { .. } => "status",
            Input::Inspect { .. } => "inspect",
            Input::Peer(_) => "peer message",
            Input::Synced { .. } => "log synced",
            Input::LogFailed(_) => "log failure",
            Input::Health(_) => "health sample",
        }
    }
}
