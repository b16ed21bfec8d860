//! The lineage search: a complete decision procedure for token histories of any length.
//!
//! With token values, the strings seen fix most of a linearization (see `blocks`): each
//! lineage a string shows is a block whose inner order is known, and what is left to choose
//! is the order of the blocks and where the loose writes (the ones no string shows) go. A
//! loose write can only sit in the tail of a block, between its last op and the next `set`,
//! so a linearization is: the initial block, its tail, a block, its tail, and so on, the
//! final string's block last and without a tail.
//!
//! The search builds that sequence from the front, depth first, keeping only the current
//! time `t` (the point of the last op placed, greedy) and the string's length. At each node
//! it tries, in this order:
//!
//! 1. an acknowledged loose append that finds exactly the length it returned, minus its own;
//! 2. the next block: one whose release does not pass any other block's or loose write's
//!    deadline, the final block only when nothing else is left;
//! 3. an acknowledged loose `set`;
//! 4. an `Unknown` loose write (a *spare*), only if some acknowledged loose append could
//!    still follow it in this tail, since a spare's only effect that matters is the length
//!    it adds. Spares of the same kind and length differ only in their invoke, so only the
//!    earliest unused one of each is tried. When an acknowledged append is only a few
//!    bytes beyond the current length, the tail's chain goes on, and the spares come
//!    before step 2.
//!
//! Each is sound to cut off when it would pass a deadline: a block can start only by its
//! earliest completion, a loose write must be placed by its completion. A memo of
//! (what is placed, length) to the smallest `t` explored prunes repeated work: a later time
//! can do no more. Its keys are 128-bit Zobrist hashes, so a collision (around 2^-100 per
//! pair) could only hide a linearization, never invent one.
//!
//! Spares are what can make the search wander: thousands of `Unknown` writes can fill any
//! gap in many ways, and placing old ones does not move time on, so no deadline stops a
//! wrong guess. So the search runs in [`ROUNDS`]: the first ones try only spares that fill
//! a small gap to the nearest length some acknowledged append needs, which is what real
//! histories hold; the last one tries everything and is complete. A round that never had to
//! rule a spare out was complete too, and its verdict stands.
//!
//! Otherwise it is exponential only in what the strings leave open: blocks whose windows
//! overlap, and loose writes whose lengths and windows fit several tails. Those are few in
//! practice, since a lineage lasts for many ops and loose writes are the ones a `set`
//! erased. A step budget turns a pathological history into an inconclusive report.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasherDefault;

use super::blocks::{LooseKind, Problem};
use super::fingerprint::{splitmix, FoldHasher};
use super::history::OpIndex;
use super::ops::NEVER;

/// How many of the last ops placed a refutation lists.
const TAIL: usize = 8;

/// What the lineage search concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LineageResult {
    /// A linearization exists.
    Linearizable { steps: u64 },
    /// No linearization exists; `deepest` is the furthest the search got.
    NotLinearizable { steps: u64, deepest: Refutation },
    /// The step budget ran out first; `deepest` ops were placed at best.
    BudgetExceeded { steps: u64, deepest: usize },
}

/// The deepest dead end of a failed search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Refutation {
    /// How many ops were placed.
    pub placed: usize,
    /// The last of them, in order.
    pub tail: Vec<OpIndex>,
    /// The op that could not be placed in time.
    pub stuck: Option<OpIndex>,
    /// The string's length there.
    pub len: u64,
}

/// Which spares a round of the search may use, by rank (see [`Search::list_spares`]): 0 fills
/// the gap to the nearest length a required append needs exactly, 1 fills part of a
/// [`SMALL_GAP`], 3 is a spare `set` after which such a gap is left, and 2 is anything else.
/// Real gaps are the few `Unknown` writes that took effect just before a required append,
/// and an `Unknown` set that took effect and was erased unseen is rarer still, so the first
/// rounds find a linearization at once in practice, with far fewer choices; the last round
/// allows everything and is the complete search.
const ROUNDS: [&[u8]; 4] = [&[0], &[0, 1], &[0, 1, 3], &[0, 1, 2, 3]];

/// A gap that a few `Unknown` writes can fill: about three tokens.
const SMALL_GAP: u64 = 40;

/// Each round but the last may spend this fraction of the steps left.
const ROUND_SHARE: u64 = 4;

/// Searches for a linearization of `problem`, taking at most `max_steps` steps (one step =
/// one node entered) over all [`ROUNDS`].
pub(crate) fn search(problem: &Problem, max_steps: u64) -> LineageResult {
    let mut spent = 0;
    for (round, &ranks) in ROUNDS.iter().enumerate() {
        let last = round + 1 == ROUNDS.len();
        let left = max_steps.saturating_sub(spent);
        let mut search = Search::new(problem, ranks);
        let result = search.run(if last { left } else { left / ROUND_SHARE });
        // A round whose limits cut nothing off was the complete search.
        let exact = last || !search.capped.get();
        match result {
            LineageResult::Linearizable { steps } => {
                return LineageResult::Linearizable { steps: spent + steps };
            }
            LineageResult::NotLinearizable { steps, deepest } if exact => {
                return LineageResult::NotLinearizable { steps: spent + steps, deepest };
            }
            LineageResult::BudgetExceeded { deepest, .. } if last => {
                return LineageResult::BudgetExceeded { steps: max_steps, deepest };
            }
            LineageResult::NotLinearizable { steps, .. }
            | LineageResult::BudgetExceeded { steps, .. } => spent += steps,
        }
    }
    unreachable!("the last round always returns")
}

type Memo = HashMap<u128, u64, BuildHasherDefault<FoldHasher>>;

/// The unused `Unknown` loose writes of one kind and value length, by invoke.
struct Spares {
    len: u64,
    items: Vec<usize>,
    used: usize,
}

/// One way to extend the sequence.
#[derive(Clone, Copy, Debug)]
enum Step {
    Block(usize),
    /// A required loose write.
    Loose(usize),
    /// The next spare of `spares[kind][group]`, which is loose write `loose`.
    Spare {
        kind: usize,
        group: usize,
        loose: usize,
    },
}

/// One node of the search: the steps to try, and the state to restore after each.
struct Frame {
    steps: Vec<Step>,
    next: usize,
    spares_listed: bool,
    t: u64,
    len: u64,
    taken: Option<Step>,
}

struct Search<'p> {
    problem: &'p Problem,
    /// Keys of blocks, then of loose writes.
    zobrist: Vec<u128>,
    t: u64,
    len: u64,
    /// Zobrist hash of what is placed.
    key: u128,
    placed: usize,
    final_block: Option<usize>,
    final_done: bool,
    /// Blocks to place other than the final one, by release.
    by_release: BTreeSet<(u64, usize)>,
    /// Every block to place, by deadline.
    block_deadlines: BTreeSet<(u64, usize)>,
    /// Required loose writes to place, by invoke and by deadline.
    due_by_invoke: BTreeSet<(u64, usize)>,
    due_by_deadline: BTreeSet<(u64, usize)>,
    /// Spare appends (`[0]`) and sets (`[1]`) by value length.
    spares: [Vec<Spares>; 2],
    /// Total length of the unused spare appends: the most that spares can still add.
    spare_bytes: u64,
    /// The ranks of spares this round may use.
    ranks: &'static [u8],
    /// Set when the round's limits ruled out a spare that could otherwise have been tried.
    capped: Cell<bool>,
    memo: Memo,
    stack: Vec<Frame>,
    deepest: Option<Refutation>,
}

impl<'p> Search<'p> {
    fn new(problem: &'p Problem, ranks: &'static [u8]) -> Self {
        let mut seed = 0x11e4_a6e5_u64;
        let keys = problem.blocks.len() + problem.loose.len();
        let zobrist = (0..keys)
            .map(|_| u128::from(splitmix(&mut seed)) << 64 | u128::from(splitmix(&mut seed)))
            .collect();
        let mut search = Search {
            problem,
            zobrist,
            t: 0,
            len: 0,
            key: 0,
            placed: 0,
            final_block: problem.blocks.iter().position(|block| block.is_final),
            final_done: false,
            by_release: BTreeSet::new(),
            block_deadlines: BTreeSet::new(),
            due_by_invoke: BTreeSet::new(),
            due_by_deadline: BTreeSet::new(),
            spares: [Vec::new(), Vec::new()],
            spare_bytes: 0,
            ranks,
            capped: Cell::new(false),
            memo: Memo::default(),
            stack: Vec::new(),
            deepest: None,
        };
        for i in 1..problem.blocks.len() {
            search.insert_block(i);
        }
        let mut spares: BTreeMap<(usize, u64), Vec<usize>> = BTreeMap::new();
        for (j, loose) in problem.loose.iter().enumerate() {
            if loose.required {
                search.insert_due(j);
            } else {
                let kind = usize::from(loose.kind == LooseKind::Set);
                spares.entry((kind, loose.len)).or_default().push(j);
                search.spare_bytes += if kind == 0 { loose.len } else { 0 };
            }
        }
        for ((kind, len), mut items) in spares {
            items.sort_unstable_by_key(|&j| (problem.loose[j].invoke, j));
            search.spares[kind].push(Spares { len, items, used: 0 });
        }
        search
    }

    /// The search loop: depth first over [`Frame`]s, undoing a node's last step before
    /// trying its next one.
    fn run(&mut self, max_steps: u64) -> LineageResult {
        // The initial block comes first, from time 0, and is never undone.
        let initial = &self.problem.blocks[0];
        (self.t, self.len, self.placed) = (initial.release, initial.end_len, initial.ops.len());
        self.final_done = initial.is_final;
        let mut steps = 1;
        if self.enter() {
            return LineageResult::Linearizable { steps };
        }
        while let Some(top) = self.stack.len().checked_sub(1) {
            let frame = &mut self.stack[top];
            if let Some(step) = frame.taken.take() {
                let (t, len) = (frame.t, frame.len);
                self.undo(step, t, len);
            }
            let Some(step) = self.next_step(top) else {
                self.note_dead(self.blocker());
                self.stack.pop();
                continue;
            };
            steps += 1;
            if steps > max_steps {
                let deepest = self.deepest.as_ref().map_or(0, |d| d.placed);
                return LineageResult::BudgetExceeded { steps: max_steps, deepest };
            }
            self.stack[top].taken = Some(step);
            self.apply(step);
            if self.enter() {
                return LineageResult::Linearizable { steps };
            }
        }
        let deepest = self.deepest.take().unwrap_or_default();
        LineageResult::NotLinearizable { steps, deepest }
    }

    /// Enters the node the current state is: true when it completes a linearization;
    /// otherwise pushes its frame unless it is dead or explored with an earlier time.
    fn enter(&mut self) -> bool {
        if let Some(op) = self.missed_deadline() {
            self.note_dead(Some(op));
            return false;
        }
        if self.due_by_deadline.is_empty() && self.block_deadlines.is_empty() {
            return true;
        }
        let mut len = self.len;
        let key = self.key ^ u128::from(splitmix(&mut len));
        if self.memo.get(&key).is_some_and(|&t| t <= self.t) {
            return false;
        }
        self.memo.insert(key, self.t);
        let (steps, spares_listed) = self.list_steps();
        let (t, len) = (self.t, self.len);
        self.stack.push(Frame { steps, next: 0, spares_listed, t, len, taken: None });
        false
    }

    /// The next step of node `top`; its spares are listed only once the others failed.
    fn next_step(&mut self, top: usize) -> Option<Step> {
        loop {
            let frame = &mut self.stack[top];
            if let Some(&step) = frame.steps.get(frame.next) {
                frame.next += 1;
                return Some(step);
            }
            if frame.spares_listed {
                return None;
            }
            let steps = self.list_spares();
            let frame = &mut self.stack[top];
            (frame.steps, frame.next, frame.spares_listed) = (steps, 0, true);
        }
    }

    /// The earliest time by which something still to place must be placed.
    fn horizon(&self) -> u64 {
        let block = self.block_deadlines.first().map_or(NEVER, |&(deadline, _)| deadline);
        let due = self.due_by_deadline.first().map_or(NEVER, |&(deadline, _)| deadline);
        block.min(due)
    }

    /// A block or required loose write whose deadline has passed.
    fn missed_deadline(&self) -> Option<OpIndex> {
        if let Some(&(_, j)) = self.due_by_deadline.first().filter(|&&(d, _)| d < self.t) {
            return Some(self.problem.loose[j].op);
        }
        let &(_, i) = self.block_deadlines.first().filter(|&&(d, _)| d < self.t)?;
        self.problem.blocks[i].deadline_op
    }

    /// What a dead end is stuck on: the most urgent thing still to place. When that is a
    /// block that could still start, it ends too late for the next most urgent thing: then
    /// name that one if it is a loose write (it has no place left), else the op that makes
    /// the block end so late (a read or append of a lineage that should be over).
    fn blocker(&self) -> Option<OpIndex> {
        let loose_op = |&(_, j): &(u64, usize)| self.problem.loose[j].op;
        let due = self.due_by_deadline.first();
        let mut blocks = self.block_deadlines.iter();
        match (due, blocks.next()) {
            (Some(&(due, j)), block) if block.is_none_or(|&(d, _)| due <= d) => {
                Some(loose_op(&(due, j)))
            }
            (due, Some(&(deadline, i))) if self.t <= deadline => {
                let next_block = blocks.next().map_or(NEVER, |&(d, _)| d);
                let overrun = due.filter(|&&(d, _)| d <= next_block).map(loose_op);
                overrun.or(self.problem.blocks[i].release_op)
            }
            (_, Some(&(_, i))) => self.problem.blocks[i].deadline_op,
            _ => None,
        }
    }
}

/// Which steps a node offers.
impl Search<'_> {
    /// Steps 1 to 3 of the module doc, and whether the spares are listed too: when a
    /// required append needs only a small gap filled, the tail's chain most likely goes on,
    /// so its spares go before the next block. Nothing may follow the final block.
    fn list_steps(&self) -> (Vec<Step>, bool) {
        if self.final_done {
            return (Vec::new(), true);
        }
        let due = self.due_by_invoke.range(..=(self.horizon(), usize::MAX));
        let mut steps: Vec<Step> = due
            .clone()
            .filter(|&&(_, j)| self.fits(j, true))
            .map(|&(_, j)| Step::Loose(j))
            .collect();
        let blocks_due = self.block_deadlines.first().map_or(NEVER, |&(deadline, _)| deadline);
        let chain_goes_on =
            self.nearest_gap(self.len, blocks_due).is_some_and(|gap| gap <= SMALL_GAP);
        if chain_goes_on {
            steps.extend(self.list_spares());
        }
        self.list_blocks(&mut steps);
        steps.extend(due.filter(|&&(_, j)| self.fits(j, false)).map(|&(_, j)| Step::Loose(j)));
        (steps, chain_goes_on)
    }

    /// Whether required loose write `j` can go next in time: an append (`append`) finding
    /// its length, or a `set`.
    fn fits(&self, j: usize, append: bool) -> bool {
        let loose = &self.problem.loose[j];
        let kind_fits = match loose.kind {
            LooseKind::Append { before } => append && before == self.len,
            LooseKind::Set => !append,
        };
        kind_fits && self.t.max(loose.invoke) <= loose.complete
    }

    /// The blocks that can come next: started by their deadline, and ending by everything
    /// else's. The final block comes only when nothing else is left, since it has no tail.
    fn list_blocks(&self, steps: &mut Vec<Step>) {
        let due = self.due_by_deadline.first().map_or(NEVER, |&(deadline, _)| deadline);
        let mut by_deadline = self.block_deadlines.iter();
        let (first, first_block) = by_deadline.next().copied().unwrap_or((NEVER, usize::MAX));
        let second = by_deadline.next().map_or(NEVER, |&(deadline, _)| deadline);
        let widest = second.min(due);
        for &(release, i) in self.by_release.range(..=(widest, usize::MAX)) {
            let others = if i == first_block { widest } else { first.min(due) };
            if self.t.max(release) <= others && self.t <= self.problem.blocks[i].deadline {
                steps.push(Step::Block(i));
            }
        }
        // `list_steps` offers nothing once the final block is placed, so it is pending here.
        if let Some(i) = self.final_block.filter(|_| self.by_release.is_empty()) {
            if due == NEVER && self.t <= self.problem.blocks[i].deadline {
                steps.push(Step::Block(i));
            }
        }
    }

    /// Step 4 of the module doc: the earliest unused spare of each kind and length, if some
    /// required loose append could still follow it in this tail, and if the round allows
    /// its rank. (Which spare of a length is taken does not matter for the future: once
    /// invoked, all can go anywhere later. Taking the earliest keeps the memo keys
    /// canonical.) The order, by rank and then with the lengths whose spares were sent most
    /// recently first (the writes most likely to have taken effect just now), only matters
    /// for speed.
    fn list_spares(&self) -> Vec<Step> {
        if self.final_done {
            return Vec::new();
        }
        let blocks_due = self.block_deadlines.first().map_or(NEVER, |&(deadline, _)| deadline);
        let horizon = self.horizon();
        let gap = self.nearest_gap(self.len, blocks_due);
        let mut steps = Vec::new();
        for (kind, groups) in self.spares.iter().enumerate() {
            for (group, spares) in groups.iter().enumerate() {
                let Some(&loose) = spares.items.get(spares.used) else { continue };
                let at = self.t.max(self.problem.loose[loose].invoke);
                let (len, supply) = match kind {
                    0 => (self.len + spares.len, self.spare_bytes - spares.len),
                    _ => (spares.len, self.spare_bytes),
                };
                if at <= horizon && self.wanted(len, supply, at, blocks_due) {
                    let rank = match kind {
                        0 => match gap.map(|gap| (spares.len.cmp(&gap), gap <= SMALL_GAP)) {
                            Some((Ordering::Equal, _)) => 0,
                            Some((Ordering::Less, true)) => 1,
                            _ => 2,
                        },
                        _ => match self.nearest_gap(spares.len, blocks_due) {
                            Some(gap) if gap <= SMALL_GAP => 3,
                            _ => 2,
                        },
                    };
                    if !self.ranks.contains(&rank) {
                        self.capped.set(true);
                        continue;
                    }
                    let order = (rank, std::cmp::Reverse(self.recency(spares)));
                    steps.push((order, Step::Spare { kind, group, loose }));
                }
            }
        }
        steps.sort_by_key(|&(order, _)| order);
        steps.into_iter().map(|(_, step)| step).collect()
    }

    /// How many bytes a string of `len` is short of the nearest length that a required loose
    /// append that could come next in this tail needs.
    fn nearest_gap(&self, len: u64, blocks_due: u64) -> Option<u64> {
        let due = self.due_by_invoke.range(..=(blocks_due, usize::MAX));
        let befores = due.filter_map(|&(_, j)| match self.problem.loose[j].kind {
            LooseKind::Append { before } if self.problem.loose[j].complete >= self.t => {
                Some(before)
            }
            _ => None,
        });
        befores.filter_map(|before| before.checked_sub(len)).min()
    }

    /// The latest invoke not after now among the unused `spares` (0 if none).
    fn recency(&self, spares: &Spares) -> u64 {
        let unused = &spares.items[spares.used..];
        let invoked = unused.partition_point(|&j| self.problem.loose[j].invoke <= self.t);
        invoked.checked_sub(1).map_or(0, |k| self.problem.loose[unused[k]].invoke)
    }

    /// Whether a required loose append could follow a string of `len` bytes at time `at`
    /// in this tail: it needs at least that length but no more than `supply` bytes of spares
    /// can add, must not be due before `at`, and must be invoked before the next block is
    /// due (it comes before that block).
    fn wanted(&self, len: u64, supply: u64, at: u64, blocks_due: u64) -> bool {
        self.due_by_invoke.range(..=(blocks_due, usize::MAX)).any(|&(_, j)| {
            let loose = &self.problem.loose[j];
            let reachable = matches!(loose.kind,
                LooseKind::Append { before } if before >= len && before - len <= supply);
            reachable && loose.complete >= at
        })
    }
}

/// Taking and undoing steps.
impl Search<'_> {
    fn apply(&mut self, step: Step) {
        match step {
            Step::Block(i) => {
                let block = &self.problem.blocks[i];
                self.remove_block(i);
                self.t = self.t.max(block.release);
                self.len = block.end_len;
                self.final_done |= block.is_final;
                self.placed += block.ops.len();
                self.key ^= self.zobrist[i];
            }
            Step::Loose(j) => {
                self.remove_due(j);
                self.place_loose(j);
            }
            Step::Spare { kind, group, loose } => {
                self.spares[kind][group].used += 1;
                self.spare_bytes -= if kind == 0 { self.problem.loose[loose].len } else { 0 };
                self.place_loose(loose);
            }
        }
    }

    fn place_loose(&mut self, j: usize) {
        let loose = &self.problem.loose[j];
        self.t = self.t.max(loose.invoke);
        self.len = match loose.kind {
            LooseKind::Append { .. } => self.len + loose.len,
            LooseKind::Set => loose.len,
        };
        self.placed += 1;
        self.key ^= self.zobrist[self.problem.blocks.len() + j];
    }

    /// Undoes `step`, back to time `t` and length `len`.
    fn undo(&mut self, step: Step, t: u64, len: u64) {
        match step {
            Step::Block(i) => {
                let block = &self.problem.blocks[i];
                self.insert_block(i);
                self.final_done &= !block.is_final;
                self.placed -= block.ops.len();
                self.key ^= self.zobrist[i];
            }
            Step::Loose(j) | Step::Spare { loose: j, .. } => {
                match step {
                    Step::Spare { kind, group, .. } => {
                        self.spares[kind][group].used -= 1;
                        self.spare_bytes += if kind == 0 { self.problem.loose[j].len } else { 0 };
                    }
                    _ => self.insert_due(j),
                }
                self.placed -= 1;
                self.key ^= self.zobrist[self.problem.blocks.len() + j];
            }
        }
        (self.t, self.len) = (t, len);
    }

    fn insert_block(&mut self, i: usize) {
        let block = &self.problem.blocks[i];
        self.block_deadlines.insert((block.deadline, i));
        if !block.is_final {
            self.by_release.insert((block.release, i));
        }
    }

    fn remove_block(&mut self, i: usize) {
        let block = &self.problem.blocks[i];
        self.block_deadlines.remove(&(block.deadline, i));
        self.by_release.remove(&(block.release, i));
    }

    fn insert_due(&mut self, j: usize) {
        let loose = &self.problem.loose[j];
        self.due_by_invoke.insert((loose.invoke, j));
        self.due_by_deadline.insert((loose.complete, j));
    }

    fn remove_due(&mut self, j: usize) {
        let loose = &self.problem.loose[j];
        self.due_by_invoke.remove(&(loose.invoke, j));
        self.due_by_deadline.remove(&(loose.complete, j));
    }
}

/// Reporting.
impl Search<'_> {
    /// Remembers the deepest dead end.
    fn note_dead(&mut self, stuck: Option<OpIndex>) {
        if self.deepest.as_ref().is_some_and(|deepest| deepest.placed >= self.placed) {
            return;
        }
        let tail = self.tail();
        self.deepest = Some(Refutation { placed: self.placed, tail, stuck, len: self.len });
    }

    /// The last [`TAIL`] ops placed, in order.
    fn tail(&self) -> Vec<OpIndex> {
        let blocks = &self.problem.blocks;
        let taken = self.stack.iter().rev().filter_map(|frame| frame.taken);
        let mut tail = Vec::with_capacity(TAIL);
        for ops in taken.map(|step| self.ops_of(step)).chain(std::iter::once(&blocks[0].ops[..])) {
            tail.extend(ops.iter().rev().take(TAIL - tail.len()));
            if tail.len() == TAIL {
                break;
            }
        }
        tail.reverse();
        tail
    }

    fn ops_of(&self, step: Step) -> &[OpIndex] {
        match step {
            Step::Block(i) => &self.problem.blocks[i].ops,
            Step::Loose(j) | Step::Spare { loose: j, .. } => {
                std::slice::from_ref(&self.problem.loose[j].op)
            }
        }
    }
}
