//! How one replica is tuned: what the operator's flags and the simulation set.

use strstore_protocol::{Member, NodeId, View};

use super::detector::HoldDownConfig;
use super::ready::Ticks;
use super::state::Limits;

/// Tuning of one replica. Every field has a default in [`Config::new`].
#[derive(Clone, Debug)]
pub struct Config {
    /// This node and its addresses (sent when it asks to join).
    pub me: Member,
    /// The view to start in when the log holds none.
    pub initial_view: View,
    /// This node's own size-limit flags. They are not what decides whether a write applies
    /// (each action carries its view's limits): they go into the views this node proposes,
    /// and into its first view until the master's answer says otherwise.
    pub limits: Limits,
    /// Most own actions and fences awaiting commit at once. Keeps many round trips in flight
    /// without letting one node flood the others' logs.
    pub window: usize,
    /// Most bytes of values in one action; keeps an action well under the frame limit.
    pub max_action_bytes: usize,
    /// Most writes in one action.
    pub max_action_writes: usize,
    /// Ticks before the first re-send of an unacked action; the next ones follow after 2, 4,
    /// 8... ticks, up to `max_resend_ticks`.
    pub resend_ticks: Ticks,
    /// Upper bound of the re-send back-off.
    pub max_resend_ticks: Ticks,
    /// Ticks between two heartbeats of a member to the master.
    pub heartbeat_ticks: Ticks,
    /// Most ticks of silence after which the master declares a member failed, and members
    /// elect a new master (plus a random part of up to half `min_failure_ticks`). The
    /// timeout adapts to the gaps seen between heartbeats (`detector::Gaps`), between
    /// `min_failure_ticks` and this. Also the time a view change may take before a retry.
    pub failure_ticks: Ticks,
    /// Fewest ticks of silence after which a peer counts as failed: where heartbeats come
    /// steadily, a crash is detected this fast.
    pub min_failure_ticks: Ticks,
    /// An action's last ack coming more than this many ticks after every other member's
    /// makes that member lag (0: never remove a member for lagging).
    pub ack_lag_ticks: Ticks,
    /// A member that lags without a break for this many ticks is removed by a view change,
    /// as long as the view keeps a majority of the cluster's members.
    pub ack_lag_for_ticks: Ticks,
    /// Ticks a removed node must be heard steadily before it is added again, after its first
    /// removal; each removal in a row multiplies it by 4, up to `max_hold_down_ticks`.
    pub hold_down_ticks: Ticks,
    pub max_hold_down_ticks: Ticks,
    /// Applied actions between two snapshots (which compact the log), at least; a large string
    /// waits longer (see `maybe_snapshot`). 0 disables them.
    pub snapshot_every: u64,
    /// Length of a tick in milliseconds, for status reports only.
    pub tick_ms: u64,
    /// Seed of the replica's randomness (election timeouts).
    pub seed: u64,
    /// This node lost the durable state it once acked with (its data was damaged and moved
    /// aside): it starts outside any view and must be added again by a view change.
    pub fresh_incarnation: bool,
}

impl Config {
    /// A configuration for node `id` in a first view of `members` whose master is the lowest
    /// id; addresses are left empty (the simulation does not need them).
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        let member = |id| Member { id, peer_addr: String::new(), client_addr: String::new() };
        let mut ids = members;
        ids.sort_unstable();
        ids.dedup();
        let master = ids.first().copied().unwrap_or(id);
        Self {
            me: member(id),
            initial_view: View {
                epoch: 1,
                master,
                members: ids.into_iter().map(member).collect(),
                limits: Limits::default(),
            },
            limits: Limits::default(),
            window: 64,
            max_action_bytes: 4 << 20,
            max_action_writes: 4096,
            resend_ticks: 3,
            max_resend_ticks: 40,
            heartbeat_ticks: 10,
            failure_ticks: 200,
            min_failure_ticks: 50,
            ack_lag_ticks: 5,
            ack_lag_for_ticks: 100,
            hold_down_ticks: 100,
            max_hold_down_ticks: 3000,
            snapshot_every: 10_000,
            tick_ms: 10,
            seed: id,
            fresh_incarnation: false,
        }
    }

    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// Starts outside every view (a joiner, or a repaired node): epoch 0 is older than any
    /// running cluster's, so the first answer from a peer tells this node it is behind, and
    /// it asks to be added.
    pub fn start_outside_views(&mut self) {
        let me = self.me.id;
        self.initial_view.epoch = 0;
        self.initial_view.members.retain(|m| m.id != me);
        self.initial_view.master = self.initial_view.members.first().map_or(me, |m| m.id);
    }

    /// How long whom the master removed must wait before it is added again.
    pub(super) fn hold_down(&self) -> HoldDownConfig {
        HoldDownConfig {
            base: self.hold_down_ticks,
            max: self.max_hold_down_ticks.max(self.hold_down_ticks),
            // A node outside the view asks once per heartbeat interval, through every member.
            gap: 3 * self.heartbeat_ticks.max(1),
        }
    }
}
