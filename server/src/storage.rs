//! Opening a node's data directory: the log, what it holds, and what to do when it is
//! damaged.
//!
//! A damaged durable state (a bad record inside synced data, a missing snapshot, a gap
//! between snapshot and log) is never served from. Without `--repair` the node refuses to
//! start and says which file and byte, and what to do. With `--repair` (a node of a cluster
//! only) the data is moved aside, never deleted, and the node starts empty as a *fresh
//! incarnation*: outside every view, asking to be added by a view change and sent the state.
//! Every write the cluster acknowledged is on every member of the view that committed it, so
//! the others still hold all of them; and a fresh incarnation never promises in a view change
//! of an epoch it may have acked in, so nothing counts an ack it gave before the damage.
//!
//! The marker file [`REJOIN_MARKER`] keeps a repaired node a fresh incarnation across
//! restarts until it has entered a view (it then has a snapshot, and the marker goes).

use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use crate::log::{DiskLog, LogError, LogStore};
use crate::replica::Restored;

/// In a data directory with no snapshot: this node must join as a fresh incarnation.
pub const REJOIN_MARKER: &str = "REJOIN";

/// What a node starts from.
pub struct Storage {
    pub log: DiskLog,
    pub restored: Restored,
    /// The node lost the state it once acked with and must be added again.
    pub fresh_incarnation: bool,
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(
        "the durable state in {dir} is damaged, so this node will not serve, ack or vote from \
         it: {source}.\n{advice}"
    )]
    Damaged { dir: String, source: LogError, advice: String },
    #[error("cannot open the log in {dir}: {source}{hint}")]
    Open { dir: String, source: LogError, hint: String },
    #[error("cannot move the damaged data in {dir} aside: {source}")]
    MoveAside { dir: String, source: std::io::Error },
}

/// Opens the data directory; with `repair`, moves damaged state aside and starts fresh.
pub fn open(dir: &Path, repair: bool, clustered: bool) -> Result<Storage, StorageError> {
    let shown = dir.display().to_string();
    std::fs::create_dir_all(dir)
        .map_err(|source| StorageError::DataDir { path: shown.clone(), source })?;
    let source = match load(dir) {
        Ok(storage) => return Ok(storage),
        Err(source) if source.is_damage() => source,
        Err(source) => {
            let hint = open_hint(&source);
            return Err(StorageError::Open { dir: shown, source, hint });
        }
    };
    if !repair {
        let advice = damage_advice(dir, clustered);
        return Err(StorageError::Damaged { dir: shown, source, advice });
    }
    error!(data_dir = %shown, error = %source, "durable state is damaged; repairing (--repair)");
    let aside =
        move_aside(dir).map_err(|e| StorageError::MoveAside { dir: shown.clone(), source: e })?;
    std::fs::write(dir.join(REJOIN_MARKER), rejoin_note(&aside))
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| StorageError::MoveAside { dir: shown.clone(), source: e })?;
    warn!(
        moved_to = %aside.display(),
        "damaged data moved aside (nothing deleted); rejoining as a fresh incarnation that \
         holds nothing: the other members send the current state"
    );
    load(dir).map_err(|source| {
        let hint = open_hint(&source);
        StorageError::Open { dir: shown, source, hint }
    })
}

fn load(dir: &Path) -> Result<Storage, LogError> {
    let log = DiskLog::open(dir)?;
    let restored = log.load()?;
    let marker = dir.join(REJOIN_MARKER);
    let fresh_incarnation = marker.exists() && restored.snapshot.is_none();
    if fresh_incarnation {
        info!("this node was repaired and has not rejoined yet: asking to be added");
    } else if marker.exists() {
        // It entered a view since: an ordinary member again.
        let _ = std::fs::remove_file(&marker);
    }
    Ok(Storage { log, restored, fresh_incarnation })
}

/// Free space a node needs in its data directory to log again: room for the next
/// preallocation of the write-ahead file and for the snapshot that starts its next view.
pub const ROOM_NEEDED_BYTES: u64 = 16 << 20;

/// Whether the data directory's file system has [`ROOM_NEEDED_BYTES`] free.
pub fn has_room(dir: &Path) -> bool {
    match rustix::fs::statvfs(dir) {
        Ok(st) => st.f_bavail.saturating_mul(st.f_frsize) >= ROOM_NEEDED_BYTES,
        Err(_) => false,
    }
}

/// A hint only where it is likely to be the cause.
fn open_hint(e: &LogError) -> String {
    let locked = match e {
        LogError::Sled(sled::Error::Io(io)) => io.kind() == std::io::ErrorKind::WouldBlock,
        _ => false,
    };
    if locked {
        " (is another strstore-server using it?)".into()
    } else if e.is_disk_full() {
        format!(
            " (the disk is full: free at least {} MiB in the data directory's file system; \
             nothing logged was lost)",
            ROOM_NEEDED_BYTES >> 20
        )
    } else {
        String::new()
    }
}

fn damage_advice(dir: &Path, clustered: bool) -> String {
    if clustered {
        format!(
            "The other members hold every write the cluster acknowledged. Restart this node \
             with --repair: it moves {} aside (nothing is deleted) and rejoins as a new \
             incarnation that receives the current state from the others.",
            dir.display()
        )
    } else {
        format!(
            "A single node has no other copy: restore {} from a backup, or move it away to \
             start empty. Keep the damaged files for inspection.",
            dir.display()
        )
    }
}

/// Moves every entry of `dir` (earlier `damaged-*` directories aside) into a new
/// `dir/damaged-<unix time>/`, and syncs both directories.
fn move_aside(dir: &Path) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = dir.join(format!("damaged-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("damaged-{stamp}-{n}"));
        n += 1;
    }
    std::fs::create_dir(&aside)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("damaged-") {
            continue;
        }
        std::fs::rename(entry.path(), aside.join(&name))?;
    }
    std::fs::File::open(&aside)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(aside)
}

fn rejoin_note(aside: &Path) -> String {
    format!(
        "This node's durable state was found damaged and moved to {}.\n\
         It rejoins its cluster as a fresh incarnation; this file goes once it has.\n",
        aside.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens, waiting out sled's background flusher, which may hold the directory's lock a
    /// moment after the last handle dropped.
    fn open_when_free(dir: &Path, repair: bool) -> Result<Storage, StorageError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open(dir, repair, true) {
                Err(StorageError::Open { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                other => return other,
            }
        }
    }

    #[test]
    fn damage_is_refused_without_repair_and_moved_aside_with_it() {
        let dir = tempfile::tempdir().unwrap();
        // A snapshot was compacted to, and the snapshot file is gone.
        let db = sled::open(dir.path()).unwrap();
        let point = (3u64, strstore_protocol::Timestamp::new(9, 1));
        db.open_tree("meta")
            .unwrap()
            .insert("compacted_to", postcard::to_allocvec(&point).unwrap())
            .unwrap();
        db.flush().unwrap();
        drop(db);
        let err = open_when_free(dir.path(), false).err().expect("damaged");
        let text = err.to_string();
        assert!(text.contains("snapshot file is missing") && text.contains("--repair"), "{text}");
        let storage = open_when_free(dir.path(), true).expect("repaired");
        assert!(storage.fresh_incarnation);
        assert!(storage.restored.snapshot.is_none() && storage.restored.actions.is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "one directory holds the damaged data");
        assert!(aside[0].path().join("conf").exists(), "sled's files were moved, not deleted");
        drop(storage);
        assert!(open_when_free(dir.path(), false).unwrap().fresh_incarnation, "until it rejoins");
    }
}
