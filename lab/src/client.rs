//! The one OVSDB client (`ovn_nb_proxy::net::client`) for the harness's blocking code and the
//! benches: `net::client::Blocking` (driven from the caller's thread, as `replay` drives it)
//! with calls that wait a bound, or handed to a thread of its own that reads until dropped.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ovn_nb_proxy::net::client::{self, ClientError, Incoming};
use ovn_nb_proxy::net::remote::{parse_upstreams, Active};
use serde_json::{json, Value};

/// How long a call waits for its reply unless told (what the control tools get).
const WAIT: Duration = Duration::from_secs(20);

/// One connection for blocking code. Not for use inside a tokio runtime: it runs its own.
pub struct Blocking {
    conn: client::Blocking,
    within: Duration,
}

impl Blocking {
    /// Connects to one OVS active remote (`unix:PATH`, `tcp:HOST:PORT`).
    pub fn connect(remote: &str) -> Result<Blocking> {
        match parse_upstreams(remote)?.as_slice() {
            [one] => Blocking::dial(one),
            _ => bail!("not one remote: {remote}"),
        }
    }

    /// Connects to the unix socket `path`.
    pub fn unix(path: &Path) -> Result<Blocking> {
        Blocking::dial(&Active::Unix(path.to_path_buf()))
    }

    fn dial(remote: &Active) -> Result<Blocking> {
        let conn =
            client::Blocking::connect(remote, None).with_context(|| format!("connecting to {remote}"))?;
        Ok(Blocking { conn, within: WAIT })
    }

    /// How long each call waits for its reply (20 s unless told).
    pub fn within(self, within: Duration) -> Blocking {
        Blocking { within, ..self }
    }

    /// Sends a request without waiting; its reply comes as `Origin::Reply` with this id.
    pub fn request(&mut self, method: &str, params: &Value) -> u64 {
        self.conn.client.request(method, params)
    }

    /// The reply's `result`; an `error` in the reply is an error. Notifications met meanwhile
    /// are dropped.
    pub fn call(&mut self, method: &str, params: &Value) -> Result<Value> {
        let conn = &mut self.conn;
        let mut reply = conn.runtime.block_on(conn.client.call(method, params, self.within, |_| {}))?;
        if !reply["error"].is_null() {
            bail!("{method}: {}", reply["error"]);
        }
        Ok(reply["result"].take())
    }

    /// `transact` of `ops` on `db`: the results; an op's error is an error.
    pub fn transact(&mut self, db: &str, ops: impl IntoIterator<Item = Value>) -> Result<Value> {
        let params: Vec<Value> = std::iter::once(json!(db)).chain(ops).collect();
        let result = self.call("transact", &Value::Array(params))?;
        if let Some(bad) = result.as_array().and_then(|r| r.iter().find(|r| r.get("error").is_some())) {
            bail!("transaction refused: {bad}");
        }
        Ok(result)
    }

    /// Reads on a thread of its own from now on: every message to `on` with the time it was
    /// read (taken as it is handed out, before `on` runs), a failed connection to `end`.
    pub fn read_on_thread(
        self,
        mut on: impl FnMut(Incoming<'_>, Instant) + Send + 'static,
        end: impl FnOnce(ClientError) + Send + 'static,
    ) -> Reader {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let client::Blocking { runtime, mut client } = self.conn;
        let thread = std::thread::spawn(move || {
            let failed = runtime.block_on(async {
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut stopped => return None,
                        read = client.next(|m| on(m, Instant::now())) => {
                            if let Err(e) = read {
                                return Some(e);
                            }
                        }
                    }
                }
            });
            if let Some(e) = failed {
                end(e);
            }
        });
        Reader { stop: Some(stop), thread: Some(thread) }
    }
}

/// A connection read on a thread of its own; on drop the thread is stopped and joined, so the
/// connection is closed when the drop returns.
pub struct Reader {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
