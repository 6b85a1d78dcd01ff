//! Passive sockets: `ptcp:` and `punix:` listeners.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};

use crate::net::dial::{tune_tcp, BoxIo};
use crate::net::remote::Passive;
use crate::net::tls::Tls;

/// Bound on a client's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {remote}: {source}")]
    Bind { remote: String, source: std::io::Error },
    #[error("cannot listen on {0}: the socket is in use by another process")]
    InUse(String),
    #[error("cannot listen on {0}: the path exists and is not a socket")]
    NotASocket(String),
    #[error("cannot listen on {0}: SSL needs --private-key, --certificate and --ca-cert")]
    NoTls(String),
}

/// The address a listener is bound to, printed in the OVS syntax a client would use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    Tcp(SocketAddr),
    Ssl(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundAddr::Tcp(a) => write!(f, "ptcp:{}:{}", a.port(), a.ip()),
            BoundAddr::Ssl(a) => write!(f, "pssl:{}:{}", a.port(), a.ip()),
            BoundAddr::Unix(p) => write!(f, "punix:{}", p.display()),
        }
    }
}

pub enum Listener {
    Tcp(TcpListener),
    Ssl(TcpListener, Arc<Tls>),
    /// The path is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(remote: &Passive, tls: Option<&Arc<Tls>>) -> Result<Self, ListenError> {
        let err = |source| ListenError::Bind { remote: remote.to_string(), source };
        match remote {
            Passive::Tcp { port, ip } => {
                Ok(Listener::Tcp(TcpListener::bind(SocketAddr::new(*ip, *port)).await.map_err(err)?))
            }
            Passive::Ssl { port, ip } => {
                let tls = tls.ok_or_else(|| ListenError::NoTls(remote.to_string()))?.clone();
                Ok(Listener::Ssl(TcpListener::bind(SocketAddr::new(*ip, *port)).await.map_err(err)?, tls))
            }
            Passive::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if !meta.file_type().is_socket() {
                        return Err(ListenError::NotASocket(remote.to_string()));
                    }
                    // Someone answering on it: refuse. Nobody: a stale socket, reuse the path.
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(ListenError::InUse(remote.to_string()));
                    }
                    std::fs::remove_file(path).map_err(err)?;
                }
                Ok(Listener::Unix(UnixListener::bind(path).map_err(err)?, path.clone()))
            }
        }
    }

    pub fn local_addr(&self) -> BoundAddr {
        match self {
            Listener::Tcp(l) => BoundAddr::Tcp(addr(l)),
            Listener::Ssl(l, _) => BoundAddr::Ssl(addr(l)),
            Listener::Unix(_, p) => BoundAddr::Unix(p.clone()),
        }
    }

    /// Accepts one client; returns its connection (TLS not yet negotiated: that happens in the
    /// client's own task) and a printable peer name.
    pub async fn accept(&self) -> std::io::Result<(Incoming, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                tune_tcp(&s, false);
                Ok((Incoming::Plain(Box::new(s)), peer.to_string()))
            }
            Listener::Ssl(l, tls) => {
                let (s, peer) = l.accept().await?;
                tune_tcp(&s, false);
                Ok((Incoming::Tls(s, tls.acceptor()), format!("ssl:{peer}")))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Incoming::Plain(Box::new(s)), format!("unix:{}", path.display())))
            }
        }
    }
}

fn addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// An accepted client connection, before any TLS handshake.
pub enum Incoming {
    Plain(BoxIo),
    Tls(TcpStream, tokio_rustls::TlsAcceptor),
}

impl Incoming {
    /// The client's byte stream: for `pssl:`, after a handshake that required a client
    /// certificate signed by the CA (bounded in time).
    pub async fn establish(self) -> std::io::Result<BoxIo> {
        match self {
            Incoming::Plain(io) => Ok(io),
            Incoming::Tls(s, acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(s))
                .await
            {
                Ok(Ok(tls)) => Ok(Box::new(tls)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")),
            },
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}
