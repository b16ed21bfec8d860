//! The pure parts of the retry policy: which node to try next, and how long to wait between
//! rounds. The loop that uses them lives in [`crate::client`].

use std::time::Duration;

use rand::Rng;

/// Pause after the first round in which every node failed. Short, because the usual cause is
/// one node restarting while another is about to answer.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest pause between rounds: long enough not to hammer a cluster that is down, short
/// enough to notice quickly when it comes back.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Round-robin position in the node list. The client starts each request at the node that
/// last answered and moves one step on every failed attempt.
#[derive(Clone, Debug)]
pub(crate) struct Rotation {
    len: usize,
    current: usize,
}

impl Rotation {
    /// A rotation over `len` nodes starting at `start` (taken modulo `len`).
    pub(crate) fn new(len: usize, start: usize) -> Self {
        assert!(len > 0, "a rotation needs at least one node");
        Self { len, current: start % len }
    }

    /// Index of the node to try now.
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// Moves on to the next node, wrapping around.
    pub(crate) fn advance(&mut self) {
        self.current = (self.current + 1) % self.len;
    }

    /// Number of nodes: one round tries each once.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Exponential backoff with jitter. Each delay is drawn uniformly from `[d/2, d]`, where `d`
/// starts at the minimum and doubles up to the maximum, so clients that failed together do
/// not all come back at the same instant.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        assert!(min <= max, "backoff minimum {min:?} exceeds maximum {max:?}");
        Self { next: min, max }
    }

    /// The pause before the next round.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.next;
        self.next = (ceiling * 2).min(self.max);
        let floor = ceiling / 2;
        floor + rng.gen_range(Duration::ZERO..=ceiling - floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn rotation_visits_every_node_once_per_round_and_wraps() {
        let mut rotation = Rotation::new(3, 4);
        let mut seen = Vec::new();
        for _ in 0..2 * rotation.len() {
            seen.push(rotation.current());
            rotation.advance();
        }
        assert_eq!(seen, [1, 2, 0, 1, 2, 0], "starts at 4 mod 3 and wraps around");
    }

    #[test]
    fn single_node_rotation_stays_put() {
        let mut rotation = Rotation::new(1, 0);
        rotation.advance();
        assert_eq!(rotation.current(), 0);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let ceilings_ms = [50, 100, 200, 400, 800, 1000, 1000, 1000];
        for ceiling_ms in ceilings_ms {
            let delay = backoff.next_delay(&mut rng);
            let ceiling = Duration::from_millis(ceiling_ms);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} not in [{ceiling:?}/2, {ceiling:?}]"
            );
        }
    }
}
