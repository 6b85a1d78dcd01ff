//! The commands of the `ovs-appctl` control socket (`--unixctl PATH`). OVS's unixctl protocol
//! is JSON-RPC 1.0 over a unix socket: requests carry string arguments, replies carry a string
//! `result` or a string `error`. `jsonrpc-core` dispatches; `reply` reshapes its answers into
//! what `ovs-appctl` accepts. No sockets here: `unixctl` owns them.

use std::sync::Arc;
use std::time::SystemTime;

use jsonrpc_core::{Error, IoHandler, Params, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{ListenError, Listener, ProxyInfo, Shared};

pub mod daemon;
pub mod docs;
mod http;
mod unixctl;

/// Command, argument synopsis, what it does (`list-commands` prints the first two; the manual
/// page all three).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("exit", "", "stop: no new sessions, the open ones drain (as on SIGTERM)"),
    ("list-commands", "", "list these commands"),
    ("version", "", "print the version"),
    ("proxy/show", "", "listeners, upstreams, the cluster leader, sessions, the port cache, the reconciler"),
    ("metrics/show", "", "the Prometheus metrics, as /metrics serves them"),
    (
        "migrations/list",
        "",
        "one line per migration the proxy knows of: port, source, destination, phase, times",
    ),
    ("migrations/show", "PORT", "the timeline of one port's migration (tags, rewrites, Southbound events)"),
    ("memory/show", "", "resident memory and the sizes of the proxy's tables"),
    ("vlog/list", "", "the log filter in force"),
    ("vlog/set", "FILTER", "replace the log filter (tracing syntax, e.g. info,ovn_nb_proxy=debug)"),
    ("vlog/reopen", "", "reopen the --log-file (after logrotate moved it)"),
];

/// The operator's sockets: the `ovs-appctl` control socket and the metrics/health endpoint,
/// bound before the proxy serves and closed when it stops.
pub struct Control {
    unixctl: Option<Listener>,
    http: Option<tokio::net::TcpListener>,
    log: Option<Arc<dyn LogControl>>,
}

impl Control {
    /// Binds the control socket (`--unixctl`) and the metrics endpoint (`--metrics`) asked for;
    /// `log` is the binary's run-time log control (`vlog/*`).
    pub async fn bind(
        unixctl: Option<&std::path::Path>,
        metrics: Option<std::net::SocketAddr>,
        log: Option<Arc<dyn LogControl>>,
    ) -> Result<Self, ListenError> {
        let unixctl = match unixctl {
            Some(path) => Some(unixctl::bind(path).await?),
            None => None,
        };
        let http = match metrics {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ListenError::Bind { remote: format!("metrics {addr}"), source })?,
            ),
            None => None,
        };
        Ok(Control { unixctl, http, log })
    }

    /// Serves until `shutdown`; a reply being written then (the answer to `exit`) is finished.
    pub async fn serve(self, shared: Arc<Shared>, info: ProxyInfo, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        if let Some(ctl) = self.unixctl {
            let io = Arc::new(handler(shared.clone(), info, self.log, shutdown.clone()));
            tracker.spawn(unixctl::serve(ctl, io, shutdown.clone()));
        }
        if let Some(listener) = self.http {
            tracker.spawn(http::serve(listener, shared, shutdown));
        }
        tracker.close();
        tracker.wait().await;
    }
}

/// Resident set size from /proc, in kB.
fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Run-time control of the log filter (`vlog/set`, `vlog/list`), provided by the binary,
/// which owns the tracing subscriber.
pub trait LogControl: Send + Sync {
    /// Replaces the filter (tracing `EnvFilter` syntax, e.g. `info,ovn_nb_proxy=debug`).
    fn set(&self, filter: &str) -> Result<(), String>;
    /// The filter in force.
    fn current(&self) -> String;
    /// Reopens the log file (after logrotate moved it).
    fn reopen(&self) -> Result<(), String>;
}

fn args(p: Params) -> Vec<String> {
    match p {
        Params::Array(a) => {
            a.into_iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect()
        }
        _ => Vec::new(),
    }
}

fn text(s: String) -> Result<Value, Error> {
    Ok(Value::String(s))
}

fn fail(msg: String) -> Error {
    Error { code: jsonrpc_core::ErrorCode::InvalidParams, message: msg, data: None }
}

/// The command table, bound to the proxy's state.
pub fn handler(
    shared: Arc<Shared>,
    info: ProxyInfo,
    log: Option<Arc<dyn LogControl>>,
    shutdown: CancellationToken,
) -> IoHandler {
    let mut io = IoHandler::new();
    io.add_sync_method("exit", move |_| {
        shutdown.cancel();
        text(String::new())
    });
    io.add_sync_method("list-commands", |_| {
        let mut out = String::from("The available commands are:\n");
        for (cmd, syn, _) in COMMANDS {
            out.push_str(&format!("  {cmd:<24}{syn}\n"));
        }
        text(out)
    });
    io.add_sync_method("version", |_| text(format!("ovn-nb-proxy {}\n", env!("CARGO_PKG_VERSION"))));
    let s = shared.clone();
    io.add_sync_method("memory/show", move |_| {
        text(format!(
            "rss_kb:{} ports:{} sessions:{} migrations:{}\n",
            rss_kb().map(|k| k.to_string()).unwrap_or_else(|| "?".into()),
            s.cache.len(),
            s.metrics.sessions_open.get(),
            s.timelines.all().len()
        ))
    });
    let without = || fail("log control is not available".into());
    let l = log.clone();
    io.add_sync_method("vlog/list", move |_| match &l {
        Some(l) => text(format!("{}\n", l.current())),
        None => Err(without()),
    });
    let l = log.clone();
    io.add_sync_method("vlog/set", move |p| {
        let a = args(p);
        let Some(l) = &l else { return Err(without()) };
        if a.is_empty() {
            return Err(fail("usage: vlog/set FILTER (e.g. info,ovn_nb_proxy=debug)".into()));
        }
        l.set(&a.join(",")).map_err(fail)?;
        text(String::new())
    });
    io.add_sync_method("vlog/reopen", move |_| {
        let Some(l) = &log else { return Err(without()) };
        l.reopen().map_err(fail)?;
        text(String::new())
    });
    let s = shared.clone();
    io.add_sync_method("proxy/show", move |_| {
        let m = &s.metrics;
        let mut out = String::new();
        out.push_str(&format!("listeners: {}\n", info.listeners.join(" ")));
        out.push_str(&format!("upstream: {}\n", info.upstreams.join(",")));
        if let Some(u) = info.upstream_state.as_ref().filter(|u| u.remotes().len() > 1) {
            let leader = u.leader.as_ref().and_then(|t| t.leader()).map(|i| u.remotes()[i].to_string());
            out.push_str(&format!("cluster leader: {}\n", leader.unwrap_or_else(|| "(unknown)".into())));
        }
        let sb = if info.sb.is_empty() { "(not watched)".to_string() } else { info.sb.join(",") };
        out.push_str(&format!("southbound: {sb}\n"));
        out.push_str(&format!("sessions: {} open, {} total\n", m.sessions_open.get(), m.sessions.get()));
        let synced = if s.cache.is_synced() { "synchronised" } else { "not synchronised" };
        out.push_str(&format!("port cache: {} ports, {synced}\n", s.cache.len()));
        out.push_str(&format!("migrations in progress: {}\n", s.timelines.in_progress()));
        let unknown = s.timelines.unknown_source();
        if unknown > 0 {
            out.push_str(&format!("migrations whose source is unknown (left alone): {unknown}\n"));
        }
        out.push_str(&format!("dry run: {}, finalize on activation: {}\n", info.dry_run, s.finalize()));
        let active = if info.dry_run {
            "no (dry run)"
        } else if m.reconciler_lock_held.get() == 1 {
            "yes"
        } else {
            "no (another proxy holds the lock, or the database is not reached)"
        };
        out.push_str(&format!("active reconciler: {active}\n"));
        let queued = m.reconcile_queue.get();
        if queued > 0 {
            out.push_str(&format!("reconciler: {queued} fixes queued\n"));
        }
        text(out)
    });
    let s = shared.clone();
    io.add_sync_method("metrics/show", move |_| text(s.encode_metrics()));
    let s = shared.clone();
    io.add_sync_method("migrations/list", move |_| text(s.timelines.render_list(SystemTime::now())));
    let s = shared;
    io.add_sync_method("migrations/show", move |p| {
        let a = args(p);
        let [port] = a.as_slice() else { return Err(fail("usage: migrations/show PORT".into())) };
        s.timelines
            .render_show(port)
            .map(text)
            .unwrap_or_else(|| Err(fail(format!("no migration of port {port}"))))
    });
    io
}

/// Handles one request as `ovs-appctl` sends it and shapes the reply as OVS's unixctl server
/// does: `{"id":…,"result":"text","error":null}` or `{"id":…,"result":null,"error":"text"}`.
/// `None` for a notification (no reply) or a message that is not a request.
///
/// jsonrpc-core only dispatches JSON-RPC 2.0 calls, and its ids cannot hold every JSON value,
/// so the call is rebuilt as a 2.0 call internally and the client's own id is put back on the
/// reply; nothing of that reaches the wire.
pub fn reply(io: &IoHandler, request: &str) -> Option<String> {
    let req: serde_json::Value = serde_json::from_str(request).ok()?;
    let id = req.get("id").filter(|i| !i.is_null())?.clone();
    let method = req.get("method")?.as_str()?.to_string();
    let params = match req.get("params") {
        Some(a @ serde_json::Value::Array(_)) => a.clone(),
        _ => serde_json::json!([]),
    };
    let call = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 0});
    let out: serde_json::Value = serde_json::from_str(&io.handle_request_sync(&call.to_string())?).ok()?;
    let shaped = match out.get("error") {
        Some(e) => {
            let msg = if e["code"] == serde_json::json!(-32601) {
                format!("\"{method}\" is not a valid command (use \"list-commands\" to see a list of valid commands)")
            } else {
                e["message"].as_str().unwrap_or("error").to_string()
            };
            serde_json::json!({"id": id, "result": null, "error": msg})
        }
        None => {
            serde_json::json!({"id": id, "result": out.get("result").cloned().unwrap_or_default(), "error": null})
        }
    };
    Some(shaped.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn io() -> (IoHandler, CancellationToken) {
        let shared = Arc::new(Shared::new(PolicyConfig::default(), false, false, false));
        let stop = CancellationToken::new();
        (handler(shared, ProxyInfo::default(), None, stop.clone()), stop)
    }

    #[test]
    fn replies_are_shaped_like_ovs_unixctl() {
        let (io, stop) = io();
        let v: serde_json::Value =
            serde_json::from_str(&reply(&io, r#"{"id":0,"method":"version","params":[]}"#).expect("reply"))
                .expect("json");
        assert_eq!(v["id"], 0);
        assert!(v["result"].as_str().expect("string").starts_with("ovn-nb-proxy "));
        assert!(v["error"].is_null());
        let v: serde_json::Value =
            serde_json::from_str(&reply(&io, r#"{"id":1,"method":"nope","params":[]}"#).expect("reply"))
                .expect("json");
        assert!(v["result"].is_null());
        assert!(v["error"].as_str().expect("string error").contains("\"nope\" is not a valid command"));
        let v: serde_json::Value = serde_json::from_str(
            &reply(&io, r#"{"id":2,"method":"migrations/show","params":["vm1"]}"#).expect("reply"),
        )
        .expect("json");
        assert_eq!(v["error"], "no migration of port vm1");
        let v: serde_json::Value = serde_json::from_str(
            &reply(&io, r#"{"id":3,"method":"list-commands","params":[]}"#).expect("reply"),
        )
        .expect("json");
        assert!(v["result"].as_str().expect("text").contains("migrations/show"));
        assert!(!stop.is_cancelled());
        reply(&io, r#"{"id":4,"method":"exit","params":[]}"#).expect("reply");
        assert!(stop.is_cancelled());
    }
}
