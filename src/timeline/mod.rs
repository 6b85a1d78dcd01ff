//! Per-migration timelines: what the NB tags say and what the Southbound `Port_Binding` shows,
//! stage by stage, with wall-clock times. Pure: callers pass the time and the observed state.
//!
//! Stages, in the order OVN normally goes through them:
//! tagged → destination requested (northd) → destination bound (ovn-controller on the
//! destination) → activated (the VM's RARP reached the destination) → finished
//! (succeeded / failed / aborted, from the tags) → single chassis (SB shows one chassis again).

use std::collections::BTreeMap;
use std::time::SystemTime;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use dashmap::DashMap;

use crate::policy::{first_chassis, Cause, LspState, PolicyConfig, Tags, REQUESTED_CHASSIS};

mod migration;
mod render;

pub use migration::{Binding, Due, Migration, SourceOrigin, Stage, Status};

/// What the tags of a row say about a migration, if anything.
struct Tagged {
    destination: String,
    source_tag: Option<String>,
    first_requested: Option<String>,
    phase: Status,
}

fn read_tags(row: &LspState, cfg: &PolicyConfig) -> Option<Tagged> {
    let tags = Tags::read(&row.external_ids, cfg);
    let destination = tags.dst?.to_string();
    let usable = |s: &&str| *s != destination;
    Some(Tagged {
        source_tag: tags.src.filter(usable).map(str::to_string),
        first_requested: first_chassis(&row.options).filter(usable).map(str::to_string),
        phase: tags.phase.into(),
        destination,
    })
}

/// Whether a row in progress to a new destination is the same migration moved (it keeps its
/// `source`) rather than a new one started from the row's `requested-chassis`. Two looks at a
/// port need not be two successive writes: ovsdb-server merges the updates it could not send
/// yet, and a resynchronisation shows only the last state. A move leaves `requested-chassis`
/// naming the source first (the proxy's `src,old` or `src,new`); an abort, a writer's own
/// `requested-chassis` and a new migration merged into one look do not. A source learnt from
/// a tag holds while the row has a source tag (the tag decides then); one learnt from the
/// Southbound may be spelled otherwise than in `requested-chassis`: it holds.
fn still_moving(t: &Tagged, source: &str, origin: SourceOrigin) -> bool {
    match origin {
        SourceOrigin::Tag => t.source_tag.is_some(),
        SourceOrigin::RequestedChassis => t.first_requested.as_deref().is_none_or(|f| f == source),
        SourceOrigin::Southbound => true,
    }
}

/// The migrations the proxy has watched, by port name: every migration in progress, and the
/// last `MAX_KEPT` finished ones (for `show`), each until its port is deleted or a new
/// migration of it starts. A port first seen with finished tags (a leftover of a migration
/// the proxy did not watch) has none.
///
/// Cost per observation is independent of the history: a lookup in the map, and for a
/// migration that finishes, an insert into (and possibly a pop from) the ordered index of
/// finished ones. Written by the monitor thread only; read by sessions (the policy's
/// [`Memory`]) and the control socket.
#[derive(Debug, Default)]
pub struct Timelines {
    map: DashMap<String, Migration>,
    /// Finished migrations by the order they finished: sequence number → port.
    finished: Mutex<BTreeMap<u64, String>>,
    next_seq: AtomicU64,
    in_progress: AtomicUsize,
    unknown_source: AtomicUsize,
    /// Entries holding a final state not shown applied yet (a counter: the sessions' fast path
    /// reads it on every port write).
    with_due: AtomicUsize,
}

const MAX_KEPT: usize = 10_000;

impl Timelines {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.finished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the counters and the finished index in step with a phase change of `m`.
    fn set_phase(&self, m: &mut Migration, phase: Status) {
        let was = m.phase == Status::InProgress;
        let is = phase == Status::InProgress;
        m.phase = phase;
        match (was, is) {
            (true, false) => {
                self.in_progress.fetch_sub(1, Ordering::Relaxed);
                if m.source.is_none() {
                    self.unknown_source.fetch_sub(1, Ordering::Relaxed);
                }
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                m.finished = Some(seq);
                self.index().insert(seq, m.port.clone());
            }
            (false, true) => {
                self.in_progress.fetch_add(1, Ordering::Relaxed);
                if m.source.is_none() {
                    self.unknown_source.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(seq) = m.finished.take() {
                    self.index().remove(&seq);
                }
            }
            _ => {}
        }
    }

    /// Sets what is due of `m`, keeping the counter of entries with something due in step.
    fn set_due(&self, m: &mut Migration, due: Option<Due>) {
        match (m.due.is_some(), due.is_some()) {
            (false, true) => {
                self.with_due.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.with_due.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        m.due = due;
    }

    /// A row showing `requested-chassis` other than the stale value settles what was due: done,
    /// or overtaken by a writer.
    fn settle(&self, m: &mut Migration, rc: &Option<String>) {
        if m.due.as_ref().is_some_and(|d| d.stale != *rc) {
            self.set_due(m, None);
        }
    }

    /// The counters an entry leaving the map takes with it.
    fn uncount(&self, m: &Migration) {
        if m.phase == Status::InProgress {
            self.in_progress.fetch_sub(1, Ordering::Relaxed);
            if m.source.is_none() {
                self.unknown_source.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if m.due.is_some() {
            self.with_due.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn set_source(&self, m: &mut Migration, source: String, origin: SourceOrigin) {
        if m.source.is_none() && m.phase == Status::InProgress {
            self.unknown_source.fetch_sub(1, Ordering::Relaxed);
        }
        m.source = Some(source);
        m.source_origin = Some(origin);
    }

    /// Drops the entry of `port` (with its counters and index entry).
    fn drop_entry(&self, port: &str) {
        if let Some((_, m)) = self.map.remove(port) {
            self.uncount(&m);
            if let Some(seq) = m.finished {
                self.index().remove(&seq);
            }
        }
    }

    /// Records what a port's NB row now says. Returns the stages newly reached.
    pub fn observe_nb(&self, row: &LspState, cfg: &PolicyConfig, now: SystemTime) -> Vec<Stage> {
        let mut new = Vec::new();
        let rc = row.options.get(REQUESTED_CHASSIS).cloned();
        match read_tags(row, cfg) {
            None => self.untagged(row, &rc, now, &mut new),
            Some(t) => {
                if self.begin(row, &t) {
                    if let Some(mut m) = self.map.get_mut(&row.name) {
                        self.advance(&mut m, &t, &rc, now, &mut new);
                    }
                }
            }
        }
        self.trim();
        new
    }

    /// The row carries no destination: a migration in progress is aborted (rolled back to the
    /// source, if the options are still the proxy's `src,dst`).
    fn untagged(&self, row: &LspState, rc: &Option<String>, now: SystemTime, new: &mut Vec<Stage>) {
        let Some(mut m) = self.map.get_mut(&row.name) else { return };
        if m.phase == Status::InProgress {
            self.set_phase(&mut m, Status::Aborted);
            let due = m.both().filter(|b| rc.as_ref() == Some(b)).zip(m.source.clone()).map(|(b, src)| Due {
                stale: Some(b),
                requested_chassis: src,
                cause: Cause::Aborted,
            });
            self.set_due(&mut m, due);
            if m.mark(Stage::Aborted, now) {
                new.push(Stage::Aborted);
            }
        } else {
            self.settle(&mut m, rc);
        }
    }

    /// Makes sure the port has the entry of the migration its tags name; false when there is
    /// none to follow. First sight of this migration (or a new migration of the same port):
    /// one first seen already finished is a leftover the proxy did not watch, nothing to
    /// record. A migration in progress moved to another destination keeps its source, unless
    /// the row says the source is gone (see `still_moving`).
    fn begin(&self, row: &LspState, t: &Tagged) -> bool {
        let restart = self.map.get(&row.name).map(|m| {
            m.destination != t.destination || (m.phase != Status::InProgress && t.phase == Status::InProgress)
        });
        if restart == Some(false) {
            return true;
        }
        let (binding, moved_from) = match (restart, self.map.get(&row.name)) {
            (Some(true), Some(m)) => {
                let moved = (m.phase == Status::InProgress && t.phase == Status::InProgress)
                    .then(|| m.source.clone().zip(m.source_origin))
                    .flatten()
                    .filter(|(source, origin)| still_moving(t, source, *origin));
                (m.binding.clone(), moved)
            }
            _ => (None, None),
        };
        self.drop_entry(&row.name);
        if t.phase != Status::InProgress {
            return false;
        }
        let mut m = Migration::new(&row.name, t.destination.clone(), Status::Aborted, binding);
        if let Some((source, origin)) = moved_from {
            m.source = Some(source);
            m.source_origin = Some(origin);
        }
        self.map.insert(row.name.clone(), m);
        true
    }

    /// Moves a followed migration on with what its row's tags say: its source, its phase, the
    /// final options due when this row finished it.
    fn advance(
        &self,
        m: &mut Migration,
        t: &Tagged,
        rc: &Option<String>,
        now: SystemTime,
        new: &mut Vec<Stage>,
    ) {
        if m.events.is_empty() {
            // A fresh entry: counted as in progress from here.
            self.set_phase(m, Status::InProgress);
        }
        match (&t.source_tag, &t.first_requested) {
            (Some(tag), _) if m.source.as_ref() != Some(tag) => {
                self.set_source(m, tag.clone(), SourceOrigin::Tag)
            }
            (None, Some(rc)) if m.source.is_none() => {
                self.set_source(m, rc.clone(), SourceOrigin::RequestedChassis)
            }
            _ => {}
        }
        if m.mark(Stage::Tagged, now) {
            new.push(Stage::Tagged);
        }
        let final_rc = match t.phase {
            Status::Succeeded => Some((t.destination.clone(), Cause::Succeeded)),
            Status::Failed => m.source.clone().map(|s| (s, Cause::Failed)),
            _ => None,
        };
        match final_rc {
            // Finished by this row: the final options are due unless the row has them.
            Some((f, cause)) if m.phase == Status::InProgress => {
                let due =
                    (rc.as_ref() != Some(&f)).then(|| Due { stale: rc.clone(), requested_chassis: f, cause });
                self.set_due(m, due);
            }
            _ => self.settle(m, rc),
        }
        self.set_phase(m, t.phase);
        let stage = match t.phase {
            Status::Succeeded => Some(Stage::Succeeded),
            Status::Failed => Some(Stage::Failed),
            _ => None,
        };
        if let Some(s) = stage.filter(|s| m.mark(*s, now)) {
            new.push(s);
        }
    }

    /// Records a port's SB binding. `aliases` maps chassis hostnames to chassis names (a tag
    /// may name either, as `requested-chassis` may). Returns the stages newly reached.
    pub fn observe_sb(
        &self,
        port: &str,
        b: &Binding,
        aliases: &BTreeMap<String, String>,
        now: SystemTime,
    ) -> Vec<Stage> {
        let Some(mut m) = self.map.get_mut(port) else { return Vec::new() };
        let resolve = |c: &str| aliases.get(c).cloned().unwrap_or_else(|| c.to_string());
        let dst = resolve(&m.destination);
        let has = |list: &[String]| list.contains(&dst);
        let mut candidates = vec![
            (Stage::DestinationRequested, has(&b.requested_additional_chassis)),
            (Stage::DestinationBound, has(&b.additional_chassis)),
            (Stage::Activated, has(&b.activated)),
        ];
        let finished_on = match m.phase {
            Status::Succeeded => Some(dst.clone()),
            Status::Failed | Status::Aborted => m.source.as_deref().map(resolve),
            Status::InProgress if m.reached(Stage::Finalized) => Some(dst.clone()),
            Status::InProgress => None,
        };
        if let Some(c) = finished_on {
            candidates.push((
                Stage::SingleChassis,
                b.chassis.as_deref() == Some(c.as_str()) && b.additional_chassis.is_empty(),
            ));
        }
        let mut new = Vec::new();
        for (stage, reached) in candidates {
            if reached && m.mark(stage, now) {
                new.push(stage);
            }
        }
        m.binding = Some(b.clone());
        new
    }

    /// Learns the source of the in-progress migration of `port` when the proxy does not know
    /// it: the chassis `b` shows binding the port, if it is not the destination. Returns the
    /// source learnt.
    pub fn learn_source(
        &self,
        port: &str,
        b: &Binding,
        aliases: &BTreeMap<String, String>,
    ) -> Option<String> {
        let mut m = self.map.get_mut(port)?;
        if m.phase != Status::InProgress || m.source.is_some() {
            return None;
        }
        let resolve = |c: &str| aliases.get(c).cloned().unwrap_or_else(|| c.to_string());
        let dst = resolve(&m.destination);
        let chassis = b.chassis.as_deref().filter(|c| *c != dst)?.to_string();
        self.set_source(&mut m, chassis.clone(), SourceOrigin::Southbound);
        Some(chassis)
    }

    /// Marks that the proxy finished this migration itself (finalize on activation).
    pub fn mark_finalized(&self, port: &str, now: SystemTime) {
        if let Some(mut m) = self.map.get_mut(port) {
            m.mark(Stage::Finalized, now);
        }
    }

    /// True when the proxy has finalized the migration of `port` to `destination` and that
    /// migration is still in progress by the tags.
    pub fn is_finalized(&self, port: &str, destination: &str) -> bool {
        self.map.get(port).is_some_and(|m| {
            m.phase == Status::InProgress && m.destination == destination && m.reached(Stage::Finalized)
        })
    }

    /// The source of the migration of `port` to `destination`, when known, if it is in
    /// progress (`finished` false) or finished by its tags (`finished` true).
    pub fn source_of(&self, port: &str, destination: &str, finished: bool) -> Option<String> {
        let m = self.map.get(port)?;
        // The same migration: still in progress (moved to another destination, it keeps its
        // source; finishing, it must be the one to `destination`), or finished and still
        // finished. A finished one followed by rows in progress is a new migration.
        let same = match m.phase {
            Status::InProgress => !finished || m.destination == destination,
            Status::Succeeded | Status::Failed => finished && m.destination == destination,
            Status::Aborted => false,
        };
        same.then(|| m.source.clone()).flatten()
    }

    /// The final options still due for the finished migration of `port` (see [`Due`]).
    pub fn due(&self, port: &str) -> Option<Due> {
        self.map.get(port).and_then(|m| (m.phase != Status::InProgress).then(|| m.due.clone()).flatten())
    }

    /// The ports whose final options are still due.
    pub fn dues(&self) -> Vec<String> {
        self.map
            .iter()
            .filter(|m| m.phase != Status::InProgress && m.due.is_some())
            .map(|m| m.key().clone())
            .collect()
    }

    /// The port is gone from the NB: so is its timeline.
    pub fn forget(&self, port: &str) {
        self.drop_entry(port);
        self.trim();
    }

    /// The port was renamed: its timeline follows it.
    pub fn rename(&self, old: &str, new: &str) {
        if old == new {
            return;
        }
        if let Some((_, mut m)) = self.map.remove(old) {
            self.drop_entry(new);
            m.port = new.to_string();
            if let Some(seq) = m.finished {
                self.index().insert(seq, new.to_string());
            }
            self.map.insert(new.to_string(), m);
        }
    }

    pub fn get(&self, port: &str) -> Option<Migration> {
        self.map.get(port).map(|m| m.clone())
    }

    /// All migrations, by port name.
    pub fn all(&self) -> BTreeMap<String, Migration> {
        self.map.iter().map(|m| (m.key().clone(), m.value().clone())).collect()
    }

    pub fn contains(&self, port: &str) -> bool {
        self.map.contains_key(port)
    }

    /// The ports that have a timeline.
    pub fn ports(&self) -> Vec<String> {
        self.map.iter().map(|m| m.key().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Migrations in progress by their tags (a counter: no walk).
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// Whether any migration holds a final state not shown applied yet (a counter: no walk).
    pub fn any_due(&self) -> bool {
        self.with_due.load(Ordering::Acquire) > 0
    }

    /// Migrations in progress whose source the proxy does not know.
    pub fn unknown_source(&self) -> usize {
        self.unknown_source.load(Ordering::Relaxed)
    }

    /// Drops the oldest finished migrations past `MAX_KEPT`.
    fn trim(&self) {
        loop {
            let victim = {
                let mut index = self.index();
                if index.len() <= MAX_KEPT {
                    return;
                }
                index.pop_first()
            };
            let Some((seq, port)) = victim else { return };
            if let Some((_, m)) = self.map.remove_if(&port, |_, m| m.finished == Some(seq)) {
                self.uncount(&m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn row(ext: &[(&str, &str)], rc: &str) -> LspState {
        let mut r = LspState { uuid: "u".into(), name: "vm1".into(), ..Default::default() };
        for (k, v) in ext {
            r.external_ids.insert((*k).into(), (*v).into());
        }
        r.options.insert("requested-chassis".into(), rc.into());
        r
    }

    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
    }

    #[test]
    fn a_whole_migration_stage_by_stage() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        assert_eq!(
            t.observe_nb(&row(&[("migration-destination", "hv2")], "hv1"), &cfg, at(0)),
            vec![Stage::Tagged]
        );
        let mut b = Binding {
            chassis: Some("hv1".into()),
            requested_chassis: Some("hv1".into()),
            ..Default::default()
        };
        assert!(t.observe_sb("vm1", &b, &none(), at(1)).is_empty());
        b.requested_additional_chassis = vec!["hv2".into()];
        assert_eq!(t.observe_sb("vm1", &b, &none(), at(3)), vec![Stage::DestinationRequested]);
        b.additional_chassis = vec!["hv2".into()];
        assert_eq!(t.observe_sb("vm1", &b, &none(), at(6)), vec![Stage::DestinationBound]);
        b.activated = vec!["hv2".into()];
        assert_eq!(t.observe_sb("vm1", &b, &none(), at(20)), vec![Stage::Activated]);
        let m = t.get("vm1").expect("tracked");
        assert_eq!(m.sb_state(), "activated");
        assert_eq!(m.source.as_deref(), Some("hv1"));
        let done = row(&[("migration-destination", "hv2"), ("migration-phase", "Succeeded")], "hv2");
        assert_eq!(t.observe_nb(&done, &cfg, at(30)), vec![Stage::Succeeded]);
        let single = Binding {
            chassis: Some("hv2".into()),
            requested_chassis: Some("hv2".into()),
            ..Default::default()
        };
        assert_eq!(t.observe_sb("vm1", &single, &none(), at(35)), vec![Stage::SingleChassis]);
        let m = t.get("vm1").expect("tracked");
        assert_eq!(m.elapsed_to(Stage::Activated), Some(Duration::from_millis(20)));
        assert_eq!(m.elapsed_to(Stage::SingleChassis), Some(Duration::from_millis(35)));
        let shown = t.render_show("vm1").expect("shown");
        assert!(shown.contains("activated") && shown.contains("single-chassis"), "{shown}");
        assert!(t.render_list(at(40)).contains("succeeded"));
        assert_eq!(t.in_progress(), 0);
    }

    #[test]
    fn abort_and_a_new_migration() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        t.observe_nb(&row(&[("migration-destination", "hv2")], "hv1,hv2"), &cfg, at(0));
        assert_eq!(t.in_progress(), 1);
        assert_eq!(t.observe_nb(&row(&[], "hv1,hv2"), &cfg, at(5)), vec![Stage::Aborted]);
        let back = Binding { chassis: Some("hv1".into()), ..Default::default() };
        assert_eq!(t.observe_sb("vm1", &back, &none(), at(7)), vec![Stage::SingleChassis]);
        // the next migration to another chassis starts a fresh timeline
        assert_eq!(
            t.observe_nb(&row(&[("migration-destination", "hv3")], "hv1"), &cfg, at(50)),
            vec![Stage::Tagged]
        );
        let m = t.get("vm1").expect("tracked");
        assert_eq!(m.destination, "hv3");
        assert_eq!(m.events.len(), 1);
        // untracked ports are ignored on the SB side
        assert!(t.observe_sb("other", &back, &none(), at(60)).is_empty());
    }

    #[test]
    fn finalized_in_progress_migrations_end_on_the_destination() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        t.observe_nb(&row(&[("migration-destination", "hv2")], "hv1,hv2"), &cfg, at(0));
        assert!(!t.is_finalized("vm1", "hv2"));
        t.mark_finalized("vm1", at(10));
        assert!(t.is_finalized("vm1", "hv2"));
        assert!(!t.is_finalized("vm1", "hv3"));
        let single = Binding { chassis: Some("hv2".into()), ..Default::default() };
        assert_eq!(t.observe_sb("vm1", &single, &none(), at(12)), vec![Stage::SingleChassis]);
    }

    fn port(name: &str, ext: &[(&str, &str)], rc: &str) -> LspState {
        LspState { name: name.into(), ..row(ext, rc) }
    }

    #[test]
    fn finished_migrations_are_kept_up_to_a_bound_oldest_dropped_first() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        let n = MAX_KEPT + 500;
        for i in 0..n {
            let name = format!("p{i}");
            t.observe_nb(&port(&name, &[("migration-destination", "hv2")], "hv1"), &cfg, at(i as u64));
            let done =
                port(&name, &[("migration-destination", "hv2"), ("migration-phase", "succeeded")], "hv2");
            t.observe_nb(&done, &cfg, at(i as u64));
        }
        // One still in progress is never dropped, however old.
        t.observe_nb(&port("old", &[("migration-destination", "hv2")], "hv1"), &cfg, at(0));
        for i in n..n + 10 {
            let name = format!("p{i}");
            t.observe_nb(&port(&name, &[("migration-destination", "hv2")], "hv1"), &cfg, at(i as u64));
            let failed =
                port(&name, &[("migration-destination", "hv2"), ("migration-phase", "failed")], "hv1");
            t.observe_nb(&failed, &cfg, at(i as u64));
        }
        assert_eq!(t.len(), MAX_KEPT + 1);
        assert_eq!(t.in_progress(), 1);
        assert!(t.get("old").is_some());
        assert!(t.get("p0").is_none() && t.get("p509").is_none(), "the oldest finished are dropped");
        assert!(t.get("p510").is_some() && t.get(&format!("p{}", n + 9)).is_some());
    }

    #[test]
    fn a_port_first_seen_finished_is_not_a_migration_the_proxy_watched() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        let leftover =
            port("vm1", &[("migration-destination", "hv2"), ("migration-phase", "succeeded")], "hv2");
        assert!(t.observe_nb(&leftover, &cfg, at(0)).is_empty());
        assert!(t.is_empty());
        // A new migration of it is.
        let again = port("vm1", &[("migration-destination", "hv3")], "hv2");
        assert_eq!(t.observe_nb(&again, &cfg, at(1)), vec![Stage::Tagged]);
        assert_eq!(t.get("vm1").and_then(|m| m.source).as_deref(), Some("hv2"));
    }

    #[test]
    fn a_rename_moves_the_timeline() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        t.observe_nb(&port("vm1", &[("migration-destination", "hv2")], "hv1"), &cfg, at(0));
        t.rename("vm1", "vm1b");
        assert!(t.get("vm1").is_none());
        assert_eq!(t.get("vm1b").map(|m| m.port).as_deref(), Some("vm1b"));
        assert_eq!(t.in_progress(), 1);
        t.forget("vm1b");
        assert_eq!((t.len(), t.in_progress()), (0, 0));
    }

    #[test]
    fn the_source_is_remembered_learnt_from_the_southbound_and_counted_when_unknown() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        t.observe_nb(&port("vm1", &[("migration-destination", "hv2")], "hv1"), &cfg, at(0));
        assert_eq!(t.source_of("vm1", "hv2", false).as_deref(), Some("hv1"));
        assert_eq!(t.source_of("vm1", "hv2", true).as_deref(), Some("hv1"), "finishing: the same migration");
        assert_eq!(t.source_of("vm1", "hv3", true), None, "finishing to another destination");
        assert_eq!(t.source_of("vm1", "hv3", false).as_deref(), Some("hv1"), "moved: the same source");
        // Moved to hv3, requested-chassis still the proxy's pair: the same source.
        t.observe_nb(&port("vm1", &[("migration-destination", "hv3")], "hv1,hv2"), &cfg, at(1));
        assert_eq!(t.source_of("vm1", "hv3", false).as_deref(), Some("hv1"));
        // To hv4 with requested-chassis naming another chassis first: the migration was
        // aborted, moved by a writer and started again between two looks (updates merged).
        t.observe_nb(&port("vm1", &[("migration-destination", "hv4")], "hv0"), &cfg, at(1));
        assert_eq!(t.source_of("vm1", "hv4", false).as_deref(), Some("hv0"), "a new migration");
        // A source from a tag holds while a source tag is there; gone, the row decides.
        t.observe_nb(
            &port("vm1", &[("migration-destination", "hv5"), ("migration-source", "hv7")], "hv0,hv4"),
            &cfg,
            at(1),
        );
        t.observe_nb(
            &port("vm1", &[("migration-destination", "hv6"), ("migration-source", "hv7")], "hv3"),
            &cfg,
            at(1),
        );
        assert_eq!(t.source_of("vm1", "hv6", false).as_deref(), Some("hv7"));
        t.observe_nb(&port("vm1", &[("migration-destination", "hv5")], "hv3"), &cfg, at(1));
        assert_eq!(t.source_of("vm1", "hv5", false).as_deref(), Some("hv3"), "the tag gone: a new migration");
        t.observe_nb(&port("vm1", &[("migration-destination", "hv2")], "hv1,hv2"), &cfg, at(1));
        // A later write that loses requested-chassis does not change what was remembered.
        t.observe_nb(&port("vm1", &[("migration-destination", "hv2")], ""), &cfg, at(1));
        assert_eq!(t.source_of("vm1", "hv2", false).as_deref(), Some("hv1"));
        // First seen without any source.
        let mut lost = port("vm2", &[("migration-destination", "hv2")], "");
        lost.options.clear();
        t.observe_nb(&lost, &cfg, at(2));
        assert_eq!((t.source_of("vm2", "hv2", false), t.unknown_source()), (None, 1));
        assert!(t.render_list(at(3)).lines().any(|l| l.starts_with("vm2 ") && l.contains(" unknown ")));
        // The Southbound shows the destination binding it: nothing learnt. The source: learnt.
        let on = |c: &str| Binding { chassis: Some(c.into()), ..Default::default() };
        assert_eq!(t.learn_source("vm2", &on("hv2"), &none()), None);
        assert_eq!(t.learn_source("vm2", &on("hv1"), &none()).as_deref(), Some("hv1"));
        assert_eq!((t.source_of("vm2", "hv2", false).as_deref(), t.unknown_source()), (Some("hv1"), 0));
        assert!(t.render_show("vm2").expect("shown").contains("source from the Southbound binding"));
        // A finished migration remembers its source for finished rows only: a new migration
        // to the same destination gets nothing from it.
        let done = port("vm1", &[("migration-destination", "hv2"), ("migration-phase", "failed")], "hv1");
        t.observe_nb(&done, &cfg, at(4));
        assert_eq!(t.source_of("vm1", "hv2", false), None);
        assert_eq!(t.source_of("vm1", "hv2", true).as_deref(), Some("hv1"));
        assert!(!t.is_finalized("vm1", "hv2"));
    }

    #[test]
    fn finalized_holds_only_while_that_migration_is_in_progress() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        t.observe_nb(&row(&[("migration-destination", "hv2")], "hv1,hv2"), &cfg, at(0));
        t.mark_finalized("vm1", at(1));
        assert!(t.is_finalized("vm1", "hv2"));
        // Rolled back after all: no longer finalized, though the destination is the same.
        t.observe_nb(
            &row(&[("migration-destination", "hv2"), ("migration-phase", "failed")], "hv1"),
            &cfg,
            at(2),
        );
        assert!(!t.is_finalized("vm1", "hv2"));
        // The retry is a new migration, not finalized either.
        t.observe_nb(&row(&[("migration-destination", "hv2")], "hv1"), &cfg, at(3));
        assert!(!t.is_finalized("vm1", "hv2"));
        assert_eq!(t.in_progress(), 1);
    }

    #[test]
    fn a_final_state_stays_due_until_a_row_shows_it() {
        let t = Timelines::new();
        let cfg = PolicyConfig::default();
        let due = |rc: &str, stale: &str, cause| {
            Some(Due { stale: Some(stale.into()), requested_chassis: rc.into(), cause })
        };
        t.observe_nb(&row(&[("migration-destination", "hv2")], "hv1,hv2"), &cfg, at(0));
        assert_eq!(t.due("vm1"), None, "in progress");
        t.observe_nb(&row(&[], "hv1,hv2"), &cfg, at(1));
        assert_eq!(t.due("vm1"), due("hv1", "hv1,hv2", Cause::Aborted));
        assert_eq!(t.dues(), vec!["vm1".to_string()]);
        assert!(t.any_due(), "the sessions' fast path is off while something is due");
        // Another change of the port that leaves requested-chassis: still due.
        let mut other = row(&[("owner", "me")], "hv1,hv2");
        other.options.insert("own".into(), "x".into());
        t.observe_nb(&other, &cfg, at(2));
        assert!(t.due("vm1").is_some());
        // Rolled back: done.
        t.observe_nb(&row(&[], "hv1"), &cfg, at(3));
        assert_eq!(t.due("vm1"), None);
        assert!(!t.any_due());
        // An abort whose options a writer had already changed is not due at all.
        t.observe_nb(&row(&[("migration-destination", "hv3")], "hv1,hv3"), &cfg, at(4));
        t.observe_nb(&row(&[], "hv9"), &cfg, at(5));
        assert_eq!(t.due("vm1"), None);
        // A success: dst due until shown, also once the tags are cleared.
        t.observe_nb(&row(&[("migration-destination", "hv4")], "hv9,hv4"), &cfg, at(6));
        t.observe_nb(
            &row(&[("migration-destination", "hv4"), ("migration-phase", "succeeded")], "hv9,hv4"),
            &cfg,
            at(7),
        );
        assert_eq!(t.due("vm1"), due("hv4", "hv9,hv4", Cause::Succeeded));
        t.observe_nb(&row(&[], "hv9,hv4"), &cfg, at(8));
        assert_eq!(t.due("vm1"), due("hv4", "hv9,hv4", Cause::Succeeded));
        // A writer's own choice overtakes it.
        t.observe_nb(&row(&[], "hv7"), &cfg, at(9));
        assert_eq!(t.due("vm1"), None);
        assert!(!t.any_due());
        // A port deleted while its final state is due takes it along.
        t.observe_nb(&row(&[("migration-destination", "hv5")], "hv7,hv5"), &cfg, at(10));
        t.observe_nb(&row(&[], "hv7,hv5"), &cfg, at(11));
        assert!(t.any_due());
        t.forget("vm1");
        assert!(!t.any_due());
    }
}
