//! The metrics and health endpoint (`--metrics ADDR:PORT`): a minimal HTTP/1.1 responder, one
//! request per connection. `/metrics` (Prometheus/OpenMetrics text), `/healthz` (the process
//! serves), `/readyz` (the port monitor is connected and its cache synchronised).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::proxy::Shared;

const MAX_REQUEST: usize = 8 * 1024;

/// Status line, content type and body for a request path.
fn respond(path: &str, shared: &Shared) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", shared.encode_metrics())
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" if shared.cache.is_synced() => ("200 OK", TEXT, "ready\n".into()),
        "/readyz" => {
            ("503 Service Unavailable", TEXT, "not ready: the port cache is not synchronised\n".into())
        }
        _ => ("404 Not Found", TEXT, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(metrics = %addr, "metrics endpoint ready");
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let head = String::from_utf8_lossy(&buf);
            let mut parts = head.split_whitespace();
            let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            let (status, ctype, body) = if method == "GET" {
                respond(path.split('?').next().unwrap_or_default(), &shared)
            } else {
                ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".into())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
