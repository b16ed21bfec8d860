//! Connection slots with shedding: a full node makes room for a newcomer by closing the
//! connection that does least for anyone.
//!
//! A slow-loris crowd fills every slot with connections that sent a byte and nothing more.
//! Refusing newcomers would lock real clients out, so at the cap the oldest connection still
//! in its hello (or TLS handshake) is shed, then the one idle longest. Only when every slot
//! carries work is the newcomer turned away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What a connection is doing, from least to most useful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepted, not yet through its hello: unauthenticated, has done nothing for anyone.
    Opening,
    /// Through its hello, nothing in flight and no frame started.
    Idle,
    /// A frame is arriving or requests await replies.
    Busy,
}

/// Which connection made room for a newcomer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    Opening,
    Idle,
}

/// What [`Slots::admit`] decided.
pub enum Admission {
    /// Room was free.
    Admitted(Slot),
    /// Room was made by shedding another connection.
    Shed(Slot, Shed),
    /// Every slot carries work; the newcomer is turned away.
    Full,
}

struct Entry {
    phase: Phase,
    since: Instant,
    shed: CancellationToken,
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: HashMap<u64, Entry>,
}

/// The slots of one listener.
#[derive(Clone)]
pub struct Slots {
    cap: usize,
    table: Arc<Mutex<Table>>,
}

impl Slots {
    pub fn new(cap: usize) -> Self {
        assert!(cap > 0, "a listener needs at least one slot");
        Self { cap, table: Arc::default() }
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections holding a slot now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection just accepted, shedding another if the listener is full. The
    /// shed connection's slot is freed at once, so the count never exceeds the cap for long
    /// (its socket closes as soon as its task sees the cancellation).
    pub fn admit(&self) -> Admission {
        let mut table = self.lock();
        let mut shed = None;
        if table.entries.len() >= self.cap {
            let victim = table
                .entries
                .iter()
                .filter(|(_, e)| e.phase != Phase::Busy)
                .min_by_key(|(_, e)| (e.phase, e.since))
                .map(|(id, e)| (*id, e.phase));
            let Some((id, phase)) = victim else { return Admission::Full };
            let entry = table.entries.remove(&id).expect("victim is in the table");
            entry.shed.cancel();
            shed = Some(if phase == Phase::Opening { Shed::Opening } else { Shed::Idle });
        }
        let id = table.next;
        table.next += 1;
        let token = CancellationToken::new();
        let entry = Entry { phase: Phase::Opening, since: Instant::now(), shed: token.clone() };
        table.entries.insert(id, entry);
        let slot = Slot { id, table: Arc::clone(&self.table), shed: token };
        match shed {
            None => Admission::Admitted(slot),
            Some(kind) => Admission::Shed(slot, kind),
        }
    }
}

/// One connection's slot; dropping it frees the slot.
pub struct Slot {
    id: u64,
    table: Arc<Mutex<Table>>,
    shed: CancellationToken,
}

impl Slot {
    /// Records what the connection does now (and since when, for the idle order).
    pub fn set_phase(&self, phase: Phase) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = table.entries.get_mut(&self.id) {
            if entry.phase != phase {
                entry.phase = phase;
                entry.since = Instant::now();
            }
        }
    }

    /// Resolves when the connection was shed to make room for another.
    pub fn shed(&self) -> WaitForCancellationFutureOwned {
        self.shed.clone().cancelled_owned()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> Slot {
        match a {
            Admission::Admitted(slot) | Admission::Shed(slot, _) => slot,
            Admission::Full => panic!("turned away"),
        }
    }

    #[test]
    fn a_full_listener_sheds_openings_first_then_the_longest_idle() {
        let slots = Slots::new(3);
        let busy = admitted(slots.admit());
        busy.set_phase(Phase::Busy);
        let idle = admitted(slots.admit());
        idle.set_phase(Phase::Idle);
        let opening = admitted(slots.admit());
        let Admission::Shed(newcomer, Shed::Opening) = slots.admit() else { panic!() };
        assert!(opening.shed.is_cancelled() && !idle.shed.is_cancelled());
        newcomer.set_phase(Phase::Busy);
        let Admission::Shed(_second, Shed::Idle) = slots.admit() else { panic!("idle shed next") };
        assert!(idle.shed.is_cancelled() && !busy.shed.is_cancelled());
        assert_eq!(slots.len(), 3);
    }

    #[test]
    fn only_work_keeps_a_newcomer_out_and_a_dropped_slot_frees_room() {
        let slots = Slots::new(1);
        let busy = admitted(slots.admit());
        busy.set_phase(Phase::Busy);
        assert!(matches!(slots.admit(), Admission::Full));
        drop(busy);
        assert!(matches!(slots.admit(), Admission::Admitted(_)));
    }
}
