//! Failure detection, view changes, master election and rejoin with real processes
//! (docs/protocol.md, "Membership"). Timeouts are generous; the figures that matter are
//! printed, not asserted tightly.

use std::time::{Duration, Instant};

use strstore_client::{Client, ClientConfig};
use strstore_tests::cluster::TestCluster;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Appends `value` through the given nodes (retrying across them) and returns how long it took.
fn append_via(addrs: Vec<String>, value: &str) -> Duration {
    let started = Instant::now();
    let mut cfg = ClientConfig::with_addrs(addrs);
    cfg.request_timeout = Duration::from_secs(60);
    cfg.attempt_timeout = Duration::from_secs(3);
    runtime().block_on(async {
        Client::new(cfg)
            .expect("client")
            .append(value.to_string())
            .await
            .expect("append acknowledged")
    });
    started.elapsed()
}

fn status_json(c: &TestCluster, id: u64) -> serde_json::Value {
    serde_json::from_str(&c.cli_ok(id, &["status", "--json"])).expect("status is JSON")
}

/// Waits until `get` at every listed node prints the same string, and returns it.
fn converged_get(c: &TestCluster, ids: &[u64]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let values: Vec<String> = ids.iter().map(|&id| c.cli_ok(id, &["get"])).collect();
        if values.windows(2).all(|w| w[0] == w[1]) {
            return values[0].clone();
        }
        assert!(Instant::now() < deadline, "nodes never agreed: {values:?}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn addrs(c: &TestCluster, ids: &[u64]) -> Vec<String> {
    ids.iter().map(|&id| c.nodes[id as usize - 1].client_addr.to_string()).collect()
}

#[test]
fn killed_member_is_removed_then_rejoins() {
    let mut c = TestCluster::start(3);
    c.cli_ok(1, &["append", "<a>"]);
    c.node(3).kill();
    let took = append_via(addrs(&c, &[1, 2]), "<b>");
    println!("member failure: kill -9 to first acknowledged write: {took:.2?}");
    assert!(took < Duration::from_secs(15), "writes resumed only after {took:?}");
    let status = status_json(&c, 1);
    let n3 = status["members"].as_array().unwrap().iter().find(|m| m["member"]["id"] == 3).cloned();
    assert_eq!(n3.map(|m| m["state"].clone()), Some(serde_json::json!("Failed")), "{status}");

    c.node(3).start();
    c.cli_ok(3, &["append", "<c>"]);
    assert_eq!(converged_get(&c, &[1, 2, 3]), "<a><b><c>\n");
    let status = status_json(&c, 1);
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    // Every member's client address is known, learned from heartbeats.
    for (m, node) in members.iter().zip(&c.nodes) {
        assert_eq!(m["member"]["client_addr"], node.client_addr.to_string(), "{status}");
    }
}

#[test]
fn killed_master_is_replaced_and_rejoins() {
    let mut c = TestCluster::start(3);
    c.cli_ok(2, &["append", "<a>"]);
    assert_eq!(status_json(&c, 2)["master"], 1);
    c.node(1).kill();
    let took = append_via(addrs(&c, &[2, 3]), "<b>");
    println!("master failure: kill -9 to first acknowledged write: {took:.2?}");
    let status = status_json(&c, 2);
    assert_ne!(status["master"], 1, "a new master was elected: {status}");

    c.node(1).start();
    c.cli_ok(1, &["append", "<c>"]);
    assert_eq!(converged_get(&c, &[1, 2, 3]), "<a><b><c>\n");
}

#[test]
fn five_nodes_survive_three_sequential_failures() {
    let mut c = TestCluster::start(5);
    let mut expected = String::new();
    for (round, victim) in [5u64, 1, 3].into_iter().enumerate() {
        let token = format!("<before-{round}>");
        c.cli_ok(2, &["append", &token]);
        expected.push_str(&token);
        c.node(victim).kill();
        let alive: Vec<u64> = (1..=5).filter(|id| c.nodes[*id as usize - 1].is_running()).collect();
        let token = format!("<after-{round}>");
        let took = append_via(addrs(&c, &alive), &token);
        expected.push_str(&token);
        println!("failure {}: n{victim} killed; writes resumed after {took:.2?}", round + 1);
        // Each failure is detected (the view shrinks) before the next one.
        let deadline = Instant::now() + Duration::from_secs(30);
        while status_json(&c, alive[0])["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["member"]["id"] == victim && m["state"] != "Failed")
        {
            assert!(Instant::now() < deadline, "n{victim} never removed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(converged_get(&c, &[2, 4]), format!("{expected}\n"), "nothing acknowledged is lost");
}

#[test]
fn a_node_not_listed_at_start_joins_a_running_cluster() {
    let mut c = TestCluster::start(3);
    c.cli_ok(1, &["append", "<a>"]);
    let id = c.add_joining_node();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_json(&c, 1)["members"].as_array().unwrap().iter().all(|m| m["member"]["id"] != id)
    {
        assert!(Instant::now() < deadline, "n{id} was never added\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    c.cli_ok(id, &["append", "<b>"]);
    assert_eq!(converged_get(&c, &[1, 2, 3, id]), "<a><b>\n");
}
