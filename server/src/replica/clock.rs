//! The Lamport clock, and the bound persisted ahead of it: a restarted node resumes above
//! every time it may have shown a peer, without logging each tick.

use super::records::{LogRecord, CLOCK_LEASE};

#[derive(Debug, Default)]
pub(super) struct Clock {
    time: u64,
    /// The bound last logged: no time at or above it was shown to anyone.
    bound: u64,
}

impl Clock {
    /// The clock after a restart whose log held `bound`.
    pub(super) fn restored(bound: u64) -> Self {
        Self { time: bound, bound }
    }

    pub(super) fn time(&self) -> u64 {
        self.time
    }

    /// Replay: moves up to `time`, a time this node already logged.
    pub(super) fn replayed(&mut self, time: u64) {
        self.time = self.time.max(time);
    }

    /// The time of a new own event.
    pub(super) fn tick(&mut self, log: &mut Vec<LogRecord>) -> u64 {
        self.time += 1;
        self.extend_bound(log);
        self.time
    }

    /// Moves past `time`, seen in a message or in the applied state.
    pub(super) fn witness(&mut self, time: u64, log: &mut Vec<LogRecord>) {
        self.time = self.time.max(time) + 1;
        self.extend_bound(log);
    }

    /// Keeps the persisted bound ahead of any time this node may show a peer: one record per
    /// `CLOCK_LEASE` ticks, written with the message that first shows a time past it.
    fn extend_bound(&mut self, log: &mut Vec<LogRecord>) {
        if self.time >= self.bound {
            self.bound = self.time + CLOCK_LEASE;
            log.push(LogRecord::ClockBound(self.bound));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(log: &[LogRecord]) -> Vec<u64> {
        log.iter()
            .filter_map(|r| match r {
                LogRecord::ClockBound(b) => Some(*b),
                _ => None,
            })
            .collect()
    }

    /// A restarted clock logs a new bound before it shows its first time, and then only
    /// once per lease.
    #[test]
    fn the_bound_is_logged_once_per_lease_and_before_the_first_time_shown() {
        let mut clock = Clock::restored(1_000);
        let mut log = Vec::new();
        assert_eq!(clock.tick(&mut log), 1_001);
        assert_eq!(bounds(&log), vec![1_001 + CLOCK_LEASE]);
        for _ in 1..CLOCK_LEASE {
            clock.tick(&mut log);
        }
        assert_eq!(bounds(&log).len(), 1, "still within the lease");
        clock.tick(&mut log);
        assert_eq!(bounds(&log), vec![1_001 + CLOCK_LEASE, 1_001 + 2 * CLOCK_LEASE]);
    }

    /// Lamport's rule: a witnessed time moves the clock past it, an older one still ticks.
    #[test]
    fn a_witnessed_time_moves_the_clock_past_it() {
        let mut clock = Clock::default();
        let mut log = Vec::new();
        clock.witness(40, &mut log);
        assert_eq!(clock.time(), 41);
        clock.witness(10, &mut log);
        assert_eq!(clock.time(), 42);
        clock.replayed(30);
        assert_eq!(clock.time(), 42, "replay never moves the clock back");
    }
}
