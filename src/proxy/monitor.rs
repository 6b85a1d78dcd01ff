//! The proxy's own upstream connections, each holding one `monitor_cond`, all run on a thread
//! of their own (so that loading 100 000 ports, or planning thousands of fixes, never delays a
//! client session):
//!
//! * NB `Logical_Switch_Port` feeds the port cache and the NB side of the migration timelines,
//!   and drives the [reconciler](super::reconciler).
//! * SB `Port_Binding` + `Chassis` (only with `--sb-db`) feeds the SB side of the timelines,
//!   finishes migrations the SB shows activated (finalize on activation), and recovers the
//!   source of a migration the proxy cannot otherwise know.
//! * one `_Server` watch per member of a cluster.
//!
//! **Invariant: no connection of ours waits on a peer that waits on us.** Each connection reads
//! while it writes (the [client](crate::net::client)'s writer is fed by a queue and polled with
//! every read), so the server's replies are always drained and ovsdb-server (which stops
//! reading a client with unsent replies) never stops reading us. What we queue is bounded: echo replies, our probe, and at most
//! `IN_FLIGHT` reconcile transactions.
//!
//! **Invariant: a silent server is noticed.** With nothing received for `--inactivity-probe`,
//! the connection sends an echo of its own; with nothing for twice that, it is given up (the
//! cache is marked not synchronised, `/readyz` says 503) and opened again at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cluster::ServerWatch;
use super::reconciler::{Answer, Reconciler};
use super::upstream::{Pick, Upstreams};
use super::Shared;
use crate::cache::{sb, SbCache, Touched, COLUMNS};
use crate::net::client::{Client, ClientError, Incoming, Origin};
use crate::net::dial::BoxIo;
use crate::policy::{Pre, LSP_TABLE, NB_DB};
use crate::timeline::Stage;

#[derive(Debug, thiserror::Error)]
enum MonitorError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("monitor request refused: {0}")]
    Refused(String),
    #[error("{0}")]
    BadUpdate(String),
}

impl From<crate::cache::BadUpdate> for MonitorError {
    fn from(e: crate::cache::BadUpdate) -> Self {
        MonitorError::BadUpdate(e.to_string())
    }
}

/// Reads a small JSON value (a `_Server` or Southbound update, a notification's params).
fn value(raw: &RawValue) -> Result<Value, MonitorError> {
    serde_json::from_str(raw.get()).map_err(|e| MonitorError::BadUpdate(format!("unreadable update: {e}")))
}

/// A request a handler wants sent on its connection (the loop gives it an id); `token` comes
/// back with the reply.
pub(super) struct Req {
    method: &'static str,
    params: Value,
    token: Token,
}

#[derive(Debug, Clone, Copy)]
enum Token {
    Lock,
    Batch(u64),
}

/// Something outside the NB monitor asks it to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poke {
    /// At one port (the SB showed it activated, or gave its source).
    Port(String),
    /// At every tagged port (the policy config changed).
    Everything,
}

/// What one monitor connection does with what it receives. Each method returns the requests
/// to send; an update it cannot read ends the connection (and so resynchronises).
trait Handler {
    fn label(&self) -> &'static str;
    /// The `monitor_cond` params: `[db, monitor-id, requests]`.
    fn monitor_params(&self) -> Value;
    /// The monitor reply's `result` and each `update2`'s `<table-updates2>`, as JSON text.
    fn initial(&mut self, result: &RawValue) -> Result<Vec<Req>, MonitorError>;
    fn update(&mut self, updates: &RawValue) -> Result<Vec<Req>, MonitorError>;
    /// The reply to one of the handler's own requests.
    fn reply(&mut self, _token: Token, _reply: &Value) -> Vec<Req> {
        Vec::new()
    }
    /// A notification other than `update2` (`locked`, `stolen`).
    fn notification(&mut self, _method: &str, _params: &Value) -> Vec<Req> {
        Vec::new()
    }
    fn poke(&mut self, _poke: Poke) -> Vec<Req> {
        Vec::new()
    }
    fn disconnected(&mut self) {}
    fn reconnected(&mut self) {}
}

/// Keeps one monitor connection up. A connection lost is opened again at once; only while the
/// database cannot be reached does it back off (100 ms doubling to 2 s), and a client session
/// that just reached the database cuts the wait short.
async fn run<H: Handler>(
    upstreams: Arc<Upstreams>,
    pick: Pick,
    mut h: H,
    mut pokes: mpsc::Receiver<Poke>,
    shared: Arc<Shared>,
    probe: Duration,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    let mut lost = false;
    loop {
        match upstreams.connect(pick).await {
            Ok(link) => {
                debug!(upstream = %link.remote, monitor = h.label(), "monitor connected");
                if lost {
                    h.reconnected();
                }
                lost = true;
                delay = Duration::from_millis(100);
                let demoted = link.demoted.clone().unwrap_or_default();
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    // The monitor follows the leader (its writes need the leader's lock).
                    _ = demoted.cancelled(), if pick == Pick::Leader => Ok(()),
                    r = session(link.io, &mut h, &mut pokes, probe, &shared) => r,
                };
                h.disconnected();
                if let Err(e) = r {
                    warn!(error = %e, monitor = h.label(), "monitor lost; resynchronising");
                }
                continue;
            }
            // Nothing to try: the cluster's leader is not known yet. Look again soon.
            Err(e) if e.0.is_empty() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            Err(e) => debug!(error = %e, monitor = h.label(), retry_in = ?delay, "monitor cannot connect"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
            _ = shared.upstream_up.notified() => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// One monitor connection: its `monitor_cond`, then every message handed to the handler as it
/// comes, and the requests the handler asks for sent (the client never waits on a write).
async fn session<H: Handler>(
    io: BoxIo,
    h: &mut H,
    pokes: &mut mpsc::Receiver<Poke>,
    probe: Duration,
    shared: &Shared,
) -> Result<(), MonitorError> {
    let mut conn = Client::new(io, Some(probe));
    let monitor = conn.request("monitor_cond", &h.monitor_params());
    let mut sent: HashMap<u64, Token> = HashMap::new();
    let mut synced = false;
    loop {
        let out = tokio::select! {
            biased;
            m = conn.next(|m| handle(h, m, monitor, &mut sent, &mut synced)) => match m {
                Ok(out) => out?,
                Err(e) => {
                    if matches!(e, ClientError::Stalled(_)) {
                        shared.metrics.monitor_stalls.inc();
                    }
                    return Err(e.into());
                }
            },
            Some(p) = pokes.recv(), if synced => h.poke(p),
        };
        for req in out {
            let id = conn.request(req.method, &req.params);
            sent.insert(id, req.token);
        }
    }
}

/// What one message means to the handler: the requests it asks for.
fn handle<H: Handler>(
    h: &mut H,
    m: Incoming<'_>,
    monitor: u64,
    sent: &mut HashMap<u64, Token>,
    synced: &mut bool,
) -> Result<Vec<Req>, MonitorError> {
    crate::proxy::memory::note(m.bytes.len());
    let msg = m.envelope;
    match (m.origin, msg.method.as_deref()) {
        (Origin::Server, Some("update2")) => {
            // params: [<monitor-id>, <table-updates2>]; each handler reads its updates its own way.
            let updates =
                msg.params.and_then(|p| serde_json::from_str::<(IgnoredAny, &RawValue)>(p.get()).ok());
            match updates {
                Some((_, u)) => h.update(u),
                None => Ok(Vec::new()),
            }
        }
        (Origin::Server, Some(method)) => {
            let params = msg.params.map(value).transpose()?.unwrap_or_else(|| json!([]));
            Ok(h.notification(method, &params))
        }
        (Origin::Reply(n), _) if n == monitor => {
            if let Some(err) = msg.error.filter(|e| e.get() != "null") {
                return Err(MonitorError::Refused(err.get().to_string()));
            }
            *synced = true;
            let result =
                msg.result.ok_or_else(|| MonitorError::Refused("a reply without a result".into()))?;
            h.initial(result)
        }
        (Origin::Reply(n), _) => match (sent.remove(&n), serde_json::from_slice::<Value>(m.bytes)) {
            (Some(token), Ok(reply)) => Ok(h.reply(token, &reply)),
            _ => Ok(Vec::new()),
        },
        _ => Ok(Vec::new()),
    }
}

/// Starts the monitor thread: the NB monitor (always), the SB monitor (with `--sb-db`), and one
/// `_Server` watch per member of a cluster, on a one-thread runtime of their own. Returns a
/// receiver that completes when they have all stopped (after `shutdown`).
pub(super) fn spawn(
    nb: Arc<Upstreams>,
    sb: Option<Arc<Upstreams>>,
    lock: String,
    shared: Arc<Shared>,
    probe: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, stopped) = tokio::sync::oneshot::channel();
    let pokes = shared.take_pokes();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("ovn-nb-proxy-monitor".into()).spawn(move || {
        runtime.block_on(async move {
            let tracker = tokio_util::task::TaskTracker::new();
            if let Some(leader) = &nb.leader {
                for (i, remote) in nb.remotes().iter().enumerate() {
                    let watch =
                        ServerWatch::new(i, remote.to_string(), leader.clone(), shared.metrics.clone());
                    let (keep, idle) = mpsc::channel(1);
                    let (nb, shared, shutdown) = (nb.clone(), shared.clone(), shutdown.clone());
                    tracker.spawn(async move {
                        let _keep = keep;
                        run(nb, Pick::Member(i), watch, idle, shared, probe, shutdown).await
                    });
                }
            }
            let h = NbHandler { shared: shared.clone(), lock, holding: false, rec: Reconciler::default() };
            tracker.spawn(run(nb, Pick::Leader, h, pokes, shared.clone(), probe, shutdown.clone()));
            if let Some(sb) = sb {
                let sbh = SbHandler { shared: shared.clone(), cache: SbCache::new() };
                let (keep, idle) = mpsc::channel(1);
                tracker.spawn(async move {
                    let _keep = keep;
                    run(sb, Pick::Leader, sbh, idle, shared, probe, shutdown).await
                });
            }
            tracker.close();
            tracker.wait().await;
        });
        let _ = done.send(());
    })?;
    Ok(stopped)
}

impl Handler for ServerWatch {
    fn label(&self) -> &'static str {
        "_Server"
    }

    fn monitor_params(&self) -> Value {
        ServerWatch::monitor_params()
    }

    fn initial(&mut self, result: &RawValue) -> Result<Vec<Req>, MonitorError> {
        self.apply(&value(result)?);
        Ok(Vec::new())
    }

    fn update(&mut self, updates: &RawValue) -> Result<Vec<Req>, MonitorError> {
        self.apply(&value(updates)?);
        Ok(Vec::new())
    }

    fn disconnected(&mut self) {
        self.lost();
    }
}

struct NbHandler {
    shared: Arc<Shared>,
    /// The OVSDB lock that makes one proxy, among several, the active reconciler.
    lock: String,
    holding: bool,
    rec: Reconciler,
}

impl NbHandler {
    /// Whether this proxy decides fixes: the lock holder, or a dry run (which never takes the
    /// lock, and logs what it would do).
    fn reconciling(&self) -> bool {
        self.holding || self.shared.dry_run
    }

    /// The reconcile transactions the queue lets go now.
    fn batches(&mut self) -> Vec<Req> {
        if !self.reconciling() {
            return Vec::new();
        }
        self.rec
            .next_batches(&self.shared, &self.lock)
            .into_iter()
            .map(|(token, params)| Req { method: "transact", params, token: Token::Batch(token) })
            .collect()
    }

    /// Rows a monitor message touched: the timelines follow them, the reconciler looks at the
    /// tagged ones (and at the ones that just lost their tags). `initial`: the rows of a
    /// (re)synchronisation, seen without a previous state; the reconciler's first pass looks
    /// at them.
    fn touched(&mut self, touched: Vec<Touched>, initial: bool) {
        let shared = self.shared.clone();
        let policy = shared.policy();
        let key = policy.destination_key.as_str();
        let now = SystemTime::now();
        let timelines = &shared.timelines;
        let reconciling = self.reconciling() && !initial;
        // A change of a few rows is someone's write: its fixes go before a burst's.
        let urgent = touched.len() <= 8;
        for t in touched {
            let Some(after) = &t.after else {
                if let Some(before) = &t.before {
                    timelines.forget(before.name());
                }
                self.rec.forget(t.uuid);
                continue;
            };
            if let Some(before) = t.before.as_ref().filter(|b| b.name() != after.name()) {
                timelines.rename(before.name(), after.name());
            }
            let tagged_before = t.before.as_ref().is_some_and(|b| b.has_tag(key));
            if !tagged_before && !after.has_tag(key) && !timelines.contains(after.name()) {
                self.rec.forget(t.uuid);
                continue;
            }
            let row = after.state(t.uuid);
            if reconciling {
                // Decided with the memory as it was before this change.
                let before = t.before.as_ref().map(|b| b.state(t.uuid));
                self.rec.look(
                    &shared,
                    t.uuid,
                    Pre::from_option(before.as_ref()),
                    after.clone(),
                    &row,
                    urgent,
                );
            }
            for stage in timelines.observe_nb(&row, &policy, now) {
                if !initial {
                    info!(port = %row.name, stage = %stage.as_str(), "migration");
                }
            }
        }
    }

    /// Looks at every tagged port, as first seen (after taking the lock, or a config change).
    fn first_pass(&mut self) {
        if !self.reconciling() {
            return;
        }
        let shared = self.shared.clone();
        let key = shared.policy().destination_key.clone();
        // One row at a time: a copy of every row at once would cost the table's size again.
        // The tagged rows, and the untagged ones whose final options are still due.
        let due = shared.timelines.dues().into_iter().filter_map(|p| shared.cache.uuid_of(&p));
        for uuid in shared.cache.tagged(&key).into_iter().chain(due) {
            let Some(row) = shared.cache.row(uuid) else { continue };
            let state = row.state(uuid);
            self.rec.look(&shared, uuid, Pre::Unseen, row, &state, false);
        }
        if self.rec.queued() > 0 {
            info!(ports = self.rec.queued(), "ports to fix found at the reconciler's first look");
        }
    }

    /// Became the active reconciler: look at every port once.
    fn took_lock(&mut self) -> Vec<Req> {
        if self.holding {
            return Vec::new();
        }
        self.holding = true;
        self.shared.metrics.reconciler_lock_held.set(1);
        info!(lock = %self.lock, "this proxy is the active reconciler");
        self.first_pass();
        self.batches()
    }

    /// The lock went to another proxy (`stolen`, `not owner`): it decides now.
    fn lost_lock(&mut self) {
        if self.holding {
            warn!(lock = %self.lock, "reconciler lock lost");
        }
        self.holding = false;
        self.rec.clear();
        self.shared.metrics.reconciler_lock_held.set(0);
    }
}

impl Handler for NbHandler {
    fn label(&self) -> &'static str {
        "nb"
    }

    fn monitor_params(&self) -> Value {
        json!([NB_DB, ["ovn-nb-proxy", LSP_TABLE], {LSP_TABLE: [{"columns": COLUMNS}]}])
    }

    fn initial(&mut self, result: &RawValue) -> Result<Vec<Req>, MonitorError> {
        self.shared.cache.track(&self.shared.policy().destination_key);
        let touched = self.shared.cache.reset(result.get())?;
        self.rec.revalidate(&self.shared.cache);
        self.shared.mark_synced();
        self.shared.metrics.monitor_resyncs.inc();
        info!(ports = self.shared.cache.len(), "port cache synchronised");
        self.touched(touched, true);
        // Ports deleted while the monitor was away take their timelines with them.
        for port in self.shared.timelines.ports() {
            if self.shared.cache.uuid_of(&port).is_none() {
                self.shared.timelines.forget(&port);
            }
        }
        if self.shared.dry_run {
            // A dry run never takes the reconciler lock: it looks now, and logs.
            self.first_pass();
            return Ok(self.batches());
        }
        // Ask for the reconciler lock; the server answers now or with `locked` later.
        Ok(vec![Req { method: "lock", params: json!([self.lock]), token: Token::Lock }])
    }

    fn update(&mut self, updates: &RawValue) -> Result<Vec<Req>, MonitorError> {
        self.shared.cache.track(&self.shared.policy().destination_key);
        let touched = self.shared.cache.apply(updates.get())?;
        self.touched(touched, false);
        Ok(self.batches())
    }

    fn reply(&mut self, token: Token, reply: &Value) -> Vec<Req> {
        match token {
            Token::Lock if reply["result"]["locked"] == json!(true) => self.took_lock(),
            Token::Lock => Vec::new(),
            Token::Batch(b) => match self.rec.answered(&self.shared, b, reply) {
                Answer::Done => self.batches(),
                Answer::NotOwner => {
                    self.lost_lock();
                    Vec::new()
                }
            },
        }
    }

    fn notification(&mut self, method: &str, params: &Value) -> Vec<Req> {
        if params.get(0).and_then(Value::as_str) != Some(self.lock.as_str()) {
            return Vec::new();
        }
        match method {
            "locked" => self.took_lock(),
            "stolen" => {
                self.lost_lock();
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn poke(&mut self, poke: Poke) -> Vec<Req> {
        match poke {
            Poke::Everything => {
                // The tag names may have changed: the sessions' fast path waits for the count.
                self.shared.cache.track(&self.shared.policy().destination_key);
                self.first_pass()
            }
            Poke::Port(port) => {
                if !self.reconciling() {
                    return Vec::new();
                }
                let shared = self.shared.clone();
                let Some(uuid) = shared.cache.uuid_of(&port) else { return Vec::new() };
                let Some(row) = shared.cache.row(uuid) else { return Vec::new() };
                let state = row.state(uuid);
                // The row itself is its previous state: the migration goes on, only what the
                // proxy knows of it changed.
                self.rec.look(&shared, uuid, Pre::Known(&state), row, &state, true);
            }
        }
        self.batches()
    }

    fn disconnected(&mut self) {
        self.shared.set_unsynced();
        // The lock goes with the connection; the planned fixes wait for the next one.
        self.rec.detach();
        self.holding = false;
        self.shared.metrics.reconciler_lock_held.set(0);
    }

    fn reconnected(&mut self) {
        self.shared.metrics.upstream_reconnects.inc();
    }
}

struct SbHandler {
    shared: Arc<Shared>,
    cache: SbCache,
}

impl SbHandler {
    fn touched(&mut self, ports: Vec<String>) {
        let now = SystemTime::now();
        let aliases = self.cache.aliases();
        let shared = &self.shared;
        for port in ports {
            let Some(binding) = self.cache.binding(&port) else { continue };
            if let Some(source) = shared.timelines.learn_source(&port, &binding, &aliases) {
                info!(%port, %source, "source recovered from the Southbound: the chassis binding the port");
                shared.poke(Poke::Port(port.clone()));
            }
            for stage in shared.timelines.observe_sb(&port, &binding, &aliases, now) {
                info!(%port, stage = %stage.as_str(), "migration");
                let Some(m) = shared.timelines.get(&port) else { continue };
                if stage == Stage::SingleChassis {
                    if let Some(d) = m.elapsed_to(Stage::SingleChassis) {
                        shared.metrics.migration_seconds.observe(d.as_secs_f64());
                    }
                }
                if stage == Stage::Activated
                    && shared.finalize()
                    && m.phase == crate::timeline::Status::InProgress
                {
                    shared.timelines.mark_finalized(&port, now);
                    info!(%port, destination = %m.destination, "destination activated: finishing the migration");
                    shared.poke(Poke::Port(port.clone()));
                }
            }
        }
    }
}

impl Handler for SbHandler {
    fn label(&self) -> &'static str {
        "sb"
    }

    fn monitor_params(&self) -> Value {
        json!(["OVN_Southbound", ["ovn-nb-proxy", "sb"], sb::monitor_requests()])
    }

    fn initial(&mut self, result: &RawValue) -> Result<Vec<Req>, MonitorError> {
        let result = value(result)?;
        self.cache.clear();
        let ports = self.cache.apply(&result);
        info!(bindings = ports.len(), "southbound view synchronised");
        self.touched(ports);
        Ok(Vec::new())
    }

    fn update(&mut self, updates: &RawValue) -> Result<Vec<Req>, MonitorError> {
        let ports = self.cache.apply(&value(updates)?);
        self.touched(ports);
        Ok(Vec::new())
    }
}
