//! strstore-bench-report: turns the JSON lines of several `strstore-bench --json` runs (as
//! `deploy/bench.sh` collects them) into a Markdown table and a picture of throughput and p99
//! latency against the number of clients, one line per workload and cluster size.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
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
    std::fs::write(args.out.join("results.svg"), svg(&runs))?;
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

/// Two panels over a log2 axis of client counts: throughput, and p99 latency.
fn svg(runs: &[Run]) -> String {
    const W: f64 = 1000.0;
    const PANEL_H: f64 = 260.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 220.0;
    const TOP: f64 = 50.0;
    const GAP: f64 = 70.0;
    const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

    let mut series: BTreeMap<(String, usize), Vec<&Run>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.tag.is_empty()) {
        series.entry((r.workload.clone(), r.nodes())).or_default().push(r);
    }
    for points in series.values_mut() {
        points.sort_by_key(|r| r.clients);
    }
    let clients: Vec<u32> = runs.iter().map(|r| r.clients.max(1)).collect();
    let (cmin, cmax) = (
        f64::from(*clients.iter().min().unwrap_or(&1)).log2(),
        f64::from(*clients.iter().max().unwrap_or(&1)).log2().max(1.0),
    );
    let span = (cmax - cmin).max(1.0);
    let x = |c: u32| LEFT + (f64::from(c.max(1)).log2() - cmin) / span * (W - LEFT - RIGHT);
    let max_ops = runs.iter().map(|r| r.ops_per_sec).fold(1.0, f64::max) * 1.1;
    let max_p99 = runs.iter().map(|r| r.latency_us.p99 as f64 / 1000.0).fold(1.0, f64::max) * 1.1;

    let height = TOP + 2.0 * PANEL_H + GAP + 60.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">strstore: throughput \
         and p99 latency vs. concurrent clients</text>\n"
    );
    let panels = [("ops/s", max_ops, TOP), ("p99 latency (ms)", max_p99, TOP + PANEL_H + GAP)];
    for (title, max, top) in panels {
        let bottom = top + PANEL_H;
        let _ = writeln!(
            out,
            "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{}\" height=\"{PANEL_H}\" fill=\"none\" \
             stroke=\"#999\"/>\n<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" \
             text-anchor=\"middle\">{title}</text>",
            W - LEFT - RIGHT,
            top + PANEL_H / 2.0,
            top + PANEL_H / 2.0
        );
        for i in 0..=4 {
            let v = max * f64::from(i) / 4.0;
            let y = bottom - PANEL_H * f64::from(i) / 4.0;
            let label = if v >= 1000.0 { format!("{:.1}k", v / 1000.0) } else { format!("{v:.1}") };
            let _ = writeln!(
                out,
                "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0
            );
        }
        let mut ticks: Vec<u32> = clients.clone();
        ticks.sort_unstable();
        ticks.dedup();
        for c in ticks {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
                x(c),
                bottom + 16.0
            );
        }
        for (i, ((workload, nodes), points)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let value = |r: &Run| {
                if top == TOP {
                    r.ops_per_sec
                } else {
                    r.latency_us.p99 as f64 / 1000.0
                }
            };
            let path: Vec<String> = points
                .iter()
                .map(|r| format!("{:.1},{:.1}", x(r.clients), bottom - value(r) / max * PANEL_H))
                .collect();
            let _ = writeln!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                path.join(" ")
            );
            for r in points {
                let _ = writeln!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>{workload}, \
                     {nodes} nodes, {} clients: {:.0} ops/s, p99 {} ms</title></circle>",
                    x(r.clients),
                    bottom - value(r) / max * PANEL_H,
                    r.clients,
                    r.ops_per_sec,
                    ms(r.latency_us.p99)
                );
            }
            if top == TOP {
                let ly = TOP + 10.0 + 18.0 * i as f64;
                let lx = W - RIGHT + 20.0;
                let _ = writeln!(
                    out,
                    "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" \
                     stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{workload}, {nodes} nodes</text>",
                    lx + 24.0,
                    lx + 30.0,
                    ly + 4.0
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">concurrent clients (log scale)</text>\n</svg>",
        LEFT + (W - LEFT - RIGHT) / 2.0,
        height - 12.0
    );
    out
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
        ];
        let svg = svg(&runs);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Three series (append/3, get/3, get/5), each drawn in both panels.
        assert_eq!(svg.matches("<polyline").count(), 6, "{svg}");
        assert!(svg.contains("get, 5 nodes"));
    }
}
