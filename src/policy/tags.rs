//! Reading a row's migration tags: the one place that knows how tags spell a migration (the
//! policy decides with it, the timelines follow migrations with it).

use super::value::StrMap;
use super::{PolicyConfig, REQUESTED_CHASSIS};

/// What the phase tag says (case-insensitive: KubeVirt's phases can be copied in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    InProgress,
    Succeeded,
    Failed,
}

/// The migration tags of one row, trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tags<'a> {
    pub dst: Option<&'a str>,
    pub src: Option<&'a str>,
    pub phase: Phase,
    /// `Some(None)`: the override asks for no strategy.
    pub strategy: Option<Option<&'a str>>,
}

fn trimmed(value: Option<&String>) -> Option<&str> {
    value.map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// Empty or `none` (any case) means "no strategy".
pub fn strategy_value(raw: &str) -> Option<&str> {
    let s = raw.trim();
    (!s.is_empty() && !s.eq_ignore_ascii_case("none")).then_some(s)
}

impl<'a> Tags<'a> {
    pub fn read(ext: &'a StrMap, cfg: &PolicyConfig) -> Tags<'a> {
        let is = |p: &str, names: [&str; 2]| names.iter().any(|n| p.eq_ignore_ascii_case(n));
        let phase = match trimmed(ext.get(&cfg.phase_key)) {
            Some(p) if is(p, ["succeeded", "completed"]) => Phase::Succeeded,
            Some(p) if is(p, ["failed", "aborted"]) => Phase::Failed,
            _ => Phase::InProgress,
        };
        Tags {
            dst: trimmed(ext.get(&cfg.destination_key)),
            src: trimmed(ext.get(&cfg.source_key)),
            phase,
            strategy: ext.get(&cfg.strategy_key).map(|s| strategy_value(s)),
        }
    }
}

/// The first entry of `requested-chassis`, trimmed, if non-empty.
pub fn first_chassis(options: &StrMap) -> Option<&str> {
    options
        .get(REQUESTED_CHASSIS)
        .and_then(|rc| rc.split(',').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}
