//! What view changes keep across epochs: the highest ballot round seen, the election timers
//! and their randomness, and the last decision (`view_change.rs` runs the Paxos instance of
//! each epoch, `epoch::NextView`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strstore_protocol::{Ballot, NodeId, ViewProposal};

use super::config::Config;
use super::ready::Ticks;

#[derive(Debug)]
pub(super) struct ViewChanges {
    /// The replica's only randomness: election timing. Seeded, so a run replays.
    rng: StdRng,
    /// Random extra silence from the master, beyond its failure timeout, before this member
    /// starts an election (so that members rarely run against each other).
    election_jitter: Ticks,
    /// The last decision this node installed, re-sent to members that missed it.
    pub(super) last_decided: Option<ViewProposal>,
    /// Highest ballot round seen, so a new proposal outbids every earlier one.
    ballot_round: u64,
    /// No own proposal starts before this tick (back-off after losing a ballot).
    propose_after: Ticks,
    /// When this node last promised a ballot of another node.
    frozen_since: Ticks,
    /// How long a promise may stay without a decision before this node takes over.
    stall_after: Ticks,
}

impl ViewChanges {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            election_jitter: 0,
            last_decided: None,
            ballot_round: 0,
            propose_after: 0,
            frozen_since: 0,
            stall_after: 0,
        }
    }

    pub(super) fn election_jitter(&self) -> Ticks {
        self.election_jitter
    }

    pub(super) fn reset_election_timer(&mut self, cfg: &Config) {
        self.election_jitter = self.rng.gen_range(0..=cfg.min_failure_ticks / 2);
    }

    pub(super) fn may_propose(&self, now: Ticks) -> bool {
        now >= self.propose_after
    }

    /// A random pause before the next own proposal, so that two proposers that refused each
    /// other rarely collide again; as short as the fastest failure detection allows.
    pub(super) fn back_off(&mut self, now: Ticks, cfg: &Config) {
        let spread = (cfg.min_failure_ticks / 2).max(2);
        self.propose_after = now + self.rng.gen_range(1..spread);
    }

    /// This node froze its epoch at `now` (it promised, or took a stalled change over): it
    /// waits a random one to two failure timeouts for a decision before taking over.
    pub(super) fn froze(&mut self, now: Ticks, cfg: &Config) {
        self.frozen_since = now;
        let f = cfg.failure_ticks.max(1);
        self.stall_after = f + self.rng.gen_range(0..f);
    }

    /// Whether a promise made at the last freeze has waited too long for its decision.
    pub(super) fn stalled(&self, now: Ticks) -> bool {
        now >= self.frozen_since + self.stall_after
    }

    /// A ballot of `me` above every round seen and above `promised`.
    pub(super) fn next_ballot(&mut self, promised: Ballot, me: NodeId) -> Ballot {
        self.ballot_round = self.ballot_round.max(promised.round) + 1;
        Ballot { round: self.ballot_round, node: me }
    }

    pub(super) fn saw_round(&mut self, round: u64) {
        self.ballot_round = self.ballot_round.max(round);
    }
}
