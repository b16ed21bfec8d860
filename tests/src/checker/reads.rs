//! Direct checks of `get` results against a lineage's reference string.
//!
//! Within a lineage (the stretch of the linearization between one `set` and the next, or
//! from the start to the first `set`) the string only grows by appends, so every read of the
//! lineage is a prefix of the reference, and "what a read saw" is just how many writes of
//! the reference it contains. Real time then gives three rules, each checked in
//! O(n log n) by sorting and sweeping:
//!
//! * a read contains every write of its lineage that completed before it was invoked
//!   ([`Anomaly::StaleRead`]);
//! * a read contains no write invoked after it completed ([`Anomaly::ReadFromFuture`]);
//! * a read invoked after another read of the lineage completed is at least as long
//!   ([`Anomaly::NonMonotonicRead`]).
//!
//! Across lineages, a read of an older lineage must be invoked before anything in a newer
//! lineage completed; see [`check_lineage_order`].

use super::anomaly::{Anomaly, Location, Source};
use super::history::OpIndex;
use super::layout::Layout;
use super::ops::{NormOp, Sink, NEVER};
use super::token::tokens;

/// A read placed in its lineage's reference string.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlacedRead {
    pub op: OpIndex,
    /// Length of the value it returned.
    pub len: usize,
    /// How many writes of the reference it saw (a prefix of `layout.segs`).
    pub seen: usize,
}

/// One lineage: its reference string explained as writes, and its reads.
pub(crate) struct Lineage<'a> {
    /// The `set` that starts it; `None` for the initial lineage.
    pub key: Option<OpIndex>,
    /// Where the reference comes from: the final string, or the longest read of the lineage.
    pub source: Source,
    pub reference: &'a [u8],
    pub layout: Layout,
    pub reads: Vec<PlacedRead>,
    /// True when the reference is the final string, so that this lineage is the last one.
    pub is_final: bool,
}

/// Places read `op` (which returned `value`) in a lineage, or reports why it does not fit.
pub(crate) fn place(
    op: OpIndex,
    value: &[u8],
    lineage: &Lineage<'_>,
    sink: &mut Sink<'_>,
) -> Option<PlacedRead> {
    let reference = lineage.reference;
    if !reference.starts_with(value) {
        let offset = reference.iter().zip(value).take_while(|(a, b)| a == b).count();
        let (read, reference) = (sink.op(op), lineage.source);
        sink.push(Anomaly::ReadNotPrefix { read, reference, offset });
        return None;
    }
    let segs = &lineage.layout.segs;
    let seen = segs.partition_point(|seg| seg.end <= value.len());
    if value.len() == lineage.layout.start(seen) {
        return Some(PlacedRead { op, len: value.len(), seen });
    }
    // The read ends inside the value of write `seen`: either between two of its tokens (a
    // torn write) or inside a token.
    let start = lineage.layout.start(seen);
    let at = |offset| Location { source: Source::Read(op), offset };
    match tokens(&value[start..]).find_map(Result::err) {
        Some(malformed) => sink.push(Anomaly::MalformedString { at: at(start + malformed.offset) }),
        None => sink.push(Anomaly::TornWrite { op: sink.op(segs[seen].op), at: at(start) }),
    }
    None
}

/// The per-lineage read rules (see the module doc).
pub(crate) fn check_reads(ops: &[NormOp<'_>], lineage: &Lineage<'_>, sink: &mut Sink<'_>) {
    check_no_future_writes(ops, lineage, sink);
    check_no_stale_writes(ops, lineage, sink);
    check_monotonic(ops, &lineage.reads, sink);
}

/// A read that saw `seen` writes must not complete before any of them was invoked.
fn check_no_future_writes(ops: &[NormOp<'_>], lineage: &Lineage<'_>, sink: &mut Sink<'_>) {
    // latest[i]: the latest-invoked write among the first i + 1 writes.
    let mut latest: Vec<OpIndex> = Vec::with_capacity(lineage.layout.segs.len());
    for seg in &lineage.layout.segs {
        let previous = latest.last().copied();
        latest.push(match previous {
            Some(prev) if ops[prev].invoke >= ops[seg.op].invoke => prev,
            _ => seg.op,
        });
    }
    for read in lineage.reads.iter().filter(|read| read.seen > 0) {
        let write = latest[read.seen - 1];
        if ops[write].invoke > ops[read.op].complete {
            sink.push(Anomaly::ReadFromFuture { read: sink.op(read.op), op: sink.op(write) });
        }
    }
}

/// A read must see every write of its lineage that completed before it was invoked.
fn check_no_stale_writes(ops: &[NormOp<'_>], lineage: &Lineage<'_>, sink: &mut Sink<'_>) {
    let mut writes: Vec<(u64, usize, OpIndex)> = (lineage.layout.segs.iter())
        .filter(|seg| ops[seg.op].complete != NEVER)
        .map(|seg| (ops[seg.op].complete, seg.end, seg.op))
        .collect();
    writes.sort_unstable();
    let mut reads: Vec<&PlacedRead> = lineage.reads.iter().collect();
    reads.sort_unstable_by_key(|read| (ops[read.op].invoke, read.op));
    let mut next = 0;
    let mut longest: Option<(usize, OpIndex)> = None;
    for read in reads {
        while next < writes.len() && writes[next].0 < ops[read.op].invoke {
            let (_, end, op) = writes[next];
            longest = longest.max(Some((end, op)));
            next += 1;
        }
        if let Some((_, missed)) = longest.filter(|&(end, _)| end > read.len) {
            sink.push(Anomaly::StaleRead { read: sink.op(read.op), missed: sink.op(missed) });
        }
    }
}

/// A read invoked after another read of the same lineage completed is at least as long.
fn check_monotonic(ops: &[NormOp<'_>], reads: &[PlacedRead], sink: &mut Sink<'_>) {
    let mut by_complete: Vec<&PlacedRead> = reads.iter().collect();
    by_complete.sort_unstable_by_key(|read| (ops[read.op].complete, read.op));
    let mut by_invoke: Vec<&PlacedRead> = reads.iter().collect();
    by_invoke.sort_unstable_by_key(|read| (ops[read.op].invoke, read.op));
    let mut next = 0;
    let mut longest: Option<&PlacedRead> = None;
    for later in by_invoke {
        while next < by_complete.len() && ops[by_complete[next].op].complete < ops[later.op].invoke
        {
            let candidate = by_complete[next];
            if longest.is_none_or(|best| candidate.len > best.len) {
                longest = Some(candidate);
            }
            next += 1;
        }
        if let Some(earlier) = longest.filter(|earlier| earlier.len > later.len) {
            sink.push(Anomaly::NonMonotonicRead {
                earlier: sink.op(earlier.op),
                later: sink.op(later.op),
                earlier_len: earlier.len,
                later_len: later.len,
            });
        }
    }
}

/// Reads of an older lineage must be invoked before anything of a newer lineage completed.
/// Two orders are certain: the initial lineage precedes every lineage started by a `set`
/// (and every `Ok` set), and the final string's lineage follows every other.
pub(crate) fn check_lineage_order(
    ops: &[NormOp<'_>],
    lineages: &[Lineage<'_>],
    sink: &mut Sink<'_>,
) {
    let ok_sets = (ops.iter().enumerate())
        .filter(|(_, op)| op.is_set() && op.is_ok_write())
        .map(|(index, op)| (op.complete, index));
    let after_initial = (lineages.iter().filter(|l| l.key.is_some()))
        .filter_map(|l| earliest_completion(ops, l))
        .chain(ok_sets)
        .min();
    let final_lineage = lineages.iter().find(|l| l.is_final && l.key.is_some());
    let after_older = final_lineage.and_then(|l| earliest_completion(ops, l));
    for lineage in lineages {
        let mut bound = if lineage.key.is_none() { after_initial } else { None };
        if !lineage.is_final {
            bound = [bound, after_older].into_iter().flatten().min();
        }
        let Some((time, newer)) = bound else { continue };
        for read in lineage.reads.iter().filter(|read| ops[read.op].invoke > time) {
            sink.push(Anomaly::StaleRead { read: sink.op(read.op), missed: sink.op(newer) });
        }
    }
}

/// The earliest completion among the ops known to belong to a lineage: its `set`, the
/// writes of its reference and its reads.
fn earliest_completion(ops: &[NormOp<'_>], lineage: &Lineage<'_>) -> Option<(u64, OpIndex)> {
    let writes = lineage.layout.segs.iter().map(|seg| seg.op);
    let reads = lineage.reads.iter().map(|read| read.op);
    writes.chain(reads).map(|op| (ops[op].complete, op)).filter(|&(time, _)| time != NEVER).min()
}
