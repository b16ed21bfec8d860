//! The search engine: Lowe's just-in-time linearization over a doubly linked list of events,
//! with memoization, dominance pruning and reachability pruning (see [`Search::lift`] and
//! [`Search::reads_reachable`]).

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use super::fingerprint::{splitmix, FoldHasher};
use super::linearizable::{resets, Deepest, Kind, SearchOp, SearchResult};
use super::model::{State, Undo};

/// How many upcoming events [`Search::reads_reachable`] looks at: enough to cover the reads
/// concurrent with the current point in a busy history, few enough to stay cheap.
const READ_LOOKAHEAD: usize = 64;

/// How many trailing bytes of the string [`Search::may_extend_to`] compares.
const COMPARED_TAIL: usize = 64;

/// The set of explored nodes, keyed by 128-bit fingerprints.
type Explored = HashSet<u128, BuildHasherDefault<FoldHasher>>;

/// The search over a doubly linked list of events (entry `2i` calls op `i`, `2i + 1` is its
/// return, the sentinel is last), lifting linearized ops out and relinking on backtrack.
pub(crate) struct Search<'s, 'a> {
    ops: &'s [SearchOp<'a>],
    next: Vec<usize>,
    prev: Vec<usize>,
    zobrist: Vec<u128>,
    state: State<'a>,
    /// For each read, the `set`s whose value starts the value it returned.
    resets: Vec<Vec<usize>>,
    /// Which ops are linearized.
    done: Vec<bool>,
    /// Zobrist hash of the set of linearized ops.
    linearized: u128,
    /// The same without the free ops that a later `set` erased (see [`Search::lift`]).
    reduced: u128,
    stack: Vec<Frame>,
    deepest: Option<Deepest>,
}

/// Which calls a scan of the event list is trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Known,
    Unknown,
}

/// One linearized op: its call entry, the pass that placed it, and how to undo it.
struct Frame {
    entry: usize,
    pass: Pass,
    undo: Undo,
}

impl<'s, 'a> Search<'s, 'a> {
    /// Prepares the search over `ops`, which end with the final read if there is one.
    pub fn new(ops: &'s [SearchOp<'a>], final_string: Option<&'a [u8]>) -> Self {
        let mut events: Vec<((u64, u8), usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push(((op.invoke, 0), 2 * i));
            events.push((op.ret, 2 * i + 1));
        }
        events.sort_unstable();
        let head = 2 * ops.len();
        let (mut next, mut prev) = (vec![head; head + 1], vec![head; head + 1]);
        let mut last = head;
        for &(_, entry) in &events {
            next[last] = entry;
            prev[entry] = last;
            last = entry;
        }
        next[last] = head;
        prev[head] = last;
        let mut seed = 0x5eed_u64;
        let zobrist = ops
            .iter()
            .map(|_| u128::from(splitmix(&mut seed)) << 64 | u128::from(splitmix(&mut seed)))
            .collect();
        let state = State::new(ops, final_string);
        let resets = ops.iter().map(|op| resets(ops, op)).collect();
        let (done, stack) = (vec![false; ops.len()], Vec::new());
        Self {
            ops,
            next,
            prev,
            zobrist,
            state,
            resets,
            done,
            linearized: 0,
            reduced: 0,
            stack,
            deepest: None,
        }
    }

    /// The search loop. Each node of the search scans the calls before the first pending
    /// return twice: first the ops with a known outcome, then the `Unknown` ones, so that an
    /// `Unknown` write is placed early only where the known ops cannot go on without it.
    /// Trying every candidate of a node exactly once, in whatever order, keeps it complete.
    pub fn run(&mut self, max_steps: u64) -> SearchResult {
        let head = 2 * self.ops.len();
        let mut explored: Explored = HashSet::default();
        let (mut entry, mut pass) = (self.next[head], Pass::Known);
        let mut steps = 0;
        while entry != head {
            steps += 1;
            if steps > max_steps {
                let deepest = self.deepest.as_ref().map_or(0, |d| d.linearized.len());
                return SearchResult::BudgetExceeded { steps: max_steps, deepest };
            }
            let op = entry / 2;
            if entry % 2 == 1 && pass == Pass::Known {
                (entry, pass) = (self.next[head], Pass::Unknown);
            } else if entry % 2 == 1 {
                // The return of an op not linearized yet: this branch is dead.
                self.note_stuck(op);
                let Some(resume) = self.backtrack() else {
                    let deepest = self.deepest.take().unwrap_or_default();
                    return SearchResult::NotLinearizable { steps, deepest };
                };
                (entry, pass) = resume;
            } else if self.ops[op].deferred == (pass == Pass::Unknown)
                && self.lift(entry, pass, &mut explored)
            {
                (entry, pass) = (self.next[head], Pass::Known);
            } else {
                entry = self.next[entry];
            }
        }
        SearchResult::Linearizable { steps }
    }

    /// Linearizes the op called at `entry` if its reply fits and the node it leads to is
    /// neither explored already nor dominated by an explored node.
    ///
    /// Dominance: once a free op (no deadline) has been erased by a later `set`, the future
    /// no longer depends on it, and the same node with that op still pending can do at least
    /// as much (it can always place the op after the end, i.e. never). So if that node, whose
    /// key is the `reduced` one, was explored and failed, this one fails too. (It cannot be
    /// an ancestor still on the stack: the latest `set` is in this node's reduced set and
    /// not in the ancestor's.)
    fn lift(&mut self, entry: usize, pass: Pass, explored: &mut Explored) -> bool {
        let op = entry / 2;
        let Some(undo) = self.state.apply(op, &self.ops[op]) else { return false };
        let full = self.linearized ^ self.zobrist[op];
        let reduced = self.reduced ^ self.zobrist[op] ^ self.erased_key(&undo);
        let fingerprint = self.state.fingerprint();
        let dominated = reduced != full && explored.contains(&(reduced ^ fingerprint));
        if dominated || !self.reads_reachable(entry) || !explored.insert(full ^ fingerprint) {
            self.state.revert(undo);
            return false;
        }
        (self.linearized, self.reduced) = (full, reduced);
        self.done[op] = true;
        self.stack.push(Frame { entry, pass, undo });
        self.unlink(entry);
        self.unlink(entry + 1);
        true
    }

    /// Undoes the last linearized op; returns where its node's scan resumes.
    fn backtrack(&mut self) -> Option<(usize, Pass)> {
        let Frame { entry, pass, undo } = self.stack.pop()?;
        self.done[entry / 2] = false;
        self.linearized ^= self.zobrist[entry / 2];
        self.reduced ^= self.zobrist[entry / 2] ^ self.erased_key(&undo);
        self.state.revert(undo);
        self.relink(entry + 1);
        self.relink(entry);
        Some((self.next[entry], pass))
    }

    /// Every read that must still be linearized must still be able to see its value: a `set`
    /// not linearized yet must start it, or the string must be a prefix of it. Checked for
    /// the pending reads among the next [`READ_LOOKAHEAD`] events (other than the one at
    /// `entry`), which cuts off wrong placements of `Unknown` writes as soon as they happen.
    fn reads_reachable(&self, entry: usize) -> bool {
        let head = 2 * self.ops.len();
        let mut event = self.next[head];
        for _ in 0..READ_LOOKAHEAD {
            if event == head {
                break;
            }
            if let (Kind::Get { value }, true) =
                (self.ops[event / 2].kind, event % 2 == 0 && event != entry)
            {
                let reset = self.resets[event / 2].iter().any(|&set| !self.done[set]);
                if !reset && !self.may_extend_to(value) {
                    return false;
                }
            }
            event = self.next[event];
        }
        true
    }

    /// Whether appends could turn the current string into `value`. Only the last
    /// [`COMPARED_TAIL`] bytes are compared: where wrong placements show, and cheap; a
    /// mismatch further back is merely not pruned here.
    fn may_extend_to(&self, value: &[u8]) -> bool {
        let string = &self.state.string;
        let from = string.len().saturating_sub(COMPARED_TAIL);
        value.len() >= string.len() && value[from..string.len()] == string[from..]
    }

    /// The Zobrist keys of the free ops a `set` erased.
    fn erased_key(&self, undo: &Undo) -> u128 {
        match undo {
            Undo::Set { erased, .. } => erased.iter().fold(0, |key, &op| key ^ self.zobrist[op]),
            _ => 0,
        }
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        self.prev[next] = entry;
    }

    /// Remembers the deepest dead end, for the report.
    fn note_stuck(&mut self, op: usize) {
        if self.deepest.as_ref().is_some_and(|d| d.linearized.len() >= self.stack.len()) {
            return;
        }
        let linearized =
            self.stack.iter().filter_map(|frame| self.ops[frame.entry / 2].index).collect();
        let stuck = self.ops[op].index;
        self.deepest = Some(Deepest { linearized, stuck, state_len: self.state.string.len() });
    }
}
