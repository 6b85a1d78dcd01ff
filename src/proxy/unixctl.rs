//! The `ovs-appctl` control socket: a unix listener whose connections carry JSON-RPC 1.0
//! requests, answered by `control`.

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::listener::{ListenError, Listener};
use crate::remote::Passive;
use crate::wire::FrameCodec;

/// Control requests are small; a client sending more than this is cut off.
const MAX_REQUEST: usize = 1 << 20;

pub(super) async fn bind(path: &Path) -> Result<Listener, ListenError> {
    Listener::bind(&Passive::Unix(path.to_path_buf()), None).await
}

pub(super) async fn serve(listener: Listener, io: Arc<jsonrpc_core::IoHandler>, shutdown: CancellationToken) {
    info!(unixctl = %listener.local_addr(), "control socket ready");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((incoming, _)) = accepted else { continue };
        let io = io.clone();
        tokio::spawn(async move {
            let Ok(mut stream) = incoming.establish().await else { return };
            let mut codec = FrameCodec::new(MAX_REQUEST);
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                match stream.read_buf(&mut buf).await {
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
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
