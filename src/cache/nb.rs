//! The proxy's own view of `Logical_Switch_Port` (`name`, `options`, `external_ids`), fed by a
//! `monitor_cond` on a connection of its own. Pure: it applies `<table-updates2>` values it is
//! given; the connection lives in `proxy::monitor`.
//!
//! It supplies the state a transaction does not carry (the pre-state of the ports it touches).
//! It may lag the database by one monitor round trip; the reconciler covers that window.

use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use serde_json::Value;

use crate::policy::value::{parse_str_map, parse_str_scalar, StrMap};
use crate::policy::{LspState, LspView, LSP_TABLE};

/// The columns the monitor asks for.
pub const COLUMNS: [&str; 3] = ["name", "options", "external_ids"];

/// One row a monitor update touched: as it was (`None`: new) and as it is (`None`: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub before: Option<LspState>,
    pub after: Option<LspState>,
}

#[derive(Debug, Default)]
pub struct LspCache {
    rows: DashMap<String, LspState>,
    /// name → uuid. Names are unique in the NB schema (an index), so one uuid per name.
    names: DashMap<String, String>,
    synced: AtomicBool,
}

impl LspCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// True between a complete initial monitor reply and the loss of the monitor connection.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn set_unsynced(&self) {
        self.synced.store(false, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Replaces the whole content with a monitor reply's initial rows.
    pub fn reset(&self, initial: &Value) -> Vec<Touched> {
        self.rows.clear();
        self.names.clear();
        let touched = self.apply(initial);
        self.synced.store(true, Ordering::Release);
        touched
    }

    /// Applies `<table-updates2>` (`initial`/`insert` rows, `modify` diffs, `delete`) and says
    /// what each touched row was before and is now. Malformed pieces are skipped: the monitor
    /// is resynchronised on reconnect anyway.
    pub fn apply(&self, updates: &Value) -> Vec<Touched> {
        let mut touched = Vec::new();
        let Some(rows) = updates.get(LSP_TABLE).and_then(Value::as_object) else { return touched };
        for (uuid, change) in rows {
            let Some(change) = change.as_object() else { continue };
            let before = self.rows.get(uuid).map(|r| r.clone());
            let after = if let Some(row) = change.get("initial").or_else(|| change.get("insert")) {
                let mut state = LspState { uuid: uuid.clone(), ..LspState::default() };
                apply_columns(&mut state, row, false);
                self.put(state.clone());
                Some(state)
            } else if let Some(diff) = change.get("modify") {
                let Some(mut state) = before.clone() else { continue };
                apply_columns(&mut state, diff, true);
                self.put(state.clone());
                Some(state)
            } else if change.contains_key("delete") {
                if let Some((_, old)) = self.rows.remove(uuid) {
                    self.names.remove_if(&old.name, |_, u| u == uuid);
                }
                None
            } else {
                continue;
            };
            touched.push(Touched { before, after });
        }
        touched
    }

    fn put(&self, state: LspState) {
        if let Some(old) = self.rows.get(&state.uuid).map(|r| r.name.clone()) {
            if old != state.name {
                self.names.remove_if(&old, |_, u| *u == state.uuid);
            }
        }
        self.names.insert(state.name.clone(), state.uuid.clone());
        self.rows.insert(state.uuid.clone(), state);
    }
}

/// Sets the monitored columns present in `row`. With `diff`, maps are update2 diffs: a pair
/// whose key holds the same value is a removal, any other pair is an addition or a change.
fn apply_columns(state: &mut LspState, row: &Value, diff: bool) {
    if let Some(name) = row.get("name").and_then(|v| parse_str_scalar(v).ok()) {
        state.name = name;
    }
    for (col, target) in [("options", &mut state.options), ("external_ids", &mut state.external_ids)] {
        let Some(map) = row.get(col).and_then(|v| parse_str_map(v).ok()) else { continue };
        if diff {
            apply_map_diff(target, map);
        } else {
            *target = map;
        }
    }
}

fn apply_map_diff(target: &mut StrMap, diff: StrMap) {
    for (k, v) in diff {
        if target.get(&k) == Some(&v) {
            target.remove(&k);
        } else {
            target.insert(k, v);
        }
    }
}

impl LspView for LspCache {
    fn by_uuid(&self, uuid: &str) -> Option<LspState> {
        self.rows.get(uuid).map(|r| r.clone())
    }

    fn by_name(&self, name: &str) -> Option<LspState> {
        let uuid = self.names.get(name)?.clone();
        self.by_uuid(&uuid)
    }

    fn all(&self) -> Vec<LspState> {
        self.rows.iter().map(|r| r.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn initial_then_diffs_then_delete() {
        let cache = LspCache::new();
        cache.reset(&json!({"Logical_Switch_Port":{
            "u1":{"initial":{"name":"p1","options":["map",[["requested-chassis","hv1"],["x","1"]]]}},
            "u2":{"initial":{"name":"p2"}}}}));
        assert!(cache.is_synced());
        assert_eq!(cache.len(), 2);
        let p1 = cache.by_name("p1").expect("p1");
        assert_eq!(p1.options.get("x").map(String::as_str), Some("1"));
        assert!(p1.external_ids.is_empty());

        // x removed (same value), requested-chassis changed, y added; tags added.
        let touched = cache.apply(&json!({"Logical_Switch_Port":{"u1":{"modify":{
            "options":["map",[["x","1"],["requested-chassis","hv1,hv2"],["y","2"]]],
            "external_ids":["map",[["migration-destination","hv2"]]]}}}}));
        assert_eq!(touched.len(), 1);
        assert_eq!(touched[0].before.as_ref().map(|r| r.options.len()), Some(2));
        assert_eq!(touched[0].after.as_ref().map(|r| r.uuid.as_str()), Some("u1"));
        let p1 = cache.by_uuid("u1").expect("u1");
        assert_eq!(p1.options.get("x"), None);
        assert_eq!(p1.options.get("requested-chassis").map(String::as_str), Some("hv1,hv2"));
        assert_eq!(p1.options.get("y").map(String::as_str), Some("2"));
        assert_eq!(p1.external_ids.get("migration-destination").map(String::as_str), Some("hv2"));

        // rename keeps the name index right
        cache.apply(&json!({"Logical_Switch_Port":{"u2":{"modify":{"name":"p2b"}}}}));
        assert!(cache.by_name("p2").is_none());
        assert_eq!(cache.by_name("p2b").expect("renamed").uuid, "u2");

        let touched =
            cache.apply(&json!({"Logical_Switch_Port":{"u1":{"delete":null},"u3":{"insert":{"name":"p3"}}}}));
        assert!(touched
            .iter()
            .any(|t| t.after.is_none() && t.before.as_ref().is_some_and(|b| b.name == "p1")));
        assert!(cache.by_uuid("u1").is_none());
        assert!(cache.by_name("p1").is_none());
        assert_eq!(cache.by_name("p3").expect("p3").uuid, "u3");
        assert_eq!(cache.all().len(), 2);
    }

    #[test]
    fn reset_forgets_rows_that_are_gone() {
        let cache = LspCache::new();
        cache.reset(&json!({"Logical_Switch_Port":{"u1":{"initial":{"name":"p1"}}}}));
        cache.set_unsynced();
        assert!(!cache.is_synced());
        cache.reset(&json!({"Logical_Switch_Port":{"u2":{"initial":{"name":"p2"}}}}));
        assert!(cache.by_name("p1").is_none());
        assert!(cache.is_synced());
    }

    #[test]
    fn other_tables_and_garbage_are_ignored() {
        let cache = LspCache::new();
        let touched = cache.apply(&json!({"Logical_Switch":{"s":{"insert":{"name":"sw"}}},
            "Logical_Switch_Port":{"u":5,"v":{"modify":{"name":"nope"}}}}));
        assert!(touched.is_empty());
        assert!(cache.is_empty());
    }
}
