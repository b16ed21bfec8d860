//! The lineage search's view of a history: one block per lineage that some string shows,
//! whose inner order is fixed, and the loose writes that no string shows.
//!
//! In a linearization every lineage is a contiguous stretch: its `set`, then its appends,
//! with reads in between. For a lineage some string shows, the reference string (the final
//! string or the longest read) fixes the order of its writes, and each read's value fixes the
//! gap between two writes where it goes. Reads in the same gap may go in any order; sorting
//! them by invoke time gives each the earliest point it can have, so it is as good as any
//! order. A write no string shows (loose) cannot sit inside such a lineage, since every read
//! after it and the reference would contain it, so it goes after the lineage's last op (in
//! its *tail*, to be erased by the next `set`) or in a lineage no string shows.
//!
//! Placing points greedily (each op at `max(now, invoke)`, which must not pass its
//! completion) is optimal for a fixed order, so a block collapses to two numbers: it can
//! start at `now` only if `now <= deadline` (its earliest completion) and its ops are in a
//! feasible order on their own, and it ends at `max(now, release)` (its latest invoke).

use super::history::OpIndex;
use super::ops::{NormOp, NEVER};
use super::reads::Lineage;

/// One lineage some string shows, in its forced order.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    /// Its ops in order: the `set` (none for the initial lineage), then the appends, each
    /// gap's reads before the next append.
    pub ops: Vec<OpIndex>,
    /// The earliest completion among its ops: the block must start by then.
    pub deadline: u64,
    /// The op that completes at `deadline`, for reports.
    pub deadline_op: Option<OpIndex>,
    /// The latest invoke among its ops: the block ends no earlier.
    pub release: u64,
    /// The op invoked at `release`, for reports.
    pub release_op: Option<OpIndex>,
    /// The string's length at its end.
    pub end_len: u64,
    /// True for the lineage of the final string, which must come last and have no tail.
    pub is_final: bool,
}

/// What a loose write does to the string's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LooseKind {
    /// An append; for an acknowledged one, `before` is the length it must find (its returned
    /// length minus its own), which pins its place in its tail.
    Append { before: u64 },
    /// A `set`: the length becomes its own.
    Set,
}

/// A write no string shows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loose {
    pub op: OpIndex,
    pub invoke: u64,
    /// [`NEVER`] for `Unknown` writes.
    pub complete: u64,
    /// Length of its value.
    pub len: u64,
    pub kind: LooseKind,
    /// True for acknowledged writes, which must be placed; `Unknown` ones may never happen.
    pub required: bool,
}

/// The lineage search's input.
#[derive(Clone, Debug)]
pub(crate) struct Problem {
    /// `blocks[0]` is the initial lineage, empty when no string shows it.
    pub blocks: Vec<Block>,
    pub loose: Vec<Loose>,
}

/// Why the lineage search cannot start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BuildError {
    /// Some acknowledged read fits no lineage (the direct checks report why).
    #[error("{unplaced} acknowledged reads fit no lineage")]
    UnplacedReads { unplaced: usize },
    /// There is a final string but no lineage explains it.
    #[error("the final string fits no lineage")]
    NoFinalLineage,
    /// A write shows up in two lineages.
    #[error("op #{0} is in two lineages")]
    WriteInTwoLineages(OpIndex),
    /// This op cannot take effect where the strings put it (a returned length that does not
    /// fit, or an order its interval forbids): no linearization exists.
    #[error("op #{0} cannot take effect where the strings put it")]
    Impossible(OpIndex),
}

impl Problem {
    /// Builds the blocks from `lineages` (as the direct checks explained them) and collects
    /// the loose writes. `has_final` says whether a final string was given.
    pub fn build(
        ops: &[NormOp<'_>],
        lineages: &[Lineage<'_>],
        has_final: bool,
    ) -> Result<Problem, BuildError> {
        let reads = ops.iter().filter(|op| op.read_value().is_some()).count();
        let placed: usize = lineages.iter().map(|lineage| lineage.reads.len()).sum();
        if placed != reads {
            return Err(BuildError::UnplacedReads { unplaced: reads.saturating_sub(placed) });
        }
        if has_final && !lineages.iter().any(|lineage| lineage.is_final) {
            return Err(BuildError::NoFinalLineage);
        }
        let mut in_block = vec![false; ops.len()];
        let mut blocks = vec![Block::empty()];
        for lineage in lineages {
            let block = Block::of(ops, lineage)?;
            for &op in &block.ops {
                if std::mem::replace(&mut in_block[op], true) {
                    return Err(BuildError::WriteInTwoLineages(op));
                }
            }
            match lineage.key {
                None => blocks[0] = block,
                Some(_) => blocks.push(block),
            }
        }
        let loose = (ops.iter().enumerate())
            .filter(|&(i, op)| !in_block[i] && !op.is_failed() && op.written().is_some())
            .map(|(i, op)| Loose::of(i, op))
            .collect::<Result<_, _>>()?;
        Ok(Problem { blocks, loose })
    }

    /// Ops the search places at most: those in blocks and the loose writes.
    pub fn total_ops(&self) -> usize {
        self.blocks.iter().map(|block| block.ops.len()).sum::<usize>() + self.loose.len()
    }
}

impl Block {
    /// The initial lineage when no string shows it: it may still hold loose appends.
    fn empty() -> Self {
        Block {
            ops: Vec::new(),
            deadline: NEVER,
            deadline_op: None,
            release: 0,
            release_op: None,
            end_len: 0,
            is_final: false,
        }
    }

    /// The block of `lineage`, checking that its order is feasible on its own and that its
    /// acknowledged writes returned the lengths where they are.
    fn of(ops: &[NormOp<'_>], lineage: &Lineage<'_>) -> Result<Block, BuildError> {
        let mut reads = lineage.reads.clone();
        reads.sort_unstable_by_key(|read| (read.seen, ops[read.op].invoke, read.op));
        let segs = &lineage.layout.segs;
        let mut order = Vec::with_capacity(segs.len() + reads.len());
        let mut reads = reads.into_iter().peekable();
        for (i, seg) in segs.iter().enumerate() {
            while let Some(read) = reads.next_if(|read| read.seen == i) {
                order.push(read.op);
            }
            // A `set` is always first, so its value ends at `seg.end` too.
            if ops[seg.op].returned_len().is_some_and(|returned| returned != seg.end as u64) {
                return Err(BuildError::Impossible(seg.op));
            }
            order.push(seg.op);
        }
        order.extend(reads.map(|read| read.op));
        let mut block = Block {
            ops: Vec::new(),
            end_len: lineage.reference.len() as u64,
            is_final: lineage.is_final,
            ..Block::empty()
        };
        for &op in &order {
            if ops[op].invoke >= block.release {
                (block.release, block.release_op) = (ops[op].invoke, Some(op));
            }
            if block.release > ops[op].complete {
                return Err(BuildError::Impossible(op));
            }
            if ops[op].complete < block.deadline {
                (block.deadline, block.deadline_op) = (ops[op].complete, Some(op));
            }
        }
        block.ops = order;
        Ok(block)
    }
}

impl Loose {
    fn of(index: OpIndex, op: &NormOp<'_>) -> Result<Loose, BuildError> {
        let len = op.written().map_or(0, <[u8]>::len) as u64;
        let returned = op.returned_len();
        let kind = match returned {
            _ if op.is_set() => LooseKind::Set,
            Some(returned) => LooseKind::Append {
                before: returned.checked_sub(len).ok_or(BuildError::Impossible(index))?,
            },
            None => LooseKind::Append { before: 0 },
        };
        if op.is_set() && returned.is_some_and(|returned| returned != len) {
            return Err(BuildError::Impossible(index));
        }
        Ok(Loose {
            op: index,
            invoke: op.invoke,
            complete: op.complete,
            len,
            kind,
            required: returned.is_some(),
        })
    }
}
