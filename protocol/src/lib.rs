//! Wire protocol of strstore: the messages clients and peers exchange, and the codec that
//! frames them.
//!
//! Layout:
//! - [`message`]: client requests and replies ([`Request`], [`Reply`]), peer traffic
//!   ([`PeerMsg`] inside an [`Envelope`]) and the handshakes that open each connection.
//! - [`codec`]: length-delimited frames holding one postcard-encoded message each, with an
//!   explicit maximum frame size. Decoding is total: bad input is a typed [`CodecError`].
//! - [`chunks`]: [`Chunks`], a byte string in shared pieces (a snapshot's string), encoded
//!   as one byte string.
//! - [`error`]: [`Error`], the serializable error a node returns to a client.
//!
//! This crate does no I/O beyond the codec; the server and client crates own sockets.

pub mod chunks;
pub mod codec;
pub mod error;
pub mod message;

pub use chunks::Chunks;
pub use codec::{Codec, CodecError, DEFAULT_MAX_FRAME_BYTES};
pub use error::Error;
pub use message::*;

/// Version of the wire protocol. Both sides send it in their hello; a connection whose peer
/// speaks another version is refused with [`Error::VersionMismatch`], because postcard has no
/// self-description and a silent mismatch would decode garbage.
///
/// History: 2 added the applied digest to snapshots and the `Inspect` request; 3 carries the
/// size limits in every view and action, a content digest in `Inspect`, and `fresh` in
/// `Join`; 4 drops the `Internal` error no node ever sent (the variants after it moved); 5
/// adds `master_lags` to `Heartbeat`.
pub const PROTOCOL_VERSION: u32 = 5;
