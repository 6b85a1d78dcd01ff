//! The `ovs-appctl` control socket: a unix listener whose connections carry JSON-RPC 1.0
//! requests, answered by `control`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::net::remote::Passive;
use crate::proxy::{ListenError, Listener};
use crate::wire::FrameCodec;

/// Control requests are small; a client sending more than this is cut off.
const MAX_REQUEST: usize = 1 << 20;
/// How long a reply may take to reach a client that does not read it.
const REPLY_WRITE: Duration = Duration::from_secs(1);

pub(super) async fn bind(path: &Path) -> Result<Listener, ListenError> {
    Listener::bind(&Passive::Unix(path.to_path_buf()), None).await
}

pub(super) async fn serve(listener: Listener, io: Arc<jsonrpc_core::IoHandler>, shutdown: CancellationToken) {
    info!(unixctl = %listener.local_addr(), "control socket ready");
    // Connections are tracked so that a reply being written when the proxy stops (the answer
    // to `exit` itself) reaches its client before the runtime goes away.
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((incoming, _)) = accepted else { continue };
        let (io, shutdown) = (io.clone(), shutdown.clone());
        connections.spawn(async move {
            let Ok(mut stream) = incoming.establish().await else { return };
            let mut codec = FrameCodec::new(MAX_REQUEST);
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                let read = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = stream.read_buf(&mut buf) => r,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    let chunk = match codec.decode(&mut buf) {
                        Ok(Some(c)) => c,
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "control client sent a bad frame");
                            return;
                        }
                    };
                    let Ok(text) = std::str::from_utf8(chunk.bytes()).map(str::to_string) else { return };
                    // Off the event loop: a command may walk every migration.
                    let io = io.clone();
                    let Ok(reply) =
                        tokio::task::spawn_blocking(move || crate::control::reply(&io, &text)).await
                    else {
                        return;
                    };
                    if let Some(reply) = reply {
                        let written = tokio::time::timeout(REPLY_WRITE, async {
                            stream.write_all(reply.as_bytes()).await?;
                            stream.flush().await
                        });
                        if !matches!(written.await, Ok(Ok(()))) {
                            return;
                        }
                    }
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(REPLY_WRITE, connections.wait()).await;
}
