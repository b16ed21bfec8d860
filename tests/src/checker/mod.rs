//! The history checker: does a recorded run of strstore satisfy the invariants?
//!
//! Recorders (the deterministic simulation, the chaos test) write a [`History`] of client ops
//! and the final [`ReplicaState`] of each replica; [`check`] returns a [`Report`] listing
//! every [`Anomaly`] found. See `docs/checker.md` for the rules in prose.
//!
//! Layout:
//!
//! * `history`: the data model and its JSON-lines form.
//! * `token`: the token format generators must use for written values ([`token()`]).
//! * `replicas`: the final-state comparison (total order).
//! * `direct`, `layout`, `reads`: linear-time checks for token histories; necessary
//!   conditions, each reported anomaly is a real violation.
//! * `blocks`, `lineage_search`: the complete, budgeted decision for token histories of any
//!   length, built on the lineages the direct checks explained.
//! * `linearizable`, `jit`, `model`, `fingerprint`: the complete, budgeted linearizability
//!   search for small histories of any values.
//! * `anomaly`: what can be reported.
//!
//! [`check`] runs the replica comparison always, the direct checks when every write is made
//! of unique tokens, the lineage search when the direct checks found nothing, and the
//! general search when the history is small enough ([`CheckConfig::search_max_ops`]) and
//! the lineage search did not already refute it.

mod anomaly;
mod blocks;
mod direct;
mod fingerprint;
mod history;
mod jit;
mod jsonl;
mod layout;
mod lineage_search;
mod linearizable;
mod model;
mod ops;
mod reads;
mod replicas;
mod token;

#[cfg(test)]
mod long_histories;
#[cfg(test)]
mod randomized;
#[cfg(test)]
mod tests;

use std::fmt;

pub use anomaly::{Anomaly, Divergence, Location, OpRef, Source, Stuck};
pub use history::{
    ActionId, AppliedDigest, History, OkValue, Op, OpIndex, OpKind, Outcome, ReplicaState,
};
pub use jsonl::JsonlError;
pub use token::{parse_token, token, tokenize, tokens, Malformed, Span, TokenId, Tokens};

use blocks::{BuildError, Problem};
use layout::WriteIndex;
use lineage_search::LineageResult;
use linearizable::SearchResult;
use ops::{NormOp, Sink};
use reads::Lineage;

/// Default for [`CheckConfig::search_max_ops`]: the search is memoized and usually near
/// linear, but its worst case is exponential in the concurrency, so very long histories are
/// left to the direct checks.
pub const DEFAULT_SEARCH_MAX_OPS: usize = 2000;

/// Default for [`CheckConfig::search_max_steps`]: about a second of search at worst, and
/// about 30 MB of memo, so that a pathological history cannot hang a simulation run.
pub const DEFAULT_SEARCH_MAX_STEPS: u64 = 2_000_000;

/// Default for [`CheckConfig::lineage_max_steps`]: a good history takes about one step per
/// lineage and per write no string shows, a few thousand for a ten-minute chaos run, so this
/// leaves room for a lot of backtracking while bounding the memo to a few hundred MB.
pub const DEFAULT_LINEAGE_MAX_STEPS: u64 = 5_000_000;

/// Default for [`CheckConfig::max_anomalies_per_kind`]: enough to see a pattern, few enough
/// to read.
pub const DEFAULT_MAX_ANOMALIES_PER_KIND: usize = 20;

/// Knobs for [`check_with`]; [`CheckConfig::default`] suits both the simulation and the
/// chaos test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Run the direct checks when they apply. Off only to test the search on its own.
    pub direct: bool,
    /// Run the lineage search when the direct checks ran and found nothing. Off only to test
    /// the other layers on their own.
    pub lineage_search: bool,
    /// Give up the lineage search after this many steps and report
    /// [`Anomaly::SearchBudgetExceeded`].
    pub lineage_max_steps: u64,
    /// Run the search when the history has at most this many ops that can take effect or
    /// constrain the result (0 turns it off).
    pub search_max_ops: usize,
    /// Give up the search after this many steps and report [`Anomaly::SearchBudgetExceeded`].
    pub search_max_steps: u64,
    /// Require every replica to have applied the same actions. Turn it off when the final
    /// states include a replica that is known to be behind (e.g. dead at the end).
    pub require_converged_replicas: bool,
    /// Keep at most this many failures of each kind (the rest are counted in
    /// [`Report::dropped`]).
    pub max_anomalies_per_kind: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            direct: true,
            lineage_search: true,
            lineage_max_steps: DEFAULT_LINEAGE_MAX_STEPS,
            search_max_ops: DEFAULT_SEARCH_MAX_OPS,
            search_max_steps: DEFAULT_SEARCH_MAX_STEPS,
            require_converged_replicas: true,
            max_anomalies_per_kind: DEFAULT_MAX_ANOMALIES_PER_KIND,
        }
    }
}

/// Whether a layer of the checker ran on a history, so that a clean report says what it
/// proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layer {
    /// The layer ran to completion.
    Ran,
    /// The layer ran out of budget; nothing was concluded.
    GaveUp,
    /// The layer did not apply, for this reason.
    Skipped(String),
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Ran => f.write_str("ran"),
            Layer::GaveUp => f.write_str("gave up"),
            Layer::Skipped(why) => write!(f, "skipped ({why})"),
        }
    }
}

/// The verdict on one history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Failures first found, then warnings ([`Anomaly::is_warning`]).
    pub anomalies: Vec<Anomaly>,
    /// Failures not listed because of [`CheckConfig::max_anomalies_per_kind`].
    pub dropped: usize,
    /// True when nothing was decided: no failure was found, and neither the lineage search nor
    /// the general search ran to completion.
    pub inconclusive: bool,
    /// What the direct checks did.
    pub direct: Layer,
    /// What the lineage search did.
    pub lineage_search: Layer,
    /// Steps the lineage search took (0 if it did not run).
    pub lineage_steps: u64,
    /// What the general search did.
    pub search: Layer,
    /// Steps the search took (0 if it did not run).
    pub search_steps: u64,
}

impl Report {
    /// True when no failure was found. Inconclusive reports are ok; see
    /// [`Report::inconclusive`].
    pub fn is_ok(&self) -> bool {
        self.dropped == 0 && self.failures().next().is_none()
    }

    /// The anomalies that are violations, not warnings.
    pub fn failures(&self) -> impl Iterator<Item = &Anomaly> {
        self.anomalies.iter().filter(|anomaly| !anomaly.is_warning())
    }

    /// True when some anomaly of this kind ([`Anomaly::kind`]) was found.
    pub fn has(&self, kind: &str) -> bool {
        self.anomalies.iter().any(|anomaly| anomaly.kind() == kind)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.failures().count() + self.dropped;
        let verdict = match (failures, self.inconclusive) {
            (0, false) => "history OK".to_string(),
            (0, true) => "history OK so far (inconclusive)".to_string(),
            (1, _) => "1 anomaly".to_string(),
            (n, _) => format!("{n} anomalies"),
        };
        write!(
            f,
            "{verdict} (direct checks: {}; lineage search: {}",
            self.direct, self.lineage_search
        )?;
        fmt_steps(f, &self.lineage_search, self.lineage_steps)?;
        write!(f, "; search: {}", self.search)?;
        fmt_steps(f, &self.search, self.search_steps)?;
        f.write_str(")")?;
        for (i, anomaly) in self.anomalies.iter().enumerate() {
            write!(f, "\n  {}. {anomaly}", i + 1)?;
        }
        if self.dropped > 0 {
            write!(f, "\n  ... and {} more", self.dropped)?;
        }
        Ok(())
    }
}

fn fmt_steps(f: &mut fmt::Formatter<'_>, layer: &Layer, steps: u64) -> fmt::Result {
    match layer {
        Layer::Ran | Layer::GaveUp => write!(f, ", {steps} steps"),
        Layer::Skipped(_) => Ok(()),
    }
}

/// Checks `history` and the final `replicas` (may be empty) with the default config.
pub fn check(history: &History, replicas: &[ReplicaState]) -> Report {
    check_with(history, replicas, &CheckConfig::default())
}

/// Checks `history` and the final `replicas` (may be empty).
pub fn check_with(history: &History, replicas: &[ReplicaState], config: &CheckConfig) -> Report {
    let mut sink = Sink::new(history, config.max_anomalies_per_kind);
    let reference = replicas::compare(replicas, config.require_converged_replicas, &mut sink);
    let final_string = reference.map(|r| (Source::Replica(r.node), r.string.as_slice()));
    let ops = ops::normalize(history, &mut sink);

    let index = WriteIndex::build(&ops);
    let failures_before = sink.failures();
    let (direct, lineages) = match (config.direct, &index) {
        (false, _) => (Layer::Skipped("disabled".into()), Vec::new()),
        (true, Err(why)) => (Layer::Skipped(why.clone()), Vec::new()),
        (true, Ok(index)) => (Layer::Ran, direct::check(&ops, index, final_string, &mut sink)),
    };
    let lineage = if !config.lineage_search {
        LayerRun::skipped("disabled")
    } else if direct != Layer::Ran {
        LayerRun::skipped("it needs the direct checks")
    } else if sink.failures() > failures_before {
        LayerRun::skipped("the direct checks found violations")
    } else {
        run_lineage_search(&ops, &lineages, final_string.is_some(), config, &mut sink)
    };

    let search = if lineage.refuted {
        LayerRun::skipped("the lineage search found a violation")
    } else {
        let final_bytes = final_string.map(|(_, bytes)| bytes);
        run_search(&ops, index.as_ref().ok(), final_bytes, config, &mut sink)
    };
    finish(sink, direct, lineage, search)
}

/// What a complete layer did, and the warning to give if no layer concluded.
struct LayerRun {
    layer: Layer,
    steps: u64,
    /// True when it proved that no linearization exists.
    refuted: bool,
    /// [`Anomaly::SearchBudgetExceeded`] when it gave up.
    warning: Option<Anomaly>,
}

impl LayerRun {
    fn skipped(why: impl Into<String>) -> Self {
        LayerRun { layer: Layer::Skipped(why.into()), steps: 0, refuted: false, warning: None }
    }

    fn ran(steps: u64, refuted: bool) -> Self {
        LayerRun { layer: Layer::Ran, steps, refuted, warning: None }
    }

    fn gave_up(steps: u64, ops: usize, deepest: usize) -> Self {
        let warning = Some(Anomaly::SearchBudgetExceeded { steps, ops, deepest });
        LayerRun { layer: Layer::GaveUp, steps, refuted: false, warning }
    }
}

/// Says whether the history was decided, warns if not, and assembles the report.
fn finish(mut sink: Sink<'_>, direct: Layer, lineage: LayerRun, search: LayerRun) -> Report {
    let decided = lineage.layer == Layer::Ran || search.layer == Layer::Ran;
    let inconclusive = !decided && sink.failures() == 0;
    if inconclusive {
        let warnings: Vec<Anomaly> =
            [lineage.warning, search.warning].into_iter().flatten().collect();
        if warnings.is_empty() {
            let (lineages, search) = (&lineage.layer, &search.layer);
            let reason =
                format!("direct checks: {direct}; lineage search: {lineages}; search: {search}");
            sink.push(Anomaly::NotChecked { reason });
        }
        warnings.into_iter().for_each(|warning| sink.push(warning));
    }
    let (mut anomalies, dropped) = sink.finish();
    anomalies.sort_by_key(Anomaly::is_warning);
    Report {
        anomalies,
        dropped,
        inconclusive,
        direct,
        lineage_search: lineage.layer,
        lineage_steps: lineage.steps,
        search: search.layer,
        search_steps: search.steps,
    }
}

/// Runs the lineage search on the lineages the direct checks explained.
fn run_lineage_search(
    ops: &[NormOp<'_>],
    lineages: &[Lineage<'_>],
    has_final: bool,
    config: &CheckConfig,
    sink: &mut Sink<'_>,
) -> LayerRun {
    let total = linearizable::searched_ops(ops);
    let problem = match Problem::build(ops, lineages, has_final) {
        Ok(problem) => problem,
        Err(BuildError::Impossible(op)) => {
            let stuck = Stuck::Op(sink.op(op));
            let tail = Vec::new();
            sink.push(Anomaly::NotLinearizable { linearized: 0, total, stuck, tail, state_len: 0 });
            return LayerRun::ran(0, true);
        }
        Err(why) => return LayerRun::skipped(why.to_string()),
    };
    match lineage_search::search(&problem, config.lineage_max_steps) {
        LineageResult::Linearizable { steps } => LayerRun::ran(steps, false),
        LineageResult::NotLinearizable { steps, deepest } => {
            let stuck = deepest.stuck.map_or(Stuck::FinalState, |op| Stuck::Op(sink.op(op)));
            let tail = deepest.tail.iter().map(|&op| sink.op(op)).collect();
            let (linearized, state_len) = (deepest.placed, deepest.len as usize);
            sink.push(Anomaly::NotLinearizable { linearized, total, stuck, tail, state_len });
            LayerRun::ran(steps, true)
        }
        LineageResult::BudgetExceeded { steps, deepest } => {
            LayerRun::gave_up(steps, problem.total_ops(), deepest)
        }
    }
}

/// Runs the general search if the history is small enough, reporting into `sink`.
fn run_search(
    ops: &[NormOp<'_>],
    index: Option<&WriteIndex>,
    final_string: Option<&[u8]>,
    config: &CheckConfig,
    sink: &mut Sink<'_>,
) -> LayerRun {
    let searched = linearizable::searched_ops(ops);
    if config.search_max_ops == 0 {
        return LayerRun::skipped("disabled");
    }
    if searched > config.search_max_ops {
        return LayerRun::skipped(format!("{searched} ops, more than {}", config.search_max_ops));
    }
    let seen = index.map(|index| layout::observations(ops, index, final_string));
    let result = linearizable::search(ops, final_string, seen.as_deref(), config.search_max_steps);
    report_search(result, searched, sink)
}

fn report_search(result: SearchResult, total: usize, sink: &mut Sink<'_>) -> LayerRun {
    match result {
        SearchResult::Linearizable { steps } => LayerRun::ran(steps, false),
        SearchResult::NotLinearizable { steps, deepest } => {
            const TAIL: usize = 8;
            let skip = deepest.linearized.len().saturating_sub(TAIL);
            let tail = deepest.linearized[skip..].iter().map(|&op| sink.op(op)).collect();
            let stuck = match deepest.stuck {
                Some(op) => Stuck::Op(sink.op(op)),
                None => Stuck::FinalState,
            };
            let (linearized, state_len) = (deepest.linearized.len(), deepest.state_len);
            sink.push(Anomaly::NotLinearizable { linearized, total, stuck, tail, state_len });
            LayerRun::ran(steps, true)
        }
        SearchResult::BudgetExceeded { steps, deepest } => LayerRun::gave_up(steps, total, deepest),
    }
}
