//! The replication engine, free of I/O.
//!
//! Protocol (docs/protocol.md has the full account):
//!
//! 1. **Action.** The origin batches queued writes into an action stamped with its Lamport
//!    timestamp `(clock, id)` and a per-origin number `oseq`, logs it, and once the log write
//!    is durable sends it to every other member (and an ack to itself).
//! 2. **Ack.** A member moves its clock past the action, logs it, and once durable acks with
//!    `hw`, the highest `oseq` it has originated itself, to every member.
//! 3. **Commit.** With every member's ack the action is committed, with `deps[j]` = member
//!    `j`'s `hw`; each node learns it from the acks. The origin sends `Execute { deps }` only
//!    to a member that acks again after the commit (it missed an ack).
//! 4. **Deliver.** Each node applies the head of its hold-back queue (ordered by timestamp)
//!    when it is committed and every member's actions up to `deps` are held.
//! 5. **Reply.** The node where a client waits replies when it applies the client's write.
//!    A `get` rides on a *fence*: a timestamp acked by every member but logged by none, applied
//!    only at its origin, at its place in the order.
//!
//! Invariants asserted here: an action never arrives after a later one was applied; entries
//! are applied in strictly increasing timestamp order.
//!
//! Between views, `membership.rs` (heartbeats, joins) and `view_change.rs` (one Paxos decision
//! per epoch) remove failed members and add joiners; every action of an epoch is applied or
//! aborted before any action of the next.

mod clients;
mod clock;
mod cluster;
mod config;
mod detector;
mod epoch;
mod held;
mod membership;
mod node;
mod progress;
mod proposer;
mod quorum;
mod ready;
mod received;
mod records;
mod replication;
mod snapshot_schedule;
pub mod state;
mod text;
mod view_change;
mod view_changes;

pub use config::Config;
pub use node::{Replica, Stats};
pub use ready::{ClientReply, Ready, Ticks, WaiterId};
pub use received::Received;
pub use records::{LogRecord, Restored, SnapshotRecord, CLOCK_LEASE};
pub use state::{Limits, StringState};
