//! The log writer thread: group commit.
//!
//! The engine hands over jobs (records to log, messages to send once they are durable). The
//! thread takes every job waiting, appends them all, syncs once, then releases their messages
//! in order. While it syncs, new jobs queue up and share the next sync: that is how one fsync
//! comes to cover many actions.
//!
//! A batch made only of `Commit` records, with no message waiting on it, is appended but not
//! synced at once: nothing is released on its account (the engine applies and answers on a
//! commit without waiting for its record, and a lost commit record is re-learned from the
//! peers after a restart, as when a crash hits between write and sync). It is synced by the
//! next batch that needs a sync, or after [`IDLE_SYNC`] without one. On a loaded node that
//! halves the syncs: every action is followed by its commit.

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use strstore_protocol::Envelope;
use tokio::sync::mpsc;
use tracing::error;

use crate::inbox::Input;
use crate::log::{LogError, LogStore};
use crate::replica::LogRecord;

/// Longest a deferred batch of commit records stays unsynced when nothing else comes.
pub const IDLE_SYNC: Duration = Duration::from_millis(5);

/// One engine step's durable work.
pub struct LogJob {
    pub records: Vec<LogRecord>,
    pub after_sync: Vec<Envelope>,
}

/// Handle to the writer thread; dropping the sender side ends it after a final sync.
pub struct LogWriter {
    jobs: std_mpsc::Sender<LogJob>,
    thread: JoinHandle<()>,
}

impl LogWriter {
    /// Starts the thread. The messages a sync releases go back to the engine through `inbox`,
    /// all of a batch in one input: each hand-over to the runtime is a wake-up (an eventfd
    /// write that cost ~50 us on a busy node), so one per batch rather than one per message.
    /// The input also says how many jobs became durable, so that the engine knows when
    /// everything it submitted is on disk (see `EngineDriver::dispatch`).
    pub fn spawn<L: LogStore + Send + 'static>(mut log: L, inbox: mpsc::Sender<Input>) -> Self {
        let (jobs, rx) = std_mpsc::channel::<LogJob>();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                if let Err(error) = write_loop(&mut log, &rx, &inbox) {
                    // Nothing of the failed batch is released, and nothing more is written:
                    // after a failed write or fsync, what was not synced is presumed lost
                    // (it is never retried as if it had succeeded). The engine decides what
                    // the node does next; the log closes when this thread returns.
                    error!(error = %error, "the durable log failed; nothing more is acknowledged");
                    let _ = inbox.blocking_send(Input::LogFailed(error));
                }
            })
            .expect("spawning the log writer thread");
        Self { jobs, thread }
    }

    /// Queues a job. Never blocks.
    pub fn submit(&self, job: LogJob) {
        // The thread only ends when this sender is dropped, or after the log failed (the
        // engine has been told; what is sent after that is never written).
        let _ = self.jobs.send(job);
    }

    /// Waits until everything submitted is durable and the thread has ended.
    pub fn close(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

impl LogJob {
    /// True when nothing depends on this job being durable soon: commit records only, and
    /// no message to release.
    fn can_wait(&self) -> bool {
        self.after_sync.is_empty()
            && self.records.iter().all(|r| matches!(r, LogRecord::Commit { .. }))
    }
}

/// Group commit until the engine goes away or the log fails.
fn write_loop<L: LogStore>(
    log: &mut L,
    rx: &std_mpsc::Receiver<LogJob>,
    inbox: &mpsc::Sender<Input>,
) -> Result<(), LogError> {
    // Records appended since the last sync.
    let mut dirty = false;
    // Jobs taken since the engine was last told they are durable.
    let mut unreported = 0;
    loop {
        let first = if dirty {
            match rx.recv_timeout(IDLE_SYNC) {
                Ok(job) => job,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    log.sync()?;
                    dirty = false;
                    let synced = Input::Synced { jobs: unreported, messages: Vec::new() };
                    unreported = 0;
                    if inbox.blocking_send(synced).is_err() {
                        return Ok(());
                    }
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            }
        };
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        dirty |= append(log, &batch)?;
        unreported += batch.len();
        if batch.iter().all(LogJob::can_wait) {
            continue;
        }
        if dirty {
            log.sync()?;
            dirty = false;
        }
        let messages: Vec<Envelope> = batch.into_iter().flat_map(|j| j.after_sync).collect();
        let synced = Input::Synced { jobs: unreported, messages };
        unreported = 0;
        if inbox.blocking_send(synced).is_err() {
            return Ok(()); // engine gone: shutting down
        }
    }
    if dirty {
        log.sync()?;
    }
    Ok(())
}

/// Appends every record of the batch; true if there was any.
fn append<L: LogStore>(log: &mut L, batch: &[LogJob]) -> Result<bool, LogError> {
    let mut wrote = false;
    for job in batch.iter().filter(|j| !j.records.is_empty()) {
        wrote = true;
        log.append(&job.records)?;
    }
    Ok(wrote)
}

#[cfg(test)]
mod tests {
    use strstore_protocol::{Action, PeerMsg, Timestamp};

    use super::*;

    fn commit() -> LogRecord {
        LogRecord::Commit { id: Timestamp::new(1, 1), deps: vec![(1, 0)] }
    }

    #[test]
    fn only_commit_records_with_nothing_to_release_may_wait() {
        let job = |records, after_sync| LogJob { records, after_sync };
        assert!(job(vec![commit(), commit()], vec![]).can_wait());
        assert!(job(vec![], vec![]).can_wait());
        let action = Action {
            id: Timestamp::new(2, 1),
            epoch: 1,
            oseq: 1,
            writes: vec![],
            limits: Default::default(),
        };
        assert!(!job(vec![commit(), LogRecord::Action(action)], vec![]).can_wait());
        assert!(!job(vec![LogRecord::ClockBound(9)], vec![]).can_wait());
        let ack = PeerMsg::Ack { id: Timestamp::new(1, 1), hw: 0, applied: Timestamp::default() };
        let env = Envelope { from: 1, to: 2, epoch: 1, msg: ack };
        assert!(!job(vec![commit()], vec![env]).can_wait(), "an ack waits for the flush");
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

    fn ack(id: u64) -> Envelope {
        let msg = PeerMsg::Ack { id: Timestamp::new(id, 1), hw: 0, applied: Timestamp::default() };
        Envelope { from: 1, to: 2, epoch: 1, msg }
    }

    /// A message waiting on a record leaves only once that record would survive a power
    /// cut: every release must find its record synced, whatever the batching.
    #[test]
    fn no_message_leaves_before_its_record_is_synced() {
        let log = TestLog::default();
        let (inbox, mut rx) = mpsc::channel(1024);
        let writer = LogWriter::spawn(log.clone(), inbox);
        for id in 1..=200 {
            let records = vec![LogRecord::ClockBound(id)];
            writer.submit(LogJob { records, after_sync: vec![ack(id)] });
            if id % 7 == 0 {
                writer.submit(LogJob { records: vec![commit()], after_sync: vec![] });
            }
        }
        let mut released = 0;
        while released < 200 {
            let Some(Input::Synced { messages, .. }) = rx.blocking_recv() else { panic!() };
            let synced = log.seen.lock().unwrap().synced.clone();
            for env in messages {
                let PeerMsg::Ack { id, .. } = env.msg else { panic!("an ack") };
                assert!(synced.contains(&id.time), "ack {id} left before its record was synced");
                released += 1;
            }
        }
        writer.close();
    }

    /// After a failed sync the writer releases nothing of the batch, never syncs again (what
    /// was not synced is presumed lost), and tells the engine; it never aborts the process.
    #[test]
    fn a_failed_sync_releases_nothing_and_stops_the_writer() {
        let log = TestLog { fail_at: 2, ..TestLog::default() };
        let (inbox, mut rx) = mpsc::channel(16);
        let writer = LogWriter::spawn(log.clone(), inbox);
        let job =
            |id| LogJob { records: vec![LogRecord::ClockBound(id)], after_sync: vec![ack(id)] };
        writer.submit(job(1));
        let Some(Input::Synced { messages, .. }) = rx.blocking_recv() else { panic!("synced") };
        assert_eq!(messages, vec![ack(1)]);
        writer.submit(job(2));
        assert!(matches!(rx.blocking_recv(), Some(Input::LogFailed(LogError::Io { .. }))));
        writer.submit(job(3));
        writer.close();
        assert!(rx.blocking_recv().is_none(), "nothing released after the failure");
        let seen = log.seen.lock().unwrap();
        assert_eq!((seen.appends, seen.syncs), (2, 2), "job 3 was never written or synced");
        assert_eq!(seen.synced, vec![1], "the failed batch is not taken for durable");
    }
}
