//! How many connections a node can afford: derived from its open-files limit, never guessed.
//!
//! A node that runs out of file descriptors cannot open a log segment or a snapshot, so it
//! must stop taking connections well before that. At start it raises its soft
//! `RLIMIT_NOFILE` to the hard limit (what an unprivileged process may do), keeps
//! [`RESERVED_FDS`] plus a few per peer for itself, and splits the rest between client
//! connections and peer connections that have not yet authenticated.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept for the node's own files whatever connections come: the log's segments
/// (the current one, the next, and ones being deleted), the snapshot being written and the
/// one being read, sled's files, stdio, the runtime's epoll and signal descriptors, and the
/// TLS files read on SIGHUP.
pub const RESERVED_FDS: u64 = 128;

/// Descriptors kept per member: the connection this node dials to it and the one it
/// accepts from it, with room for a reconnect overlapping the old connection.
pub const FDS_PER_PEER: u64 = 4;

/// Most peer connections that may be in their TLS handshake or hello at once. Real peers
/// need one each and hold it for milliseconds; more only serves a flood.
pub const MAX_PEER_HANDSHAKES: usize = 256;

/// The fewest client connections worth running with.
const MIN_CLIENT_CONNECTIONS: u64 = 16;

/// The connection caps in force, and what they come from (for the start-up log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// The open-files limit the node runs with (the soft limit, after raising it).
    pub open_files: u64,
    pub clients: usize,
    pub peer_handshakes: usize,
}

/// Why the node cannot run with its open-files limit.
#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error(
        "the open-files limit ({limit}) leaves too few descriptors: the node keeps {reserved} \
         for its log, snapshots and peers and needs at least {MIN_CLIENT_CONNECTIONS} more for \
         clients; raise it (ulimit -n, or LimitNOFILE= in a systemd unit)"
    )]
    TooLow { limit: u64, reserved: u64 },
}

/// Raises the soft open-files limit to the hard one and returns the soft limit in force.
/// A failure to raise it is not fatal: the caps are then derived from the lower limit.
pub fn raise_open_files_limit() -> u64 {
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if let Some(hard) = current.maximum.filter(|hard| *hard > soft) {
        let raised = Rlimit { current: Some(hard), maximum: Some(hard) };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return hard,
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit"),
        }
    }
    soft
}

/// The caps for a node of `members` members under `open_files`; `wanted_clients` is the
/// operator's `--max-connections`, lowered (with a warning by the caller) if it does not fit.
pub fn derive_caps(
    open_files: u64,
    members: usize,
    wanted_clients: Option<usize>,
) -> Result<ConnectionCaps, FdLimitError> {
    let reserved = RESERVED_FDS + FDS_PER_PEER * members as u64;
    let spare = open_files.saturating_sub(reserved);
    if spare < MIN_CLIENT_CONNECTIONS + 8 {
        return Err(FdLimitError::TooLow { limit: open_files, reserved });
    }
    // Half-open peer connections get an eighth, clients the rest: a flood on either port
    // then runs into its own cap, never into the descriptors the log needs.
    let peer_handshakes = (spare / 8).min(MAX_PEER_HANDSHAKES as u64);
    let affordable = spare - peer_handshakes;
    let clients = wanted_clients.map_or(affordable, |w| (w as u64).min(affordable));
    Ok(ConnectionCaps {
        open_files,
        clients: clients as usize,
        peer_handshakes: peer_handshakes as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_the_reserve_free() {
        let caps = derive_caps(1024, 3, None).unwrap();
        let reserved = RESERVED_FDS + 3 * FDS_PER_PEER;
        assert_eq!(caps.peer_handshakes, ((1024 - reserved) / 8) as usize);
        assert_eq!(caps.clients + caps.peer_handshakes, (1024 - reserved) as usize);
        assert!(caps.clients < 1024, "the old default of 1024 clients did not fit");
    }

    #[test]
    fn the_operators_cap_is_kept_when_it_fits_and_lowered_when_not() {
        assert_eq!(derive_caps(1 << 20, 3, Some(500)).unwrap().clients, 500);
        assert_eq!(derive_caps(1 << 20, 3, None).unwrap().peer_handshakes, MAX_PEER_HANDSHAKES);
        let caps = derive_caps(1024, 3, Some(5000)).unwrap();
        assert!(caps.clients < 1024 - RESERVED_FDS as usize);
    }

    #[test]
    fn a_limit_below_the_reserve_is_refused() {
        let err = derive_caps(150, 5, None).unwrap_err().to_string();
        assert!(err.contains("open-files limit (150)") && err.contains("ulimit -n"), "{err}");
    }
}
