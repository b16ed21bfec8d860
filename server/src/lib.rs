//! A strstore node.
//!
//! Layout:
//! - [`replica`]: the replication engine, a deterministic state machine (no I/O).
//! - [`log`]: the durable log the engine's records go to (sled on disk, memory in tests).
//! - [`server`]: the tokio driver that owns the engine and connects it to clients, peers and
//!   the log.
//! - [`config`]: command-line configuration and its validation.

pub mod log;
pub mod replica;
