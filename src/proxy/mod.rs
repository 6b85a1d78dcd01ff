//! The only layer that owns sockets: listeners, upstream connections, and the session relay.
//!
//! **Invariant**: one client connection ↔ one upstream connection, opened at accept and closed
//! together. The server keeps per-session state (monitors, locks, `wait` triggers); sharing an
//! upstream would need id, monitor and lock rewriting, and a dead client would keep its locks.

mod cluster;
mod http;
mod listener;
mod monitor;
mod session;
mod unixctl;
mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

pub use listener::{BoundAddr, ListenError, Listener};
pub use upstream::{Pick, UpstreamError, Upstreams};

use crate::cache::LspCache;
use crate::metrics::Metrics;
use crate::policy::PolicyConfig;
use crate::remote::{Active, Passive};
use crate::rewrite::PortsView;
use crate::timeline::Timelines;
use crate::wire::DEFAULT_MAX_FRAME;

/// Everything the data path needs to know.
#[derive(Clone)]
pub struct Config {
    pub upstreams: Vec<Active>,
    pub listen: Vec<Passive>,
    /// Sessions served at once; further clients wait in the listen backlog.
    pub max_sessions: usize,
    /// Bound on one client-to-server message.
    pub max_frame: usize,
    pub connect_timeout: Duration,
    /// How long a session waits for the server to close after the client has gone.
    pub close_grace: Duration,
    /// Tag names and default strategy of the migration policy.
    pub policy: PolicyConfig,
    /// Log the rewrites and reconciles the policy would make, change nothing.
    pub dry_run: bool,
    /// Southbound database(s) to watch for the migration timelines (empty: not SB-aware).
    pub sb: Vec<Active>,
    /// Finish a migration as soon as the SB shows the destination activated.
    pub finalize_on_activation: bool,
    /// The `ovs-appctl` control socket.
    pub unixctl: Option<std::path::PathBuf>,
    /// Session transcripts.
    pub record: Option<crate::record::RecordConfig>,
    /// Prometheus and health endpoint.
    pub metrics: Option<std::net::SocketAddr>,
    /// How long open sessions may run on after a stop was asked for.
    pub drain_grace: Duration,
    /// Run-time log filter control (`vlog/set`), when the binary provides one.
    pub log_control: Option<Arc<dyn crate::control::LogControl>>,
    /// Certificates for `pssl:` listeners and `ssl:` upstreams.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Sidecar deployment: client sessions go to the first upstream (the local member).
    pub sessions_to_first: bool,
    /// Name of the OVSDB lock that elects the active reconciler among several proxies.
    pub reconciler_lock: String,
}

/// What every session and the monitors share.
pub struct Shared {
    pub cache: Arc<LspCache>,
    pub timelines: Timelines,
    /// Swapped whole on SIGHUP; readers take a cheap `Arc` clone.
    policy: std::sync::RwLock<Arc<PolicyConfig>>,
    pub dry_run: bool,
    pub finalize: bool,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(policy: PolicyConfig, dry_run: bool, finalize: bool) -> Self {
        Shared {
            cache: Arc::new(LspCache::new()),
            timelines: Timelines::new(),
            policy: std::sync::RwLock::new(Arc::new(policy)),
            dry_run,
            finalize,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The policy configuration in force.
    pub fn policy(&self) -> Arc<PolicyConfig> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the policy configuration (SIGHUP); sessions pick it up at their next message.
    pub fn set_policy(&self, policy: PolicyConfig) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// The Prometheus text of every metric, with the gauges computed at scrape time.
    pub fn encode_metrics(&self) -> String {
        self.metrics.migrations_in_progress.set(self.timelines.in_progress() as i64);
        self.metrics.encode()
    }

    /// What the policy sees: the port cache, plus the ports the proxy has finalized.
    pub fn view(&self) -> PortsView<'_> {
        PortsView { cache: &self.cache, timelines: self.finalize.then_some(&self.timelines) }
    }
}

impl Config {
    pub fn new(upstreams: Vec<Active>, listen: Vec<Passive>) -> Self {
        Self {
            upstreams,
            listen,
            max_sessions: 1024,
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(5),
            close_grace: Duration::from_secs(5),
            policy: PolicyConfig::default(),
            dry_run: false,
            sb: Vec::new(),
            finalize_on_activation: false,
            unixctl: None,
            record: None,
            metrics: None,
            drain_grace: Duration::from_secs(10),
            log_control: None,
            tls: None,
            sessions_to_first: false,
            reconciler_lock: "ovn_nb_proxy_reconciler".into(),
        }
    }
}

/// A proxy whose listeners are bound (so their addresses are known) but not serving yet.
pub struct Proxy {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    nb: Arc<Upstreams>,
    sb: Option<Arc<Upstreams>>,
    listeners: Vec<Listener>,
    unixctl: Option<Listener>,
    metrics: Option<tokio::net::TcpListener>,
}

impl Proxy {
    /// Binds every listener, or fails with the first one that cannot be bound.
    pub async fn bind(cfg: Config) -> Result<Self, ListenError> {
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for p in &cfg.listen {
            listeners.push(Listener::bind(p, cfg.tls.as_ref()).await?);
        }
        let finalize = cfg.finalize_on_activation && !cfg.sb.is_empty();
        let shared = Arc::new(Shared::new(cfg.policy.clone(), cfg.dry_run, finalize));
        let unixctl = match &cfg.unixctl {
            Some(path) => Some(unixctl::bind(path).await?),
            None => None,
        };
        let metrics = match cfg.metrics {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ListenError::Bind { remote: format!("metrics {addr}"), source })?,
            ),
            None => None,
        };
        let nb = Arc::new(Upstreams::new(
            cfg.upstreams.clone(),
            cfg.connect_timeout,
            cfg.tls.clone(),
            cfg.sessions_to_first,
        ));
        let sb = (!cfg.sb.is_empty())
            .then(|| Arc::new(Upstreams::new(cfg.sb.clone(), cfg.connect_timeout, cfg.tls.clone(), false)));
        Ok(Self { cfg: Arc::new(cfg), shared, nb, sb, listeners, unixctl, metrics })
    }

    /// The port cache, the metrics and the policy, shared with every session.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` is cancelled. Then the listeners close at once, open sessions
    /// get `drain_grace` to finish by themselves, and whatever is left is closed.
    pub async fn serve(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        // Sessions end on `hard`: at the end of the drain, not at the first signal.
        let hard = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(self.cfg.max_sessions));
        let next_id = Arc::new(AtomicU64::new(1));
        tracker.spawn(probe_upstream(self.nb.clone(), shutdown.clone()));
        monitor::spawn(
            self.nb.clone(),
            self.sb.clone(),
            self.cfg.reconciler_lock.clone(),
            self.shared.clone(),
            &tracker,
            shutdown.clone(),
        );
        if let Some(tls) = &self.cfg.tls {
            tracker.spawn(tls.clone().watch(Duration::from_secs(2), shutdown.clone()));
        }
        if let Some(ctl) = self.unixctl {
            let info = crate::control::ProxyInfo {
                listeners: self.listeners.iter().map(|l| l.local_addr().to_string()).collect(),
                upstreams: self.cfg.upstreams.iter().map(ToString::to_string).collect(),
                sb: self.cfg.sb.iter().map(ToString::to_string).collect(),
                dry_run: self.cfg.dry_run,
                finalize: self.shared.finalize,
                log: self.cfg.log_control.clone(),
                upstream_state: Some(self.nb.clone()),
            };
            let io = Arc::new(crate::control::handler(self.shared.clone(), info, shutdown.clone()));
            tracker.spawn(unixctl::serve(ctl, io, shutdown.clone()));
        }
        if let Some(http) = self.metrics {
            tracker.spawn(http::serve(http, self.shared.clone(), shutdown.clone()));
        }
        let sessions = TaskTracker::new();
        for listener in self.listeners {
            info!(listen = %listener.local_addr(), "listening");
            let (cfg, shared, nb) = (self.cfg.clone(), self.shared.clone(), self.nb.clone());
            let (permits, next_id, sessions) = (permits.clone(), next_id.clone(), sessions.clone());
            let (shutdown, hard) = (shutdown.clone(), hard.clone());
            tracker.spawn(async move {
                loop {
                    // A permit first, then accept: past the bound, clients wait in the backlog.
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    };
                    let accepted = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        a = listener.accept() => a,
                    };
                    let (io, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("session", id, peer = %peer);
                    let (cfg, shared, nb, hard) = (cfg.clone(), shared.clone(), nb.clone(), hard.clone());
                    sessions.spawn(
                        async move {
                            shared.metrics.sessions.inc();
                            shared.metrics.sessions_open.inc();
                            session::run(io, id, &peer, &cfg, &nb, &shared, hard).await;
                            shared.metrics.sessions_open.dec();
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                drop(listener);
            });
        }
        tracker.close();
        tracker.wait().await;
        // Stopping: no new sessions; the open ones may finish within the grace period.
        sessions.close();
        let open = self.shared.metrics.sessions_open.get();
        if open > 0 {
            info!(open, grace = ?self.cfg.drain_grace, "draining client sessions");
        }
        if tokio::time::timeout(self.cfg.drain_grace, sessions.wait()).await.is_err() {
            info!(
                open = self.shared.metrics.sessions_open.get(),
                "grace period over: closing the remaining sessions"
            );
            hard.cancel();
            sessions.wait().await;
        }
    }
}

/// Logs whether the upstream can be reached, retrying with backoff until it can. Sessions do
/// not wait for it: each connects on its own and fails alone.
async fn probe_upstream(nb: Arc<Upstreams>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(250);
    loop {
        match nb.connect(Pick::Session).await {
            Ok(link) => {
                info!(upstream = %link.remote, "upstream reachable");
                return;
            }
            Err(e) => warn!(error = %e, retry_in = ?delay, "upstream unreachable"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
