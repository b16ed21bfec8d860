//! When a snapshot is due. Each snapshot writes the whole string, so with a large string and
//! small appends a fixed count of actions would make the snapshots, not the appends, the cost
//! of an append (a 32 MiB string every 10,000 16-byte appends is 200 bytes written per byte
//! appended). A snapshot is due after `every` applied actions *and* once the log written
//! since the last one is at least `1 / SNAPSHOT_LOG_RATIO` of the snapshot's size: the cost
//! per operation stays flat as the string grows, at the price of a log (and a replay at
//! restart) of up to a quarter of the string's size.

use strstore_protocol::Action;

/// Bytes a logged write costs besides its value (ids, sequence number, framing).
const WRITE_LOG_OVERHEAD: u64 = 32;
/// A snapshot waits until the log since the last one is this fraction of the string.
const SNAPSHOT_LOG_RATIO: u64 = 4;

#[derive(Debug, Default)]
pub(super) struct SnapshotSchedule {
    /// Actions applied since the last snapshot.
    actions: u64,
    /// Bytes of writes those actions logged.
    logged: u64,
}

impl SnapshotSchedule {
    pub(super) fn applied(&mut self, action: &Action) {
        self.actions += 1;
        self.logged += action
            .writes
            .iter()
            .map(|w| w.op.value().len() as u64 + WRITE_LOG_OVERHEAD)
            .sum::<u64>();
    }

    /// Whether to snapshot a string of `string_len` bytes now (`every` = 0: never).
    pub(super) fn due(&self, every: u64, string_len: u64) -> bool {
        every > 0
            && self.actions >= every
            && self.logged.saturating_mul(SNAPSHOT_LOG_RATIO) >= string_len
    }

    pub(super) fn taken(&mut self) {
        *self = Self::default();
    }

    /// Actions applied since the last snapshot (the log holds them).
    pub(super) fn actions_since(&self) -> u64 {
        self.actions
    }
}

#[cfg(test)]
mod tests {
    use strstore_protocol::{Timestamp, Write, WriteOp};

    use super::*;

    fn append(bytes: usize) -> Action {
        let op = WriteOp::Append(vec![b'a'; bytes].into());
        let writes = vec![Write { client: 1, seq: 1, op }];
        Action { id: Timestamp::new(1, 1), epoch: 1, oseq: 1, writes, limits: Default::default() }
    }

    /// A small string is snapshotted after `every` actions; a large one waits until a
    /// quarter of its size was logged, however many actions that takes.
    #[test]
    fn a_snapshot_waits_for_the_count_and_for_a_quarter_of_the_string_logged() {
        let mut schedule = SnapshotSchedule::default();
        for _ in 0..9 {
            schedule.applied(&append(68)); // 100 log bytes each
        }
        assert!(!schedule.due(10, 0), "nine actions of ten");
        schedule.applied(&append(68));
        assert!(schedule.due(10, 4_000), "1,000 bytes logged, a quarter of 4,000");
        assert!(!schedule.due(10, 4_001));
        assert!(!schedule.due(0, 0), "0 disables snapshots");
        schedule.taken();
        assert_eq!(schedule.actions_since(), 0);
        assert!(!schedule.due(1, 0));
    }
}
