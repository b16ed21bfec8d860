//! Which actions of each origin a node holds: the input to the delivery rule.
//!
//! Actions of one origin may arrive in any order (loss, re-sends, reordering), so for each
//! origin we keep the highest `oseq` below which nothing is missing, plus the numbers seen
//! above that gap.

use std::collections::{BTreeMap, BTreeSet};

use strstore_protocol::{NodeId, Oseq};

/// Per-origin record of received `oseq`s.
#[derive(Clone, Debug, Default)]
pub struct Received {
    origins: BTreeMap<NodeId, OriginReceived>,
}

#[derive(Clone, Debug, Default)]
struct OriginReceived {
    /// Every oseq in `1..=contiguous` is held.
    contiguous: Oseq,
    /// Held oseqs above `contiguous + 1`.
    beyond: BTreeSet<Oseq>,
}

impl Received {
    /// Records `oseq` of `origin`; returns false if it was held already (a duplicate).
    pub fn insert(&mut self, origin: NodeId, oseq: Oseq) -> bool {
        let o = self.origins.entry(origin).or_default();
        if oseq <= o.contiguous || !o.beyond.insert(oseq) {
            return false;
        }
        while o.beyond.remove(&(o.contiguous + 1)) {
            o.contiguous += 1;
        }
        true
    }

    /// Highest oseq of `origin` such that every action up to it is held.
    pub fn contiguous(&self, origin: NodeId) -> Oseq {
        self.origins.get(&origin).map_or(0, |o| o.contiguous)
    }

    /// Marks every oseq of `origin` up to `upto` as held (after a snapshot covered them).
    pub fn fill_to(&mut self, origin: NodeId, upto: Oseq) {
        let o = self.origins.entry(origin).or_default();
        if upto > o.contiguous {
            o.contiguous = upto;
            o.beyond = o.beyond.split_off(&(upto + 1));
            while o.beyond.remove(&(o.contiguous + 1)) {
                o.contiguous += 1;
            }
        }
    }

    /// The contiguous watermark of every origin seen.
    pub fn watermarks(&self) -> BTreeMap<NodeId, Oseq> {
        self.origins.iter().map(|(n, o)| (*n, o.contiguous)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_hold_the_watermark_back() {
        let mut r = Received::default();
        assert!(r.insert(1, 2));
        assert_eq!(r.contiguous(1), 0);
        assert!(r.insert(1, 1));
        assert_eq!(r.contiguous(1), 2);
        assert!(!r.insert(1, 2), "duplicate");
        assert!(r.insert(1, 4));
        assert_eq!(r.contiguous(1), 2);
        assert!(!r.insert(1, 4), "4 is held above the gap");
        r.fill_to(1, 3);
        assert_eq!(r.contiguous(1), 4, "filling the gap reaches the 4 held beyond it");
        assert_eq!(r.contiguous(2), 0);
    }
}
