//! Three real `strstore-server` processes on loopback (docs/protocol.md, "Normal case" and
//! "Restart"): concurrent clients at different nodes see one order, and a node killed with
//! SIGKILL comes back with its log and applies what it missed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use strstore_client::{Client, ClientConfig};
use strstore_tests::cluster::TestCluster;

fn client_at(addr: &str) -> Client {
    let mut cfg = ClientConfig::with_addrs(vec![addr.to_string()]);
    cfg.request_timeout = Duration::from_secs(120);
    Client::new(cfg).expect("client")
}

/// Splits `<c-n>` tokens.
fn tokens(s: &str) -> Vec<(u64, u64)> {
    s.split('>')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (c, n) = t.trim_start_matches('<').split_once('-').expect("token");
            (c.parse().expect("client"), n.parse().expect("number"))
        })
        .collect()
}

#[test]
fn concurrent_clients_at_different_nodes_see_one_order() {
    const PER_CLIENT: u64 = 300;
    let c = TestCluster::start(3);
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.client_addr.to_string()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tasks: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let mut client = client_at(addr);
                tokio::spawn(async move {
                    for n in 1..=PER_CLIENT {
                        client.append(format!("<{i}-{n}>")).await.expect("append acknowledged");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("client task");
        }
    });
    let strings: Vec<String> = (1..=3).map(|id| c.cli_ok(id, &["get"])).collect();
    assert_eq!(strings[0], strings[1], "n1 and n2 differ");
    assert_eq!(strings[1], strings[2], "n2 and n3 differ");
    let toks = tokens(strings[0].trim_end());
    assert_eq!(toks.len() as u64, 3 * PER_CLIENT, "every token exactly once");
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (client, n) in toks {
        let prev = last.insert(client, n).unwrap_or(0);
        assert_eq!(n, prev + 1, "client {client}'s tokens out of order or duplicated");
    }
}

/// One node's `inspect --json` report.
fn inspect_at(addr: &str) -> serde_json::Value {
    let out = strstore_tests::cluster::cli(addr, &["inspect", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    nodes.remove(0)
}

#[test]
fn killed_node_restarts_with_its_log_and_catches_up() {
    // The view stays as it is while n3 is down: this is about the restart from its own log,
    // not about its removal (membership.rs has those tests). A dead member's acks never come,
    // so without `--ack-lag-ms 0` it would be removed for lagging after a second.
    let static_view =
        ["--failure-timeout-ms", "60000", "--max-failure-timeout-ms", "60000", "--ack-lag-ms", "0"];
    let mut c = TestCluster::start_with(3, &static_view);
    for i in 0..20 {
        c.cli_ok(1 + i % 3, &["append", &format!("<{i}>")]);
    }
    let before = c.cli_ok(3, &["get"]);
    c.node(3).kill();

    // A write started while n3 is down cannot commit in the static view; it waits for n3.
    let addr1 = c.nodes[0].client_addr.to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pending = rt.spawn(async move { client_at(&addr1).append("<while-down>").await });
    let view_before = inspect_at(&c.nodes[0].client_addr.to_string());
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let n1 = inspect_at(&c.nodes[0].client_addr.to_string());
        assert_eq!(n1["epoch"], view_before["epoch"], "the view changed: {n1:#}");
        assert!(n1["members"].as_array().is_some_and(|m| m.contains(&3.into())), "{n1:#}");
        assert!(!pending.is_finished(), "a write committed without n3, a member: {n1:#}");
        assert_eq!(n1["value"].as_str(), Some(before.trim_end()), "n1 applied it alone");
        std::thread::sleep(Duration::from_millis(200));
    }

    c.node(3).start();
    let len = rt.block_on(pending).expect("task").expect("write commits once n3 is back");
    let expected = format!("{}<while-down>", before.trim_end());
    assert_eq!(len as usize, expected.len());
    for id in 1..=3 {
        assert_eq!(c.cli_ok(id, &["get"]), format!("{expected}\n"), "n{id}\n{}", c.logs());
    }
    // Each node's own view of what it applied: the same 21 writes, so the same digest.
    let out = strstore_tests::cluster::cli(&c.addrs(), &["inspect", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("inspect json");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for node in &nodes {
        assert_eq!(node["digest"], nodes[0]["digest"], "{nodes:#?}");
        assert_eq!(node["value"].as_str(), Some(expected.as_str()), "{nodes:#?}");
        assert_eq!(node["member"], true, "{nodes:#?}");
    }
    assert!(nodes[0]["digest"]["actions"].as_u64() >= Some(21), "{nodes:#?}");
    // n3's own log kept the first 20 writes: its restart replayed them before any peer spoke.
    let log = c.node(3).log();
    let restart = log.lines().filter(|l| l.contains("node starting")).nth(1).expect("second start");
    let replayed: u64 = restart
        .split("applied_actions=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("applied_actions in the start line");
    assert!(replayed >= 20, "n3 replayed only {replayed} actions from its log: {restart}");
}
