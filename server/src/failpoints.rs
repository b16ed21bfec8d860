//! Fault injection for the chaos test and the gray-failure benchmark, compiled in only with
//! the `failpoints` cargo feature (`cargo build --features strstore-server/failpoints`).
//!
//! The points are the [`fail`] crate's, named where the code can stall or fail:
//!
//! | point | where |
//! |---|---|
//! | `wal-sync` | before every `fdatasync` of a write-ahead segment on the real disk |
//!
//! A node reads its configuration from the file that `STRSTORE_FAILPOINTS_FILE` names, at
//! start and whenever the file changes (checked every 100 ms), so that a nemesis can make a
//! running node's disk slow and fast again: one `point=actions` per line, in the `fail`
//! crate's syntax (`wal-sync=sleep(50)` adds 50 ms to every sync); a point the file no longer
//! names is switched off, and so is every point when the file is removed. Release builds
//! without the feature have no points and ignore the variable.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The environment variable naming the configuration file.
pub const FILE_VAR: &str = "STRSTORE_FAILPOINTS_FILE";
const POLL: Duration = Duration::from_millis(100);

/// Starts watching the file `STRSTORE_FAILPOINTS_FILE` names, if it is set.
pub fn watch_from_env() {
    let Some(path) = std::env::var_os(FILE_VAR).map(PathBuf::from) else { return };
    tracing::warn!(file = %path.display(), "fault injection is compiled in and configured from this file");
    let spawned = std::thread::Builder::new().name("failpoints".into()).spawn(move || watch(&path));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the failpoint watcher");
    }
}

fn watch(path: &Path) {
    let mut seen: Option<SystemTime> = None;
    let mut active: Vec<String> = Vec::new();
    loop {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified != seen || (modified.is_none() && !active.is_empty()) {
            seen = modified;
            let text = std::fs::read_to_string(path).unwrap_or_default();
            active = apply(&text, &active);
        }
        std::thread::sleep(POLL);
    }
}

/// Configures the points `text` names and switches off those of `before` it no longer
/// names; returns the points now configured.
fn apply(text: &str, before: &[String]) -> Vec<String> {
    let mut now = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((name, actions)) = line.split_once('=') else {
            tracing::error!(line, "failpoint line without '=': ignored");
            continue;
        };
        let (name, actions) = (name.trim(), actions.trim());
        match fail::cfg(name, actions) {
            Ok(()) => {
                tracing::warn!(point = name, actions, "failpoint on");
                now.push(name.to_string());
            }
            Err(e) => tracing::error!(point = name, actions, error = %e, "bad failpoint"),
        }
    }
    for name in before.iter().filter(|n| !now.contains(n)) {
        fail::remove(name);
        tracing::warn!(point = %name, "failpoint off");
    }
    now
}
