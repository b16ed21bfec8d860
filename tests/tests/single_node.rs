//! One real `strstore-server` process driven by the real `strstore-cli` and the client
//! library: the foundation's guarantees (durability across kill -9, exactly-once, limits,
//! bad input) hold end to end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use strstore_client::{Client, ClientConfig};
use strstore_protocol::{
    codec::to_frame, ClientFrame, ClientHello, Codec, Op, ServerFrame, PROTOCOL_VERSION,
};
use strstore_tests::cluster::{bin, ok_stdout, TestCluster};
use tokio_util_codec::decode_all;

mod tokio_util_codec {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    /// Decodes every complete frame in `bytes`.
    pub fn decode_all<D: Decoder>(mut codec: D, bytes: &[u8]) -> Vec<D::Item> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Ok(Some(item)) = codec.decode(&mut buf) {
            out.push(item);
        }
        out
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn cli_appends_sets_and_gets() {
    let c = TestCluster::start(1);
    assert_eq!(ok_stdout(&c.cli(1, &["append", "hello "])), "6\n");
    assert_eq!(ok_stdout(&c.cli(1, &["append", "world"])), "11\n");
    assert_eq!(ok_stdout(&c.cli(1, &["get"])), "hello world\n");
    assert_eq!(ok_stdout(&c.cli(1, &["set", "xyz"])), "3\n");
    assert_eq!(ok_stdout(&c.cli(1, &["get"])), "xyz\n");
}

#[test]
fn cli_reads_value_from_stdin() {
    let c = TestCluster::start(1);
    let mut child = Command::new(bin("strstore-cli"))
        .args(["--addr", &c.nodes[0].client_addr.to_string(), "append", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cli");
    child.stdin.take().expect("stdin").write_all(b"raw\nbytes\x01").expect("write");
    let out = child.wait_with_output().expect("cli output");
    assert_eq!(ok_stdout(&out), "10\n");
    let got = c.cli(1, &["get"]);
    assert_eq!(got.stdout, b"raw\nbytes\x01\n");
}

#[test]
fn oversized_value_is_refused_and_changes_nothing() {
    let c = TestCluster::start_with(1, &["--max-value-bytes", "16"]);
    ok_stdout(&c.cli(1, &["append", "small"]));
    let out = c.cli(1, &["append", "this value is longer than sixteen bytes"]);
    assert!(!out.status.success(), "an oversized append must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exceeds the limit of 16 bytes"), "unclear error: {stderr}");
    assert_eq!(ok_stdout(&c.cli(1, &["get"])), "small\n");
}

#[test]
fn string_limit_is_enforced() {
    let c = TestCluster::start_with(1, &["--max-string-bytes", "8"]);
    ok_stdout(&c.cli(1, &["append", "12345"]));
    let out = c.cli(1, &["append", "6789"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-string-bytes"));
    assert_eq!(ok_stdout(&c.cli(1, &["get"])), "12345\n");
}

#[test]
fn cli_says_what_to_do_when_no_node_is_up() {
    let addr = strstore_tests::cluster::free_addr().to_string();
    let out = strstore_tests::cluster::cli(&addr, &["--timeout", "1", "get"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is the cluster up"), "unhelpful error: {stderr}");
    assert!(out.stdout.is_empty());
}

/// Acknowledged writes survive kill -9, in order.
#[test]
fn acknowledged_appends_survive_kill_9() {
    let mut c = TestCluster::start(1);
    let addr = c.nodes[0].client_addr.to_string();
    const N: usize = 200;
    let expected: String = (0..N).map(|i| format!("<{i}>")).collect();
    runtime().block_on(async {
        let mut client = Client::new(ClientConfig::with_addrs(vec![addr.clone()])).expect("client");
        for i in 0..N {
            client.append(format!("<{i}>")).await.expect("append acknowledged");
        }
    });
    c.node(1).kill();
    c.node(1).start();
    assert_eq!(ok_stdout(&c.cli(1, &["get"])), format!("{expected}\n"), "log:\n{}", c.logs());
}

/// A retried request is applied once and gets its original result.
#[test]
fn retried_request_is_applied_once() {
    let c = TestCluster::start(1);
    let addrs = vec![c.nodes[0].client_addr.to_string()];
    runtime().block_on(async {
        let cfg = || ClientConfig::with_addrs(addrs.clone());
        let mut first = Client::with_identity(cfg(), 4242, 1).expect("client");
        assert_eq!(first.append("x").await.expect("append"), 1);
        let mut other = Client::new(cfg()).expect("client");
        assert_eq!(other.append("yy").await.expect("append"), 3);
        // The same (client id, seq) again, as a client that never saw the first reply would.
        let mut retry = Client::with_identity(cfg(), 4242, 1).expect("client");
        let r = retry.execute_with_seq(1, Op::Append("x".into())).await.expect("retry");
        assert_eq!(r, strstore_protocol::Response::Len(1), "original result");
        assert_eq!(&other.get().await.expect("get")[..], b"xyy");
    });
}

/// Garbage on a client port gets a clear error frame; the node keeps serving.
#[test]
fn garbage_and_wrong_versions_are_refused_cleanly() {
    let c = TestCluster::start(1);
    let addr = c.nodes[0].client_addr;
    let exchange = |bytes: &[u8]| -> Vec<ServerFrame> {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(bytes).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("half close");
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        decode_all(Codec::<ServerFrame, ()>::default(), &reply)
    };
    // A frame announcing 1 GiB.
    let frames = exchange(&[0x40, 0, 0, 0, 1, 2, 3]);
    assert!(
        matches!(frames.as_slice(), [ServerFrame::Goodbye(strstore_protocol::Error::BadRequest(m))] if m.contains("exceeds the maximum")),
        "{frames:?}"
    );
    // A well-framed body that is not a message.
    let frames = exchange(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    assert!(
        matches!(
            frames.as_slice(),
            [ServerFrame::Goodbye(strstore_protocol::Error::BadRequest(_))]
        ),
        "{frames:?}"
    );
    // A hello from the future.
    let frames =
        exchange(&to_frame(&ClientFrame::Hello(ClientHello { version: PROTOCOL_VERSION + 1 })));
    assert!(
        matches!(
            frames.as_slice(),
            [ServerFrame::Goodbye(strstore_protocol::Error::VersionMismatch { .. })]
        ),
        "{frames:?}"
    );
    // A truncated frame after a valid hello: the hello is welcomed, the rest is refused.
    let mut bytes = to_frame(&ClientFrame::Hello(ClientHello { version: PROTOCOL_VERSION }));
    bytes.extend_from_slice(&[0, 0, 0, 9, 1]);
    let frames = exchange(&bytes);
    assert!(matches!(frames.first(), Some(ServerFrame::Welcome { node: 1, .. })), "{frames:?}");
    ok_stdout(&c.cli(1, &["append", "still alive"]));
    assert_eq!(ok_stdout(&c.cli(1, &["get"])), "still alive\n");
}

#[test]
fn sigterm_stops_the_node_cleanly_and_keeps_data() {
    let mut c = TestCluster::start(1);
    ok_stdout(&c.cli(1, &["append", "kept"]));
    let status = c.node(1).terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", c.logs());
    assert!(c.node(1).log().contains("log flushed"));
    c.node(1).start();
    assert_eq!(ok_stdout(&c.cli(1, &["get"])), "kept\n");
}

/// A string longer than the 16 MiB frame limit (the default string limit is 64 MiB) can be
/// read back whole, in parts, and by `inspect`; `len` says how long it is.
#[test]
fn a_string_longer_than_the_frame_limit_reads_back() {
    let c = TestCluster::start(1);
    let chunk = vec![b'z'; 1 << 20];
    let total = 17usize << 20;
    let cfg = ClientConfig::with_addrs(vec![c.nodes[0].client_addr.to_string()]);
    runtime().block_on(async {
        let mut client = Client::new(cfg).expect("client");
        for _ in 0..total >> 20 {
            client.append(chunk.clone()).await.expect("append");
        }
        client.append("<end>").await.expect("append");
    });
    let total = total + 5;
    let got = c.cli(1, &["get"]);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(got.stdout.len(), total + 1);
    assert!(got.stdout.ends_with(b"<end>\n"));
    assert_eq!(ok_stdout(&c.cli(1, &["len"])), format!("{total}\n"));
    let offset = (total - 7).to_string();
    assert_eq!(ok_stdout(&c.cli(1, &["get", "--offset", &offset, "--len", "4"])), "zz<e\n");
    assert_eq!(ok_stdout(&c.cli(1, &["get", "--offset", &offset])), "zz<end>\n");
    assert_eq!(ok_stdout(&c.cli(1, &["get", "--offset", "999999999"])), "\n");
    let inspect = c.cli(1, &["inspect", "--json"]);
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    // A client that keeps a smaller reply limit is told how to read the string instead.
    let small = c.cli(1, &["--max-reply-bytes", "1048576", "get"]);
    assert!(!small.status.success());
    let err = String::from_utf8_lossy(&small.stderr);
    assert!(err.contains("--offset"), "{err}");
}

/// A value over the node's frame limit (16 MiB) is refused by the client at once, as
/// rejected (exit 1), instead of being re-sent until the timeout says the outcome is unknown.
#[test]
fn a_request_over_the_nodes_frame_limit_is_refused_at_once() {
    let c = TestCluster::start(1);
    let mut child = Command::new(bin("strstore-cli"))
        .args(["--addr", &c.nodes[0].client_addr.to_string(), "--timeout", "60", "append", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cli");
    child.stdin.take().expect("stdin").write_all(&vec![b'v'; 17 << 20]).expect("write");
    let started = std::time::Instant::now();
    let out = child.wait_with_output().expect("cli output");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "rejected, not unknown: {err}");
    assert!(err.contains("it was not sent"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "answered at once");
    assert_eq!(ok_stdout(&c.cli(1, &["len"])), "0\n");
}
