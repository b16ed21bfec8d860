//! Numbers for the chaos test's report: how many ops of each kind succeeded, and how throughput
//! and latency compare between calm periods and periods when the nemesis had a fault active.
//!
//! Times are nanoseconds since the run began, as in chaos histories. Every op is placed at one
//! instant, its [`event_time`]: ok and failed ops when their answer arrived, unknown ops when
//! they were sent, because an unknown op's completion (if any) is only the client giving up and
//! says nothing about when the cluster stopped answering. An op is *faulty* when that instant
//! falls in a fault window and *calm* otherwise.
//!
//! Percentiles are exact (sorted samples, nearest rank) because a run holds at most a few
//! hundred thousand ops, and the report should not depend on a histogram's bucket precision.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use strstore_protocol::NodeId;

use crate::checker::{History, Op, OpKind, Outcome};

/// Nanoseconds per second, the unit of chaos histories and fault windows.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Nanoseconds per millisecond, the unit latencies are shown in.
const NANOS_PER_MS: f64 = 1_000_000.0;

/// A fault the nemesis injected, active from `start` to `end` (nanoseconds since the run
/// began). The window is half-open: an op completing exactly at `end` is calm again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// When the fault was injected.
    pub start: u64,
    /// When the fault was healed.
    pub end: u64,
    /// The kind of fault ("kill", "pause", "partition", "loss", "slow", ...), used to group
    /// counts and to color the timeline.
    pub kind: String,
    /// What exactly was done, for humans, e.g. "kill -9 n2 (master)".
    pub label: String,
    /// The nodes the fault acted on (one for a gray fault, an isolated node or a single
    /// kill; every node for a split or a cluster-wide loss).
    #[serde(default)]
    pub nodes: Vec<NodeId>,
    /// What showed, before healing, that the fault acted (counters, a silent node, a view
    /// change); empty when nothing did, which the report flags.
    #[serde(default)]
    pub effect: String,
}

impl FaultWindow {
    /// True when `time` lies in `[start, end)`.
    pub fn contains(&self, time: u64) -> bool {
        self.start <= time && time < self.end
    }
}

/// The instant an op is attributed to (see the module doc): its completion for ok and failed
/// ops, its invocation for unknown ones (and for a malformed op missing its completion).
pub fn event_time(op: &Op) -> u64 {
    match op.outcome {
        Outcome::Unknown => op.invoke,
        Outcome::Ok(_) | Outcome::Failed(_) => op.complete.unwrap_or(op.invoke),
    }
}

/// The latency of an op that got an answer, in nanoseconds.
pub fn latency_nanos(op: &Op) -> Option<u64> {
    op.complete.map(|complete| complete.saturating_sub(op.invoke))
}

/// How many ops ended in each outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Ops that took effect and were acknowledged.
    pub ok: u64,
    /// Ops the server definitely refused.
    pub failed: u64,
    /// Ops whose fate the client never learned.
    pub unknown: u64,
}

impl OutcomeCounts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(_) => self.ok += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            ok: self.ok + other.ok,
            failed: self.failed + other.failed,
            unknown: self.unknown + other.unknown,
        }
    }
}

/// Op counts by kind × outcome, so the report shows whether reads and writes fared alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// `append` ops.
    pub append: OutcomeCounts,
    /// `set` ops.
    pub set: OutcomeCounts,
    /// `get` ops.
    pub get: OutcomeCounts,
}

impl OpCounts {
    fn add(&mut self, op: &Op) {
        let counts = match op.op {
            OpKind::Append(_) => &mut self.append,
            OpKind::Set(_) => &mut self.set,
            OpKind::Get => &mut self.get,
        };
        counts.add(&op.outcome);
    }

    /// All kinds together.
    pub fn total(&self) -> OutcomeCounts {
        self.append.plus(self.set).plus(self.get)
    }
}

/// Latency percentiles of ok ops, in nanoseconds (exact, nearest rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_nanos: u64,
    /// 90th percentile.
    pub p90_nanos: u64,
    /// 99th percentile.
    pub p99_nanos: u64,
    /// Slowest op.
    pub max_nanos: u64,
}

impl Latency {
    /// Percentiles of `samples` (sorted here), or `None` when there are none.
    pub fn of(mut samples: Vec<u64>) -> Option<Self> {
        samples.sort_unstable();
        Some(Self {
            p50_nanos: percentile(&samples, 50)?,
            p90_nanos: percentile(&samples, 90)?,
            p99_nanos: percentile(&samples, 99)?,
            max_nanos: *samples.last()?,
        })
    }
}

/// The nearest-rank percentile: the smallest sample with at least `p`% of samples ≤ it.
fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    let n = sorted.len() as u64;
    let rank = (p * n).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

/// What happened during one kind of period (calm, or with a fault active).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeriodStats {
    /// Total length of these periods within `[0, run_end]`.
    pub seconds: f64,
    /// Ok ops attributed to these periods.
    pub ok: u64,
    /// `ok / seconds`, or 0 when the period is empty.
    pub ops_per_sec: f64,
    /// Latency of those ok ops; `None` when there were none.
    pub latency: Option<Latency>,
    /// Failed ops attributed to these periods.
    pub failed: u64,
    /// Unknown ops attributed to these periods (by invocation time).
    pub unknown: u64,
}

impl PeriodStats {
    fn from_ops<'a>(ops: impl Iterator<Item = &'a Op>, seconds: f64) -> Self {
        let mut counts = OutcomeCounts::default();
        let mut latencies = Vec::new();
        for op in ops {
            counts.add(&op.outcome);
            if matches!(op.outcome, Outcome::Ok(_)) {
                latencies.extend(latency_nanos(op));
            }
        }
        let ops_per_sec = if seconds > 0.0 { counts.ok as f64 / seconds } else { 0.0 };
        Self {
            seconds,
            ok: counts.ok,
            ops_per_sec,
            latency: Latency::of(latencies),
            failed: counts.failed,
            unknown: counts.unknown,
        }
    }
}

/// What the nemesis did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultStats {
    /// Number of fault windows of each kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Seconds within `[0, run_end]` with at least one fault active (overlaps count once).
    pub faulty_seconds: f64,
}

/// The chaos run in numbers; [`fmt::Display`] renders it for a terminal, serde as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Length of the run.
    pub run_seconds: f64,
    /// Every op by kind and outcome.
    pub ops: OpCounts,
    /// Ops attributed to instants with no fault active.
    pub calm: PeriodStats,
    /// Ops attributed to instants with at least one fault active.
    pub faulty: PeriodStats,
    /// The faults themselves.
    pub faults: FaultStats,
    /// Each kind of fault on its own, from [`SETTLE_IN`] after each window's start.
    #[serde(default)]
    pub by_kind: Vec<KindStats>,
    /// Every fault that acted on one node only (a kill, a pause, an isolated node, a gray
    /// fault), from [`SETTLE_IN`] after its start: what clients keep when one node fails.
    #[serde(default)]
    pub one_node: Option<KindStats>,
}

/// How long after a fault starts its own throughput is measured from: the time the
/// cluster is given to notice (a failure timeout, a view change).
pub const SETTLE_IN: u64 = NANOS_PER_SEC;

/// Throughput during the windows of one kind of fault (or one group of kinds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindStats {
    pub kind: String,
    /// How many windows of that kind there were.
    pub windows: u64,
    /// Their ops, from [`SETTLE_IN`] after each start to its end.
    pub period: PeriodStats,
    /// `period.ops_per_sec` as a percentage of calm throughput.
    pub kept_percent: f64,
}

impl KindStats {
    fn of<'a>(
        kind: &str,
        history: &History,
        windows: impl Iterator<Item = &'a FaultWindow>,
        calm: &PeriodStats,
        run_end: u64,
    ) -> Option<Self> {
        let windows: Vec<&FaultWindow> = windows.collect();
        let settled = windows.iter().map(|w| (w.start.saturating_add(SETTLE_IN), w.end));
        let union = FaultUnion::new(settled);
        let seconds = union.nanos_within(run_end) as f64 / NANOS_PER_SEC as f64;
        if windows.is_empty() {
            return None;
        }
        let ops = history.ops.iter().filter(|op| union.contains(event_time(op)));
        let period = PeriodStats::from_ops(ops, seconds);
        let kept_percent = if calm.ops_per_sec > 0.0 {
            100.0 * period.ops_per_sec / calm.ops_per_sec
        } else {
            0.0
        };
        Some(Self { kind: kind.to_string(), windows: windows.len() as u64, period, kept_percent })
    }
}

/// Computes the [`Summary`] of a chaos run that lasted `run_end` nanoseconds.
pub fn summarize(history: &History, faults: &[FaultWindow], run_end: u64) -> Summary {
    let union = FaultUnion::new(faults.iter().map(|f| (f.start, f.end)));
    let faulty_seconds = union.nanos_within(run_end) as f64 / NANOS_PER_SEC as f64;
    let run_seconds = run_end as f64 / NANOS_PER_SEC as f64;
    let mut ops = OpCounts::default();
    history.ops.iter().for_each(|op| ops.add(op));
    let (faulty_ops, calm_ops): (Vec<&Op>, Vec<&Op>) =
        history.ops.iter().partition(|op| union.contains(event_time(op)));
    let calm = PeriodStats::from_ops(calm_ops.into_iter(), run_seconds - faulty_seconds);
    let by_kinds = count_kinds(faults);
    let by_kind = by_kinds
        .keys()
        .filter_map(|kind| {
            let windows = faults.iter().filter(|f| &f.kind == kind);
            KindStats::of(kind, history, windows, &calm, run_end)
        })
        .collect();
    let one_node_windows = faults.iter().filter(|f| f.nodes.len() == 1);
    let one_node = KindStats::of("one node", history, one_node_windows, &calm, run_end);
    Summary {
        run_seconds,
        ops,
        faulty: PeriodStats::from_ops(faulty_ops.into_iter(), faulty_seconds),
        calm,
        faults: FaultStats { by_kind: by_kinds, faulty_seconds },
        by_kind,
        one_node,
    }
}

fn count_kinds(faults: &[FaultWindow]) -> BTreeMap<String, u64> {
    let mut by_kind = BTreeMap::new();
    for fault in faults {
        *by_kind.entry(fault.kind.clone()).or_insert(0) += 1;
    }
    by_kind
}

/// The union of fault windows as sorted, disjoint half-open intervals, so that classifying
/// each of 100k ops is a binary search rather than a scan over every window.
struct FaultUnion {
    intervals: Vec<(u64, u64)>,
}

impl FaultUnion {
    fn new(windows: impl Iterator<Item = (u64, u64)>) -> Self {
        let mut windows: Vec<(u64, u64)> = windows.filter(|(start, end)| start < end).collect();
        windows.sort_unstable();
        let mut intervals: Vec<(u64, u64)> = Vec::with_capacity(windows.len());
        for (start, end) in windows {
            match intervals.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => intervals.push((start, end)),
            }
        }
        Self { intervals }
    }

    fn contains(&self, time: u64) -> bool {
        let after = self.intervals.partition_point(|&(start, _)| start <= time);
        after > 0 && time < self.intervals[after - 1].1
    }

    fn nanos_within(&self, run_end: u64) -> u64 {
        self.intervals.iter().map(|&(start, end)| end.min(run_end).saturating_sub(start)).sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "run: {:.1} s, {}", self.run_seconds, self.faults)?;
        writeln!(f)?;
        write_period_table(f, &self.calm, &self.faulty)?;
        if !self.by_kind.is_empty() {
            writeln!(f)?;
            writeln!(f, "from 1 s after each fault's start, as a share of calm throughput:")?;
            for kind in self.by_kind.iter().chain(&self.one_node) {
                writeln!(f, "  {kind}")?;
            }
        }
        writeln!(f)?;
        write!(f, "{}", self.ops)
    }
}

impl fmt::Display for KindStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p99 = self
            .period
            .latency
            .map_or("-".to_string(), |l| format!("{:.1}", l.p99_nanos as f64 / NANOS_PER_MS));
        write!(
            f,
            "{:<10}{:>3} x {:>6.1} s {:>9.1} ops/s {:>5.0} % kept  p99 {p99} ms",
            self.kind,
            self.windows,
            self.period.seconds,
            self.period.ops_per_sec,
            self.kept_percent
        )
    }
}

impl fmt::Display for FaultStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: u64 = self.by_kind.values().sum();
        write!(f, "{total} faults")?;
        if !self.by_kind.is_empty() {
            let kinds: Vec<String> =
                self.by_kind.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        write!(f, ", {:.1} s with a fault active", self.faulty_seconds)
    }
}

fn write_period_table(
    f: &mut fmt::Formatter<'_>,
    calm: &PeriodStats,
    faulty: &PeriodStats,
) -> fmt::Result {
    writeln!(
        f,
        "{:<14}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>8}{:>9}",
        "period", "seconds", "ok ops", "ops/s", "p50 ms", "p99 ms", "max ms", "failed", "unknown"
    )?;
    write_period_row(f, "calm", calm)?;
    write_period_row(f, "during faults", faulty)
}

fn write_period_row(f: &mut fmt::Formatter<'_>, name: &str, period: &PeriodStats) -> fmt::Result {
    let ms = |pick: fn(&Latency) -> u64| match &period.latency {
        Some(latency) => format!("{:.1}", pick(latency) as f64 / NANOS_PER_MS),
        None => "-".to_string(),
    };
    writeln!(
        f,
        "{:<14}{:>9.1}{:>9}{:>9.1}{:>9}{:>9}{:>9}{:>8}{:>9}",
        name,
        period.seconds,
        period.ok,
        period.ops_per_sec,
        ms(|l| l.p50_nanos),
        ms(|l| l.p99_nanos),
        ms(|l| l.max_nanos),
        period.failed,
        period.unknown
    )
}

impl fmt::Display for OpCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<14}{:>9}{:>9}{:>9}", "ops", "ok", "failed", "unknown")?;
        let rows = [("append", self.append), ("set", self.set), ("get", self.get)];
        for (name, counts) in rows.into_iter().chain([("total", self.total())]) {
            writeln!(f, "{name:<14}{:>9}{:>9}{:>9}", counts.ok, counts.failed, counts.unknown)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::OkValue;

    const MS: u64 = 1_000_000;
    const S: u64 = NANOS_PER_SEC;

    fn op(kind: OpKind, invoke: u64, complete: Option<u64>, outcome: Outcome) -> Op {
        Op { client: 1, op: kind, invoke, complete, outcome, node: Some(1) }
    }

    fn ok_append(complete: u64, latency: u64) -> Op {
        let outcome = Outcome::Ok(OkValue::Len(1));
        op(OpKind::Append(b"x".to_vec()), complete - latency, Some(complete), outcome)
    }

    fn ok_get(complete: u64, latency: u64) -> Op {
        let outcome = Outcome::Ok(OkValue::Value(b"x".to_vec()));
        op(OpKind::Get, complete - latency, Some(complete), outcome)
    }

    fn fault(start: u64, end: u64, kind: &str) -> FaultWindow {
        FaultWindow {
            start,
            end,
            kind: kind.into(),
            label: format!("{kind} n2"),
            nodes: vec![2],
            effect: String::new(),
        }
    }

    /// 30 s run; faults cover [10 s, 20 s) as two overlapping windows.
    fn sample() -> (History, Vec<FaultWindow>) {
        let history = History::from_iter([
            ok_append(S, MS),
            ok_append(2 * S, 2 * MS),
            ok_get(3 * S, 3 * MS),
            ok_append(25 * S, 4 * MS),
            ok_append(12 * S, 10 * MS),
            ok_get(15 * S, 20 * MS),
            // Completes exactly when the faults end: calm again.
            ok_append(20 * S, 5 * MS),
            op(OpKind::Set(b"y".to_vec()), 11 * S - MS, Some(11 * S), Outcome::Failed("no".into())),
            op(OpKind::Get, 5 * S, None, Outcome::Unknown),
            // Invoked during a fault, gave up after it: faulty, by invocation time.
            op(OpKind::Append(b"z".to_vec()), 19 * S, Some(21 * S), Outcome::Unknown),
        ]);
        let faults = vec![fault(10 * S, 15 * S, "partition"), fault(12 * S, 20 * S, "kill")];
        (history, faults)
    }

    #[test]
    fn each_kind_is_measured_from_a_second_after_its_start() {
        let (history, mut faults) = sample();
        faults.push(FaultWindow { nodes: vec![1, 2, 3], ..fault(24 * S, 27 * S, "loss") });
        let summary = summarize(&history, &faults, 30 * S);
        let kind = |name: &str| summary.by_kind.iter().find(|k| k.kind == name).unwrap();
        // Partition: [11, 15) holds the append at 12 s and the failed set at 11 s.
        assert_eq!((kind("partition").period.seconds, kind("partition").period.ok), (4.0, 1));
        assert_eq!(kind("partition").period.failed, 1);
        // Kill: [13, 20) holds the get at 15 s; the append ending at 20 s is calm.
        assert_eq!((kind("kill").period.seconds, kind("kill").period.ok), (7.0, 1));
        assert_eq!((kind("loss").period.seconds, kind("loss").period.ok), (2.0, 1));
        // Calm: 4 ok ops in 30 - 10 - 3 = 17 s.
        let calm = 4.0 / 17.0;
        assert!((kind("partition").kept_percent - 100.0 * 0.25 / calm).abs() < 1e-9);
        // One-node faults leave out the cluster-wide loss: [11, 20), two ok ops.
        let one = summary.one_node.as_ref().expect("one-node faults");
        assert_eq!((one.windows, one.period.seconds, one.period.ok), (2, 9.0, 2));
        assert!(summary.to_string().contains("as a share of calm throughput"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let latency = Latency::of((1..=100).rev().collect()).unwrap();
        assert_eq!(
            latency,
            Latency { p50_nanos: 50, p90_nanos: 90, p99_nanos: 99, max_nanos: 100 }
        );
        let single = Latency::of(vec![7]).unwrap();
        assert_eq!((single.p50_nanos, single.p99_nanos, single.max_nanos), (7, 7, 7));
        assert_eq!(Latency::of(Vec::new()), None);
    }

    #[test]
    fn splits_calm_and_faulty_periods() {
        let (history, faults) = sample();
        let summary = summarize(&history, &faults, 30 * S);
        assert_eq!(summary.run_seconds, 30.0);
        assert_eq!(summary.faults.faulty_seconds, 10.0);
        assert_eq!(
            summary.faults.by_kind,
            BTreeMap::from([("kill".into(), 1), ("partition".into(), 1)])
        );

        let calm = &summary.calm;
        assert_eq!((calm.seconds, calm.ok, calm.failed, calm.unknown), (20.0, 5, 0, 1));
        assert_eq!(calm.ops_per_sec, 0.25);
        let expected =
            Latency { p50_nanos: 3 * MS, p90_nanos: 5 * MS, p99_nanos: 5 * MS, max_nanos: 5 * MS };
        assert_eq!(calm.latency, Some(expected));

        let faulty = &summary.faulty;
        assert_eq!((faulty.seconds, faulty.ok, faulty.failed, faulty.unknown), (10.0, 2, 1, 1));
        assert_eq!(faulty.ops_per_sec, 0.2);
        let expected = Latency {
            p50_nanos: 10 * MS,
            p90_nanos: 20 * MS,
            p99_nanos: 20 * MS,
            max_nanos: 20 * MS,
        };
        assert_eq!(faulty.latency, Some(expected));
    }

    #[test]
    fn counts_ops_by_kind_and_outcome() {
        let (history, faults) = sample();
        let ops = summarize(&history, &faults, 30 * S).ops;
        assert_eq!(ops.append, OutcomeCounts { ok: 5, failed: 0, unknown: 1 });
        assert_eq!(ops.set, OutcomeCounts { ok: 0, failed: 1, unknown: 0 });
        assert_eq!(ops.get, OutcomeCounts { ok: 2, failed: 0, unknown: 1 });
        assert_eq!(ops.total(), OutcomeCounts { ok: 7, failed: 1, unknown: 2 });
    }

    #[test]
    fn fault_time_is_clipped_to_the_run() {
        let faults = [
            fault(5 * S, 50 * S, "pause"),
            fault(7 * S, 8 * S, "slow"),
            fault(9 * S, 9 * S, "loss"),
        ];
        let summary = summarize(&History::new(), &faults, 10 * S);
        assert_eq!(summary.faults.faulty_seconds, 5.0);
        assert_eq!(summary.calm.seconds, 5.0);
        assert_eq!(summary.faults.by_kind.values().sum::<u64>(), 3);
    }

    #[test]
    fn empty_history_and_run_do_not_divide_by_zero() {
        let summary = summarize(&History::new(), &[], 0);
        assert_eq!(summary.calm, PeriodStats::default());
        assert_eq!(summary.faulty, PeriodStats::default());
        let text = summary.to_string();
        assert!(text.contains("0 faults"), "{text}");
        assert!(text.contains("calm"), "{text}");
    }

    #[test]
    fn display_is_an_aligned_table_and_json_serializes() {
        let (history, faults) = sample();
        let summary = summarize(&history, &faults, 30 * S);
        let text = summary.to_string();
        println!("{text}");
        assert!(text.starts_with("run: 30.0 s, 2 faults (kill 1, partition 1), 10.0 s"), "{text}");
        let calm = text.lines().find(|l| l.starts_with("calm")).unwrap();
        let faulty = text.lines().find(|l| l.starts_with("during faults")).unwrap();
        assert_eq!(calm.len(), faulty.len(), "{text}");
        let cells: Vec<&str> = faulty.split_whitespace().collect();
        assert_eq!(
            cells,
            ["during", "faults", "10.0", "2", "0.2", "10.0", "20.0", "20.0", "1", "1"]
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["faulty"]["latency"]["p50_nanos"], 10 * MS);
        let back: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(back, summary);
    }
}
