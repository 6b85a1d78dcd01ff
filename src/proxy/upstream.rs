//! Active sockets: connecting to the upstream database server.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::remote::Active;

/// A byte stream of either leg (TCP or unix; TLS later), boxed so a session is one type.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
#[error("no upstream reachable: {}", .0.iter().map(|(r, e)| format!("{r}: {e}")).collect::<Vec<_>>().join("; "))]
pub struct UpstreamError(pub Vec<(String, String)>);

/// `TCP_NODELAY` always (OVSDB is request/response: Nagle costs ~80 ms per ovn-nbctl call);
/// keepalive upstream, so a half-open server connection is noticed.
pub(crate) fn tune_tcp(s: &TcpStream, keepalive: bool) {
    let _ = s.set_nodelay(true);
    if keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
    }
}

async fn connect_one(remote: &Active) -> std::io::Result<BoxIo> {
    match remote {
        Active::Unix(path) => Ok(Box::new(UnixStream::connect(path).await?)),
        Active::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            tune_tcp(&s, true);
            Ok(Box::new(s))
        }
    }
}

/// Tries each remote in order; returns the first that answers, or every failure.
pub async fn connect_any(remotes: &[Active], timeout: Duration) -> Result<(BoxIo, &Active), UpstreamError> {
    let mut failures = Vec::new();
    for r in remotes {
        match tokio::time::timeout(timeout, connect_one(r)).await {
            Ok(Ok(io)) => return Ok((io, r)),
            Ok(Err(e)) => failures.push((r.to_string(), e.to_string())),
            Err(_) => failures.push((r.to_string(), format!("no answer within {timeout:?}"))),
        }
    }
    Err(UpstreamError(failures))
}
