//! The commands of the `ovs-appctl` control socket (`--unixctl PATH`). OVS's unixctl protocol
//! is JSON-RPC 1.0 over a unix socket: requests carry string arguments, replies carry a string
//! `result` or a string `error`. `jsonrpc-core` dispatches; `reply` reshapes its answers into
//! what `ovs-appctl` accepts. The commands are one table (`commands`); the sockets are
//! `unixctl`'s and `http`'s.

use std::sync::Arc;

use jsonrpc_core::IoHandler;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{ListenError, Listener, ProxyInfo, Shared};

mod commands;
pub mod daemon;
pub mod docs;
mod http;
mod unixctl;

pub use commands::{handler, Command, COMMANDS};

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
        let shared = Arc::new(Shared::new(PolicyConfig::default(), false, false));
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
