//! [`Client`]: sends one request at a time and retries it until it gets an answer.
//!
//! Every request carries `(client, seq)`. A retry, at the same node or another, reuses both,
//! so the cluster applies the request at most once however many copies of it arrive.
//!
//! Retry policy, per request:
//! 1. Try the node that answered last. On a connection failure, an I/O error, no reply within
//!    `attempt_timeout`, or a retryable server error ([`Error::is_retryable`]), try the next
//!    node in the list.
//! 2. After a full round in which every node failed, sleep with jittered exponential backoff
//!    (50 ms doubling to 1 s) and start another round.
//! 3. Stop at the first non-retryable server error, or when `request_timeout` has passed.

use bytes::Bytes;
use strstore_protocol::{
    ClientFrame, ClientId, ClusterReport, Error, NodeId, Op, ReplicaReport, ReqSeq, Request,
    Response, ServerFrame,
};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::connection::{self, ConnError, Connection};
use crate::retry::{Backoff, Rotation, BACKOFF_MAX, BACKOFF_MIN};
use crate::stream::Stream;
use crate::{ClientConfig, ClientError};

/// The byte stream under a connection: plain TCP or TLS, as configured.
type Transport = Stream;

/// A session with a strstore cluster. It holds at most one connection, sends one request at
/// a time and numbers its requests 1, 2, 3...
pub struct Client {
    config: ClientConfig,
    /// Random, so that sessions never share an identity (the cluster keys exactly-once on it).
    client_id: ClientId,
    /// Number for the next new request; never goes down, because a node refuses a request
    /// older than one it already applied for this client ([`Error::Superseded`]).
    next_seq: ReqSeq,
    /// Which node to try first: the one that answered last.
    rotation: Rotation,
    /// Open connection to `config.addrs[rotation.current()]`, if any. Opened lazily.
    conn: Option<Connection<Transport>>,
    /// TLS settings built once from `config.tls` (files read at creation, not per connection).
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("next_seq", &self.next_seq)
            .field("current_addr", &self.current_addr())
            .field("connected_node", &self.connected_node())
            .finish()
    }
}

/// How one attempt at one node ended, when it did not end with an answer.
enum AttemptError {
    /// Could not connect or complete the hello; the request was not sent.
    Unreachable(String),
    /// The request was sent but no answer came back.
    NoAnswer(String),
    /// The node answered with an error that another node, or a later try, may not give.
    Retryable { error: Error, sent: bool },
    /// Stop retrying and return this.
    Fatal(ClientError),
}

impl AttemptError {
    /// Whether the request reached a node in this attempt.
    fn sent(&self) -> bool {
        match self {
            AttemptError::Unreachable(_) | AttemptError::Fatal(_) => false,
            AttemptError::NoAnswer(_) => true,
            AttemptError::Retryable { sent, .. } => *sent,
        }
    }

    fn message(&self) -> String {
        match self {
            AttemptError::Unreachable(m) | AttemptError::NoAnswer(m) => m.clone(),
            AttemptError::Retryable { error, .. } => error.to_string(),
            AttemptError::Fatal(error) => error.to_string(),
        }
    }
}

impl Client {
    /// A client with a fresh random identity. Connects lazily, on the first request.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        // Zero is avoided so an unset id in a log or a test never looks like a real client.
        let client_id = loop {
            let id: ClientId = rand::random();
            if id != 0 {
                break id;
            }
        };
        Self::with_identity(config, client_id, 1)
    }

    /// A client that continues the session `client_id` at request number `next_seq`. Tests use
    /// it to send a request again exactly as an earlier client sent it.
    pub fn with_identity(
        config: ClientConfig,
        client_id: ClientId,
        next_seq: ReqSeq,
    ) -> Result<Self, ClientError> {
        config.validate()?;
        if next_seq == 0 {
            return Err(ClientError::Config("request numbers start at 1".into()));
        }
        let tls = config.tls.as_ref().map(crate::tls::connector).transpose()?;
        let rotation = Rotation::new(config.addrs.len(), 0);
        Ok(Self { config, client_id, next_seq, rotation, conn: None, tls })
    }

    /// This session's identity, as sent in every request.
    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    /// The number the next new request will carry.
    pub fn next_seq(&self) -> ReqSeq {
        self.next_seq
    }

    /// The node the next request goes to first: the one that answered last.
    pub fn current_addr(&self) -> &str {
        &self.config.addrs[self.rotation.current()]
    }

    /// The id of the node we are connected to, if a connection is open.
    pub fn connected_node(&self) -> Option<NodeId> {
        self.conn.as_ref().map(Connection::node)
    }

    /// Appends `value` to the string; returns the string's new length.
    pub async fn append(&mut self, value: impl Into<Bytes>) -> Result<u64, ClientError> {
        expect_len(self.execute(Op::Append(value.into())).await?)
    }

    /// Replaces the string with `value`; returns its new length.
    pub async fn set(&mut self, value: impl Into<Bytes>) -> Result<u64, ClientError> {
        expect_len(self.execute(Op::Set(value.into())).await?)
    }

    /// Reads the whole string.
    pub async fn get(&mut self) -> Result<Bytes, ClientError> {
        expect_value(self.execute(Op::Get).await?)
    }

    /// Reads at most `len` bytes of the string from `offset` (fewer where it ends sooner),
    /// at one point of the order like `get`.
    pub async fn get_range(&mut self, offset: u64, len: u64) -> Result<Bytes, ClientError> {
        expect_value(self.execute(Op::GetRange { offset, len }).await?)
    }

    /// The string's length, at one point of the order like `get`.
    pub async fn string_len(&mut self) -> Result<u64, ClientError> {
        expect_len(self.execute(Op::Len).await?)
    }

    /// The cluster as the master sees it, from the first node that answers (any node can:
    /// members relay the master's table).
    pub async fn status(&mut self) -> Result<ClusterReport, ClientError> {
        self.ask(ClientFrame::Status, |answer| match answer {
            ServerFrame::Status(report) => Some(report),
            _ => None,
        })
        .await
    }

    /// The replica state of the first node that answers: its view, what it applied and its
    /// string, as that node holds them now (not a linearizable read). Give the client one
    /// address to inspect one particular node.
    pub async fn inspect(&mut self) -> Result<ReplicaReport, ClientError> {
        self.ask(ClientFrame::Inspect, |answer| match answer {
            ServerFrame::Inspection(report) => Some(report),
            _ => None,
        })
        .await
    }

    /// Sends `question` to one node after another until one answers with a frame `extract`
    /// accepts, or the request deadline passes. Questions change nothing, so asking again
    /// is always safe.
    async fn ask<T>(
        &mut self,
        question: ClientFrame,
        extract: fn(ServerFrame) -> Option<T>,
    ) -> Result<T, ClientError> {
        let started = Instant::now();
        let deadline = started + self.config.request_timeout;
        let mut last_error = String::from("no attempt made");
        let mut answered = false;
        while Instant::now() < deadline {
            for _ in 0..self.rotation.len() {
                let attempt_deadline = (Instant::now() + self.config.attempt_timeout).min(deadline);
                let outcome = match self.connect(attempt_deadline).await {
                    Ok(mut conn) => {
                        match timeout_at(attempt_deadline, conn.ask(question.clone())).await {
                            Ok(Ok(answer)) => match extract(answer) {
                                Some(value) => return Ok(value),
                                None => {
                                    return Err(ClientError::Protocol(
                                        "the node answered another question".into(),
                                    ))
                                }
                            },
                            Ok(Err(e)) => match classify(e, false, self.current_addr()) {
                                AttemptError::Fatal(error) => return Err(error),
                                other => {
                                    answered |= matches!(other, AttemptError::Retryable { .. });
                                    self.with_addr(other.message())
                                }
                            },
                            Err(_) => self.with_addr("no answer in time".into()),
                        }
                    }
                    // A TLS mismatch will not go away by asking again.
                    Err(AttemptError::Fatal(error)) => return Err(error),
                    Err(e) => {
                        answered |= matches!(e, AttemptError::Retryable { .. });
                        self.with_addr(e.message())
                    }
                };
                last_error = outcome;
                self.rotation.advance();
            }
            sleep_until((Instant::now() + BACKOFF_MIN).min(deadline)).await;
        }
        if answered {
            let after = started.elapsed();
            return Err(ClientError::Unavailable { after, last_error, request_sent: false });
        }
        Err(ClientError::NoNodeReachable {
            addrs: self.config.addrs.join(", "),
            last_error,
            request_sent: false,
        })
    }

    /// Sends `op` as the next request and retries it until it is answered or the deadline
    /// passes.
    pub async fn execute(&mut self, op: Op) -> Result<Response, ClientError> {
        self.execute_with_seq(self.next_seq, op).await
    }

    /// Sends `op` with request number `seq`, as if it were a retry of request `seq`. Later
    /// requests from [`execute`](Self::execute) are numbered after `seq`. Exactly-once tests
    /// use it to resend a request the cluster may already have applied.
    pub async fn execute_with_seq(&mut self, seq: ReqSeq, op: Op) -> Result<Response, ClientError> {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        let request = Request { client: self.client_id, seq, op };
        let started = Instant::now();
        let deadline = started + self.config.request_timeout;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut request_sent = false;
        let mut failures_this_round = 0;
        let mut last_failure = None;
        // Whether some node answered (busy, unavailable): then "no node reachable" is untrue.
        let mut answered = false;
        while Instant::now() < deadline {
            if failures_this_round == self.rotation.len() {
                let delay = backoff.next_delay(&mut rand::thread_rng());
                debug!(seq, ?delay, "every node failed; backing off");
                sleep_until((Instant::now() + delay).min(deadline)).await;
                failures_this_round = 0;
                continue;
            }
            match self.attempt(&request, deadline).await {
                Ok(response) => return Ok(response),
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(failure) => {
                    let message = self.with_addr(failure.message());
                    debug!(seq, error = message, "attempt failed");
                    request_sent |= failure.sent();
                    answered |= matches!(failure, AttemptError::Retryable { .. });
                    last_failure = Some((message, matches!(failure, AttemptError::Unreachable(_))));
                    failures_this_round += 1;
                    self.rotation.advance();
                }
            }
        }
        let (last_error, unreachable) =
            last_failure.expect("the first attempt starts before the deadline");
        Err(if answered {
            ClientError::Unavailable { after: started.elapsed(), last_error, request_sent }
        } else if unreachable || !request_sent {
            let addrs = self.config.addrs.join(", ");
            ClientError::NoNodeReachable { addrs, last_error, request_sent }
        } else {
            ClientError::Timeout { after: started.elapsed(), last_error }
        })
    }

    /// One try at the current node: connect if needed, send, wait for the matching reply.
    async fn attempt(
        &mut self,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, AttemptError> {
        let started = Instant::now();
        let attempt_deadline = (started + self.config.attempt_timeout).min(deadline);
        if self.conn.is_none() {
            self.conn = Some(self.connect(attempt_deadline).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let outcome = timeout_at(attempt_deadline, conn.call(request.clone())).await;
        let result = match outcome {
            Ok(Ok(Ok(response))) => return Ok(response),
            Ok(Ok(Err(error))) if !error.is_retryable() => {
                // The node refused this request but the connection is healthy: keep it.
                return Err(AttemptError::Fatal(ClientError::Server(error)));
            }
            Ok(Ok(Err(error))) => Err(AttemptError::Retryable { error, sent: true }),
            Ok(Err(error)) => Err(classify(error, true, self.current_addr())),
            Err(_) => {
                Err(AttemptError::NoAnswer(format!("no reply within {:.1?}", started.elapsed())))
            }
        };
        // Whatever went wrong, the next attempt goes elsewhere or starts afresh.
        self.conn = None;
        result
    }

    /// Opens a connection to the current node and completes the hello, giving up at the
    /// connect timeout or `attempt_deadline`, whichever comes first.
    async fn connect(
        &self,
        attempt_deadline: Instant,
    ) -> Result<Connection<Transport>, AttemptError> {
        let addr = self.current_addr();
        let connect_deadline = (Instant::now() + self.config.connect_timeout).min(attempt_deadline);
        let max_frame_bytes = self.config.max_reply_bytes;
        let open = async {
            let stream = connection::open(addr, self.tls.as_ref()).await?;
            Connection::handshake(stream, max_frame_bytes).await
        };
        match timeout_at(connect_deadline, open).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(classify(error, false, addr)),
            Err(_) => Err(AttemptError::Unreachable(format!(
                "no connection within {:.1?}",
                self.config.connect_timeout
            ))),
        }
    }

    /// Prefixes an attempt's error with the node's address when there is more than one node
    /// to tell apart.
    fn with_addr(&self, message: String) -> String {
        if self.config.addrs.len() > 1 {
            format!("{}: {message}", self.current_addr())
        } else {
            message
        }
    }
}

/// Sorts a connection failure by what the retry loop should do with it. `sent` says whether
/// the request had been handed to the connection; `addr` is the node's, for TLS messages.
fn classify(error: ConnError, sent: bool, addr: &str) -> AttemptError {
    match error {
        // A TLS failure after the request went out leaves its outcome unknown, like a reset.
        ConnError::Tls(failure) if sent => AttemptError::NoAnswer(failure.describe(addr)),
        ConnError::Tls(failure) => AttemptError::Fatal(ClientError::Tls(failure.describe(addr))),
        ConnError::Io(message) if sent => AttemptError::NoAnswer(message),
        ConnError::Io(message) => AttemptError::Unreachable(message),
        ConnError::Rejected(error) if error.is_retryable() => {
            AttemptError::Retryable { error, sent }
        }
        ConnError::Rejected(error) => AttemptError::Fatal(ClientError::Server(error)),
        ConnError::Protocol(message) => AttemptError::Fatal(ClientError::Protocol(message)),
        ConnError::RequestTooLarge { len, max } => {
            AttemptError::Fatal(ClientError::RequestTooLarge { len, max })
        }
    }
}

fn expect_len(response: Response) -> Result<u64, ClientError> {
    match response {
        Response::Len(len) => Ok(len),
        Response::Value(_) => {
            Err(ClientError::Protocol("a length was answered with a value".into()))
        }
    }
}

fn expect_value(response: Response) -> Result<Bytes, ClientError> {
    match response {
        Response::Value(value) => Ok(value),
        Response::Len(_) => Err(ClientError::Protocol("a read was answered with a length".into())),
    }
}
