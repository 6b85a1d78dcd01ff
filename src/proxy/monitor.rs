//! The proxy's own upstream connections, each holding one `monitor_cond`:
//!
//! * NB `Logical_Switch_Port` feeds the port cache and the NB side of the migration timelines,
//!   and drives the reconciler, which fixes ports tagged by writers that bypassed the proxy
//!   (another CMS instance, `ovn-nbctl` on the database host, writes made while the proxy was
//!   down), and finishes migrations the SB shows activated when finalize-on-activation is on.
//! * SB `Port_Binding` + `Chassis` (only with `--sb-db`) feeds the SB side of the timelines.
//!
//! **Invariant**: the reconciler never overwrites blindly. Each of its transactions starts with
//! a `wait` that the row's `options` and `external_ids` are still what the cache says; if a
//! concurrent write got there first, the transaction fails and the row is looked at again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cluster::ServerWatch;
use super::upstream::{BoxIo, Pick, Upstreams};
use super::Shared;
use crate::cache::{sb, SbCache, Touched, COLUMNS};
use crate::policy::{plan_reconcile, LspState, LSP_TABLE, NB_DB};
use crate::rewrite::{audit, Audit};
use crate::timeline::{Phase, Stage};
use crate::wire::{Envelope, FrameCodec};

/// The id of the monitor request on each of our connections; our own requests count from 1.
const MONITOR_REQ_ID: u64 = 0;
/// The monitor connection's read buffer, kept between messages.
const READ_BUF: usize = 64 * 1024;
/// Consecutive failed reconciles of one row before the reconciler waits for the next update.
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
enum MonitorError {
    #[error("upstream: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream framing: {0}")]
    Frame(#[from] crate::wire::FrameError),
    #[error("upstream closed the connection")]
    Closed,
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

/// A request a handler wants sent on its connection (the loop gives it an id).
struct Req {
    method: &'static str,
    params: Value,
}

fn transact(params: Value) -> Req {
    Req { method: "transact", params }
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
    /// A reply to one of the handler's own requests (`request` is what was sent).
    fn reply(&mut self, _request: &Value, _reply: &Value) -> Vec<Req> {
        Vec::new()
    }
    /// A notification other than `update2` (`locked`, `stolen`).
    fn notification(&mut self, _method: &str, _params: &Value) -> Vec<Req> {
        Vec::new()
    }
    /// Something outside asks to look at `key` again.
    fn poke(&mut self, _key: String) -> Vec<Req> {
        Vec::new()
    }
    fn disconnected(&mut self) {}
    fn reconnected(&mut self) {}
}

/// Keeps one monitor connection up (reconnecting with backoff, resynchronising each time).
async fn run<H: Handler>(
    upstreams: Arc<Upstreams>,
    pick: Pick,
    mut h: H,
    mut pokes: mpsc::Receiver<String>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(250);
    let mut lost = false;
    loop {
        match upstreams.connect(pick).await {
            Ok(link) => {
                debug!(upstream = %link.remote, monitor = h.label(), "monitor connected");
                if lost {
                    h.reconnected();
                }
                lost = true;
                delay = Duration::from_millis(250);
                let demoted = link.demoted.clone().unwrap_or_default();
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    // The monitor follows the leader (its writes need the leader's lock).
                    _ = demoted.cancelled(), if pick == Pick::Leader => Ok(()),
                    r = session(link.io, &mut h, &mut pokes) => r,
                };
                h.disconnected();
                if let Err(e) = r {
                    warn!(error = %e, monitor = h.label(), "monitor lost; resynchronising");
                }
            }
            // Nothing to try: the cluster's leader is not known yet. Look again soon.
            Err(e) if e.0.is_empty() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            Err(e) => debug!(error = %e, monitor = h.label(), "monitor cannot connect"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn session<H: Handler>(
    io: BoxIo,
    h: &mut H,
    pokes: &mut mpsc::Receiver<String>,
) -> Result<(), MonitorError> {
    let (mut r, mut w) = tokio::io::split(io);
    let request = json!({"method": "monitor_cond", "params": h.monitor_params(), "id": MONITOR_REQ_ID});
    w.write_all(request.to_string().as_bytes()).await?;
    let mut codec = FrameCodec::new(usize::MAX);
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut next_id = MONITOR_REQ_ID + 1;
    let mut sent: HashMap<u64, Value> = HashMap::new();
    let mut synced = false;
    loop {
        let mut out = Vec::new();
        tokio::select! {
            n = r.read_buf(&mut buf) => {
                if n? == 0 {
                    return Err(MonitorError::Closed);
                }
                while let Some(chunk) = codec.decode(&mut buf)? {
                    // Only the envelope is parsed here; each handler reads its updates its own way.
                    let Ok(msg) = Envelope::parse(chunk.bytes()) else { continue };
                    let id = msg.id.filter(|id| id.get() != "null");
                    match msg.method.as_deref() {
                        // The server's inactivity probe: answer it, or it drops us.
                        Some("echo") if let Some(id) = id => {
                            let params = msg.params.map_or("[]", |r| r.get());
                            let reply = format!(r#"{{"id":{},"result":{params},"error":null}}"#, id.get());
                            w.write_all(reply.as_bytes()).await?;
                        }
                        Some("update2") => {
                            // params: [<monitor-id>, <table-updates2>]
                            let updates = msg.params.and_then(|p| {
                                serde_json::from_str::<(IgnoredAny, &RawValue)>(p.get()).ok()
                            });
                            if let Some((_, u)) = updates {
                                out.extend(h.update(u)?);
                            }
                        }
                        Some(method) => {
                            let params = msg.params.map(value).transpose()?.unwrap_or_else(|| json!([]));
                            out.extend(h.notification(method, &params));
                        }
                        None => {
                            let n = id.and_then(|id| id.get().parse::<u64>().ok());
                            if n == Some(MONITOR_REQ_ID) {
                                if let Some(err) = msg.error.filter(|e| e.get() != "null") {
                                    return Err(MonitorError::Refused(err.get().to_string()));
                                }
                                synced = true;
                                let result =
                                    msg.result.ok_or_else(|| MonitorError::Refused("a reply without a result".into()))?;
                                out.extend(h.initial(result)?);
                            } else if let Some(req) = n.and_then(|n| sent.remove(&n)) {
                                let Ok(reply) = serde_json::from_slice::<Value>(chunk.bytes()) else { continue };
                                out.extend(h.reply(&req, &reply));
                            }
                        }
                    }
                }
            }
            Some(key) = pokes.recv(), if synced => out.extend(h.poke(key)),
        }
        // The buffer grew to hold a big message (the initial reply): give the memory back.
        if buf.is_empty() && buf.capacity() > 4 * READ_BUF {
            buf = BytesMut::with_capacity(READ_BUF);
        }
        for req in out {
            let id = next_id;
            next_id += 1;
            let msg = json!({"method": req.method, "params": req.params, "id": id});
            w.write_all(msg.to_string().as_bytes()).await?;
            sent.insert(id, msg);
        }
    }
}

/// Starts the NB monitor (always), the SB monitor (with `--sb-db`), and one `_Server` watch
/// per member of a cluster.
pub(super) fn spawn(
    nb: Arc<Upstreams>,
    sb: Option<Arc<Upstreams>>,
    lock: String,
    shared: Arc<Shared>,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) {
    if let Some(leader) = &nb.leader {
        for (i, remote) in nb.remotes().iter().enumerate() {
            let watch = ServerWatch::new(i, remote.to_string(), leader.clone(), shared.metrics.clone());
            let (keep, idle) = mpsc::channel(1);
            let (nb, shutdown) = (nb.clone(), shutdown.clone());
            tracker.spawn(async move {
                let _keep = keep;
                run(nb, Pick::Member(i), watch, idle, shutdown).await
            });
        }
    }
    let (poke_tx, poke_rx) = mpsc::channel(1024);
    let h = NbHandler {
        shared: shared.clone(),
        lock,
        holding: false,
        in_flight: HashMap::new(),
        attempts: HashMap::new(),
    };
    tracker.spawn(run(nb, Pick::Leader, h, poke_rx, shutdown.clone()));
    if let Some(sb) = sb {
        let sbh = SbHandler { shared, cache: SbCache::new(), finalize: poke_tx };
        let (keep, idle) = mpsc::channel(1);
        tracker.spawn(async move {
            let _keep = keep;
            run(sb, Pick::Leader, sbh, idle, shutdown).await
        });
    }
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
    /// Reconcile transactions in flight, by port uuid.
    in_flight: HashMap<String, ()>,
    /// Consecutive failed reconciles per port uuid.
    attempts: HashMap<String, u32>,
}

impl NbHandler {
    /// A conditional fix for a row, if the policy wants one, this proxy holds the reconciler
    /// lock, and no fix for the row is in flight. The transaction asserts the lock, so a proxy
    /// that lost it in the meantime writes nothing.
    fn reconcile(&mut self, before: Option<&LspState>, row: &LspState) -> Option<Req> {
        if !self.holding || self.in_flight.contains_key(&row.uuid) {
            return None;
        }
        let shared = &self.shared;
        let view = shared.view();
        let finalized = |p: &str, d: &str| crate::policy::LspView::finalized(&view, p, d);
        let (ops, change) = plan_reconcile(before, row, &shared.policy(), &finalized)?;
        audit(Audit::Reconcile, &change, "reconciler", shared.dry_run);
        if shared.dry_run {
            shared.metrics.reconciles.get_or_create(&[("outcome", "dry_run")]).inc();
            return None;
        }
        self.in_flight.insert(row.uuid.clone(), ());
        let mut params = vec![json!(NB_DB), json!({"op": "assert", "lock": self.lock})];
        params.extend(ops);
        Some(transact(Value::Array(params)))
    }

    fn touched(&mut self, touched: Vec<Touched>) -> Vec<Req> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        let policy = self.shared.policy();
        for t in touched {
            match t.after_state() {
                Some(row) => {
                    for stage in self.shared.timelines.observe_nb(&row, &policy, now) {
                        info!(port = %row.name, stage = %stage.as_str(), "migration");
                    }
                    out.extend(self.reconcile(t.before_state().as_ref(), &row));
                }
                None => {
                    if let Some(old) = &t.before {
                        self.shared.timelines.forget(old.name());
                    }
                }
            }
        }
        out
    }

    /// Became the active reconciler: look at every port once.
    fn took_lock(&mut self) -> Vec<Req> {
        if self.holding {
            return Vec::new();
        }
        self.holding = true;
        self.shared.metrics.reconciler_lock_held.set(1);
        info!(lock = %self.lock, "this proxy is the active reconciler");
        // One row at a time: a copy of every row at once would cost the table's size again.
        let cache = self.shared.cache.clone();
        cache.uuids().into_iter().filter_map(|u| self.reconcile(None, &cache.state(u)?)).collect()
    }

    fn lost_lock(&mut self) {
        if self.holding {
            warn!(lock = %self.lock, "reconciler lock lost");
        }
        self.holding = false;
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
        self.in_flight.clear();
        let touched = self.shared.cache.reset(result.get())?;
        self.shared.metrics.monitor_resyncs.inc();
        info!(ports = self.shared.cache.len(), "port cache synchronised");
        let mut out = self.touched(touched);
        // Ask for the reconciler lock; the server answers now or with `locked` later.
        out.push(Req { method: "lock", params: json!([self.lock]) });
        Ok(out)
    }

    fn update(&mut self, updates: &RawValue) -> Result<Vec<Req>, MonitorError> {
        let touched = self.shared.cache.apply(updates.get())?;
        Ok(self.touched(touched))
    }

    fn reply(&mut self, request: &Value, reply: &Value) -> Vec<Req> {
        if request["method"] == "lock" {
            return if reply["result"]["locked"] == json!(true) { self.took_lock() } else { Vec::new() };
        }
        // A reconcile: the wait op's `where` names the row.
        let uuid = request["params"][2]["where"][0][2][1].as_str().unwrap_or_default().to_string();
        self.in_flight.remove(&uuid);
        let results = reply.get("result").and_then(Value::as_array).cloned().unwrap_or_default();
        let failed = reply.get("error").is_some_and(|e| !e.is_null())
            || results.iter().any(|r| r.get("error").is_some_and(|e| !e.is_null()));
        if !failed {
            self.shared.metrics.reconciles.get_or_create(&[("outcome", "applied")]).inc();
            self.attempts.remove(&uuid);
            return Vec::new();
        }
        if results.first().and_then(|r| r.get("error")).is_some_and(|e| e == "not owner") {
            self.shared.metrics.reconciles.get_or_create(&[("outcome", "not_owner")]).inc();
            self.lost_lock();
            return Vec::new();
        }
        self.shared.metrics.reconciles.get_or_create(&[("outcome", "conflict")]).inc();
        debug!(%uuid, %reply, "reconcile lost a race; looking again");
        let n = self.attempts.entry(uuid.clone()).or_default();
        *n += 1;
        if *n >= MAX_ATTEMPTS {
            warn!(%uuid, "reconcile keeps losing races; waiting for the next change");
            return Vec::new();
        }
        let Some(row) = crate::policy::LspView::by_uuid(&*self.shared.cache, &uuid) else {
            return Vec::new();
        };
        self.reconcile(None, &row).into_iter().collect()
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

    /// The SB showed the destination of `port` activated: finish the migration.
    fn poke(&mut self, port: String) -> Vec<Req> {
        let Some(row) = crate::policy::LspView::by_name(&*self.shared.cache, &port) else {
            return Vec::new();
        };
        self.reconcile(Some(&row), &row).into_iter().collect()
    }

    fn disconnected(&mut self) {
        self.shared.cache.set_unsynced();
        self.in_flight.clear();
        self.lost_lock();
    }

    fn reconnected(&mut self) {
        self.shared.metrics.upstream_reconnects.inc();
    }
}

struct SbHandler {
    shared: Arc<Shared>,
    cache: SbCache,
    finalize: mpsc::Sender<String>,
}

impl SbHandler {
    fn touched(&mut self, ports: Vec<String>) {
        let now = SystemTime::now();
        let aliases = self.cache.aliases();
        for port in ports {
            let Some(binding) = self.cache.binding(&port) else { continue };
            for stage in self.shared.timelines.observe_sb(&port, &binding, &aliases, now) {
                info!(%port, stage = %stage.as_str(), "migration");
                let Some(m) = self.shared.timelines.get(&port) else { continue };
                if stage == Stage::SingleChassis {
                    if let Some(d) = m.elapsed_to(Stage::SingleChassis) {
                        self.shared.metrics.migration_seconds.observe(d.as_secs_f64());
                    }
                }
                if stage == Stage::Activated && self.shared.finalize && m.phase == Phase::InProgress {
                    self.shared.timelines.mark_finalized(&port, now);
                    info!(%port, destination = %m.destination, "destination activated: finishing the migration");
                    if self.finalize.try_send(port.clone()).is_err() {
                        warn!(%port, "finalize queue full; the next change of the port finishes it");
                    }
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
