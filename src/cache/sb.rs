//! The Southbound rows the migration timelines need: `Port_Binding` (chassis columns, options,
//! up) and `Chassis` (name, hostname), with chassis references resolved to names.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::policy::value::{parse_str_map, parse_str_scalar, StrMap};
use crate::timeline::Binding;

pub const PORT_BINDING: &str = "Port_Binding";
pub const CHASSIS: &str = "Chassis";
pub const PB_COLUMNS: [&str; 7] = [
    "logical_port",
    "chassis",
    "additional_chassis",
    "requested_chassis",
    "requested_additional_chassis",
    "options",
    "up",
];
pub const CHASSIS_COLUMNS: [&str; 2] = ["name", "hostname"];

/// The `monitor_cond` requests for the SB database.
pub fn monitor_requests() -> Value {
    json!({PORT_BINDING: [{"columns": PB_COLUMNS}], CHASSIS: [{"columns": CHASSIS_COLUMNS}]})
}

#[derive(Debug, Clone, Default)]
struct Pb {
    logical_port: String,
    chassis: Vec<String>,
    additional_chassis: Vec<String>,
    requested_chassis: Vec<String>,
    requested_additional_chassis: Vec<String>,
    options: StrMap,
    up: Vec<bool>,
}

#[derive(Debug, Default)]
pub struct SbCache {
    bindings: HashMap<String, Pb>,
    /// logical_port → Port_Binding uuid
    ports: HashMap<String, String>,
    /// Chassis uuid → (name, hostname)
    chassis: HashMap<String, (String, String)>,
}

/// The atoms of a set value (a bare atom is a 1-element set).
fn atoms(v: &Value) -> Vec<Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(items)]) if tag == "set" => items.clone(),
        _ => vec![v.clone()],
    }
}

fn uuid_atoms(v: &Value) -> Vec<String> {
    atoms(v)
        .iter()
        .filter_map(|a| match a.as_array().map(Vec::as_slice) {
            Some([tag, Value::String(u)]) if tag == "uuid" => Some(u.clone()),
            _ => None,
        })
        .collect()
}

/// update2 diffs of sets (with more than one possible value) are symmetric differences.
fn apply_set<T: PartialEq + Clone>(target: &mut Vec<T>, items: Vec<T>, diff: bool) {
    if !diff {
        *target = items;
        return;
    }
    for i in items {
        if let Some(pos) = target.iter().position(|t| *t == i) {
            target.remove(pos);
        } else {
            target.push(i);
        }
    }
}

fn apply_pb(pb: &mut Pb, row: &Value, diff: bool) {
    if let Some(p) = row.get("logical_port").and_then(|v| parse_str_scalar(v).ok()) {
        pb.logical_port = p;
    }
    // Optional columns (at most one value: chassis, requested_chassis, up) carry their new
    // value in a `modify`, as seen from ovsdb-server 3.1; only sets of several values are diffed.
    for (col, target, diffed) in [
        ("chassis", &mut pb.chassis, false),
        ("additional_chassis", &mut pb.additional_chassis, diff),
        ("requested_chassis", &mut pb.requested_chassis, false),
        ("requested_additional_chassis", &mut pb.requested_additional_chassis, diff),
    ] {
        if let Some(v) = row.get(col) {
            apply_set(target, uuid_atoms(v), diffed);
        }
    }
    if let Some(v) = row.get("up") {
        apply_set(&mut pb.up, atoms(v).iter().filter_map(Value::as_bool).collect(), false);
    }
    if let Some(map) = row.get("options").and_then(|v| parse_str_map(v).ok()) {
        if diff {
            for (k, v) in map {
                if pb.options.get(&k) == Some(&v) {
                    pb.options.remove(&k);
                } else {
                    pb.options.insert(k, v);
                }
            }
        } else {
            pb.options = map;
        }
    }
}

impl SbCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.bindings.clear();
        self.ports.clear();
        self.chassis.clear();
    }

    /// Applies `<table-updates2>`; returns the logical ports whose binding was touched (and
    /// every bound port when a chassis changed, since names may resolve differently).
    pub fn apply(&mut self, updates: &Value) -> Vec<String> {
        let mut touched = Vec::new();
        if let Some(rows) = updates.get(CHASSIS).and_then(Value::as_object) {
            for (uuid, change) in rows {
                if let Some(row) =
                    change.get("initial").or_else(|| change.get("insert")).or_else(|| change.get("modify"))
                {
                    let entry = self.chassis.entry(uuid.clone()).or_default();
                    if let Some(n) = row.get("name").and_then(|v| parse_str_scalar(v).ok()) {
                        entry.0 = n;
                    }
                    if let Some(h) = row.get("hostname").and_then(|v| parse_str_scalar(v).ok()) {
                        entry.1 = h;
                    }
                } else if change.get("delete").is_some() {
                    self.chassis.remove(uuid);
                }
            }
            if !rows.is_empty() {
                touched.extend(self.ports.keys().cloned());
            }
        }
        if let Some(rows) = updates.get(PORT_BINDING).and_then(Value::as_object) {
            for (uuid, change) in rows {
                let (row, diff) =
                    match (change.get("initial").or_else(|| change.get("insert")), change.get("modify")) {
                        (Some(r), _) => (r, false),
                        (None, Some(r)) => (r, true),
                        (None, None) => {
                            if let Some(pb) = self.bindings.remove(uuid) {
                                self.ports.remove(&pb.logical_port);
                            }
                            continue;
                        }
                    };
                let pb = self.bindings.entry(uuid.clone()).or_default();
                if !diff {
                    *pb = Pb::default();
                }
                apply_pb(pb, row, diff);
                self.ports.insert(pb.logical_port.clone(), uuid.clone());
                touched.push(pb.logical_port.clone());
            }
        }
        touched.sort();
        touched.dedup();
        touched
    }

    fn name(&self, uuid: &str) -> String {
        self.chassis.get(uuid).map(|(n, _)| n.clone()).unwrap_or_else(|| uuid.to_string())
    }

    /// Names a chassis by its name; a requested name may also be its hostname (OVN accepts
    /// both in `requested-chassis`), so both are given back as the chassis `name`.
    fn names(&self, uuids: &[String]) -> Vec<String> {
        uuids.iter().map(|u| self.name(u)).collect()
    }

    /// Hostname aliases, so a timeline keyed on a hostname still matches.
    pub fn aliases(&self) -> BTreeMap<String, String> {
        self.chassis.values().filter(|(_, h)| !h.is_empty()).map(|(n, h)| (h.clone(), n.clone())).collect()
    }

    /// The options of a logical port's binding, all of them (the lab reads them whole).
    pub fn options(&self, port: &str) -> Option<&StrMap> {
        Some(&self.bindings.get(self.ports.get(port)?)?.options)
    }

    /// The binding of a logical port, chassis as names.
    pub fn binding(&self, port: &str) -> Option<Binding> {
        let pb = self.bindings.get(self.ports.get(port)?)?;
        Some(Binding {
            chassis: pb.chassis.first().map(|u| self.name(u)),
            additional_chassis: self.names(&pb.additional_chassis),
            requested_chassis: pb.requested_chassis.first().map(|u| self.name(u)),
            requested_additional_chassis: self.names(&pb.requested_additional_chassis),
            activated: pb
                .options
                .get("additional-chassis-activated")
                .map(|a| a.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            up: pb.up.first().copied(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_follow_initial_rows_and_diffs() {
        let mut sb = SbCache::new();
        sb.apply(&json!({
            "Chassis": {"c1": {"initial": {"name": "hv1", "hostname": "host1"}}, "c2": {"initial": {"name": "hv2"}}},
            "Port_Binding": {"p1": {"initial": {"logical_port": "vm1", "chassis": ["uuid", "c1"],
                "requested_chassis": ["uuid", "c1"], "options": ["map", [["requested-chassis", "hv1"]]], "up": true}}}
        }));
        let b = sb.binding("vm1").expect("bound");
        assert_eq!(b.chassis.as_deref(), Some("hv1"));
        assert_eq!(b.up, Some(true));
        assert!(b.additional_chassis.is_empty());
        // northd asks for hv2 as additional; ovn-controller binds it; a RARP activates it
        let touched = sb.apply(&json!({"Port_Binding": {"p1": {"modify": {
            "requested_additional_chassis": ["uuid", "c2"],
            "options": ["map", [["requested-chassis", "hv1,hv2"]]]}}}}));
        assert_eq!(touched, vec!["vm1".to_string()]);
        sb.apply(&json!({"Port_Binding": {"p1": {"modify": {"additional_chassis": ["set", [["uuid", "c2"]]],
            "options": ["map", [["additional-chassis-activated", "hv2"]]]}}}}));
        let b = sb.binding("vm1").expect("bound");
        assert_eq!(b.requested_additional_chassis, vec!["hv2".to_string()]);
        assert_eq!(b.additional_chassis, vec!["hv2".to_string()]);
        assert_eq!(b.activated, vec!["hv2".to_string()]);
        // main chassis moves hv1 → hv2 (an optional column: the new value), the additional
        // set loses hv2 (a symmetric difference), up becomes unset (the new, empty value)
        sb.apply(&json!({"Port_Binding": {"p1": {"modify": {
            "chassis": ["uuid", "c2"],
            "additional_chassis": ["uuid", "c2"], "up": ["set", []]}}}}));
        let b = sb.binding("vm1").expect("bound");
        assert_eq!(b.chassis.as_deref(), Some("hv2"));
        assert!(b.additional_chassis.is_empty());
        assert_eq!(b.up, None);
        assert_eq!(sb.aliases().get("host1").map(String::as_str), Some("hv1"));
        sb.apply(&json!({"Port_Binding": {"p1": {"delete": null}}}));
        assert!(sb.binding("vm1").is_none());
    }
}
