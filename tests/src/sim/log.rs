//! The simulated nodes' log: actions and commits go through the real write-ahead file
//! ([`Wal`]) over [`LazyFiles`], so that a crash is a power cut that keeps only what was
//! synced (and part of the write under way), judged like everything else by the checker. The
//! few other records (snapshots, clock bounds, view-change votes) stay in a [`MemLog`], with
//! the same crash rule.

use std::path::Path;
use std::sync::Arc;

use strstore_server::log::files::LazyFiles;
use strstore_server::log::{LogError, LogStore, MemLog, Wal};
use strstore_server::replica::{LogRecord, Restored};

/// Bytes the simulated write-ahead file reserves at a time: small, so that a run allocates
/// little and the file grows often.
const PREALLOCATE_BYTES: u64 = 16 << 10;

pub struct SimLog {
    files: LazyFiles,
    wal: Wal,
    rest: MemLog,
}

fn open(files: &LazyFiles) -> Wal {
    Wal::open_in(Arc::new(files.clone()), Path::new("/wal"), PREALLOCATE_BYTES)
        .unwrap_or_else(|e| panic!("a power cut must never leave a log that does not open: {e}"))
}

impl Default for SimLog {
    fn default() -> Self {
        let files = LazyFiles::default();
        let wal = open(&files);
        Self { files, wal, rest: MemLog::default() }
    }
}

impl SimLog {
    /// The power goes: every byte not synced is lost, but the first `torn` share of the
    /// write under way, as a disk may keep. The file is opened again, as a restart would.
    pub fn power_cut(&mut self, torn: f64) {
        self.rest.crash();
        self.files.power_cut(torn);
        self.wal = open(&self.files);
    }
}

impl LogStore for SimLog {
    fn append(&mut self, records: &[LogRecord]) -> Result<(), LogError> {
        for record in records.iter().filter(|r| !self.wal.append_record(r)) {
            self.rest.append(std::slice::from_ref(record))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.wal.sync()?;
        self.rest.sync()
    }

    fn load(&self) -> Result<Restored, LogError> {
        let mut restored = self.rest.load()?;
        self.wal.restore_into(&mut restored)?;
        Ok(restored)
    }
}
