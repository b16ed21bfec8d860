//! Who counts as having answered a phase of a view change.
//!
//! A member that lost its data (it restarted repaired and asks to join as a fresh
//! incarnation) forgot its promises and acceptances, so its answer could only be "nothing".
//! What it forgot is known to the others: when fewer than a majority lost their data, any
//! other quorum of the epoch holds a member that kept its data, and a quorum of every member
//! that kept it holds them all; an action committed in the epoch was acked by every member,
//! so all of them hold it. So once every other member answered, the lost ones count too.
//! Without this a view of two whose other member lost its data and missed the decision
//! re-adding it could never change again (the simulation found such runs; see
//! `tests/scripts/lost_data`).

use std::collections::BTreeSet;

use strstore_protocol::NodeId;

/// How many of `members` count as having answered: those in `answered`, plus the members
/// in `lost_data` that did not answer, once every other member answered and if fewer than
/// a majority of `members` lost their data.
pub(super) fn answers(
    members: &[NodeId],
    answered: &BTreeSet<NodeId>,
    lost_data: &BTreeSet<NodeId>,
) -> usize {
    let majority = members.len() / 2 + 1;
    let lost = members.iter().filter(|m| lost_data.contains(m) && !answered.contains(m)).count();
    let others_in = members.iter().all(|m| answered.contains(m) || lost_data.contains(m));
    if others_in && lost > 0 && lost < majority {
        answered.len() + lost
    } else {
        answered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_lost_member_counts_once_every_other_member_answered() {
        // A view of two: the other member alone decides for the one that lost its data.
        assert_eq!(answers(&[1, 2], &set(&[1]), &set(&[2])), 2);
        // Not before the others are all in.
        assert_eq!(answers(&[1, 2, 3], &set(&[1]), &set(&[3])), 1);
        assert_eq!(answers(&[1, 2, 3, 4], &set(&[1, 2]), &set(&[3])), 2);
        // Two lost of four is fewer than a majority (3): the two that kept their data do.
        assert_eq!(answers(&[1, 2, 3, 4], &set(&[1, 2]), &set(&[3, 4])), 4);
    }

    #[test]
    fn nobody_stands_in_for_a_majority_that_lost_its_data() {
        assert_eq!(answers(&[1, 2, 3], &set(&[1]), &set(&[2, 3])), 1);
        assert_eq!(answers(&[1, 2], &set(&[]), &set(&[1, 2])), 0);
    }

    #[test]
    fn without_lost_members_only_answers_count() {
        assert_eq!(answers(&[1, 2, 3], &set(&[1, 2]), &set(&[])), 2);
        // A lost member that answered after all (an old fresh join) is counted once.
        assert_eq!(answers(&[1, 2], &set(&[1, 2]), &set(&[2])), 2);
    }
}
