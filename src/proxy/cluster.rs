//! Following a Raft cluster's leader: one `_Server` watch per member (a monitor of its
//! `Database` row for `OVN_Northbound`). Sessions and the proxy's own monitor connect to the
//! leader when it is known; when a member stops being the leader, the sessions on it are closed
//! (their clients reconnect and land on the new leader). `_Server` traffic of clients passes
//! through untouched: the proxy never fakes `leader:true`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::policy::NB_DB;
use crate::proxy::metrics::Metrics;

#[derive(Debug)]
struct Member {
    /// `None`: not known (not connected to it yet, or lost).
    leader: Option<bool>,
    demoted: CancellationToken,
}

#[derive(Debug)]
pub struct Tracker {
    members: Mutex<Vec<Member>>,
    last_leader: Mutex<Option<usize>>,
}

impl Tracker {
    pub fn new(n: usize) -> Self {
        let members = (0..n).map(|_| Member { leader: None, demoted: CancellationToken::new() }).collect();
        Tracker { members: Mutex::new(members), last_leader: Mutex::new(None) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The member known to be the leader now.
    pub fn leader(&self) -> Option<usize> {
        self.lock().iter().position(|m| m.leader == Some(true))
    }

    /// A token cancelled when member `i` stops being the leader.
    pub fn demotion(&self, i: usize) -> CancellationToken {
        self.lock().get(i).map(|m| m.demoted.clone()).unwrap_or_default()
    }

    /// Records what member `i` says of itself (`None`: lost contact). Returns true when the
    /// cluster's leader changed to another member.
    pub fn set(&self, i: usize, leader: Option<bool>) -> bool {
        {
            let mut members = self.lock();
            let Some(m) = members.get_mut(i) else { return false };
            if m.leader == Some(true) && leader != Some(true) {
                m.demoted.cancel();
                m.demoted = CancellationToken::new();
            }
            m.leader = leader;
        }
        let now = self.leader();
        let mut last = self.last_leader.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != *last {
            let changed = last.is_some();
            *last = now;
            return changed;
        }
        false
    }
}

/// The `_Server` watch of one member, as a monitor handler.
pub(super) struct ServerWatch {
    pub index: usize,
    pub remote: String,
    pub tracker: Arc<Tracker>,
    pub metrics: Arc<Metrics>,
    rows: HashMap<String, Value>,
}

impl ServerWatch {
    pub fn new(index: usize, remote: String, tracker: Arc<Tracker>, metrics: Arc<Metrics>) -> Self {
        ServerWatch { index, remote, tracker, metrics, rows: HashMap::new() }
    }

    pub fn monitor_params() -> Value {
        json!(["_Server", ["ovn-nb-proxy", "_Server"], {"Database": [{"columns": ["name", "model", "connected", "leader"]}]}])
    }

    /// Applies `<table-updates2>` of `_Server.Database` (all columns scalar: a `modify`
    /// carries the new values) and tells the tracker.
    pub fn apply(&mut self, updates: &Value) {
        if let Some(rows) = updates.get("Database").and_then(Value::as_object) {
            for (uuid, change) in rows {
                if let Some(row) = change.get("initial").or_else(|| change.get("insert")) {
                    self.rows.insert(uuid.clone(), row.clone());
                } else if let Some(diff) = change.get("modify").and_then(Value::as_object) {
                    if let Some(Value::Object(row)) = self.rows.get_mut(uuid) {
                        for (k, v) in diff {
                            row.insert(k.clone(), v.clone());
                        }
                    }
                } else {
                    self.rows.remove(uuid);
                }
            }
        }
        let nb = self.rows.values().find(|r| r.get("name").and_then(Value::as_str) == Some(NB_DB));
        let leader = nb.map(|r| {
            let clustered = r.get("model").and_then(Value::as_str) == Some("clustered");
            let yes = |k: &str| r.get(k).and_then(Value::as_bool) == Some(true);
            !clustered || (yes("connected") && yes("leader"))
        });
        if self.tracker.set(self.index, leader.or(Some(false))) {
            self.metrics.leader_changes.inc();
            warn!(leader = %self.remote, "cluster leader changed");
        } else if leader == Some(true) {
            info!(leader = %self.remote, "cluster leader");
        }
    }

    pub fn lost(&mut self) {
        self.rows.clear();
        self.tracker.set(self.index, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_moves_and_sessions_on_the_old_leader_are_told() {
        let t = Tracker::new(3);
        assert_eq!(t.leader(), None);
        assert!(!t.set(0, Some(false)));
        assert!(!t.set(1, Some(true)), "the first leader seen is not a change");
        assert_eq!(t.leader(), Some(1));
        let on_old = t.demotion(1);
        let on_follower = t.demotion(0);
        // the leader dies: its watch is lost; a new leader shows up
        assert!(!t.set(1, None));
        assert!(on_old.is_cancelled());
        assert!(!on_follower.is_cancelled());
        assert_eq!(t.leader(), None);
        assert!(t.set(2, Some(true)), "a different leader: a change");
        assert_eq!(t.leader(), Some(2));
        assert!(!t.demotion(1).is_cancelled(), "a fresh token for the next time member 1 leads");
    }

    #[test]
    fn the_watch_reads_the_nb_row_of_server_database() {
        let t = Arc::new(Tracker::new(2));
        let mut w = ServerWatch::new(0, "tcp:a".into(), t.clone(), Arc::new(Metrics::new()));
        w.apply(&json!({"Database": {
            "s": {"initial": {"name": "_Server", "model": "standalone", "connected": true, "leader": true}},
            "n": {"initial": {"name": "OVN_Northbound", "model": "clustered", "connected": true, "leader": false}}}}));
        assert_eq!(t.leader(), None, "a follower");
        w.apply(&json!({"Database": {"n": {"modify": {"leader": true}}}}));
        assert_eq!(t.leader(), Some(0));
        w.lost();
        assert_eq!(t.leader(), None);
        // a standalone server counts as the leader
        let mut s = ServerWatch::new(1, "unix:b".into(), t.clone(), Arc::new(Metrics::new()));
        s.apply(&json!({"Database": {"n": {"initial": {"name": "OVN_Northbound", "model": "standalone", "connected": true, "leader": true}}}}));
        assert_eq!(t.leader(), Some(1));
    }
}
