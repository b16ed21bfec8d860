//! The simulated network: every message gets a random delay (so messages reorder), and
//! during the fault phase may be lost or delivered twice.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::Rng;
use strstore_protocol::{Envelope, PeerMsg};

use super::SimConfig;

/// Messages in flight, keyed by delivery step and a sequence number for a stable order.
#[derive(Default)]
pub struct Network {
    in_flight: BTreeMap<(u64, u64), Envelope>,
    next: u64,
    /// Messages handed to the network (before loss and duplication).
    pub sent: u64,
}

impl Network {
    /// Sends `env`; `faults` carries the loss, duplication and delay settings while faults
    /// are on, and `None` once the network is healed.
    pub fn send(&mut self, env: Envelope, now: u64, rng: &mut StdRng, faults: Option<&SimConfig>) {
        self.sent += 1;
        let (copies, max_delay) = match faults {
            Some(cfg) if rng.gen_bool(cfg.loss) => return,
            Some(cfg) if rng.gen_bool(cfg.duplicate) => (2, cfg.max_delay),
            Some(cfg) => (1, cfg.max_delay),
            None => (1, 3),
        };
        // A slow member, as with a slow disk: its replication messages (its acks above all)
        // arrive late, never lost, while its heartbeats keep coming on time.
        let replication = matches!(
            env.msg,
            PeerMsg::Action(_)
                | PeerMsg::Ack { .. }
                | PeerMsg::Fence { .. }
                | PeerMsg::Execute { .. }
        );
        let slow = faults
            .and_then(|cfg| cfg.slow)
            .filter(|s| s.node == env.from && replication)
            .map_or(0, |s| s.delay_steps);
        for _ in 0..copies {
            let at = now + rng.gen_range(1..=max_delay) + slow;
            self.in_flight.insert((at, self.next), env.clone());
            self.next += 1;
        }
    }

    /// Removes and returns every message due by `now`, in delivery order.
    pub fn due(&mut self, now: u64) -> Vec<Envelope> {
        let later = self.in_flight.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.in_flight, later);
        due.into_values().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}
