//! The planner's unit tests: transaction shapes, the raw planner, the appended text.

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::fix::fix_text;
use super::{plan_transact, plan_transact_raw, plan_transact_within};
use crate::policy::{Cause, LspState, Opts, PolicyConfig, SkipReason, StaticView};

const U1: &str = "1fdf8404-9d1c-4b8e-a0f2-6b3d7c1e5a01";
const U2: &str = "2a6e1f3b-4c5d-4e7f-8a9b-0c1d2e3f4a02";

fn lsp(uuid: &str, name: &str, options: &[(&str, &str)], ext: &[(&str, &str)]) -> LspState {
    LspState {
        uuid: uuid.into(),
        name: name.into(),
        options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        external_ids: ext.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// p1: untagged, pinned to hv1. p2: migrating hv3 → hv4 with the proxy's options.
fn view() -> StaticView {
    StaticView::new(vec![
        lsp(U1, "p1", &[("requested-chassis", "hv1")], &[("pod", "ns/vm1")]),
        lsp(
            U2,
            "p2",
            &[("requested-chassis", "hv3,hv4"), ("activation-strategy", "rarp")],
            &[("pod", "ns/vm2"), ("migration-destination", "hv4")],
        ),
    ])
}

fn tag(where_: Value) -> Value {
    json!({"op": "mutate", "table": "Logical_Switch_Port", "where": where_,
           "mutations": [["external_ids", "insert", ["map", [["migration-destination", "hv2"]]]]]})
}

struct Want {
    appended: usize,
    changes: &'static [(&'static str, Cause)],
    skips: &'static [(&'static str, SkipReason)],
    unhandled: bool,
}

const NOTHING: Want = Want { appended: 0, changes: &[], skips: &[], unhandled: false };
const UNHANDLED: Want = Want { appended: 0, changes: &[], skips: &[], unhandled: true };
/// The tagged port `p1` a transaction inserted cannot be addressed after it: left alone.
const SKIP_NEW_P1: Want =
    Want { appended: 0, changes: &[], skips: &[("p1", SkipReason::UnresolvedWhere)], unhandled: false };

#[test]
fn a_scan_of_a_big_table_is_planned_elsewhere() {
    let cfg = PolicyConfig::default();
    let all = json!(["OVN_Northbound", tag(json!([]))]);
    let by_name = json!(["OVN_Northbound", tag(json!([["name", "==", "p1"]]))]);
    // The view has 2 ports: a scan within the bound is planned here, past it not.
    assert!(plan_transact_within(&all, &view(), &cfg, 2).is_some());
    assert_eq!(plan_transact_within(&all, &view(), &cfg, 1), None);
    // A where that names its row needs no scan, whatever the bound.
    let plan = plan_transact_within(&by_name, &view(), &cfg, 0).expect("planned");
    assert_eq!(plan.changes.len(), 1);
}

#[test]
fn shapes() {
    let cases: Vec<(&str, Value, Want)> = vec![
        ("not an array", json!({"a": 1}), NOTHING),
        ("no ops", json!(["OVN_Northbound"]), NOTHING),
        ("other db", json!(["OVN_Southbound", tag(json!([]))]), NOTHING),
        (
            "tag by name",
            json!(["OVN_Northbound", tag(json!([["name", "==", "p1"]]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "name as a 1-element set",
            json!(["OVN_Northbound", tag(json!([["name", "==", ["set", ["p1"]]]]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "name includes",
            json!(["OVN_Northbound", tag(json!([["name", "includes", "p1"]]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "name != p2 matches p1 only",
            json!(["OVN_Northbound", tag(json!([["name", "!=", "p2"]]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "uuid excludes",
            json!(["OVN_Northbound", tag(json!([["_uuid", "excludes", ["uuid", U2]]]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "map ==",
            json!(["OVN_Northbound", tag(json!([["external_ids", "==", ["map", [["pod", "ns/vm1"]]]]]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "map != (p2 would need no change)",
            json!(["OVN_Northbound", tag(json!([["options", "!=", ["map", []]]]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "map excludes",
            json!([
                "OVN_Northbound",
                tag(json!([["external_ids", "excludes", ["map", [["pod", "ns/vm2"]]]]]))
            ]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "includes needs the value too",
            json!([
                "OVN_Northbound",
                tag(json!([["external_ids", "includes", ["map", [["pod", "ns/vm9"]]]]]))
            ]),
            NOTHING,
        ),
        ("false matches nothing", json!(["OVN_Northbound", tag(json!([false]))]), NOTHING),
        ("no such uuid", json!(["OVN_Northbound", tag(json!([["_uuid", "==", ["uuid", "0000"]]]))]), NOTHING),
        (
            "all rows; insert does not overwrite p2's destination",
            json!(["OVN_Northbound", tag(json!([]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "clear options of all rows",
            json!(["OVN_Northbound",
                {"op": "update", "table": "Logical_Switch_Port", "where": [true], "row": {"options": ["map", []]}}]),
            Want { appended: 1, changes: &[("p2", Cause::Reasserted)], ..NOTHING },
        ),
        (
            "delete by map with a wrong value is a no-op",
            json!(["OVN_Northbound",
                {"op": "mutate", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", U2]]],
                 "mutations": [["external_ids", "delete", ["map", [["migration-destination", "hv9"]]]]]}]),
            NOTHING,
        ),
        (
            "delete by key aborts",
            json!(["OVN_Northbound",
                {"op": "mutate", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["uuid", U2]]],
                 "mutations": [["external_ids", "delete", ["set", ["migration-destination"]]]]}]),
            Want { appended: 1, changes: &[("p2", Cause::Aborted)], ..NOTHING },
        ),
        (
            "rename then tag by the new name",
            json!(["OVN_Northbound",
                {"op": "update", "table": "Logical_Switch_Port", "where": [["name", "==", "p1"]], "row": {"name": "p1-new"}},
                tag(json!([["name", "==", "p1-new"]]))]),
            Want { appended: 1, changes: &[("p1-new", Cause::Started)], ..NOTHING },
        ),
        (
            "the old name no longer matches",
            json!(["OVN_Northbound",
                {"op": "update", "table": "Logical_Switch_Port", "where": [["name", "==", "p1"]], "row": {"name": "p1-new"}},
                tag(json!([["name", "==", "p1"]]))]),
            NOTHING,
        ),
        (
            "insert without uuid-name, tagged later by name",
            json!(["OVN_Northbound",
                {"op": "insert", "table": "Logical_Switch_Port", "row": {"name": "p9", "options": ["map", [["requested-chassis", "hv1"]]]}},
                tag(json!([["name", "==", "p9"]]))]),
            Want { appended: 1, changes: &[("p9", Cause::Started)], ..NOTHING },
        ),
        (
            "insert without uuid-name whose name ends up on every port: not addressed by name",
            json!(["OVN_Northbound",
                {"op": "insert", "table": "Logical_Switch_Port",
                 "row": {"external_ids": ["map", [["migration-destination", "hv2"]]], "options": ["map", [["requested-chassis", "hv1"]]]}},
                {"op": "update", "table": "Logical_Switch_Port", "where": [],
                 "row": {"name": "p9", "options": ["map", [["requested-chassis", "hv1"]]]}}]),
            // p2 (renamed p9 too) gets its options back by uuid; the new row is left alone.
            Want {
                appended: 1,
                changes: &[("p9", Cause::Reasserted)],
                skips: &[("p9", SkipReason::UnresolvedWhere)],
                ..NOTHING
            },
        ),
        (
            "insert without uuid-name under a name a touched port has: not addressed by name",
            json!(["OVN_Northbound",
                {"op": "insert", "table": "Logical_Switch_Port",
                 "row": {"name": "p1", "external_ids": ["map", [["migration-destination", "hv2"]]], "options": ["map", [["requested-chassis", "hv1"]]]}},
                {"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "p1"]],
                 "mutations": [["external_ids", "insert", ["map", [["x", "y"]]]]]}]),
            SKIP_NEW_P1,
        ),
        (
            "insert without uuid-name under a name an untouched port has: not addressed by name",
            json!(["OVN_Northbound",
                {"op": "insert", "table": "Logical_Switch_Port",
                 "row": {"name": "p1", "external_ids": ["map", [["migration-destination", "hv2"]]], "options": ["map", [["requested-chassis", "hv1"]]]}},
                {"op": "mutate", "table": "Logical_Switch_Port", "where": [["_uuid", "!=", ["uuid", U1]]],
                 "mutations": [["external_ids", "insert", ["map", [["x", "y"]]]]]}]),
            SKIP_NEW_P1,
        ),
        (
            "unresolved write of another column is ignored",
            json!(["OVN_Northbound",
                {"op": "update", "table": "Logical_Switch_Port", "where": [["up", "==", true]], "row": {"enabled": false}},
                tag(json!([["_uuid", "==", ["uuid", U1]]]))]),
            Want { appended: 1, changes: &[("p1", Cause::Started)], ..NOTHING },
        ),
        (
            "unresolved tagging op: every tagged candidate skipped",
            json!(["OVN_Northbound", tag(json!([["type", "==", ""]]))]),
            Want {
                skips: &[("p1", SkipReason::UnresolvedWhere), ("p2", SkipReason::UnresolvedWhere)],
                ..NOTHING
            },
        ),
        (
            "after an unresolved write, no in-place edit",
            json!(["OVN_Northbound",
                {"op": "mutate", "table": "Logical_Switch_Port", "where": [["type", "==", "router"]],
                 "mutations": [["external_ids", "insert", ["map", [["x", "y"]]]]]},
                {"op": "update", "table": "Logical_Switch_Port", "where": [["name", "==", "p3"]], "row": {"options": ["map", []]}},
                {"op": "insert", "table": "Logical_Switch_Port", "uuid-name": "n3",
                 "row": {"name": "p3", "external_ids": ["map", [["migration-destination", "hv2"]]], "options": ["map", [["requested-chassis", "hv1"]]]}},
                {"op": "update", "table": "Logical_Switch_Port", "where": [["_uuid", "==", ["named-uuid", "n3"]]], "row": {"options": ["map", [["a", "b"], ["requested-chassis", "hv1"]]]}}]),
            Want {
                appended: 1,
                changes: &[("p3", Cause::Started)],
                skips: &[("p2", SkipReason::UnresolvedWhere)],
                ..NOTHING
            },
        ),
        (
            "mutator += on options",
            json!(["OVN_Northbound",
                {"op": "mutate", "table": "Logical_Switch_Port", "where": [], "mutations": [["options", "+=", 1]]}]),
            UNHANDLED,
        ),
        (
            "non-string map value",
            json!(["OVN_Northbound",
                {"op": "update", "table": "Logical_Switch_Port", "where": [], "row": {"options": ["map", [["a", 1]]]}}]),
            UNHANDLED,
        ),
        (
            "missing where",
            json!(["OVN_Northbound",
                {"op": "update", "table": "Logical_Switch_Port", "row": {"external_ids": ["map", []]}}]),
            UNHANDLED,
        ),
        ("bad condition", json!(["OVN_Northbound", tag(json!([["name", "<", "p1"]]))]), UNHANDLED),
        ("bare uuid string", json!(["OVN_Northbound", tag(json!([["_uuid", "==", U1]]))]), UNHANDLED),
        (
            "unknown named-uuid",
            json!(["OVN_Northbound", tag(json!([["_uuid", "==", ["named-uuid", "nope"]]]))]),
            UNHANDLED,
        ),
        (
            "duplicate uuid-name",
            json!(["OVN_Northbound",
                {"op": "insert", "table": "Logical_Switch", "uuid-name": "a", "row": {}},
                {"op": "insert", "table": "Logical_Switch_Port", "uuid-name": "a", "row": {}}]),
            UNHANDLED,
        ),
        ("op not an object", json!(["OVN_Northbound", 1]), UNHANDLED),
        ("no table", json!(["OVN_Northbound", {"op": "update", "where": [], "row": {}}]), UNHANDLED),
        (
            "named-uuid of another table matches nothing",
            json!(["OVN_Northbound",
                {"op": "insert", "table": "Logical_Switch", "uuid-name": "ls", "row": {}},
                tag(json!([["_uuid", "==", ["named-uuid", "ls"]]]))]),
            NOTHING,
        ),
    ];
    let cfg = PolicyConfig::default();
    let view = view();
    for (name, params, want) in cases {
        let plan = plan_transact(&params, &view, &cfg);
        let n = params.as_array().map_or(0, |a| a.len().saturating_sub(1));
        let trim = plan.trim().map(|t| (t.client_ops, t.upstream_ops));
        let want_trim = (want.appended > 0).then_some((n, n + want.appended));
        assert_eq!(trim, want_trim, "{name}: trim {plan:?}");
        let changes: Vec<(&str, Cause)> = plan.changes.iter().map(|c| (c.port.as_str(), c.cause)).collect();
        assert_eq!(changes, want.changes, "{name}: changes");
        let skips: Vec<(&str, SkipReason)> = plan.skips.iter().map(|s| (s.port.as_str(), s.reason)).collect();
        assert_eq!(skips, want.skips, "{name}: skips");
        assert_eq!(plan.unhandled.is_some(), want.unhandled, "{name}: unhandled {:?}", plan.unhandled);
        assert_eq!(plan.rewrite().is_some(), !plan.changes.is_empty(), "{name}: rewritten");
        // Read from the ops' text, only what can matter parsed: the same plan.
        let text = serde_json::to_string_pretty(&params).expect("json");
        let all: Vec<&RawValue> = serde_json::from_str(&text).unwrap_or_default();
        if let (Some((db, ops)), false) = (all.split_first(), want.unhandled) {
            let raw = plan_transact_raw(db, ops, &view, &cfg, usize::MAX).expect("planned here");
            assert_eq!(raw, plan, "{name}: planned from the text");
            if let Some(r) = plan.rewrite() {
                let spliced: Value =
                    serde_json::from_slice(&r.splice(db.get(), ops).expect("splice")).expect("json");
                assert_eq!(Some(spliced), plan.params_after(&params), "{name}: spliced");
            }
        }
    }
}

#[test]
fn the_appended_text_is_the_op_mutate_op_builds() {
    let both = |rc: &str, s: Option<&str>| Opts {
        requested_chassis: Some(rc.into()),
        activation_strategy: s.map(Into::into),
    };
    for opts in [both("hv1,hv2", Some("rarp")), both("a\"b\\c", None), Opts::default()] {
        let where_ =
            json!([["_uuid", "==", ["uuid", U1]], ["external_ids", "==", ["map", [["k", "v\u{e9}\u{1}"]]]]]);
        let text = fix_text(|t| t.value(&where_), &opts);
        let op: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(op, super::super::decide::mutate_op(where_, &opts), "{text}");
    }
}

#[test]
fn a_bulk_insert_no_op_tags_is_read_no_further_than_its_head() {
    let cfg = PolicyConfig::default();
    let view = view();
    let insert = |i: usize| {
        json!({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": format!("n{i}"),
        // not a row the policy could read: it must not need to
        "row": {"name": format!("new{i}"), "options": ["map", [["requested-chassis", 7]]]}})
    };
    let mut ops: Vec<Value> = (0..1000).map(insert).collect();
    ops.push(json!({"op": "insert", "table": "Logical_Switch", "row": {"name": "sw9",
        "ports": ["set", (0..1000).map(|i| json!(["named-uuid", format!("n{i}")])).collect::<Vec<_>>()]}}));
    let text = serde_json::to_string(&ops).expect("json");
    let ops_raw: Vec<&RawValue> = serde_json::from_str(&text).expect("array");
    let db = RawValue::from_string("\"OVN_Northbound\"".into()).expect("db");
    let plan = plan_transact_raw(&db, &ops_raw, &view, &cfg, usize::MAX).expect("planned");
    assert_eq!((plan.unhandled, plan.rewrite().is_some(), plan.changes.len()), (None, false, 0));
    // The same inserts in a transaction that tags a port: every op is read.
    let mut tagging = ops.clone();
    tagging.push(tag(json!([["_uuid", "==", ["named-uuid", "n3"]]])));
    let text = serde_json::to_string(&tagging).expect("json");
    let ops_raw: Vec<&RawValue> = serde_json::from_str(&text).expect("array");
    let plan = plan_transact_raw(&db, &ops_raw, &view, &cfg, usize::MAX).expect("planned");
    assert_eq!(plan.unhandled.map(|u| u.op), Some(Some(0)), "the unreadable row is found now");
    // An edited op is spliced in; every other op keeps its bytes, whitespace and all.
    let spaced = format!(
        "[ {} , {{\"op\": \"comment\",  \"comment\": \"x\"}} ]",
        serde_json::to_string(&json!({
        "op": "insert", "table": "Logical_Switch_Port",
        "row": {"name": "p7", "external_ids": ["map", [["migration-destination", "hv2"]]],
                "options": ["map", [["requested-chassis", "hv1"]]]}}))
        .expect("json")
    );
    let ops_raw: Vec<&RawValue> = serde_json::from_str(&spaced).expect("array");
    let plan = plan_transact_raw(&db, &ops_raw, &view, &cfg, usize::MAX).expect("planned");
    let r = plan.rewrite().expect("rewritten in place");
    assert_eq!(r.edited.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![0]);
    let out = String::from_utf8(r.splice(db.get(), &ops_raw).expect("splice")).expect("utf8");
    assert!(out.ends_with(",{\"op\": \"comment\",  \"comment\": \"x\"}]"), "{out}");
    assert!(out.contains("hv1,hv2"), "{out}");
}

#[test]
fn appended_where_for_unnamed_insert_uses_the_name() {
    let params = json!(["OVN_Northbound",
        {"op": "insert", "table": "Logical_Switch_Port", "row": {"name": "p9", "options": ["map", [["requested-chassis", "hv1"]]]}},
        tag(json!([["name", "==", "p9"]]))]);
    let plan = plan_transact(&params, &view(), &PolicyConfig::default());
    let appended: Value = plan
        .rewrite()
        .and_then(|r| r.appended.first())
        .and_then(|a| serde_json::from_str(&a.op).ok())
        .expect("one appended op");
    assert_eq!(appended["where"], json!([["name", "==", "p9"]]));
}
