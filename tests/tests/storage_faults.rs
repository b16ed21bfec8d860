//! Damaged durable state on real processes (docs/protocol.md, "Damage and repair"): a node
//! never takes damage for a torn write, never serves from it, and with `--repair` rebuilds
//! itself from the other members without losing an acknowledged write.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strstore_client::{Client, ClientConfig};
use strstore_tests::cluster::{cli, TestCluster};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Appends `<tag-i>` for `i` in `range` through a client that knows every address, and
/// returns what was appended, in order.
fn append_tokens(addrs: &str, tag: &str, range: std::ops::Range<u32>) -> String {
    let mut cfg = ClientConfig::with_addrs(addrs.split(',').map(String::from).collect());
    cfg.request_timeout = Duration::from_secs(120);
    let mut client = Client::new(cfg).expect("client");
    let mut all = String::new();
    runtime().block_on(async {
        for i in range {
            let token = format!("<{tag}-{i}>");
            client.append(token.clone()).await.expect("append acknowledged");
            all.push_str(&token);
        }
    });
    all
}

/// The newest segment of a node's write-ahead log.
fn newest_segment(data_dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal"))
        .expect("wal directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

/// Overwrites 4 bytes in the middle of the segment's data, as a bad sector would; returns
/// the bytes that were there.
fn damage_middle(segment: &Path) -> (usize, Vec<u8>) {
    let mut bytes = std::fs::read(segment).expect("segment");
    let end = bytes.iter().rposition(|b| *b != 0).expect("segment holds data");
    let at = end / 2;
    let original = bytes[at..at + 4].to_vec();
    bytes[at..at + 4].copy_from_slice(b"XXXX");
    std::fs::write(segment, &bytes).expect("writing the damage");
    (at, original)
}

#[test]
fn damage_inside_the_synced_log_stops_a_single_node_and_loses_nothing() {
    let mut c = TestCluster::start(1);
    let written = append_tokens(&c.addrs(), "a", 0..1000);
    assert!(c.node(1).terminate().success());
    let segment = newest_segment(&c.nodes[0].data_dir);
    let (at, original) = damage_middle(&segment);
    let damaged = std::fs::read(&segment).unwrap();

    let status = c.node(1).run_until_exit(Duration::from_secs(60));
    assert!(!status.success(), "a damaged node must not start");
    let log = c.nodes[0].log();
    let name = segment.display().to_string();
    assert!(log.contains("is damaged") && log.contains(&name), "names the file:\n{log}");
    assert!(log.contains("restore"), "says what to do:\n{log}");
    assert!(!log.contains("cutting it off"), "damage is not a torn write:\n{log}");
    assert_eq!(std::fs::read(&segment).unwrap(), damaged, "nothing was cut off");

    // Once the bytes are put back, every acknowledged append is there.
    let mut bytes = damaged;
    bytes[at..at + 4].copy_from_slice(&original);
    std::fs::write(&segment, bytes).unwrap();
    c.node(1).start();
    assert_eq!(c.cli_ok(1, &["get"]), format!("{written}\n"));
}

#[test]
fn a_lost_snapshot_after_compaction_stops_the_node() {
    let mut c = TestCluster::start_with(1, &["--snapshot-every", "100"]);
    let written = append_tokens(&c.addrs(), "s", 0..600);
    assert!(c.node(1).terminate().success());
    let snapshot = c.nodes[0].data_dir.join("snapshot");
    let saved = std::fs::read(&snapshot).expect("a snapshot was written");
    std::fs::remove_file(&snapshot).unwrap();

    let status = c.node(1).run_until_exit(Duration::from_secs(60));
    assert!(!status.success(), "a node without its snapshot must not start");
    let log = c.nodes[0].log();
    assert!(log.contains("snapshot file is missing"), "{log}");

    std::fs::write(&snapshot, saved).unwrap();
    c.node(1).start();
    assert_eq!(c.cli_ok(1, &["get"]), format!("{written}\n"));
}

/// Every node's `inspect --json`, once all of `ids` are members with the same digest.
fn converged(c: &TestCluster, timeout: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = cli(&c.addrs(), &["inspect", "--json", "--timeout", "10"]);
        if out.status.success() {
            let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
            let same = nodes.iter().all(|n| {
                n["member"] == true
                    && n["digest"] == nodes[0]["digest"]
                    && n["value"] == nodes[0]["value"]
            });
            if nodes.len() == c.nodes.len() && same {
                return nodes;
            }
            assert!(Instant::now() < deadline, "never converged: {nodes:#?}\n{}", c.logs());
        }
        assert!(Instant::now() < deadline, "inspect failed\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_damaged_member_refuses_to_start_then_repairs_itself_from_the_others() {
    let mut c = TestCluster::start(3);
    let mut written = append_tokens(&c.addrs(), "a", 0..400);
    assert!(c.node(3).terminate().success());
    let segment = newest_segment(&c.nodes[2].data_dir);
    damage_middle(&segment);

    let status = c.node(3).run_until_exit(Duration::from_secs(60));
    assert!(!status.success(), "a damaged member must not start without --repair");
    let log = c.nodes[2].log();
    assert!(log.contains("is damaged") && log.contains("--repair"), "{log}");

    // The others go on without it (they hold every acknowledged write)...
    let first_two: String = c.nodes[..2].iter().map(|n| format!("{},", n.client_addr)).collect();
    written += &append_tokens(first_two.trim_end_matches(','), "b", 0..50);

    // ...and with --repair it moves its data aside, rejoins empty and catches up.
    c.node(3).add_args(&["--repair"]);
    c.node(3).start();
    written += &append_tokens(&c.addrs(), "c", 0..50);
    let nodes = converged(&c, Duration::from_secs(120));
    assert_eq!(nodes[0]["value"].as_str(), Some(written.as_str()));
    assert_eq!(c.cli_ok(3, &["get"]), format!("{written}\n"));
    let log = c.nodes[2].log();
    assert!(log.contains("repairing") && log.contains("moved aside"), "{log}");
    let aside: Vec<PathBuf> = std::fs::read_dir(&c.nodes[2].data_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let kept = aside[0].join("wal").join(segment.file_name().unwrap());
    assert!(kept.exists(), "the damaged segment is kept at {}", kept.display());

    // A restart of the repaired node is an ordinary restart from its own data.
    c.node(3).kill();
    c.node(3).start();
    written += &append_tokens(&c.addrs(), "d", 0..10);
    let nodes = converged(&c, Duration::from_secs(120));
    assert_eq!(nodes[2]["value"].as_str(), Some(written.as_str()));
}

/// Row 3 of the issue: n1 (the first master) runs with `--max-string-bytes 100`, n2 and n3
/// with the default. Whatever node a write goes through, every replica makes the same
/// decision, under the cluster's limit (the master's), and says so in its log.
#[test]
fn replicas_with_different_limit_flags_apply_the_same_writes() {
    let c = TestCluster::start_each(3, |id| match id {
        1 => vec!["--max-string-bytes", "100"],
        _ => vec![],
    });
    for id in [2, 3] {
        let seen =
            c.nodes[id - 1].wait_for_log("differ from the cluster's", Duration::from_secs(60));
        assert!(seen, "n{id} warns that its flags differ\n{}", c.logs());
    }
    let value = "x".repeat(50);
    let results: Vec<bool> =
        (0..6).map(|i| c.cli(1 + i % 3, &["append", &value]).status.success()).collect();
    assert_eq!(results, [true, true, false, false, false, false], "{}", c.logs());
    let nodes = converged(&c, Duration::from_secs(60));
    for n in &nodes {
        assert_eq!(n["len"], 100, "{nodes:#?}");
        assert_eq!(n["content"], nodes[0]["content"], "{nodes:#?}");
        assert_eq!(n["limits"]["max_string_bytes"], 100, "{nodes:#?}");
    }
}

/// A small tmpfs mounted over a directory for the length of a test (needs root).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let opts = format!("size={size}");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status();
        status.is_ok_and(|s| s.success()).then(|| Self(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Restarts node `id` empty on a 160 MiB tmpfs of which a 140 MiB filler file takes most
/// (once it is gone, the room must hold a log and two snapshots of a 30 MiB string);
/// `None` (the test is skipped) where mounting needs a root this process does not have.
fn restart_nearly_full(c: &mut TestCluster, id: u64) -> Option<(SmallFs, PathBuf)> {
    assert!(c.node(id).terminate().success());
    let data_dir = c.node(id).data_dir.clone();
    std::fs::remove_dir_all(&data_dir).unwrap();
    let Some(fs) = SmallFs::mount(&data_dir, "160m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return None;
    };
    let filler = data_dir.join("filler");
    std::fs::write(&filler, vec![1u8; 140 << 20]).unwrap();
    c.node(id).start();
    Some((fs, filler))
}

/// Row 5: the data directory's file system fills up. The node does not abort: it refuses
/// with "disk full on n1", keeps running, and once there is room again it starts over from
/// its log by itself, with every acknowledged write.
#[test]
fn a_full_disk_is_an_error_and_the_node_comes_back_when_there_is_room() {
    let mut c = TestCluster::start(1);
    let Some((_fs, filler)) = restart_nearly_full(&mut c, 1) else { return };

    let mut cfg = ClientConfig::with_addrs(vec![c.nodes[0].client_addr.to_string()]);
    cfg.request_timeout = Duration::from_secs(5);
    let mut acked = Vec::new();
    let value = |i: usize| format!("<{i}>{}", "p".repeat(256 << 10));
    let refusal = runtime().block_on(async {
        let mut client = Client::new(cfg).expect("client");
        for i in 0..400 {
            match client.append(value(i)).await {
                Ok(_) => acked.push(value(i)),
                Err(e) => return e.to_string(),
            }
        }
        panic!("the 20 MiB left never filled up");
    });
    assert!(refusal.contains("disk full on n1"), "{refusal}");
    let out = c.cli(1, &["--timeout", "5", "append", "more"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disk full on n1"), "clients are told why: {err}");
    assert!(c.node(1).exited().is_none(), "the node must not abort:\n{}", c.nodes[0].log());

    std::fs::remove_file(&filler).unwrap();
    assert!(
        c.nodes[0].wait_for_log("has room again", Duration::from_secs(60)),
        "{}",
        c.nodes[0].log()
    );
    c.cli_ok(1, &["append", "<after>"]);
    let got = c.cli_ok(1, &["get"]);
    let prefix: String = acked.concat();
    assert!(got.starts_with(&prefix), "every acknowledged append is kept");
    assert!(got.ends_with("<after>\n"), "{}", &got[got.len().saturating_sub(100)..]);
    let log = c.nodes[0].log();
    assert!(!log.contains("fatal"), "{log}");
}

/// The same on one member of three: the full node leaves the view so that the others go
/// on, and rejoins by itself with the same state once there is room.
#[test]
fn a_member_with_a_full_disk_leaves_the_view_and_rejoins_when_there_is_room() {
    let mut c = TestCluster::start(3);
    // Before any write, so that n3 holds nothing the others need.
    let Some((_fs, filler)) = restart_nearly_full(&mut c, 3) else { return };
    // n3 restarted empty, so it is added back by a view change; writes before that never
    // reach its disk.
    converged(&c, Duration::from_secs(60));

    let first_two = c.nodes[..2].iter().map(|n| n.client_addr.to_string()).collect();
    let mut cfg = ClientConfig::with_addrs(first_two);
    cfg.request_timeout = Duration::from_secs(120);
    let value = |i: usize| format!("<{i}>{}", "q".repeat(256 << 10));
    let mut written = String::new();
    runtime().block_on(async {
        let mut client = Client::new(cfg).expect("client");
        for i in 0..120 {
            client.append(value(i)).await.expect("the cluster goes on without n3");
            written.push_str(&value(i));
        }
    });
    assert!(c.nodes[2].log().contains("disk is full"), "n3 ran out of room:\n{}", c.nodes[2].log());
    assert!(c.node(3).exited().is_none(), "n3 must not abort:\n{}", c.nodes[2].log());
    let out = c.cli(3, &["--timeout", "5", "get"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("disk full on n3"), "{err}");

    std::fs::remove_file(&filler).unwrap();
    let nodes = converged(&c, Duration::from_secs(120));
    assert_eq!(nodes[2]["value"].as_str(), Some(written.as_str()));
    assert!(nodes[2]["epoch"].as_u64() > Some(1), "n3 left the view and came back: {nodes:#?}");
}
