//! The connection to the database (blocking std sockets): what arrives sorted into replies by
//! id and notifications in order, the server's echo probes answered.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio_util::codec::Decoder;

use super::parse::{id_text, nonnull_id};
use super::ReplayError;
use crate::net::remote::Active;
use crate::wire::FrameCodec;

/// How long a reply (or the barrier behind an awaited notification) may take.
pub(super) const WAIT: Duration = Duration::from_secs(10);

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(Some(d)),
            Stream::Tcp(s) => s.set_read_timeout(Some(d)),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(buf),
            Stream::Tcp(s) => s.write_all(buf),
        }
    }
}

/// One connection to the database: what arrived, sorted into replies by id and notifications
/// in order. The server's echo probes are answered as they arrive.
pub(super) struct Live {
    stream: Stream,
    codec: FrameCodec,
    buf: BytesMut,
    replies: HashMap<String, VecDeque<Value>>,
    notes: VecDeque<Value>,
    barriers: u64,
}

impl Live {
    pub(super) fn connect(upstreams: &[Active]) -> Result<Live, ReplayError> {
        let mut last = ReplayError::NoUpstream;
        for remote in upstreams {
            let stream = match remote {
                Active::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
                Active::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).map(|s| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
                // Replay speaks plain unix or TCP; point it at a plain listener of the database.
                Active::Ssl { .. } => Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "replay does not speak SSL: use a unix: or tcp: remote of the database",
                )),
            };
            match stream {
                Ok(stream) => {
                    return Ok(Live {
                        stream,
                        codec: FrameCodec::new(usize::MAX),
                        buf: BytesMut::new(),
                        replies: HashMap::new(),
                        notes: VecDeque::new(),
                        barriers: 0,
                    })
                }
                Err(source) => last = ReplayError::Connect { remote: remote.to_string(), source },
            }
        }
        Err(last)
    }

    pub(super) fn send(&mut self, bytes: &[u8]) -> Result<(), ReplayError> {
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => ReplayError::Closed,
            _ => ReplayError::Io(e),
        })
    }

    /// Reads once, waiting until `deadline` at most; false if nothing came in time.
    fn read_some(&mut self, deadline: Instant) -> Result<bool, ReplayError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.stream.set_read_timeout(left)?;
        let mut tmp = vec![0u8; 64 * 1024];
        let n = match self.stream.read(&mut tmp) {
            Ok(0) => return Err(ReplayError::Closed),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(true),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(ReplayError::Closed),
            Err(e) => return Err(e.into()),
        };
        self.buf.extend_from_slice(&tmp[..n]);
        while let Some(chunk) = self.codec.decode(&mut self.buf)? {
            let msg: Value = serde_json::from_slice(chunk.bytes())?;
            self.sort(msg)?;
        }
        Ok(true)
    }

    fn sort(&mut self, msg: Value) -> Result<(), ReplayError> {
        let method = msg.get("method").and_then(Value::as_str);
        match (method, nonnull_id(&msg)) {
            (Some("echo"), Some(id)) => {
                let params = msg.get("params").cloned().unwrap_or_else(|| json!([]));
                let answer = json!({"id": id, "result": params, "error": null});
                self.send(answer.to_string().as_bytes())?;
            }
            // OVSDB servers make no other requests; nothing to answer.
            (Some(_), Some(_)) => {}
            (Some(_), None) => self.notes.push_back(msg),
            (None, Some(id)) => {
                let key = id_text(id);
                self.replies.entry(key).or_default().push_back(msg);
            }
            (None, None) => {}
        }
        Ok(())
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
        self.send(json!({"id": id, "method": "echo", "params": []}).to_string().as_bytes())?;
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
