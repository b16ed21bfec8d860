//! The write-ahead file: actions and commit records, appended to segment files and made
//! durable with one `fdatasync`.
//!
//! Why not sled for these: a sled `flush` cost ~280 us on this hardware where the disk's
//! `fdatasync` costs ~35-90 us, and sled's IO threads burned about a third of a loaded node's
//! CPU. Actions and commits are written once, read only at a restart and dropped wholesale
//! once a snapshot covers them, which is exactly what an append-only file does best.
//!
//! Layout: `wal/<seq>.log`, segment numbers in hex, oldest first. Each record is
//! `[payload length: u32 LE][crc32 of payload: u32 LE][postcard payload]`. Segments are
//! preallocated with zeros so that `fdatasync` rarely has a file size to write back; a zero
//! length ends a segment. A new segment is started at every open and every snapshot, so a
//! snapshot that is durable lets whole segments go.
//!
//! A crash can leave the newest segment with a torn record at its end: it was never synced,
//! so nothing that depends on it was sent. Opening truncates it (and says so in the log).
//! A bad record is taken for a torn end only when no valid record follows it in the newest
//! segment; every other segment must read cleanly. Anything else is reported corrupt, and the
//! node does not start from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strstore_protocol::{Action, Deps, Epoch, Timestamp};

use super::files::{DiskFiles, Files, SegmentFile};
use super::store::LogError;
use crate::replica::{LogRecord, Restored};

/// Segments grow to about this size before a new one is started.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Space reserved at a time, so that most syncs have no file size to write back.
pub const PREALLOCATE_BYTES: u64 = 8 << 20;
/// Largest record accepted when reading: an action is bounded by the frame limit.
const MAX_RECORD_BYTES: usize = 1 << 30;
const HEADER: usize = 8;

/// What the write-ahead file holds. The variant order is the on-disk format.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
pub enum WalRecord {
    Action(Action),
    Commit { id: Timestamp, deps: Deps },
}

/// Borrowed twin of [`WalRecord`] for writing without a copy.
#[derive(serde::Serialize)]
enum WalRecordRef<'a> {
    Action(&'a Action),
    Commit { id: Timestamp, deps: &'a Deps },
}

/// One segment that is no longer written to.
#[derive(Debug)]
struct Sealed {
    seq: u64,
    /// The latest action it holds, as (epoch, timestamp); `None` if it holds none.
    last_action: Option<(Epoch, Timestamp)>,
}

/// The segment being written.
struct Open {
    seq: u64,
    file: Box<dyn SegmentFile>,
    /// Bytes written to the file so far (the valid prefix).
    len: u64,
    /// Bytes allocated on disk; past `len` they read as zeros.
    allocated: u64,
    last_action: Option<(Epoch, Timestamp)>,
}

/// An append-only, segmented log of actions and commits.
pub struct Wal {
    files: Arc<dyn Files>,
    /// Bytes reserved at a time ([`PREALLOCATE_BYTES`] on a real disk).
    preallocate: u64,
    dir: PathBuf,
    sealed: Vec<Sealed>,
    open: Open,
    /// Encoded records not yet written to the file.
    buf: Vec<u8>,
    /// The latest action in `buf` not yet accounted to the segment.
    buf_last_action: Option<(Epoch, Timestamp)>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> LogError {
    LogError::Io { path: path.display().to_string(), what: what.to_string(), source: e }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::CorruptSegment { path: path.display().to_string(), offset, reason: reason.into() }
}

/// The valid records of one segment and where they end.
struct Scan {
    records: Vec<WalRecord>,
    valid_len: u64,
    file_len: u64,
    /// Why reading stopped before the end of the data, if it did.
    torn: Option<String>,
    /// Where a valid record follows the bad one, if one does: then the bad record is damage.
    damage: Option<u64>,
}

fn scan(files: &dyn Files, path: &Path) -> Result<Scan, LogError> {
    let bytes = files.read(path).map_err(|e| io_err(path, "reading", e))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    let torn = loop {
        if bytes.len() - at < HEADER {
            let rest_zero = bytes[at..].iter().all(|b| *b == 0);
            break (!rest_zero).then(|| "a record header is cut short".to_string());
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len == 0 {
            // Preallocated space: the end of the data, unless something follows.
            let rest_zero = bytes[at..].iter().all(|b| *b == 0);
            break (!rest_zero).then(|| "a zero-length record is followed by data".to_string());
        }
        if len > MAX_RECORD_BYTES || bytes.len() - at - HEADER < len {
            break Some(format!("a record of {len} bytes runs past the end of the file"));
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break Some("a record's checksum does not match".to_string());
        }
        match postcard::from_bytes::<WalRecord>(payload) {
            Ok(r) => records.push(r),
            Err(e) => break Some(format!("a record does not decode: {e}")),
        }
        at += HEADER + len;
    };
    let damage = torn.as_ref().and_then(|_| record_after(&bytes, at + 1)).map(|next| next as u64);
    Ok(Scan { records, valid_len: at as u64, file_len: bytes.len() as u64, torn, damage })
}

/// Decodes the record that starts at `at`, if a whole valid one does.
fn record_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    (crc32fast::hash(payload) == crc && postcard::from_bytes::<WalRecord>(payload).is_ok())
        .then_some(len)
}

/// Where the first valid record at or after `from` starts, if any does.
///
/// A crash can only tear what follows the last synced byte, and nothing is ever written past
/// an unsynced write until it is synced: so a valid record after a bad one proves the bad one
/// was inside synced data, which is damage, not a torn end. (The one case where this is
/// over-cautious: a disk that persisted a later page of the very last, unsynced write and
/// lost an earlier one. The node then stops instead of cutting, which loses nothing.)
fn record_after(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER <= bytes.len() {
        // A record's length is not zero, so one starts at most 3 bytes before a non-zero
        // byte: runs of zeros (preallocated space) are skipped at once.
        let nonzero = at + bytes[at..].iter().position(|b| *b != 0)?;
        at = at.max(nonzero.saturating_sub(3));
        if record_at(bytes, at).is_some() {
            return Some(at);
        }
        at += 1;
    }
    None
}

fn last_action(records: &[WalRecord]) -> Option<(Epoch, Timestamp)> {
    records
        .iter()
        .filter_map(|r| match r {
            WalRecord::Action(a) => Some((a.epoch, a.id)),
            WalRecord::Commit { .. } => None,
        })
        .max()
}

fn sync_dir(files: &dyn Files, dir: &Path) -> Result<(), LogError> {
    files.sync_dir(dir).map_err(|e| io_err(dir, "syncing directory", e))
}

impl Wal {
    /// Opens the log in `dir` (created if missing), truncates a torn end left by a crash and
    /// starts a new segment.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        Self::open_in(Arc::new(DiskFiles), dir, PREALLOCATE_BYTES)
    }

    /// Like [`Wal::open`], on the file system `files`, reserving `preallocate` bytes at a time.
    pub fn open_in(files: Arc<dyn Files>, dir: &Path, preallocate: u64) -> Result<Self, LogError> {
        files.create_dir_all(dir).map_err(|e| io_err(dir, "creating", e))?;
        let mut seqs = Vec::new();
        for name in files.list(dir).map_err(|e| io_err(dir, "listing", e))? {
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else { continue };
            if let Ok(seq) = u64::from_str_radix(stem, 16) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut sealed = Vec::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let scan = scan(files.as_ref(), &path)?;
            if let Some(reason) = &scan.torn {
                if i + 1 < seqs.len() {
                    return Err(corrupt(&path, scan.valid_len, reason.clone()));
                }
                if let Some(next) = scan.damage {
                    let reason = format!(
                        "{reason}, yet a valid record follows at byte {next}: the damage is \
                         inside data that was synced, not a torn write"
                    );
                    return Err(corrupt(&path, scan.valid_len, reason));
                }
                // The newest segment: its end was being written when the node stopped.
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = scan.valid_len,
                    reason,
                    "the log ends with a torn write (never synced, never acknowledged); cutting it off"
                );
            }
            if scan.records.is_empty() {
                files.remove(&path).map_err(|e| io_err(&path, "deleting", e))?;
                continue;
            }
            if scan.valid_len < scan.file_len {
                // Unused preallocated space, or a torn end: every closed segment ends with
                // its last record, so damage anywhere else is recognised as such.
                let mut f = files.open_write(&path).map_err(|e| io_err(&path, "opening", e))?;
                f.set_len(scan.valid_len)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io_err(&path, "truncating", e))?;
            }
            sealed.push(Sealed { seq, last_action: last_action(&scan.records) });
        }
        let next = seqs.last().map_or(1, |s| s + 1);
        let open = Self::create_segment(files.as_ref(), dir, next, preallocate)?;
        let dir = dir.to_path_buf();
        let buf = Vec::new();
        Ok(Self { files, preallocate, dir, sealed, open, buf, buf_last_action: None })
    }

    /// Every synced record, oldest first.
    pub fn read_all(&self) -> Result<Vec<WalRecord>, LogError> {
        let mut all = Vec::new();
        let seqs = self.sealed.iter().map(|s| s.seq).chain(std::iter::once(self.open.seq));
        for seq in seqs {
            let path = segment_path(&self.dir, seq);
            let scan = scan(self.files.as_ref(), &path)?;
            if let Some(reason) = scan.torn {
                return Err(corrupt(&path, scan.valid_len, reason));
            }
            all.extend(scan.records);
        }
        Ok(all)
    }

    fn create_segment(
        files: &dyn Files,
        dir: &Path,
        seq: u64,
        preallocate: u64,
    ) -> Result<Open, LogError> {
        let path = segment_path(dir, seq);
        let mut file = files.create_new(&path).map_err(|e| io_err(&path, "creating", e))?;
        let prepared = file
            .allocate(0, preallocate)
            .map_err(|e| io_err(&path, "allocating", e))
            .and_then(|allocated| {
                file.sync_all().map_err(|e| io_err(&path, "syncing", e))?;
                sync_dir(files, dir)?;
                Ok(allocated)
            });
        match prepared {
            Ok(allocated) => Ok(Open { seq, file, len: 0, allocated, last_action: None }),
            Err(e) => {
                // An empty segment left behind (a full disk, say) would only confuse.
                let _ = files.remove(&path);
                Err(e)
            }
        }
    }

    /// Appends `record` if it is one the write-ahead file keeps (an action or a commit
    /// record); false for the others, which the caller keeps elsewhere.
    pub fn append_record(&mut self, record: &LogRecord) -> bool {
        match record {
            LogRecord::Action(a) => self.append_action(a),
            LogRecord::Commit { id, deps } => self.append_commit(*id, deps),
            _ => return false,
        }
        true
    }

    /// Adds every synced action and commit record to `restored` (actions sorted by id).
    pub fn restore_into(&self, restored: &mut Restored) -> Result<(), LogError> {
        for record in self.read_all()? {
            match record {
                WalRecord::Action(a) => restored.actions.push(a),
                WalRecord::Commit { id, deps } => restored.commits.push((id, deps)),
            }
        }
        restored.actions.sort_by_key(|a| a.id);
        Ok(())
    }

    pub fn append_action(&mut self, action: &Action) {
        self.encode(&WalRecordRef::Action(action));
        let point = Some((action.epoch, action.id));
        self.buf_last_action = self.buf_last_action.max(point);
    }

    pub fn append_commit(&mut self, id: Timestamp, deps: &Deps) {
        self.encode(&WalRecordRef::Commit { id, deps });
    }

    fn encode(&mut self, record: &WalRecordRef<'_>) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER]);
        let buf = std::mem::take(&mut self.buf);
        self.buf = postcard::to_extend(record, buf).expect("encoding to memory");
        let len = (self.buf.len() - start - HEADER) as u32;
        let crc = crc32fast::hash(&self.buf[start + HEADER..]);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes what was appended and waits for the disk (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = segment_path(&self.dir, self.open.seq);
        let open = &mut self.open;
        let end = open.len + self.buf.len() as u64;
        if end > open.allocated {
            let more = (end - open.allocated).max(self.preallocate);
            open.allocated += open
                .file
                .allocate(open.allocated, more)
                .map_err(|e| io_err(&path, "allocating", e))?;
        }
        open.file
            .write_at(open.len, &self.buf)
            .and_then(|()| open.file.sync_data())
            .map_err(|e| io_err(&path, "writing", e))?;
        open.len = end;
        open.last_action = open.last_action.max(self.buf_last_action.take());
        self.buf.clear();
        if open.len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        Ok(())
    }

    /// Starts a new segment, after writing out what is buffered. Called at every snapshot so
    /// that the records before it can later be dropped as whole files.
    pub fn rotate(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let seq = self.open.seq + 1;
        let next = Self::create_segment(self.files.as_ref(), &self.dir, seq, self.preallocate)?;
        let mut old = std::mem::replace(&mut self.open, next);
        // Give back the zeros the old segment will never use.
        let path = segment_path(&self.dir, old.seq);
        old.file.set_len(old.len).map_err(|e| io_err(&path, "trimming", e))?;
        self.sealed.push(Sealed { seq: old.seq, last_action: old.last_action });
        Ok(())
    }

    /// How many segments [`Wal::compact`] would delete.
    pub fn compactable(&self, upto: (Epoch, Timestamp)) -> usize {
        self.sealed.iter().take_while(|s| s.last_action.is_none_or(|a| a <= upto)).count()
    }

    /// Deletes the oldest sealed segments whose actions all lie at or before `upto` (a durable
    /// snapshot's point), stopping at the first that holds a later one. A commit record always
    /// follows its action, so a deleted segment never holds the commit of a kept action.
    pub fn compact(&mut self, upto: (Epoch, Timestamp)) -> Result<usize, LogError> {
        let covered = self.compactable(upto);
        for s in self.sealed.drain(..covered) {
            let path = segment_path(&self.dir, s.seq);
            self.files.remove(&path).map_err(|e| io_err(&path, "deleting", e))?;
        }
        Ok(covered)
    }

    /// Segments on disk, the open one included.
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use strstore_protocol::{Write as ClientWrite, WriteOp};

    fn action(epoch: Epoch, time: u64, oseq: u64) -> Action {
        Action {
            id: Timestamp::new(time, 2),
            epoch,
            oseq,
            writes: vec![ClientWrite { client: 9, seq: oseq, op: WriteOp::Append("xy".into()) }],
            limits: Default::default(),
        }
    }

    fn ids(records: &[WalRecord]) -> Vec<u64> {
        records
            .iter()
            .map(|r| match r {
                WalRecord::Action(a) => a.id.time,
                WalRecord::Commit { id, .. } => 1000 + id.time,
            })
            .collect()
    }

    #[test]
    fn synced_records_come_back_in_order_and_unsynced_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            assert!(wal.read_all().unwrap().is_empty());
            wal.append_action(&action(1, 5, 1));
            wal.append_commit(Timestamp::new(5, 2), &vec![(2, 0)]);
            wal.sync().unwrap();
            wal.append_action(&action(1, 6, 2));
            wal.rotate().unwrap();
            wal.append_action(&action(1, 7, 3)); // never synced: lost
        }
        let records = Wal::open(dir.path()).unwrap().read_all().unwrap();
        assert_eq!(ids(&records), vec![5, 1005, 6]);
        assert_eq!(records[1], WalRecord::Commit { id: Timestamp::new(5, 2), deps: vec![(2, 0)] });
    }

    /// Power cuts at random points, through the real write-ahead file over a file system
    /// that keeps only what was synced (and, at the cut, a random part of the write under
    /// way): every record whose sync returned comes back, in order, and the log always opens
    /// (a torn end is never taken for damage). Fails if `sync` does not sync. Small
    /// preallocations, so that growing the file is exercised too.
    #[test]
    fn a_power_cut_keeps_every_synced_record() {
        use super::super::files::LazyFiles;
        use rand::{Rng, SeedableRng};
        for seed in 0..1000 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let files = LazyFiles::default();
            let dir = Path::new("/data/wal");
            let (mut synced, mut time) = (Vec::new(), 0);
            for round in 0..5 {
                let mut wal = Wal::open_in(Arc::new(files.clone()), dir, 4096)
                    .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
                let back = ids(&wal.read_all().unwrap());
                assert!(
                    back.starts_with(&synced),
                    "seed {seed} round {round}: lost a synced record"
                );
                synced = back;
                let mut pending = Vec::new();
                for _ in 0..rng.gen_range(1..40) {
                    time += 1;
                    wal.append_action(&action(1, time, time));
                    pending.push(time);
                    if rng.gen_bool(0.3) {
                        wal.sync().unwrap();
                        synced.append(&mut pending);
                    } else if rng.gen_bool(0.05) {
                        wal.rotate().unwrap();
                        synced.append(&mut pending);
                    }
                }
                // The power goes while the last batch is being written.
                time += 1;
                wal.append_action(&action(1, time, time));
                files.fail_syncs(true);
                if wal.sync().is_ok() {
                    synced.push(time); // it says so: then it must be kept
                }
                drop(wal);
                files.fail_syncs(false);
                files.power_cut(rng.gen_range(0.0..1.0));
            }
        }
    }

    #[test]
    fn a_torn_end_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append_action(&action(1, 5, 1));
            wal.append_action(&action(1, 6, 2));
            wal.sync().unwrap();
        }
        // Damage the last record's payload, as a write cut short by a crash would.
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let end = bytes.iter().rposition(|b| *b != 0).unwrap();
        bytes[end] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            let records = wal.read_all().unwrap();
            assert_eq!(ids(&records), vec![5]);
            wal.append_action(&action(1, 7, 2));
            wal.sync().unwrap();
        }
        let records = Wal::open(dir.path()).unwrap().read_all().unwrap();
        assert_eq!(ids(&records), vec![5, 7], "the cut segment reads cleanly after a restart");
    }

    #[test]
    fn a_bad_record_with_a_valid_one_after_it_is_damage_not_a_torn_end() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            for t in 1..=3 {
                wal.append_action(&action(1, t, t));
                wal.sync().unwrap();
            }
        }
        // Four bytes overwritten inside the second record, as a bad sector would.
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let first = HEADER + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        bytes[first + HEADER..first + HEADER + 4].copy_from_slice(b"XXXX");
        fs::write(&seg, &bytes).unwrap();
        let err = Wal::open(dir.path()).err().expect("damage must not open");
        let LogError::CorruptSegment { offset, reason, .. } = &err else { panic!("{err}") };
        assert_eq!(*offset, first as u64, "names the damaged record");
        assert!(reason.contains("valid record follows"), "{reason}");
        assert_eq!(fs::read(&seg).unwrap(), bytes, "a damaged segment is left as it is");
    }

    #[test]
    fn damage_before_the_newest_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path()).unwrap();
            wal.append_action(&action(1, 5, 1));
            wal.rotate().unwrap();
            wal.append_action(&action(1, 6, 2));
            wal.sync().unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER + 1] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        assert!(matches!(Wal::open(dir.path()), Err(LogError::CorruptSegment { .. })));
    }

    #[test]
    fn compaction_drops_covered_segments_only_from_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path()).unwrap();
        wal.append_action(&action(1, 5, 1));
        wal.rotate().unwrap(); // segment 1: up to 5
        wal.append_action(&action(1, 9, 2));
        wal.rotate().unwrap(); // segment 2: up to 9
        wal.append_commit(Timestamp::new(9, 2), &vec![(2, 1)]);
        wal.rotate().unwrap(); // segment 3: commits only
        wal.append_action(&action(1, 12, 3));
        wal.sync().unwrap(); // segment 4, open
        assert_eq!(wal.segments(), 4);
        assert_eq!(wal.compact((1, Timestamp::new(6, 2))).unwrap(), 1);
        assert_eq!(wal.compact((1, Timestamp::new(9, 2))).unwrap(), 2);
        assert_eq!(wal.segments(), 1, "the open segment stays");
        drop(wal);
        let records = Wal::open(dir.path()).unwrap().read_all().unwrap();
        assert_eq!(ids(&records), vec![12]);
        // A later epoch covers everything of the earlier ones.
        let mut wal = Wal::open(dir.path()).unwrap();
        assert_eq!(wal.segments(), 2, "the empty segment left by the last open is gone");
        assert_eq!(wal.compact((2, Timestamp::new(1, 1))).unwrap(), 1);
    }
}
