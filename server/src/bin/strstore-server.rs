//! `strstore-server`: runs one strstore node, or (`certs`) creates the cluster's TLS material.

use anyhow::Context;
use clap::{Parser, Subcommand};
use strstore_server::certs::{self, CertsArgs};
use strstore_server::config::NodeArgs;
use tracing_subscriber::EnvFilter;

/// A node of strstore, a replicated string store.
///
/// With no flags it runs a single-node store on 127.0.0.1:7379 with its data in
/// ./strstore-data. A cluster's nodes talk over mutual TLS: create the certificates once,
/// then give every node the same --peers list, its own --id and the TLS directory:
///
///   strstore-server certs --dir tls --nodes 1,2,3
///   strstore-server --id 1 --listen 127.0.0.1:7001 --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 --data-dir d1 --tls-dir tls
///
/// SIGHUP reloads the TLS files (after renewing them with `certs`). Logs go to stderr; set
/// RUST_LOG (e.g. RUST_LOG=debug) for more.
#[derive(Parser, Debug)]
#[command(
    name = "strstore-server",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a cluster CA (or reuse the one in --dir), a certificate and key for every node,
    /// and a client certificate. Key files are written with mode 0600.
    ///
    /// Run it again with the same --dir to add nodes or renew certificates: the CA in it
    /// (ca.pem + ca-key.pem) is reused, so running nodes keep trusting each other; then send
    /// the nodes SIGHUP (or restart them) to use the new files.
    Certs(CertsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Certs(args)) = &cli.command {
        let report = certs::run(args).context("creating TLS certificates")?;
        println!("{report}");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = cli.node.validate().context("invalid configuration")?;
    #[cfg(feature = "failpoints")]
    strstore_server::failpoints::watch_from_env();
    let mut runtime = match cli.node.worker_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = runtime.enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        strstore_server::server::run(cfg, shutdown, |_| {}).await.context("node failed")
    })
}

/// Installs the Ctrl-C and SIGTERM handlers now and resolves on either, so that the node
/// flushes its log before exiting. Installed lazily, when the node first polled its shutdown
/// future, a SIGTERM that came after the ports were open but before that still killed the
/// process outright (a storage test stopping a node just after its start saw it).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("Ctrl-C received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn node_flags_and_the_certs_subcommand_coexist() {
        let run = Cli::try_parse_from(["strstore-server", "--id", "2"]).unwrap();
        assert!(run.command.is_none());
        assert_eq!(run.node.id, 2);
        let certs =
            Cli::try_parse_from(["strstore-server", "certs", "--dir", "d", "--nodes", "1,2"])
                .unwrap();
        let Some(Command::Certs(args)) = certs.command else { panic!("certs subcommand") };
        assert_eq!(args.nodes, [1, 2]);
        assert_eq!(args.hosts, ["localhost", "127.0.0.1", "::1"]);
    }
}
