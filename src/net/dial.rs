//! Dialling an OVSDB remote: unix, TCP or TLS, tuned the way OVSDB wants.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use super::remote::Active;
use super::tls::{server_name, Tls};

/// A byte stream of either leg (unix, TCP or TLS), boxed so a session is one type.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// `TCP_NODELAY` always (OVSDB is request/response: Nagle costs ~80 ms per ovn-nbctl call);
/// keepalive upstream, so a half-open server connection is noticed.
pub fn tune_tcp(s: &TcpStream, keepalive: bool) {
    let _ = s.set_nodelay(true);
    if keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
    }
}

/// Connects to one remote (TLS when it is `ssl:`).
pub async fn dial(remote: &Active, tls: Option<&Tls>) -> std::io::Result<BoxIo> {
    match remote {
        Active::Unix(path) => Ok(Box::new(UnixStream::connect(path).await?)),
        Active::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            tune_tcp(&s, true);
            Ok(Box::new(s))
        }
        Active::Ssl { host, port } => {
            let tls = tls.ok_or_else(|| {
                std::io::Error::other("SSL upstream needs --private-key, --certificate and --ca-cert")
            })?;
            let name = server_name(host).map_err(std::io::Error::other)?;
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            tune_tcp(&s, true);
            Ok(Box::new(tls.connector().connect(name, s).await?))
        }
    }
}
