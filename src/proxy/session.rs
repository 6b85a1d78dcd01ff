//! One client session: a client connection spliced to its own upstream connection.
//!
//! Lifecycle: accepted → upstream connected (or the client is closed at once) → relaying →
//! one side ends → the other is closed. A client that closes its side has its end forwarded
//! (half-close) and the session waits up to `close_grace` for the server to finish; a server
//! that closes ends the session after what it sent has reached the client.

use std::io::ErrorKind;
use std::pin::pin;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::listener::Incoming;
use super::upstream::{Pick, Upstreams};
use super::{Config, Shared};
use crate::record::Recorder;
use crate::rewrite::{audit, cancelled_id, fix_reply, inspect_request, Audit, PendingMap};
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
            RelayError::ClientFrame(_) | RelayError::UpstreamFrame(_) => false,
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
    shared: &Shared,
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
    let tape = cfg.record.as_ref().and_then(|rc| match Recorder::create(rc, id, peer) {
        Ok(r) => Some(Mutex::new(r)),
        Err(e) => {
            warn!(error = %e, dir = %rc.dir.display(), "cannot record this session");
            None
        }
    });
    let client_tap = ClientTap { shared, pending: &pending, peer, tape: tape.as_ref() };
    let server_tap = ServerTap { shared, pending: &pending, tape: tape.as_ref() };
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
    debug!("session closed");
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

/// What a direction does with each chunk on its way through.
trait Tap {
    /// Called before each decode: the chance to switch streaming on or off.
    fn prepare(&mut self, _codec: &mut FrameCodec) {}
    /// The bytes to forward for `chunk`.
    fn forward(&mut self, chunk: Chunk) -> Bytes;
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
                Ok(Some(chunk)) => out.push(tap.forward(chunk)),
                Ok(None) => break Ok(()),
                Err(e) => break Err((dir.frame)(e)),
            }
        };
        write_chunks(&mut w, &mut out).await.map_err(dir.write)?;
        decoded?;
        if eof {
            w.shutdown().await.map_err(dir.write)?;
            return Ok(());
        }
    }
}

/// Client to server: whole messages (bounded by `max_frame`); `transact` requests on ports go
/// through the policy, everything else as it came.
struct ClientTap<'a> {
    shared: &'a Shared,
    pending: &'a Mutex<PendingMap>,
    peer: &'a str,
    tape: Option<&'a Mutex<Recorder>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tap for ClientTap<'_> {
    fn forward(&mut self, chunk: Chunk) -> Bytes {
        let m = &self.shared.metrics;
        m.messages_c2s.inc();
        m.bytes_c2s.inc_by(chunk.bytes().len() as u64);
        let Chunk::Message(raw) = chunk else { return chunk.bytes().clone() };
        match self.rewrite(&raw) {
            Some((sent, changes)) => {
                if let Some(tape) = self.tape {
                    locked(tape).client(&sent, Some(&raw), &changes);
                }
                sent
            }
            None => {
                if let Some(tape) = self.tape {
                    locked(tape).client(&raw, None, &[]);
                }
                raw
            }
        }
    }
}

impl ClientTap<'_> {
    /// The policy's rewrite of one client message, with the changes made; `None`: forward it
    /// as it came.
    fn rewrite(&mut self, raw: &Bytes) -> Option<(Bytes, Vec<crate::policy::Change>)> {
        let shared = self.shared;
        if let Some(id) = cancelled_id(raw) {
            locked(self.pending).remove(&id);
            return None;
        }
        let ins = inspect_request(raw, &shared.view(), &shared.policy())?;
        shared.metrics.transactions.inc();
        for skip in &ins.plan.skips {
            shared.metrics.skips.get_or_create(&[("reason", skip.reason.as_str())]).inc();
            warn!(port = %skip.port, reason = %skip.reason.as_str(), client = %self.peer, "tagged port left alone");
        }
        if let Some(u) = &ins.plan.unhandled {
            debug!(op = ?u.op, what = u.what, "transaction not understood by the policy: forwarded as is");
        }
        if ins.plan.changes.is_empty() {
            return None;
        }
        for c in &ins.plan.changes {
            shared.metrics.rewrites.get_or_create(&[("cause", c.cause.as_str())]).inc();
            audit(Audit::Rewrite, c, self.peer, shared.dry_run);
        }
        if shared.dry_run {
            return None;
        }
        let bytes = ins.rewritten()?;
        if let Some((id, p)) = ins.pending() {
            locked(self.pending).insert(id, p);
        }
        Some((bytes, ins.plan.changes))
    }
}

/// Server to client: streamed as scanned, never holding a whole message, except while a reply
/// must be trimmed: then whole messages, so the awaited reply can be fixed.
struct ServerTap<'a> {
    shared: &'a Shared,
    pending: &'a Mutex<PendingMap>,
    tape: Option<&'a Mutex<Recorder>>,
}

impl Tap for ServerTap<'_> {
    fn prepare(&mut self, codec: &mut FrameCodec) {
        let waiting = !locked(self.pending).is_empty();
        codec.set_streaming(!waiting);
    }

    fn forward(&mut self, chunk: Chunk) -> Bytes {
        let m = &self.shared.metrics;
        if !matches!(chunk, Chunk::Partial(_)) {
            m.messages_s2c.inc();
        }
        m.bytes_s2c.inc_by(chunk.bytes().len() as u64);
        let sent = match &chunk {
            Chunk::Message(raw) => fix_reply(raw, &mut locked(self.pending)).unwrap_or_else(|| raw.clone()),
            other => other.bytes().clone(),
        };
        if let Some(tape) = self.tape {
            locked(tape).server(&chunk, &sent);
        }
        sent
    }
}
