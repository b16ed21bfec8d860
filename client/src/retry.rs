//! The pure parts of the retry policy: how long one node gets, which node to try next, and
//! how long to wait between rounds. The loop that uses them lives in [`crate::client`].

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Pause after the first round in which every node failed. Short, because the usual cause is
/// one node restarting while another is about to answer.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest pause between rounds: long enough not to hammer a cluster that is down, short
/// enough to notice quickly when it comes back.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Least time one node gets to answer, whatever the share of the deadline comes to. A healthy
/// node answers a write in milliseconds (one round trip to a quorum and an fsync), tens under
/// load, so half a second abandons no node that works; and it is short enough that a request
/// with a one-second deadline still reaches a second node.
pub(crate) const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// Time one node gets for one attempt: an equal share of what remains of the deadline among
/// the `nodes_left` nodes this round has not tried yet (counting this one), so that a node
/// which accepts a request but never answers leaves the others time. At least
/// [`MIN_ATTEMPT_TIMEOUT`], at most `cap` (the configured `attempt_timeout`, which wins over
/// the floor), never beyond the deadline.
pub(crate) fn attempt_timeout(remaining: Duration, nodes_left: usize, cap: Duration) -> Duration {
    assert!(nodes_left > 0, "an attempt is made at a node that is left to try");
    let share = remaining / u32::try_from(nodes_left).unwrap_or(u32::MAX);
    share.max(MIN_ATTEMPT_TIMEOUT).min(cap).min(remaining)
}

/// Round-robin position in the node list. The client starts each request at the node that
/// last answered and moves one step on every failed attempt.
#[derive(Clone, Debug)]
pub(crate) struct Rotation {
    len: usize,
    current: usize,
}

impl Rotation {
    /// A rotation over `len` nodes starting at the first.
    pub(crate) fn new(len: usize) -> Self {
        assert!(len > 0, "a rotation needs at least one node");
        Self { len, current: 0 }
    }

    /// Node `node` answered: the next request starts there.
    pub(crate) fn answered(&mut self, node: usize, _now: Instant) {
        self.current = node;
    }

    /// Node `node` failed: move on to the next node, wrapping around.
    pub(crate) fn failed(&mut self, node: usize, _now: Instant) {
        self.current = (node + 1) % self.len;
    }

    /// Every node once, starting at the current one.
    pub(crate) fn order(&self, _now: Instant) -> Vec<usize> {
        (0..self.len).map(|i| (self.current + i) % self.len).collect()
    }

    /// The node a request would start at.
    pub(crate) fn preferred(&self, _now: Instant) -> usize {
        self.current
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

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn attempts_share_what_remains_among_the_nodes_left() {
        let cap = Duration::from_secs(5);
        let secs = Duration::from_secs;
        // (remaining, nodes left, expected)
        for (remaining, left, expected) in [
            (secs(5), 2, 2500 * MS),   // `--timeout 5`, two nodes: the first gets half
            (2500 * MS, 1, 2500 * MS), // ...and the last node what is left
            (secs(10), 3, Duration::from_nanos(3_333_333_333)),
            (secs(30), 2, secs(5)),  // never more than the cap
            (secs(1), 4, 500 * MS),  // at least the floor...
            (300 * MS, 2, 300 * MS), // ...but never past the deadline
        ] {
            assert_eq!(attempt_timeout(remaining, left, cap), expected, "{remaining:?} / {left}");
        }
        let low_cap = 200 * MS;
        assert_eq!(attempt_timeout(secs(5), 2, low_cap), low_cap, "a set cap wins over the floor");
    }

    #[test]
    fn rotation_visits_every_node_once_per_round_and_wraps() {
        let now = Instant::now();
        let mut rotation = Rotation::new(3);
        rotation.failed(0, now);
        assert_eq!(rotation.order(now), [1, 2, 0]);
        rotation.answered(2, now);
        assert_eq!(rotation.order(now), [2, 0, 1]);
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
