//! An SVG timeline of a chaos run, to see at a glance what each fault did to the clients.
//!
//! Two panels share the time axis: ok, failed and unknown ops per second on top, and the
//! latency of every ok op (log scale) below. Fault windows are shaded across both panels,
//! colored by kind, with the nemesis' label as a tooltip. Ops are placed as in the summary
//! ([`event_time`]): ok and failed ops at their completion, unknown ops at their invocation.
//!
//! The SVG is written by hand, not with plotters (which draws the benchmark report): its
//! SVG backend (plotters-svg 0.3.7) emits bare shapes and text, with no `<title>` and no
//! `class`, and this chart lives by both. Every fault window carries the nemesis' full label
//! as a tooltip (the shading only has room for a few letters), every second with failed or
//! unknown ops its count, and the classes (`fault-kill`, `rate-failed`, ...) are what the
//! tests below and a reader's browser search find. It is standalone (no scripts, no
//! external styles) so it can be attached to a CI run as is.

use std::collections::BTreeSet;
use std::fmt::{self, Write};

use super::stats::{event_time, latency_nanos, FaultWindow, NANOS_PER_SEC};
use crate::checker::{History, Op, OpKind, Outcome};

/// Canvas size: wide enough to separate one-second buckets in a ten-minute run.
const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 620.0;
/// Room for the y tick labels and the rotated axis titles.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const RATE_PANEL: Panel = Panel { top: 70.0, height: 210.0 };
const LATENCY_PANEL: Panel = Panel { top: 330.0, height: 226.0 };

/// More dots than this add bytes, not information: beyond it the scatter is subsampled, which
/// keeps a 100k-op run's file around a megabyte.
const MAX_DOTS: usize = 20_000;
/// The bottom of the latency axis; faster ops are drawn on it.
const MIN_LATENCY_MS: f64 = 0.1;

const OK_COLOR: &str = "#1f77b4";
const FAILED_COLOR: &str = "#d62728";
const UNKNOWN_COLOR: &str = "#ff7f0e";
const WRITE_DOT_COLOR: &str = "#1f77b4";
const GET_DOT_COLOR: &str = "#ff7f0e";
/// Shading per fault kind, chosen away from the series colors so that a red line is always
/// a failure and never a kill.
const FAULT_COLORS: [(&str, &str); 8] = [
    ("kill", "#8c564b"),
    ("pause", "#9467bd"),
    ("flap", "#c5b0d5"),
    ("partition", "#2ca02c"),
    ("loss", "#bcbd22"),
    ("lossy", "#dbdb8d"),
    ("slow", "#17becf"),
    ("disk", "#e377c2"),
];
const OTHER_FAULT_COLOR: &str = "#7f7f7f";

/// Renders the timeline of a run that lasted `run_end` nanoseconds as a standalone SVG
/// document (about 1200×620). Never panics, even for an empty history or no faults.
pub fn render_svg(history: &History, faults: &[FaultWindow], run_end: u64) -> String {
    let axis = TimeAxis::new(history, run_end);
    let mut svg = String::new();
    draw(&mut svg, history, faults, &axis).expect("formatting into a String cannot fail");
    svg
}

fn draw(
    svg: &mut String,
    history: &History,
    faults: &[FaultWindow],
    axis: &TimeAxis,
) -> fmt::Result {
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" {}>"#,
        format_args!(r#"viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11""#)
    )?;
    writeln!(svg, r#"<rect class="background" width="100%" height="100%" fill="white"/>"#)?;
    draw_title(svg, history, faults, axis)?;
    draw_fault_legend(svg, faults)?;
    for panel in [RATE_PANEL, LATENCY_PANEL] {
        draw_time_grid(svg, axis, panel)?;
    }
    draw_fault_windows(svg, faults, axis)?;
    draw_rate_panel(svg, history, axis)?;
    draw_latency_panel(svg, history, axis)?;
    let center = (LEFT + WIDTH - RIGHT) / 2.0;
    text(svg, (center, HEIGHT - 14.0), MIDDLE, "time since start (s)")?;
    svg.write_str("</svg>")
}

/// Attributes of the light grid lines.
const GRID: &str = r##"stroke="#e4e4e4""##;
/// Attributes centering a text on its anchor point.
const MIDDLE: &str = r#"text-anchor="middle""#;
/// Attributes ending a text at its anchor point.
const END: &str = r#"text-anchor="end""#;

/// A `<text>` at `at`, with extra `attrs`; the content is escaped here.
fn text(svg: &mut String, at: (f64, f64), attrs: &str, content: &str) -> fmt::Result {
    let (x, y) = at;
    let space = if attrs.is_empty() { "" } else { " " };
    writeln!(svg, r#"<text x="{x:.1}" y="{y:.1}"{space}{attrs}>{}</text>"#, escape(content))
}

/// A `<line>` from `from` to `to`, with extra `attrs`.
fn line(svg: &mut String, from: (f64, f64), to: (f64, f64), attrs: &str) -> fmt::Result {
    let ((x1, y1), (x2, y2)) = (from, to);
    writeln!(svg, r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {attrs}/>"#)
}

/// A plot area; both panels span the same horizontal range.
#[derive(Clone, Copy)]
struct Panel {
    top: f64,
    height: f64,
}

impl Panel {
    fn bottom(&self) -> f64 {
        self.top + self.height
    }

    /// Draws the frame, the y axis title (rotated) and horizontal grid lines with labels.
    fn draw_y_axis(&self, svg: &mut String, title: &str, ticks: &[(f64, String)]) -> fmt::Result {
        for (y, label) in ticks {
            line(svg, (LEFT, *y), (WIDTH - RIGHT, *y), GRID)?;
            text(svg, (LEFT - 5.0, y + 4.0), END, label)?;
        }
        let (top, width, height) = (self.top, WIDTH - RIGHT - LEFT, self.height);
        write!(svg, r#"<rect class="frame" x="{LEFT}" y="{top}" "#)?;
        writeln!(svg, r##"width="{width}" height="{height}" fill="none" stroke="#888"/>"##)?;
        let middle = self.top + self.height / 2.0;
        let rotate = format!(r#"{MIDDLE} transform="rotate(-90 16 {middle:.1})""#);
        text(svg, (16.0, middle), &rotate, title)
    }
}

/// Maps times (nanoseconds) to x coordinates over `[0, end]`, where `end` covers the run and
/// every op, and is at least one second so that nothing divides by zero.
struct TimeAxis {
    end_secs: f64,
}

impl TimeAxis {
    fn new(history: &History, run_end: u64) -> Self {
        let last_op = history.ops.iter().map(|op| event_time(op).max(op.complete.unwrap_or(0)));
        let end = last_op.fold(run_end, u64::max);
        Self { end_secs: (end as f64 / NANOS_PER_SEC as f64).max(1.0) }
    }

    fn x(&self, nanos: u64) -> f64 {
        self.x_secs(nanos as f64 / NANOS_PER_SEC as f64)
    }

    fn x_secs(&self, secs: f64) -> f64 {
        LEFT + secs.clamp(0.0, self.end_secs) / self.end_secs * (WIDTH - RIGHT - LEFT)
    }

    /// Number of one-second buckets.
    fn buckets(&self) -> usize {
        self.end_secs.ceil() as usize
    }

    fn bucket(&self, nanos: u64) -> usize {
        ((nanos / NANOS_PER_SEC) as usize).min(self.buckets() - 1)
    }
}

fn draw_title(
    svg: &mut String,
    history: &History,
    faults: &[FaultWindow],
    axis: &TimeAxis,
) -> fmt::Result {
    let count =
        |pick: fn(&Outcome) -> bool| history.ops.iter().filter(|op| pick(&op.outcome)).count();
    let ok = count(|o| matches!(o, Outcome::Ok(_)));
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    let unknown = count(|o| matches!(o, Outcome::Unknown));
    let (ops, faults, secs) = (history.len(), faults.len(), axis.end_secs);
    let title = format!(
        "strstore chaos run: {ops} ops ({ok} ok, {failed} failed, {unknown} unknown), \
         {faults} faults, {secs:.0} s"
    );
    text(svg, (LEFT, 24.0), r#"class="title" font-size="16" font-weight="bold""#, &title)
}

/// The fault kinds present: the known ones in a fixed order, then any others sorted.
fn fault_kinds(faults: &[FaultWindow]) -> Vec<&str> {
    let present: BTreeSet<&str> = faults.iter().map(|f| f.kind.as_str()).collect();
    let known = FAULT_COLORS.iter().map(|(kind, _)| *kind).filter(|kind| present.contains(kind));
    let other = present.iter().copied().filter(|kind| !FAULT_COLORS.iter().any(|(k, _)| k == kind));
    known.chain(other).collect()
}

fn fault_color(kind: &str) -> &'static str {
    FAULT_COLORS.iter().find(|(k, _)| *k == kind).map_or(OTHER_FAULT_COLOR, |(_, color)| color)
}

fn draw_fault_legend(svg: &mut String, faults: &[FaultWindow]) -> fmt::Result {
    let kinds = fault_kinds(faults);
    text(svg, (LEFT, 46.0), "", "faults:")?;
    let mut x = LEFT + 45.0;
    if kinds.is_empty() {
        return text(svg, (x, 46.0), "", "none");
    }
    for kind in kinds {
        let color = fault_color(kind);
        write!(svg, r#"<rect class="legend" x="{x:.1}" y="37" width="14" height="11" "#)?;
        writeln!(svg, r#"fill="{color}" fill-opacity="0.35"/>"#)?;
        text(svg, (x + 18.0, 46.0), "", kind)?;
        x += 30.0 + 6.5 * kind.chars().count() as f64;
    }
    Ok(())
}

/// Vertical grid lines and time labels under a panel.
fn draw_time_grid(svg: &mut String, axis: &TimeAxis, panel: Panel) -> fmt::Result {
    let step = nice_step(axis.end_secs, 12.0);
    let ticks = (0..).map(|i| i as f64 * step).take_while(|&t| t <= axis.end_secs + step * 1e-9);
    for secs in ticks {
        let x = axis.x_secs(secs);
        line(svg, (x, panel.top), (x, panel.bottom() + 4.0), GRID)?;
        text(svg, (x, panel.bottom() + 16.0), MIDDLE, &format_number(secs))?;
    }
    Ok(())
}

fn draw_fault_windows(svg: &mut String, faults: &[FaultWindow], axis: &TimeAxis) -> fmt::Result {
    let (top, bottom) = (RATE_PANEL.top, LATENCY_PANEL.bottom());
    for (i, fault) in faults.iter().enumerate() {
        let x0 = axis.x(fault.start);
        let width = (axis.x(fault.end) - x0).max(1.0);
        let color = fault_color(&fault.kind);
        let class = css_class(&fault.kind);
        write!(svg, r#"<rect class="fault fault-{class}" x="{x0:.1}" y="{top}" "#)?;
        write!(svg, r#"width="{width:.1}" height="{}" "#, bottom - top)?;
        writeln!(svg, r#"fill="{color}" fill-opacity="0.18">"#)?;
        writeln!(svg, "<title>{}</title></rect>", escape(&fault.label))?;
        // Staggered so that labels of overlapping or adjacent windows do not collide.
        let y = top + 12.0 + (i % 3) as f64 * 12.0;
        let attrs = format!(r#"font-size="10" fill="{color}""#);
        text(svg, (x0 + 2.0, y), &attrs, &short_label(fault, width))?;
    }
    Ok(())
}

/// The label if it fits in the window (about 5.5 px per 10 px character), else the kind, cut
/// to fit.
fn short_label(fault: &FaultWindow, width: f64) -> String {
    let fits = ((width - 2.0) / 5.5).max(1.0) as usize;
    if fault.label.chars().count() <= fits {
        return fault.label.clone();
    }
    fault.kind.chars().take(fits).collect()
}

/// Ops per second by outcome, in one-second buckets.
struct Rates {
    ok: Vec<u64>,
    failed: Vec<u64>,
    unknown: Vec<u64>,
}

impl Rates {
    fn new(history: &History, axis: &TimeAxis) -> Self {
        let zeros = vec![0; axis.buckets()];
        let mut rates = Self { ok: zeros.clone(), failed: zeros.clone(), unknown: zeros };
        for op in &history.ops {
            let series = match op.outcome {
                Outcome::Ok(_) => &mut rates.ok,
                Outcome::Failed(_) => &mut rates.failed,
                Outcome::Unknown => &mut rates.unknown,
            };
            series[axis.bucket(event_time(op))] += 1;
        }
        rates
    }

    fn max(&self) -> u64 {
        self.ok.iter().chain(&self.failed).chain(&self.unknown).copied().max().unwrap_or(0)
    }
}

fn draw_rate_panel(svg: &mut String, history: &History, axis: &TimeAxis) -> fmt::Result {
    let rates = Rates::new(history, axis);
    // Whole ops only: an empty run still gets a 0..1 axis rather than 0..0.2. The headroom
    // keeps a steady ok line off the frame.
    let max = (rates.max() as f64 * 1.1).max(1.0);
    let step = nice_step(max, 5.0).max(1.0);
    let top = (max / step).ceil() * step;
    let y = |count: u64| RATE_PANEL.bottom() - count as f64 / top * RATE_PANEL.height;
    let ticks: Vec<(f64, String)> = (0..)
        .map(|i| i * step as u64)
        .take_while(|&v| v as f64 <= top)
        .map(|v| (y(v), v.to_string()))
        .collect();
    RATE_PANEL.draw_y_axis(svg, "ops per second", &ticks)?;
    let series = [
        ("ok", &rates.ok, OK_COLOR),
        ("failed", &rates.failed, FAILED_COLOR),
        ("unknown", &rates.unknown, UNKNOWN_COLOR),
    ];
    for (name, counts, color) in series {
        let points: Vec<(f64, f64)> =
            counts.iter().enumerate().map(|(i, &n)| (axis.x_secs(i as f64 + 0.5), y(n))).collect();
        draw_rate_line(svg, name, color, &points)?;
        if name != "ok" {
            draw_rate_marks(svg, name, color, counts, &points)?;
        }
    }
    let entries = series.map(|(name, _, color)| (name, color));
    draw_series_legend(svg, RATE_PANEL, &entries)
}

fn draw_rate_line(svg: &mut String, name: &str, color: &str, points: &[(f64, f64)]) -> fmt::Result {
    write!(svg, r#"<polyline class="rate-{name}" fill="none" stroke="{color}" "#)?;
    svg.push_str(r#"stroke-width="1.4" stroke-linejoin="round" points=""#);
    for (x, y) in points {
        write!(svg, "{x:.1},{y:.1} ")?;
    }
    writeln!(svg, r#""/>"#)
}

/// A dot on each second with failed or unknown ops: a handful of timeouts next to hundreds of
/// ok ops per second would otherwise be lost in the baseline. The tooltip gives the count.
fn draw_rate_marks(
    svg: &mut String,
    name: &str,
    color: &str,
    counts: &[u64],
    points: &[(f64, f64)],
) -> fmt::Result {
    writeln!(svg, r#"<g class="marks-{name}" fill="{color}">"#)?;
    for (second, (&n, (x, y))) in counts.iter().zip(points).enumerate() {
        if n > 0 {
            writeln!(svg, r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5">"#)?;
            writeln!(svg, "<title>{second} s: {n} {name}</title></circle>")?;
        }
    }
    writeln!(svg, "</g>")
}

/// Line-and-name legend entries right-aligned just above a panel.
fn draw_series_legend(svg: &mut String, panel: Panel, entries: &[(&str, &str)]) -> fmt::Result {
    let y = panel.top - 6.0;
    let mut x = WIDTH - RIGHT;
    for (name, color) in entries.iter().rev() {
        x -= 28.0 + 6.5 * name.chars().count() as f64;
        let stroke = format!(r#"stroke="{color}" stroke-width="3""#);
        line(svg, (x, y - 4.0), (x + 14.0, y - 4.0), &stroke)?;
        text(svg, (x + 18.0, y), "", name)?;
    }
    Ok(())
}

/// One ok op in the latency scatter.
#[derive(Clone, Copy)]
struct Dot {
    complete: u64,
    latency_nanos: u64,
    is_get: bool,
}

impl Dot {
    fn of(op: &Op) -> Option<Self> {
        if !matches!(op.outcome, Outcome::Ok(_)) {
            return None;
        }
        let complete = op.complete?;
        Some(Self {
            complete,
            latency_nanos: latency_nanos(op)?,
            is_get: matches!(op.op, OpKind::Get),
        })
    }

    fn latency_ms(&self) -> f64 {
        self.latency_nanos as f64 / 1e6
    }
}

/// Every k-th dot in completion order, plus the slowest dot of each one-second bucket so that
/// latency spikes survive the thinning. Deterministic: the same history gives the same file.
fn subsample(mut dots: Vec<Dot>, axis: &TimeAxis) -> Vec<Dot> {
    if dots.len() <= MAX_DOTS {
        return dots;
    }
    dots.sort_by_key(|dot| dot.complete);
    let k = dots.len().div_ceil(MAX_DOTS);
    let mut slowest: Vec<Option<usize>> = vec![None; axis.buckets()];
    for (i, dot) in dots.iter().enumerate() {
        let best = &mut slowest[axis.bucket(dot.complete)];
        if best.is_none_or(|b| dots[b].latency_nanos < dot.latency_nanos) {
            *best = Some(i);
        }
    }
    let mut keep: Vec<bool> = (0..dots.len()).map(|i| i % k == 0).collect();
    slowest.into_iter().flatten().for_each(|i| keep[i] = true);
    dots.into_iter().zip(keep).filter_map(|(dot, kept)| kept.then_some(dot)).collect()
}

/// The log-scale latency axis, from [`MIN_LATENCY_MS`] to a bit above the slowest op.
struct LatencyAxis {
    log_min: f64,
    log_max: f64,
}

impl LatencyAxis {
    fn new(dots: &[Dot]) -> Self {
        let max_ms = dots.iter().map(Dot::latency_ms).fold(1.0, f64::max);
        Self { log_min: MIN_LATENCY_MS.log10(), log_max: (max_ms * 1.5).log10() }
    }

    fn y(&self, ms: f64) -> f64 {
        let fraction =
            (ms.max(MIN_LATENCY_MS).log10() - self.log_min) / (self.log_max - self.log_min);
        LATENCY_PANEL.bottom() - fraction * LATENCY_PANEL.height
    }

    /// One tick per decade: 0.1, 1, 10, ... ms.
    fn ticks(&self) -> Vec<(f64, String)> {
        let decades = (self.log_min.round() as i32)..=(self.log_max.floor() as i32);
        decades.map(|e| 10f64.powi(e)).map(|ms| (self.y(ms), format_number(ms))).collect()
    }
}

fn draw_latency_panel(svg: &mut String, history: &History, axis: &TimeAxis) -> fmt::Result {
    let dots = subsample(history.ops.iter().filter_map(Dot::of).collect(), axis);
    let scale = LatencyAxis::new(&dots);
    LATENCY_PANEL.draw_y_axis(svg, "ok latency (ms, log)", &scale.ticks())?;
    for (class, is_get, color) in
        [("writes", false, WRITE_DOT_COLOR), ("gets", true, GET_DOT_COLOR)]
    {
        writeln!(svg, r#"<g class="latency-{class}" fill="{color}" fill-opacity="0.55">"#)?;
        for dot in dots.iter().filter(|dot| dot.is_get == is_get) {
            writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.6"/>"#,
                axis.x(dot.complete),
                scale.y(dot.latency_ms())
            )?;
        }
        writeln!(svg, "</g>")?;
    }
    let entries = [("append/set latency", WRITE_DOT_COLOR), ("get latency", GET_DOT_COLOR)];
    draw_series_legend(svg, LATENCY_PANEL, &entries)
}

/// A round tick step (1, 2 or 5 × 10^k) giving about `target` ticks over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().find(|m| m * magnitude >= raw).unwrap_or(10.0);
    step * magnitude
}

/// Whole numbers without decimals, others with one (ticks are never finer than 0.1).
fn format_number(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// A fault kind as a CSS class name, so that `class` attributes stay well-formed whatever the
/// nemesis calls its faults.
fn css_class(kind: &str) -> String {
    kind.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect()
}

/// Escapes text for use in SVG text content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::OkValue;

    const MS: u64 = 1_000_000;
    const S: u64 = NANOS_PER_SEC;

    fn ok_op(client: u64, complete: u64, latency: u64, get: bool) -> Op {
        let (op, value) = if get {
            (OpKind::Get, OkValue::Value(b"x".to_vec()))
        } else {
            (OpKind::Append(b"x".to_vec()), OkValue::Len(1))
        };
        let invoke = complete.saturating_sub(latency);
        Op {
            client,
            op,
            invoke,
            complete: Some(complete),
            outcome: Outcome::Ok(value),
            node: Some(1),
        }
    }

    fn fault(start: u64, end: u64, kind: &str, label: &str) -> FaultWindow {
        FaultWindow {
            start,
            end,
            kind: kind.into(),
            label: label.into(),
            nodes: vec![2],
            effect: String::new(),
        }
    }

    fn small() -> (History, Vec<FaultWindow>) {
        let mut history: History =
            (0..40).map(|i| ok_op(i % 4, i * S / 4 + MS, (i % 7 + 1) * MS, i % 3 == 0)).collect();
        let unknown = history.invoke(9, OpKind::Get, 3 * S, Some(2));
        history.complete(unknown, 4 * S, Outcome::Unknown);
        history.invoke(8, OpKind::Append(b"y".to_vec()), 5 * S, Some(2));
        let failed = history.invoke(7, OpKind::Set(b"z".to_vec()), 6 * S, Some(3));
        history.complete(failed, 6 * S + MS, Outcome::Failed("not a member".into()));
        let faults = vec![
            fault(2 * S, 5 * S, "kill", "kill -9 n2 <master> & \"friends\""),
            fault(4 * S, 7 * S, "partition", "partition n1 | n2 n3"),
        ];
        (history, faults)
    }

    /// Checks that every tag opened is closed, in order: a cheap well-formedness test.
    fn assert_balanced(svg: &str) {
        let mut stack = Vec::new();
        for tag in svg.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap();
            let name = tag.trim_start_matches('/').split([' ', '\n']).next().unwrap();
            if tag.starts_with('/') {
                assert_eq!(stack.pop(), Some(name), "unbalanced </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    #[test]
    fn small_history_renders_faults_and_escapes_labels() {
        let (history, faults) = small();
        let svg = render_svg(&history, &faults, 10 * S);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert_balanced(&svg);
        assert_eq!(svg.matches("<rect class=\"fault ").count(), 2);
        assert_eq!(svg.matches("<rect class=\"fault fault-kill\"").count(), 1);
        assert_eq!(svg.matches("<rect class=\"fault fault-partition\"").count(), 1);
        assert!(svg.contains(r##"fill="#8c564b" fill-opacity="0.18""##));
        assert!(svg.contains("<title>kill -9 n2 &lt;master&gt; &amp; &quot;friends&quot;</title>"));
        assert!(!svg.contains("<master>"));
        assert_eq!(svg.matches(r#"r="1.6""#).count(), 40, "one latency dot per ok op");
        assert!(svg.contains("<title>6 s: 1 failed</title>"));
        assert!(svg.contains("<title>3 s: 1 unknown</title>"));
    }

    #[test]
    fn latency_ticks_are_decades_up_to_the_slowest_op() {
        let dot = |ms: u64| Dot { complete: S, latency_nanos: ms * MS, is_get: false };
        let labels = |dots: &[Dot]| -> Vec<String> {
            LatencyAxis::new(dots).ticks().into_iter().map(|(_, label)| label).collect()
        };
        assert_eq!(labels(&[]), ["0.1", "1"]);
        assert_eq!(labels(&[dot(7)]), ["0.1", "1", "10"]);
        assert_eq!(labels(&[dot(7), dot(12_000)]), ["0.1", "1", "10", "100", "1000", "10000"]);
        let axis = LatencyAxis::new(&[dot(7)]);
        assert!(axis.y(0.001) == LATENCY_PANEL.bottom() && axis.y(7.0) > LATENCY_PANEL.top);
    }

    #[test]
    fn rates_count_unknown_ops_at_invocation() {
        let (history, _) = small();
        let rates = Rates::new(&history, &TimeAxis::new(&history, 10 * S));
        assert_eq!(rates.ok.len(), 10);
        assert_eq!(rates.ok[..4], [4, 4, 4, 4]);
        assert_eq!(rates.unknown, [0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
        assert_eq!(rates.failed[6], 1);
    }

    #[test]
    fn empty_history_without_faults_renders() {
        let svg = render_svg(&History::new(), &[], 0);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_balanced(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("<rect class=\"fault").count(), 0);
    }

    #[test]
    fn degenerate_faults_render() {
        let faults = [fault(5 * S, 5 * S, "", ""), fault(50 * S, 40 * S, "odd kind!", "x")];
        let svg = render_svg(&History::new(), &faults, 10 * S);
        assert_balanced(&svg);
        assert_eq!(svg.matches("<rect class=\"fault").count(), 2);
        assert!(svg.contains("class=\"fault fault-odd-kind-\""));
        assert!(!svg.contains("NaN"));
    }

    fn large(ops: u64) -> History {
        // A deterministic spread of latencies from 0.05 ms to 3 s, over a ten-minute run.
        (0..ops)
            .map(|i| {
                let latency = 50_000 + (i * 7_919 % 1_000) * (i % 61 + 1) * 48_000;
                ok_op(i % 16, i * 600 * S / ops + latency, latency, i % 2 == 0)
            })
            .collect()
    }

    #[test]
    fn large_history_is_subsampled_but_keeps_spikes() {
        let history = large(100_000);
        let mut faults: Vec<FaultWindow> = (0..30)
            .map(|i| fault(i * 20 * S, i * 20 * S + 8 * S, FAULT_COLORS[i as usize % 5].0, "f"))
            .collect();
        faults.push(fault(300 * S, 310 * S, "clock", "clock skew +5s"));
        let svg = render_svg(&history, &faults, 600 * S);
        assert!(svg.len() < 3_000_000, "{} bytes", svg.len());
        let dots = svg.matches(r#"r="1.6""#).count();
        assert!((MAX_DOTS..MAX_DOTS + 1_200).contains(&dots), "{dots} dots");
        let slowest = history.ops.iter().filter_map(latency_nanos).max().unwrap();
        let kept = subsample(
            history.ops.iter().filter_map(Dot::of).collect(),
            &TimeAxis::new(&history, 600 * S),
        );
        assert!(kept.iter().any(|dot| dot.latency_nanos == slowest));
    }

    /// A plausible two-minute run: eight clients, each fault hurting the clients it should.
    fn sample_run() -> (History, Vec<FaultWindow>) {
        let faults = vec![
            fault(15 * S, 30 * S, "kill", "kill -9 n2 (master)"),
            fault(40 * S, 50 * S, "pause", "SIGSTOP n1"),
            fault(60 * S, 75 * S, "partition", "partition {n3} | {n1 n2}"),
            fault(70 * S, 85 * S, "loss", "loss 20% n1<->n2 & n3"),
            fault(95 * S, 105 * S, "slow", "delay 50ms all links"),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let mut history = History::new();
        for client in 0..8 {
            let node = client % 3 + 1;
            let mut now = random(10 * MS);
            while now < 120 * S {
                let active = faults.iter().find(|f| f.contains(now)).map(|f| f.kind.as_str());
                let latency = 300_000 + random(3 * MS) + if random(100) == 0 { 30 * MS } else { 0 };
                let (op, outcome, complete) = match active {
                    Some("kill") if node == 2 => {
                        (OpKind::Append(b"x".to_vec()), Outcome::Unknown, now + S)
                    }
                    Some("pause") if node == 1 => {
                        (OpKind::Get, Outcome::Ok(OkValue::Value(b"x".to_vec())), 50 * S + latency)
                    }
                    Some("partition") if node == 3 => (
                        OpKind::Set(b"y".to_vec()),
                        Outcome::Failed("no quorum".into()),
                        now + 5 * MS,
                    ),
                    Some("loss") if random(5) == 0 => (
                        OpKind::Get,
                        Outcome::Ok(OkValue::Value(b"x".to_vec())),
                        now + 200 * MS + latency,
                    ),
                    Some("slow") => (
                        OpKind::Append(b"x".to_vec()),
                        Outcome::Ok(OkValue::Len(1)),
                        now + 50 * MS + latency,
                    ),
                    _ if random(2) == 0 => {
                        (OpKind::Get, Outcome::Ok(OkValue::Value(b"x".to_vec())), now + latency)
                    }
                    _ => {
                        (OpKind::Append(b"x".to_vec()), Outcome::Ok(OkValue::Len(1)), now + latency)
                    }
                };
                history.push(Op {
                    client,
                    op,
                    invoke: now,
                    complete: Some(complete),
                    outcome,
                    node: Some(node),
                });
                now = complete + 10 * MS;
            }
        }
        (history, faults)
    }

    /// Writes the sample timeline for eyeballing (`rsvg-convert` turns it into a PNG).
    #[test]
    fn writes_a_sample_timeline() {
        let (history, faults) = sample_run();
        let svg = render_svg(&history, &faults, 120 * S);
        assert_balanced(&svg);
        assert_eq!(svg.matches("<rect class=\"fault ").count(), faults.len());
        let path = std::env::temp_dir().join("timeline-sample.svg");
        std::fs::write(&path, &svg).unwrap();
        println!(
            "{}\n{}",
            path.display(),
            super::super::stats::summarize(&history, &faults, 120 * S)
        );
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(600.0, 12.0), 50.0);
        assert!((nice_step(1.0, 12.0) - 0.1).abs() < 1e-12);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(format_number(0.1), "0.1");
        assert_eq!(format_number(1000.0), "1000");
    }
}
