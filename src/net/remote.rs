//! OVS remote syntax, as `ovsdb-server --remote` and `ovn-nbctl --db` spell it.
//!
//! Active (we connect): `unix:PATH`, `tcp:HOST:PORT`, `ssl:HOST:PORT` (IPv6 as `[addr]`).
//! Passive (we listen): `punix:PATH`, `ptcp:PORT[:IP]`, `pssl:PORT[:IP]` with IP defaulting to
//! 127.0.0.1: the proxy never listens on every interface unless told to (`ptcp:6641:0.0.0.0`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("empty remote")]
    Empty,
    #[error("remote {0:?}: unknown method (expected unix:, tcp:, ssl:, punix:, ptcp: or pssl:)")]
    UnknownMethod(String),
    #[error("remote {0:?}: {1}")]
    Invalid(String, &'static str),
    #[error("remote {0:?} is passive; an upstream must be active (unix: or tcp:)")]
    NotActive(String),
    #[error("remote {0:?} is active; a listener must be passive (punix: or ptcp:)")]
    NotPassive(String),
}

/// Where the proxy connects: an upstream database server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Active {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
    Ssl { host: String, port: u16 },
}

/// Where the proxy listens for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passive {
    Unix(PathBuf),
    Tcp { port: u16, ip: IpAddr },
    Ssl { port: u16, ip: IpAddr },
}

impl Active {
    pub fn is_ssl(&self) -> bool {
        matches!(self, Active::Ssl { .. })
    }
}

impl Passive {
    pub fn is_ssl(&self) -> bool {
        matches!(self, Passive::Ssl { .. })
    }
}

fn port(remote: &str, s: &str) -> Result<u16, RemoteError> {
    s.parse().map_err(|_| RemoteError::Invalid(remote.into(), "port must be a number from 0 to 65535"))
}

fn path(remote: &str, s: &str) -> Result<PathBuf, RemoteError> {
    if s.is_empty() {
        return Err(RemoteError::Invalid(remote.into(), "missing socket path"));
    }
    Ok(PathBuf::from(s))
}

/// Splits `HOST:PORT` or `[V6]:PORT`.
fn host_port<'a>(remote: &str, s: &'a str) -> Result<(&'a str, &'a str), RemoteError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| RemoteError::Invalid(remote.into(), "unclosed '[' in IPv6 address"))?;
        let port = tail
            .strip_prefix(':')
            .ok_or_else(|| RemoteError::Invalid(remote.into(), "missing port after IPv6 address"))?;
        return Ok((host, port));
    }
    let (host, port) =
        s.rsplit_once(':').ok_or_else(|| RemoteError::Invalid(remote.into(), "expected HOST:PORT"))?;
    if host.contains(':') {
        return Err(RemoteError::Invalid(remote.into(), "write IPv6 addresses in brackets: tcp:[::1]:6641"));
    }
    if host.is_empty() {
        return Err(RemoteError::Invalid(remote.into(), "missing host"));
    }
    Ok((host, port))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    Active(Active),
    Passive(Passive),
}

impl std::str::FromStr for Remote {
    type Err = RemoteError;

    fn from_str(s: &str) -> Result<Self, RemoteError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RemoteError::Empty);
        }
        let (method, rest) = s.split_once(':').ok_or_else(|| RemoteError::UnknownMethod(s.into()))?;
        match method {
            "unix" => Ok(Remote::Active(Active::Unix(path(s, rest)?))),
            "punix" => Ok(Remote::Passive(Passive::Unix(path(s, rest)?))),
            "tcp" | "ssl" => {
                let (host, p) = host_port(s, rest)?;
                let (host, port) = (host.to_string(), port(s, p)?);
                Ok(Remote::Active(if method == "ssl" {
                    Active::Ssl { host, port }
                } else {
                    Active::Tcp { host, port }
                }))
            }
            "ptcp" | "pssl" => {
                let (p, ip) = match rest.split_once(':') {
                    None => (rest, IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    Some((p, ip)) => {
                        let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
                        let ip = ip.parse().map_err(|_| {
                            RemoteError::Invalid(s.into(), "listen address must be an IP address")
                        })?;
                        (p, ip)
                    }
                };
                let port = port(s, p)?;
                Ok(Remote::Passive(if method == "pssl" {
                    Passive::Ssl { port, ip }
                } else {
                    Passive::Tcp { port, ip }
                }))
            }
            _ => Err(RemoteError::UnknownMethod(s.into())),
        }
    }
}

/// Parses a comma-separated list of upstream remotes (a cluster's members, tried in order).
pub fn parse_upstreams(list: &str) -> Result<Vec<Active>, RemoteError> {
    list.split(',')
        .map(|r| match r.parse::<Remote>()? {
            Remote::Active(a) => Ok(a),
            Remote::Passive(_) => Err(RemoteError::NotActive(r.trim().into())),
        })
        .collect()
}

pub fn parse_listen(s: &str) -> Result<Passive, RemoteError> {
    match s.parse::<Remote>()? {
        Remote::Passive(p) => Ok(p),
        Remote::Active(_) => Err(RemoteError::NotPassive(s.trim().into())),
    }
}

impl fmt::Display for Active {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Active::Unix(p) => write!(f, "unix:{}", p.display()),
            Active::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Active::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Active::Ssl { host, port } if host.contains(':') => write!(f, "ssl:[{host}]:{port}"),
            Active::Ssl { host, port } => write!(f, "ssl:{host}:{port}"),
        }
    }
}

impl fmt::Display for Passive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Passive::Unix(p) => write!(f, "punix:{}", p.display()),
            Passive::Tcp { port, ip: IpAddr::V6(ip) } => write!(f, "ptcp:{port}:[{ip}]"),
            Passive::Tcp { port, ip } => write!(f, "ptcp:{port}:{ip}"),
            Passive::Ssl { port, ip: IpAddr::V6(ip) } => write!(f, "pssl:{port}:[{ip}]"),
            Passive::Ssl { port, ip } => write!(f, "pssl:{port}:{ip}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        let cases = [
            ("unix:/run/ovn/ovnnb_db.sock", "unix:/run/ovn/ovnnb_db.sock"),
            ("tcp:127.0.0.1:6641", "tcp:127.0.0.1:6641"),
            ("tcp:[::1]:6641", "tcp:[::1]:6641"),
            // Kube-OVN writes every address in brackets, IPv4 too.
            ("tcp:[10.0.0.1]:6641", "tcp:10.0.0.1:6641"),
            ("tcp:ovn-nb.example:6641", "tcp:ovn-nb.example:6641"),
            ("punix:/tmp/p.sock", "punix:/tmp/p.sock"),
            ("ptcp:6641", "ptcp:6641:127.0.0.1"),
            ("ptcp:0:0.0.0.0", "ptcp:0:0.0.0.0"),
            ("ptcp:6641:[::1]", "ptcp:6641:[::1]"),
            ("ptcp:6641:::1", "ptcp:6641:[::1]"),
            ("ssl:127.0.0.1:6641", "ssl:127.0.0.1:6641"),
            ("ssl:[::1]:6641", "ssl:[::1]:6641"),
            ("pssl:6641", "pssl:6641:127.0.0.1"),
        ];
        for (input, shown) in cases {
            let r: Remote = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            let text = match r {
                Remote::Active(a) => a.to_string(),
                Remote::Passive(p) => p.to_string(),
            };
            assert_eq!(text, shown);
        }
    }

    #[test]
    fn refuses_bad_remotes_with_a_reason() {
        let cases = [
            ("", "empty remote"),
            ("6641", "unknown method"),
            ("http:x:1", "unknown method"),
            ("tcp:127.0.0.1", "expected HOST:PORT"),
            ("tcp:127.0.0.1:99999", "port must be a number"),
            ("tcp:::1:6641", "brackets"),
            ("tcp:[::1:6641", "unclosed"),
            ("unix:", "missing socket path"),
            ("ptcp:x", "port must be a number"),
            ("ptcp:6641:localhost", "must be an IP address"),
            ("ssl:127.0.0.1", "expected HOST:PORT"),
            ("pssl:x", "port must be a number"),
        ];
        for (input, why) in cases {
            let err = input.parse::<Remote>().expect_err(input).to_string();
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn upstream_lists_and_listen_roles() {
        let list = parse_upstreams("tcp:127.0.0.1:1, unix:/x").expect("list");
        assert_eq!(list, vec![Active::Tcp { host: "127.0.0.1".into(), port: 1 }, Active::Unix("/x".into())]);
        assert!(parse_upstreams("tcp:127.0.0.1:1,ptcp:1").is_err());
        assert!(parse_listen("unix:/x").is_err());
        assert!(parse_listen("punix:/x").is_ok());
    }
}
