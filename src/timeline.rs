//! Per-migration timelines: what the NB tags say and what the Southbound `Port_Binding` shows,
//! stage by stage, with wall-clock times. Pure: callers pass the time and the observed state.
//!
//! Stages, in the order OVN normally goes through them:
//! tagged → destination requested (northd) → destination bound (ovn-controller on the
//! destination) → activated (the VM's RARP reached the destination) → finished
//! (succeeded / failed / aborted, from the tags) → single chassis (SB shows one chassis again).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use crate::policy::{LspState, PolicyConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Tagged,
    DestinationRequested,
    DestinationBound,
    Activated,
    Finalized,
    Succeeded,
    Failed,
    Aborted,
    SingleChassis,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Tagged => "tagged",
            Stage::DestinationRequested => "destination-requested",
            Stage::DestinationBound => "destination-bound",
            Stage::Activated => "activated",
            Stage::Finalized => "finalized-by-proxy",
            Stage::Succeeded => "succeeded",
            Stage::Failed => "failed",
            Stage::Aborted => "aborted",
            Stage::SingleChassis => "single-chassis",
        }
    }
}

/// How the NB tags read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    InProgress,
    Succeeded,
    Failed,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::InProgress => "in-progress",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Aborted => "aborted",
        }
    }
}

/// The Southbound `Port_Binding` of a port, chassis as names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub chassis: Option<String>,
    pub additional_chassis: Vec<String>,
    pub requested_chassis: Option<String>,
    pub requested_additional_chassis: Vec<String>,
    /// `options:additional-chassis-activated`, split on commas.
    pub activated: Vec<String>,
    pub up: Option<bool>,
}

/// One migration of one port.
#[derive(Debug, Clone)]
pub struct Migration {
    pub port: String,
    pub source: Option<String>,
    pub destination: String,
    pub phase: Phase,
    pub events: Vec<(Stage, SystemTime)>,
    pub binding: Option<Binding>,
}

impl Migration {
    fn reached(&self, stage: Stage) -> bool {
        self.events.iter().any(|(s, _)| *s == stage)
    }

    fn mark(&mut self, stage: Stage, now: SystemTime) -> bool {
        if self.reached(stage) {
            return false;
        }
        self.events.push((stage, now));
        true
    }

    pub fn started(&self) -> SystemTime {
        self.events.first().map(|(_, t)| *t).unwrap_or(UNIX_EPOCH)
    }

    /// The latest SB-side state: `requested`, `bound`, `activated` or `-`.
    pub fn sb_state(&self) -> &'static str {
        [Stage::SingleChassis, Stage::Activated, Stage::DestinationBound, Stage::DestinationRequested]
            .into_iter()
            .find(|s| self.reached(*s))
            .map(|s| match s {
                Stage::SingleChassis => "single-chassis",
                Stage::Activated => "activated",
                Stage::DestinationBound => "bound",
                _ => "requested",
            })
            .unwrap_or("-")
    }

    /// Time from the first event to `stage`, if reached.
    pub fn elapsed_to(&self, stage: Stage) -> Option<Duration> {
        let at = self.events.iter().find(|(s, _)| *s == stage)?.1;
        at.duration_since(self.started()).ok()
    }
}

/// What the tags of a row say about a migration, if anything.
fn read_tags(row: &LspState, cfg: &PolicyConfig) -> Option<(String, Option<String>, Phase)> {
    let get = |k: &str| row.external_ids.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let dst = get(&cfg.destination_key)?;
    let phase = match get(&cfg.phase_key).map(|p| p.to_ascii_lowercase()).as_deref() {
        Some("succeeded" | "completed") => Phase::Succeeded,
        Some("failed" | "aborted") => Phase::Failed,
        _ => Phase::InProgress,
    };
    let src = get(&cfg.source_key)
        .or_else(|| {
            row.options.get("requested-chassis").and_then(|rc| rc.split(',').next()).map(|s| s.trim().into())
        })
        .filter(|s: &String| !s.is_empty() && *s != dst);
    Some((dst, src, phase))
}

/// Every migration the proxy has seen, by port name. Finished ones are kept (for `show`) until
/// the port is deleted or a new migration of it starts; at most `MAX_KEPT` finished ones.
#[derive(Debug, Default)]
pub struct Timelines {
    map: DashMap<String, Migration>,
}

const MAX_KEPT: usize = 10_000;

impl Timelines {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what a port's NB row now says. Returns the stages newly reached.
    pub fn observe_nb(&self, row: &LspState, cfg: &PolicyConfig, now: SystemTime) -> Vec<Stage> {
        let mut new = Vec::new();
        match read_tags(row, cfg) {
            Some((dst, src, phase)) => {
                let mut m = self.map.entry(row.name.clone()).or_insert_with(|| Migration {
                    port: row.name.clone(),
                    source: src.clone(),
                    destination: dst.clone(),
                    phase,
                    events: Vec::new(),
                    binding: None,
                });
                if m.destination != dst || (m.phase != Phase::InProgress && phase == Phase::InProgress) {
                    // A new migration of the same port.
                    *m = Migration {
                        port: row.name.clone(),
                        source: src.clone(),
                        destination: dst,
                        phase,
                        events: Vec::new(),
                        binding: m.binding.take(),
                    };
                }
                if m.source.is_none() {
                    m.source = src;
                }
                if m.mark(Stage::Tagged, now) {
                    new.push(Stage::Tagged);
                }
                m.phase = phase;
                let stage = match phase {
                    Phase::Succeeded => Some(Stage::Succeeded),
                    Phase::Failed => Some(Stage::Failed),
                    _ => None,
                };
                if let Some(s) = stage.filter(|s| m.mark(*s, now)) {
                    new.push(s);
                }
            }
            None => {
                if let Some(mut m) = self.map.get_mut(&row.name) {
                    if m.phase == Phase::InProgress {
                        m.phase = Phase::Aborted;
                        if m.mark(Stage::Aborted, now) {
                            new.push(Stage::Aborted);
                        }
                    }
                }
            }
        }
        self.trim();
        new
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
            Phase::Succeeded => Some(dst.clone()),
            Phase::Failed | Phase::Aborted => m.source.as_deref().map(resolve),
            Phase::InProgress if m.reached(Stage::Finalized) => Some(dst.clone()),
            Phase::InProgress => None,
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

    /// Marks that the proxy finished this migration itself (finalize on activation).
    pub fn mark_finalized(&self, port: &str, now: SystemTime) {
        if let Some(mut m) = self.map.get_mut(port) {
            m.mark(Stage::Finalized, now);
        }
    }

    /// True when the proxy has finalized the in-progress migration of `port` to `destination`.
    pub fn is_finalized(&self, port: &str, destination: &str) -> bool {
        self.map.get(port).is_some_and(|m| m.destination == destination && m.reached(Stage::Finalized))
    }

    /// The port is gone from the NB: so is its timeline.
    pub fn forget(&self, port: &str) {
        self.map.remove(port);
    }

    pub fn get(&self, port: &str) -> Option<Migration> {
        self.map.get(port).map(|m| m.clone())
    }

    /// All migrations, by port name.
    pub fn all(&self) -> BTreeMap<String, Migration> {
        self.map.iter().map(|m| (m.key().clone(), m.value().clone())).collect()
    }

    pub fn in_progress(&self) -> usize {
        self.map.iter().filter(|m| m.phase == Phase::InProgress).count()
    }

    fn trim(&self) {
        if self.map.len() <= MAX_KEPT {
            return;
        }
        let mut finished: Vec<(SystemTime, String)> = self
            .map
            .iter()
            .filter(|m| m.phase != Phase::InProgress)
            .map(|m| (m.events.last().map(|e| e.1).unwrap_or(UNIX_EPOCH), m.key().clone()))
            .collect();
        finished.sort();
        for (_, port) in finished.into_iter().take(self.map.len() - MAX_KEPT) {
            self.map.remove(&port);
        }
    }

    /// `migrations/list`: one line per migration.
    pub fn render_list(&self, now: SystemTime) -> String {
        let mut out = String::new();
        let all = self.all();
        if all.is_empty() {
            return "no migrations\n".into();
        }
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<12} {:<12} {:<15} age",
            "port", "source", "destination", "phase", "sb"
        );
        for m in all.values() {
            let age = now.duration_since(m.started()).unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:<12} {:<12} {:<15} {:.1}s",
                m.port,
                m.source.as_deref().unwrap_or("?"),
                m.destination,
                m.phase.as_str(),
                m.sb_state(),
                age.as_secs_f64()
            );
        }
        out
    }

    /// `migrations/show PORT`: the timeline of one port.
    pub fn render_show(&self, port: &str) -> Option<String> {
        let m = self.get(port)?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "port {}: {} → {} ({})",
            m.port,
            m.source.as_deref().unwrap_or("?"),
            m.destination,
            m.phase.as_str()
        );
        let start = m.started();
        for (stage, at) in &m.events {
            let since = at.duration_since(start).unwrap_or_default();
            let wall = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            let _ = writeln!(
                out,
                "  +{:>9.1} ms  {:<22} (unix {}.{:03})",
                since.as_secs_f64() * 1000.0,
                stage.as_str(),
                wall.as_secs(),
                wall.subsec_millis()
            );
        }
        if let Some(b) = &m.binding {
            let _ = writeln!(
                out,
                "  sb: chassis={} additional={:?} requested={} requested-additional={:?} activated={:?} up={}",
                b.chassis.as_deref().unwrap_or("-"),
                b.additional_chassis,
                b.requested_chassis.as_deref().unwrap_or("-"),
                b.requested_additional_chassis,
                b.activated,
                b.up.map(|u| u.to_string()).unwrap_or_else(|| "-".into())
            );
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
