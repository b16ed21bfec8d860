//! Mutual TLS between real `strstore-server` processes on loopback (the rule:
//! a node speaks to peers only over mutual TLS, and the id it claims must match its
//! certificate, signed by the cluster CA), TLS for clients, and certificate rotation.
//!
//! Each refusal must show up in the refusing node's log with its reason, and the cluster
//! must keep working while it refuses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use strstore_client::{Client, ClientConfig, TlsFiles};
use strstore_protocol::codec::to_frame;
use strstore_protocol::{PeerFrame, PeerHello, PROTOCOL_VERSION};
use strstore_server::certs::issue::{self, Validity};
use strstore_tests::cluster::{bin, cli, make_certs, ok_stdout, TestCluster, TestNode};

/// How long a refusal may take to reach the log: the outsider's first dial happens right
/// after it starts, so this is generous.
const LOG_WAIT: Duration = Duration::from_secs(30);

/// Copies `files` (pairs of source and destination names) from `from` into `to`.
fn copy_files(from: &Path, to: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(to).expect("tls dir");
    for (src, dst) in files {
        std::fs::copy(from.join(src), to.join(dst)).expect("copying a TLS file");
    }
}

/// Appends at one node and reads at another: the cluster still commits and agrees.
fn assert_cluster_works(c: &TestCluster, token: &str) {
    ok_stdout(&c.cli(1, &["append", token]));
    let value = ok_stdout(&c.cli(3, &["get"]));
    assert!(value.contains(token), "n3 lacks {token:?}: {value:?}\n{}", c.logs());
}

fn cli_with(addr: &str, flags: &[String], args: &[&str]) -> Output {
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
    all.extend(args);
    cli(addr, &all)
}

/// Starts a node with node 2's certificate and key claiming id 3, and waits until n1 and n2
/// have refused it with the reason.
fn node_2_posing_as_node_3(c: &TestCluster) -> TestNode {
    let evil = c.dir().join("evil");
    copy_files(
        c.tls_dir(),
        &evil,
        &[("ca.pem", "ca.pem"), ("node-2.pem", "node-3.pem"), ("node-2-key.pem", "node-3-key.pem")],
    );
    let mut impostor = c.outsider(3, &evil, &["--tls-skip-own-check"]);
    impostor.start();
    for id in [1, 2] {
        let refused = "claims node 3 but its certificate is for node 2; refused";
        assert!(c.nodes[id - 1].wait_for_log(refused, LOG_WAIT), "n{id}:\n{}", c.logs());
    }
    impostor
}

/// (a) A node holding a valid certificate for id 2 that claims to be id 3 is refused by
/// every peer, with the reason in their logs, and the real cluster keeps working.
#[test]
fn node_claiming_another_id_than_its_certificate_is_refused() {
    let c = TestCluster::start(3);
    let impostor = node_2_posing_as_node_3(&c);
    assert!(
        impostor.wait_for_log("n1 refused this node: claims node 3", LOG_WAIT),
        "the impostor learns why:\n{}",
        impostor.log()
    );
    assert_cluster_works(&c, "<still-fine>");
}

/// Hosts really named `node-1`, `node-2`, `node-3` go into every certificate as host names;
/// they must not make node 2's certificate pass as node 3's. The certificates are re-issued
/// into the running cluster's directory (same CA) and picked up on SIGHUP, as in a rotation.
#[test]
fn host_names_like_node_names_do_not_let_one_node_pose_as_another() {
    let c = TestCluster::start(3);
    make_certs(c.tls_dir(), &[1, 2, 3], &["--hosts", "node-1,node-2,node-3,127.0.0.1"]);
    for node in &c.nodes {
        node.hangup();
        assert!(node.wait_for_log("reloaded TLS material", LOG_WAIT), "{}", node.log());
    }
    let _impostor = node_2_posing_as_node_3(&c);
    assert_cluster_works(&c, "<rotated>");
}

/// (b) A node whose certificate comes from another CA is refused during the handshake,
/// whether it trusts our CA (it presents its certificate, and we refuse it) or not (it
/// refuses ours, and we log its alert).
#[test]
fn node_with_a_certificate_from_another_ca_is_refused() {
    let c = TestCluster::start(3);
    let other = c.dir().join("other-ca");
    make_certs(&other, &[3], &[]);
    let stranger_dir = c.dir().join("stranger");
    copy_files(c.tls_dir(), &stranger_dir, &[("ca.pem", "ca.pem")]);
    copy_files(
        &other,
        &stranger_dir,
        &[("node-3.pem", "node-3.pem"), ("node-3-key.pem", "node-3-key.pem")],
    );
    let mut stranger = c.outsider(3, &stranger_dir, &["--tls-skip-own-check"]);
    stranger.start();
    let refused = "failed the TLS handshake: its certificate is not signed by the cluster CA";
    assert!(c.nodes[0].wait_for_log(refused, LOG_WAIT), "n1:\n{}", c.logs());
    stranger.kill();

    // A whole other cluster's node: it does not even trust our certificate.
    let mut foreign = c.outsider(3, &other, &[]);
    foreign.start();
    let alert = "failed the TLS handshake: TLS alert UnknownCA";
    assert!(c.nodes[1].wait_for_log(alert, LOG_WAIT), "n2:\n{}", c.logs());
    assert!(foreign.wait_for_log("is not signed by the cluster CA", LOG_WAIT), "{}", foreign.log());
    assert_cluster_works(&c, "<after-strangers>");
}

/// A node whose certificate (from the right CA, for the right id) has expired is refused.
#[test]
fn node_with_an_expired_certificate_is_refused() {
    let c = TestCluster::start(3);
    let read = |name: &str| std::fs::read_to_string(c.tls_dir().join(name)).expect(name);
    let ca = issue::load_ca(&read("ca.pem"), &read("ca-key.pem")).expect("cluster CA");
    let now = time::OffsetDateTime::now_utc();
    let past = Validity {
        not_before: now - time::Duration::days(30),
        not_after: now - time::Duration::days(1),
    };
    let expired = issue::node_cert(&ca, 3, &[], past).expect("expired certificate");
    let dir = c.dir().join("expired");
    copy_files(c.tls_dir(), &dir, &[("ca.pem", "ca.pem")]);
    std::fs::write(dir.join("node-3.pem"), expired.cert_pem).expect("cert");
    std::fs::write(dir.join("node-3-key.pem"), expired.key_pem).expect("key");
    let mut stale = c.outsider(3, &dir, &["--tls-skip-own-check"]);
    stale.start();
    let refused = "failed the TLS handshake: its certificate has expired";
    assert!(c.nodes[0].wait_for_log(refused, LOG_WAIT), "n1:\n{}", c.logs());
    assert_cluster_works(&c, "<after-expired>");
}

/// (c) A plaintext peer connection is refused, answered with a TLS alert, and logged.
#[test]
fn plaintext_peer_connection_is_refused() {
    let c = TestCluster::start(3);
    let mut stream = TcpStream::connect(c.nodes[0].peer_addr).expect("connect to the peer port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let hello = PeerFrame::Hello(PeerHello { version: PROTOCOL_VERSION, node: 2 });
    stream.write_all(&to_frame(&hello)).expect("plaintext hello");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert record, got {answer:?}");
    let refused = "sent plaintext, not TLS (first byte 0x00); peers must use mutual TLS; refused";
    assert!(c.nodes[0].wait_for_log(refused, LOG_WAIT), "n1:\n{}", c.logs());
    assert_cluster_works(&c, "<after-plaintext>");
}

/// (d) Clients get clear errors, not hangs: no certificate where one is required, plaintext
/// on a TLS port, TLS on a plaintext port. The node logs each refusal.
#[test]
fn clients_get_clear_tls_errors() {
    let c = TestCluster::start_tls(1, &["--client-tls", "--client-auth", "required"]);
    let addr = c.nodes[0].client_addr.to_string();
    let ca = c.tls_dir().join("ca.pem").display().to_string();

    let started = Instant::now();
    let out = cli_with(&addr, &["--tls-ca".into(), ca.clone()], &["get"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the node at {addr} requires a client certificate: pass --tls-cert and --tls-key"
        )),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let logged = "client connection refused: TLS handshake failed: it presented no certificate";
    assert!(c.nodes[0].wait_for_log(logged, LOG_WAIT), "{}", c.logs());

    let out = cli(&addr, &["get"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("the node at {addr} speaks TLS; pass --tls-ca")), "{stderr}");
    assert!(c.nodes[0].wait_for_log("plaintext (first byte 0x00) on a TLS client port", LOG_WAIT));

    assert_eq!(ok_stdout(&cli_with(&addr, &c.client_tls_flags(), &["append", "ok"])), "2\n");

    let plain = TestCluster::start(1);
    let plain_addr = plain.nodes[0].client_addr.to_string();
    let out = cli_with(&plain_addr, &["--tls-ca".into(), ca], &["get"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not seem to speak TLS"), "{stderr}");
    assert!(plain.nodes[0]
        .wait_for_log("a TLS handshake arrived on this plaintext client port", LOG_WAIT));
}

/// A certificate with role `read` (`certs --client dashboard --role read`) may read but not
/// write; the default client certificate (role `write`) may do both.
#[test]
fn a_read_only_client_certificate_cannot_write() {
    let c = TestCluster::start_tls(1, &["--client-tls", "--client-auth", "required"]);
    make_certs(c.tls_dir(), &[1], &["--client", "dashboard", "--role", "read"]);
    let addr = c.nodes[0].client_addr.to_string();
    assert_eq!(ok_stdout(&cli_with(&addr, &c.client_tls_flags(), &["append", "kept"])), "4\n");
    let dir = c.tls_dir();
    let reader: Vec<String> = [
        ("--tls-ca", "ca.pem"),
        ("--tls-cert", "client-dashboard.pem"),
        ("--tls-key", "client-dashboard-key.pem"),
    ]
    .iter()
    .flat_map(|(flag, file)| [flag.to_string(), dir.join(file).display().to_string()])
    .collect();
    assert_eq!(ok_stdout(&cli_with(&addr, &reader, &["get"])), "kept\n");
    for write in [["set", "wiped"], ["append", "more"]] {
        let out = cli_with(&addr, &reader, &write);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{write:?}: {stderr}");
        assert!(stderr.contains("role `read`, which may not"), "{stderr}");
    }
    assert_eq!(ok_stdout(&cli_with(&addr, &reader, &["get"])), "kept\n");
}

/// (e) The normal 3-node cluster over mTLS, end to end: peers authenticate each other, and
/// clients with certificates write at every node through the CLI and the library.
#[test]
fn three_node_cluster_works_over_mutual_tls() {
    let c = TestCluster::start_tls(3, &["--client-tls", "--client-auth", "required"]);
    let flags = c.client_tls_flags();
    for id in 1..=3u64 {
        let addr = c.nodes[id as usize - 1].client_addr.to_string();
        ok_stdout(&cli_with(&addr, &flags, &["append", &format!("<{id}>")]));
    }
    let tls = TlsFiles {
        ca: c.tls_dir().join("ca.pem"),
        identity: Some((c.tls_dir().join("client.pem"), c.tls_dir().join("client-key.pem"))),
    };
    let addrs = c.addrs().split(',').map(String::from).collect();
    let config = ClientConfig { tls: Some(tls), ..ClientConfig::with_addrs(addrs) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let value = rt.block_on(async {
        let mut client = Client::new(config).expect("TLS client");
        client.append("<lib>").await.expect("append over TLS");
        client.get().await.expect("get over TLS")
    });
    assert_eq!(&value[..], b"<1><2><3><lib>");
    for id in 1..=3u64 {
        let addr = c.nodes[id as usize - 1].client_addr.to_string();
        assert_eq!(ok_stdout(&cli_with(&addr, &flags, &["get"])), "<1><2><3><lib>\n");
        let log = c.nodes[id as usize - 1].log();
        for peer in (1..=3u64).filter(|p| *p != id) {
            let line = format!("peer n{peer} connected; its certificate proves its id");
            assert!(log.contains(&line), "n{id} lacks {line:?}:\n{log}");
        }
        for refusal in
            ["; refused", "client connection refused", "refused this node", "TLS handshake failed"]
        {
            assert!(!log.contains(refusal), "n{id} logged {refusal:?}:\n{log}");
        }
    }
}

/// Rotation: nodes pick up new certificates on SIGHUP without losing data, even a whole new
/// CA; bad files are refused and the old material stays in use.
#[test]
fn sighup_reloads_certificates_and_keeps_old_ones_on_bad_files() {
    let mut c = TestCluster::start(3);
    ok_stdout(&c.cli(1, &["append", "<before>"]));

    // Bad files: n1 keeps its old material and goes on working.
    let key = c.tls_dir().join("node-1-key.pem");
    let good_key = std::fs::read(&key).expect("key");
    std::fs::write(&key, "garbage").expect("break the key");
    c.node(1).hangup();
    let kept = "cannot reload TLS material; keeping the old";
    assert!(c.nodes[0].wait_for_log(kept, LOG_WAIT), "{}", c.logs());
    std::fs::write(&key, good_key).expect("restore the key");
    ok_stdout(&c.cli(2, &["append", "<bad-files>"]));

    // A new CA and new certificates for everyone, swapped in under the running nodes.
    let fresh = c.dir().join("fresh");
    make_certs(&fresh, &[1, 2, 3], &["--days", "30"]);
    for name in [
        "ca.pem",
        "ca-key.pem",
        "node-1.pem",
        "node-1-key.pem",
        "node-2.pem",
        "node-2-key.pem",
        "node-3.pem",
        "node-3-key.pem",
    ] {
        std::fs::copy(fresh.join(name), c.tls_dir().join(name)).expect("install new material");
    }
    for id in 1..=3 {
        c.node(id).hangup();
        assert!(c.node(id).wait_for_log("reloaded TLS material", LOG_WAIT), "n{id}:\n{}", c.logs());
    }
    // A restarted n3 knows only the new CA: it can talk to n1 and n2 only if they now present
    // and accept the new certificates on new connections.
    c.node(3).kill();
    c.node(3).start();
    ok_stdout(&c.cli(3, &["append", "<after>"]));
    for id in 1..=3 {
        assert_eq!(
            ok_stdout(&c.cli(id, &["get"])),
            "<before><bad-files><after>\n",
            "n{id}\n{}",
            c.logs()
        );
    }
}

/// A multi-node server without TLS material refuses to start and names the command that
/// creates it; `certs` writes private keys with mode 0600.
#[test]
fn cluster_without_tls_refuses_to_start_and_certs_makes_private_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(bin("strstore-server"))
        .args(["--id", "1", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("strstore-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("strstore-server certs --dir strstore-tls --nodes 1,2 --hosts 127.0.0.1"),
        "{stderr}"
    );

    let tls = dir.path().join("tls");
    make_certs(&tls, &[1, 2], &["--hosts", "localhost,1=10.0.0.1"]);
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca-key.pem", "node-1-key.pem", "node-2-key.pem", "client-key.pem"] {
        let mode = std::fs::metadata(tls.join(key)).expect(key).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
}
