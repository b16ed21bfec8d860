//! What a node knows of the cluster beyond its current view, kept across views:
//! `membership.rs` runs heartbeats and joins with it, `view_change.rs` records who left.

use std::collections::BTreeMap;

use strstore_protocol::{Health, Member, NodeId, View};

use super::config::Config;
use super::detector::{Gaps, HoldDown};
use super::ready::Ticks;

#[derive(Debug, Default)]
pub(super) struct Cluster {
    /// The health this node reports in its heartbeats (the driver samples it).
    pub(super) health: Health,
    /// Master: the health each member last reported.
    pub(super) member_health: BTreeMap<NodeId, Health>,
    /// Nodes that asked to join (at the master), or members that lost their data (at any
    /// member, for a proposal it may have to make).
    pub(super) joiners: BTreeMap<NodeId, Member>,
    /// Master: addresses members announced in their heartbeats (the view may not know a
    /// member's client address).
    pub(super) announced: BTreeMap<NodeId, Member>,
    /// Nodes a view change removed, and when: `status` lists them as failed until they rejoin.
    pub(super) departed: BTreeMap<NodeId, (Member, Ticks)>,
    /// Until this node enters a view: it lost what it once acked (see `Config`).
    pub(super) fresh_incarnation: bool,
    /// Gaps between the messages of each peer whose silence this node judges: at the
    /// master every member's heartbeats, at a member the master's answers.
    gaps: BTreeMap<NodeId, Gaps>,
    /// Nodes removed from the view, and when they may come back.
    hold_down: HoldDown,
    next_heartbeat: Ticks,
    /// When this node, outside the view, last asked to join.
    join_sent: Ticks,
}

impl Cluster {
    pub(super) fn new(fresh_incarnation: bool) -> Self {
        Self { fresh_incarnation, ..Self::default() }
    }

    /// Silence after which `peer` counts as failed here: adapted to the gaps it has shown.
    pub(super) fn silence_timeout(&self, peer: NodeId, cfg: &Config) -> Ticks {
        let (min, max) = (cfg.min_failure_ticks, cfg.failure_ticks);
        self.gaps.get(&peer).map_or(max.max(min), |g| g.timeout(min, max))
    }

    /// `peer`, whose silence this node judges, was heard at `now`.
    pub(super) fn heard(&mut self, peer: NodeId, now: Ticks, cfg: &Config) {
        let heartbeat = cfg.heartbeat_ticks;
        self.gaps.entry(peer).or_insert_with(|| Gaps::new(heartbeat)).heard(now);
    }

    /// Whether a heartbeat interval has passed since the last one; starts the next if so.
    pub(super) fn heartbeat_due(&mut self, now: Ticks, cfg: &Config) -> bool {
        if now < self.next_heartbeat {
            return false;
        }
        self.next_heartbeat = now + cfg.heartbeat_ticks;
        true
    }

    /// Whether this node may ask to join again: at most once per heartbeat interval.
    pub(super) fn may_ask_to_join(&mut self, now: Ticks, cfg: &Config) -> bool {
        if self.join_sent != 0 && now < self.join_sent + cfg.heartbeat_ticks {
            return false;
        }
        self.join_sent = now.max(1);
        true
    }

    /// Whether `node`, removed lately, has been heard steadily for its hold-down by `now`.
    pub(super) fn may_rejoin(&mut self, node: NodeId, now: Ticks, cfg: &Config) -> bool {
        self.hold_down.may_rejoin(node, now, cfg.hold_down())
    }

    /// A view change removed `m` at `now`; returns the hold-down it is under.
    pub(super) fn departs(&mut self, m: &Member, now: Ticks, cfg: &Config) -> Ticks {
        self.departed.insert(m.id, (m.clone(), now));
        self.hold_down.removed(m.id, now, cfg.hold_down());
        self.hold_down.hold_of(m.id, cfg.hold_down())
    }

    /// This node entered `view`: its members are no longer departed or joining, and every
    /// silence is judged afresh.
    pub(super) fn entered(&mut self, view: &View) {
        self.fresh_incarnation = false;
        self.gaps.values_mut().for_each(|g| g.restart());
        self.departed.retain(|id, _| !view.contains(*id));
        self.joiners.retain(|id, _| !view.contains(*id));
    }
}
