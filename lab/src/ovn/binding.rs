//! SB `Port_Binding` as the lab reads it: decoded by the proxy's own [`SbCache`], with the
//! tunnel key (which the proxy does not need) kept beside it.

use std::collections::{BTreeMap, HashMap};

use ovn_nb_proxy::cache::sb::{SbCache, CHASSIS, CHASSIS_COLUMNS, PB_COLUMNS, PORT_BINDING};
use ovn_nb_proxy::timeline::Binding;
use serde_json::{json, Map, Value};

const TUNNEL_KEY: &str = "tunnel_key";

/// The migration-relevant part of an SB `Port_Binding`, chassis by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortBinding {
    pub logical_port: String,
    pub tunnel_key: i64,
    /// Where the port is bound as the main copy (set by ovn-controller).
    pub chassis: Option<String>,
    /// Where it is bound as an additional copy (set by ovn-controller).
    pub additional_chassis: Vec<String>,
    /// First entry of `requested-chassis` (set by northd).
    pub requested_chassis: Option<String>,
    /// The other entries (set by northd).
    pub requested_additional_chassis: Vec<String>,
    pub options: BTreeMap<String, String>,
    pub up: Option<bool>,
}

impl PortBinding {
    /// The value of option `key`.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }
}

/// SB `Port_Binding` and `Chassis` rows, fed `<table-updates2>`.
#[derive(Default)]
pub(super) struct SbView {
    cache: SbCache,
    /// Port_Binding uuid → tunnel key.
    tunnel_keys: HashMap<String, i64>,
}

impl SbView {
    /// The `monitor_cond` requests: the proxy's columns and the tunnel key.
    pub(super) fn monitor_requests() -> Value {
        json!({PORT_BINDING: [{"columns": pb_columns()}], CHASSIS: [{"columns": CHASSIS_COLUMNS}]})
    }

    /// Applies one `<table-updates2>`; the bindings its `Port_Binding` rows changed (a chassis
    /// that comes or goes changes none: it only names them from then on).
    pub(super) fn apply(&mut self, updates: &Value) -> Vec<PortBinding> {
        if let Some(chassis) = updates.get(CHASSIS) {
            self.cache.apply(&json!({CHASSIS: chassis}));
        }
        let mut changed = Vec::new();
        for (uuid, change) in updates.get(PORT_BINDING).and_then(Value::as_object).into_iter().flatten() {
            let row = ["initial", "insert", "modify"].iter().find_map(|k| change.get(*k));
            match row {
                None => {
                    self.tunnel_keys.remove(uuid);
                }
                Some(row) => {
                    if let Some(key) = row.get(TUNNEL_KEY).and_then(Value::as_i64) {
                        self.tunnel_keys.insert(uuid.clone(), key);
                    }
                }
            }
            for port in self.cache.apply(&json!({PORT_BINDING: {uuid: change}})) {
                changed.extend(self.binding(&port, uuid));
            }
        }
        changed
    }

    fn binding(&self, port: &str, uuid: &str) -> Option<PortBinding> {
        let Binding {
            chassis, additional_chassis, requested_chassis, requested_additional_chassis, up, ..
        } = self.cache.binding(port)?;
        Some(PortBinding {
            logical_port: port.to_string(),
            tunnel_key: self.tunnel_keys.get(uuid).copied().unwrap_or_default(),
            chassis,
            additional_chassis,
            requested_chassis,
            requested_additional_chassis,
            options: self.cache.options(port)?.clone(),
            up,
        })
    }
}

fn pb_columns() -> Vec<&'static str> {
    PB_COLUMNS.iter().copied().chain([TUNNEL_KEY]).collect()
}

/// The `transact` ops that read the binding of `lsp` and the chassis names.
pub(super) fn query(lsp: &str) -> Vec<Value> {
    let mut pb = pb_columns();
    pb.push("_uuid");
    vec![
        json!({"op": "select", "table": PORT_BINDING, "where": [["logical_port", "==", lsp]], "columns": pb}),
        json!({"op": "select", "table": CHASSIS, "where": [], "columns": ["_uuid", "name", "hostname"]}),
    ]
}

/// The binding in the result of [`query`]'s ops, read as a monitor's initial rows.
pub(super) fn queried(result: &Value) -> Option<PortBinding> {
    let initial = |rows: &Value| -> Map<String, Value> {
        let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
        let uuid = |r: &Value| r["_uuid"][1].as_str().map(String::from);
        rows.iter().filter_map(|r| Some((uuid(r)?, json!({"initial": r})))).collect()
    };
    let updates = json!({CHASSIS: initial(&result[1]["rows"]), PORT_BINDING: initial(&result[0]["rows"])});
    SbView::default().apply(&updates).pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_resolve_chassis_and_keep_the_tunnel_key() {
        let mut sb = SbView::default();
        let changed = sb.apply(&json!({
            "Chassis": {"u1": {"initial": {"name": "hv1"}}, "u2": {"initial": {"name": "hv2"}}},
            "Port_Binding": {"p1": {"initial": {
                "logical_port": "vm", "tunnel_key": 2,
                "chassis": ["uuid", "u1"], "additional_chassis": ["set", [["uuid", "u2"]]],
                "requested_chassis": ["uuid", "u1"], "requested_additional_chassis": ["uuid", "u3"],
                "options": ["map", [["activation-strategy", "rarp"], ["requested-chassis", "hv1,hv2"]]]}}}}));
        let [pb] = changed.as_slice() else { panic!("one binding: {changed:?}") };
        assert_eq!(pb.chassis.as_deref(), Some("hv1"));
        assert_eq!(pb.additional_chassis, ["hv2"]);
        assert_eq!(pb.requested_chassis.as_deref(), Some("hv1"));
        assert_eq!(pb.requested_additional_chassis, ["u3"], "an unknown chassis stays a uuid");
        assert_eq!(pb.option("activation-strategy"), Some("rarp"));
        assert_eq!((pb.up, pb.tunnel_key), (None, 2));
        // A diff: the tunnel key kept, the additional set loses hv2, up set, an option removed.
        let changed = sb.apply(&json!({"Port_Binding": {"p1": {"modify": {
            "additional_chassis": ["uuid", "u2"], "up": true,
            "options": ["map", [["activation-strategy", "rarp"]]]}}}}));
        let [pb] = changed.as_slice() else { panic!("one binding: {changed:?}") };
        assert_eq!((pb.tunnel_key, pb.up), (2, Some(true)));
        assert!(pb.additional_chassis.is_empty());
        assert_eq!(pb.options, BTreeMap::from([("requested-chassis".into(), "hv1,hv2".into())]));
        // A chassis change alone changes no binding.
        assert!(sb.apply(&json!({"Chassis": {"u3": {"insert": {"name": "hv3"}}}})).is_empty());
        assert!(sb.apply(&json!({"Port_Binding": {"p1": {"delete": null}}})).is_empty());
    }

    #[test]
    fn a_query_result_reads_as_initial_rows() {
        let result = json!([
            {"rows": [{"_uuid": ["uuid", "p1"], "logical_port": "vm", "tunnel_key": 3,
                       "chassis": ["set", []], "additional_chassis": ["set", []],
                       "requested_chassis": ["uuid", "u1"], "requested_additional_chassis": ["set", []],
                       "options": ["map", []], "up": ["set", [false]]}]},
            {"rows": [{"_uuid": ["uuid", "u1"], "name": "hv1", "hostname": "host1"}]}]);
        let pb = queried(&result).expect("a binding");
        assert_eq!((pb.logical_port.as_str(), pb.tunnel_key), ("vm", 3));
        assert_eq!((pb.chassis, pb.requested_chassis.as_deref(), pb.up), (None, Some("hv1"), Some(false)));
        assert!(pb.additional_chassis.is_empty() && pb.options.is_empty());
        assert_eq!(queried(&json!([{"rows": []}, {"rows": []}])), None);
    }
}
