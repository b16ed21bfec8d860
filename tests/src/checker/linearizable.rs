//! The general linearizability search for the model "one string with append, set and get".
//!
//! This is Wing & Gong's search with Lowe's just-in-time linearization and memoization (the
//! algorithm of Knossos and Porcupine). The history becomes a list of call and return events
//! in time order. Walking the list from the start, the search tries to linearize each
//! pending call (apply it to the model and check its reply); when it meets the return of an
//! op it has not linearized, that op's deadline has passed, so it backtracks. A set of
//! (linearized ops, model state) pairs already explored prunes repeated work; it stores a
//! 128-bit fingerprint (a Zobrist hash of the op set xor two polynomial hashes of the
//! string), so a collision, with probability around 2^-100 per pair, could only hide a
//! linearization and never invent one. Read results are compared byte for byte.
//!
//! Outcomes: a `Failed` op is left out (it never takes effect). An `Unknown` write may take
//! effect at any time after its invoke or never: its return is placed after every other
//! event, so it can be linearized anywhere, including after the end, where it is
//! unobservable, which is the same as never. An `Unknown` read constrains nothing and is left
//! out. With a known final string, a synthetic read of it is invoked after every reply.
//! Events at equal times: calls sort before returns, so ops whose intervals touch are
//! concurrent, matching the direct checks.
//!
//! `Unknown` writes are what makes the search expensive, since each stays pending to the end.
//! What keeps it fast, each rule sound (it never prunes a node with a completion):
//!
//! * Known first: each node tries the ops with a known outcome before the `Unknown` ones
//!   (`jit`). The order of candidates does not affect completeness.
//! * Deadlines from tokens: an `Unknown` write whose token a read saw took effect before that
//!   read completed, so its return moves there ([`search`]).
//! * Fast phase: first search without the `Unknown` writes nobody saw; if that succeeds, the
//!   linearization is valid for the real history, since they may never have happened.
//! * Reachability: every read still to be placed must be able to see its value later, via
//!   appends to the current string or via a `set` not placed yet; the final read included,
//!   which makes every state a prefix of the final string once no `set` could still start
//!   it (`model`, `jit`).
//! * Dominance: a node where a no-deadline `Unknown` op was applied and then erased by a
//!   `set` can do no more than the same node with that op still pending (`jit`).

use super::fingerprint::Hash;
use super::history::OpIndex;
use super::jit::Search;
use super::layout::Seen;
use super::ops::{Effect, NormOp, Status, NEVER};

/// The fast phase gets this fraction of the budget: it is a shortcut that usually takes
/// about one step per op, and when it fails the complete search still needs most of it.
const FAST_PHASE_SHARE: u64 = 4;

/// What the search concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SearchResult {
    /// A linearization exists.
    Linearizable { steps: u64 },
    /// No linearization exists; `deepest` is the furthest the search got.
    NotLinearizable { steps: u64, deepest: Deepest },
    /// The step budget ran out first; `deepest` ops were linearized at best.
    BudgetExceeded { steps: u64, deepest: usize },
}

/// The deepest partial linearization the search found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Deepest {
    /// The ops in the order they were linearized.
    pub linearized: Vec<OpIndex>,
    /// The op whose return came before it could be linearized; `None` for the final string.
    pub stuck: Option<OpIndex>,
    /// Length of the model string at that point.
    pub state_len: usize,
}

/// Number of ops the search considers (ops that can take effect or constrain the result).
pub(crate) fn searched_ops(ops: &[NormOp<'_>]) -> usize {
    ops.iter().filter(|op| included(op)).count()
}

fn included(op: &NormOp<'_>) -> bool {
    match op.effect {
        Effect::Get => op.read_value().is_some(),
        Effect::Append(_) | Effect::Set(_) => !op.is_failed(),
    }
}

/// Searches for a linearization of `ops` that ends in `final_string` (if given), exploring at
/// most `max_steps` steps (one step = one event visited) in the complete phase and a quarter
/// of that in the fast one.
///
/// `seen` (available when values are tokens) makes `Unknown` writes cheaper. A write some
/// read saw took effect before that read completed, so its return moves there from the end.
/// And a first phase leaves out the `Unknown` writes nobody saw (a linearization in which
/// they never happened is a valid one); only if it fails does the complete search run.
pub(crate) fn search(
    ops: &[NormOp<'_>],
    final_string: Option<&[u8]>,
    seen: Option<&[Seen]>,
    max_steps: u64,
) -> SearchResult {
    let mut spent = 0;
    if let Some(seen) = seen {
        let fast = search_ops(ops, final_string, Some(seen), true);
        if fast.len() < search_ops(ops, final_string, Some(seen), false).len() {
            match Search::new(&fast, final_string).run(max_steps / FAST_PHASE_SHARE) {
                found @ SearchResult::Linearizable { .. } => return found,
                SearchResult::NotLinearizable { steps, .. }
                | SearchResult::BudgetExceeded { steps, .. } => spent = steps,
            }
        }
    }
    let full = search_ops(ops, final_string, seen, false);
    match Search::new(&full, final_string).run(max_steps) {
        SearchResult::Linearizable { steps } => SearchResult::Linearizable { steps: steps + spent },
        SearchResult::NotLinearizable { steps, deepest } => {
            SearchResult::NotLinearizable { steps: steps + spent, deepest }
        }
        SearchResult::BudgetExceeded { steps, deepest } => {
            SearchResult::BudgetExceeded { steps: steps + spent, deepest }
        }
    }
}

/// What one op does in the model, with its reply to check.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind<'a> {
    Append {
        value: &'a [u8],
        expect: Option<u64>,
    },
    Set {
        value: &'a [u8],
        expect: Option<u64>,
    },
    Get {
        value: &'a [u8],
    },
    /// The synthetic read of the final string.
    Final {
        value: &'a [u8],
    },
}

/// One op as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SearchOp<'a> {
    /// The history op; `None` for the synthetic final read.
    pub index: Option<OpIndex>,
    pub kind: Kind<'a>,
    pub invoke: u64,
    /// Sort key of the return event: (time, class), class 1 = reply, 2 = final read,
    /// 3 = unknown (after everything).
    pub ret: (u64, u8),
    /// True for `Unknown` writes, which the search tries after the others.
    pub deferred: bool,
    /// True for ops without a deadline (return class 3), which may also never happen.
    pub free: bool,
    /// The hash of the value it writes.
    pub hash: Hash,
}

/// The ops the search places, with the synthetic final read last. With `seen`, `Unknown`
/// writes a read saw get that read's completion as their deadline, and with `drop_unseen`
/// the ones nobody saw are left out.
fn search_ops<'a>(
    ops: &[NormOp<'a>],
    final_string: Option<&'a [u8]>,
    seen: Option<&[Seen]>,
    drop_unseen: bool,
) -> Vec<SearchOp<'a>> {
    let mut sops = Vec::new();
    let mut last_time = 0;
    for (index, op) in ops.iter().enumerate().filter(|(_, op)| included(op)) {
        let expect = op.returned_len();
        let kind = match op.effect {
            Effect::Append(value) => Kind::Append { value, expect },
            Effect::Set(value) => Kind::Set { value, expect },
            Effect::Get => Kind::Get { value: op.read_value().unwrap_or_default() },
        };
        let known = matches!(op.status, Status::Ok(_)) && op.complete != NEVER;
        let ret = match seen.map(|seen| seen[index]) {
            _ if known => (op.complete, 1),
            Some(Seen::Never) if drop_unseen => continue,
            Some(Seen::By(time)) => (time.max(op.invoke), 1),
            _ => (NEVER, 3),
        };
        last_time = last_time.max(op.invoke).max(if known { op.complete } else { 0 });
        let (invoke, hash, deferred, free) = (op.invoke, Hash::of(kind), !known, ret.1 == 3);
        sops.push(SearchOp { index: Some(index), kind, invoke, ret, deferred, free, hash });
    }
    if let Some(value) = final_string {
        let kind = Kind::Final { value };
        let invoke = last_time.saturating_add(1);
        let hash = Hash::of(kind);
        let ret = (NEVER, 2);
        sops.push(SearchOp { index: None, kind, invoke, ret, deferred: false, free: false, hash });
    }
    sops
}

/// The `set`s among `ops` whose value starts the value `read` returned (none for writes).
pub(crate) fn resets(ops: &[SearchOp<'_>], read: &SearchOp<'_>) -> Vec<usize> {
    let Kind::Get { value: read } = read.kind else { return Vec::new() };
    let starts =
        |op: &SearchOp<'_>| matches!(op.kind, Kind::Set { value, .. } if read.starts_with(value));
    ops.iter().enumerate().filter(|(_, op)| starts(op)).map(|(i, _)| i).collect()
}
