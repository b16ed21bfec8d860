//! The file operations the write-ahead file needs, behind a trait: the real file system for
//! nodes, and [`LazyFiles`], a file system in memory that keeps only what was synced, so that
//! tests can cut the power and see exactly what a disk would have kept (as Jepsen's LazyFS
//! does for real processes).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A directory tree of segment files.
pub trait Files: Send + Sync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries of `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates a file that must not exist yet, for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the creation and removal of `dir`'s entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file.
pub trait SegmentFile: Send {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&mut self) -> io::Result<()>;
    /// `fsync`.
    fn sync_all(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reserves `len` bytes from `offset` on, so that writes there do not change the file's
    /// size; returns how many were reserved (0 where the file system cannot).
    fn allocate(&mut self, offset: u64, len: u64) -> io::Result<u64>;
}

/// The real file system.
pub struct DiskFiles;

impl Files for DiskFiles {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Box::new(file))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(OpenOptions::new().write(true).open(path)?))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl SegmentFile for File {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.seek(SeekFrom::Start(offset))?;
        self.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        // A slow disk for the chaos test and the benchmarks (`failpoints` feature only).
        fail::fail_point!("wal-sync");
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn allocate(&mut self, offset: u64, len: u64) -> io::Result<u64> {
        use rustix::fs::{fallocate, FallocateFlags};
        match fallocate(&*self, FallocateFlags::empty(), offset, len) {
            Ok(()) => Ok(len),
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// One file of [`LazyFiles`]: what a reader sees now, and what survives a power cut.
#[derive(Clone, Debug, Default)]
struct LazyFile {
    current: Vec<u8>,
    /// Content as of the last sync of the file.
    synced: Vec<u8>,
    /// The byte range changed since the last sync.
    dirty: Option<(usize, usize)>,
    /// Whether the directory entry is durable (synced directory, or `fsync` of the file).
    entry_durable: bool,
}

/// A file system in memory that loses, at [`LazyFiles::power_cut`], every byte not synced
/// and every file whose directory entry was not. A removal is durable at once (a real one
/// may come back after a cut; for the write-ahead file that only brings back a segment a
/// snapshot covers, whose actions a restart skips). Cloning shares the same files.
#[derive(Clone, Default)]
pub struct LazyFiles {
    files: Arc<Mutex<BTreeMap<PathBuf, LazyFile>>>,
    /// While set, every sync fails (EIO) without making anything durable: the power is
    /// going while the disk writes.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl LazyFiles {
    /// Makes every sync fail from now on (`true`) or work again.
    pub fn fail_syncs(&self, failing: bool) {
        self.failing.store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    fn sync(&self, path: &Path, entry: bool) -> io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()));
        }
        self.with(path, |f| {
            f.synced.resize(f.current.len(), 0);
            if let Some((from, to)) = f.dirty.take() {
                let to = to.min(f.current.len());
                if from < to {
                    f.synced[from..to].copy_from_slice(&f.current[from..to]);
                }
            }
            f.entry_durable |= entry;
        })
    }

    /// The power goes: what was not synced is gone. With `torn`, each file keeps the first
    /// `torn` share of the bytes it changed since its last sync, as a disk that wrote part of
    /// a write before the power went.
    pub fn power_cut(&self, torn: f64) {
        let mut files = self.files.lock().expect("lazy files");
        files.retain(|_, f| f.entry_durable);
        for f in files.values_mut() {
            let mut kept = f.synced.clone();
            if let Some((from, end)) = f.dirty.take() {
                let to = (from + ((end - from) as f64 * torn) as usize).min(f.current.len());
                if from < to {
                    kept.resize(kept.len().max(to), 0);
                    kept[from..to].copy_from_slice(&f.current[from..to]);
                }
            }
            // What the disk kept is on the disk now.
            f.synced.clone_from(&kept);
            f.current = kept;
        }
    }

    fn with<T>(&self, path: &Path, op: impl FnOnce(&mut LazyFile) -> T) -> io::Result<T> {
        let mut files = self.files.lock().expect("lazy files");
        let file = files.get_mut(path).ok_or(io::ErrorKind::NotFound)?;
        Ok(op(file))
    }
}

struct LazyHandle {
    files: LazyFiles,
    path: PathBuf,
}

impl Files for LazyFiles {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let files = self.files.lock().expect("lazy files");
        let names = files.keys().filter(|p| p.parent() == Some(dir));
        Ok(names.filter_map(|p| p.file_name().map(OsString::from)).collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.with(path, |f| f.current.clone())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let mut files = self.files.lock().expect("lazy files");
        if files.contains_key(path) {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        files.insert(path.to_path_buf(), LazyFile::default());
        Ok(Box::new(LazyHandle { files: self.clone(), path: path.to_path_buf() }))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        self.with(path, |_| ())?;
        Ok(Box::new(LazyHandle { files: self.clone(), path: path.to_path_buf() }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut files = self.files.lock().expect("lazy files");
        files.remove(path).map(|_| ()).ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut files = self.files.lock().expect("lazy files");
        for (_, f) in files.iter_mut().filter(|(p, _)| p.parent() == Some(dir)) {
            f.entry_durable = true;
        }
        Ok(())
    }
}

impl LazyFile {
    fn touch(&mut self, from: usize, to: usize) {
        let (a, b) = self.dirty.map_or((from, to), |(a, b)| (a.min(from), b.max(to)));
        self.dirty = Some((a, b));
    }

    fn resize(&mut self, len: usize) {
        let old = self.current.len();
        self.current.resize(len, 0);
        self.touch(old.min(len), old.max(len));
    }
}

impl SegmentFile for LazyHandle {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.files.with(&self.path, |f| {
            let (from, end) = (offset as usize, offset as usize + bytes.len());
            if f.current.len() < end {
                f.resize(end);
            }
            f.current[from..end].copy_from_slice(bytes);
            f.touch(from, end);
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.files.sync(&self.path, false)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.files.sync(&self.path, true)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.files.with(&self.path, |f| f.resize(len as usize))
    }

    fn allocate(&mut self, offset: u64, len: u64) -> io::Result<u64> {
        self.files.with(&self.path, |f| {
            let end = (offset + len) as usize;
            if f.current.len() < end {
                f.resize(end);
            }
            len
        })
    }
}
