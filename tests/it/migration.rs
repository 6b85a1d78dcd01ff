//! The migration policy through the proxy, with real clients writing and the result read back
//! over a direct connection. Each rewrite must happen in the client's own transaction: the
//! tests check the proxy's audit log says "rewrite" (not "reconcile") for it.

use crate::common::*;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A port `vm1` on `sw0`, running on hv1, and a proxy in front of the database.
fn setup(extra: &[&str]) -> (Nb, Proxy) {
    let nb = nb();
    ovn_nbctl(
        &nb.server.unix_remote(),
        &[
            "ls-add",
            "sw0",
            "--",
            "lsp-add",
            "sw0",
            "vm1",
            "--",
            "lsp-set-options",
            "vm1",
            "requested-chassis=hv1",
            "x=1",
        ],
    )
    .expect("seed");
    let mut p = Proxy::start(&nb.server.unix_remote(), extra);
    p.wait_log("port cache synchronised", Duration::from_secs(10));
    (nb, p)
}

/// A port's options, read directly from the database.
fn options(nb: &Nb, port: &str) -> BTreeMap<String, String> {
    map_column(nb, port, "options")
}

fn map_column(nb: &Nb, port: &str, column: &str) -> BTreeMap<String, String> {
    let out = ovn_nbctl(
        &nb.server.unix_remote(),
        &[
            "--format=json",
            &format!("--columns={column}"),
            "find",
            "Logical_Switch_Port",
            &format!("name={port}"),
        ],
    )
    .expect("find");
    let v: Value = serde_json::from_str(&out).expect("json");
    let pairs = v["data"][0][0][1].as_array().cloned().unwrap_or_default();
    pairs
        .iter()
        .map(|p| {
            (p[0].as_str().unwrap_or_default().to_string(), p[1].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn expect_opts(nb: &Nb, port: &str, rc: Option<&str>, strategy: Option<&str>) -> BTreeMap<String, String> {
    let o = options(nb, port);
    assert_eq!(o.get("requested-chassis").map(String::as_str), rc, "requested-chassis of {port}: {o:?}");
    assert_eq!(
        o.get("activation-strategy").map(String::as_str),
        strategy,
        "activation-strategy of {port}: {o:?}"
    );
    o
}

/// The audit lines for `port` so far, as (kind, line).
fn audits(p: &Proxy, port: &str) -> Vec<String> {
    p.log_text()
        .lines()
        .filter(|l| l.contains("ovn_nb_proxy::audit") && l.contains(&format!("port={port} ")))
        .map(str::to_string)
        .collect()
}

/// Asserts the last audit line for `port` is an in-transaction rewrite with `cause`, and that
/// the reconciler never had to step in.
fn assert_rewritten(p: &mut Proxy, port: &str, cause: &str) {
    p.wait_log(&format!("cause={cause}"), Duration::from_secs(5));
    let lines = audits(p, port);
    let last = lines.last().unwrap_or_else(|| panic!("no audit line for {port}:\n{}", p.log_text()));
    assert!(last.contains(": rewrite ") && last.contains(&format!("cause={cause}")), "{last}");
    assert!(
        !lines.iter().any(|l| l.contains(": reconcile ")),
        "the reconciler stepped in:\n{}",
        lines.join("\n")
    );
}

fn py(p: &Proxy, scenario: &str, port: &str) {
    let script = format!("{}/tests/py/migration_clients.py", env!("CARGO_MANIFEST_DIR"));
    let schema = ovn_nb_lab::sandbox::nb_schema().expect("schema");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into());
    let out = Command::new(python)
        .args([script.as_str(), &p.tcp_remote(), &schema.to_string_lossy(), scenario, port])
        .output()
        .expect("python3 (Debian packages python3-openvswitch, python3-ovsdbapp)");
    assert!(out.status.success(), "{scenario}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn ovn_nbctl_set_tags_start_a_migration_and_other_options_stay() {
    let (nb, mut p) = setup(&[]);
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("set");
    let o = expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_eq!(o.get("x").map(String::as_str), Some("1"), "the writer's other options stay");
    assert_rewritten(&mut p, "vm1", "started");
    // The tags themselves are the writer's, untouched.
    let ids = map_column(&nb, "vm1", "external_ids");
    assert_eq!(ids, BTreeMap::from([("migration-destination".to_string(), "hv2".to_string())]));
}

#[test]
fn unaware_writers_get_the_options_reasserted() {
    let (nb, mut p) = setup(&[]);
    let proxy = p.unix_remote();
    ovn_nbctl(&proxy, &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"])
        .expect("tag");
    // lsp-set-options replaces the whole map (update)
    ovn_nbctl(&proxy, &["lsp-set-options", "vm1", "foo=bar"]).expect("lsp-set-options");
    let o = expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_eq!(o.get("foo").map(String::as_str), Some("bar"));
    assert_eq!(o.get("x"), None, "lsp-set-options dropped x: the writer's choice");
    assert_rewritten(&mut p, "vm1", "reasserted");
    // set of one key, existing in the client's cache: mutate delete+insert
    ovn_nbctl(&proxy, &["set", "Logical_Switch_Port", "vm1", "options:requested-chassis=hv7"]).expect("set");
    expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    // remove: wait + whole-map update
    ovn_nbctl(&proxy, &["remove", "Logical_Switch_Port", "vm1", "options", "activation-strategy"])
        .expect("remove");
    expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    // clear: empty map
    ovn_nbctl(&proxy, &["clear", "Logical_Switch_Port", "vm1", "options"]).expect("clear");
    let o = expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_eq!(o.len(), 2, "{o:?}");
    assert_rewritten(&mut p, "vm1", "reasserted");
}

#[test]
fn lsp_add_and_tags_in_one_call_use_the_named_uuid() {
    let (nb, mut p) = setup(&[]);
    ovn_nbctl(
        &p.unix_remote(),
        &[
            "lsp-add",
            "sw0",
            "vm2",
            "--",
            "set",
            "Logical_Switch_Port",
            "vm2",
            "external_ids:migration-source=hv3",
            "external_ids:migration-destination=hv4",
        ],
    )
    .expect("lsp-add -- set");
    expect_opts(&nb, "vm2", Some("hv3,hv4"), Some("rarp"));
    assert_rewritten(&mut p, "vm2", "started");
}

#[test]
fn success_failure_and_abort_end_the_migration() {
    let (nb, mut p) = setup(&[]);
    let proxy = p.unix_remote();
    ovn_nbctl(&nb.server.unix_remote(), &["lsp-add", "sw0", "vm2", "--", "lsp-add", "sw0", "vm3"])
        .expect("ports");
    for port in ["vm2", "vm3"] {
        ovn_nbctl(&nb.server.unix_remote(), &["lsp-set-options", port, "requested-chassis=hv1"]).expect("rc");
    }
    for port in ["vm1", "vm2", "vm3"] {
        ovn_nbctl(&proxy, &["set", "Logical_Switch_Port", port, "external_ids:migration-destination=hv2"])
            .expect("tag");
        expect_opts(&nb, port, Some("hv1,hv2"), Some("rarp"));
    }
    // KubeVirt's phase copied in as it is, case-insensitive
    ovn_nbctl(&proxy, &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-phase=Succeeded"])
        .expect("ok");
    expect_opts(&nb, "vm1", Some("hv2"), None);
    assert_rewritten(&mut p, "vm1", "succeeded");
    ovn_nbctl(&proxy, &["set", "Logical_Switch_Port", "vm2", "external_ids:migration-phase=Failed"])
        .expect("failed");
    expect_opts(&nb, "vm2", Some("hv1"), None);
    assert_rewritten(&mut p, "vm2", "failed");
    ovn_nbctl(&proxy, &["remove", "Logical_Switch_Port", "vm3", "external_ids", "migration-destination"])
        .expect("abort");
    expect_opts(&nb, "vm3", Some("hv1"), None);
    assert_rewritten(&mut p, "vm3", "aborted");
    // After success, an unaware write is answered with the final state.
    ovn_nbctl(&proxy, &["lsp-set-options", "vm1", "requested-chassis=hv1,hv2", "activation-strategy=rarp"])
        .expect("w");
    expect_opts(&nb, "vm1", Some("hv2"), None);
}

#[test]
fn strategy_override_and_skips() {
    let (nb, mut p) = setup(&[]);
    let proxy = p.unix_remote();
    // vhost-user: no RARP from QEMU, so no strategy
    ovn_nbctl(
        &proxy,
        &[
            "set",
            "Logical_Switch_Port",
            "vm1",
            "external_ids:migration-activation-strategy=none",
            "external_ids:migration-destination=hv2",
        ],
    )
    .expect("tag");
    expect_opts(&nb, "vm1", Some("hv1,hv2"), None);
    // same chassis: left alone, with a warning
    ovn_nbctl(
        &nb.server.unix_remote(),
        &["lsp-add", "sw0", "vm5", "--", "lsp-set-options", "vm5", "requested-chassis=hv1"],
    )
    .expect("vm5");
    ovn_nbctl(&proxy, &["set", "Logical_Switch_Port", "vm5", "external_ids:migration-destination=hv1"])
        .expect("tag");
    expect_opts(&nb, "vm5", Some("hv1"), None);
    p.wait_log("reason=same_chassis", Duration::from_secs(5));
    // a comma in a name: left alone
    ovn_nbctl(
        &nb.server.unix_remote(),
        &["lsp-add", "sw0", "vm6", "--", "lsp-set-options", "vm6", "requested-chassis=hv1"],
    )
    .expect("vm6");
    ovn_nbctl(
        &proxy,
        &["set", "Logical_Switch_Port", "vm6", "external_ids:migration-destination=\"hv2,hv3\""],
    )
    .expect("t");
    expect_opts(&nb, "vm6", Some("hv1"), None);
    p.wait_log("reason=comma_in_name", Duration::from_secs(5));
}

#[test]
fn python_idl_setkey_verify_and_delkey() {
    let (nb, mut p) = setup(&[]);
    py(&p, "idl-setkey", "vm1");
    expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_rewritten(&mut p, "vm1", "started");
    py(&p, "idl-verify-map", "vm1");
    let o = expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_eq!(o.get("foo").map(String::as_str), Some("bar"));
    assert_rewritten(&mut p, "vm1", "reasserted");
    py(&p, "idl-delkey", "vm1");
    expect_opts(&nb, "vm1", Some("hv1"), None);
    assert_rewritten(&mut p, "vm1", "aborted");
}

#[test]
fn ovsdbapp_db_set_and_lsp_set_options() {
    let (nb, mut p) = setup(&[]);
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("tag");
    py(&p, "ovsdbapp-options", "vm1");
    let o = expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_eq!(o.get("foo").map(String::as_str), Some("bar"));
    py(&p, "ovsdbapp-db-set", "vm1");
    expect_opts(&nb, "vm1", Some("hv2"), None);
    assert_rewritten(&mut p, "vm1", "succeeded");
}

/// Sends one transact as libovsdb shapes it (numeric id, newline after the message) and
/// returns the reply.
fn libovsdb_transact(p: &Proxy, id: u64, ops: Vec<Value>) -> Value {
    let mut params = vec![json!("OVN_Northbound")];
    params.extend(ops);
    let mut c = Raw::connect(&p.unix);
    let mut msg = serde_json::to_vec(&json!({"method":"transact","params":params,"id":id})).expect("json");
    msg.push(b'\n');
    c.send(&msg);
    c.recv()
}

fn uuid_of(nb: &Nb, port: &str) -> String {
    ovn_nbctl(
        &nb.server.unix_remote(),
        &["--bare", "--columns=_uuid", "find", "Logical_Switch_Port", &format!("name={port}")],
    )
    .expect("uuid")
    .trim()
    .to_string()
}

#[test]
fn libovsdb_whole_map_updates_by_name_and_uuid_get_one_result_per_op() {
    let (nb, mut p) = setup(&[]);
    // Kube-OVN writes external_ids whole, by name (model not in its cache yet)
    let reply = libovsdb_transact(
        &p,
        1,
        vec![json!({"op":"update","table":"Logical_Switch_Port",
            "row":{"external_ids":["map",[["vendor","kube-ovn"],["migration-destination","hv2"]]]},
            "where":[["name","==","vm1"]]})],
    );
    assert_eq!(reply["id"], json!(1));
    assert_eq!(reply["result"], json!([{"count":1}]), "exactly the client's results: {reply}");
    expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_rewritten(&mut p, "vm1", "started");
    // ... and options whole, by _uuid, knowing nothing of migration
    let uuid = uuid_of(&nb, "vm1");
    let reply = libovsdb_transact(
        &p,
        2,
        vec![
            json!({"op":"update","table":"Logical_Switch_Port","row":{"options":["map",[["arp_proxy","10.0.0.1"]]]},
            "where":[["_uuid","==",["uuid",uuid]]]}),
        ],
    );
    assert_eq!(reply["result"], json!([{"count":1}]), "{reply}");
    let o = expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_eq!(o.get("arp_proxy").map(String::as_str), Some("10.0.0.1"));
}

#[test]
fn result_arrays_keep_the_clients_shape_on_errors() {
    let (nb, p) = setup(&[]);
    // The tagging op succeeds but the client's second op fails: the client sees its own two
    // slots, the error in the second, and nothing of the proxy's op; nothing is committed.
    let reply = libovsdb_transact(
        &p,
        5,
        vec![
            json!({"op":"update","table":"Logical_Switch_Port",
                "row":{"external_ids":["map",[["migration-destination","hv2"]]]},"where":[["name","==","vm1"]]}),
            json!({"op":"update","table":"Logical_Switch_Port","row":{"nosuchcol":"x"},"where":[["name","==","vm1"]]}),
        ],
    );
    let result = reply["result"].as_array().expect("array");
    assert_eq!(result.len(), 2, "{reply}");
    assert_eq!(result[1]["error"], json!("unknown column"), "{reply}");
    expect_opts(&nb, "vm1", Some("hv1"), None);
    // An aborted transaction: the abort error in the client's slot, nothing committed.
    let reply = libovsdb_transact(
        &p,
        6,
        vec![
            json!({"op":"update","table":"Logical_Switch_Port",
                "row":{"external_ids":["map",[["migration-destination","hv2"]]]},"where":[["name","==","vm1"]]}),
            json!({"op":"abort"}),
        ],
    );
    let result = reply["result"].as_array().expect("array");
    assert_eq!(result.len(), 2, "{reply}");
    assert_eq!(result[1]["error"], json!("aborted"));
    expect_opts(&nb, "vm1", Some("hv1"), None);
    assert!(map_column(&nb, "vm1", "external_ids").is_empty());
}

#[test]
fn tags_written_around_the_proxy_are_reconciled() {
    let (nb, mut p) = setup(&[]);
    let t0 = Instant::now();
    ovn_nbctl(
        &nb.server.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("direct write");
    eventually("the reconciler sets the options", || {
        options(&nb, "vm1").get("requested-chassis").map(String::as_str) == Some("hv1,hv2")
    });
    eprintln!("reconciled {:?} after the direct write returned", t0.elapsed());
    expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    p.wait_log(": reconcile ", Duration::from_secs(5));
    // A correct port is left alone: no reconcile loop.
    ovn_nbctl(&nb.server.unix_remote(), &["set", "Logical_Switch_Port", "vm1", "external_ids:other=1"])
        .expect("w");
    ovn_nbctl(&p.unix_remote(), &["ls-list"]).expect("round trip");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(p.log_text().matches(": reconcile ").count(), 1, "{}", p.log_text());
}

#[test]
fn dry_run_logs_and_changes_nothing() {
    let (nb, mut p) = setup(&["--dry-run"]);
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("set");
    p.wait_log("dry_run=true", Duration::from_secs(5));
    expect_opts(&nb, "vm1", Some("hv1"), None);
}

#[test]
fn tag_names_come_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, "[migration]\ndestination-key = \"kubevirt.io/target-node\"\n").expect("write");
    let (nb, mut p) = setup(&[&format!("--config={}", path.display())]);
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("set");
    expect_opts(&nb, "vm1", Some("hv1"), None);
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:\"kubevirt.io/target-node\"=hv2"],
    )
    .expect("set");
    expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    assert_rewritten(&mut p, "vm1", "started");
    // A bad file is refused at start with the reason.
    std::fs::write(&path, "[migration]\nno-such-key = 1\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
        .args(["--upstream=unix:/x", "--listen=ptcp:0", &format!("--config={}", path.display())])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ovs_appctl_lists_and_shows_migrations() {
    let (nb, mut p) = setup(&[]);
    assert!(p.appctl(&["version"]).expect("version").starts_with("ovn-nb-proxy "));
    let cmds = p.appctl(&["list-commands"]).expect("list-commands");
    for c in ["exit", "migrations/list", "migrations/show", "proxy/show"] {
        assert!(cmds.contains(c), "{cmds}");
    }
    assert_eq!(p.appctl(&["migrations/list"]).expect("list"), "no migrations\n");
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-destination=hv2"],
    )
    .expect("tag");
    expect_opts(&nb, "vm1", Some("hv1,hv2"), Some("rarp"));
    eventually("the timeline has the port", || {
        p.appctl(&["migrations/list"]).is_ok_and(|l| l.contains("vm1"))
    });
    let list = p.appctl(&["migrations/list"]).expect("list");
    let line = list.lines().find(|l| l.starts_with("vm1")).expect("a line for vm1");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[..5], ["vm1", "hv1", "hv2", "in-progress", "-"], "{list}");
    let show = p.appctl(&["migrations/show", "vm1"]).expect("show");
    assert!(show.contains("port vm1: hv1 → hv2 (in-progress)") && show.contains("tagged"), "{show}");
    let err = p.appctl(&["migrations/show", "nope"]).expect_err("unknown port");
    assert!(err.contains("no migration of port nope"), "{err}");
    let err = p.appctl(&["bogus"]).expect_err("unknown command");
    assert!(err.contains("\"bogus\" is not a valid command"), "{err}");
    let show = p.appctl(&["proxy/show"]).expect("proxy/show");
    assert!(
        show.contains("port cache: 1 ports, synchronised") && show.contains("migrations in progress: 1"),
        "{show}"
    );
    ovn_nbctl(
        &p.unix_remote(),
        &["set", "Logical_Switch_Port", "vm1", "external_ids:migration-phase=succeeded"],
    )
    .expect("done");
    eventually("the phase shows", || p.appctl(&["migrations/list"]).is_ok_and(|l| l.contains("succeeded")));
    p.appctl(&["exit"]).expect("exit");
    eventually("the proxy exits on ovs-appctl exit", || !p.is_running());
    assert!(!p.unix.exists(), "the listener's socket file is removed on exit");
}
