//! The one OVSDB JSON-RPC client: the proxy's monitors, `replay`, the lab and the benches talk
//! to a database through it (the relay of client sessions does not: it forwards bytes).
//!
//! It numbers its requests (from 0) and says which reply answers which; it answers the
//! server's `echo` itself, probes a server that has gone silent, and gives up on one that does
//! not answer the probe either. Messages come out in the order they arrived, borrowed from
//! the read buffer and parsed once (a monitor's initial reply can be a hundred megabytes).
//!
//! **Invariant: it reads while it writes.** What is sent goes through a queue to a writer
//! polled alongside every read, so a server that stops reading until its replies are read
//! never waits on us while we wait on it. The queue holds what the caller sent, no more.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use super::dial::{dial, BoxIo};
use super::remote::Active;
use super::tls::Tls;
use crate::wire::{Envelope, FrameCodec, FrameError};

/// The read buffer kept between messages; one grown past 4× this for a big message is
/// given back once emptied.
pub const READ_BUF: usize = 64 * 1024;
/// The id of the client's own echo probe (not `"echo"`: never confused with the server's).
const PROBE_ID: &str = "ovn-nb-proxy-probe";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream framing: {0}")]
    Frame(#[from] FrameError),
    #[error("upstream closed the connection")]
    Closed,
    #[error("nothing received from the database for {0:?}, not even a reply to the proxy's echo")]
    Stalled(Duration),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

/// What a message is to this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The reply (result or error) to the request `request` returned this id for.
    Reply(u64),
    /// A notification or a request of the server's (other than `echo`, answered here).
    Server,
    /// Anything else: the reply to a message sent with `send_raw` (its id is the sender's).
    Other,
}

/// One message, as it arrived.
pub struct Incoming<'a> {
    pub origin: Origin,
    pub envelope: Envelope<'a>,
    pub bytes: &'a Bytes,
}

type Writer = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// One connection to an OVSDB server.
pub struct Client {
    reader: ReadHalf<BoxIo>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    writer: Writer,
    codec: FrameCodec,
    buf: BytesMut,
    /// Decoded, not handed out yet (one read may bring several messages).
    ready: std::collections::VecDeque<Bytes>,
    next_id: u64,
    pending: HashSet<u64>,
    probe: Option<Probe>,
}

/// The inactivity probe: an echo after `after` of silence, given up after twice that.
struct Probe {
    after: Duration,
    heard: Instant,
    probing: bool,
    tick: tokio::time::Interval,
}

impl Client {
    /// Connects to `remote` (TLS for `ssl:`); `probe`: the inactivity probe, if any.
    pub async fn connect(
        remote: &Active,
        tls: Option<&Tls>,
        probe: Option<Duration>,
    ) -> std::io::Result<Client> {
        Ok(Client::new(dial(remote, tls).await?, probe))
    }

    /// A client on a connection already open. Needs a tokio runtime with timers (for the probe).
    pub fn new(io: BoxIo, probe: Option<Duration>) -> Client {
        let (reader, mut w) = tokio::io::split(io);
        let (out, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = Box::pin(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.clear();
                batch.extend_from_slice(&first);
                while batch.len() < READ_BUF {
                    let Ok(more) = rx.try_recv() else { break };
                    batch.extend_from_slice(&more);
                }
                w.write_all(&batch).await?;
            }
            Ok(())
        });
        let probe = probe.map(|after| {
            let mut tick = tokio::time::interval(after / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Probe { after, heard: Instant::now(), probing: false, tick }
        });
        Client {
            reader,
            out,
            writer,
            codec: FrameCodec::new(usize::MAX),
            buf: BytesMut::with_capacity(READ_BUF),
            ready: Default::default(),
            next_id: 0,
            pending: HashSet::new(),
            probe,
        }
    }

    /// Sends a request; its reply comes out as `Origin::Reply(id)` with the id returned here.
    pub fn request(&mut self, method: &str, params: &Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id);
        self.send_raw(json!({"method": method, "params": params, "id": id}).to_string().into_bytes());
        id
    }

    /// Sends bytes as they are (a message of the caller's own, with its own id).
    pub fn send_raw(&mut self, bytes: Vec<u8>) {
        // A closed queue means the writer failed: the next read says so.
        let _ = self.out.send(bytes);
    }

    /// The next message, handed to `f` (borrowed from the read buffer). Cancel-safe: a message
    /// is taken off the buffer only when `f` is called.
    pub async fn next<R>(&mut self, f: impl FnOnce(Incoming<'_>) -> R) -> Result<R, ClientError> {
        loop {
            while let Some(bytes) = self.ready.pop_front() {
                // Only the envelope is parsed; a message that has none is not OVSDB: skipped.
                let Ok(envelope) = Envelope::parse(&bytes) else { continue };
                let id = envelope.id.filter(|id| id.get() != "null");
                let origin = match (&envelope.method, id) {
                    // The server's inactivity probe: answered, or it drops us.
                    (Some(m), Some(id)) if m == "echo" => {
                        let params = envelope.params.map_or("[]", |r| r.get());
                        self.send_raw(
                            format!(r#"{{"id":{},"result":{params},"error":null}}"#, id.get()).into_bytes(),
                        );
                        continue;
                    }
                    (Some(_), _) => Origin::Server,
                    (None, Some(id)) => match id.get().parse::<u64>() {
                        Ok(n) if self.pending.remove(&n) => Origin::Reply(n),
                        // Our probe's reply: only a sign of life.
                        _ if id.get().trim_matches('"') == PROBE_ID => continue,
                        _ => Origin::Other,
                    },
                    (None, None) => Origin::Other,
                };
                return Ok(f(Incoming { origin, envelope, bytes: &bytes }));
            }
            self.fill().await?;
        }
    }

    /// Reads until at least one whole message is buffered, writing meanwhile.
    async fn fill(&mut self) -> Result<(), ClientError> {
        enum Step {
            Read(std::io::Result<usize>),
            Wrote(std::io::Result<()>),
            Tick,
        }
        while self.ready.is_empty() {
            // The buffer grew to hold a big message: give the memory back.
            crate::wire::shrink(&mut self.buf, READ_BUF);
            let probe = &mut self.probe;
            let tick = async {
                match probe {
                    Some(p) => p.tick.tick().await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                biased;
                n = self.reader.read_buf(&mut self.buf) => Step::Read(n),
                w = &mut self.writer => Step::Wrote(w),
                _ = tick => Step::Tick,
            };
            match step {
                Step::Read(n) => {
                    if n? == 0 {
                        return Err(ClientError::Closed);
                    }
                    if let Some(p) = &mut self.probe {
                        p.heard = Instant::now();
                        p.probing = false;
                    }
                    while let Some(chunk) = self.codec.decode(&mut self.buf)? {
                        self.ready.push_back(chunk.bytes().clone());
                    }
                }
                Step::Wrote(w) => {
                    w?;
                    return Err(ClientError::Closed);
                }
                Step::Tick => self.check_probe()?,
            }
        }
        Ok(())
    }

    fn check_probe(&mut self) -> Result<(), ClientError> {
        let Some(p) = &mut self.probe else { return Ok(()) };
        let idle = p.heard.elapsed();
        if idle >= 2 * p.after {
            return Err(ClientError::Stalled(idle));
        }
        if idle >= p.after && !p.probing {
            p.probing = true;
            self.send_raw(json!({"method": "echo", "params": [], "id": PROBE_ID}).to_string().into_bytes());
        }
        Ok(())
    }

    /// Sends a request and waits `within` for its reply, returned whole; what arrives
    /// meanwhile is handed to `other` (notifications, replies to raw messages).
    pub async fn call(
        &mut self,
        method: &str,
        params: &Value,
        within: Duration,
        mut other: impl FnMut(Incoming<'_>),
    ) -> Result<Value, ClientError> {
        let id = self.request(method, params);
        let wait = async {
            loop {
                let reply = self.next(|m| match m.origin {
                    Origin::Reply(n) if n == id => {
                        Some(serde_json::from_slice::<Value>(m.bytes).unwrap_or(Value::Null))
                    }
                    _ => {
                        other(m);
                        None
                    }
                });
                if let Some(v) = reply.await? {
                    return Ok(v);
                }
            }
        };
        tokio::time::timeout(within, wait).await.map_err(|_| ClientError::Timeout(within))?
    }
}

/// The client driven from blocking code (replay, the lab, the benches), on a current-thread
/// runtime of its own: `runtime.block_on(client.…)`. Not for use inside a tokio runtime.
pub struct Blocking {
    pub runtime: tokio::runtime::Runtime,
    pub client: Client,
}

impl Blocking {
    /// Connects to `remote` (TLS for `ssl:`), without an inactivity probe.
    pub fn connect(remote: &Active, tls: Option<&Tls>) -> std::io::Result<Blocking> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = runtime.block_on(Client::connect(remote, tls, None))?;
        Ok(Blocking { runtime, client })
    }
}
