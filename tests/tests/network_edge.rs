//! The network edge, tried as a hostile client or stranger would: floods of connections
//! under a low open-files limit, slow-loris crowds, partial large frames and idle
//! connections. Each test names the bound it holds the node to.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use strstore_protocol::{ClientFrame, ClientHello, PROTOCOL_VERSION};
use strstore_server::edge::fd_limits::raise_open_files_limit;
use strstore_tests::cluster::{cli, ok_stdout, TestCluster};

/// The open-files limit the nodes run under: a common default.
const NODE_OPEN_FILES: u64 = 1024;

/// Opens `n` connections to `addr` (each sending `first`, if anything), keeping those the
/// kernel lets through. The test process raises its own limit to hold them.
fn crowd(addr: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let own = raise_open_files_limit();
    assert!(own > n as u64 + 100, "the test needs {n} descriptors; its limit is {own}");
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            if !first.is_empty() {
                let _ = stream.write_all(first);
            }
            held.push(stream);
        }
    }
    held
}

/// How many lines of `log` mention client or peer connections being refused, shed or closed.
fn connection_lines(log: &str) -> usize {
    log.lines().filter(|l| l.contains("connection") && l.contains("WARN")).count()
}

#[test]
fn a_slow_loris_crowd_neither_kills_the_node_nor_locks_a_real_client_out() {
    let mut c = TestCluster::start_with_open_files_limit(1, NODE_OPEN_FILES);
    let addr = c.nodes[0].client_addr;
    // One byte each, then nothing: never a complete hello.
    let held = crowd(addr, 2000, &[0]);
    println!("slow-loris connections opened: {}", held.len());
    let started = Instant::now();
    let out = cli(&addr.to_string(), &["--timeout", "15", "append", "real"]);
    let took = started.elapsed();
    println!(
        "a real client got in after {took:.2?} (fds held by the node: {:?})",
        c.nodes[0].open_fds()
    );
    assert_eq!(ok_stdout(&out), "4\n", "the real client's append");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(c.nodes[0].exited().is_none(), "the node died:\n{}", c.nodes[0].log());
    let log = c.nodes[0].log();
    assert!(log.contains("shed the oldest connection still in its hello"), "{log}");
    // The slots are not held for ever: the hello deadline frees what shedding did not.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.nodes[0].open_fds().is_some_and(|n| n > 100) {
        assert!(Instant::now() < deadline, "fds still held: {:?}", c.nodes[0].open_fds());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(held);
    let lines = connection_lines(&c.nodes[0].log());
    println!("warning lines about connections: {lines}");
    assert!(lines < 40, "warnings are rate-limited, got {lines}:\n{}", c.nodes[0].log());
    assert_eq!(c.cli_ok(1, &["get"]), "real\n");
}

#[test]
fn half_open_peer_connections_under_a_low_fd_limit_do_not_stop_writes() {
    let mut c = TestCluster::start_with_open_files_limit(3, NODE_OPEN_FILES);
    assert_eq!(c.cli_ok(1, &["append", "a"]), "1\n");
    // n1 is the master: 3,000 connections to its peer port that never start TLS.
    let held = crowd(c.nodes[0].peer_addr, 3000, &[]);
    println!("half-open peer connections opened: {}", held.len());
    for i in 0..20 {
        let out = c.cli(1, &["--timeout", "30", "append", "b"]);
        assert_eq!(ok_stdout(&out), format!("{}\n", i + 2), "write {i}:\n{}", c.logs());
    }
    let log = c.nodes[0].log();
    assert!(c.nodes[0].exited().is_none(), "n1 died:\n{log}");
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("peer connections in their handshake (the limit)"), "{log}");
    drop(held);
    assert_eq!(c.cli_ok(2, &["get"]).len(), 22);
}

#[test]
fn too_many_client_connections_under_a_low_fd_limit_are_shed_not_fatal() {
    let mut c = TestCluster::start_with_open_files_limit(1, NODE_OPEN_FILES);
    let addr = c.nodes[0].client_addr;
    let held = crowd(addr, 1100, &[]);
    // Writes need log files: the node kept descriptors for them.
    for _ in 0..5 {
        ok_stdout(&cli(&addr.to_string(), &["--timeout", "15", "append", "x"]));
    }
    let log = c.nodes[0].log();
    assert!(c.nodes[0].exited().is_none(), "the node died:\n{log}");
    assert!(!log.contains("Too many open files"), "{log}");
    drop(held);
}

/// A hello frame, as the client library sends it.
fn hello() -> Vec<u8> {
    let mut buf = BytesMut::new();
    let frame = ClientFrame::Hello(ClientHello { version: PROTOCOL_VERSION });
    strstore_protocol::codec::encode_frame(&frame, &mut buf, 1 << 10).expect("hello encodes");
    buf.to_vec()
}

#[test]
fn partial_large_frames_stay_within_the_request_memory_budget() {
    const CONNECTIONS: usize = 40;
    const FRAME: usize = 15_000_000;
    // Default flags: a 32 MiB budget. The bound leaves room for the node's own ~30 MB, the
    // one frame the budget admits at a time and allocator slack; without a budget the
    // partial frames alone take 40 x 15 MB = 600 MB.
    const RSS_BOUND: u64 = 160 << 20;
    let mut c = TestCluster::start(1);
    let addr = c.nodes[0].client_addr;
    let before = c.nodes[0].memory().expect("node memory");
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else { return };
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                let mut bytes = hello();
                bytes.extend((FRAME as u32).to_be_bytes());
                bytes.extend(std::iter::repeat_n(0u8, FRAME - 10_000));
                let _ = s.write_all(&bytes);
                // Hold the connection (and whatever the node buffered) for a while.
                std::thread::sleep(Duration::from_secs(5));
            })
        })
        .collect();
    let mut peak = 0;
    while senders.iter().any(|s| !s.is_finished()) {
        peak = peak.max(c.nodes[0].memory().map_or(0, |m| m.0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, hwm) = c.nodes[0].memory().expect("node memory");
    println!(
        "RSS before {} MB, highest seen {} MB, peak (VmHWM) {} MB; bound {} MB",
        before.0 >> 20,
        peak >> 20,
        hwm >> 20,
        RSS_BOUND >> 20
    );
    assert!(hwm < RSS_BOUND, "peak RSS {hwm} over {RSS_BOUND}");
    assert!(c.nodes[0].exited().is_none());
    assert_eq!(c.cli_ok(1, &["append", "still here"]), "10\n");
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let c = TestCluster::start_with(1, &["--client-idle-timeout", "2"]);
    let mut s = TcpStream::connect(c.nodes[0].client_addr).expect("connect");
    s.write_all(&hello()).expect("hello");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "closed after {took:?}"
    );
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("sent nothing for 2s"), "the goodbye says why: {text:?}");
}
