//! The error a node returns to a client. It crosses the wire, so it is a small serializable
//! enum with string payloads that tests can compare.

use serde::{Deserialize, Serialize};

/// Why a request failed. Every variant says what the user can do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The value in an `append` or `set` is larger than the node's `--max-value-bytes`.
    #[error("value of {size} bytes exceeds the limit of {max} bytes (--max-value-bytes)")]
    ValueTooLarge { size: u64, max: u64 },
    /// Applying the command would make the string longer than `--max-string-bytes`. Nothing
    /// was changed.
    #[error("the string would grow to {would_be} bytes, over the limit of {max} bytes (--max-string-bytes); nothing was changed")]
    StringTooLarge { would_be: u64, max: u64 },
    /// The two ends speak different protocol versions.
    #[error("protocol version mismatch: this side speaks {ours}, the other side {theirs}; upgrade the older one")]
    VersionMismatch { ours: u32, theirs: u32 },
    /// The request was malformed or not allowed here.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The node cannot serve requests now (not a member of the current view, on the minority
    /// side of a partition, or shutting down). The client should try another node.
    #[error("node unavailable: {reason}{}", hint(.try_nodes))]
    Unavailable { reason: String, try_nodes: Vec<String> },
    /// A newer request from the same client was applied first, so this older one was not
    /// applied and never will be.
    #[error(
        "request {seq} superseded by a newer request from the same client; it was not applied"
    )]
    Superseded { seq: u64 },
    /// The node is overloaded; retry later.
    #[error("node busy: {0}; retry later")]
    Busy(String),
    /// The client's certificate gives it a role that may not do this (a `read` certificate
    /// asked to write). Nothing was changed.
    #[error(
        "forbidden: this client's certificate has the role `{role}`, which may not {op}; \
         nothing was changed (a certificate with role write may: strstore-server certs \
         --client NAME --role write)"
    )]
    Forbidden { role: String, op: String },
}

fn hint(nodes: &[String]) -> String {
    if nodes.is_empty() {
        String::new()
    } else {
        format!("; try {}", nodes.join(", "))
    }
}

impl Error {
    /// Whether the same request may succeed if retried (at this node later, or at another).
    /// The client library retries only these.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Busy(_))
    }
}
