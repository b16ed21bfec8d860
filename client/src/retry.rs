//! The pure parts of the retry policy: how long one node gets, which node to try next, and
//! how long to wait between rounds. The loop that uses them lives in [`crate::client`].

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::MIN_ATTEMPT_TIMEOUT;

/// Pause after the first round in which every node failed. Short, because the usual cause is
/// one node restarting while another is about to answer.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Longest pause between rounds: long enough not to hammer a cluster that is down, short
/// enough to notice quickly when it comes back.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a node that failed stays behind the others when the client picks where to start,
/// unless it answers again first. A node cut off from its peers refuses or stalls for at least
/// the cluster's failure timeout (2 s) and is then removed from the view, so for a few seconds
/// trying it first only costs time; after that it may have rejoined and gets its turn again.
pub(crate) const SUSPECT_FOR: Duration = Duration::from_secs(5);

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

/// What the client last heard from one node.
#[derive(Clone, Copy, Debug, Default)]
struct Heard {
    /// When the node last answered (a result, or a refusal that is the request's fault).
    ok: Option<Instant>,
    /// When the node last failed: unreachable, silent, or unable to serve.
    failed: Option<Instant>,
}

impl Heard {
    /// Failed within [`SUSPECT_FOR`] of `now` and has not answered since.
    fn suspect(&self, now: Instant) -> bool {
        match self.failed {
            Some(failed) => {
                self.ok.is_none_or(|ok| ok < failed) && now.duration_since(failed) < SUSPECT_FOR
            }
            None => false,
        }
    }
}

/// Per node, when it last answered and when it last failed, and from that the order in which
/// a request tries the nodes. Deterministic: equal records keep the order of the node list.
#[derive(Clone, Debug)]
pub(crate) struct NodeHealth {
    heard: Vec<Heard>,
}

impl NodeHealth {
    /// `len` nodes, none heard from yet.
    pub(crate) fn new(len: usize) -> Self {
        assert!(len > 0, "a client needs at least one node");
        Self { heard: vec![Heard::default(); len] }
    }

    /// Node `node` answered at `now`.
    pub(crate) fn answered(&mut self, node: usize, now: Instant) {
        self.heard[node].ok = Some(now);
    }

    /// Node `node` failed at `now`.
    pub(crate) fn failed(&mut self, node: usize, now: Instant) {
        self.heard[node].failed = Some(now);
    }

    /// Every node once, in the order to try them at `now`: first those not suspect, the one
    /// that answered most recently first and those never heard from after them; then the
    /// suspects, the one that failed longest ago (most likely to be back) first.
    pub(crate) fn order(&self, now: Instant) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.heard.len()).collect();
        // Stable sort on a key: ties keep list order. `Reverse` puts late answers first and,
        // as `None` sorts first, never-heard nodes after every node that answered.
        order.sort_by_key(|&node| {
            let heard = &self.heard[node];
            if heard.suspect(now) {
                (true, std::cmp::Reverse(None), heard.failed)
            } else {
                (false, std::cmp::Reverse(heard.ok), None)
            }
        });
        order
    }

    /// The node a request would start at, at `now`.
    pub(crate) fn preferred(&self, now: Instant) -> usize {
        self.order(now)[0]
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
    fn unknown_nodes_are_tried_in_list_order() {
        let now = Instant::now();
        assert_eq!(NodeHealth::new(3).order(now), [0, 1, 2]);
    }

    #[test]
    fn the_node_that_answered_last_comes_first_and_recent_failures_last() {
        let t0 = Instant::now();
        let mut health = NodeHealth::new(4);
        health.answered(2, t0);
        health.answered(1, t0 + 10 * MS);
        health.failed(0, t0 + 20 * MS);
        let now = t0 + 30 * MS;
        assert_eq!(health.order(now), [1, 2, 3, 0], "latest answer, older answer, unknown, failed");
        assert_eq!(health.preferred(now), 1);

        health.failed(1, t0 + 40 * MS);
        let now = t0 + 50 * MS;
        assert_eq!(health.order(now), [2, 3, 0, 1], "suspects last, the oldest failure first");
        health.answered(0, t0 + 60 * MS);
        assert_eq!(health.order(now), [0, 2, 3, 1], "an answer clears the suspicion at once");
    }

    #[test]
    fn a_failure_is_forgotten_after_the_suspect_window() {
        let t0 = Instant::now();
        let mut health = NodeHealth::new(3);
        health.answered(1, t0);
        health.failed(1, t0 + MS);
        health.failed(0, t0 + MS);
        assert_eq!(health.order(t0 + SUSPECT_FOR), [2, 0, 1], "both still suspect");
        let later = t0 + MS + SUSPECT_FOR;
        assert_eq!(health.order(later), [1, 0, 2], "by last answer again: 1 answered once");
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
