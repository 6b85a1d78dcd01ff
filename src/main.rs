//! Command line: OVS-style flags, `anyhow` at the edge.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use ovn_nb_proxy::proxy::{Config, Proxy};
use ovn_nb_proxy::remote::{parse_listen, parse_upstreams};

#[derive(Parser)]
#[command(
    name = "ovn-nb-proxy",
    version,
    about = "Transparent OVSDB proxy for the OVN Northbound database",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log filter, e.g. `info` or `ovn_nb_proxy=debug` (default: $RUST_LOG, else `info`).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Start a throw-away NB database with the proxy in front and drive ovn-nbctl through it.
    Demo,
}

#[derive(Args)]
struct RunArgs {
    /// Database server(s) to connect to: unix:PATH or tcp:HOST:PORT, comma-separated, tried in order.
    #[arg(long, value_name = "REMOTE[,REMOTE...]")]
    upstream: Option<String>,
    /// Where clients connect: punix:PATH or ptcp:PORT[:IP] (IP defaults to 127.0.0.1). Repeatable.
    #[arg(long, value_name = "REMOTE")]
    listen: Vec<String>,
    /// Most client sessions served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_sessions: usize,
    /// Largest client-to-server message in bytes; a client sending more is disconnected.
    #[arg(long, default_value_t = ovn_nb_proxy::wire::DEFAULT_MAX_FRAME, value_name = "BYTES")]
    max_frame_size: usize,
    /// Seconds to wait for an upstream connection.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    connect_timeout: u64,
    /// TOML file with the policy's tag names (`[migration]` table).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Log the rewrites the policy would make and forward the original transactions.
    #[arg(long)]
    dry_run: bool,
    /// Southbound database(s) to watch for migration timelines: unix:PATH or tcp:HOST:PORT.
    #[arg(long, value_name = "REMOTE[,REMOTE...]")]
    sb_db: Option<String>,
    /// Finish a migration as soon as the Southbound shows the destination activated (needs --sb-db).
    #[arg(long)]
    finalize_on_activation: bool,
    /// Control socket for ovs-appctl -t PATH.
    #[arg(long, value_name = "PATH")]
    unixctl: Option<std::path::PathBuf>,
    /// Write one transcript per client session into DIR (see `replay`).
    #[arg(long, value_name = "DIR")]
    record: Option<std::path::PathBuf>,
    /// Size cap of one transcript file.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    record_max_bytes: u64,
}

fn init_logging(filter: Option<&str>, default: &str) {
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn config(args: RunArgs) -> Result<Config> {
    let Some(upstream) = args.upstream else {
        bail!("--upstream is required (e.g. --upstream unix:/run/ovn/ovnnb_db.sock)")
    };
    if args.listen.is_empty() {
        bail!("at least one --listen is required (e.g. --listen ptcp:6641 or --listen punix:/run/ovn-nb-proxy.sock)");
    }
    let upstreams = parse_upstreams(&upstream).context("--upstream")?;
    let listen =
        args.listen.iter().map(|l| parse_listen(l)).collect::<Result<Vec<_>, _>>().context("--listen")?;
    if args.max_sessions == 0 {
        bail!("--max-sessions must be at least 1");
    }
    let mut cfg = Config::new(upstreams, listen);
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file =
            ovn_nb_proxy::policy::load_toml(&text).with_context(|| format!("in {}", path.display()))?;
        cfg.policy = file.migration;
    }
    cfg.dry_run = args.dry_run;
    if let Some(sb) = &args.sb_db {
        cfg.sb = parse_upstreams(sb).context("--sb-db")?;
    }
    cfg.finalize_on_activation = args.finalize_on_activation || cfg.policy.finalize_on_activation;
    if cfg.finalize_on_activation && cfg.sb.is_empty() {
        bail!("finalize on activation needs --sb-db: the proxy learns of the activation from the Southbound");
    }
    cfg.unixctl = args.unixctl;
    cfg.record =
        args.record.map(|dir| ovn_nb_proxy::record::RecordConfig { dir, max_bytes: args.record_max_bytes });
    cfg.max_sessions = args.max_sessions;
    cfg.max_frame = args.max_frame_size;
    cfg.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    Ok(cfg)
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received, stopping");
        token.cancel();
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // The demo prints its own story; the proxy's log would drown it unless asked for.
    let default_filter = if matches!(cli.command, Some(Command::Demo)) { "warn" } else { "info" };
    init_logging(cli.log.as_deref(), default_filter);
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone())?;
    match cli.command {
        Some(Command::Demo) => ovn_nb_proxy::demo::run(shutdown).await,
        None => {
            let cfg = config(cli.run)?;
            let proxy = Proxy::bind(cfg).await?;
            proxy.serve(shutdown).await;
            Ok(())
        }
    }
}
