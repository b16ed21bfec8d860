//! The client against tiny in-process fake nodes that speak the wire protocol: handshake,
//! replies, and the retry policy (which node is tried next, and that a retry keeps the same
//! `(client, seq)`).
//!
//! Nothing here depends on timing except the deadline tests, which only check what happens
//! once a deadline has passed, and the failover tests, which bound how long moving on from a
//! hung node takes with a second of slack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use strstore_client::protocol::{
    ClientFrame, Codec, Error, Reply, Request, Response, ServerFrame, PROTOCOL_VERSION,
};
use strstore_client::{Client, ClientConfig, ClientError, Op};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// Deadline for requests that are expected to succeed: generous, so a slow CI machine never
/// turns a pass into a timeout.
const GENEROUS: Duration = Duration::from_secs(30);

/// How a fake node treats requests.
type Behaviour = dyn Fn(&Request) -> Action + Send + Sync;

/// What a fake node does with one request.
enum Action {
    Reply(Result<Response, Error>),
    /// Send a reply to some other request first, then this one.
    ReplyAfterStray(Result<Response, Error>),
    /// Close the connection without answering.
    Hangup,
    /// Keep the connection open and never answer.
    Ignore,
}

/// A fake node listening on 127.0.0.1 with an OS-chosen port.
struct FakeNode {
    addr: String,
    /// Every request received, in order.
    requests: Arc<Mutex<Vec<Request>>>,
    /// Number of connections accepted.
    connections: Arc<Mutex<usize>>,
}

impl FakeNode {
    /// A node that welcomes every client and answers requests as `behaviour` says.
    async fn start(behaviour: impl Fn(&Request) -> Action + Send + Sync + 'static) -> Self {
        Self::start_with(None, Arc::new(behaviour)).await
    }

    /// A node that answers every hello with `Goodbye(error)`.
    async fn refusing(error: Error) -> Self {
        Self::start_with(Some(error), Arc::new(|_: &Request| Action::Ignore)).await
    }

    async fn start_with(goodbye: Option<Error>, behaviour: Arc<Behaviour>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (log, count) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                *count.lock().unwrap() += 1;
                tokio::spawn(serve(socket, goodbye.clone(), behaviour.clone(), log.clone()));
            }
        });
        Self { addr, requests, connections }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

async fn serve(
    socket: TcpStream,
    goodbye: Option<Error>,
    behaviour: Arc<Behaviour>,
    log: Arc<Mutex<Vec<Request>>>,
) {
    let mut framed = Framed::new(socket, Codec::<ClientFrame, ServerFrame>::default());
    match framed.next().await {
        Some(Ok(ClientFrame::Hello(hello))) => assert_eq!(hello.version, PROTOCOL_VERSION),
        other => panic!("expected a hello first, got {other:?}"),
    }
    if let Some(error) = goodbye {
        framed.send(ServerFrame::Goodbye(error)).await.unwrap();
        return;
    }
    let welcome =
        ServerFrame::Welcome { version: PROTOCOL_VERSION, node: 7, max_request_bytes: 1 << 20 };
    framed.send(welcome).await.unwrap();
    while let Some(Ok(frame)) = framed.next().await {
        let ClientFrame::Request(request) = frame else { panic!("second hello") };
        log.lock().unwrap().push(request.clone());
        let seq = request.seq;
        let result = match behaviour(&request) {
            Action::Reply(result) => result,
            Action::ReplyAfterStray(result) => {
                let stray = Reply { seq: seq + 100, result: Ok(Response::Len(999)) };
                framed.send(ServerFrame::Reply(stray)).await.unwrap();
                result
            }
            Action::Hangup => return,
            Action::Ignore => {
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        if framed.send(ServerFrame::Reply(Reply { seq, result })).await.is_err() {
            return;
        }
    }
}

/// An address nothing listens on: bind a port, then free it.
async fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

fn config(addrs: &[&str], request_timeout: Duration) -> ClientConfig {
    ClientConfig {
        addrs: addrs.iter().map(|a| a.to_string()).collect(),
        request_timeout,
        ..ClientConfig::default()
    }
}

fn len_of_value(request: &Request) -> Action {
    match &request.op {
        Op::Append(v) | Op::Set(v) => Action::Reply(Ok(Response::Len(v.len() as u64 + 40))),
        Op::Get | Op::GetRange { .. } => Action::Reply(Ok(Response::Value("hello".into()))),
        Op::Len => Action::Reply(Ok(Response::Len(5))),
    }
}

fn unavailable() -> Error {
    Error::Unavailable { reason: "not a member".into(), try_nodes: vec![] }
}

#[tokio::test]
async fn handshake_then_requests_numbered_from_one() {
    let node = FakeNode::start(len_of_value).await;
    let mut client = Client::new(config(&[&node.addr], GENEROUS)).unwrap();
    assert_eq!(client.append("abc").await.unwrap(), 43, "the length the node returned");
    assert_eq!(client.set("abcd").await.unwrap(), 44);
    assert_eq!(&client.get().await.unwrap()[..], b"hello");
    assert_eq!(client.connected_node(), Some(7));

    let requests = node.requests();
    let seqs: Vec<_> = requests.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(requests.iter().all(|r| r.client == client.client_id()));
    assert_eq!(requests[0].op, Op::Append("abc".into()));
    assert_eq!(node.connections(), 1, "one connection serves every request");
}

#[tokio::test]
async fn retryable_error_moves_to_next_node_with_same_identity() {
    let sick = FakeNode::start(|_| Action::Reply(Err(unavailable()))).await;
    let healthy = FakeNode::start(len_of_value).await;
    let mut client = Client::new(config(&[&sick.addr, &healthy.addr], GENEROUS)).unwrap();

    assert_eq!(client.append("xy").await.unwrap(), 42);
    let (tried, served) = (sick.requests(), healthy.requests());
    assert_eq!(tried.len(), 1);
    assert_eq!(served, tried, "the retry carries the same client id, seq and op");
    assert_eq!((served[0].client, served[0].seq), (client.client_id(), 1));

    // The next request starts at the node that answered.
    client.append("z").await.unwrap();
    assert_eq!(sick.requests().len(), 1);
    assert_eq!(healthy.requests()[1].seq, 2);
}

#[tokio::test]
async fn dead_first_address_is_skipped() {
    let dead = dead_addr().await;
    let node = FakeNode::start(len_of_value).await;
    let mut client = Client::new(config(&[&dead, &node.addr], GENEROUS)).unwrap();
    assert_eq!(client.append("a").await.unwrap(), 41);
    assert_eq!(node.requests()[0].seq, 1);
    assert_eq!(client.current_addr(), node.addr);
}

#[tokio::test]
async fn lost_connection_is_retried_with_same_seq() {
    let node = FakeNode::start({
        let calls = Mutex::new(0);
        move |request| {
            let mut calls = calls.lock().unwrap();
            *calls += 1;
            if *calls == 1 {
                Action::Hangup
            } else {
                len_of_value(request)
            }
        }
    })
    .await;
    let mut client = Client::new(config(&[&node.addr], GENEROUS)).unwrap();
    assert_eq!(client.append("a").await.unwrap(), 41);
    let seqs: Vec<_> = node.requests().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 1], "the same request, sent again after reconnecting");
    assert_eq!(node.connections(), 2);
}

#[tokio::test]
async fn version_mismatch_goodbye_is_a_server_error_without_retry() {
    let mismatch = Error::VersionMismatch { ours: PROTOCOL_VERSION + 1, theirs: PROTOCOL_VERSION };
    let refusing = FakeNode::refusing(mismatch.clone()).await;
    let healthy = FakeNode::start(len_of_value).await;
    let mut client = Client::new(config(&[&refusing.addr, &healthy.addr], GENEROUS)).unwrap();
    match client.append("a").await {
        Err(ClientError::Server(error)) => assert_eq!(error, mismatch),
        other => panic!("expected the version mismatch, got {other:?}"),
    }
    assert!(healthy.requests().is_empty(), "a non-retryable error is not retried elsewhere");
}

#[tokio::test]
async fn rejected_request_returns_at_once_and_keeps_the_connection() {
    let too_large = Error::ValueTooLarge { size: 5, max: 4 };
    let node = FakeNode::start({
        let too_large = too_large.clone();
        move |request| match request.op {
            Op::Append(_) => Action::Reply(Err(too_large.clone())),
            _ => len_of_value(request),
        }
    })
    .await;
    let mut client = Client::new(config(&[&node.addr], GENEROUS)).unwrap();
    let error = client.append("abcde").await.unwrap_err();
    assert!(matches!(&error, ClientError::Server(e) if *e == too_large), "{error:?}");
    assert!(!error.is_outcome_unknown());
    assert_eq!(client.set("x").await.unwrap(), 41);
    assert_eq!(node.requests().len(), 2, "the rejected request was sent once");
    assert_eq!(node.connections(), 1);
}

#[tokio::test]
async fn replies_to_other_requests_are_skipped() {
    let node = FakeNode::start(|request| match len_of_value(request) {
        Action::Reply(result) => Action::ReplyAfterStray(result),
        other => other,
    })
    .await;
    let mut client = Client::new(config(&[&node.addr], GENEROUS)).unwrap();
    assert_eq!(client.append("ab").await.unwrap(), 42);
}

#[tokio::test]
async fn explicit_identity_and_seq_are_sent_as_given() {
    let node = FakeNode::start(len_of_value).await;
    let mut client = Client::with_identity(config(&[&node.addr], GENEROUS), 99, 5).unwrap();
    client.append("a").await.unwrap();
    client.execute_with_seq(5, Op::Append("a".into())).await.unwrap();
    client.execute(Op::Get).await.unwrap();
    let sent: Vec<_> = node.requests().iter().map(|r| (r.client, r.seq)).collect();
    assert_eq!(sent, [(99, 5), (99, 5), (99, 6)]);
}

#[tokio::test]
async fn nothing_listening_is_no_node_reachable() {
    let (a, b) = (dead_addr().await, dead_addr().await);
    let mut client = Client::new(config(&[&a, &b], Duration::from_millis(300))).unwrap();
    let error = client.get().await.unwrap_err();
    let ClientError::NoNodeReachable { addrs, request_sent, .. } = &error else {
        panic!("expected NoNodeReachable, got {error:?}");
    };
    assert_eq!(*addrs, format!("{a}, {b}"));
    assert!(!request_sent);
    assert!(!error.is_outcome_unknown());
    assert!(error.to_string().contains("is the cluster up?"), "{error}");
}

#[tokio::test]
async fn silent_node_is_a_timeout_with_unknown_outcome() {
    let node = FakeNode::start(|_| Action::Ignore).await;
    let mut client = Client::new(config(&[&node.addr], Duration::from_millis(300))).unwrap();
    let error = client.append("a").await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    assert!(error.is_outcome_unknown());
}

#[tokio::test]
async fn nodes_that_answer_unavailable_are_not_called_unreachable() {
    let sick = FakeNode::start(|_| Action::Reply(Err(unavailable()))).await;
    let mut client = Client::new(config(&[&sick.addr], Duration::from_millis(500))).unwrap();
    let error = client.append("x").await.unwrap_err();
    let ClientError::Unavailable { last_error, request_sent, .. } = &error else {
        panic!("expected Unavailable, got {error:?}");
    };
    assert!(last_error.contains("not a member"), "{last_error}");
    assert!(*request_sent, "the node received the request and refused it");
    assert!(error.to_string().contains("the cluster answered"), "{error}");
}

#[tokio::test]
async fn a_status_that_only_finds_refusing_nodes_is_unavailable_not_unreachable() {
    let sick = FakeNode::refusing(unavailable()).await;
    let mut client = Client::new(config(&[&sick.addr], Duration::from_millis(500))).unwrap();
    let error = client.status().await.unwrap_err();
    assert!(matches!(error, ClientError::Unavailable { request_sent: false, .. }), "{error:?}");
    let error = client.append("x").await.unwrap_err();
    assert!(matches!(error, ClientError::Unavailable { request_sent: false, .. }), "{error:?}");
    assert!(!error.is_outcome_unknown(), "refused at the hello: nothing was sent");
}

/// The deadline `strstore-cli --timeout 5` gives a request.
const CLI_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request may take when one of two nodes hangs: the hung node's share of the
/// deadline (half of it) plus a second of slack for a slow machine. Well short of the
/// deadline, which is what the first node alone used to take.
const FAILOVER_WITHIN: Duration = Duration::from_millis(3_500);

/// A node cut off from its peers: it completes the hello and takes requests, but answers
/// nothing (a real node holds them for up to its failure timeout before it starts answering
/// `Unavailable`; docs/protocol.md "Heartbeats and failure detection").
fn cut_off(_: &Request) -> Action {
    Action::Ignore
}

#[tokio::test]
async fn a_node_that_accepts_but_never_answers_costs_only_its_share_of_the_deadline() {
    let hung = FakeNode::start(cut_off).await;
    let healthy = FakeNode::start(len_of_value).await;
    // What `strstore-cli --addr HUNG,HEALTHY --timeout 5` builds.
    let mut client = Client::new(config(&[&hung.addr, &healthy.addr], CLI_TIMEOUT)).unwrap();

    let started = std::time::Instant::now();
    assert_eq!(client.append("hello").await.unwrap(), 45, "served by the healthy node");
    let write_took = started.elapsed();
    eprintln!("write served after {write_took:.2?}");
    assert!(write_took < FAILOVER_WITHIN, "the write took {write_took:?}");
    let (tried, served) = (hung.requests(), healthy.requests());
    assert_eq!(served, tried, "the write moved on with the same (client, seq)");

    let started = std::time::Instant::now();
    assert_eq!(&client.get().await.unwrap()[..], b"hello");
    let read_took = started.elapsed();
    eprintln!("get served after {read_took:.2?}");
    assert!(read_took < Duration::from_secs(1), "the get went back to the hung node");
    assert_eq!(hung.requests().len(), 1, "the get starts at the node that answered");
}

/// Runs the built `strstore-cli` with `args` and returns its stdout, stderr, exit code and
/// run time. Runs on a blocking thread so the fake nodes keep serving meanwhile.
async fn run_cli(args: Vec<String>) -> (String, String, Option<i32>, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_strstore-cli"))
            .args(&args)
            .env_remove("STRSTORE_ADDR")
            .env_remove("STRSTORE_TLS_CA")
            .env_remove("STRSTORE_TLS_CERT")
            .env_remove("STRSTORE_TLS_KEY")
            .env_remove("RUST_LOG")
            .output()
            .expect("strstore-cli runs");
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        (text(output.stdout), text(output.stderr), output.status.code(), started.elapsed())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_cli_fails_over_from_a_hung_first_node_within_its_timeout() {
    let hung = FakeNode::start(cut_off).await;
    let healthy = FakeNode::start(len_of_value).await;
    let addrs = format!("{},{}", hung.addr, healthy.addr);
    for (command, expected) in [("append", "45\n"), ("get", "hello\n")] {
        let mut args = vec!["--addr".into(), addrs.clone(), "--timeout".into(), "5".into()];
        args.push(command.into());
        if command == "append" {
            args.push("hello".into());
        }
        let (stdout, stderr, code, took) = run_cli(args).await;
        eprintln!("strstore-cli {command} finished after {took:.2?}");
        assert_eq!((code, stdout.as_str()), (Some(0), expected), "{command}: {stderr}");
        assert!(took < FAILOVER_WITHIN, "{command} took {took:?}");
    }
    assert_eq!(hung.requests().len(), 2, "each run tried the first node once");
    assert_eq!(healthy.requests().len(), 2);
}

/// A node that serves while `serving` is set and answers `Unavailable` otherwise.
async fn switchable(serving: &Arc<AtomicBool>) -> FakeNode {
    let serving = serving.clone();
    FakeNode::start(move |request| match serving.load(Ordering::SeqCst) {
        true => len_of_value(request),
        false => Action::Reply(Err(unavailable())),
    })
    .await
}

#[tokio::test]
async fn requests_start_at_the_node_that_answered_most_recently_and_skip_recent_failures() {
    let hung = FakeNode::start(cut_off).await;
    let (b_serves, c_serves) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let (b, c) = (switchable(&b_serves).await, switchable(&c_serves).await);
    let deadline = Duration::from_secs(3);
    let mut client = Client::new(config(&[&hung.addr, &b.addr, &c.addr], deadline)).unwrap();
    let requests = |node: &FakeNode| node.requests().len();

    client.append("1").await.unwrap();
    assert_eq!((requests(&hung), requests(&b), requests(&c)), (1, 1, 0), "hung, then b");

    // b fails: c, never tried, goes before the node that just hung.
    b_serves.store(false, Ordering::SeqCst);
    client.append("2").await.unwrap();
    assert_eq!((requests(&hung), requests(&b), requests(&c)), (1, 2, 1));

    // Six seconds later (the client's clock jumps) both failures are older than the 5 s a
    // failure counts against a node: b, which answered once, goes before the node that never
    // did, once c, the latest to answer, fails.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(6)).await;
    tokio::time::resume();
    b_serves.store(true, Ordering::SeqCst);
    c_serves.store(false, Ordering::SeqCst);
    let started = std::time::Instant::now();
    client.append("3").await.unwrap();
    let took = started.elapsed();
    assert_eq!((requests(&hung), requests(&b), requests(&c)), (1, 3, 2), "c, then b");
    assert!(took < Duration::from_millis(500), "the third write took {took:?}");
    assert_eq!(client.current_addr(), b.addr);
}
