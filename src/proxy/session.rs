//! One client session: a client connection spliced to its own upstream connection.
//!
//! Lifecycle: accepted → upstream connected (or the client is closed at once) → relaying →
//! one side ends → the other is closed. A client that closes its side has its end forwarded
//! (half-close) and the session waits up to `close_grace` for the server to finish; a server
//! that closes ends the session after what it sent has reached the client.

use std::io::ErrorKind;
use std::pin::pin;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::upstream::{connect_any, BoxIo};
use super::Config;
use crate::wire::{FrameCodec, FrameError};

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

pub(super) async fn run(client: BoxIo, cfg: &Config, shutdown: CancellationToken) {
    let upstream = match connect_any(&cfg.upstreams, cfg.connect_timeout).await {
        Ok((io, remote)) => {
            debug!(upstream = %remote, "session open");
            io
        }
        Err(e) => {
            warn!(error = %e, "closing client: no upstream");
            return;
        }
    };
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    let mut up = pin!(client_to_server(cr, uw, cfg.max_frame));
    let mut down = pin!(server_to_client(ur, cw));
    tokio::select! {
        r = &mut up => {
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
        _ = shutdown.cancelled() => info!("proxy stopping: session closed"),
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

/// Reads, frames and forwards one direction until end of stream, then half-closes the writer.
/// Messages that preceded a bad one in the same read are still delivered.
async fn pump<R, W>(mut r: R, mut w: W, mut codec: FrameCodec, dir: Direction) -> Result<(), RelayError>
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
            let next = if eof { codec.decode_eof(&mut buf) } else { codec.decode(&mut buf) };
            match next {
                Ok(Some(chunk)) => out.push(chunk.bytes().clone()),
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

/// Client to server: whole messages only, each bounded by `max_frame`, forwarded as they came.
async fn client_to_server(
    r: ReadHalf<BoxIo>,
    w: WriteHalf<BoxIo>,
    max_frame: usize,
) -> Result<(), RelayError> {
    pump(r, w, FrameCodec::new(max_frame), CLIENT_TO_SERVER).await
}

/// Server to client: streamed as scanned, never holding a whole message.
async fn server_to_client(r: ReadHalf<BoxIo>, w: WriteHalf<BoxIo>) -> Result<(), RelayError> {
    let mut codec = FrameCodec::new(usize::MAX);
    codec.set_streaming(true);
    pump(r, w, codec, SERVER_TO_CLIENT).await
}
