//! What can go wrong with a request, from the caller's point of view.
//!
//! The question a caller most needs answered is "was my write applied?". A server error means
//! no; success means yes; [`ClientError::is_outcome_unknown`] says when we cannot tell.

use std::time::Duration;

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node could be connected to (or every node turned the connection away with a
    /// retryable error) until the request deadline passed. If `request_sent` is set, an
    /// earlier attempt did reach a node, so the request may or may not have been applied.
    #[error("no node reachable at {addrs} (last error: {last_error}): is the cluster up?")]
    NoNodeReachable {
        /// The addresses tried, comma-separated.
        addrs: String,
        /// What went wrong on the last attempt.
        last_error: String,
        /// Whether any attempt sent the request before the nodes became unreachable.
        request_sent: bool,
    },
    /// Nodes answered, but none could serve the request before the deadline (each said it was
    /// unavailable or busy). If `request_sent` is set, an attempt that got no answer did reach
    /// a node, so the request may or may not have been applied.
    #[error(
        "the cluster answered but could not serve the request within {after:.1?} \
         (last answer: {last_error})"
    )]
    Unavailable { after: Duration, last_error: String, request_sent: bool },
    /// A node rejected the request; it was not applied. Retryable errors never end up here
    /// unless retrying ran out of time (then the error is `Timeout`).
    #[error(transparent)]
    Server(strstore_protocol::Error),
    /// Outcome unknown: the request may or may not have been applied. It reached at least one
    /// node, but no answer came back before the deadline.
    #[error(
        "request timed out after {after:.1?} (last error: {last_error}); \
         it may or may not have been applied"
    )]
    Timeout {
        /// How long the client tried.
        after: Duration,
        /// What went wrong on the last attempt.
        last_error: String,
    },
    /// A node sent something this client does not understand (an unexpected frame, a
    /// malformed body, or a reply over `max_reply_bytes`). Likely a version skew or a bug.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request does not fit in one frame, so it was not sent.
    #[error(
        "request of {len} bytes exceeds the frame limit of {max} bytes (the node's \
         --max-frame-bytes, or this client's max_reply_bytes); it was not sent"
    )]
    RequestTooLarge {
        /// Encoded size of the request.
        len: usize,
        /// The client's frame limit.
        max: usize,
    },
    /// The client configuration cannot work; nothing was sent.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// TLS settings of the client and a node do not match (one side speaks TLS and the other
    /// not, a certificate is missing or refused); nothing was sent. The message says what to
    /// change. Not retried: a mismatch does not go away by waiting.
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// True when the request may have been applied although we got no answer saying so: a
    /// `Timeout`, a `NoNodeReachable` after the request was sent somewhere, or a `Protocol`
    /// error (we cannot tell what a node that broke the protocol did, so we assume the worst).
    /// A caller that must not apply a write twice should read the string before retrying
    /// with a new sequence number.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            ClientError::Timeout { .. } | ClientError::Protocol(_) => true,
            ClientError::NoNodeReachable { request_sent, .. }
            | ClientError::Unavailable { request_sent, .. } => *request_sent,
            ClientError::Server(_)
            | ClientError::RequestTooLarge { .. }
            | ClientError::Config(_)
            | ClientError::Tls(_) => false,
        }
    }

    /// True when the cluster could not be reached or did not answer in time, as opposed to a
    /// request the cluster (or this client) refused. Tools use it to pick an exit code.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClientError::NoNodeReachable { .. }
                | ClientError::Timeout { .. }
                | ClientError::Unavailable { .. }
        )
    }
}

impl From<strstore_protocol::Error> for ClientError {
    fn from(error: strstore_protocol::Error) -> Self {
        ClientError::Server(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strstore_protocol::Error;

    #[test]
    fn messages_say_what_to_do() {
        let unreachable = ClientError::NoNodeReachable {
            addrs: "127.0.0.1:7379".into(),
            last_error: "connection refused".into(),
            request_sent: false,
        };
        assert_eq!(
            unreachable.to_string(),
            "no node reachable at 127.0.0.1:7379 (last error: connection refused): \
             is the cluster up?"
        );
        let timeout = ClientError::Timeout {
            after: Duration::from_millis(10_000),
            last_error: "no reply within 5.0s".into(),
        };
        assert_eq!(
            timeout.to_string(),
            "request timed out after 10.0s (last error: no reply within 5.0s); \
             it may or may not have been applied"
        );
        let server = ClientError::Server(Error::ValueTooLarge { size: 9, max: 4 });
        assert_eq!(server.to_string(), Error::ValueTooLarge { size: 9, max: 4 }.to_string());
    }

    #[test]
    fn outcome_is_unknown_only_without_an_answer() {
        let unreachable = |request_sent| ClientError::NoNodeReachable {
            addrs: String::new(),
            last_error: String::new(),
            request_sent,
        };
        let timeout = ClientError::Timeout { after: Duration::ZERO, last_error: String::new() };
        assert!(timeout.is_outcome_unknown());
        assert!(unreachable(true).is_outcome_unknown());
        assert!(!unreachable(false).is_outcome_unknown());
        assert!(ClientError::Protocol("?".into()).is_outcome_unknown());
        assert!(!ClientError::Server(Error::Superseded { seq: 3 }).is_outcome_unknown());
        assert!(!ClientError::RequestTooLarge { len: 2, max: 1 }.is_outcome_unknown());
    }
}
