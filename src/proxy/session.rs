//! One client session: a client connection spliced to its own upstream connection.
//!
//! Lifecycle: accepted → upstream connected (or the client is closed at once) → relaying →
//! one side ends → the other is closed. A client that closes its side has its end forwarded
//! (half-close) and the session waits up to `close_grace` for the server to finish; a server
//! that closes ends the session after what it sent has reached the client.

use std::future::Future;
use std::io::ErrorKind;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::listener::Incoming;
use super::upstream::{Pick, Upstreams};
use super::{Config, Shared};
use crate::policy::SkipReason;
use crate::proxy::rewrite::{
    audit, audit_refused, audit_stale, audit_unconfirmed, audit_yield, cancelled_id, fix_reply,
    inspect_request, inspect_request_within, may_touch_ports, must_plan, skip_message, Audit, Inspected,
    Outcome, Pending, PendingMap,
};
use crate::transcript::record::Recorder;
use crate::wire::{Chunk, FrameCodec, FrameError};

const READ_BUF: usize = 64 * 1024;

/// Why a relay direction stopped, and on which side.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("client read: {0}")]
    ClientRead(std::io::Error),
    #[error("client write: {0}")]
    ClientWrite(std::io::Error),
    #[error("upstream read: {0}")]
    UpstreamRead(std::io::Error),
    #[error("upstream write: {0}")]
    UpstreamWrite(std::io::Error),
    #[error("client sent a bad frame: {0}")]
    ClientFrame(FrameError),
    #[error("upstream sent a bad frame: {0}")]
    UpstreamFrame(FrameError),
    #[error("the port cache was not synchronised within {0:?}: a transaction on ports cannot be planned")]
    NotSynced(std::time::Duration),
}

impl RelayError {
    /// Resets and broken pipes are how peers usually leave: not worth a warning.
    fn is_routine(&self) -> bool {
        match self {
            RelayError::ClientRead(e)
            | RelayError::ClientWrite(e)
            | RelayError::UpstreamRead(e)
            | RelayError::UpstreamWrite(e) => {
                matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
                )
            }
            RelayError::ClientFrame(_) | RelayError::UpstreamFrame(_) | RelayError::NotSynced(_) => false,
        }
    }
}

fn log_end(dir: &str, r: &Result<(), RelayError>) {
    match r {
        Ok(()) => debug!("{dir}: peer closed"),
        Err(e) if e.is_routine() => debug!(error = %e, "{dir}: connection ended"),
        Err(e) => warn!(error = %e, "{dir}: closing session"),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    incoming: Incoming,
    id: u64,
    peer: &str,
    cfg: &Config,
    upstreams: &Upstreams,
    shared: &Arc<Shared>,
    shutdown: CancellationToken,
) {
    let client = match incoming.establish().await {
        Ok(io) => io,
        Err(e) => {
            shared.metrics.tls_handshake_failures.inc();
            warn!(error = %e, "client TLS handshake failed: closing");
            return;
        }
    };
    let (upstream, demoted) = match upstreams.connect(Pick::Session).await {
        Ok(link) => {
            debug!(upstream = %link.remote, "session open");
            // The database answers: a monitor waiting out a backoff tries again now.
            shared.upstream_up.notify_waiters();
            (link.io, link.demoted.unwrap_or_default())
        }
        Err(e) => {
            warn!(error = %e, "closing client: no upstream");
            return;
        }
    };
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    // Replies the session must trim, shared by the two directions; never held across an await.
    let pending = Mutex::new(PendingMap::new());
    let tape = shared.recorder.as_ref().map(|sink| Mutex::new(Recorder::create(sink, id, peer)));
    let client_tap =
        ClientTap { shared, pending: &pending, peer, tape: tape.as_ref(), sync_timeout: cfg.sync_timeout };
    let server_tap = ServerTap { shared, pending: &pending, peer, tape: tape.as_ref() };
    let mut up = pin!(pump(cr, uw, FrameCodec::new(cfg.max_frame), CLIENT_TO_SERVER, client_tap));
    let mut down = pin!(pump(ur, cw, FrameCodec::new(usize::MAX), SERVER_TO_CLIENT, server_tap));
    tokio::select! {
        r = &mut up => {
            if matches!(r, Err(RelayError::ClientFrame(FrameError::TooLarge { .. }))) {
                shared.metrics.frame_too_large.inc();
            }
            log_end("client→server", &r);
            if r.is_ok() {
                // The client closed its side; the server closes when it has answered.
                match tokio::time::timeout(cfg.close_grace, &mut down).await {
                    Ok(r) => log_end("server→client", &r),
                    Err(_) => debug!("server did not close within the grace period"),
                }
            }
        }
        r = &mut down => log_end("server→client", &r),
        _ = shutdown.cancelled() => info!("proxy stopping: session closed at the end of the grace period"),
        _ = demoted.cancelled() => info!("the upstream is no longer the cluster leader: session closed, the client reconnects"),
    }
    // Rewrites whose reply never came: committed or not, the proxy cannot say.
    for (_, p) in locked(&pending).drain() {
        unconfirmed(shared, &p, peer);
    }
    debug!("session closed");
}

fn unconfirmed(shared: &Shared, p: &Pending, peer: &str) {
    shared.metrics.rewrites_unconfirmed.inc();
    for c in &p.changes {
        audit_unconfirmed(c, peer);
    }
}

/// Writes what one read produced, in one write when it is several small pieces.
async fn write_chunks<W: AsyncWrite + Unpin>(w: &mut W, chunks: &mut Vec<Bytes>) -> std::io::Result<()> {
    match chunks.len() {
        0 => {}
        1 => w.write_all(&chunks[0]).await?,
        _ => {
            let total = chunks.iter().map(Bytes::len).sum();
            let mut joined = BytesMut::with_capacity(total);
            for c in chunks.iter() {
                joined.extend_from_slice(c);
            }
            w.write_all(&joined).await?;
        }
    }
    chunks.clear();
    Ok(())
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_BUF / 4 {
        buf.reserve(READ_BUF);
    }
}

/// Which side each failure of a relay direction belongs to.
struct Direction {
    read: fn(std::io::Error) -> RelayError,
    write: fn(std::io::Error) -> RelayError,
    frame: fn(FrameError) -> RelayError,
}

const CLIENT_TO_SERVER: Direction = Direction {
    read: RelayError::ClientRead,
    write: RelayError::UpstreamWrite,
    frame: RelayError::ClientFrame,
};
const SERVER_TO_CLIENT: Direction = Direction {
    read: RelayError::UpstreamRead,
    write: RelayError::ClientWrite,
    frame: RelayError::UpstreamFrame,
};

/// A message the client tap cannot decide on at once, and what deciding it gave.
type Later = Pin<Box<dyn Future<Output = Result<(Bytes, Option<Inspected>), RelayError>> + Send>>;

/// What a tap does with one chunk.
enum Forward {
    /// Forward these bytes.
    Now(Bytes),
    /// Forward what came before, then wait for this (the port cache to be synchronised, or a
    /// big transaction planned off the event loop), then hand it to [`Tap::finish`].
    Later(Later),
}

/// What a direction does with each chunk on its way through.
trait Tap {
    /// Called before each decode: the chance to switch streaming on or off.
    fn prepare(&mut self, _codec: &mut FrameCodec) {}
    /// What to forward for `chunk`.
    fn forward(&mut self, chunk: Chunk) -> Forward;
    /// The bytes to forward for a message decided later.
    fn finish(&mut self, (raw, _): (Bytes, Option<Inspected>)) -> Bytes {
        raw
    }
}

/// Reads, frames and forwards one direction until end of stream, then half-closes the writer.
/// Messages that preceded a bad one in the same read are still delivered.
async fn pump<R, W>(
    mut r: R,
    mut w: W,
    mut codec: FrameCodec,
    dir: Direction,
    mut tap: impl Tap,
) -> Result<(), RelayError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut out = Vec::new();
    loop {
        reserve(&mut buf);
        let eof = r.read_buf(&mut buf).await.map_err(dir.read)? == 0;
        let decoded = loop {
            tap.prepare(&mut codec);
            let next = if eof { codec.decode_eof(&mut buf) } else { codec.decode(&mut buf) };
            match next {
                Ok(Some(chunk)) => {
                    crate::proxy::memory::note(chunk.bytes().len());
                    match tap.forward(chunk) {
                        Forward::Now(bytes) => out.push(bytes),
                        Forward::Later(later) => {
                            write_chunks(&mut w, &mut out).await.map_err(dir.write)?;
                            match later.await {
                                Ok(decided) => out.push(tap.finish(decided)),
                                Err(e) => break Err(e),
                            }
                        }
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err((dir.frame)(e)),
            }
        };
        write_chunks(&mut w, &mut out).await.map_err(dir.write)?;
        decoded?;
        crate::wire::shrink(&mut buf, READ_BUF);
        if eof {
            w.shutdown().await.map_err(dir.write)?;
            return Ok(());
        }
    }
}

/// Client to server: whole messages (bounded by `max_frame`); `transact` requests on ports go
/// through the policy, everything else as it came.
///
/// **Invariant: the guarantee from the first byte.** A transaction that may touch
/// `Logical_Switch_Port` is never planned against a port cache that is not synchronised (at
/// start, after the database or the monitor connection was lost): it is held, with everything
/// the client sends after it, until the cache is synchronised, `--sync-timeout` at most; past
/// that the session is closed (the client sees its connection drop, as if the database had, and
/// retries on its own). Nothing else is ever held.
struct ClientTap<'a> {
    shared: &'a Arc<Shared>,
    pending: &'a Mutex<PendingMap>,
    peer: &'a str,
    tape: Option<&'a Mutex<Recorder>>,
    sync_timeout: std::time::Duration,
}

/// A transaction this big is planned on a blocking thread, off the event loop.
const PLAN_OFF_LOOP: usize = 64 * 1024;
/// So is one whose `where` would walk more ports than this (it names no row, the table is big).
const SCAN_ON_LOOP: usize = 2000;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tap for ClientTap<'_> {
    fn forward(&mut self, chunk: Chunk) -> Forward {
        let m = &self.shared.metrics;
        m.messages.c2s.inc();
        m.bytes.c2s.inc_by(chunk.bytes().len() as u64);
        let Chunk::Message(raw) = chunk else { return Forward::Now(chunk.bytes().clone()) };
        if let Some(id) = cancelled_id(&raw) {
            if let Some(p) = locked(self.pending).remove(&id) {
                unconfirmed(self.shared, &p, self.peer);
            }
            return Forward::Now(self.record(raw, None));
        }
        if !may_touch_ports(&raw) {
            return Forward::Now(self.record(raw, None));
        }
        let policy = self.shared.policy();
        if !must_plan(&raw, &policy, self.shared.view().quiet(&policy)) {
            m.unparsed.inc();
            return Forward::Now(self.record(raw, None));
        }
        let hold = !self.shared.dry_run && !self.shared.cache.is_synced();
        let mut off_loop = raw.len() > PLAN_OFF_LOOP;
        if !hold && !off_loop {
            let shared = self.shared;
            match inspect_request_within(&raw, &shared.view(), &policy, SCAN_ON_LOOP) {
                Some(ins) => return Forward::Now(self.apply(raw, ins)),
                // A `where` that names no row, on a big table: walked off the event loop.
                None => off_loop = true,
            }
        }
        let (shared, timeout) = (self.shared.clone(), self.sync_timeout);
        Forward::Later(Box::pin(async move {
            if hold {
                let t0 = tokio::time::Instant::now();
                let synced = shared.wait_synced(timeout).await;
                let outcome = if synced { "synced" } else { "timeout" };
                shared.metrics.sync_waits.get_or_create(&[("outcome", outcome)]).inc();
                if !synced {
                    return Err(RelayError::NotSynced(timeout));
                }
                debug!(waited = ?t0.elapsed(), "transaction on ports held until the port cache was synchronised");
            }
            let ins = if off_loop {
                let (s, r) = (shared.clone(), raw.clone());
                tokio::task::spawn_blocking(move || inspect_request(&r, &s.view(), &s.policy()))
                    .await
                    .ok()
                    .flatten()
            } else {
                inspect_request(&raw, &shared.view(), &shared.policy())
            };
            Ok((raw, ins))
        }))
    }

    fn finish(&mut self, (raw, ins): (Bytes, Option<Inspected>)) -> Bytes {
        self.apply(raw, ins)
    }
}

impl ClientTap<'_> {
    fn record(&self, raw: Bytes, rewritten: Option<(&Bytes, &[crate::policy::Change])>) -> Bytes {
        if let Some(tape) = self.tape {
            match rewritten {
                Some((original, changes)) => locked(tape).client(&raw, Some(original), changes),
                None => locked(tape).client(&raw, None, &[]),
            }
        }
        raw
    }

    /// The bytes to send for a message the policy looked at (`ins`: `None` when it is not a
    /// `transact` on ports). A rewrite is remembered until its reply, which says whether the
    /// server committed it.
    fn apply(&mut self, raw: Bytes, ins: Option<Inspected>) -> Bytes {
        let Some(ins) = ins else { return self.record(raw, None) };
        let shared = self.shared;
        shared.metrics.transactions.inc();
        for skip in &ins.plan.skips {
            shared.metrics.skips.get_or_create(&[("reason", skip.reason.as_str())]).inc();
            match skip.reason {
                SkipReason::OperatorOverride => audit_yield(&skip.port, skip.chosen.as_deref(), self.peer),
                reason => {
                    warn!(port = %skip.port, reason = %reason.as_str(), client = %self.peer, "{}", skip_message(reason))
                }
            }
        }
        if let Some(u) = &ins.plan.unhandled {
            debug!(op = ?u.op, what = u.what, "transaction not understood by the policy: forwarded as is");
        }
        if ins.plan.changes.is_empty() {
            return self.record(raw, None);
        }
        if shared.dry_run {
            for c in &ins.plan.changes {
                shared.metrics.rewrites.get_or_create(&[("cause", c.cause.as_str())]).inc();
                audit(Audit::Rewrite, c, self.peer, true);
            }
            return self.record(raw, None);
        }
        let (Some(bytes), Some((id, p))) = (ins.rewritten(), ins.pending()) else {
            return self.record(raw, None);
        };
        locked(self.pending).insert(id, p);
        self.record(bytes, Some((&raw, &ins.plan.changes)))
    }
}

/// Server to client: streamed as scanned, never holding a whole message, except while the reply
/// to a rewritten request is awaited: then whole messages, so the reply can be read (did the
/// server commit the rewrite?) and trimmed (when the proxy appended ops).
struct ServerTap<'a> {
    shared: &'a Shared,
    pending: &'a Mutex<PendingMap>,
    peer: &'a str,
    tape: Option<&'a Mutex<Recorder>>,
}

impl Tap for ServerTap<'_> {
    fn prepare(&mut self, codec: &mut FrameCodec) {
        let waiting = !locked(self.pending).is_empty();
        codec.set_streaming(!waiting);
    }

    fn forward(&mut self, chunk: Chunk) -> Forward {
        let m = &self.shared.metrics;
        if !matches!(chunk, Chunk::Partial(_)) {
            m.messages.s2c.inc();
        }
        m.bytes.s2c.inc_by(chunk.bytes().len() as u64);
        let sent = match &chunk {
            Chunk::Message(raw) => {
                let answered = fix_reply(raw, &mut locked(self.pending));
                match answered {
                    Some(a) => {
                        self.report(&a.pending, &a.outcome);
                        a.bytes.unwrap_or_else(|| raw.clone())
                    }
                    None => raw.clone(),
                }
            }
            other => other.bytes().clone(),
        };
        if let Some(tape) = self.tape {
            locked(tape).server(&chunk, &sent);
        }
        Forward::Now(sent)
    }
}

impl ServerTap<'_> {
    /// One audit line per change, and the counters, once the server has said.
    fn report(&self, p: &Pending, outcome: &Outcome) {
        let m = &self.shared.metrics;
        match outcome {
            Outcome::Committed { void } => {
                for (i, c) in p.changes.iter().enumerate() {
                    if void.contains(&i) {
                        m.rewrites_stale.inc();
                        audit_stale(c, self.peer);
                    } else {
                        m.rewrites.get_or_create(&[("cause", c.cause.as_str())]).inc();
                        audit(Audit::Rewrite, c, self.peer, false);
                    }
                }
            }
            Outcome::Refused(error) => {
                m.rewrites_refused.inc();
                for c in &p.changes {
                    audit_refused(c, self.peer, error);
                }
            }
        }
    }
}
