//! The connection to the database (the one OVSDB client, driven from this thread on a runtime
//! of its own): what arrives sorted into replies by id and notifications in order; the
//! client answers the server's echo probes.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::parse::{id_text, nonnull_id};
use super::ReplayError;
use crate::net::client::{Blocking, ClientError};
use crate::net::remote::Active;
use crate::net::tls::Tls;

/// How long a reply (or the barrier behind an awaited notification) may take.
pub(super) const WAIT: Duration = Duration::from_secs(10);

/// One connection to the database: what arrived, sorted into replies by id and notifications
/// in order. The server's echo probes are answered as they arrive.
pub(super) struct Live {
    conn: Blocking,
    replies: HashMap<String, VecDeque<Value>>,
    notes: VecDeque<Value>,
    barriers: u64,
}

impl Live {
    pub(super) fn connect(upstreams: &[Active], tls: Option<&Tls>) -> Result<Live, ReplayError> {
        let mut last = ReplayError::NoUpstream;
        for remote in upstreams {
            match Blocking::connect(remote, tls) {
                Ok(conn) => {
                    return Ok(Live { conn, replies: HashMap::new(), notes: VecDeque::new(), barriers: 0 })
                }
                Err(source) => last = ReplayError::Connect { remote: remote.to_string(), source },
            }
        }
        Err(last)
    }

    /// Queues `bytes` for the server (a failed connection shows at the next read).
    pub(super) fn send(&mut self, bytes: Vec<u8>) {
        self.conn.client.send_raw(bytes);
    }

    /// Reads one message, waiting until `deadline` at most; false if nothing came in time.
    fn read_some(&mut self, deadline: Instant) -> Result<bool, ReplayError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let next = self.conn.client.next(|m| serde_json::from_slice::<Value>(m.bytes));
        match self.conn.runtime.block_on(tokio::time::timeout(left, next)) {
            Err(_) => Ok(false),
            Ok(Ok(msg)) => {
                self.sort(msg?);
                Ok(true)
            }
            Ok(Err(ClientError::Closed)) => Err(ReplayError::Closed),
            Ok(Err(ClientError::Io(e))) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                Err(ReplayError::Closed)
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    fn sort(&mut self, msg: Value) {
        let method = msg.get("method").and_then(Value::as_str);
        match (method, nonnull_id(&msg)) {
            // OVSDB servers make no requests but echo (answered by the client); nothing to answer.
            (Some(_), Some(_)) => {}
            (Some(_), None) => self.notes.push_back(msg),
            (None, Some(id)) => {
                let key = id_text(id);
                self.replies.entry(key).or_default().push_back(msg);
            }
            (None, None) => {}
        }
    }

    /// The reply to the request with canonical id `id`; `None` if it did not come in time.
    pub(super) fn reply(&mut self, id: &str) -> Result<Option<Value>, ReplayError> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.replies.get_mut(id).and_then(VecDeque::pop_front) {
                return Ok(Some(v));
            }
            if !self.read_some(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Sends an `echo` and waits for its reply: the server has then sent everything that the
    /// requests before it caused (it flushes monitor updates before reading the next request).
    pub(super) fn barrier(&mut self) -> Result<bool, ReplayError> {
        self.barriers += 1;
        let id = json!(["ovn-nb-proxy-replay", self.barriers]);
        self.send(json!({"id": id, "method": "echo", "params": []}).to_string().into_bytes());
        Ok(self.reply(&id_text(&id))?.is_some())
    }

    /// The next notification; `None` if the server sent none before a barrier.
    pub(super) fn notification(&mut self) -> Result<Option<Value>, ReplayError> {
        if self.notes.is_empty() {
            self.barrier()?;
        }
        Ok(self.notes.pop_front())
    }
}
