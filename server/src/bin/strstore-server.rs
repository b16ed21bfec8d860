//! `strstore-server`: runs one strstore node.

use anyhow::Context;
use clap::Parser;
use strstore_server::config::NodeArgs;
use tracing_subscriber::EnvFilter;

/// A node of strstore, a replicated string store.
///
/// With no flags it runs a single-node store on 127.0.0.1:7379 with its data in
/// ./strstore-data. For a cluster, give every node the same --peers list and its own --id:
///
///   strstore-server --id 1 --listen 127.0.0.1:7001 --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 --data-dir d1
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.
#[derive(Parser, Debug)]
#[command(name = "strstore-server", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = cli.node.validate().context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        strstore_server::server::run(cfg, shutdown_signal(), |_| {}).await.context("node failed")
    })
}

/// Resolves on Ctrl-C or SIGTERM, so that the node flushes its log before exiting.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
