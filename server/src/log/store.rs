//! What every log offers the engine, and how a log fails.

use std::sync::Arc;

use crate::replica::{LogRecord, Restored};

/// Why the log failed. A node whose log fails stops: it must never ack what is not on disk.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("{what} {path}: {source}")]
    Io { path: String, what: String, source: std::io::Error },
    #[error("corrupt log segment {path} at byte {offset}: {reason}")]
    CorruptSegment { path: String, offset: u64, reason: String },
    #[error("corrupt log record under key {key:?}: {reason}")]
    Corrupt { key: Vec<u8>, reason: String },
    #[error("inconsistent durable state at {path}: {reason}")]
    Inconsistent { path: String, reason: String },
}

impl LogError {
    /// Whether the durable state itself is damaged (as opposed to the disk refusing to
    /// serve it): a node must not serve, ack or vote from such a state.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            LogError::CorruptSegment { .. }
                | LogError::Corrupt { .. }
                | LogError::Inconsistent { .. }
        )
    }

    /// Whether the disk is out of space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            LogError::Io { source, .. } | LogError::Sled(sled::Error::Io(source)) => {
                source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
            }
            _ => false,
        }
    }
}

/// Where the engine's records are kept.
pub trait LogStore {
    /// Adds records in order; they may sit in memory until [`LogStore::sync`].
    fn append(&mut self, records: &[LogRecord]) -> Result<(), LogError>;
    /// Makes everything appended so far durable (fsync).
    fn sync(&mut self) -> Result<(), LogError>;
    /// Reads back what survived, for a restart.
    fn load(&self) -> Result<Restored, LogError>;
}

/// Folds records into what a restarting replica needs, whatever order they come in.
pub fn restore_from(records: impl IntoIterator<Item = LogRecord>) -> Restored {
    let mut restored = Restored::default();
    for record in records {
        match record {
            LogRecord::Action(a) => restored.actions.push(a),
            LogRecord::Commit { id, deps } => restored.commits.push((id, deps)),
            LogRecord::ClockBound(b) => restored.clock_bound = restored.clock_bound.max(b),
            LogRecord::Snapshot(rec) => restored.snapshot = Some(Arc::unwrap_or_clone(rec)),
            LogRecord::Promise { epoch, ballot } => restored.promise = Some((epoch, ballot)),
            LogRecord::Accepted { ballot, proposal } => {
                restored.accepted = Some((ballot, proposal))
            }
        }
    }
    restored.actions.sort_by_key(|a| a.id);
    restored
}
