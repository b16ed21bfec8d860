//! The on-disk log, in sled.
//!
//! Trees: `actions` and `commits` keyed by timestamp (time then node, big-endian, so keys sort
//! in the total order), and `meta` for the clock bound. Values are postcard.

use std::path::Path;

use strstore_protocol::{Action, Deps, Timestamp};

use super::{LogError, LogStore};
use crate::replica::{LogRecord, Restored};

const CLOCK_BOUND_KEY: &[u8] = b"clock_bound";

/// A sled-backed [`LogStore`]; `sync` is one `flush` for however many records came before.
pub struct SledLog {
    db: sled::Db,
    actions: sled::Tree,
    commits: sled::Tree,
    meta: sled::Tree,
}

fn ts_key(ts: Timestamp) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&ts.time.to_be_bytes());
    key[8..].copy_from_slice(&ts.node.to_be_bytes());
    key
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, LogError> {
    postcard::from_bytes(value)
        .map_err(|e| LogError::Corrupt { key: key.to_vec(), reason: e.to_string() })
}

impl SledLog {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open()?;
        Ok(Self {
            actions: db.open_tree("actions")?,
            commits: db.open_tree("commits")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Number of actions in the log.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

impl LogStore for SledLog {
    fn append(&mut self, records: &[LogRecord]) -> Result<(), LogError> {
        for record in records {
            match record {
                LogRecord::Action(a) => {
                    let value = postcard::to_allocvec(a).expect("encoding to memory");
                    self.actions.insert(ts_key(a.id), value)?;
                }
                LogRecord::Commit { id, deps } => {
                    let value = postcard::to_allocvec(deps).expect("encoding to memory");
                    self.commits.insert(ts_key(*id), value)?;
                }
                LogRecord::ClockBound(b) => {
                    self.meta.insert(CLOCK_BOUND_KEY, &b.to_be_bytes())?;
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.db.flush()?;
        Ok(())
    }

    fn load(&self) -> Result<Restored, LogError> {
        let mut restored = Restored::default();
        for kv in self.actions.iter() {
            let (k, v) = kv?;
            restored.actions.push(decode::<Action>(&k, &v)?);
        }
        for kv in self.commits.iter() {
            let (k, v) = kv?;
            let deps: Deps = decode(&k, &v)?;
            let id = decode_ts(&k)?;
            restored.commits.push((id, deps));
        }
        if let Some(v) = self.meta.get(CLOCK_BOUND_KEY)? {
            let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| LogError::Corrupt {
                key: CLOCK_BOUND_KEY.to_vec(),
                reason: "clock bound is not 8 bytes".into(),
            })?;
            restored.clock_bound = u64::from_be_bytes(bytes);
        }
        Ok(restored)
    }
}

fn decode_ts(key: &[u8]) -> Result<Timestamp, LogError> {
    if key.len() != 16 {
        return Err(LogError::Corrupt { key: key.to_vec(), reason: "key is not 16 bytes".into() });
    }
    let time = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let node = u64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
    Ok(Timestamp::new(time, node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strstore_protocol::{Write, WriteOp};

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let action = Action {
            id: Timestamp::new(5, 2),
            epoch: 1,
            oseq: 1,
            writes: vec![Write { client: 9, seq: 1, op: WriteOp::Append("x".into()) }],
        };
        {
            let mut log = SledLog::open(dir.path()).unwrap();
            log.append(&[
                LogRecord::Action(action.clone()),
                LogRecord::Commit { id: action.id, deps: vec![(2, 0)] },
                LogRecord::ClockBound(77),
            ])
            .unwrap();
            log.sync().unwrap();
        }
        // sled's background flusher may hold the file lock a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let log = loop {
            match SledLog::open(dir.path()) {
                Ok(log) => break log,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening the log: {e}"),
            }
        };
        let restored = log.load().unwrap();
        assert_eq!(restored.actions, vec![action]);
        assert_eq!(restored.commits, vec![(Timestamp::new(5, 2), vec![(2, 0)])]);
        assert_eq!(restored.clock_bound, 77);
    }
}
