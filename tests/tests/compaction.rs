//! Snapshots keep a node's disk and memory bounded, and a node that was down for all of a
//! long run catches up from a snapshot (docs/protocol.md, "Snapshots and compaction").

use std::time::{Duration, Instant};

use strstore_client::{Client, ClientConfig};
use strstore_server::health::dir_size;
use strstore_tests::cluster::TestCluster;

/// Appends issued by the test.
const APPENDS: u64 = 100_000;
/// Concurrent clients issuing them.
const CLIENTS: u64 = 64;
/// Bound on a node's data directory after the run: the string is ~1.2 MB; the log beyond the
/// last snapshot and sled's own overhead account for the rest.
const MAX_DATA_DIR_BYTES: u64 = 32 << 20;
/// Bound on a node's resident memory after the run (debug build).
const MAX_RSS_BYTES: u64 = 128 << 20;

fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

#[test]
fn long_run_stays_bounded_and_a_node_down_throughout_catches_up() {
    let mut c = TestCluster::start_with(3, &["--snapshot-every", "1000"]);
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
    println!("{APPENDS} appends by {CLIENTS} clients in {:.1?}", started.elapsed());
    for id in [1u64, 2] {
        let node = &c.nodes[id as usize - 1];
        let disk = dir_size(&node.data_dir);
        let rss = node.pid().map(rss_of).unwrap_or(0);
        println!("n{id}: data dir {} KiB, RSS {} KiB", disk >> 10, rss >> 10);
        assert!(disk < MAX_DATA_DIR_BYTES, "n{id} data dir {disk} bytes exceeds the bound");
        assert!(rss < MAX_RSS_BYTES, "n{id} RSS {rss} bytes exceeds the bound");
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
    let disk3 = dir_size(&c.nodes[2].data_dir);
    println!(
        "n3 caught up from a snapshot {:.1?} after its restart; its data dir is {} KiB",
        restarted.elapsed(),
        disk3 >> 10
    );
}
