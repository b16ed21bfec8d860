//! strstore-bench-report: turns the JSON lines of several `strstore-bench --json` runs (as
//! `deploy/bench.sh` collects them) into a Markdown table and a picture of throughput and p99
//! latency against the number of clients, one line per workload and cluster size.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "strstore-bench-report",
    about = "Markdown table and SVG chart from strstore-bench --json results"
)]
struct Args {
    /// JSON lines, one `strstore-bench --json` result per line.
    #[arg(long = "in")]
    input: PathBuf,
    /// Directory for results.md and results.svg.
    #[arg(long)]
    out: PathBuf,
    /// A line describing the machine, printed above the tables.
    #[arg(long, default_value = "")]
    machine: String,
}

/// The fields of a `strstore-bench --json` result this report uses.
#[derive(Deserialize, Debug, Clone)]
struct Run {
    workload: String,
    clients: u32,
    ops_per_sec: f64,
    errors: u64,
    latency_us: Latency,
    cluster: Option<Cluster>,
    #[serde(default)]
    tag: String,
}

#[derive(Deserialize, Debug, Clone)]
struct Latency {
    p50: u64,
    p99: u64,
    p999: u64,
}

#[derive(Deserialize, Debug, Clone)]
struct Cluster {
    members: usize,
    settings: Settings,
}

#[derive(Deserialize, Debug, Clone)]
struct Settings {
    peer_tls: bool,
    fsync: bool,
}

impl Run {
    fn nodes(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.members)
    }
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strstore-bench-report: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let runs: Vec<Run> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("line {}", i + 1)))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!runs.is_empty(), "no results in {}", args.input.display());
    std::fs::create_dir_all(&args.out)?;
    let markdown = markdown(&runs, &args.machine);
    std::fs::write(args.out.join("results.md"), &markdown)?;
    std::fs::write(args.out.join("results.svg"), svg(&runs)?)?;
    print!("{markdown}");
    Ok(())
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn markdown(runs: &[Run], machine: &str) -> String {
    let mut out = String::from("# strstore benchmark\n\n");
    if !machine.is_empty() {
        let _ = writeln!(out, "{machine}\n");
    }
    if let Some(c) = runs.iter().find_map(|r| r.cluster.as_ref()) {
        let _ = writeln!(
            out,
            "Closed-loop clients, 16-byte values, peers {}, fsync before every ack: {}.\n",
            if c.settings.peer_tls { "over mutual TLS" } else { "in plaintext" },
            if c.settings.fsync { "yes" } else { "no" },
        );
    }
    let (plain, tagged): (Vec<&Run>, Vec<&Run>) = runs.iter().partition(|r| r.tag.is_empty());
    out.push_str("| nodes | workload | clients | ops/s | p50 ms | p99 ms | p99.9 ms | errors |\n");
    out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for r in plain {
        out.push_str(&row(&[r.nodes().to_string(), r.workload.clone()], r));
    }
    if !tagged.is_empty() {
        out.push_str("\n## By string size (append, before the run the string held)\n\n");
        out.push_str(
            "| string | nodes | clients | ops/s | p50 ms | p99 ms | p99.9 ms | errors |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in tagged {
            out.push_str(&row(&[r.tag.clone(), r.nodes().to_string()], r));
        }
    }
    out
}

/// One table row: the `lead` columns, then the run's figures.
fn row(lead: &[String], r: &Run) -> String {
    let l = &r.latency_us;
    format!(
        "| {} | {} | {:.0} | {} | {} | {} | {} |\n",
        lead.join(" | "),
        r.clients,
        r.ops_per_sec,
        ms(l.p50),
        ms(l.p99),
        ms(l.p999),
        r.errors
    )
}

/// Series colors (matplotlib's first six), readable on white.
const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// One line per workload and cluster size, its runs in order of clients.
type Series<'a> = BTreeMap<(String, usize), Vec<&'a Run>>;

/// Two panels over a log axis of client counts: throughput, and p99 latency; one line per
/// workload and cluster size (tagged runs, such as string-size runs, are left out).
fn svg(runs: &[Run]) -> anyhow::Result<String> {
    let mut series: Series = BTreeMap::new();
    for r in runs.iter().filter(|r| r.tag.is_empty()) {
        series.entry((r.workload.clone(), r.nodes())).or_default().push(r);
    }
    for points in series.values_mut() {
        points.sort_by_key(|r| r.clients);
    }
    let clients = || runs.iter().map(|r| f64::from(r.clients.max(1)));
    let lo = clients().fold(f64::MAX, f64::min).min(1e9);
    let hi = clients().fold(1.0, f64::max).max(lo * 2.0);
    let x_range = lo / 1.25..hi * 1.25;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 700)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = "strstore: throughput and p99 latency vs. concurrent clients";
        let root = root.titled(title, ("sans-serif", 18))?;
        let (top, bottom) = root.split_vertically(330);
        panel(&top, &series, x_range.clone(), "ops/s", |r| r.ops_per_sec)?;
        let p99_ms = |r: &Run| r.latency_us.p99 as f64 / 1000.0;
        panel(&bottom, &series, x_range, "p99 latency (ms)", p99_ms)?;
        root.present()?;
    }
    Ok(out)
}

/// One panel: `value` of every run against its client count, a line and dots per series.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    series: &Series,
    clients: std::ops::Range<f64>,
    title: &str,
    value: impl Fn(&Run) -> f64,
) -> anyhow::Result<()> {
    let max = series.values().flatten().map(|r| value(r)).fold(1.0, f64::max) * 1.1;
    // A label at every client count measured, not at powers of ten.
    let mut measured: Vec<f64> =
        series.values().flatten().map(|r| f64::from(r.clients.max(1))).collect();
    measured.sort_by(f64::total_cmp);
    measured.dedup();
    let x = clients.log_scale().with_key_points(measured);
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(x, 0.0..max)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients (log scale)")
        .y_desc(title)
        .x_label_formatter(&|c| format!("{c:.0}"))
        .y_label_formatter(&|v| {
            if *v >= 1000.0 {
                format!("{:.0}k", v / 1000.0)
            } else {
                format!("{v:.1}")
            }
        })
        .draw()?;
    for (i, ((workload, nodes), points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<(f64, f64)> =
            points.iter().map(|r| (f64::from(r.clients.max(1)), value(r))).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(format!("{workload}, {nodes} nodes"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(workload: &str, clients: u32, nodes: usize, ops: f64, tag: &str) -> Run {
        Run {
            workload: workload.into(),
            clients,
            ops_per_sec: ops,
            errors: 0,
            latency_us: Latency { p50: 500, p99: 2500, p999: 9000 },
            cluster: Some(Cluster {
                members: nodes,
                settings: Settings { peer_tls: true, fsync: true },
            }),
            tag: tag.into(),
        }
    }

    #[test]
    fn table_has_one_row_per_run_and_a_string_size_section() {
        let runs = vec![
            run("append", 1, 3, 1200.0, ""),
            run("append", 64, 3, 20000.0, ""),
            run("append", 64, 3, 19000.0, "string=1MiB"),
        ];
        let md = markdown(&runs, "2 cores");
        assert!(md.contains("| 3 | append | 64 | 20000 | 0.50 | 2.50 | 9.00 | 0 |"), "{md}");
        assert!(md.contains("| string=1MiB | 3 | 64 | 19000 |"), "{md}");
        assert!(md.contains("peers over mutual TLS, fsync before every ack: yes"), "{md}");
    }

    #[test]
    fn chart_draws_a_line_per_workload_and_size() {
        let runs = vec![
            run("append", 1, 3, 1200.0, ""),
            run("append", 64, 3, 20000.0, ""),
            run("get", 1, 3, 3000.0, ""),
            run("get", 64, 5, 30000.0, ""),
            run("append", 64, 3, 19000.0, "string=1MiB"),
        ];
        let svg = svg(&runs).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        // Three series (append/3, get/3, get/5), each a line and a legend entry in both
        // panels, in its own color; the tagged run is left out.
        let stroke = |c: &RGBColor| {
            let (r, g, b) = c.rgb();
            format!("<polyline fill=\"none\" opacity=\"1\" stroke=\"#{r:02X}{g:02X}{b:02X}\"")
        };
        for color in &COLORS[..3] {
            assert_eq!(svg.matches(&stroke(color)).count(), 4, "{} in {svg}", stroke(color));
        }
        assert!(!svg.contains(&stroke(&COLORS[3])), "no fourth series");
        for label in ["append, 3 nodes", "get, 3 nodes", "get, 5 nodes"] {
            assert_eq!(svg.matches(label).count(), 2, "{label} in both legends");
        }
        assert_eq!(svg.matches("<circle").count(), 8, "a dot per run and panel");
    }
}
