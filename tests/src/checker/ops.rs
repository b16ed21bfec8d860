//! The history as the checks see it: each op reduced to its effect, its interval and what is
//! known about it, plus the sink that collects anomalies.
//!
//! Normalising once keeps the rules for `Unknown` and `Failed` in one place: an `Unknown` op
//! completes at [`NEVER`] (it may take effect at any time after its invoke, or never), a
//! `Failed` op never takes effect, and an op whose record is impossible is reported as
//! [`Anomaly::InvalidHistory`] and then treated as `Unknown`, which can only weaken the checks.

use std::collections::{HashMap, HashSet};

use super::anomaly::{Anomaly, OpRef};
use super::history::{History, OkValue, OpIndex, OpKind, Outcome};

/// Completion time of an op whose effect is not bounded by a reply.
pub(crate) const NEVER: u64 = u64::MAX;

/// What an op does to the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect<'a> {
    Append(&'a [u8]),
    Set(&'a [u8]),
    Get,
}

/// What is known about whether and how an op took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status<'a> {
    /// Took effect exactly once; a write returned this length, a read this value.
    Ok(Reply<'a>),
    /// May have taken effect once, or never.
    Unknown,
    /// Never took effect.
    Failed,
}

/// The result carried by an `Ok` outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply<'a> {
    Len(u64),
    Value(&'a [u8]),
}

/// One op, normalised. `ops[i]` of [`normalize`] is op `i` of the history.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NormOp<'a> {
    pub effect: Effect<'a>,
    pub invoke: u64,
    /// The reply time for `Ok` ops; [`NEVER`] otherwise.
    pub complete: u64,
    pub status: Status<'a>,
}

impl<'a> NormOp<'a> {
    /// The bytes an `append` or `set` writes.
    pub fn written(&self) -> Option<&'a [u8]> {
        match self.effect {
            Effect::Append(value) | Effect::Set(value) => Some(value),
            Effect::Get => None,
        }
    }

    pub fn is_set(&self) -> bool {
        matches!(self.effect, Effect::Set(_))
    }

    pub fn is_failed(&self) -> bool {
        self.status == Status::Failed
    }

    /// True for a write that certainly took effect.
    pub fn is_ok_write(&self) -> bool {
        self.written().is_some() && matches!(self.status, Status::Ok(_))
    }

    /// The length an `Ok` write returned.
    pub fn returned_len(&self) -> Option<u64> {
        match self.status {
            Status::Ok(Reply::Len(len)) => Some(len),
            _ => None,
        }
    }

    /// The value an `Ok` read returned.
    pub fn read_value(&self) -> Option<&'a [u8]> {
        match (self.effect, self.status) {
            (Effect::Get, Status::Ok(Reply::Value(value))) => Some(value),
            _ => None,
        }
    }
}

/// Normalises every op of `history`, reporting impossible records into `sink`.
pub(crate) fn normalize<'a>(history: &'a History, sink: &mut Sink<'_>) -> Vec<NormOp<'a>> {
    let mut ops = Vec::with_capacity(history.ops.len());
    for (index, op) in history.ops.iter().enumerate() {
        let effect = match &op.op {
            OpKind::Append(value) => Effect::Append(value),
            OpKind::Set(value) => Effect::Set(value),
            OpKind::Get => Effect::Get,
        };
        let mut norm =
            NormOp { effect, invoke: op.invoke, complete: NEVER, status: Status::Unknown };
        match (&op.outcome, op.complete) {
            (Outcome::Failed(_), _) => norm.status = Status::Failed,
            (Outcome::Unknown, _) => {}
            (Outcome::Ok(_), None) => {
                sink.invalid(index, "outcome is Ok but there is no completion time")
            }
            (Outcome::Ok(_), Some(complete)) if complete < op.invoke => {
                sink.invalid(index, "completes before it was invoked")
            }
            (Outcome::Ok(value), Some(complete)) => match (effect, value) {
                (Effect::Get, OkValue::Value(value)) => {
                    norm.complete = complete;
                    norm.status = Status::Ok(Reply::Value(value));
                }
                (Effect::Append(_) | Effect::Set(_), OkValue::Len(len)) => {
                    norm.complete = complete;
                    norm.status = Status::Ok(Reply::Len(*len));
                }
                (Effect::Get, OkValue::Len(_)) => {
                    sink.invalid(index, "a get answered with a length")
                }
                _ => sink.invalid(index, "a write answered with a string"),
            },
        }
        ops.push(norm);
    }
    ops
}

/// Collects anomalies: reports each kind at most once per op, and keeps at most `cap` of each
/// kind so that one systematic bug in a 100k-op history does not produce 100k lines, while
/// every kind of problem found still shows.
pub(crate) struct Sink<'h> {
    pub history: &'h History,
    anomalies: Vec<Anomaly>,
    seen: HashSet<(&'static str, OpIndex)>,
    per_kind: HashMap<&'static str, usize>,
    cap: usize,
    dropped: usize,
}

impl<'h> Sink<'h> {
    pub fn new(history: &'h History, cap: usize) -> Self {
        Self {
            history,
            anomalies: Vec::new(),
            seen: HashSet::new(),
            per_kind: HashMap::new(),
            cap,
            dropped: 0,
        }
    }

    /// Describes op `index` for an anomaly.
    pub fn op(&self, index: OpIndex) -> OpRef {
        OpRef::new(self.history, index)
    }

    /// Records an anomaly unless the same kind was already reported for the same op.
    pub fn push(&mut self, anomaly: Anomaly) {
        if let Some(op) = anomaly.primary_op() {
            if !self.seen.insert((anomaly.kind(), op)) {
                return;
            }
        }
        let count = self.per_kind.entry(anomaly.kind()).or_default();
        if *count < self.cap || anomaly.is_warning() {
            *count += 1;
            self.anomalies.push(anomaly);
        } else {
            self.dropped += 1;
        }
    }

    /// How many failures (not warnings) were found so far, counting the dropped ones.
    pub fn failures(&self) -> usize {
        self.dropped + self.anomalies.iter().filter(|anomaly| !anomaly.is_warning()).count()
    }

    fn invalid(&mut self, index: OpIndex, reason: &str) {
        let op = self.op(index);
        self.push(Anomaly::InvalidHistory { op, reason: reason.to_string() });
    }

    /// The anomalies, and how many were dropped over the cap.
    pub fn finish(self) -> (Vec<Anomaly>, usize) {
        (self.anomalies, self.dropped)
    }
}
