//! The only layer that owns sockets: listeners, upstream connections, and the session relay.
//!
//! **Invariant**: one client connection ↔ one upstream connection, opened at accept and closed
//! together. The server keeps per-session state (monitors, locks, `wait` triggers); sharing an
//! upstream would need id, monitor and lock rewriting, and a dead client would keep its locks.

mod cluster;
mod listener;
pub mod memory;
pub mod metrics;
mod monitor;
mod reconciler;
pub mod rewrite;
mod session;
mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

pub use listener::{BoundAddr, ListenError, Listener};
pub use monitor::Poke;
pub use upstream::{Pick, UpstreamError, Upstreams};

use crate::cache::LspCache;
use crate::net::remote::{Active, Passive};
use crate::policy::PolicyConfig;
use crate::proxy::metrics::Metrics;
use crate::proxy::rewrite::PortsView;
use crate::timeline::Timelines;
use crate::wire::DEFAULT_MAX_FRAME;

/// The defaults of [`Config::new`]; the command line shows them as its own.
pub mod defaults {
    pub const MAX_SESSIONS: usize = 1024;
    pub const CONNECT_TIMEOUT_SECS: u64 = 5;
    pub const INACTIVITY_PROBE_MS: u64 = 5000;
    pub const SYNC_TIMEOUT_SECS: u64 = 10;
    pub const DRAIN_GRACE_SECS: u64 = 10;
    pub const RECONCILER_LOCK: &str = "ovn_nb_proxy_reconciler";
}

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
    /// The proxy's own monitor connections send an echo after this long without hearing from
    /// the database, and give the connection up after twice as long.
    pub inactivity_probe: Duration,
    /// How long a client transaction on ports may be held while the port cache is not
    /// synchronised; past it the session is closed.
    pub sync_timeout: Duration,
    /// Session transcripts.
    pub record: Option<crate::transcript::record::RecordConfig>,
    /// How long open sessions may run on after a stop was asked for.
    pub drain_grace: Duration,
    /// Certificates for `pssl:` listeners and `ssl:` upstreams.
    pub tls: Option<Arc<crate::net::tls::Tls>>,
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
    /// `--sb-db` given: activations can be seen (finalize needs it), sources recovered.
    pub sb_watched: bool,
    pub metrics: Arc<Metrics>,
    /// Woken when the port cache becomes synchronised: sessions holding a transaction wait on it.
    synced: Notify,
    /// Woken when a client session has reached the database: a monitor waiting out a backoff
    /// tries again at once.
    pub upstream_up: Notify,
    /// Requests to the NB monitor to look at ports again (and its receiving end, taken once).
    pokes: mpsc::Sender<Poke>,
    pokes_rx: std::sync::Mutex<Option<mpsc::Receiver<Poke>>>,
    /// The transcript writer (`--record`).
    pub recorder: Option<Arc<crate::transcript::record::RecordSink>>,
}

impl Shared {
    pub fn new(policy: PolicyConfig, dry_run: bool, sb_watched: bool) -> Self {
        let (pokes, rx) = mpsc::channel(4096);
        Shared {
            cache: Arc::new(LspCache::new()),
            timelines: Timelines::new(),
            policy: std::sync::RwLock::new(Arc::new(policy)),
            dry_run,
            sb_watched,
            metrics: Arc::new(Metrics::new()),
            synced: Notify::new(),
            upstream_up: Notify::new(),
            pokes,
            pokes_rx: std::sync::Mutex::new(Some(rx)),
            recorder: None,
        }
    }

    /// The policy configuration in force.
    pub fn policy(&self) -> Arc<PolicyConfig> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the policy configuration (SIGHUP); sessions pick it up at their next message,
    /// and the reconciler looks at every tagged port again (the tag names may have changed). A
    /// configuration the proxy cannot honour is refused whole.
    pub fn set_policy(&self, policy: PolicyConfig) -> Result<(), String> {
        if policy.finalize_on_activation && !self.sb_watched {
            return Err(
                "finalize-on-activation needs --sb-db: the proxy learns of activations from the Southbound"
                    .into(),
            );
        }
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        self.poke(Poke::Everything);
        Ok(())
    }

    /// Whether the proxy finishes migrations on activation (the policy's setting, with `--sb-db`).
    pub fn finalize(&self) -> bool {
        self.sb_watched && self.policy().finalize_on_activation
    }

    /// Asks the NB monitor to look at ports again (dropped if its queue is full: the ports'
    /// next change is looked at anyway).
    pub fn poke(&self, poke: Poke) {
        if self.pokes.try_send(poke).is_err() {
            warn!("the reconciler's queue of requests is full; the ports' next change is looked at");
        }
    }

    fn take_pokes(&self) -> mpsc::Receiver<Poke> {
        let mut rx = self.pokes_rx.lock().unwrap_or_else(|e| e.into_inner());
        rx.take().unwrap_or_else(|| mpsc::channel(1).1)
    }

    /// The port cache holds a complete initial monitor reply: wake the sessions waiting for it.
    pub fn mark_synced(&self) {
        self.synced.notify_waiters();
    }

    pub fn set_unsynced(&self) {
        self.cache.set_unsynced();
    }

    /// Waits until the port cache is synchronised, `within` at most; whether it is.
    pub async fn wait_synced(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.cache.is_synced() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.cache.is_synced();
            }
        }
    }

    /// The Prometheus text of every metric, with the gauges computed at scrape time.
    pub fn encode_metrics(&self) -> String {
        self.metrics.migrations_in_progress.set(self.timelines.in_progress() as i64);
        self.metrics.migrations_source_unknown.set(self.timelines.unknown_source() as i64);
        if let Some(r) = &self.recorder {
            let dropped = r.dropped();
            let counted = self.metrics.record_lines_dropped.get();
            if dropped > counted {
                self.metrics.record_lines_dropped.inc_by(dropped - counted);
            }
        }
        self.metrics.encode()
    }

    /// What the policy sees: the port cache, and what the timelines remember.
    pub fn view(&self) -> PortsView<'_> {
        PortsView { cache: &self.cache, timelines: &self.timelines, finalize: self.finalize() }
    }
}

impl Config {
    pub fn new(upstreams: Vec<Active>, listen: Vec<Passive>) -> Self {
        Self {
            upstreams,
            listen,
            max_sessions: defaults::MAX_SESSIONS,
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(defaults::CONNECT_TIMEOUT_SECS),
            close_grace: Duration::from_secs(5),
            policy: PolicyConfig::default(),
            dry_run: false,
            sb: Vec::new(),
            inactivity_probe: Duration::from_millis(defaults::INACTIVITY_PROBE_MS),
            sync_timeout: Duration::from_secs(defaults::SYNC_TIMEOUT_SECS),
            record: None,
            drain_grace: Duration::from_secs(defaults::DRAIN_GRACE_SECS),
            tls: None,
            sessions_to_first: false,
            reconciler_lock: defaults::RECONCILER_LOCK.into(),
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
}

/// What `proxy/show` reports besides the shared state.
#[derive(Clone, Default)]
pub struct ProxyInfo {
    pub listeners: Vec<String>,
    pub upstreams: Vec<String>,
    pub sb: Vec<String>,
    pub dry_run: bool,
    /// The upstreams, for the cluster leader in `proxy/show`.
    pub upstream_state: Option<Arc<Upstreams>>,
}

impl Proxy {
    /// Binds every listener, or fails with the first one that cannot be bound.
    pub async fn bind(cfg: Config) -> Result<Self, ListenError> {
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for p in &cfg.listen {
            listeners.push(Listener::bind(p, cfg.tls.as_ref()).await?);
        }
        let mut shared = Shared::new(cfg.policy.clone(), cfg.dry_run, !cfg.sb.is_empty());
        if let Some(rc) = &cfg.record {
            let sink = crate::transcript::record::RecordSink::start(rc.clone()).map_err(|source| {
                ListenError::Bind { remote: format!("record directory {}", rc.dir.display()), source }
            })?;
            shared.recorder = Some(sink);
        }
        let shared = Arc::new(shared);
        let nb = Arc::new(Upstreams::new(
            cfg.upstreams.clone(),
            cfg.connect_timeout,
            cfg.tls.clone(),
            cfg.sessions_to_first,
        ));
        let sb = (!cfg.sb.is_empty())
            .then(|| Arc::new(Upstreams::new(cfg.sb.clone(), cfg.connect_timeout, cfg.tls.clone(), false)));
        Ok(Self { cfg: Arc::new(cfg), shared, nb, sb, listeners })
    }

    /// The port cache, the metrics and the policy, shared with every session.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The listeners and upstreams, as the control socket reports them.
    pub fn info(&self) -> ProxyInfo {
        ProxyInfo {
            listeners: self.listeners.iter().map(|l| l.local_addr().to_string()).collect(),
            upstreams: self.cfg.upstreams.iter().map(ToString::to_string).collect(),
            sb: self.cfg.sb.iter().map(ToString::to_string).collect(),
            dry_run: self.cfg.dry_run,
            upstream_state: Some(self.nb.clone()),
        }
    }

    /// Serves until `shutdown` is cancelled. Then the listeners close at once, open sessions
    /// get `drain_grace` to finish by themselves, and whatever is left is closed.
    pub async fn serve(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let hard = CancellationToken::new();
        tracker.spawn(probe_upstream(self.nb.clone(), shutdown.clone()));
        tracker.spawn(memory::give_back_after_bursts(
            shutdown.clone(),
            self.shared.metrics.memory_trims.clone(),
        ));
        match monitor::spawn(
            self.nb.clone(),
            self.sb.clone(),
            self.cfg.reconciler_lock.clone(),
            self.shared.clone(),
            self.cfg.inactivity_probe,
            shutdown.clone(),
        ) {
            Ok(stopped) => {
                tracker.spawn(async move {
                    let _ = stopped.await;
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the monitor thread: stopping");
                shutdown.cancel();
            }
        }
        if let Some(tls) = &self.cfg.tls {
            tracker.spawn(tls.clone().watch(Duration::from_secs(2), shutdown.clone()));
        }
        let sessions = TaskTracker::new();
        let accepting = Accepting {
            cfg: self.cfg.clone(),
            shared: self.shared.clone(),
            nb: self.nb.clone(),
            permits: Arc::new(Semaphore::new(self.cfg.max_sessions)),
            next_id: Arc::new(AtomicU64::new(1)),
            sessions: sessions.clone(),
            hard: hard.clone(),
        };
        for listener in self.listeners {
            info!(listen = %listener.local_addr(), "listening");
            tracker.spawn(accepting.clone().run(listener, shutdown.clone()));
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
        if let Some(r) = &self.shared.recorder {
            r.stop();
        }
    }
}

/// What a listener's accept loop needs to start sessions.
#[derive(Clone)]
struct Accepting {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    nb: Arc<Upstreams>,
    /// One per session served at once.
    permits: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
    sessions: TaskTracker,
    /// Sessions end on `hard`: at the end of the drain, not at the first signal.
    hard: CancellationToken,
}

impl Accepting {
    /// Accepts clients on `listener` until `shutdown`, one session task each.
    async fn run(self, listener: Listener, shutdown: CancellationToken) {
        loop {
            // A permit first, then accept: past the bound, clients wait in the backlog.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = self.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
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
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let span = tracing::info_span!("session", id, peer = %peer);
            let (cfg, shared, nb, hard) =
                (self.cfg.clone(), self.shared.clone(), self.nb.clone(), self.hard.clone());
            self.sessions.spawn(
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
