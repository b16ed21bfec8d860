//! The direct checks: linear-time (O(n log n)) necessary conditions for linearizability that
//! apply when every write's value is made of unique tokens.
//!
//! Every anomaly reported here is a real violation (the rules are necessary conditions);
//! a clean pass is not a proof of linearizability, which is what the search is for.
//!
//! # Lineages and the set rule
//!
//! In any linearization the string is the value of the last `set` so far (or empty) followed
//! by the appends since. Call the stretch between one `set` and the next a *lineage*; it is
//! named by its `set` (`None` for the initial lineage, before any `set`). Because values are
//! non-empty token sequences, the first token of any string names its lineage: a `set`'s
//! token, or an append's token if no `set` had taken effect. The final string belongs to the
//! last lineage, started by the *base* `set` `B` (or to the initial one).
//!
//! Lost-write rule: a write that took effect (outcome `Ok`, or seen in some string) and is
//! not in the final string must have been erased by `B`, so it must be possible to order it
//! before `B`: it must have been invoked no later than the latest moment `B` can take effect,
//! which is the earliest completion among `B` and everything seen after it (the final
//! string's appends and the reads of its lineage). Otherwise it is a [`Anomaly::LostWrite`].
//! With no base every such write must be in the final string.
//!
//! Every lineage's reference string (the final string for the last lineage, else its
//! longest read) must also respect real time in the order it lists its writes, and each
//! `Ok` append in it must have returned the length up to and including its value.

use std::collections::{BTreeMap, HashMap};

use super::anomaly::{Anomaly, Location, Source};
use super::history::OpIndex;
use super::layout::{first_token, parse, Layout, WriteIndex};
use super::ops::{NormOp, Sink};
use super::reads::{self, Lineage};

/// The string the history is checked against: the reference replica's final string.
pub(crate) type FinalString<'a> = (Source, &'a [u8]);

/// Runs every direct check, and returns the lineages it explained, which the lineage search
/// builds on.
pub(crate) fn check<'a>(
    ops: &[NormOp<'a>],
    index: &WriteIndex,
    final_string: Option<FinalString<'a>>,
    sink: &mut Sink<'_>,
) -> Vec<Lineage<'a>> {
    check_set_lengths(ops, sink);
    let lineages = build_lineages(ops, index, final_string, sink);
    check_no_write_in_two_lineages(ops, &lineages, sink);
    for lineage in &lineages {
        check_real_time_order(ops, lineage, sink);
        check_append_lengths(ops, lineage, sink);
        reads::check_reads(ops, lineage, sink);
    }
    reads::check_lineage_order(ops, &lineages, sink);
    if let Some(last) = lineages.iter().find(|lineage| lineage.is_final) {
        check_lost_writes(ops, &lineages, last, sink);
    }
    lineages
}

/// A `set` returns the length of its own value.
fn check_set_lengths(ops: &[NormOp<'_>], sink: &mut Sink<'_>) {
    for (i, op) in ops.iter().enumerate().filter(|(_, op)| op.is_set()) {
        let (Some(returned), Some(value)) = (op.returned_len(), op.written()) else { continue };
        let expected = value.len() as u64;
        if returned != expected {
            sink.push(Anomaly::WrongReturnedLength { op: sink.op(i), expected, returned });
        }
    }
}

/// Groups the reads by lineage and explains each lineage's reference string.
fn build_lineages<'a>(
    ops: &[NormOp<'a>],
    index: &WriteIndex,
    final_string: Option<FinalString<'a>>,
    sink: &mut Sink<'_>,
) -> Vec<Lineage<'a>> {
    let final_layout = final_string
        .and_then(|(source, bytes)| Some((source, bytes, parse(bytes, source, index, ops, sink)?)));
    let mut groups: BTreeMap<Option<OpIndex>, Vec<(OpIndex, &'a [u8])>> = BTreeMap::new();
    if let Some((_, _, layout)) = &final_layout {
        groups.entry(layout.base).or_default();
    }
    for (op, value) in ops.iter().enumerate().filter_map(|(i, op)| Some((i, op.read_value()?))) {
        match index.first_op(value) {
            Ok(first) => {
                groups.entry(first.filter(|&w| ops[w].is_set())).or_default().push((op, value))
            }
            // Report what is wrong with it; it cannot be placed.
            Err(()) => drop(parse(value, Source::Read(op), index, ops, sink)),
        }
    }
    let mut lineages = Vec::with_capacity(groups.len());
    for (key, group) in groups {
        let lineage = match &final_layout {
            Some((source, bytes, layout)) if layout.base == key => Some(Lineage {
                key,
                source: *source,
                reference: bytes,
                layout: layout.clone(),
                reads: vec![],
                is_final: true,
            }),
            _ => longest_read_lineage(ops, index, key, &group, sink),
        };
        let Some(mut lineage) = lineage else { continue };
        lineage.reads = group
            .iter()
            .filter_map(|&(op, value)| reads::place(op, value, &lineage, sink))
            .collect();
        lineages.push(lineage);
    }
    lineages
}

/// A lineage whose reference is its longest read (the earliest one among equals).
fn longest_read_lineage<'a>(
    ops: &[NormOp<'a>],
    index: &WriteIndex,
    key: Option<OpIndex>,
    group: &[(OpIndex, &'a [u8])],
    sink: &mut Sink<'_>,
) -> Option<Lineage<'a>> {
    let &(op, bytes) =
        group.iter().max_by_key(|(op, value)| (value.len(), std::cmp::Reverse(*op)))?;
    let source = Source::Read(op);
    let layout = parse(bytes, source, index, ops, sink)?;
    Some(Lineage { key, source, reference: bytes, layout, reads: vec![], is_final: false })
}

/// A write can take effect only once, so it cannot be in two lineages.
fn check_no_write_in_two_lineages(
    ops: &[NormOp<'_>],
    lineages: &[Lineage<'_>],
    sink: &mut Sink<'_>,
) {
    let mut seen: HashMap<OpIndex, (Option<OpIndex>, Location)> = HashMap::new();
    for lineage in lineages {
        for (i, seg) in lineage.layout.segs.iter().enumerate() {
            let here = Location { source: lineage.source, offset: lineage.layout.start(i) };
            let (key, first) = *seen.entry(seg.op).or_insert((lineage.key, here));
            if key != lineage.key {
                let token = first_token(&ops[seg.op]);
                sink.push(Anomaly::DuplicateToken {
                    token,
                    op: sink.op(seg.op),
                    first,
                    second: here,
                });
            }
        }
    }
}

/// The order of writes in a reference string must fit their intervals: no write may come
/// after one that was invoked after it completed.
fn check_real_time_order(ops: &[NormOp<'_>], lineage: &Lineage<'_>, sink: &mut Sink<'_>) {
    let mut latest: Option<OpIndex> = None;
    for seg in &lineage.layout.segs {
        let op = &ops[seg.op];
        if let Some(first) = latest.filter(|&first| ops[first].invoke > op.complete) {
            let (first, second) = (sink.op(first), sink.op(seg.op));
            sink.push(Anomaly::RealTimeOrderViolation { first, second, source: lineage.source });
        }
        if latest.is_none_or(|first| op.invoke > ops[first].invoke) {
            latest = Some(seg.op);
        }
    }
}

/// An `Ok` append returns the length of the string just after its value.
fn check_append_lengths(ops: &[NormOp<'_>], lineage: &Lineage<'_>, sink: &mut Sink<'_>) {
    for seg in lineage.layout.segs.iter().filter(|seg| !ops[seg.op].is_set()) {
        let Some(returned) = ops[seg.op].returned_len() else { continue };
        let expected = seg.end as u64;
        if returned != expected {
            sink.push(Anomaly::WrongReturnedLength { op: sink.op(seg.op), expected, returned });
        }
    }
}

/// The lost-write rule of the module doc.
fn check_lost_writes(
    ops: &[NormOp<'_>],
    lineages: &[Lineage<'_>],
    last: &Lineage<'_>,
    sink: &mut Sink<'_>,
) {
    let mut in_final = vec![false; ops.len()];
    for seg in &last.layout.segs {
        in_final[seg.op] = true;
    }
    let mut took_effect: Vec<bool> = ops.iter().map(NormOp::is_ok_write).collect();
    for seg in lineages.iter().flat_map(|lineage| &lineage.layout.segs) {
        took_effect[seg.op] = !ops[seg.op].is_failed();
    }
    let base = last.layout.base;
    let latest_base = base.map(|base| latest_base_point(ops, &last.layout, last, base));
    for (i, op) in ops.iter().enumerate().filter(|&(i, _)| took_effect[i] && !in_final[i]) {
        if latest_base.is_some_and(|latest| op.invoke <= latest) {
            continue;
        }
        let token = first_token(op);
        let base = base.map(|base| sink.op(base));
        sink.push(Anomaly::LostWrite { op: sink.op(i), token, final_string: last.source, base });
    }
}

/// The latest time at which the base `set` can take effect: no later than its completion,
/// nor than the completion of anything that comes after it.
fn latest_base_point(
    ops: &[NormOp<'_>],
    layout: &Layout,
    last: &Lineage<'_>,
    base: OpIndex,
) -> u64 {
    let writes = layout.segs.iter().map(|seg| seg.op);
    let reads = last.reads.iter().map(|read| read.op);
    std::iter::once(base)
        .chain(writes)
        .chain(reads)
        .map(|op| ops[op].complete)
        .min()
        .unwrap_or(u64::MAX)
}
