//! The node's edge towards strangers: every resource a connection can take is bounded.
//!
//! - [`fd_limits`]: the open-files limit, raised at start, and the connection caps derived
//!   from it with headroom the log, snapshots and real peers always keep.
//! - [`slots`]: connection slots; at the cap the connection doing least (still in its hello,
//!   then idle longest) is shed so that a real client still gets in.
//! - [`reader`]: reads client requests against deadlines (hello, a minimum rate once a
//!   frame started, idle) and a node-wide memory budget for buffered requests.
//! - [`throttle`]: warnings about refused and shed connections, rate-limited with counts.

pub mod fd_limits;
pub mod reader;
pub mod slots;
pub mod throttle;
