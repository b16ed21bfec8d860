//! Final-state comparison of the replicas (invariant 2, total order), and the choice of the
//! reference final string that the other checks compare the history with.
//!
//! Rule: every replica's applied sequence must be a prefix of the most advanced one's, and
//! replicas that applied the same sequence must hold byte-identical strings. When convergence
//! is required (the default: the run ends after the cluster has healed and quiesced) the
//! sequences must also be equal. No action may be applied twice.

use std::collections::{BTreeMap, HashMap};

use super::anomaly::{Anomaly, Divergence};
use super::history::ReplicaState;
use super::ops::Sink;

/// Compares the replicas and returns the reference: the one that applied the most actions
/// (then the lowest node id). `None` when there are no replicas.
pub(crate) fn compare<'r>(
    replicas: &'r [ReplicaState],
    require_converged: bool,
    sink: &mut Sink<'_>,
) -> Option<&'r ReplicaState> {
    for replica in replicas {
        check_no_duplicate_actions(replica, sink);
    }
    let reference = replicas.iter().max_by_key(|r| (progress(r), std::cmp::Reverse(r.node)))?;
    // The first replica seen for each applied-sequence length; the ones after it that applied
    // the same (prefix) sequence must hold the same string.
    let mut by_len: BTreeMap<(usize, u64), &ReplicaState> = BTreeMap::new();
    by_len.insert(progress(reference), reference);
    let mut digests: BTreeMap<u64, &ReplicaState> = BTreeMap::new();
    for replica in replicas.iter().filter(|r| !std::ptr::eq(*r, reference)) {
        let divergence = applied_divergence(reference, replica, require_converged)
            .map(|divergence| (reference, divergence))
            .or_else(|| digest_divergence(reference, replica, require_converged, &mut digests));
        if let Some((other, divergence)) = divergence {
            let (a, b) = (other.node, replica.node);
            sink.push(Anomaly::ReplicasDiverge { a, b, divergence });
            continue;
        }
        let first = *by_len.entry(progress(replica)).or_insert(replica);
        if let Some(divergence) = string_divergence(first, replica) {
            sink.push(Anomaly::ReplicasDiverge { a: first.node, b: replica.node, divergence });
        }
    }
    Some(reference)
}

/// Where `other`'s applied sequence stops being a prefix of `reference`'s.
fn applied_divergence(
    reference: &ReplicaState,
    other: &ReplicaState,
    require_converged: bool,
) -> Option<Divergence> {
    let (a, b) = (&reference.applied, &other.applied);
    if let Some(index) = a.iter().zip(b).position(|(x, y)| x != y) {
        return Some(Divergence::AppliedOrder { index, a: Some(a[index]), b: Some(b[index]) });
    }
    if b.len() > a.len() {
        // Cannot happen with the reference chosen as the longest, but stay total.
        return Some(Divergence::AppliedOrder { index: a.len(), a: None, b: Some(b[a.len()]) });
    }
    if require_converged && b.len() < a.len() {
        return Some(Divergence::Lagging { a_applied: a.len(), b_applied: b.len() });
    }
    None
}

/// How far a replica got: the actions it listed, and the actions its digest counts.
fn progress(replica: &ReplicaState) -> (usize, u64) {
    (replica.applied.len(), replica.digest.map_or(0, |d| d.actions))
}

/// Compares `replica`'s digest with the first one seen at the same action count (`seen`), and
/// with the reference's count when convergence is required. Replicas without a digest are
/// left to the applied lists.
fn digest_divergence<'r>(
    reference: &'r ReplicaState,
    replica: &'r ReplicaState,
    require_converged: bool,
    seen: &mut BTreeMap<u64, &'r ReplicaState>,
) -> Option<(&'r ReplicaState, Divergence)> {
    let (Some(mine), Some(theirs)) = (replica.digest, reference.digest) else { return None };
    if require_converged && mine.actions != theirs.actions {
        let lagging = Divergence::Lagging {
            a_applied: theirs.actions as usize,
            b_applied: mine.actions as usize,
        };
        return Some((reference, lagging));
    }
    seen.entry(theirs.actions).or_insert(reference);
    let first = *seen.entry(mine.actions).or_insert(replica);
    let first_digest = first.digest?;
    (first_digest.hash != mine.hash).then_some((
        first,
        Divergence::Digests { actions: mine.actions, a_hash: first_digest.hash, b_hash: mine.hash },
    ))
}

fn string_divergence(a: &ReplicaState, b: &ReplicaState) -> Option<Divergence> {
    if a.string == b.string {
        return None;
    }
    let first_difference = a.string.iter().zip(&b.string).take_while(|(x, y)| x == y).count();
    Some(Divergence::Strings { first_difference, a_len: a.string.len(), b_len: b.string.len() })
}

fn check_no_duplicate_actions(replica: &ReplicaState, sink: &mut Sink<'_>) {
    let mut first_at = HashMap::with_capacity(replica.applied.len());
    for (position, action) in replica.applied.iter().enumerate() {
        if let Some(first) = first_at.insert(*action, position) {
            let (node, action) = (replica.node, *action);
            sink.push(Anomaly::DuplicateAction { node, action, first, second: position });
        }
    }
}
