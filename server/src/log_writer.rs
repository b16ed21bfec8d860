//! The log writer thread: group commit.
//!
//! The driver hands over the engine's writes in order. The thread takes every write waiting,
//! appends them all, syncs once, then tells the engine the highest write number now durable.
//! While it syncs, new writes queue up and share the next sync: that is how one fsync comes to
//! cover many actions.
//!
//! A batch of writes none of which is urgent (commit records nothing waits on, see `engine`)
//! is appended but not synced at once. It is synced by the next batch that needs a sync, or
//! after [`IDLE_SYNC`] without one.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::error;

use crate::engine::{LogWrite, WriteNumber};
use crate::inbox::Input;
use crate::log::{LogError, LogStore};

/// Longest a batch of writes that are not urgent stays unsynced when nothing else comes.
pub const IDLE_SYNC: Duration = Duration::from_millis(5);

/// Handle to the writer thread; dropping the sender side ends it after a final sync.
pub struct LogWriter {
    writes: std_mpsc::Sender<LogWrite>,
    thread: JoinHandle<()>,
}

impl LogWriter {
    /// Starts the thread. Each sync is reported back through `inbox` once, for the whole
    /// batch: each hand-over to the runtime is a wake-up (an eventfd write that cost ~50 us on
    /// a busy node), so one per batch rather than one per write.
    pub fn spawn<L: LogStore + Send + 'static>(mut log: L, inbox: mpsc::Sender<Input>) -> Self {
        let (writes, rx) = std_mpsc::channel::<LogWrite>();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                if let Err(error) = write_loop(&mut log, &rx, &inbox) {
                    // Nothing of the failed batch is reported durable, and nothing more is
                    // written: after a failed write or fsync, what was not synced is presumed
                    // lost (it is never retried as if it had succeeded). The engine decides
                    // what the node does next; the log closes when this thread returns.
                    error!(error = %error, "the durable log failed; nothing more is acknowledged");
                    let _ = inbox.blocking_send(Input::LogFailed(error));
                }
            })
            .expect("spawning the log writer thread");
        Self { writes, thread }
    }

    /// Queues a write. Never blocks.
    pub fn submit(&self, write: LogWrite) {
        // The thread only ends when this sender is dropped, or after the log failed (the
        // engine has been told; what is sent after that is never written).
        let _ = self.writes.send(write);
    }

    /// Waits until everything submitted is durable and the thread has ended.
    pub fn close(self) {
        drop(self.writes);
        let _ = self.thread.join();
    }
}

/// Group commit until the engine goes away or the log fails.
fn write_loop<L: LogStore>(
    log: &mut L,
    rx: &std_mpsc::Receiver<LogWrite>,
    inbox: &mpsc::Sender<Input>,
) -> Result<(), LogError> {
    // Records appended since the last sync.
    let mut dirty = false;
    // Highest write appended, and whether the engine was told it is durable.
    let mut last: Option<WriteNumber> = None;
    loop {
        let first = if dirty {
            match rx.recv_timeout(IDLE_SYNC) {
                Ok(write) => write,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    log.sync()?;
                    dirty = false;
                    if !report(inbox, last.take()) {
                        return Ok(());
                    }
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(write) => write,
                Err(_) => break,
            }
        };
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        for write in batch.iter().filter(|w| !w.records.is_empty()) {
            dirty = true;
            log.append(&write.records)?;
        }
        last = batch.last().map(|w| w.number);
        if !batch.iter().any(|w| w.urgent) {
            continue;
        }
        if dirty {
            log.sync()?;
            dirty = false;
        }
        if !report(inbox, last.take()) {
            return Ok(()); // engine gone: shutting down
        }
    }
    if dirty {
        log.sync()?;
    }
    Ok(())
}

/// Tells the engine that every write through `through` is durable; false if it is gone.
fn report(inbox: &mpsc::Sender<Input>, through: Option<WriteNumber>) -> bool {
    through.is_none_or(|through| inbox.blocking_send(Input::Synced { through }).is_ok())
}

#[cfg(test)]
mod tests {
    use strstore_protocol::Timestamp;

    use super::*;
    use crate::replica::LogRecord;

    fn commit() -> LogRecord {
        LogRecord::Commit { id: Timestamp::new(1, 1), deps: vec![(1, 0)] }
    }

    /// What [`TestLog`] was asked to do: clock bounds appended and not synced, those synced,
    /// and the calls.
    #[derive(Default)]
    struct Seen {
        pending: Vec<u64>,
        synced: Vec<u64>,
        appends: usize,
        syncs: usize,
    }

    /// A log that keeps, like a disk after power loss, only what was synced; its sync number
    /// `fail_at` (if not 0) and every later one fail.
    #[derive(Clone, Default)]
    struct TestLog {
        seen: std::sync::Arc<std::sync::Mutex<Seen>>,
        fail_at: usize,
    }

    impl LogStore for TestLog {
        fn append(&mut self, records: &[LogRecord]) -> Result<(), LogError> {
            let mut seen = self.seen.lock().unwrap();
            seen.appends += 1;
            for r in records {
                if let LogRecord::ClockBound(n) = r {
                    seen.pending.push(*n);
                }
            }
            Ok(())
        }
        fn sync(&mut self) -> Result<(), LogError> {
            let mut seen = self.seen.lock().unwrap();
            seen.syncs += 1;
            if self.fail_at != 0 && seen.syncs >= self.fail_at {
                let source =
                    std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
                return Err(LogError::Io { path: "wal".into(), what: "syncing".into(), source });
            }
            let pending = std::mem::take(&mut seen.pending);
            seen.synced.extend(pending);
            Ok(())
        }
        fn load(&self) -> Result<crate::replica::Restored, LogError> {
            Ok(Default::default())
        }
    }

    /// The next report of the writer, failing the test after 10 s rather than hanging it
    /// (`None` once the writer is gone).
    fn next_report(rx: &mut mpsc::Receiver<Input>) -> Option<Input> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(input) => return Some(input),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    assert!(std::time::Instant::now() < deadline, "no report from the writer");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// An urgent write of one clock bound, numbered as the bound.
    fn bound(number: u64) -> LogWrite {
        LogWrite { number, records: vec![LogRecord::ClockBound(number)], urgent: true }
    }

    /// A write is reported durable only once it would survive a power cut: every report must
    /// find the records of every write it covers synced, whatever the batching.
    #[test]
    fn no_write_is_reported_durable_before_it_is_synced() {
        let log = TestLog::default();
        let (inbox, mut rx) = mpsc::channel(1024);
        let writer = LogWriter::spawn(log.clone(), inbox);
        let mut number = 0;
        let mut bounds = Vec::new();
        for _ in 1..=200 {
            number += 1;
            writer.submit(bound(number));
            bounds.push(number);
            if number % 7 == 0 {
                number += 1;
                writer.submit(LogWrite { number, records: vec![commit()], urgent: false });
            }
        }
        let mut through = 0;
        while through < number {
            let Some(Input::Synced { through: now }) = next_report(&mut rx) else { panic!() };
            assert!(now > through, "reports move forward: {through} then {now}");
            through = now;
            let synced = log.seen.lock().unwrap().synced.clone();
            for b in bounds.iter().filter(|b| **b <= through) {
                assert!(synced.contains(b), "write {b} reported durable before it was synced");
            }
        }
        writer.close();
    }

    /// Writes nothing waits on are synced after a short idle time, and reported.
    #[test]
    fn a_write_that_is_not_urgent_is_synced_when_the_writer_goes_idle() {
        let log = TestLog::default();
        let (inbox, mut rx) = mpsc::channel(16);
        let writer = LogWriter::spawn(log.clone(), inbox);
        let records = vec![LogRecord::ClockBound(1)];
        writer.submit(LogWrite { number: 1, records, urgent: false });
        assert!(matches!(next_report(&mut rx), Some(Input::Synced { through: 1 })));
        assert_eq!(log.seen.lock().unwrap().synced, vec![1]);
        writer.close();
    }

    /// After a failed sync the writer reports nothing of the batch, never syncs again (what
    /// was not synced is presumed lost), and tells the engine; it never aborts the process.
    #[test]
    fn a_failed_sync_releases_nothing_and_stops_the_writer() {
        let log = TestLog { fail_at: 2, ..TestLog::default() };
        let (inbox, mut rx) = mpsc::channel(16);
        let writer = LogWriter::spawn(log.clone(), inbox);
        writer.submit(bound(1));
        assert!(matches!(next_report(&mut rx), Some(Input::Synced { through: 1 })));
        writer.submit(bound(2));
        assert!(matches!(next_report(&mut rx), Some(Input::LogFailed(LogError::Io { .. }))));
        writer.submit(bound(3));
        writer.close();
        assert!(next_report(&mut rx).is_none(), "nothing reported after the failure");
        let seen = log.seen.lock().unwrap();
        assert_eq!((seen.appends, seen.syncs), (2, 2), "write 3 was never written or synced");
        assert_eq!(seen.synced, vec![1], "the failed batch is not taken for durable");
    }
}
