//! What the checker can find wrong, described well enough to debug from the report alone.
//!
//! Every anomaly names the ops involved by [`OpRef`], which carries the op's index, client,
//! node, times and a short summary, so a report printed by a failing test or simulation seed
//! needs no second look at the history file to be understood.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::history::{ActionId, History, OkValue, OpIndex, OpKind, Outcome};

/// A self-describing reference to one op of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRef {
    /// Index in [`History::ops`].
    pub index: OpIndex,
    /// The client that issued it.
    pub client: u64,
    /// The node it was sent to, if recorded.
    pub node: Option<u64>,
    /// When it was invoked.
    pub invoke: u64,
    /// When it completed, if it did.
    pub complete: Option<u64>,
    /// `append "<c1-2>" -> len 14` and the like.
    pub summary: String,
}

impl OpRef {
    /// Describes op `index` of `history`.
    pub fn new(history: &History, index: OpIndex) -> Self {
        let op = &history.ops[index];
        let request = match &op.op {
            OpKind::Append(value) => format!("append {}", preview(value)),
            OpKind::Set(value) => format!("set {}", preview(value)),
            OpKind::Get => "get".to_string(),
        };
        let outcome = match &op.outcome {
            Outcome::Ok(OkValue::Len(len)) => format!("len {len}"),
            Outcome::Ok(OkValue::Value(value)) => preview(value),
            Outcome::Failed(why) => format!("failed ({why})"),
            Outcome::Unknown => "unknown".to_string(),
        };
        Self {
            index,
            client: op.client,
            node: op.node,
            invoke: op.invoke,
            complete: op.complete,
            summary: format!("{request} -> {outcome}"),
        }
    }
}

impl fmt::Display for OpRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} (client {}", self.index, self.client)?;
        if let Some(node) = self.node {
            write!(f, " via n{node}")?;
        }
        match self.complete {
            Some(complete) => write!(f, ", [{}, {}]", self.invoke, complete)?,
            None => write!(f, ", [{}, open]", self.invoke)?,
        }
        write!(f, ": {})", self.summary)
    }
}

/// A string the checker examined: a replica's final string or the value some `get` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The final string of this node.
    Replica(u64),
    /// The value returned by this `get` op.
    Read(OpIndex),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Replica(node) => write!(f, "the final string of n{node}"),
            Source::Read(op) => write!(f, "the value read by #{op}"),
        }
    }
}

/// A byte position in a [`Source`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Which string.
    pub source: Source,
    /// Byte offset in it.
    pub offset: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.source, self.offset)
    }
}

/// How two replicas differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Divergence {
    /// Same applied actions (or none recorded) but different strings.
    Strings {
        /// First byte offset where they differ (the shorter length if one is a prefix).
        first_difference: usize,
        /// Length of the first replica's string.
        a_len: usize,
        /// Length of the second replica's string.
        b_len: usize,
    },
    /// The applied sequences differ at `index` (`None`: that replica stops earlier).
    AppliedOrder {
        /// Position in the applied sequences.
        index: usize,
        /// The first replica's action there.
        a: Option<ActionId>,
        /// The second replica's action there.
        b: Option<ActionId>,
    },
    /// The replicas' own digests differ after the same number of actions: they applied
    /// different sequences.
    Digests {
        /// Actions both applied.
        actions: u64,
        /// The first replica's hash.
        a_hash: u64,
        /// The second replica's hash.
        b_hash: u64,
    },
    /// One applied sequence is a strict prefix of the other while convergence was required.
    Lagging {
        /// Actions applied by the first replica.
        a_applied: usize,
        /// Actions applied by the second replica.
        b_applied: usize,
    },
}

/// Where the linearizability search could go no further.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stuck {
    /// This op had to take effect before its completion, but no order allowed it.
    Op(OpRef),
    /// Every op fit, but no order ends in the replicas' final string.
    FinalState,
}

/// One problem found in a history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Anomaly {
    /// The recorder wrote something impossible (e.g. a `get` answered with a length); the op
    /// is treated as `Unknown` from then on.
    InvalidHistory { op: OpRef, reason: String },
    /// Two replicas ended in different states.
    ReplicasDiverge { a: u64, b: u64, divergence: Divergence },
    /// A replica applied the same action twice.
    DuplicateAction { node: u64, action: ActionId, first: usize, second: usize },
    /// A string is not a concatenation of tokens: bytes nobody wrote, or a token cut in half.
    MalformedString { at: Location },
    /// A token that no op in the history ever wrote.
    PhantomToken { token: String, at: Location },
    /// A write took effect twice: its token appears twice in one string, or in two
    /// lineages (after two different `set`s).
    DuplicateToken { token: String, op: OpRef, first: Location, second: Location },
    /// Only part of a multi-token value is there, or its tokens are not contiguous.
    TornWrite { op: OpRef, at: Location },
    /// A `set`'s value sits after other writes, where only appends can be.
    MisplacedSet { op: OpRef, at: Location },
    /// A write whose outcome was `Failed` took effect.
    FailedWriteVisible { op: OpRef, token: String, at: Location },
    /// A write that took effect (acknowledged, or seen by a read) is missing from the final
    /// string although no `set` can have erased it; `base` is the `set` whose value starts
    /// the final string.
    LostWrite { op: OpRef, token: String, final_string: Source, base: Option<OpRef> },
    /// An acknowledged write returned a length that does not match where it took effect.
    WrongReturnedLength { op: OpRef, expected: u64, returned: u64 },
    /// A read is not a prefix of the string it must be a prefix of (the final string, or the
    /// longest read after the same `set`).
    ReadNotPrefix { read: OpRef, reference: Source, offset: usize },
    /// A read was invoked after `missed` completed but does not reflect it.
    StaleRead { read: OpRef, missed: OpRef },
    /// `later` was invoked after `earlier` completed but saw a shorter string of the same
    /// lineage.
    NonMonotonicRead { earlier: OpRef, later: OpRef, earlier_len: usize, later_len: usize },
    /// A read reflects a write that was invoked only after the read completed.
    ReadFromFuture { read: OpRef, op: OpRef },
    /// `source` orders `first` before `second`, but `second` completed before `first` was
    /// invoked.
    RealTimeOrderViolation { first: OpRef, second: OpRef, source: Source },
    /// The general search proved that no linearization exists. `linearized` ops were placed
    /// in the deepest attempt, whose last ops are `tail`, and the search got stuck at
    /// `stuck` with a string of `state_len` bytes.
    NotLinearizable {
        linearized: usize,
        total: usize,
        stuck: Stuck,
        tail: Vec<OpRef>,
        state_len: usize,
    },
    /// Warning: the search gave up after `steps` steps; nothing was proved either way.
    SearchBudgetExceeded { steps: u64, ops: usize, deepest: usize },
    /// Warning: no layer could check this history.
    NotChecked { reason: String },
}

impl Anomaly {
    /// True for the inconclusive kinds, which do not fail [`super::Report::is_ok`].
    pub fn is_warning(&self) -> bool {
        matches!(self, Anomaly::SearchBudgetExceeded { .. } | Anomaly::NotChecked { .. })
    }

    /// The variant's name, for grouping and for tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Anomaly::InvalidHistory { .. } => "InvalidHistory",
            Anomaly::ReplicasDiverge { .. } => "ReplicasDiverge",
            Anomaly::DuplicateAction { .. } => "DuplicateAction",
            Anomaly::MalformedString { .. } => "MalformedString",
            Anomaly::PhantomToken { .. } => "PhantomToken",
            Anomaly::DuplicateToken { .. } => "DuplicateToken",
            Anomaly::TornWrite { .. } => "TornWrite",
            Anomaly::MisplacedSet { .. } => "MisplacedSet",
            Anomaly::FailedWriteVisible { .. } => "FailedWriteVisible",
            Anomaly::LostWrite { .. } => "LostWrite",
            Anomaly::WrongReturnedLength { .. } => "WrongReturnedLength",
            Anomaly::ReadNotPrefix { .. } => "ReadNotPrefix",
            Anomaly::StaleRead { .. } => "StaleRead",
            Anomaly::NonMonotonicRead { .. } => "NonMonotonicRead",
            Anomaly::ReadFromFuture { .. } => "ReadFromFuture",
            Anomaly::RealTimeOrderViolation { .. } => "RealTimeOrderViolation",
            Anomaly::NotLinearizable { .. } => "NotLinearizable",
            Anomaly::SearchBudgetExceeded { .. } => "SearchBudgetExceeded",
            Anomaly::NotChecked { .. } => "NotChecked",
        }
    }

    /// The op the anomaly is mainly about, used to report each problem once per op.
    pub fn primary_op(&self) -> Option<OpIndex> {
        match self {
            Anomaly::InvalidHistory { op, .. }
            | Anomaly::DuplicateToken { op, .. }
            | Anomaly::TornWrite { op, .. }
            | Anomaly::MisplacedSet { op, .. }
            | Anomaly::FailedWriteVisible { op, .. }
            | Anomaly::LostWrite { op, .. }
            | Anomaly::WrongReturnedLength { op, .. } => Some(op.index),
            Anomaly::ReadNotPrefix { read, .. }
            | Anomaly::StaleRead { read, .. }
            | Anomaly::ReadFromFuture { read, .. } => Some(read.index),
            Anomaly::NonMonotonicRead { later, .. } => Some(later.index),
            Anomaly::RealTimeOrderViolation { second, .. } => Some(second.index),
            _ => None,
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind();
        match self {
            Anomaly::InvalidHistory { op, reason } => {
                write!(f, "{kind}: {op}: {reason}; treated as unknown")
            }
            Anomaly::ReplicasDiverge { a, b, divergence } => {
                write!(f, "{kind}: n{a} and n{b} differ: ")?;
                fmt_divergence(f, (*a, *b), divergence)
            }
            Anomaly::DuplicateAction { node, action, first, second } => write!(
                f,
                "{kind}: n{node} applied action {action:?} twice, at positions {first} and {second}"
            ),
            Anomaly::MalformedString { at } => write!(f, "{kind}: {at} is not a token"),
            Anomaly::PhantomToken { token, at } => {
                write!(f, "{kind}: {token} at {at} was never written by any op")
            }
            Anomaly::DuplicateToken { token, op, first, second } => {
                write!(f, "{kind}: {token} of {op} took effect twice: at {first} and at {second}")
            }
            Anomaly::TornWrite { op, at } => {
                write!(f, "{kind}: the value of {op} is incomplete or split at {at}")
            }
            Anomaly::MisplacedSet { op, at } => {
                write!(f, "{kind}: the value of {op} is at {at}, after other writes")
            }
            Anomaly::FailedWriteVisible { op, token, at } => {
                write!(f, "{kind}: {token} of failed {op} is visible at {at}")
            }
            Anomaly::LostWrite { op, token, final_string, base } => {
                write!(f, "{kind}: {token} of {op} took effect but is missing from ")?;
                match base {
                    Some(base) => {
                        write!(f, "{final_string}, and it cannot precede the set {base} there")
                    }
                    None => write!(f, "{final_string}, which no set overwrote"),
                }
            }
            Anomaly::WrongReturnedLength { op, expected, returned } => {
                write!(f, "{kind}: {op} returned length {returned}, but took effect at {expected}")
            }
            Anomaly::ReadNotPrefix { read, reference, offset } => {
                write!(f, "{kind}: {read} differs from {reference} at byte {offset}")
            }
            Anomaly::StaleRead { read, missed } => {
                write!(f, "{kind}: {read} was invoked after {missed} completed but misses it")
            }
            Anomaly::NonMonotonicRead { earlier, later, earlier_len, later_len } => write!(
                f,
                "{kind}: {later} saw {later_len} bytes, the earlier {earlier} {earlier_len}"
            ),
            Anomaly::ReadFromFuture { read, op } => {
                write!(f, "{kind}: {read} reflects {op}, invoked after the read completed")
            }
            Anomaly::RealTimeOrderViolation { first, second, source } => write!(
                f,
                "{kind}: {source} orders {first} before {second}, which completed before it began"
            ),
            Anomaly::NotLinearizable { linearized, total, stuck, tail, state_len } => {
                fmt_not_linearizable(f, (*linearized, *total, *state_len), stuck, tail)
            }
            Anomaly::SearchBudgetExceeded { steps, ops, deepest } => write!(
                f,
                "{kind} (warning, inconclusive): gave up after {steps} steps on {ops} ops; \
                 deepest partial linearization had {deepest} ops"
            ),
            Anomaly::NotChecked { reason } => write!(f, "{kind} (warning): {reason}"),
        }
    }
}

fn fmt_divergence(
    f: &mut fmt::Formatter<'_>,
    (a, b): (u64, u64),
    divergence: &Divergence,
) -> fmt::Result {
    let action = |action: &Option<ActionId>| match action {
        Some((origin, seq)) => format!("({origin}, {seq})"),
        None => "nothing".to_string(),
    };
    match divergence {
        Divergence::Strings { first_difference, a_len, b_len } => write!(
            f,
            "strings of {a_len} and {b_len} bytes first differ at byte {first_difference}"
        ),
        Divergence::AppliedOrder { index, a: on_a, b: on_b } => {
            let (on_a, on_b) = (action(on_a), action(on_b));
            write!(f, "applied action #{index} is {on_a} on n{a} but {on_b} on n{b}")
        }
        Divergence::Digests { actions, a_hash, b_hash } => write!(
            f,
            "after {actions} actions the applied-sequence digest is {a_hash:016x} on n{a} \
             but {b_hash:016x} on n{b}"
        ),
        Divergence::Lagging { a_applied, b_applied } => {
            write!(f, "applied {a_applied} and {b_applied} actions at the end of the run")
        }
    }
}

fn fmt_not_linearizable(
    f: &mut fmt::Formatter<'_>,
    (linearized, total, state_len): (usize, usize, usize),
    stuck: &Stuck,
    tail: &[OpRef],
) -> fmt::Result {
    write!(f, "NotLinearizable: the deepest attempt placed {linearized} of {total} ops")?;
    write!(f, " (string of {state_len} bytes) and then ")?;
    match stuck {
        Stuck::Op(op) => write!(f, "could not place {op}")?,
        Stuck::FinalState => write!(f, "could not reach the replicas' final string")?,
    }
    if !tail.is_empty() {
        write!(f, "; last ops placed:")?;
        for op in tail {
            write!(f, "\n      {op}")?;
        }
    }
    Ok(())
}

/// A short, escaped rendering of a byte string for reports.
pub(crate) fn preview(bytes: &[u8]) -> String {
    const HEAD: usize = 28;
    const TAIL: usize = 14;
    if bytes.len() <= HEAD + TAIL {
        return format!("\"{}\"", bytes.escape_ascii());
    }
    let head = bytes[..HEAD].escape_ascii();
    let tail = bytes[bytes.len() - TAIL..].escape_ascii();
    format!("\"{head}…{tail}\" ({} bytes)", bytes.len())
}

/// Renders the token (or any bytes) that names a write, for anomaly fields.
pub(crate) fn token_text(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}
