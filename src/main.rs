//! Command line: OVS-style flags, `anyhow` at the edge.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use ovn_nb_proxy::control::daemon::{LogFile, Pidfile};
use ovn_nb_proxy::control::Control;
use ovn_nb_proxy::net::remote::{parse_listen, parse_upstreams};
use ovn_nb_proxy::proxy::{defaults, Config, Proxy};

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
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Log filter, e.g. `info` or `ovn_nb_proxy=debug` (default: $RUST_LOG, else `info`).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    /// Log line format: `text` or `json` (one JSON object per line, for log shippers).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Write the log to FILE instead of stderr (appended; `ovs-appctl vlog/reopen` reopens it,
    /// as OVN's logrotate rule asks every daemon in /var/run/ovn).
    #[arg(long, value_name = "FILE")]
    log_file: Option<std::path::PathBuf>,
}

/// The SSL files, as OVS daemons take them.
#[derive(Args, Clone, Default)]
struct TlsArgs {
    /// PEM private key for SSL (pssl: listeners, ssl: upstreams).
    #[arg(short = 'p', long, value_name = "FILE")]
    private_key: Option<std::path::PathBuf>,
    /// PEM certificate for SSL, signed by the CA.
    #[arg(short = 'c', long, value_name = "FILE")]
    certificate: Option<std::path::PathBuf>,
    /// PEM CA certificate: clients must present a certificate it signed; upstreams are checked against it.
    #[arg(short = 'C', long, value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The certificates, if given; `wanted`: an ssl: remote needs them.
    fn load(&self, wanted: bool) -> Result<Option<Arc<ovn_nb_proxy::net::tls::Tls>>> {
        match (&self.private_key, &self.certificate, &self.ca_cert) {
            (Some(p), Some(c), Some(ca)) => {
                Ok(Some(Arc::new(ovn_nb_proxy::net::tls::Tls::load(ovn_nb_proxy::net::tls::TlsFiles {
                    private_key: p.clone(),
                    certificate: c.clone(),
                    ca_cert: ca.clone(),
                })?)))
            }
            (None, None, None) if !wanted => Ok(None),
            _ => bail!("SSL needs all of --private-key (-p), --certificate (-c) and --ca-cert (-C)"),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Play a `--record` transcript against a database and compare every reply with the
    /// recorded one (uuids paired, per-database values ignored). Exit 0: all equal; 1: a
    /// mismatch (a diff per message is printed); 2: the replay could not run.
    Replay {
        /// The transcript: one session's file, or several concatenated (replayed in order).
        file: std::path::PathBuf,
        /// The database: unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT, comma-separated, tried in order.
        #[arg(long, value_name = "REMOTE[,REMOTE...]")]
        upstream: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Validate a policy config file (unknown keys are errors); exit non-zero naming the problem.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// Write the manual page (ovn-nb-proxy.8) and the bash completion (ovn-nb-proxy.bash),
    /// generated from this command line, into DIR (packaging).
    #[command(hide = true)]
    GenerateDocs { dir: std::path::PathBuf },
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
    #[arg(long, default_value_t = defaults::MAX_SESSIONS, value_name = "N")]
    max_sessions: usize,
    /// Largest client-to-server message in bytes; a client sending more is disconnected.
    #[arg(long, default_value_t = ovn_nb_proxy::wire::DEFAULT_MAX_FRAME, value_name = "BYTES")]
    max_frame_size: usize,
    /// Seconds to wait for an upstream connection.
    #[arg(long, default_value_t = defaults::CONNECT_TIMEOUT_SECS, value_name = "SECS")]
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
    /// Control socket for ovs-appctl -t PATH (default with --pidfile: DIR/NAME.PID.ctl beside
    /// DIR/NAME.pid, where `ovs-appctl -t NAME` finds it when DIR is its run directory).
    #[arg(long, value_name = "PATH")]
    unixctl: Option<std::path::PathBuf>,
    /// Write the process id to FILE, locked as OVS daemons do (`ovs-appctl -t` needs the lock);
    /// removed on exit. A pidfile locked by a running proxy stops this one from starting.
    #[arg(long, value_name = "FILE")]
    pidfile: Option<std::path::PathBuf>,
    /// Write one transcript per client session into DIR (see `replay`).
    #[arg(long, value_name = "DIR")]
    record: Option<std::path::PathBuf>,
    /// Size cap of one transcript file.
    #[arg(long, default_value_t = ovn_nb_proxy::transcript::record::DEFAULT_MAX_BYTES, value_name = "BYTES")]
    record_max_bytes: u64,
    /// Prometheus metrics and health endpoint: ADDR:PORT (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// The proxy's own connections to the database send an echo after this many milliseconds
    /// without hearing from it, and give up (marking the port cache not synchronised) after
    /// twice as long.
    #[arg(long, default_value_t = defaults::INACTIVITY_PROBE_MS, value_name = "MS")]
    inactivity_probe: u64,
    /// Seconds a client transaction on ports may be held while the port cache is not
    /// synchronised (at start, after a database restart); past it the client's session is closed.
    #[arg(long, default_value_t = defaults::SYNC_TIMEOUT_SECS, value_name = "SECS")]
    sync_timeout: u64,
    /// Seconds open sessions may run on after SIGTERM before they are closed.
    #[arg(long, default_value_t = defaults::DRAIN_GRACE_SECS, value_name = "SECS")]
    drain_grace: u64,
    #[command(flatten)]
    tls: TlsArgs,
    /// Where client sessions go in a cluster: `leader` (default), or `first` for a sidecar
    /// that fronts its local member (the first --upstream) while following the leader itself.
    #[arg(long, value_name = "leader|first", default_value = "leader")]
    session_upstream: SessionUpstream,
    /// Name of the OVSDB lock that elects the one active reconciler among several proxies.
    #[arg(long, value_name = "NAME", default_value = defaults::RECONCILER_LOCK)]
    reconciler_lock: String,
}

/// Threads that run the proxy: 1 (the default) runs every session and monitor on one thread,
/// which on a busy host costs fewer wake-ups per message than a pool; more spreads sessions.
#[derive(Args)]
struct RuntimeArgs {
    /// Threads that run the proxy: 1 runs every session on one thread (fewest wake-ups per
    /// message on a busy host); more spreads sessions over a pool.
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    threads: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SessionUpstream {
    Leader,
    First,
}

/// The tracing filter behind a reload handle, for `ovs-appctl vlog/set` and `vlog/list`, and
/// the log file, for `vlog/reopen`.
struct Reloadable {
    handle: tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    current: std::sync::Mutex<String>,
    file: Option<Arc<LogFile>>,
}

impl ovn_nb_proxy::control::LogControl for Reloadable {
    fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = EnvFilter::try_new(filter).map_err(|e| format!("bad filter {filter:?}: {e}"))?;
        self.handle.reload(parsed).map_err(|e| e.to_string())?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = filter.to_string();
        Ok(())
    }

    fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reopen(&self) -> Result<(), String> {
        let Some(file) = &self.file else { return Err("the log goes to stderr (no --log-file)".into()) };
        file.reopen().map_err(|e| format!("{}: {e}", file.path().display()))
    }
}

fn init_logging(
    filter: Option<&str>,
    default: &str,
    format: LogFormat,
    file: Option<&std::path::Path>,
) -> Result<Arc<Reloadable>> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    let text = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.into());
    let env = EnvFilter::try_new(&text).unwrap_or_else(|_| EnvFilter::new(default));
    let (layer, handle) = tracing_subscriber::reload::Layer::new(env);
    let registry = tracing_subscriber::registry().with(layer);
    let file = match file {
        Some(path) => {
            Some(Arc::new(LogFile::open(path).with_context(|| format!("--log-file {}", path.display()))?))
        }
        None => None,
    };
    let (writer, ansi) = match &file {
        Some(f) => (BoxMakeWriter::new(f.clone()), false),
        None => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal()),
    };
    match format {
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(writer)).init(),
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi)).init()
        }
    }
    Ok(Arc::new(Reloadable { handle, current: std::sync::Mutex::new(text), file }))
}

/// The policy a config file asks for; `--finalize-on-activation` turns finalizing on whatever
/// the file says (the one setting the proxy then reads, reloaded with the file).
fn load_policy(path: &std::path::Path, finalize_flag: bool) -> Result<ovn_nb_proxy::policy::PolicyConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut policy =
        ovn_nb_proxy::policy::load_toml(&text).with_context(|| format!("in {}", path.display()))?.migration;
    policy.finalize_on_activation |= finalize_flag;
    Ok(policy)
}

fn config(args: &RunArgs) -> Result<Config> {
    let Some(upstream) = &args.upstream else {
        bail!("--upstream is required (e.g. --upstream unix:/run/ovn/ovnnb_db.sock)")
    };
    if args.listen.is_empty() {
        bail!("at least one --listen is required (e.g. --listen ptcp:6641 or --listen punix:/run/ovn-nb-proxy.sock)");
    }
    let upstreams = parse_upstreams(upstream).context("--upstream")?;
    let listen =
        args.listen.iter().map(|l| parse_listen(l)).collect::<Result<Vec<_>, _>>().context("--listen")?;
    if args.max_sessions == 0 {
        bail!("--max-sessions must be at least 1");
    }
    let mut cfg = Config::new(upstreams, listen);
    if let Some(path) = &args.config {
        cfg.policy = load_policy(path, args.finalize_on_activation)?;
    }
    cfg.sessions_to_first = args.session_upstream == SessionUpstream::First;
    cfg.reconciler_lock = args.reconciler_lock.clone();

    cfg.drain_grace = Duration::from_secs(args.drain_grace);
    if args.inactivity_probe < 100 {
        bail!("--inactivity-probe must be at least 100 ms");
    }
    cfg.inactivity_probe = Duration::from_millis(args.inactivity_probe);
    cfg.sync_timeout = Duration::from_secs(args.sync_timeout.max(1));
    cfg.dry_run = args.dry_run;
    if let Some(sb) = &args.sb_db {
        cfg.sb = parse_upstreams(sb).context("--sb-db")?;
    }
    cfg.policy.finalize_on_activation |= args.finalize_on_activation;
    if cfg.policy.finalize_on_activation && cfg.sb.is_empty() {
        bail!("finalize on activation needs --sb-db: the proxy learns of the activation from the Southbound");
    }
    cfg.record = args
        .record
        .clone()
        .map(|dir| ovn_nb_proxy::transcript::record::RecordConfig { dir, max_bytes: args.record_max_bytes });
    cfg.max_sessions = args.max_sessions;
    cfg.max_frame = args.max_frame_size;
    cfg.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    // After --sb-db: any ssl: remote needs the three files.
    let wants_tls =
        cfg.listen.iter().any(|l| l.is_ssl()) || cfg.upstreams.iter().chain(&cfg.sb).any(|u| u.is_ssl());
    cfg.tls = args.tls.load(wants_tls)?;
    Ok(cfg)
}

/// SIGINT or SIGTERM: cancel `token` (stop accepting, drain); a second one: exit at once.
fn cancel_on_signals(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        let mut seen = false;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if seen {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
            seen = true;
            tracing::info!(
                "signal received: no new sessions, draining the open ones (a second signal exits at once)"
            );
            token.cancel();
        }
    });
    Ok(())
}

/// SIGHUP: re-read the policy config file; a bad file is logged and the running config kept.
fn reload_on_sighup(
    path: std::path::PathBuf,
    finalize_flag: bool,
    shared: Arc<ovn_nb_proxy::proxy::Shared>,
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match load_policy(&path, finalize_flag)
                .and_then(|policy| shared.set_policy(policy).map_err(anyhow::Error::msg))
            {
                Ok(()) => tracing::info!(config = %path.display(), "config reloaded"),
                Err(e) => {
                    tracing::error!(config = %path.display(), error = %format!("{e:#}"), "config reload failed; keeping the running config")
                }
            }
        }
    });
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut rt = match cli.runtime.threads {
        0 => bail!("--threads must be at least 1"),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    rt.enable_all().build().context("starting the async runtime")?.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let log = init_logging(cli.log.as_deref(), "info", cli.log_format, cli.log_file.as_deref())?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone())?;
    match cli.command {
        Some(Command::Replay { file, upstream, tls }) => {
            let replayed = match parse_upstreams(&upstream).map_err(anyhow::Error::from).and_then(|u| {
                let tls = tls.load(u.iter().any(|r| r.is_ssl())).context("replay")?;
                Ok((u, tls))
            }) {
                Ok((upstreams, tls)) => {
                    let task = tokio::task::spawn_blocking(move || {
                        ovn_nb_proxy::transcript::replay::run(&file, &upstreams, tls.as_deref())
                    });
                    match task.await {
                        Ok(r) => r.map_err(anyhow::Error::from),
                        Err(e) => Err(anyhow::Error::from(e).context("replay task")),
                    }
                }
                Err(e) => Err(e.context("--upstream")),
            };
            match replayed {
                Ok(report) => {
                    print!("{report}");
                    if !report.passed() {
                        std::process::exit(1);
                    }
                    Ok(())
                }
                Err(e) => {
                    eprintln!("replay: {e:#}");
                    std::process::exit(2);
                }
            }
        }
        Some(Command::GenerateDocs { dir }) => {
            ovn_nb_proxy::control::docs::write(Cli::command(), &dir)?;
            println!("{}: ovn-nb-proxy.8 ovn-nb-proxy.bash", dir.display());
            Ok(())
        }
        Some(Command::CheckConfig { config }) => {
            load_policy(&config, false)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        None => {
            let (config_path, finalize_flag) = (cli.run.config.clone(), cli.run.finalize_on_activation);
            // Before anything binds: a second proxy on the same pidfile stops here.
            let pidfile = cli.run.pidfile.as_deref().map(Pidfile::create).transpose()?;
            let cfg = config(&cli.run)?;
            let unixctl = cli.run.unixctl.clone().or_else(|| pidfile.as_ref().map(Pidfile::control_socket));
            let proxy = Proxy::bind(cfg).await?;
            let control = Control::bind(unixctl.as_deref(), cli.run.metrics, Some(log)).await?;
            if let Some(path) = config_path {
                reload_on_sighup(path, finalize_flag, proxy.shared())?;
            }
            let (shared, info) = (proxy.shared(), proxy.info());
            tokio::join!(proxy.serve(shutdown.clone()), control.serve(shared, info, shutdown));
            drop(pidfile);
            Ok(())
        }
    }
}
