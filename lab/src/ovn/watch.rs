//! A live SB monitor for timing binding changes: the client read on a thread of its own, every
//! change kept with the time it was read.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ovn_nb_proxy::net::client::{Incoming, Origin};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::binding::{PortBinding, SbView};
use crate::client::{Blocking, Reader};

/// A live `monitor_cond` of SB `Port_Binding` (and `Chassis` names) over one unix connection;
/// every row change is kept with the time it was received. Closed on drop.
pub struct SbWatch {
    shared: Arc<Shared>,
    _reader: Reader,
}

#[derive(Default)]
struct Shared {
    state: Mutex<WatchState>,
    changed: Condvar,
}

#[derive(Default)]
struct WatchState {
    view: SbView,
    events: Vec<(Instant, PortBinding)>,
    ready: bool,
    closed: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One message of the connection whose monitor request is `monitor`, read at `at`.
    fn read(&self, m: Incoming<'_>, monitor: u64, at: Instant) {
        let msg = m.envelope;
        let value = |raw: Option<&RawValue>| raw.and_then(|r| serde_json::from_str::<Value>(r.get()).ok());
        let (updates, initial) = match (m.origin, msg.method.as_deref()) {
            (Origin::Reply(n), _) if n == monitor => match msg.error.filter(|e| e.get() != "null") {
                Some(e) => return self.close(format!("monitor refused: {}", e.get())),
                None => (value(msg.result), true),
            },
            // params: [<monitor-id>, <table-updates2>]
            (Origin::Server, Some("update2")) => (value(msg.params).map(|mut p| p[1].take()), false),
            _ => (None, false),
        };
        let mut state = self.lock();
        if let Some(updates) = updates {
            let changed = state.view.apply(&updates);
            state.events.extend(changed.into_iter().map(|pb| (at, pb)));
        }
        state.ready |= initial;
        drop(state);
        self.changed.notify_all();
    }

    fn close(&self, why: String) {
        self.lock().closed = Some(why);
        self.changed.notify_all();
    }
}

impl SbWatch {
    pub(super) fn start(socket: &Path) -> Result<SbWatch> {
        let mut conn = Blocking::unix(socket)?;
        let monitor =
            conn.request("monitor_cond", &json!(["OVN_Southbound", null, SbView::monitor_requests()]));
        let shared = Arc::new(Shared::default());
        let (sink, end) = (shared.clone(), shared.clone());
        let reader =
            conn.read_on_thread(move |m, at| sink.read(m, monitor, at), move |e| end.close(e.to_string()));
        let watch = SbWatch { shared, _reader: reader };
        watch.wait_state(Duration::from_secs(10), |s| s.ready.then_some(()))?;
        Ok(watch)
    }

    /// The latest binding of `lsp`, if the monitor has seen one.
    pub fn current(&self, lsp: &str) -> Option<PortBinding> {
        let state = self.shared.lock();
        state.events.iter().rev().find(|(_, pb)| pb.logical_port == lsp).map(|(_, pb)| pb.clone())
    }

    /// The first change of `lsp` received at or after `since` that satisfies `pred`, with its
    /// arrival time; waits for it up to `within`.
    pub fn first_since(
        &self,
        lsp: &str,
        since: Instant,
        within: Duration,
        pred: impl Fn(&PortBinding) -> bool,
    ) -> Result<(Instant, PortBinding)> {
        self.wait_state(within, |s| {
            s.events.iter().find(|(t, pb)| *t >= since && pb.logical_port == lsp && pred(pb)).cloned()
        })
        .with_context(|| format!("SB Port_Binding {lsp}: last seen {:?}", self.current(lsp)))
    }

    fn wait_state<T>(&self, within: Duration, mut probe: impl FnMut(&WatchState) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + within;
        let mut state = self.shared.lock();
        loop {
            if let Some(v) = probe(&state) {
                return Ok(v);
            }
            if let Some(why) = &state.closed {
                bail!("SB monitor closed: {why}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("not seen on the SB monitor within {within:?}");
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}
