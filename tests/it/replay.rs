//! `ovn-nb-proxy replay`: every fixture in testdata/transcripts replays green against a fresh
//! database; a tampered database or transcript replays red with a diff; a recording made here
//! through the proxy replays green. `regenerate_fixtures` (ignored) rewrites the fixtures.

use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's interpreter, where python3-openvswitch and python3-ovsdbapp live; `PYTHON` overrides.
fn interpreter() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/transcripts").join(format!("{name}.jsonl"))
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn replay(file: &Path, upstream: &str) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_ovn-nb-proxy"))
        .arg("replay")
        .arg(file)
        .args(["--upstream", upstream])
        .output()
        .expect("run ovn-nb-proxy replay");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_green(file: &Path, upstream: &str) {
    let o = replay(file, upstream);
    assert!(
        o.code == Some(0) && o.stdout.contains("all equal"),
        "{} did not replay green:\n{o}",
        file.display()
    );
}

/// A fresh NB database (after `ovn-nbctl init`, done directly): what every fixture starts from.
fn fixture_green(name: &str) {
    let nb = nb();
    assert_green(&fixture(name), &nb.server.unix_remote());
}

#[test]
fn fixture_ovn_nbctl_replays_green() {
    fixture_green("ovn-nbctl");
}

#[test]
fn fixture_ovsdb_client_replays_green() {
    fixture_green("ovsdb-client");
}

#[test]
fn fixture_python_idl_replays_green() {
    fixture_green("python-idl");
}

#[test]
fn fixture_ovsdbapp_replays_green() {
    fixture_green("ovsdbapp");
}

#[test]
fn fixture_libovsdb_raw_replays_green_over_tcp() {
    let nb = nb();
    assert_green(&fixture("libovsdb-raw"), &nb.server.tcp_remote());
}

/// The proxy is transparent: a recorded session replays the same through it.
#[test]
fn a_fixture_replays_green_through_the_proxy() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    assert_green(&fixture("ovn-nbctl"), &p.unix_remote());
}

#[test]
fn an_extra_switch_in_the_database_turns_a_replay_red() {
    let nb = nb();
    ovn_nbctl(&nb.server.unix_remote(), &["ls-add", "tampered-extra"]).expect("ls-add");
    let o = replay(&fixture("ovn-nbctl"), &nb.server.unix_remote());
    assert_eq!(o.code, Some(1), "{o}");
    assert!(o.stdout.contains("mismatch") && o.stdout.contains("Logical_Switch"), "{o}");
    assert!(o.stdout.contains("tampered-extra"), "the diff names the extra switch:\n{o}");
}

#[test]
fn a_changed_row_in_the_database_turns_a_replay_red() {
    let nb = nb();
    ovn_nbctl(&nb.server.unix_remote(), &["set", "NB_Global", ".", "external_ids:tampered=yes"])
        .expect("set");
    let o = replay(&fixture("ovsdb-client"), &nb.server.unix_remote());
    assert_eq!(o.code, Some(1), "{o}");
    assert!(
        o.stdout.contains(".external_ids")
            && o.stdout.contains("select NB_Global)")
            && o.stdout.contains("tampered"),
        "{o}"
    );
}

#[test]
fn a_tampered_transcript_turns_a_replay_red() {
    let text = std::fs::read_to_string(fixture("libovsdb-raw")).expect("fixture");
    let mut edited = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("transcript line");
            let raw = v["raw"].as_str().unwrap_or_default();
            if !edited && v["dir"] == "s2c" && raw.contains(r#""count":1"#) {
                edited = true;
                v["raw"] = raw.replacen(r#""count":1"#, r#""count":7"#, 1).into();
            }
            v.to_string()
        })
        .collect();
    assert!(edited, "the fixture has a count to tamper with");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tampered.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write");
    let nb = nb();
    let o = replay(&file, &nb.server.unix_remote());
    assert_eq!(o.code, Some(1), "{o}");
    assert!(
        o.stdout.contains(".count (op 0: update Logical_Switch_Port)\n    expected: 7\n    got:      1"),
        "{o}"
    );
    assert!(o.stdout.contains("request: {"), "the request is shown:\n{o}");
}

#[test]
fn a_fresh_recording_replays_green() {
    let text = record(drive_ovn_nbctl);
    assert!(text.lines().filter(|l| l.contains(r#""event":"open""#)).count() >= 2, "{text}");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("fresh.jsonl");
    std::fs::write(&file, text).expect("write");
    let nb = nb();
    assert_green(&file, &nb.server.unix_remote());
}

/// A session whose transaction the proxy extended with an op of its own (`ovn-nbctl set` of a
/// migration tag: a `mutate` appended, its result trimmed from the reply) replays green: the
/// replay sends what went upstream and trims the live reply as the proxy did.
#[test]
fn a_transaction_the_proxy_extended_replays_green() {
    let text = record(|p| {
        drive_ovn_nbctl(p);
        ovn_nbctl(&p.unix_remote(), &["lsp-set-options", "p1", "requested-chassis=hv1"]).expect("pin");
        ovn_nbctl(
            &p.unix_remote(),
            &["set", "Logical_Switch_Port", "p1", "external_ids:migration-destination=hv2"],
        )
        .expect("tag");
    });
    assert!(text.contains(r#""rewrite":"#), "the recording holds a rewritten request:\n{text}");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("extended.jsonl");
    std::fs::write(&file, text).expect("write");
    let nb = nb();
    assert_green(&file, &nb.server.unix_remote());
}

#[test]
fn replay_trouble_exits_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let o = replay(&dir.path().join("missing.jsonl"), "unix:/nonexistent.sock");
    assert_eq!(o.code, Some(2), "{o}");
    assert!(o.stderr.contains("missing.jsonl"), "{o}");
    let o = replay(&fixture("ovn-nbctl"), &format!("unix:{}", dir.path().join("none.sock").display()));
    assert_eq!(o.code, Some(2), "{o}");
    assert!(o.stderr.contains("cannot connect"), "{o}");
}

// ---------------------------------------------------------------------------------------------
// Recording

/// Runs `drive` against the proxy (recording) in front of a fresh database and returns the
/// transcript: the sessions' files concatenated in session order.
fn record(drive: Drive) -> String {
    let nb = nb();
    let rec = tempfile::tempdir().expect("tmp");
    let p = Proxy::start(&nb.server.unix_remote(), &[&format!("--record={}", rec.path().display())]);
    drive(&p);
    // A session's transcript is complete once the session has closed.
    eventually("every recorded session closed", || {
        p.appctl(&["proxy/show"]).is_ok_and(|s| s.contains("sessions: 0 open"))
    });
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(rec.path())
        .expect("record dir")
        .map(|e| e.expect("dir entry").path())
        .map(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            let n = stem.rsplit('-').next().and_then(|n| n.parse().ok()).expect("session-<ms>-<n>.jsonl");
            (n, p)
        })
        .collect();
    files.sort();
    files.iter().map(|(_, p)| std::fs::read_to_string(p).expect("transcript")).collect()
}

/// Two runs: the second refers to the switch by the uuid it learnt from its monitor.
fn drive_ovn_nbctl(p: &Proxy) {
    let db = p.unix_remote();
    ovn_nbctl(
        &db,
        &[
            "ls-add",
            "sw0",
            "--",
            "lsp-add",
            "sw0",
            "p1",
            "--",
            "lsp-set-addresses",
            "p1",
            "00:00:00:00:00:01 10.0.0.1",
        ],
    )
    .expect("first ovn-nbctl");
    ovn_nbctl(
        &db,
        &[
            "lsp-add",
            "sw0",
            "p2",
            "--",
            "set",
            "Logical_Switch_Port",
            "p1",
            "options:foo=bar",
            "external_ids:owner=me",
            "--",
            "lsp-set-options",
            "p2",
            "k1=v1",
            "k2=v2",
        ],
    )
    .expect("second ovn-nbctl");
}

fn drive_ovsdb_client(p: &Proxy) {
    let db = p.unix_remote();
    ovsdb_client(&["list-dbs", &db]);
    let txn = r#"["OVN_Northbound",
        {"op":"insert","table":"Logical_Switch_Port","uuid-name":"p","row":{"name":"client-port","options":["map",[["a","1"]]]}},
        {"op":"insert","table":"Logical_Switch","uuid-name":"ls","row":{"name":"client-sw","ports":["named-uuid","p"]}},
        {"op":"comment","comment":"replay fixture"}]"#;
    ovsdb_client(&["transact", &db, txn]);
    ovsdb_client(&["dump", &db, "OVN_Northbound"]);
}

fn python(script: &str, remote: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/transcripts/clients").join(script);
    let schema = ovn_nb_lab::sandbox::nb_schema().expect("NB schema");
    let out = Command::new(interpreter())
        .arg(&path)
        .arg(remote)
        .arg(schema)
        .output()
        .unwrap_or_else(|e| panic!("python3 not runnable: {e}"));
    assert!(
        out.status.success(),
        "{script} failed ({}): {}\n(Debian's python3-openvswitch and python3-ovsdbapp are required)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn drive_python_idl(p: &Proxy) {
    python("idl.py", &p.unix_remote());
}

fn drive_ovsdbapp(p: &Proxy) {
    python("ovsdbapp_client.py", &p.unix_remote());
}

/// A client shaped like libovsdb (Kube-OVN): numeric ids, a newline after each message,
/// `list_dbs` with `[null]`, a `monitor_cond` with an object monitor id, whole-map updates by
/// name, two requests pipelined in one write, a write by the uuid it was told.
fn drive_libovsdb_raw(p: &Proxy) {
    const MON: &str = r#"{"databaseName":"OVN_Northbound","id":"6f8d4b4e-3a86-4c2b-9b0e-1c1a2f3d4e5f"}"#;
    /// Sends `msgs` in one write and waits for their replies.
    fn call(raw: &mut Raw, msgs: &[String]) -> Vec<serde_json::Value> {
        let text: String = msgs.iter().map(|m| format!("{m}\n")).collect();
        raw.send(text.as_bytes());
        let mut want: Vec<serde_json::Value> = msgs
            .iter()
            .map(|m| serde_json::from_str::<serde_json::Value>(m).expect("request JSON")["id"].clone())
            .collect();
        let mut replies = Vec::new();
        while !want.is_empty() {
            let m = raw.recv();
            if m.get("method").is_some() {
                continue; // an update notification
            }
            if let Some(i) = want.iter().position(|id| *id == m["id"]) {
                want.remove(i);
                replies.push(m);
            }
        }
        replies
    }
    let mut raw = Raw::connect(&p.unix);
    call(&mut raw, &[r#"{"method":"list_dbs","params":[null],"id":1}"#.into()]);
    call(
        &mut raw,
        &[format!(
            r#"{{"method":"monitor_cond","params":["OVN_Northbound",{MON},{{"Logical_Switch":[{{"columns":["name","ports","external_ids"]}}],"Logical_Switch_Port":[{{"columns":["name","options","external_ids"]}}]}}],"id":2}}"#
        )],
    );
    let r = call(&mut raw, &[r#"{"method":"transact","params":["OVN_Northbound",{"op":"insert","table":"Logical_Switch_Port","row":{"name":"kube-port","options":["map",[["requested-chassis","hv1"]]],"external_ids":["map",[["pod","ns/pod"]]]},"uuid-name":"u2596996162"},{"op":"insert","table":"Logical_Switch","row":{"name":"kube-sw","ports":["set",[["named-uuid","u2596996162"]]]},"uuid-name":"u2596996163"}],"id":3}"#.into()]);
    let ls = r[0]["result"][1]["uuid"][1].as_str().expect("switch uuid").to_string();
    call(&mut raw, &[r#"{"method":"transact","params":["OVN_Northbound",{"op":"update","table":"Logical_Switch_Port","row":{"options":["map",[["requested-chassis","hv2"],["mcast_flood","true"]]]},"where":[["name","==","kube-port"]]}],"id":4}"#.into()]);
    call(
        &mut raw,
        &[
            r#"{"method":"transact","params":["OVN_Northbound",{"op":"mutate","table":"Logical_Switch_Port","mutations":[["external_ids","insert",["map",[["vm","vm1"]]]]],"where":[["name","==","kube-port"]]}],"id":5}"#.into(),
            r#"{"method":"echo","params":["libovsdb echo"],"id":6}"#.into(),
        ],
    );
    call(
        &mut raw,
        &[format!(
            r#"{{"method":"transact","params":["OVN_Northbound",{{"op":"mutate","table":"Logical_Switch","mutations":[["external_ids","insert",["map",[["owner","kube-ovn"]]]]],"where":[["_uuid","==",["uuid","{ls}"]]]}},{{"op":"select","table":"Logical_Switch_Port","columns":["_uuid","name","options","external_ids"],"where":[["name","==","kube-port"]]}}],"id":7}}"#
        )],
    );
    call(&mut raw, &[format!(r#"{{"method":"monitor_cancel","params":[{MON}],"id":8}}"#)]);
}

/// How a fixture's client traffic is produced.
type Drive = fn(&Proxy);

const DRIVERS: &[(&str, Drive)] = &[
    ("ovn-nbctl", drive_ovn_nbctl),
    ("ovsdb-client", drive_ovsdb_client),
    ("python-idl", drive_python_idl),
    ("ovsdbapp", drive_ovsdbapp),
    ("libovsdb-raw", drive_libovsdb_raw),
];

/// `cargo test --test replay -- --ignored regenerate_fixtures` rewrites testdata/transcripts.
#[test]
#[ignore = "rewrites testdata/transcripts; run by hand"]
fn regenerate_fixtures() {
    for (name, drive) in DRIVERS {
        let text = record(*drive);
        std::fs::write(fixture(name), &text).expect("write fixture");
        let nb = nb();
        assert_green(&fixture(name), &nb.server.unix_remote());
        println!("{name}: {} bytes", text.len());
    }
}
