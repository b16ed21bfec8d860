//! An in-memory log for the simulation: synced records survive a crash, the rest do not.

use super::store::{restore_from, LogError, LogStore};
use crate::replica::{LogRecord, Restored};

/// In-memory [`LogStore`] with crash semantics.
#[derive(Clone, Debug, Default)]
pub struct MemLog {
    durable: Vec<LogRecord>,
    unsynced: Vec<LogRecord>,
}

impl MemLog {
    /// Loses every record appended since the last sync, as a power cut would.
    pub fn crash(&mut self) {
        self.unsynced.clear();
    }
}

impl LogStore for MemLog {
    fn append(&mut self, records: &[LogRecord]) -> Result<(), LogError> {
        self.unsynced.extend_from_slice(records);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.durable.append(&mut self.unsynced);
        Ok(())
    }

    fn load(&self) -> Result<Restored, LogError> {
        Ok(restore_from(self.durable.iter().chain(&self.unsynced).cloned()))
    }
}
