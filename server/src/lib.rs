//! A strstore node.
//!
//! Layout:
//! - [`replica`]: the replication engine, a deterministic state machine (no I/O);
//!   [`engine`] wraps it with the durability handshake (which message waits for which log
//!   write), the one pipeline both the production driver and the simulation run.
//! - [`log`]: the durable log the engine's records go to (a write-ahead file, a snapshot
//!   file and sled on disk; memory in tests), and [`log_writer`], the thread that
//!   group-commits it; [`storage`] opens a data directory and repairs a damaged one.
//! - [`server`]: the tokio driver that owns the engine; [`client_conn`] serves clients and
//!   [`transport`] carries peer messages over mutual TLS. Everything that feeds the driver
//!   (connections, links, the log writer, [`health`] samples) sends an [`inbox::Input`].
//! - [`edge`]: the bounds on what a stranger can take (descriptors, connection slots, read
//!   deadlines, request memory) and throttled warnings about them.
//! - [`tls`]: TLS material, node identity in certificates, and plain-words handshake errors;
//!   [`certs`] creates the cluster CA and certificates (`strstore-server certs`).
//! - [`config`]: command-line configuration and its validation; [`detection`] the flags of
//!   failure and slowness detection.

pub mod certs;
pub mod client_conn;
pub mod config;
pub mod detection;
pub mod edge;
pub mod engine;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod health;
pub mod inbox;
pub mod log;
pub mod log_writer;
pub mod replica;
pub mod server;
pub mod storage;
pub mod tls;
pub mod transport;
