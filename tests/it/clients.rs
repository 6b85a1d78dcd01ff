//! Real OVN clients through the proxy: `ovsdb-client` and `ovn-nbctl`, over the unix and the
//! TCP listener, with output compared to a direct connection.

use crate::common::*;

fn through_both_listeners(p: &Proxy) -> [String; 2] {
    [p.unix_remote(), p.tcp_remote()]
}

#[test]
fn ovsdb_client_read_commands_match_a_direct_connection() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    ovn_nbctl(&nb.server.unix_remote(), &["ls-add", "sw0", "--", "lsp-add", "sw0", "p1"]).expect("seed");
    let direct = nb.server.unix_remote();
    for remote in through_both_listeners(&p) {
        assert_eq!(ovsdb_client(&["list-dbs", &remote]), ovsdb_client(&["list-dbs", &direct]));
        assert!(ovsdb_client(&["list-dbs", &remote]).contains("OVN_Northbound"));
        assert_eq!(
            ovsdb_client(&["get-schema", &remote, "OVN_Northbound"]),
            ovsdb_client(&["get-schema", &direct, "OVN_Northbound"])
        );
        let dump = ovsdb_client(&["dump", &remote, "OVN_Northbound", "Logical_Switch_Port", "name"]);
        assert!(dump.contains("p1"), "{dump}");
        assert_eq!(dump, ovsdb_client(&["dump", &direct, "OVN_Northbound", "Logical_Switch_Port", "name"]));
    }
}

#[test]
fn ovsdb_client_transact_commits_through_the_proxy() {
    let nb = nb();
    let p = Proxy::start(&nb.server.tcp_remote(), &[]);
    let txn = r#"["OVN_Northbound",
        {"op":"insert","table":"Logical_Switch","row":{"name":"sw-tx"},"uuid-name":"sw"},
        {"op":"comment","comment":"through the proxy"}]"#;
    let out = ovsdb_client(&["transact", &p.unix_remote(), txn]);
    assert!(out.contains("\"uuid\""), "{out}");
    let direct = ovn_nbctl(&nb.server.unix_remote(), &["ls-list"]).expect("ls-list");
    assert!(direct.contains("sw-tx"), "{direct}");
    // An error reply comes back as the server wrote it.
    let bad = r#"["OVN_Northbound",{"op":"insert","table":"No_Such_Table","row":{}}]"#;
    let out = ovsdb_client(&["transact", &p.tcp_remote(), bad]);
    assert!(out.contains("syntax error") || out.contains("unknown table"), "{out}");
}

#[test]
fn monitor_and_monitor_cond_see_changes_made_elsewhere() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let proxy = p.unix_remote();
    ovn_nbctl(&nb.server.unix_remote(), &["ls-add", "sw-seed"]).expect("seed");
    let mon = Watcher::start(
        "ovsdb-client",
        &["monitor", &proxy, "OVN_Northbound", "Logical_Switch", "name", "--format=csv"],
    );
    let cond = Watcher::start(
        "ovsdb-client",
        &[
            "monitor-cond",
            &proxy,
            "OVN_Northbound",
            r#"[["name","!=","sw-a"]]"#,
            "Logical_Switch",
            "name",
            "--format=csv",
        ],
    );
    // Both monitors are registered before the writes: their initial replies come first.
    mon.wait_for("sw-seed");
    cond.wait_for("sw-seed");
    ovn_nbctl(&nb.server.unix_remote(), &["ls-add", "sw-a"]).expect("ls-add");
    ovn_nbctl(&nb.server.unix_remote(), &["ls-add", "sw-b"]).expect("ls-add");
    mon.wait_for("sw-a");
    mon.wait_for("sw-b");
    cond.wait_for("sw-b");
    assert!(!cond.text().contains("sw-a"), "the condition filters sw-a out:\n{}", cond.text());
}

#[test]
fn a_dead_client_releases_its_lock_at_once() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let mut a = Watcher::start("ovsdb-client", &["lock", &p.unix_remote(), "L1"]);
    a.wait_for(r#"{"locked":true}"#);
    let b = Watcher::start("ovsdb-client", &["lock", &p.tcp_remote(), "L1"]);
    b.wait_for(r#"{"locked":false}"#);
    // A dies: the proxy must close A's upstream session, so the server hands the lock to B now,
    // not after an inactivity probe (unix sessions have none: it would never be released).
    a.kill();
    b.wait_for("locked\n[\"L1\"]");
}

#[test]
fn ovn_nbctl_writes_and_show_match_a_direct_connection() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let [unix, tcp] = through_both_listeners(&p);
    ovn_nbctl(&unix, &["ls-add", "sw0"]).expect("ls-add");
    ovn_nbctl(
        &tcp,
        &["lsp-add", "sw0", "vm1", "--", "lsp-set-addresses", "vm1", "00:00:00:00:00:01 10.0.0.11"],
    )
    .expect("lsp-add");
    ovn_nbctl(&unix, &["set", "Logical_Switch_Port", "vm1", "external_ids:owner=test", "options:foo=bar"])
        .expect("set");
    ovn_nbctl(&tcp, &["lsp-set-options", "vm1", "requested-chassis=hv1"]).expect("lsp-set-options");
    ovn_nbctl(&unix, &["--wait=none", "lr-add", "lr0"]).expect("lr-add");
    let direct = ovn_nbctl(&nb.server.unix_remote(), &["show"]).expect("show");
    assert!(direct.contains("vm1") && direct.contains("lr0"), "{direct}");
    assert_eq!(ovn_nbctl(&unix, &["show"]).expect("show"), direct);
    assert_eq!(ovn_nbctl(&tcp, &["show"]).expect("show"), direct);
    let opts = ovn_nbctl(&tcp, &["get", "Logical_Switch_Port", "vm1", "options"]).expect("get");
    assert_eq!(opts.trim(), "{requested-chassis=hv1}");
    let ids = ovn_nbctl(&unix, &["get", "Logical_Switch_Port", "vm1", "external_ids"]).expect("get");
    assert_eq!(ids.trim(), "{owner=test}");
}

#[test]
fn ovn_nbctl_errors_come_back_unchanged() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let err = ovn_nbctl(&p.unix_remote(), &["lsp-add", "no-such-switch", "p1"]).expect_err("must fail");
    let direct =
        ovn_nbctl(&nb.server.unix_remote(), &["lsp-add", "no-such-switch", "p1"]).expect_err("must fail");
    let strip =
        |e: anyhow::Error| e.to_string().replace(&p.unix_remote(), "").replace(&nb.server.unix_remote(), "");
    assert_eq!(strip(err), strip(direct));
}

#[test]
fn the_installed_nb_schema_has_what_the_policy_needs() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let schema: serde_json::Value =
        serde_json::from_str(&ovsdb_client(&["get-schema", &p.unix_remote(), "OVN_Northbound"]))
            .expect("schema JSON");
    let req: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/nb-requirements.json")).expect("json");
    for (table, cols) in req["tables"].as_object().expect("tables") {
        for (col, want) in cols.as_object().expect("columns") {
            let ty = &schema["tables"][table]["columns"][col]["type"];
            assert!(!ty.is_null(), "{table}.{col} missing from the installed schema");
            // A type is "string", {"key":"string",...} or {"key":{"type":"string",...},...}.
            let key = ty.as_str().or_else(|| ty["key"].as_str()).or_else(|| ty["key"]["type"].as_str());
            assert_eq!(key, want["key"].as_str(), "{table}.{col} key type: {ty}");
            if let Some(v) = want.get("value") {
                let value = ty["value"].as_str().or_else(|| ty["value"]["type"].as_str());
                assert_eq!(value, v.as_str(), "{table}.{col} value type: {ty}");
                assert_eq!(ty["max"], want["max"], "{table}.{col} is a map: {ty}");
            }
        }
    }
}
