//! Active sockets: connecting to the upstream database server.

use std::time::Duration;

use crate::net::dial::{dial, BoxIo};
use crate::net::remote::Active;
use crate::net::tls::Tls;

#[derive(Debug, thiserror::Error)]
#[error("no upstream reachable: {}", .0.iter().map(|(r, e)| format!("{r}: {e}")).collect::<Vec<_>>().join("; "))]
pub struct UpstreamError(pub Vec<(String, String)>);

/// Which upstream a connection wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// A client session: the leader when known (or the first remote, in sidecar mode), else
    /// the remotes round-robin.
    Session,
    /// The proxy's own monitor and reconciler: the leader when known.
    Leader,
    /// One member, for its `_Server` watch.
    Member(usize),
}

/// An established upstream connection.
pub struct Link {
    pub io: BoxIo,
    pub index: usize,
    pub remote: String,
    /// Cancelled when this member stops being the cluster leader.
    pub demoted: Option<tokio_util::sync::CancellationToken>,
}

/// The upstream remotes, with what the proxy knows of the cluster's leader.
pub struct Upstreams {
    remotes: Vec<Active>,
    timeout: Duration,
    tls: Option<std::sync::Arc<Tls>>,
    /// Followed only for a list of several remotes (a cluster).
    pub leader: Option<std::sync::Arc<super::cluster::Tracker>>,
    /// Sidecar deployment: sessions go to the first remote (the local member) first.
    sessions_to_first: bool,
    rr: std::sync::atomic::AtomicUsize,
}

impl Upstreams {
    pub fn new(
        remotes: Vec<Active>,
        timeout: Duration,
        tls: Option<std::sync::Arc<Tls>>,
        sessions_to_first: bool,
    ) -> Self {
        let leader =
            (remotes.len() > 1).then(|| std::sync::Arc::new(super::cluster::Tracker::new(remotes.len())));
        Upstreams { remotes, timeout, tls, leader, sessions_to_first, rr: Default::default() }
    }

    pub fn remotes(&self) -> &[Active] {
        &self.remotes
    }

    /// The order in which to try the remotes.
    fn order(&self, pick: Pick) -> Vec<usize> {
        let n = self.remotes.len();
        if let Pick::Member(i) = pick {
            return vec![i];
        }
        if pick == Pick::Session && self.sessions_to_first {
            return (0..n).collect();
        }
        let leader = self.leader.as_ref().map(|t| t.leader());
        if pick == Pick::Leader {
            // The proxy's own monitor takes the reconciler lock, and locks are per server:
            // in a cluster it waits until it knows the leader (nothing to try meanwhile).
            if let Some(known) = leader {
                return known.into_iter().collect();
            }
        }
        let start = self.rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n.max(1);
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        if let Some(l) = leader.flatten() {
            order.retain(|&i| i != l);
            order.insert(0, l);
        }
        order
    }

    /// Connects as `pick` asks; every failure is reported if none answers.
    pub async fn connect(&self, pick: Pick) -> Result<Link, UpstreamError> {
        let mut failures = Vec::new();
        for i in self.order(pick) {
            let r = &self.remotes[i];
            match tokio::time::timeout(self.timeout, dial(r, self.tls.as_deref())).await {
                Ok(Ok(io)) => {
                    let demoted = self.leader.as_ref().map(|t| t.demotion(i));
                    return Ok(Link { io, index: i, remote: r.to_string(), demoted });
                }
                Ok(Err(e)) => failures.push((r.to_string(), e.to_string())),
                Err(_) => failures.push((r.to_string(), format!("no answer within {:?}", self.timeout))),
            }
        }
        Err(UpstreamError(failures))
    }
}
