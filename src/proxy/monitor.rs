//! The proxy's own upstream connection: a `monitor_cond` on `Logical_Switch_Port` that feeds
//! the port cache, and the reconciler that fixes ports tagged by writers that bypassed the proxy
//! (another CMS instance, `ovn-nbctl` on the database host, writes made while the proxy was
//! down).
//!
//! **Invariant**: the reconciler never overwrites blindly. Each of its transactions starts with
//! a `wait` that the row's `options` and `external_ids` are still what the cache says; if a
//! concurrent write got there first, the transaction fails and the row is looked at again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::upstream::{connect_any, BoxIo};
use super::{Config, Shared};
use crate::cache::COLUMNS;
use crate::policy::{plan_reconcile, LspView, LSP_TABLE, NB_DB};
use crate::rewrite::show_opts;
use crate::wire::FrameCodec;

/// Our monitor id, and the id of the monitor request.
const MONITOR_ID: &str = "ovn-nb-proxy";
const MONITOR_REQ_ID: u64 = 0;
/// Consecutive failed reconciles of one row before the reconciler waits for the next update.
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
enum MonitorError {
    #[error("upstream: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream framing: {0}")]
    Frame(#[from] crate::wire::FrameError),
    #[error("upstream closed the monitor connection")]
    Closed,
    #[error("monitor request refused: {0}")]
    Refused(String),
}

pub(super) async fn run(cfg: Arc<Config>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(250);
    loop {
        if let Ok((io, remote)) = connect_any(&cfg.upstreams, cfg.connect_timeout).await {
            debug!(upstream = %remote, "monitor connected");
            delay = Duration::from_millis(250);
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = session(io, &shared) => r,
            };
            shared.cache.set_unsynced();
            if let Err(e) = r {
                warn!(error = %e, "port monitor lost; resynchronising");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Reconciles in flight (by request id) and consecutive failures per row.
#[derive(Default)]
struct Reconciler {
    next_id: u64,
    in_flight: HashMap<u64, String>,
    attempts: HashMap<String, u32>,
}

impl Reconciler {
    fn busy(&self, uuid: &str) -> bool {
        self.in_flight.values().any(|u| u == uuid)
    }
}

async fn session(io: BoxIo, shared: &Shared) -> Result<(), MonitorError> {
    let (mut r, mut w) = tokio::io::split(io);
    let request = json!({
        "method": "monitor_cond",
        "params": [NB_DB, [MONITOR_ID, LSP_TABLE], {LSP_TABLE: [{"columns": COLUMNS}]}],
        "id": MONITOR_REQ_ID,
    });
    w.write_all(request.to_string().as_bytes()).await?;
    let mut codec = FrameCodec::new(usize::MAX);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut rec = Reconciler { next_id: MONITOR_REQ_ID + 1, ..Default::default() };
    loop {
        if r.read_buf(&mut buf).await? == 0 {
            return Err(MonitorError::Closed);
        }
        while let Some(chunk) = codec.decode(&mut buf)? {
            let Ok(msg) = serde_json::from_slice::<Value>(chunk.bytes()) else { continue };
            handle(&msg, shared, &mut rec, &mut w).await?;
        }
    }
}

async fn handle<W: AsyncWrite + Unpin>(
    msg: &Value,
    shared: &Shared,
    rec: &mut Reconciler,
    w: &mut W,
) -> Result<(), MonitorError> {
    let id = msg.get("id").unwrap_or(&Value::Null);
    match msg.get("method").and_then(Value::as_str) {
        // The server's inactivity probe: answer it, or it drops us.
        Some("echo") if !id.is_null() => {
            let reply =
                json!({"id": id, "result": msg.get("params").cloned().unwrap_or(json!([])), "error": null});
            w.write_all(reply.to_string().as_bytes()).await?;
        }
        Some("update2") => {
            let touched =
                msg.get("params").and_then(|p| p.get(1)).map(|u| shared.cache.apply(u)).unwrap_or_default();
            for uuid in touched {
                reconcile(&uuid, shared, rec, w).await?;
            }
        }
        Some(_) => {}
        None if id.as_u64() == Some(MONITOR_REQ_ID) => {
            if let Some(err) = msg.get("error").filter(|e| !e.is_null()) {
                return Err(MonitorError::Refused(err.to_string()));
            }
            let touched = shared.cache.reset(msg.get("result").unwrap_or(&Value::Null));
            shared.metrics.monitor_resyncs.inc();
            info!(ports = shared.cache.len(), "port cache synchronised");
            for uuid in touched {
                reconcile(&uuid, shared, rec, w).await?;
            }
        }
        None => {
            let Some(uuid) = id.as_u64().and_then(|n| rec.in_flight.remove(&n)) else { return Ok(()) };
            let results = msg.get("result").and_then(Value::as_array).cloned().unwrap_or_default();
            let failed = msg.get("error").is_some_and(|e| !e.is_null())
                || results.iter().any(|r| r.get("error").is_some_and(|e| !e.is_null()));
            if failed {
                shared.metrics.reconciles.get_or_create(&[("outcome", "conflict")]).inc();
                debug!(%uuid, reply = %msg, "reconcile lost a race; looking again");
                let n = rec.attempts.entry(uuid.clone()).or_default();
                *n += 1;
                if *n < MAX_ATTEMPTS {
                    reconcile(&uuid, shared, rec, w).await?;
                }
            } else {
                shared.metrics.reconciles.get_or_create(&[("outcome", "applied")]).inc();
                rec.attempts.remove(&uuid);
            }
        }
    }
    Ok(())
}

/// Sends a conditional fix for `uuid` if the policy wants one and none is in flight.
async fn reconcile<W: AsyncWrite + Unpin>(
    uuid: &str,
    shared: &Shared,
    rec: &mut Reconciler,
    w: &mut W,
) -> Result<(), MonitorError> {
    if rec.busy(uuid) {
        return Ok(());
    }
    let Some(row) = shared.cache.by_uuid(uuid) else { return Ok(()) };
    let Some((ops, change)) = plan_reconcile(&row, &shared.policy) else { return Ok(()) };
    info!(
        target: "ovn_nb_proxy::audit",
        port = %change.port,
        before = ?show_opts(&change.before),
        after = ?show_opts(&change.after),
        cause = %change.cause.as_str(),
        client = "reconciler",
        dry_run = shared.dry_run,
        "reconcile"
    );
    if shared.dry_run {
        shared.metrics.reconciles.get_or_create(&[("outcome", "dry_run")]).inc();
        return Ok(());
    }
    let id = rec.next_id;
    rec.next_id += 1;
    let mut params = vec![json!(NB_DB)];
    params.extend(ops);
    let req = json!({"method": "transact", "params": params, "id": id});
    w.write_all(req.to_string().as_bytes()).await?;
    rec.in_flight.insert(id, uuid.to_string());
    Ok(())
}
