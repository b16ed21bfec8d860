//! Whom to suspect, and when a removed node may come back.
//!
//! Three small judges, all counting in ticks so that the simulation drives them exactly as
//! production does:
//!
//! - [`Gaps`]: the timeout after which a silent peer counts as failed, adapted to the gaps its
//!   heartbeats (at the master) or heartbeat answers (at a member) have shown. A calm cluster
//!   detects a crash in `min_failure_ticks`; a jittery one (a loaded machine, a slow link)
//!   waits longer, up to `failure_ticks`, instead of suspecting healthy nodes.
//! - [`AckLag`]: members that are alive but hold every commit back, because each write waits
//!   for every member's ack: the last ack of an action coming far behind the others', again
//!   and again.
//! - [`HoldDown`]: a node removed from the view is added again only after it has been heard
//!   steadily for a while, a while that grows each time it is removed, so that a flapping
//!   node is not re-added (and removed, each time stalling writes) every few seconds.

use std::collections::{BTreeMap, VecDeque};

use strstore_protocol::{NodeId, Timestamp};

use super::ready::Ticks;

/// Heartbeats a peer may miss in a row, at its usual pace, before it is suspected.
const MISSABLE_HEARTBEATS: u64 = 5;
/// The growth of the hold-down with each removal in a row.
const HOLD_DOWN_GROWTH: u64 = 4;

/// Jacobson's estimator (TCP's RTO) applied to the gaps between a peer's messages: a smoothed
/// mean and mean deviation, both scaled by 8 to stay in integers.
#[derive(Clone, Debug)]
pub(crate) struct Gaps {
    last: Option<Ticks>,
    mean8: u64,
    dev8: u64,
}

impl Gaps {
    /// A peer expected every `heartbeat` ticks, before anything was observed.
    pub(crate) fn new(heartbeat: Ticks) -> Self {
        Self { last: None, mean8: heartbeat.max(1) * 8, dev8: heartbeat.max(1) * 4 }
    }

    /// The peer was heard at `now`.
    pub(crate) fn heard(&mut self, now: Ticks) {
        if let Some(last) = self.last.replace(now) {
            let gap8 = now.saturating_sub(last) * 8;
            let err = gap8.abs_diff(self.mean8);
            // Rounded away from the old value, so that steady gaps converge exactly.
            if gap8 >= self.mean8 {
                self.mean8 += err.div_ceil(8);
            } else {
                self.mean8 -= err.div_ceil(8);
            }
            if err >= self.dev8 {
                self.dev8 += (err - self.dev8).div_ceil(4);
            } else {
                self.dev8 -= (self.dev8 - err).div_ceil(4);
            }
        }
    }

    /// A new view: silence is counted from its start again, but what the gaps taught stays.
    pub(crate) fn restart(&mut self) {
        self.last = None;
    }

    /// Silence after which the peer counts as failed, between `min` and `max`.
    pub(crate) fn timeout(&self, min: Ticks, max: Ticks) -> Ticks {
        let adaptive = (MISSABLE_HEARTBEATS * self.mean8 + 4 * self.dev8) / 8;
        adaptive.clamp(min, max.max(min))
    }
}

/// The lag a member may gather in all, `hold` ticks of it, is counted over this many holds:
/// a node paused for just under the failure timeout, again and again, lags a third to a
/// half of the time, never long enough in one spell, and holds every write back each time.
const LAG_WINDOW_HOLDS: Ticks = 3;

/// Members whose acks come last, far behind the others', for long enough to matter.
#[derive(Debug, Default)]
pub(crate) struct AckLag {
    /// Actions every member but one has acked here: the one still missing, and since when.
    waiting: BTreeMap<Timestamp, (NodeId, Ticks)>,
    /// Since when each member has had actions waiting on it beyond the bound, and when it
    /// last had one.
    lagging_since: BTreeMap<NodeId, (Ticks, Ticks)>,
    /// The ticks at which each member lagged, over the last `LAG_WINDOW_HOLDS` holds.
    lagged_at: BTreeMap<NodeId, VecDeque<Ticks>>,
}

impl AckLag {
    /// Every member but `member` has acked `id` (first call counts).
    pub(crate) fn waiting_on(&mut self, id: Timestamp, member: NodeId, now: Ticks) {
        self.waiting.entry(id).or_insert((member, now));
    }

    /// `id` needs no more acks here (committed, or every ack in).
    pub(crate) fn done(&mut self, id: Timestamp) {
        self.waiting.remove(&id);
    }

    /// Re-judges every member at `now`: lagging while some action has waited on it for more
    /// than `bound` ticks. A spell survives a break of up to `bridge` ticks: each new action
    /// takes at least the bound to be overdue again, and a lossy link delays some acks and
    /// not others, so a member slow on most actions lags without a break. Actions at or
    /// before `applied` are over, however they ended.
    /// Lag older than `LAG_WINDOW_HOLDS` × `hold` is forgotten.
    pub(crate) fn tick(&mut self, now: Ticks, lag: LagRule, applied: Timestamp) {
        let LagRule { bound, bridge, hold } = lag;
        self.waiting = self.waiting.split_off(&Timestamp::new(applied.time, applied.node + 1));
        let mut behind: BTreeMap<NodeId, Ticks> = BTreeMap::new();
        for &(member, since) in self.waiting.values() {
            if now.saturating_sub(since) > bound {
                let crossed = since + bound;
                behind.entry(member).and_modify(|t| *t = (*t).min(crossed)).or_insert(crossed);
            }
        }
        self.lagging_since
            .retain(|m, (_, last)| behind.contains_key(m) || now.saturating_sub(*last) <= bridge);
        let window_start = now.saturating_sub(LAG_WINDOW_HOLDS * hold);
        self.lagged_at.retain(|_, at| {
            while at.front().is_some_and(|&t| t <= window_start) {
                at.pop_front();
            }
            !at.is_empty()
        });
        for (member, crossed) in behind {
            self.lagging_since.entry(member).or_insert((crossed, now)).1 = now;
            self.lagged_at.entry(member).or_default().push_back(now);
        }
    }

    /// Members that have lagged for at least `hold` ticks without a break, longest first,
    /// then those that lagged for `hold` ticks in all over the last `LAG_WINDOW_HOLDS` holds.
    pub(crate) fn slow(&self, now: Ticks, hold: Ticks) -> Vec<NodeId> {
        let mut slow: Vec<(Ticks, NodeId)> = self
            .lagging_since
            .iter()
            .filter(|(_, &(since, _))| now.saturating_sub(since) >= hold)
            .map(|(&m, &(since, _))| (since, m))
            .collect();
        slow.sort_unstable();
        let mut slow: Vec<NodeId> = slow.into_iter().map(|(_, m)| m).collect();
        for (&m, at) in &self.lagged_at {
            if hold > 0 && at.len() as Ticks >= hold && !slow.contains(&m) {
                slow.push(m);
            }
        }
        slow
    }
}

/// How [`AckLag`] judges, in ticks: an ack later than `bound` behind the others' lags; a
/// spell survives breaks up to `bridge`; `hold` of lag makes a member slow.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LagRule {
    pub bound: Ticks,
    pub bridge: Ticks,
    pub hold: Ticks,
}

/// The hold-down settings, in ticks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HoldDownConfig {
    /// After a first removal.
    pub base: Ticks,
    /// The most it grows to.
    pub max: Ticks,
    /// A silence longer than this between two asks to join restarts the steady period.
    pub gap: Ticks,
}

/// Removed nodes, and whether each has earned its way back.
#[derive(Debug, Default)]
pub(crate) struct HoldDown {
    removed: BTreeMap<NodeId, Removal>,
}

#[derive(Debug)]
struct Removal {
    /// Removals in a row (without a long enough good spell in between).
    count: u32,
    at: Ticks,
    /// When the node was last heard asking to join, and since when without a long gap.
    heard: Option<Ticks>,
    steady_since: Ticks,
}

impl HoldDown {
    /// A view change removed `node` at `now`.
    pub(crate) fn removed(&mut self, node: NodeId, now: Ticks, cfg: HoldDownConfig) {
        let r = self.removed.entry(node).or_insert(Removal {
            count: 0,
            at: now,
            heard: None,
            steady_since: now,
        });
        // A node that stayed in for twice the longest hold-down starts over.
        if now.saturating_sub(r.at) > 2 * cfg.max {
            r.count = 0;
        }
        r.count = r.count.saturating_add(1);
        r.at = now;
        r.heard = None;
        r.steady_since = now;
    }

    /// `node` asks to join at `now`: whether it may be added. Never removed: at once.
    pub(crate) fn may_rejoin(&mut self, node: NodeId, now: Ticks, cfg: HoldDownConfig) -> bool {
        let Some(r) = self.removed.get_mut(&node) else { return true };
        if r.heard.is_none_or(|heard| now.saturating_sub(heard) > cfg.gap) {
            r.steady_since = now;
        }
        r.heard = Some(now);
        now.saturating_sub(r.steady_since) >= r.hold(cfg)
    }

    /// The hold-down `node` is under, for status and logs (0: none).
    pub(crate) fn hold_of(&self, node: NodeId, cfg: HoldDownConfig) -> Ticks {
        self.removed.get(&node).map_or(0, |r| r.hold(cfg))
    }
}

impl Removal {
    fn hold(&self, cfg: HoldDownConfig) -> Ticks {
        let growth = HOLD_DOWN_GROWTH.saturating_pow(self.count.saturating_sub(1));
        cfg.base.saturating_mul(growth).min(cfg.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_heartbeats_give_the_floor_and_jitter_raises_the_timeout() {
        let mut gaps = Gaps::new(10);
        for t in 0..100 {
            gaps.heard(t * 10);
        }
        assert_eq!(gaps.timeout(50, 200), 50);
        let mut jittery = Gaps::new(10);
        let mut t = 0;
        for i in 0..100 {
            t += if i % 2 == 0 { 2 } else { 40 };
            jittery.heard(t);
        }
        let timeout = jittery.timeout(50, 200);
        assert!(timeout > 100, "gaps of 2 and 40 ticks must widen the timeout: {timeout}");
        assert!(jittery.timeout(50, 120) == 120, "capped at the maximum");
    }

    const RULE: LagRule = LagRule { bound: 20, bridge: 40, hold: 10 };

    #[test]
    fn a_member_lags_only_while_an_action_waits_on_it_beyond_the_bound() {
        let mut lag = AckLag::default();
        let a = Timestamp::new(5, 1);
        lag.waiting_on(a, 3, 100);
        lag.tick(110, RULE, Timestamp::default());
        assert!(lag.slow(110, 0).is_empty(), "10 ticks is within the bound");
        lag.tick(130, RULE, Timestamp::default());
        assert_eq!(lag.slow(130, 10), vec![3], "lagging since tick 120");
        assert!(lag.slow(130, 11).is_empty());
        lag.done(a);
        lag.tick(131, RULE, Timestamp::default());
        assert_eq!(lag.slow(131, 10), vec![3], "a short break does not end the spell");
        lag.tick(171, RULE, Timestamp::default());
        assert!(
            lag.slow(500, 0).is_empty(),
            "caught up for longer than the bridge: the spell is over"
        );
        lag.waiting_on(Timestamp::new(6, 2), 3, 200);
        lag.tick(300, RULE, Timestamp::new(6, 2));
        assert!(lag.slow(300, 0).is_empty(), "an applied action waits on nobody");
    }

    /// Runs `ticks` ticks in which each `period` ticks a new action waits `stall` ticks on
    /// member 3; returns the first tick at which 3 is slow.
    fn first_slow(period: Ticks, stall: Ticks, ticks: Ticks, rule: LagRule) -> Option<Ticks> {
        let mut lag = AckLag::default();
        let mut seq = 0;
        for now in 1..=ticks {
            let phase = now % period;
            if phase == 1 {
                seq += 1;
                lag.waiting_on(Timestamp::new(seq, 1), 3, now);
            }
            if phase == (1 + stall) % period {
                lag.done(Timestamp::new(seq, 1));
            }
            lag.tick(now, rule, Timestamp::default());
            if !lag.slow(now, rule.hold).is_empty() {
                return Some(now);
            }
        }
        None
    }

    #[test]
    fn a_member_that_lags_again_and_again_is_slow_though_no_spell_is_long() {
        // As the defaults in ticks of 10 ms: an ack 50 ms late lags, 1 s of lag is too much.
        let rule = LagRule { bound: 5, bridge: 25, hold: 100 };
        // Paused 400 ms of every 800: each spell is 350 ticks short of the hold and breaks
        // for longer than the bridge.
        let flapping = first_slow(80, 40, 2000, rule).expect("a flapping member is slow");
        assert!(flapping <= 3 * 80 + 80, "slow after {flapping} ticks");
        assert!(flapping > 100, "not before a hold of lag has gathered: {flapping}");
        // Late by 150 ms on one action in every 500 ms: a healthy member's hiccups.
        assert_eq!(first_slow(50, 15, 5000, rule), None);
        // One long spell is slow as soon as it lasts a hold, as before.
        let mut lag = AckLag::default();
        lag.waiting_on(Timestamp::new(1, 1), 3, 0);
        lag.tick(106, rule, Timestamp::default());
        assert_eq!(lag.slow(106, 100), vec![3]);
    }

    #[test]
    fn hold_down_needs_a_steady_spell_that_grows_with_each_removal() {
        let cfg = HoldDownConfig { base: 100, max: 1000, gap: 30 };
        let mut hold = HoldDown::default();
        assert!(hold.may_rejoin(7, 0, cfg), "never removed: no hold-down");
        hold.removed(7, 1000, cfg);
        assert!(!hold.may_rejoin(7, 1010, cfg));
        // A pause longer than the gap restarts the steady spell.
        assert!(!hold.may_rejoin(7, 1090, cfg));
        assert!(!hold.may_rejoin(7, 1150, cfg), "another gap: steady only from 1150");
        let mut t = 1150;
        while !hold.may_rejoin(7, t, cfg) {
            t += 20;
        }
        assert_eq!(t, 1250, "100 ticks of steady asking after the last gap");
        hold.removed(7, 1200, cfg);
        assert_eq!(hold.hold_of(7, cfg), 400, "the second removal in a row waits 4 times longer");
        hold.removed(7, 1300, cfg);
        assert_eq!(hold.hold_of(7, cfg), 1000, "capped");
        hold.removed(7, 1300 + 2001, cfg);
        assert_eq!(hold.hold_of(7, cfg), 100, "after a long good spell it starts over");
    }
}
