//! Client library for strstore, a replicated string store.
//!
//! ```no_run
//! # async fn demo() -> Result<(), strstore_client::ClientError> {
//! use strstore_client::{Client, ClientConfig};
//!
//! let config = ClientConfig::with_addrs(vec!["127.0.0.1:7379".into(), "127.0.0.1:7380".into()]);
//! let mut client = Client::new(config)?;
//! let len = client.append("hello").await?;
//! let value = client.get().await?;
//! assert!(value.len() as u64 >= len);
//! # Ok(())
//! # }
//! ```
//!
//! Layout:
//! - [`config`]: [`ClientConfig`] with its defaults and validation, and [`parse_addrs`] for
//!   `HOST:PORT,HOST:PORT` lists.
//! - [`client`]: [`Client`], which numbers requests and retries each one (same client id and
//!   sequence number) across nodes until it is answered or its deadline passes.
//! - `connection`: one framed connection to one node (hello, request, reply), generic over
//!   the byte stream (`stream`: plain TCP or TLS).
//! - [`tls`]: TLS settings ([`TlsFiles`], the shared `--tls-*` flags) and TLS failures
//!   explained in terms of what to change.
//! - `retry`: each attempt's share of the deadline, which node to try first (the one that
//!   answered most recently), and jittered exponential backoff.
//! - [`error`]: [`ClientError`], which tells "rejected" from "outcome unknown".
//!
//! The binaries `strstore-cli` (one command per run) and `strstore-bench` (closed-loop load
//! generator) are built on this crate.

pub mod args;
pub mod client;
pub mod config;
mod connection;
pub mod error;
mod retry;
mod stream;
pub mod tls;

pub use client::Client;
pub use config::{parse_addrs, ClientConfig, ADDR_ENV, DEFAULT_ADDR, DEFAULT_MAX_REPLY_BYTES};
pub use error::ClientError;
pub use strstore_protocol::{self as protocol, ClientId, Op, ReqSeq, Response};
pub use tls::{TlsArgs, TlsFiles};
