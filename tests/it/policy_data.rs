//! Replays every transaction shape in `testdata/policy/*.json` through the policy.
//!
//! A case is one file:
//! ```json
//! { "about": "...", "config": {..optional PolicyConfig..},
//!   "cache": [LspState, ...], "transact": ["OVN_Northbound", op, ...],
//!   "expect": { "params": <rewritten params> | null, "upstream_ops": n,
//!               "changes": [{"port", "cause", "after", "before"?}], "skips": [{"port", "reason"}],
//!               "unhandled": false },
//!   "replies": [{"result": [...], "client_sees": [...]}] }
//! ```
//! Besides the expectations, every rewritten transaction must be a fixed point: planning it again
//! against the same cache changes nothing (the proxy never fights its own writes).

use std::path::{Path, PathBuf};

use ovn_nb_proxy::policy::{plan_transact, LspState, Plan, PolicyConfig, StaticView, Trim};
use serde_json::Value;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn field<'a>(v: &'a Value, key: &str, file: &str) -> &'a Value {
    v.get(key).unwrap_or_else(|| panic!("{file}: missing {key:?}"))
}

/// The plan's changes as JSON, keeping `before` only where the case states it.
fn changes_json(plan_changes: &[ovn_nb_proxy::policy::Change], expected: &Value) -> Value {
    let mut got = serde_json::to_value(plan_changes).expect("changes serialise");
    if let (Some(got), Some(want)) = (got.as_array_mut(), expected.as_array()) {
        for (g, w) in got.iter_mut().zip(want) {
            if w.get("before").is_none() {
                if let Some(obj) = g.as_object_mut() {
                    obj.remove("before");
                }
            }
        }
    }
    got
}

fn check(path: &Path) -> Vec<String> {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let case: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: bad JSON: {e}"));
    let cfg: PolicyConfig = match case.get("config") {
        Some(c) => serde_json::from_value(c.clone()).unwrap_or_else(|e| panic!("{file}: config: {e}")),
        None => PolicyConfig::default(),
    };
    let cache: Vec<LspState> = serde_json::from_value(field(&case, "cache", &file).clone())
        .unwrap_or_else(|e| panic!("{file}: cache: {e}"));
    let view = StaticView::new(cache);
    let transact = field(&case, "transact", &file);
    let expect = field(&case, "expect", &file);

    let plan = plan_transact(transact, &view, &cfg);
    let mut errors = Vec::new();
    let mut check_eq = |what: &str, got: Value, want: &Value| {
        if &got != want {
            errors.push(format!(
                "{file}: {what}\n   got: {}\n  want: {}",
                serde_json::to_string(&got).unwrap_or_default(),
                serde_json::to_string(want).unwrap_or_default()
            ));
        }
    };

    let want_params = field(expect, "params", &file);
    let rewritten = plan.params_after(transact);
    check_eq("params", rewritten.clone().unwrap_or(Value::Null), want_params);
    let client_ops = transact.as_array().map_or(0, |a| a.len().saturating_sub(1));
    let trim = trim_of(&plan, client_ops);
    check_eq("client_ops", client_ops.into(), &trim.client_ops.into());
    check_eq("upstream_ops", trim.upstream_ops.into(), field(expect, "upstream_ops", &file));
    let want_changes = field(expect, "changes", &file);
    check_eq("changes", changes_json(&plan.changes, want_changes), want_changes);
    let skips = serde_json::to_value(&plan.skips).expect("skips serialise");
    check_eq("skips", skips, field(expect, "skips", &file));
    let want_unhandled = expect.get("unhandled").cloned().unwrap_or(Value::Bool(false));
    check_eq("unhandled", plan.unhandled.is_some().into(), &want_unhandled);
    if let Some(params) = &rewritten {
        let n_ops = params.as_array().map_or(0, |a| a.len().saturating_sub(1));
        check_eq("upstream_ops matches the rewritten params", trim.upstream_ops.into(), &n_ops.into());
    }

    // Fixed point: the rewritten transaction needs no further rewrite.
    if let Some(params) = &rewritten {
        let again = plan_transact(params, &view, &cfg);
        check_eq(
            "fixed point: rewritten again",
            again.params_after(params).unwrap_or(Value::Null),
            &Value::Null,
        );
        check_eq(
            "fixed point: changes",
            serde_json::to_value(&again.changes).expect("ser"),
            &Value::Array(vec![]),
        );
    }

    for (i, reply) in case.get("replies").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let got = trim.apply(field(reply, "result", &file));
        check_eq(&format!("replies[{i}]"), got, field(reply, "client_sees", &file));
    }
    errors
}

/// The plan's reply trim, or the identity when it appends nothing (the fixtures give the op
/// counts either way).
fn trim_of(plan: &Plan, client_ops: usize) -> Trim {
    plan.trim().unwrap_or(Trim { client_ops, upstream_ops: client_ops })
}

#[test]
fn policy_fixtures() {
    let files = cases();
    assert!(files.len() >= 25, "expected the fixture set in testdata/policy, found {}", files.len());
    let errors: Vec<String> = files.iter().flat_map(|f| check(f)).collect();
    assert!(errors.is_empty(), "{} failure(s):\n{}", errors.len(), errors.join("\n"));
    println!("{} policy fixtures replayed", files.len());
}

/// Rewrites each fixture's `expect.params` and `expect.upstream_ops` from what the policy plans
/// now (run by hand after a deliberate change of the rewrite's shape; review the diff).
#[test]
#[ignore = "rewrites testdata/policy; run by hand"]
fn regenerate_expected_params() {
    for path in cases() {
        let text = std::fs::read_to_string(&path).expect("read");
        let mut case: Value = serde_json::from_str(&text).expect("json");
        let cfg: PolicyConfig = case
            .get("config")
            .map(|c| serde_json::from_value(c.clone()).expect("config"))
            .unwrap_or_default();
        let cache: Vec<LspState> = serde_json::from_value(case["cache"].clone()).expect("cache");
        let plan = plan_transact(&case["transact"], &StaticView::new(cache), &cfg);
        let params = plan.params_after(&case["transact"]).unwrap_or(Value::Null);
        let client_ops = case["transact"].as_array().map_or(0, |a| a.len().saturating_sub(1));
        let upstream_ops = trim_of(&plan, client_ops).upstream_ops;
        if case["expect"]["params"] == params && case["expect"]["upstream_ops"] == upstream_ops {
            continue;
        }
        case["expect"]["params"] = params;
        case["expect"]["upstream_ops"] = upstream_ops.into();
        let out = serde_json::to_string_pretty(&case).expect("ser") + "\n";
        std::fs::write(&path, out).expect("write");
        println!("rewrote {}", path.display());
    }
}
