//! Snapshots keep a node's disk and memory bounded, and a node that was down for all of a
//! long run catches up from a snapshot (docs/protocol.md, "Snapshots and compaction").
//!
//! The same run with snapshots only at view changes is the control: its log outgrows the
//! bound, so the bound says something about compaction.

use std::path::Path;
use std::time::{Duration, Instant};

use strstore_client::{Client, ClientConfig};
use strstore_server::health::dir_size;
use strstore_tests::cluster::TestCluster;

/// Appends issued by the test.
const APPENDS: u64 = 100_000;
/// Concurrent clients issuing them.
const CLIENTS: u64 = 64;
/// Bound on the actions a node's log holds beyond its last snapshot after the run (its
/// `status` log length). With compaction that is at most `--snapshot-every` (1,000) and what
/// is in flight; without it, every action of the run: 100,000 appends from at most 64 waiting
/// clients make at least 1,563 actions (about 8,000 were seen).
const MAX_LOG_ACTIONS: u64 = 1_500;
/// Segments a node must have deleted by the end of the run: a new one starts at every
/// snapshot, and the oldest go once a snapshot covers them.
const MIN_DELETED_SEGMENTS: u64 = 5;
/// Bound on a node's whole data directory (log, two snapshots, sled's files).
const MAX_DATA_DIR_BYTES: u64 = 32 << 20;
/// Bound on a node's resident memory after the run (debug build).
const MAX_RSS_BYTES: u64 = 128 << 20;

fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// The write-ahead log's segments: how many there are and the highest segment number
/// (segments are numbered from 0 in the order they were started).
fn segments(data_dir: &Path) -> (u64, u64) {
    let mut count = 0;
    let mut newest = 0;
    for entry in std::fs::read_dir(data_dir.join("wal")).expect("the node's wal directory") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        if let Some(seq) = name.strip_suffix(".log").and_then(|s| u64::from_str_radix(s, 16).ok()) {
            count += 1;
            newest = newest.max(seq);
        }
    }
    (count, newest)
}

/// The log length (actions beyond the last snapshot) of n1 and n2, which took the appends,
/// from the master's table.
fn log_lengths(c: &TestCluster) -> Vec<(u64, u64)> {
    let status: serde_json::Value =
        serde_json::from_str(&c.cli_ok(1, &["status", "--json"])).expect("status is JSON");
    let members = status["members"].as_array().expect("members").iter();
    members
        .map(|m| {
            let id = m["member"]["id"].as_u64().expect("id");
            (id, m["health"]["log_len"].as_u64().expect("log_len"))
        })
        .filter(|(id, _)| [1, 2].contains(id))
        .collect()
}

/// Starts 3 nodes with `flags`, kills n3 and has n1 and n2 take every append.
fn appends_while_n3_is_down(flags: &[&str]) -> TestCluster {
    let mut c = TestCluster::start_with(3, flags);
    c.node(3).kill();
    let addrs: Vec<String> =
        [1u64, 2].iter().map(|&id| c.nodes[id as usize - 1].client_addr.to_string()).collect();
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let mut cfg = ClientConfig::with_addrs(addrs.clone());
                cfg.request_timeout = Duration::from_secs(120);
                let mut client = Client::new(cfg).expect("client");
                tokio::spawn(async move {
                    for n in (i..APPENDS).step_by(CLIENTS as usize) {
                        client.append(format!("<{n}>")).await.expect("append acknowledged");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("client task");
        }
    });
    println!("{flags:?}: {APPENDS} appends by {CLIENTS} clients in {:.1?}", started.elapsed());
    c
}

#[test]
fn long_run_stays_bounded_and_a_node_down_throughout_catches_up() {
    let mut c = appends_while_n3_is_down(&["--snapshot-every", "1000"]);
    for id in [1u64, 2] {
        let node = &c.nodes[id as usize - 1];
        let disk = dir_size(&node.data_dir);
        let (count, newest) = segments(&node.data_dir);
        let rss = node.pid().map(rss_of).unwrap_or(0);
        println!(
            "n{id}: data dir {} KiB, {count} log segments (newest {newest}), RSS {} KiB",
            disk >> 10,
            rss >> 10
        );
        let deleted = newest + 1 - count;
        assert!(deleted >= MIN_DELETED_SEGMENTS, "n{id} deleted {deleted} log segments");
        assert!(disk < MAX_DATA_DIR_BYTES, "n{id} data dir {disk} bytes exceeds the bound");
        assert!(rss < MAX_RSS_BYTES, "n{id} RSS {rss} bytes exceeds the bound");
    }
    for (id, len) in log_lengths(&c) {
        println!("n{id}: {len} actions in the log beyond its last snapshot");
        assert!(len < MAX_LOG_ACTIONS, "n{id} holds {len} actions beyond its snapshot");
    }
    let value = c.cli_ok(1, &["get"]);
    c.node(3).start();
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.cli(3, &["get"]);
        if out.status.success() && out.stdout == value.as_bytes() {
            break;
        }
        assert!(Instant::now() < deadline, "n3 never caught up\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let tokens = value.trim_end().split('>').filter(|t| !t.is_empty()).count() as u64;
    assert_eq!(tokens, APPENDS, "every acknowledged append is in the string once");
    let installed = "installed the cluster's state from a snapshot";
    assert!(c.node(3).log().contains(installed), "n3 did not install a snapshot\n{}", c.logs());
    println!(
        "n3 caught up from a snapshot {:.1?} after its restart; its data dir is {} KiB",
        restarted.elapsed(),
        dir_size(&c.nodes[2].data_dir) >> 10
    );
}

#[test]
fn without_periodic_snapshots_the_log_outgrows_the_bound() {
    let c = appends_while_n3_is_down(&["--snapshot-every", "0"]);
    for id in [1u64, 2] {
        let (count, newest) = segments(&c.nodes[id as usize - 1].data_dir);
        println!("n{id} (control): {count} log segments (newest {newest})");
        let deleted = newest + 1 - count;
        assert!(
            deleted < MIN_DELETED_SEGMENTS,
            "n{id} deleted {deleted}: the bound proves nothing"
        );
    }
    for (id, len) in log_lengths(&c) {
        println!("n{id} (control): {len} actions in the log beyond its last snapshot");
        assert!(len > MAX_LOG_ACTIONS, "n{id}: {len} actions; the bound proves nothing");
    }
}
