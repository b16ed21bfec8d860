//! The durable log: where the engine's [`LogRecord`](crate::replica::LogRecord)s go before
//! any message that depends on them is sent.
//!
//! Two implementations share the [`LogStore`] trait: [`DiskLog`] on disk for real nodes and
//! [`MemLog`] for the simulation, which models a crash by dropping whatever was not synced.

mod disk;
pub mod files;
mod memory;
mod snapshot_file;
mod store;
mod wal;

pub use disk::DiskLog;
pub use memory::MemLog;
pub use store::{restore_from, LogError, LogStore};
pub use wal::{Wal, WalRecord};
