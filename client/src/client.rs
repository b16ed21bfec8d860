//! [`Client`]: sends one request at a time and retries it until it gets an answer.
//!
//! Every request carries `(client, seq)`. A retry, at the same node or another, reuses both,
//! so the cluster applies the request at most once however many copies of it arrive.
//!
//! Retry policy, per request:
//! 1. Try the nodes in rounds, each node once per round, in order of preference: the node
//!    that answered most recently first, then the others by how recently they answered (in
//!    list order if never), and nodes that failed in the last few seconds last.
//! 2. Each attempt gets an equal share of what remains of `request_timeout` among the nodes
//!    the round has left, at least 0.5 s and at most `attempt_timeout`. So a node that takes
//!    the request and never answers (one cut off from its peers) costs only its share, and
//!    the next node still has time. On a connection failure, an I/O error, no reply within
//!    the share, or a retryable server error ([`Error::is_retryable`]), try the next node.
//! 3. After a round in which every node failed, sleep with jittered exponential backoff
//!    (50 ms doubling to 1 s) and start another round.
//! 4. Stop at the first non-retryable server error, or when `request_timeout` has passed.

use std::time::Duration;

use bytes::Bytes;
use strstore_protocol::{
    ClientFrame, ClientId, ClusterReport, Error, NodeId, Op, ReplicaReport, ReqSeq, Request,
    Response, ServerFrame,
};
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::connection::{self, ConnError, Connection};
use crate::retry::{attempt_timeout, Backoff, NodeHealth, BACKOFF_MAX, BACKOFF_MIN};
use crate::stream::Stream;
use crate::{ClientConfig, ClientError};

/// A session with a strstore cluster. It holds at most one connection, sends one request at
/// a time and numbers its requests 1, 2, 3...
pub struct Client {
    config: ClientConfig,
    /// Random, so that sessions never share an identity (the cluster keys exactly-once on it).
    client_id: ClientId,
    /// Number for the next new request; never goes down, because a node refuses a request
    /// older than one it already applied for this client ([`Error::Superseded`]).
    next_seq: ReqSeq,
    /// When each node last answered and last failed: where a request starts, and where it
    /// goes next.
    health: NodeHealth,
    /// Open connection, if any, with the index in `config.addrs` of its node. Opened lazily,
    /// kept while it carries answers.
    conn: Option<(usize, Connection<Stream>)>,
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
        let health = NodeHealth::new(config.addrs.len());
        Ok(Self { config, client_id, next_seq, health, conn: None, tls })
    }

    /// This session's identity, as sent in every request.
    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    /// The number the next new request will carry.
    pub fn next_seq(&self) -> ReqSeq {
        self.next_seq
    }

    /// The node the next request goes to first: the one that answered most recently, unless
    /// it failed since (then another, see the module doc).
    pub fn current_addr(&self) -> &str {
        self.addr(self.health.preferred(Instant::now()))
    }

    /// The id of the node we are connected to, if a connection is open.
    pub fn connected_node(&self) -> Option<NodeId> {
        self.conn.as_ref().map(|(_, conn)| conn.node())
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
        let answer = self.retry(&question).await?;
        extract(answer)
            .ok_or_else(|| ClientError::Protocol("the node answered another question".into()))
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
        // Built once: every attempt, at any node, sends this same (client, seq).
        let request = Request { client: self.client_id, seq, op };
        self.retry(&request).await
    }

    /// Tries `job` at one node after another, in rounds that visit each node once in the
    /// order [`NodeHealth::order`] gives, with a backoff between rounds, until a node answers,
    /// an error says stop, or the request deadline passes.
    async fn retry<J: Job>(&mut self, job: &J) -> Result<J::Answer, ClientError> {
        let started = Instant::now();
        let deadline = started + self.config.request_timeout;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut failures = Failures::default();
        while Instant::now() < deadline {
            let order = self.health.order(Instant::now());
            for (tried, &node) in order.iter().enumerate() {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let cap = self.config.attempt_timeout;
                let budget = attempt_timeout(deadline - now, order.len() - tried, cap);
                let outcome = self.attempt(node, job, now + budget).await;
                let now = Instant::now();
                match outcome {
                    Ok(answer) => {
                        self.health.answered(node, now);
                        return Ok(answer);
                    }
                    Err(AttemptError::Fatal(error)) => {
                        // A refusal of this request still shows the node is up and serving.
                        if matches!(error, ClientError::Server(_)) {
                            self.health.answered(node, now);
                        }
                        return Err(error);
                    }
                    Err(failure) => {
                        self.health.failed(node, now);
                        let message = self.with_addr(node, failure.message());
                        debug!(job = job.describe(), ?budget, error = message, "attempt failed");
                        failures.record(&failure, message, J::CHANGES_STATE);
                    }
                }
            }
            let delay = backoff.next_delay(&mut rand::thread_rng());
            debug!(job = job.describe(), ?delay, "every node failed; backing off");
            sleep_until((Instant::now() + delay).min(deadline)).await;
        }
        Err(failures.into_error(started.elapsed(), &self.config.addrs))
    }

    /// One try at node `node`: connect if needed, send, wait for the answer until
    /// `attempt_deadline`. A connection to another node is closed first.
    async fn attempt<J: Job>(
        &mut self,
        node: usize,
        job: &J,
        attempt_deadline: Instant,
    ) -> Result<J::Answer, AttemptError> {
        let started = Instant::now();
        let mut conn = match self.conn.take() {
            Some((open, conn)) if open == node => conn,
            _ => self.connect(node, attempt_deadline).await?,
        };
        let result = match timeout_at(attempt_deadline, job.send(&mut conn)).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            // The node refused this request but the connection is healthy: keep it.
            Ok(Ok(Err(error))) if !error.is_retryable() => {
                Err(AttemptError::Fatal(ClientError::Server(error)))
            }
            Ok(Ok(Err(error))) => {
                return Err(AttemptError::Retryable { error, sent: J::CHANGES_STATE })
            }
            Ok(Err(error)) => return Err(classify(error, J::CHANGES_STATE, self.addr(node))),
            Err(_) => {
                let waited = started.elapsed();
                return Err(AttemptError::NoAnswer(format!("no reply within {waited:.1?}")));
            }
        };
        // Only a connection that just carried an answer is kept; after anything else the next
        // attempt goes elsewhere or starts afresh.
        self.conn = Some((node, conn));
        result
    }

    /// Opens a connection to node `node` and completes the hello, giving up at the connect
    /// timeout or `attempt_deadline`, whichever comes first.
    async fn connect(
        &self,
        node: usize,
        attempt_deadline: Instant,
    ) -> Result<Connection<Stream>, AttemptError> {
        let addr = self.addr(node);
        let connect_deadline = (Instant::now() + self.config.connect_timeout).min(attempt_deadline);
        let max_frame_bytes = self.config.max_reply_bytes;
        let open = async {
            let stream = connection::open(addr, self.tls.as_ref()).await?;
            Connection::handshake(stream, max_frame_bytes).await
        };
        let started = Instant::now();
        match timeout_at(connect_deadline, open).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(classify(error, false, addr)),
            Err(_) => Err(AttemptError::Unreachable(format!(
                "no connection within {:.1?}",
                started.elapsed()
            ))),
        }
    }

    /// The address of node `node`.
    fn addr(&self, node: usize) -> &str {
        &self.config.addrs[node]
    }

    /// Prefixes an attempt's error with the node's address when there is more than one node
    /// to tell apart.
    fn with_addr(&self, node: usize, message: String) -> String {
        if self.config.addrs.len() > 1 {
            format!("{}: {message}", self.addr(node))
        } else {
            message
        }
    }
}

/// Something the client sends and retries until a node answers it: a [`Request`] or a
/// question ([`ClientFrame::Status`], [`ClientFrame::Inspect`]).
trait Job {
    /// What a node answers.
    type Answer;
    /// Whether the node may act on it, so that an attempt without an answer leaves the
    /// outcome unknown. Questions change nothing.
    const CHANGES_STATE: bool;

    /// Sends it on `conn` and waits for the answer. The outer `Result` is the connection's
    /// fate; the inner one is the node's answer.
    async fn send(
        &self,
        conn: &mut Connection<Stream>,
    ) -> Result<Result<Self::Answer, Error>, ConnError>;

    /// For logs.
    fn describe(&self) -> String;
}

impl Job for Request {
    type Answer = Response;
    const CHANGES_STATE: bool = true;

    async fn send(
        &self,
        conn: &mut Connection<Stream>,
    ) -> Result<Result<Response, Error>, ConnError> {
        conn.call(self.clone()).await
    }

    fn describe(&self) -> String {
        format!("request {}", self.seq)
    }
}

impl Job for ClientFrame {
    type Answer = ServerFrame;
    const CHANGES_STATE: bool = false;

    async fn send(
        &self,
        conn: &mut Connection<Stream>,
    ) -> Result<Result<ServerFrame, Error>, ConnError> {
        conn.ask(self.clone()).await.map(Ok)
    }

    fn describe(&self) -> String {
        match self {
            ClientFrame::Status => "status".into(),
            ClientFrame::Inspect => "inspect".into(),
            other => format!("{other:?}"),
        }
    }
}

/// What the failed attempts of one request add up to, for the error its caller gets.
#[derive(Default)]
struct Failures {
    /// Some attempt handed the request to a node, so it may have been applied.
    request_sent: bool,
    /// Some node answered (busy, unavailable): then "no node reachable" is untrue.
    answered: bool,
    /// The last attempt's message, and whether that node was unreachable.
    last: Option<(String, bool)>,
}

impl Failures {
    /// Adds one failed attempt; `changes_state` is false for questions, which leave no
    /// outcome to be unsure of.
    fn record(&mut self, failure: &AttemptError, message: String, changes_state: bool) {
        self.request_sent |= changes_state && failure.sent();
        self.answered |= matches!(failure, AttemptError::Retryable { .. });
        self.last = Some((message, matches!(failure, AttemptError::Unreachable(_))));
    }

    /// The error for a request that ran out of time after these failures.
    fn into_error(self, after: Duration, addrs: &[String]) -> ClientError {
        let Failures { request_sent, answered, last } = self;
        let (last_error, unreachable) = last.unwrap_or_else(|| ("no attempt made".into(), true));
        if answered {
            ClientError::Unavailable { after, last_error, request_sent }
        } else if unreachable || !request_sent {
            ClientError::NoNodeReachable { addrs: addrs.join(", "), last_error, request_sent }
        } else {
            ClientError::Timeout { after, last_error }
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
