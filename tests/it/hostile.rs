//! Hostile input: each case is thrown at the proxy while another client holds a monitor open.
//! After each: the proxy runs, the monitor is still served, the database content is what the
//! well-behaved clients made it, and the proxy's memory stays bounded.

use crate::common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The proxy's resident memory in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Sends `bytes` (ignoring a write error: the proxy may close first), then reads whatever comes
/// back until the proxy or the server closes, with a time bound.
fn throw(p: &Proxy, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(&p.unix).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

struct World {
    nb: Nb,
    p: Proxy,
    watcher: Watcher,
    round: usize,
}

impl World {
    fn new(extra: &[&str]) -> World {
        let nb = nb();
        let p = Proxy::start(&nb.server.unix_remote(), extra);
        ovn_nbctl(&nb.server.unix_remote(), &["ls-add", "sw-before"]).expect("seed");
        let watcher = Watcher::start(
            "ovsdb-client",
            &["monitor", &p.unix_remote(), "OVN_Northbound", "Logical_Switch", "name", "--format=csv"],
        );
        watcher.wait_for("sw-before");
        World { nb, p, watcher, round: 0 }
    }

    /// The checks after each hostile case.
    fn still_fine(&mut self, case: &str) {
        self.round += 1;
        assert!(self.p.is_running(), "{case}: the proxy died");
        let name = format!("sw-after-{}", self.round);
        ovn_nbctl(&self.p.unix_remote(), &["ls-add", &name]).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        self.watcher.wait_for(&name);
        let names =
            ovn_nbctl(&self.nb.server.unix_remote(), &["--bare", "--columns=name", "list", "Logical_Switch"])
                .expect("list");
        let mut names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
        names.sort();
        let mut want: Vec<String> = (1..=self.round).map(|i| format!("sw-after-{i}")).collect();
        want.push("sw-before".into());
        want.sort();
        assert_eq!(names, want, "{case}: the database holds only what the good clients wrote");
        let rss = rss_kb(self.p.pid());
        assert!(rss < 150_000, "{case}: proxy RSS {rss} kB");
    }
}

#[test]
fn malformed_messages_hurt_nobody_else() {
    let mut w = World::new(&["--max-frame-size=8388608"]);
    let deep = format!(
        "{{\"method\":\"echo\",\"params\":[{}{}],\"id\":1}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let nested_txn = format!(
        "{{\"method\":\"transact\",\"params\":[\"OVN_Northbound\",{{\"op\":\"insert\",\"table\":\"Logical_Switch_Port\",\"row\":{{\"name\":\"x\",\"external_ids\":{}1{}}}}}],\"id\":2}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let long_id = format!("{{\"method\":\"echo\",\"params\":[],\"id\":{}}}", "9".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"hello world".to_vec()),
        ("truncated", br#"{"method":"list_dbs","params":["#.to_vec()),
        ("top-level array", b"[1,2,3]".to_vec()),
        ("200k-deep nesting", deep.into_bytes()),
        ("deep nesting inside a transact", nested_txn.into_bytes()),
        ("invalid UTF-8", b"{\"method\":\"echo\",\"params\":[\"\xff\xfe\"],\"id\":3}".to_vec()),
        ("lone surrogate", br#"{"method":"echo","params":["\ud800"],"id":4}"#.to_vec()),
        ("extra envelope field", br#"{"jsonrpc":"2.0","method":"list_dbs","params":[],"id":5}"#.to_vec()),
        ("unsolicited reply", br#"{"id":77,"result":[],"error":null}"#.to_vec()),
        (
            "malformed LSP mutation",
            br#"{"method":"transact","params":["OVN_Northbound",{"op":"mutate","table":"Logical_Switch_Port","where":[["name","==","p"]],"mutations":[["options","frob",5]]}],"id":6}"#.to_vec(),
        ),
        (
            "malformed LSP row",
            br#"{"method":"transact","params":["OVN_Northbound",{"op":"insert","table":"Logical_Switch_Port","row":{"external_ids":["map",[["migration-destination",7]]],"options":"x"}}],"id":7}"#.to_vec(),
        ),
        ("100k-digit id", long_id.into_bytes()),
        ("NUL bytes", b"{\"method\":\"echo\",\"params\":[\"a\0b\", \"\\u0000\"],\"id\":8}\0\0".to_vec()),
        ("endless string", {
            let mut v = br#"{"method":"echo","params":[""#.to_vec();
            v.extend(std::iter::repeat_n(b'x', 9 << 20));
            v
        }),
    ];
    for (case, bytes) in cases {
        let _ = throw(&w.p, &bytes);
        w.still_fine(case);
    }
}

#[test]
fn three_hundred_connections_opened_and_dropped_at_once() {
    // On a thread pool (the default is one thread): sessions set up and torn down in parallel.
    let mut w = World::new(&["--threads=2"]);
    let conns: Vec<UnixStream> = (0..300).filter_map(|_| UnixStream::connect(&w.p.unix).ok()).collect();
    assert!(conns.len() >= 250, "only {} connections accepted into the backlog", conns.len());
    drop(conns);
    eventually("the dropped sessions are gone", || {
        w.p.appctl(&["proxy/show"])
            .is_ok_and(|s| s.contains("sessions: 1 open") || s.contains("sessions: 0 open"))
    });
    w.still_fine("300 connections");
}

#[test]
fn a_client_that_never_reads_slows_nobody_else() {
    let mut w = World::new(&[]);
    // Ask for the schema (tens of kB) thousands of times and never read the replies.
    let mut lazy = UnixStream::connect(&w.p.unix).expect("connect");
    lazy.set_write_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let req = br#"{"method":"get_schema","params":["OVN_Northbound"],"id":0}"#;
    let mut sent = 0;
    while sent < 5000 && lazy.write_all(req).is_ok() {
        sent += 1;
    }
    w.still_fine("a client that never reads");
    w.still_fine("still, later");
    drop(lazy);
}

/// The policy reads a transaction's params up to 128 levels deep (serde_json's limit); deeper
/// params are forwarded as they came. No OVSDB operation nests that deep (a map value is 4
/// levels), so the server refuses such a transaction whole: nothing of it is written, migration
/// tags included. The id is another matter: any JSON value, read as deep as the server reads.
#[test]
fn a_transaction_too_deep_for_the_policy_is_refused_whole_by_the_server() {
    let nb = nb();
    seed_vm1(&nb.server.unix_remote());
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let before = ovn_nbctl(
        &nb.server.unix_remote(),
        &["--bare", "--columns=options,external_ids", "list", "Logical_Switch_Port", "vm1"],
    )
    .expect("vm1 before");
    let tag = r#"{"op":"mutate","table":"Logical_Switch_Port","where":[["name","==","vm1"]],"mutations":[["external_ids","insert",["map",[["migration-destination","hv2"],["migration-source","hv1"]]]]]}"#;
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    for (case, extra) in [
        ("a deep member in another op", format!(r#"{{"op":"comment","comment":"x","extra":{}}}"#, deep(300))),
        (
            "a deep map value",
            format!(
                r#"{{"op":"update","table":"Logical_Switch_Port","where":[["name","==","vm1"]],"row":{{"options":["map",[["k",{}]]]}}}}"#,
                deep(300)
            ),
        ),
    ] {
        let mut c = Raw::connect(&p.unix);
        c.send(
            format!(r#"{{"method":"transact","params":["OVN_Northbound",{tag},{extra}],"id":1}}"#).as_bytes(),
        );
        let reply = c.recv();
        let refused = reply["result"].as_array().is_some_and(|r| r.iter().any(|o| !o["error"].is_null()))
            || !reply["error"].is_null();
        assert!(refused, "{case}: the server refused the transaction: {reply}");
        let after = ovn_nbctl(
            &nb.server.unix_remote(),
            &["--bare", "--columns=options,external_ids", "list", "Logical_Switch_Port", "vm1"],
        )
        .expect("vm1 after");
        assert_eq!(after, before, "{case}: nothing of the transaction was written");
    }
    // The same tags alone, with an id nested 900 levels deep (ids are any JSON value; the server
    // reads up to 999): rewritten, and the reply has one result per client op.
    let id = deep(900);
    let mut c = Raw::connect(&p.unix);
    c.send(format!(r#"{{"method":"transact","params":["OVN_Northbound",{tag}],"id":{id}}}"#).as_bytes());
    let text = String::from_utf8(c.recv_raw().expect("a reply")).expect("UTF-8");
    // Too deep for serde_json's default limit: read the members after the id (the server writes
    // `id` first).
    let at = text.find("\"result\"").unwrap_or_else(|| panic!("no result in {text}"));
    let reply: serde_json::Value =
        serde_json::from_str(&format!("{{{}", &text[at..])).expect("the rest is shallow");
    assert!(reply["error"].is_null(), "the tags alone are accepted: {reply}");
    assert_eq!(reply["result"].as_array().map(Vec::len), Some(1), "one result for one op: {reply}");
    let opts = ovn_nbctl(&nb.server.unix_remote(), &["get", "Logical_Switch_Port", "vm1", "options"])
        .expect("options");
    assert!(opts.contains(r#"requested-chassis="hv1,hv2""#), "rewritten by the proxy: {opts}");
    assert!(p.log_text().contains("rewrite"), "in the client's transaction, not by the reconciler");
}
